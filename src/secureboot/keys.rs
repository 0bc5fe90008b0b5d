//! The owner's Secure Boot keys: PK (whoever holds its private half may
//! replace every key in the instance's firmware) and KEK (may change db and
//! dbx). Either the user's own (`--secure-boot-keys DIR` with PK.crt and
//! KEK.crt, PEM or DER; the private halves need not be there), or a pair
//! generated with openssl once per image family and kept in the user's
//! state directory, so that every AMI of a family and every boot-test of
//! its images carry the same keys.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::sys::tool::{HostTool, Tool, ToolError};

pub const OPENSSL: HostTool = HostTool::new("openssl", "openssl");
/// The certificate and key files of a key directory, per variable.
pub const KEY_NAMES: [&str; 2] = ["PK", "KEK"];

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(
        "{0} is missing: --secure-boot-keys DIR must hold PK.crt and KEK.crt (PEM or DER \
         X.509 certificates; e.g. `openssl req -new -x509 -newkey rsa:2048 -nodes -subj \
         /CN=PK -keyout PK.key -out PK.crt`)"
    )]
    Missing(PathBuf),
    #[error("{0} is not an X.509 certificate in PEM or DER")]
    NotACertificate(PathBuf),
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] ToolError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KeysError {
    let path = path.to_path_buf();
    move |source| KeysError::Io { what, path, source }
}

/// The owner's certificates (DER) and where they came from.
#[derive(Debug, Clone)]
pub struct OwnerKeys {
    pub pk: Vec<u8>,
    pub kek: Vec<u8>,
    pub dir: PathBuf,
    /// True when this run generated them (the user must be told).
    pub generated_now: bool,
    /// True when imgforge generated them (now or earlier).
    pub generated: bool,
}

/// Where the owner's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// The user's own (`--secure-boot-keys DIR`), already read.
    Own(OwnerKeys),
    /// The image family's generated pair (generated the first time).
    Family(String),
}

impl KeySource {
    pub fn keys(&self) -> Result<OwnerKeys, KeysError> {
        match self {
            Self::Own(keys) => Ok(keys.clone()),
            Self::Family(family) => for_family(family),
        }
    }
}

/// What the user must be told when imgforge generated a family's keys.
pub fn generated_notice(keys: &OwnerKeys) -> String {
    let family = keys
        .dir
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(
        "generated Secure Boot keys for image family `{family}` in {}: PK.key and KEK.key \
         are the private halves (mode 0600). Whoever holds PK.key controls the UEFI firmware \
         of every instance launched from this family's AMIs: back the directory up and keep \
         it secret; pass --secure-boot-keys DIR to use your own keys instead",
        keys.dir.display()
    )
}

/// Where a family's generated keys live: `$XDG_STATE_HOME/imgforge/
/// secure-boot/FAMILY`, else `~/.local/state/imgforge/secure-boot/FAMILY`.
pub fn family_dir(family: &str) -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    let safe: String = family
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let safe = if safe.trim_matches('.').is_empty() {
        "image".to_string()
    } else {
        safe
    };
    state.join("imgforge").join("secure-boot").join(safe)
}

/// The user's own certificates from `dir`.
pub fn load(dir: &Path) -> Result<OwnerKeys, KeysError> {
    let read = |name: &str| {
        let path = dir.join(format!("{name}.crt"));
        if !path.is_file() {
            return Err(KeysError::Missing(path));
        }
        let bytes = std::fs::read(&path).map_err(io("read", &path))?;
        der_of(&bytes).ok_or(KeysError::NotACertificate(path))
    };
    Ok(OwnerKeys {
        pk: read("PK")?,
        kek: read("KEK")?,
        dir: dir.to_path_buf(),
        generated_now: false,
        generated: false,
    })
}

/// The family's generated keys, generating them the first time.
pub fn for_family(family: &str) -> Result<OwnerKeys, KeysError> {
    let dir = family_dir(family);
    let generated_now = !dir.join("PK.crt").is_file();
    if generated_now {
        generate(&dir, family)?;
    }
    Ok(OwnerKeys {
        generated_now,
        generated: true,
        ..load(&dir)?
    })
}

/// Generates PK and KEK (RSA-2048, SHA-256: what UEFI firmware takes) into
/// a private temporary directory beside `dir`, then renames it into place,
/// so a failure leaves nothing half-written.
fn generate(dir: &Path, family: &str) -> Result<(), KeysError> {
    OPENSSL.require()?;
    let parent = dir.parent().expect("family_dir has a parent");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(io("create", parent))?;
    let temp = tempfile::Builder::new()
        .prefix(".keys-")
        .tempdir_in(parent)
        .map_err(io("create a directory in", parent))?;
    std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o700))
        .map_err(io("restrict", temp.path()))?;
    for name in KEY_NAMES {
        let key = temp.path().join(format!("{name}.key"));
        let cert = temp.path().join(format!("{name}.crt"));
        Tool::new("openssl")
            .args([
                "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
            ])
            .args(["-days", "7300", "-subj"])
            .arg(format!("/CN=imgforge {family} Secure Boot {name}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .run()?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .map_err(io("restrict", &key))?;
    }
    match std::fs::rename(temp.path(), dir) {
        Ok(()) => {
            let _ = temp.keep();
            Ok(())
        }
        // Another imgforge generated the family's keys meanwhile: theirs win.
        Err(_) if dir.join("PK.crt").is_file() => Ok(()),
        Err(source) => Err(io("move the new keys to", dir)(source)),
    }
}

/// A certificate's DER bytes from PEM or DER.
fn der_of(bytes: &[u8]) -> Option<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    if bytes.first() == Some(&0x30) {
        return Some(bytes.to_vec());
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let body = text.split(BEGIN).nth(1)?.split("-----END").next()?;
    let base64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    BASE64
        .decode(base64)
        .ok()
        .filter(|der| der.first() == Some(&0x30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_and_der_give_the_same_bytes() {
        let der = vec![0x30, 0x03, 1, 2, 3];
        let pem = format!(
            "junk\n-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            BASE64.encode(&der)
        );
        assert_eq!(der_of(pem.as_bytes()), Some(der.clone()));
        assert_eq!(der_of(&der), Some(der));
        assert_eq!(der_of(b"-----BEGIN PRIVATE KEY-----\nAAAA\n"), None);
    }

    #[test]
    fn a_family_name_cannot_leave_the_state_directory() {
        let dir = family_dir("../../etc/x y");
        let last = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(last, "..-..-etc-x-y");
        assert!(dir.parent().unwrap().ends_with("imgforge/secure-boot"));
        assert!(family_dir("..").ends_with("secure-boot/image"));
    }

    #[test]
    fn a_directory_without_pk_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        match load(dir.path()) {
            Err(KeysError::Missing(path)) => assert!(path.ends_with("PK.crt")),
            other => panic!("{other:?}"),
        }
    }
}
