//! `build --secure-boot`: the distribution's signed chain on the ESP, in
//! place of the GRUB image grub-mkimage builds (which nobody signed).
//!
//! ```text
//! EFI/BOOT/BOOTX64.EFI   shim (Microsoft's UEFI CA signed it)
//! EFI/BOOT/grubx64.efi   the distribution's GRUB (its key is built into shim)
//! EFI/debian/grub.cfg    the early config: the signed GRUB's built-in prefix
//!                        is /EFI/debian, and it cannot load modules or a
//!                        config from anywhere else under Secure Boot
//! ```
//!
//! Shim loads `grubx64.efi` from its own folder, so the removable-media
//! path boots with no NVRAM entry. No `fbx64.efi` goes beside it: shim
//! would run the fallback loader, which writes boot entries.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::distro::SignedBootChain;
use crate::image::manifest::{Package, SecureBootManifest};
use crate::sys::fsio::{PathError, at};

#[derive(Debug, thiserror::Error)]
pub enum SignedChainError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(
        "--secure-boot: the tree has no {path} (from {packages}): the bootstrap did not install \
         the signed chain; rebuild with --refresh-cache"
    )]
    Missing { path: String, packages: String },
}

/// Where the chain's files went on the ESP, relative to its root.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EspChain {
    pub loader: String,
    pub grub: String,
    pub grub_cfg: String,
}

/// Where the chain's files go on the ESP when shim is at `loader_path`.
pub fn esp_layout(chain: &SignedBootChain, loader_path: &str) -> EspChain {
    let folder = Path::new(loader_path)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    EspChain {
        loader: loader_path.to_string(),
        grub: join(&folder, &chain.grub_esp_name),
        grub_cfg: join(&chain.grub_prefix, "grub.cfg"),
    }
}

/// Copies shim and the signed GRUB from the tree `root` onto the staged ESP
/// `esp` at `loader_path` (the architecture's removable-media path) and
/// writes the early config at the signed GRUB's prefix.
pub fn install(
    chain: &SignedBootChain,
    root: &Path,
    esp: &Path,
    loader_path: &str,
    early_config: &str,
) -> Result<EspChain, SignedChainError> {
    let placed = esp_layout(chain, loader_path);
    for (from, to) in [(&chain.shim, &placed.loader), (&chain.grub, &placed.grub)] {
        let source = root.join(from);
        if !source.is_file() {
            return Err(SignedChainError::Missing {
                path: format!("/{from}"),
                packages: chain.packages.join(", "),
            });
        }
        copy_to(&source, &esp.join(to))?;
    }
    let cfg = esp.join(&placed.grub_cfg);
    create_parent(&cfg)?;
    fs::write(&cfg, early_config).map_err(at("write", &cfg))?;
    Ok(placed)
}

/// What the manifest says of the chain: the files and the packages (with
/// versions, from the tree's package list) they came from.
pub fn manifest(
    chain: &SignedBootChain,
    placed: &EspChain,
    installed: &[Package],
) -> SecureBootManifest {
    SecureBootManifest {
        module_signing: None,
        esp_files: vec![
            placed.loader.clone(),
            placed.grub.clone(),
            placed.grub_cfg.clone(),
        ],
        packages: chain
            .packages
            .iter()
            .map(|name| Package {
                name: name.clone(),
                version: installed
                    .iter()
                    .find(|p| &p.name == name)
                    .map(|p| p.version.clone())
                    .unwrap_or_default(),
            })
            .collect(),
    }
}

fn join(folder: &str, name: &str) -> String {
    if folder.is_empty() {
        name.to_string()
    } else {
        format!("{folder}/{name}")
    }
}

fn create_parent(path: &Path) -> Result<(), PathError> {
    let parent = path.parent().expect("an ESP path has a folder");
    fs::create_dir_all(parent).map_err(at("create", parent))
}

fn copy_to(source: &Path, dest: &Path) -> Result<(), PathError> {
    create_parent(dest)?;
    fs::copy(source, dest).map_err(at("copy", source))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> SignedBootChain {
        SignedBootChain {
            packages: vec!["shim-signed".into(), "grub-efi-amd64-signed".into()],
            shim: "usr/lib/shim/shimx64.efi.signed".into(),
            grub: "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed".into(),
            grub_esp_name: "grubx64.efi".into(),
            grub_prefix: "EFI/debian".into(),
        }
    }

    #[test]
    fn shim_at_the_removable_path_grub_beside_it_config_at_the_prefix() {
        let root = tempfile::tempdir().unwrap();
        let esp = tempfile::tempdir().unwrap();
        for (path, body) in [
            ("usr/lib/shim/shimx64.efi.signed", "SHIM"),
            ("usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed", "GRUB"),
        ] {
            let p = root.path().join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, body).unwrap();
        }
        let placed = install(
            &chain(),
            root.path(),
            esp.path(),
            "EFI/BOOT/BOOTX64.EFI",
            "CFG",
        )
        .unwrap();
        let read = |p: &str| fs::read_to_string(esp.path().join(p)).unwrap();
        assert_eq!(read("EFI/BOOT/BOOTX64.EFI"), "SHIM");
        assert_eq!(read("EFI/BOOT/grubx64.efi"), "GRUB");
        assert_eq!(read("EFI/debian/grub.cfg"), "CFG");
        assert!(!esp.path().join("EFI/BOOT/fbx64.efi").exists());
        let installed = [Package {
            name: "shim-signed".into(),
            version: "1.51".into(),
        }];
        let m = manifest(&chain(), &placed, &installed);
        assert_eq!(m.packages[0].version, "1.51");
        assert_eq!(m.packages[1].version, "", "not installed: no version");
        assert_eq!(m.esp_files[2], "EFI/debian/grub.cfg");
    }

    #[test]
    fn a_tree_without_shim_names_the_file_and_packages() {
        let root = tempfile::tempdir().unwrap();
        let esp = tempfile::tempdir().unwrap();
        let err = install(
            &chain(),
            root.path(),
            esp.path(),
            "EFI/BOOT/BOOTX64.EFI",
            "",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/usr/lib/shim/shimx64.efi.signed"), "{err}");
        assert!(err.contains("shim-signed, grub-efi-amd64-signed"), "{err}");
    }
}
