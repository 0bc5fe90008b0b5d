//! The module-signing stage (`build --secure-boot --secure-boot-key KEY
//! --secure-boot-cert CERT`): kernel modules the distribution did not sign
//! (DKMS builds them into `/lib/modules/VERSION/updates/`, e.g. GPU drivers)
//! are signed with the owner's key, so that they load under Secure Boot,
//! where the kernel's lockdown refuses unsigned modules. The certificate
//! goes into db of the UEFI variables boot-test and upload use (Debian's
//! kernel trusts db's certificates for modules: it loads them into its
//! platform keyring); the private key never enters the image.
//!
//! The signature is the kernel's own format (what its `scripts/sign-file`
//! appends): a detached CMS signature without attributes or certificates,
//! the signer named by issuer and serial, then `struct module_signature`
//! and the magic string. RSA PKCS#1 v1.5 without a signing time is
//! deterministic, so the same inputs give the same image bytes.

use std::fs;
use std::path::{Path, PathBuf};

use super::context::BuildContext;
use crate::image::manifest::ModuleSigningManifest;
use crate::secureboot::authenticode;
use crate::secureboot::module_key::SigningKey;
use crate::sys::fsio::{PathError, at};
use crate::sys::interrupt::Interrupted;
use crate::sys::tool::{Tool, ToolError};

/// What the kernel looks for at a module's end.
const MAGIC: &[u8] = b"~Module signature appended~\n";
/// `struct module_signature`: algo, hash, id_type, signer_len, key_id_len,
/// three bytes of padding, sig_len (big-endian u32).
const INFO_LEN: usize = 12;
/// `id_type` PKEY_ID_PKCS7: the signature is a CMS message.
const PKEY_ID_PKCS7: u8 = 2;
/// Where DKMS (and a user's own `make modules_install` of an external
/// module) install: the folder under `/lib/modules/VERSION/`.
const UNSIGNED_MODULES_DIR: &str = "updates";
/// DKMS's own tree keeps a copy of each module it built, which `dkms
/// install` copies again later: signed too, so a reinstall on the instance
/// does not bring back the throwaway key's signature.
const DKMS_TREE: &str = "var/lib/dkms";

#[derive(Debug, thiserror::Error)]
pub enum ModuleSigningError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(
        "{path}: a compressed module, which imgforge cannot sign; have DKMS leave modules \
         uncompressed (Debian's default)"
    )]
    Compressed { path: PathBuf },
    #[error("{path}: its appended signature is damaged ({reason})")]
    DamagedSignature { path: PathBuf, reason: String },
    #[error(
        "{path}: the kernel is not signed, so shim refuses it under Secure Boot; give \
         --secure-boot-key and --secure-boot-cert to sign it with your key (its certificate \
         goes into db), or install the distribution's signed kernel"
    )]
    UnsignedKernel { path: PathBuf },
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
}

/// Signs every module under `/lib/modules/*/updates/` with the owner's
/// key (replacing a signature DKMS made with its own throwaway key) and
/// says what it signed.
pub fn run(
    ctx: &BuildContext,
    tree: &Path,
    key: Option<&SigningKey>,
) -> Result<Option<ModuleSigningManifest>, ModuleSigningError> {
    let kernels = unsigned_kernels(tree)?;
    let Some(key) = key else {
        return match kernels.first() {
            Some(kernel) => Err(ModuleSigningError::UnsignedKernel {
                path: kernel.clone(),
            }),
            None => Ok(None),
        };
    };
    let modules = unsigned_modules(tree)?;
    if modules.is_empty() {
        ctx.progress.note(
            "--secure-boot-key: no module under /lib/modules/*/updates to sign (DKMS installs \
             there); the certificate is enrolled in db all the same",
        );
    }
    let cert_file = ctx.work_dir().join("module-signing.crt");
    fs::write(&cert_file, &key.cert_pem).map_err(at("write", &cert_file))?;
    let hash = signature_hash(tree);
    let mut signed = Vec::new();
    for module in &modules {
        ctx.check_interrupt()?;
        sign_file(module, &key.key, &cert_file, &hash, ctx.work_dir())?;
        let relative = module.strip_prefix(tree).unwrap_or(module);
        signed.push(format!("/{}", relative.display()));
    }
    let mut signed_kernels = Vec::new();
    for kernel in &kernels {
        let partial = kernel.with_extension("imgforge-partial");
        authenticode::sign(kernel, &partial, &key.key, &cert_file)?;
        fs::rename(&partial, kernel).map_err(at("rename", &partial))?;
        let relative = kernel.strip_prefix(tree).unwrap_or(kernel);
        signed_kernels.push(format!("/{}", relative.display()));
    }
    fs::remove_file(&cert_file).map_err(at("remove", &cert_file))?;
    ctx.progress.note(&format!(
        "signed {} module(s) and {} kernel(s) with {} ({} {hash})",
        signed.len(),
        signed_kernels.len(),
        key.subject,
        &key.sha256[..16]
    ));
    Ok(Some(ModuleSigningManifest {
        certificate: key.cert_pem.clone(),
        subject: key.subject.clone(),
        sha256: key.sha256.clone(),
        hash,
        modules: signed,
        kernels: signed_kernels,
    }))
}

