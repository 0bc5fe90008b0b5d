//! The owner's module-signing key pair (`build --secure-boot-key KEY
//! --secure-boot-cert CERT`), checked with openssl before any work: the
//! certificate parses and the key is its. The build signs modules with it
//! ([`crate::build::module_signing`]); boot-test and upload put the
//! certificate into db.

use std::path::{Path, PathBuf};

use crate::sys::tool::{Tool, ToolError, ToolOutput};

#[derive(Debug, thiserror::Error)]
pub enum ModuleKeyError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(
        "--secure-boot-cert {path}: not an X.509 certificate openssl can read (PEM or DER); \
         make one with `openssl req -new -x509 -newkey rsa:2048 -nodes -keyout KEY -out CERT`"
    )]
    BadCertificate { path: PathBuf },
    #[error(
        "--secure-boot-key {key}: its public key is not the one in --secure-boot-cert {cert} \
         (or it is not a private key openssl can read); give the private key that belongs to \
         the certificate"
    )]
    KeyMismatch { key: PathBuf, cert: PathBuf },
}

/// The owner's module-signing key pair, checked.
#[derive(Debug, Clone)]
pub struct SigningKey {
    pub key: PathBuf,
    pub cert: PathBuf,
    /// The certificate in PEM, as the manifest carries it.
    pub cert_pem: String,
    pub subject: String,
    /// SHA-256 of the certificate's DER bytes.
    pub sha256: String,
}

impl SigningKey {
    /// Reads and checks the pair: the certificate parses, the key is its.
    pub fn load(key: &Path, cert: &Path) -> Result<Self, ModuleKeyError> {
        let bad_cert = || ModuleKeyError::BadCertificate {
            path: cert.to_path_buf(),
        };
        let x509 = |inform: &str, extra: &[&str]| {
            Tool::new("openssl")
                .args(["x509", "-inform", inform, "-in"])
                .arg(cert)
                .args(extra)
                .run()
        };
        let inform = if x509("PEM", &["-noout"]).is_ok() {
            "PEM"
        } else if x509("DER", &["-noout"]).is_ok() {
            "DER"
        } else {
            return Err(bad_cert());
        };
        let text = |out: ToolOutput| String::from_utf8_lossy(&out.stdout).trim().to_string();
        let cert_pem = text(x509(inform, &["-outform", "PEM"])?) + "\n";
        let subject = text(x509(
            inform,
            &["-noout", "-subject", "-nameopt", "RFC2253"],
        )?);
        let subject = subject.trim_start_matches("subject=").to_string();
        let fingerprint = text(x509(inform, &["-noout", "-fingerprint", "-sha256"])?);
        let sha256 = fingerprint
            .rsplit('=')
            .next()
            .unwrap_or_default()
            .replace(':', "")
            .to_lowercase();
        let cert_public = text(x509(inform, &["-noout", "-pubkey"])?);
        let key_public = Tool::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(key)
            .run()
            .map(text)
            .map_err(|_| ModuleKeyError::KeyMismatch {
                key: key.to_path_buf(),
                cert: cert.to_path_buf(),
            })?;
        if cert_public != key_public {
            return Err(ModuleKeyError::KeyMismatch {
                key: key.to_path_buf(),
                cert: cert.to_path_buf(),
            });
        }
        Ok(Self {
            key: key.to_path_buf(),
            cert: cert.to_path_buf(),
            cert_pem,
            subject,
            sha256,
        })
    }
}
