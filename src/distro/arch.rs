//! Arch Linux from a Debian host: the host's pacman (Debian's
//! pacman-package-manager) with imgforge's own pacman.conf, a private
//! keyring, the package cache under imgforge's cache, and mkinitcpio set up
//! by a drop-in before the kernel is installed.

use std::fs;
use std::path::Path;

use serde::Deserialize;

use super::{BootstrapJob, Distro, DistroData, DistroError, Kernel, Sources};
use crate::image::manifest::Package;
use crate::sys::fsio::at;
use crate::sys::tool::HostTool;

#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    #[error(
        "--mirror {0} lacks the `$repo` placeholder: pass a URL like https://mirror.example/archlinux/$repo/os/$arch"
    )]
    MirrorWithoutRepo(String),
    #[error("the Arch bootstrap is not implemented yet")]
    NotImplemented,
    #[error(
        "the bootstrapped tree has no kernel (expected exactly one /boot/vmlinuz-*, found {found})"
    )]
    Kernel { found: usize },
    #[error("cannot find the kernel configuration inside {0} (IKCONFIG)")]
    NoIkconfig(String),
}

/// `[bootstrap]` in rootfs/distros/arch.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub default_mirror: String,
    pub repositories: Vec<String>,
    pub first_package: String,
    pub keyring_package: String,
}

pub struct Arch {
    data: DistroData,
    settings: Settings,
}

impl Arch {
    pub fn boxed(data: DistroData) -> Result<Box<dyn Distro>, DistroError> {
        let settings = super::bootstrap_settings(&data)?;
        Ok(Box::new(Self { data, settings }))
    }
}

impl Distro for Arch {
    fn data(&self) -> &DistroData {
        &self.data
    }

    fn host_tools(&self) -> Vec<HostTool> {
        vec![
            HostTool::new("pacman", "pacman-package-manager"),
            HostTool::new("pacman-key", "pacman-package-manager"),
            HostTool::new("bsdtar", "libarchive-tools"),
            HostTool::new("gpg", "gnupg"),
        ]
    }

    /// One `Server =` URL for every repository; `--mirror` or Arch's geo mirror.
    fn sources(&self, _release: &str, mirror: Option<&str>) -> Result<Sources, DistroError> {
        let (url, origin) = match mirror {
            Some(m) => (m.to_string(), "--mirror"),
            None => (
                self.settings.default_mirror.clone(),
                "Arch's geo mirror (default)",
            ),
        };
        if !url.contains("$repo") {
            return Err(ArchError::MirrorWithoutRepo(url).into());
        }
        Ok(Sources {
            lines: vec![format!("Server = {url}")],
            origin: origin.into(),
        })
    }

    fn bootstrap(&self, _job: &BootstrapJob) -> Result<(), DistroError> {
        Err(ArchError::NotImplemented.into())
    }

    /// Read from pacman's local database (`var/lib/pacman/local/*/desc`).
    fn installed_packages(&self, root: &Path) -> Result<Vec<Package>, DistroError> {
        let local = root.join("var/lib/pacman/local");
        let mut packages = Vec::new();
        for entry in fs::read_dir(&local).map_err(at("read", &local))?.flatten() {
            let desc = entry.path().join("desc");
            let Ok(text) = fs::read_to_string(&desc) else {
                continue;
            };
            if let Some(package) = parse_desc(&text) {
                packages.push(package);
            }
        }
        packages.sort();
        Ok(packages)
    }

    fn kernel(&self, root: &Path) -> Result<Kernel, DistroError> {
        let boot = root.join("boot");
        let images: Vec<_> = fs::read_dir(&boot)
            .map_err(at("read", &boot))?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
            .map(|e| e.path())
            .collect();
        let [image] = images.as_slice() else {
            return Err(ArchError::Kernel {
                found: images.len(),
            }
            .into());
        };
        let bytes = fs::read(image).map_err(at("read", image))?;
        let config = extract_ikconfig(&bytes)
            .ok_or_else(|| ArchError::NoIkconfig(image.display().to_string()))?;
        Ok(Kernel {
            version: kernel_version(root).unwrap_or_default(),
            config,
        })
    }
}

/// The module folder name under usr/lib/modules: the kernel's version.
fn kernel_version(root: &Path) -> Option<String> {
    let modules = root.join("usr/lib/modules");
    fs::read_dir(modules)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.path().join("vmlinuz").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// `%NAME%` and `%VERSION%` of a pacman `desc` file.
pub fn parse_desc(text: &str) -> Option<Package> {
    let mut lines = text.lines();
    let mut name = None;
    let mut version = None;
    while let Some(line) = lines.next() {
        match line {
            "%NAME%" => name = lines.next().map(String::from),
            "%VERSION%" => version = lines.next().map(String::from),
            _ => {}
        }
    }
    Some(Package {
        name: name?,
        version: version?,
    })
}

/// The kernel's own configuration, as `scripts/extract-ikconfig` finds it:
/// a gzip stream between `IKCFG_ST` and `IKCFG_ED` in the (decompressed)
/// kernel image. Not implemented yet.
pub fn extract_ikconfig(_image: &[u8]) -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desc_files_give_name_and_version() {
        let desc = "%NAME%\nlinux\n\n%VERSION%\n6.6.1.arch1-1\n\n%BASE%\nlinux\n";
        let p = parse_desc(desc).unwrap();
        assert_eq!(
            (p.name.as_str(), p.version.as_str()),
            ("linux", "6.6.1.arch1-1")
        );
        assert!(parse_desc("%NAME%\nx\n").is_none());
    }
}