/// Kernels in /boot that are EFI executables without a signature: a
/// kernel of the owner's own (e.g. from --package-file), which shim
/// refuses under Secure Boot unless a key in db or MOK signed it. The
/// distribution's signed kernels, and kernels that are not PE files, are
/// left as they are.
fn unsigned_kernels(tree: &Path) -> Result<Vec<PathBuf>, ModuleSigningError> {
    let boot = tree.join("boot");
    let mut found = Vec::new();
    for entry in fs::read_dir(&boot).map_err(at("read", &boot))? {
        let entry = entry.map_err(at("read", &boot))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().map_err(at("read", &boot))?.is_file();
        if !is_file || !name.starts_with("vmlinuz-") {
            continue;
        }
        let bytes = fs::read(entry.path()).map_err(at("read", &entry.path()))?;
        if authenticode::is_signed(&bytes) == Some(false) {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// The kernel's module-signature hash (CONFIG_MODULE_SIG_HASH of the
/// tree's kernel config), sha256 when no config says.
fn signature_hash(tree: &Path) -> String {
    let configs = fs::read_dir(tree.join("boot")).into_iter().flatten();
    configs
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("config-"))
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("CONFIG_MODULE_SIG_HASH="))
                .map(|v| v.trim_matches('"').to_string())
                .collect::<Vec<_>>()
        })
        .next()
        .unwrap_or_else(|| "sha256".into())
}

