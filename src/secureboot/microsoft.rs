//! Microsoft's certificates and the revocation list, taken from the
//! variable store the distribution's firmware package enrolled (Debian 12:
//! `ovmf`'s OVMF_VARS_4M.ms.fd, `qemu-efi-aarch64`'s AAVMF_VARS.ms.fd), so
//! that nothing is downloaded and the bytes are the ones the distribution
//! vouches for. Which certificates go where is the table [`WANTED`].

use std::path::{Path, PathBuf};

use super::edk2::{self, Edk2Error};
use super::efi::{self, CERT_X509, EfiError, SignatureList};
use crate::sys::tool::{Tool, ToolError};

/// (variable, certificate subject CN): the certificates shipped, where a
/// store has them. The 2011 CAs sign what boots today (shim is signed by
/// the UEFI CA 2011); the 2023 CAs sign what Microsoft signs after the
/// 2011 ones expire in 2026 (Debian 12's ovmf does not ship them yet).
pub const WANTED: [(&str, &str); 5] = [
    ("KEK", "Microsoft Corporation KEK CA 2011"),
    ("KEK", "Microsoft Corporation KEK 2K CA 2023"),
    ("db", "Microsoft Corporation UEFI CA 2011"),
    ("db", "Microsoft UEFI CA 2023"),
    ("db", "Microsoft Option ROM UEFI CA 2023"),
];

#[derive(Debug, thiserror::Error)]
pub enum MicrosoftError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: Edk2Error,
    },
    #[error("{path}: variable {name}: {source}")]
    Lists {
        path: PathBuf,
        name: String,
        #[source]
        source: EfiError,
    },
    #[error(
        "{path} holds neither {0} nor {1}: it is not a store with Microsoft's keys enrolled",
        WANTED[2].1, WANTED[3].1
    )]
    NoUefiCa { path: PathBuf },
    #[error(transparent)]
    Tool(#[from] ToolError),
}

/// What the enrolled store gives the shipped set.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The store it came from.
    pub source: PathBuf,
    pub kek: Vec<SignatureList>,
    pub db: Vec<SignatureList>,
    /// The store's dbx data as it is (empty when it has none).
    pub dbx: Vec<u8>,
    /// (variable, subject) of every certificate taken.
    pub subjects: Vec<(String, String)>,
}

/// Reads `store` and picks the [`WANTED`] certificates, each with the
/// owner GUID the store gave it.
pub fn from_store(store: &Path) -> Result<Enrolled, MicrosoftError> {
    let bytes = std::fs::read(store).map_err(|source| MicrosoftError::Read {
        path: store.to_path_buf(),
        source,
    })?;
    let variables = edk2::read(&bytes).map_err(|source| MicrosoftError::Store {
        path: store.to_path_buf(),
        source,
    })?;
    let mut enrolled = Enrolled {
        source: store.to_path_buf(),
        kek: Vec::new(),
        db: Vec::new(),
        dbx: Vec::new(),
        subjects: Vec::new(),
    };
    let scratch = tempfile::tempdir().map_err(|source| MicrosoftError::Read {
        path: std::env::temp_dir(),
        source,
    })?;
    for var in &variables {
        match (var.name.as_str(), var.guid) {
            ("dbx", efi::IMAGE_SECURITY_DATABASE) => enrolled.dbx = var.data.clone(),
            ("KEK", efi::GLOBAL_VARIABLE) | ("db", efi::IMAGE_SECURITY_DATABASE) => {
                let lists =
                    efi::decode_lists(&var.data).map_err(|source| MicrosoftError::Lists {
                        path: store.to_path_buf(),
                        name: var.name.clone(),
                        source,
                    })?;
                pick(&mut enrolled, &var.name, lists, scratch.path())?;
            }
            _ => {}
        }
    }
    if enrolled.db.is_empty() {
        return Err(MicrosoftError::NoUefiCa {
            path: store.to_path_buf(),
        });
    }
    Ok(enrolled)
}

/// Adds the wanted certificates of one variable's lists.
fn pick(
    enrolled: &mut Enrolled,
    variable: &str,
    lists: Vec<SignatureList>,
    scratch: &Path,
) -> Result<(), MicrosoftError> {
    let certificates = lists
        .into_iter()
        .filter(|l| l.signature_type == CERT_X509)
        .flat_map(|l| l.entries);
    for entry in certificates {
        let cn = subject_cn(&entry.data, scratch)?;
        if WANTED.iter().any(|&(v, s)| v == variable && s == cn) {
            let list = SignatureList::x509(entry.owner, entry.data);
            match variable {
                "KEK" => enrolled.kek.push(list),
                _ => enrolled.db.push(list),
            }
            enrolled.subjects.push((variable.to_string(), cn));
        }
    }
    Ok(())
}

/// A DER certificate's subject CN, as openssl prints it.
fn subject_cn(der: &[u8], scratch: &Path) -> Result<String, MicrosoftError> {
    let path = scratch.join("cert.der");
    std::fs::write(&path, der).map_err(|source| MicrosoftError::Read {
        path: path.clone(),
        source,
    })?;
    let out = Tool::new("openssl")
        .args([
            "x509",
            "-inform",
            "DER",
            "-noout",
            "-subject",
            "-nameopt",
            "RFC2253,-esc_msb",
        ])
        .arg("-in")
        .arg(&path)
        .run()?;
    Ok(cn_of(&String::from_utf8_lossy(&out.stdout)))
}

/// The CN of an RFC 2253 subject line (`subject=CN=...,O=...`).
fn cn_of(line: &str) -> String {
    let names = line.trim().trim_start_matches("subject=");
    names
        .split(',')
        .find_map(|part| part.trim().strip_prefix("CN="))
        .unwrap_or_default()
        .to_string()
}

/// The Debian package that ships `path` and its version (`ovmf
/// 2022.11-6+deb12u2`), for the report; None off Debian.
pub fn package_of(path: &Path) -> Option<String> {
    let owner = Tool::new("dpkg-query").arg("-S").arg(path).run().ok()?;
    let owner = String::from_utf8_lossy(&owner.stdout);
    let package = owner.split(':').next()?.trim().to_string();
    let version = Tool::new("dpkg-query")
        .args(["-W", "-f", "${Version}"])
        .arg(&package)
        .run()
        .ok()?;
    Some(format!(
        "{package} {}",
        String::from_utf8_lossy(&version.stdout).trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cn_of_a_subject_line() {
        assert_eq!(
            cn_of(
                "subject=C=US,ST=Washington,L=Redmond,O=Microsoft Corporation,\
                 CN=Microsoft Corporation UEFI CA 2011\n"
            ),
            "Microsoft Corporation UEFI CA 2011"
        );
        assert_eq!(cn_of("subject=O=x"), "");
    }
}