/// Modules under `/lib/modules/*/updates/` and DKMS's copies of them
/// under `/var/lib/dkms/`, sorted.
fn unsigned_modules(tree: &Path) -> Result<Vec<PathBuf>, ModuleSigningError> {
    let mut found = Vec::new();
    let kernels = tree.join("lib/modules");
    if kernels.is_dir() {
        for kernel in fs::read_dir(&kernels).map_err(at("read", &kernels))? {
            let kernel = kernel.map_err(at("read", &kernels))?.path();
            let updates = kernel.join(UNSIGNED_MODULES_DIR);
            if updates.is_dir() {
                walk(&updates, &mut found)?;
            }
        }
    }
    let dkms = tree.join(DKMS_TREE);
    if dkms.is_dir() {
        walk(&dkms, &mut found)?;
    }
    found.sort();
    Ok(found)
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> Result<(), ModuleSigningError> {
    for entry in fs::read_dir(dir).map_err(at("read", dir))? {
        let entry = entry.map_err(at("read", dir))?;
        let path = entry.path();
        // Links are not followed: DKMS links its `source` to /usr/src.
        let kind = entry.file_type().map_err(at("read", &path))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if kind.is_dir() {
            walk(&path, found)?;
        } else if kind.is_file() && name.ends_with(".ko") {
            found.push(path);
        } else if [".ko.xz", ".ko.zst", ".ko.gz"]
            .iter()
            .any(|s| name.ends_with(s))
        {
            return Err(ModuleSigningError::Compressed { path });
        }
    }
    Ok(())
}

/// Replaces `module`'s signature with one made by `key`.
fn sign_file(
    module: &Path,
    key: &Path,
    cert: &Path,
    hash: &str,
    scratch: &Path,
) -> Result<(), ModuleSigningError> {
    let bytes = fs::read(module).map_err(at("read", module))?;
    let body = strip_signature(&bytes).map_err(|reason| ModuleSigningError::DamagedSignature {
        path: module.to_path_buf(),
        reason,
    })?;
    let unsigned = scratch.join("module-unsigned.ko");
    let signature = scratch.join("module.p7s");
    fs::write(&unsigned, body).map_err(at("write", &unsigned))?;
    Tool::new("openssl")
        .args([
            "cms",
            "-sign",
            "-binary",
            "-noattr",
            "-nocerts",
            "-nosmimecap",
        ])
        .args(["-outform", "DER", "-md", hash, "-in"])
        .arg(&unsigned)
        .arg("-signer")
        .arg(cert)
        .arg("-inkey")
        .arg(key)
        .arg("-out")
        .arg(&signature)
        .run()?;
    let cms = fs::read(&signature).map_err(at("read", &signature))?;
    let signed = append_signature(body, &cms);
    // Written beside and renamed: a module is never left half-written.
    let partial = module.with_extension("ko.imgforge-partial");
    fs::write(&partial, signed).map_err(at("write", &partial))?;
    fs::rename(&partial, module).map_err(at("rename", &partial))?;
    for file in [&unsigned, &signature] {
        fs::remove_file(file).map_err(at("remove", file))?;
    }
    Ok(())
}

/// The module without its appended signature (itself when it has none).
pub fn strip_signature(module: &[u8]) -> Result<&[u8], String> {
    let Some(rest) = module.strip_suffix(MAGIC) else {
        return Ok(module);
    };
    if rest.len() < INFO_LEN {
        return Err("shorter than its signature header".into());
    }
    let info = &rest[rest.len() - INFO_LEN..];
    let sig_len = u32::from_be_bytes(info[8..12].try_into().unwrap()) as usize;
    let signer_and_key = info[3] as usize + info[4] as usize;
    let end = rest.len() - INFO_LEN;
    end.checked_sub(sig_len + signer_and_key)
        .map(|start| &module[..start])
        .ok_or_else(|| format!("a signature of {sig_len} bytes in {end}"))
}

/// `body` with a CMS signature appended in the kernel's format.
pub fn append_signature(body: &[u8], cms: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + cms.len() + INFO_LEN + MAGIC.len());
    out.extend_from_slice(body);
    out.extend_from_slice(cms);
    out.extend_from_slice(&[0, 0, PKEY_ID_PKCS7, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&(cms.len() as u32).to_be_bytes());
    out.extend_from_slice(MAGIC);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_appended_is_stripped_to_the_same_body() {
        let body = b"\x7fELF module body".to_vec();
        let signed = append_signature(&body, &[0x30, 0x82, 1, 2, 3]);
        assert!(signed.ends_with(MAGIC));
        let info = &signed[signed.len() - MAGIC.len() - INFO_LEN..signed.len() - MAGIC.len()];
        assert_eq!(info[2], PKEY_ID_PKCS7);
        assert_eq!(&info[8..], &5u32.to_be_bytes());
        assert_eq!(strip_signature(&signed).unwrap(), &body[..]);
        // Signing again replaces the signature rather than stacking one.
        let again = append_signature(strip_signature(&signed).unwrap(), &[9; 7]);
        assert_eq!(strip_signature(&again).unwrap(), &body[..]);
    }

    #[test]
    fn an_unsigned_module_is_its_own_body_and_a_damaged_one_is_named() {
        assert_eq!(strip_signature(b"plain").unwrap(), b"plain");
        let mut damaged = vec![0u8; 4];
        damaged.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
        damaged.extend_from_slice(&1000u32.to_be_bytes());
        damaged.extend_from_slice(MAGIC);
        assert!(
            strip_signature(&damaged)
                .unwrap_err()
                .contains("1000 bytes")
        );
    }

    #[test]
    fn only_unsigned_pe_kernels_are_the_owners_to_sign() {
        let tree = tempfile::tempdir().unwrap();
        let boot = tree.path().join("boot");
        fs::create_dir(&boot).unwrap();
        fs::write(
            boot.join("vmlinuz-6.1-distro"),
            authenticode::test_pe(0x708),
        )
        .unwrap();
        fs::write(boot.join("vmlinuz-6.9-mine"), authenticode::test_pe(0)).unwrap();
        fs::write(boot.join("vmlinuz-5.0-gzip"), b"\x1f\x8b\x08").unwrap();
        fs::write(boot.join("config-6.9-mine"), authenticode::test_pe(0)).unwrap();
        std::os::unix::fs::symlink("vmlinuz-6.9-mine", boot.join("vmlinuz")).unwrap();
        assert_eq!(
            unsigned_kernels(tree.path()).unwrap(),
            vec![boot.join("vmlinuz-6.9-mine")]
        );
    }

    #[test]
    fn the_hash_comes_from_the_kernel_config() {
        let tree = tempfile::tempdir().unwrap();
        assert_eq!(signature_hash(tree.path()), "sha256");
        fs::create_dir(tree.path().join("boot")).unwrap();
        fs::write(
            tree.path().join("boot/config-6.1.0-1-cloud-amd64"),
            "CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_HASH=\"sha512\"\n",
        )
        .unwrap();
        assert_eq!(signature_hash(tree.path()), "sha512");
    }

    #[test]
    fn modules_are_found_under_updates_only_and_compressed_ones_refused() {
        let tree = tempfile::tempdir().unwrap();
        let kernel = tree.path().join("lib/modules/6.1.0-1-cloud-amd64");
        fs::create_dir_all(kernel.join("updates/dkms")).unwrap();
        fs::create_dir_all(kernel.join("kernel/drivers")).unwrap();
        fs::write(kernel.join("updates/dkms/acpi_call.ko"), b"m").unwrap();
        fs::write(kernel.join("kernel/drivers/distro.ko"), b"m").unwrap();
        let dkms = tree
            .path()
            .join("var/lib/dkms/acpi-call/1.2.2/6.1.0-1/x86_64/module");
        fs::create_dir_all(&dkms).unwrap();
        fs::write(dkms.join("acpi_call.ko"), b"m").unwrap();
        let found = unsigned_modules(tree.path()).unwrap();
        assert_eq!(
            found,
            vec![
                kernel.join("updates/dkms/acpi_call.ko"),
                dkms.join("acpi_call.ko")
            ]
        );
        fs::write(kernel.join("updates/dkms/gpu.ko.xz"), b"m").unwrap();
        assert!(matches!(
            unsigned_modules(tree.path()),
            Err(ModuleSigningError::Compressed { .. })
        ));
    }
}
