//! The keyring refresh: exactly one package, `archlinux-keyring`, fetched
//! from the mirror apart from pacman (whose `-Sw` would pull and verify its
//! whole dependency closure, `pacman` and some 50-80 packages, against the
//! starting keyring) and verified here with gpg, by an explicit rule.
//!
//! A starting keyring (the host's archlinux-keyring, from Debian) is months
//! or years old: packager keys in it have expired since, and pacman reads a
//! signature by an expired key as untrusted, never refreshing the key. The
//! master keys do not expire, so the trust path used here is:
//!
//! 1. the signature is cryptographically good (gpg's VALIDSIG), made by a
//!    key that is neither revoked (REVKEYSIG, archlinux-revoked) nor
//!    unknown; if gpg trusts it fully today, that is enough;
//! 2. otherwise the key may only have expired (EXPKEYSIG), and then it must
//!    carry good certifications by three of the starting keyring's master
//!    keys (archlinux-trusted gives them marginal ownertrust, and GnuPG
//!    needs three marginals: the rule pacman's own trust check applies);
//! 3. after the new keyring is populated, the package's signature must
//!    verify with full trust under it (the packager key renewed): a keyring
//!    package that does not vouch for itself is refused.
//!
//! Under `SigLevel = Never` (imgforge's own unsigned test repositories, not
//! reachable from the command line) nothing is verified, and the log says
//! so.

use std::fs;
use std::path::{Path, PathBuf};

use super::ArchError;
use super::keyring::{Keyring, PACKAGE_KEYRING_DIR, check_keyring_dir};
use super::pacman::{self, Pacman};
use crate::distro::mirror;
use crate::sys::fsio::at;
use crate::sys::tool::{Tool, ToolError};

/// Master-key certifications an expired packager key needs: GnuPG's
/// `marginals-needed`, with archlinux-trusted's marginal ownertrust.
pub const MASTER_CERTIFICATIONS: usize = 3;

/// What gpg's status lines say about one detached signature.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SignatureStatus {
    /// VALIDSIG: cryptographically good (whatever the key's state).
    pub valid: bool,
    /// The signing key's primary fingerprint (VALIDSIG's last field).
    pub signer: Option<String>,
    pub good: bool,
    pub expired_key: bool,
    pub revoked_key: bool,
    /// TRUST_FULLY or TRUST_ULTIMATE.
    pub trusted: bool,
}

/// Reads gpg's `--status-file` lines.
pub fn parse_status(text: &str) -> SignatureStatus {
    let mut status = SignatureStatus::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("[GNUPG:] ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        match words.first().copied() {
            Some("VALIDSIG") => {
                status.valid = true;
                status.signer = words.last().map(|s| s.to_uppercase());
            }
            Some("GOODSIG") => status.good = true,
            Some("EXPKEYSIG") => status.expired_key = true,
            Some("REVKEYSIG") => status.revoked_key = true,
            Some("TRUST_FULLY" | "TRUST_ULTIMATE") => status.trusted = true,
            _ => {}
        }
    }
    status
}

/// How the keyring package's signature was accepted.
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// Fully trusted by the starting keyring.
    Current { signer: String },
    /// Signed by a packager key expired in the starting keyring but
    /// certified by its master keys `masters`.
    ExpiredPackagerKey {
        signer: String,
        masters: Vec<String>,
    },
    /// Not verified (`SigLevel = Never`, tests only).
    Unverified,
}

/// The keyring package and its signature, downloaded from the mirror into
/// `dest` with curl: only this one file, no dependency.
pub fn download(
    pacman: &Pacman,
    package: &str,
    dest: &Path,
    with_signature: bool,
) -> Result<PathBuf, ArchError> {
    let (repo, name) = pacman.locate(package)?;
    fs::create_dir_all(dest).map_err(at("create", dest))?;
    let base = pacman::expand(&pacman.mirror, &repo, &pacman.architecture);
    let url = format!("{}/{name}", base.trim_end_matches('/'));
    let file = dest.join(&name);
    let mut files = vec![(url.clone(), file.clone())];
    if with_signature {
        files.push((format!("{url}.sig"), dest.join(format!("{name}.sig"))));
    }
    for (from, to) in files {
        mirror::fetch(&from, &to).map_err(|err| ArchError::KeyringPackage {
            package: package.to_string(),
            detail: format!("cannot download {from}: {}", tool_detail(&err)),
        })?;
    }
    Ok(file)
}

fn tool_detail(err: &ToolError) -> String {
    match err {
        ToolError::Failed { tail, .. } => tail.trim().to_string(),
        other => other.to_string(),
    }
}

/// Downloads `package`, accepts it by the trust path (unless `verify` is
/// false), populates the keyring with its keys and confirms it with them.
/// `starting` is the keyring folder the build started from (its master and
/// revoked lists).
pub fn refresh(
    pacman: &Pacman,
    keyring: &Keyring,
    starting: &Path,
    package: &str,
    dest: &Path,
    verify_signatures: bool,
) -> Result<Accepted, ArchError> {
    let file = download(pacman, package, dest, verify_signatures)?;
    let accepted = if verify_signatures {
        let (masters, revoked) = masters_and_revoked(starting);
        let status = verify(&pacman.gpgdir, &file)?;
        accept(package, &status, &masters, &revoked, |signer| {
            certifiers(&pacman.gpgdir, signer)
        })?
    } else {
        log::warn!("{package} is not verified: SigLevel = Never (imgforge's own tests only)");
        Accepted::Unverified
    };
    let unpacked = dest.join("unpacked");
    fs::create_dir_all(&unpacked).map_err(at("create", &unpacked))?;
    Tool::new("bsdtar")
        .arg("-xf")
        .arg(&file)
        .arg("-C")
        .arg(&unpacked)
        .arg(PACKAGE_KEYRING_DIR)
        .run()?;
    let dir = unpacked.join(PACKAGE_KEYRING_DIR);
    check_keyring_dir(&dir, &format!("{package} ({})", file.display()))?;
    keyring.populate_from(&dir, package)?;
    if verify_signatures {
        confirm(package, &verify(&pacman.gpgdir, &file)?)?;
    }
    log::info!("keyring refreshed from {}: {accepted:?}", file.display());
    Ok(accepted)
}

/// gpg's verdict on `file` and `file.sig` with the keyring in `gpgdir`.
pub fn verify(gpgdir: &Path, file: &Path) -> Result<SignatureStatus, ArchError> {
    let sig = PathBuf::from(format!("{}.sig", file.display()));
    let status_file = PathBuf::from(format!("{}.status", file.display()));
    // gpg exits non-zero for a bad or unknown signature: the status file
    // says which, so the exit status itself is not the verdict.
    let _ = Tool::new("gpg")
        .arg("--homedir")
        .arg(gpgdir)
        .args(["--batch", "--no-auto-key-retrieve", "--status-file"])
        .arg(&status_file)
        .arg("--verify")
        .arg(&sig)
        .arg(file)
        .env("LC_ALL", "C")
        .run();
    let text = fs::read_to_string(&status_file).map_err(at("read", &status_file))?;
    Ok(parse_status(&text))
}

/// The long key IDs of the keys that gave `signer` a good certification.
pub fn certifiers(gpgdir: &Path, signer: &str) -> Result<Vec<String>, ArchError> {
    let out = Tool::new("gpg")
        .arg("--homedir")
        .arg(gpgdir)
        .args(["--batch", "--with-colons", "--check-signatures", signer])
        .env("LC_ALL", "C")
        .run()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(':').collect();
            // sig:!:...: a good certification; field 5 is the issuer.
            (fields.first() == Some(&"sig") && fields.get(1) == Some(&"!"))
                .then(|| fields.get(4).map(|k| k.to_uppercase()))
                .flatten()
        })
        .collect())
}

/// The fingerprints of the fully trusted (master) keys and the revoked
/// keys of a keyring folder's archlinux-trusted and archlinux-revoked.
pub fn masters_and_revoked(dir: &Path) -> (Vec<String>, Vec<String>) {
    let read = |name: &str| -> Vec<String> {
        fs::read_to_string(dir.join(name))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(':').next().unwrap_or("").trim().to_uppercase())
            .filter(|f| !f.is_empty() && !f.starts_with('#'))
            .collect()
    };
    (read("archlinux-trusted"), read("archlinux-revoked"))
}

/// Rule 1 and 2 of the module's trust path, with the starting keyring.
pub fn accept(
    package: &str,
    status: &SignatureStatus,
    masters: &[String],
    revoked: &[String],
    certified_by: impl FnOnce(&str) -> Result<Vec<String>, ArchError>,
) -> Result<Accepted, ArchError> {
    let refuse = |detail: String| ArchError::KeyringPackage {
        package: package.to_string(),
        detail,
    };
    let Some(signer) = status.signer.clone().filter(|_| status.valid) else {
        return Err(refuse(
            "its signature is bad, or by a key the keyring does not have".into(),
        ));
    };
    if status.revoked_key || revoked.contains(&signer) {
        return Err(refuse(format!("it is signed by the revoked key {signer}")));
    }
    if status.good && status.trusted {
        return Ok(Accepted::Current { signer });
    }
    if !status.expired_key {
        return Err(refuse(format!(
            "the key {signer} that signed it is not trusted by the keyring (no master key vouches for it)"
        )));
    }
    let certifiers = certified_by(&signer)?;
    let vouching: Vec<String> = masters
        .iter()
        .filter(|m| certifiers.iter().any(|c| m.ends_with(c.as_str())))
        .cloned()
        .collect();
    if vouching.len() >= MASTER_CERTIFICATIONS {
        return Ok(Accepted::ExpiredPackagerKey {
            signer,
            masters: vouching,
        });
    }
    Err(refuse(format!(
        "the key {signer} that signed it has expired and only {} master key(s) of the keyring \
         certify it ({MASTER_CERTIFICATIONS} needed)",
        vouching.len()
    )))
}

/// Rule 3: with the new keyring populated, the signature must be good and
/// fully trusted.
pub fn confirm(package: &str, status: &SignatureStatus) -> Result<(), ArchError> {
    if status.valid && status.good && status.trusted && !status.revoked_key {
        return Ok(());
    }
    Err(ArchError::KeyringPackage {
        package: package.to_string(),
        detail: "its own keys do not verify it with full trust (the signing key is not renewed \
                 or not certified in the new keyring)"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "[GNUPG:] VALIDSIG 0123 2026-01-01 1767225600 0 4 0 22 10 00 AAAABBBBCCCCDDDDEEEEFFFF0000111122223333";

    fn status(lines: &[&str]) -> SignatureStatus {
        parse_status(&lines.join("\n"))
    }

    #[test]
    fn the_trust_path_over_an_expired_packager_key() {
        let masters: Vec<String> = ["1111", "2222", "3333", "4444"]
            .iter()
            .map(|k| format!("99998888777766665555444433332222{k}0000"))
            .collect();
        let three = || {
            Ok(vec![
                "3333222211110000".into(),
                "3333222222220000".into(),
                "3333222233330000".into(),
            ])
        };
        let expired = status(&["[GNUPG:] EXPKEYSIG 2222333344445555 P", VALID]);
        assert_eq!(
            expired.signer.as_deref(),
            Some("AAAABBBBCCCCDDDDEEEEFFFF0000111122223333")
        );
        let ok = accept("k", &expired, &masters, &[], |_| three()).unwrap();
        assert!(matches!(ok, Accepted::ExpiredPackagerKey { .. }), "{ok:?}");
        // Not certified by a master: refused.
        // Two master certifications of three needed: refused.
        let err = accept("k", &expired, &masters, &[], |_| {
            Ok(vec![
                "3333222211110000".into(),
                "3333222222220000".into(),
                "1234".into(),
            ])
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("only 2 master key(s)"), "{err}");
        // Revoked: refused before anything else.
        let revoked = vec!["AAAABBBBCCCCDDDDEEEEFFFF0000111122223333".to_string()];
        let err = accept("k", &expired, &masters, &revoked, |_| unreachable!())
            .unwrap_err()
            .to_string();
        assert!(err.contains("revoked"), "{err}");
        // A bad signature: no VALIDSIG.
        let bad = status(&["[GNUPG:] BADSIG 2222333344445555 P"]);
        assert!(accept("k", &bad, &masters, &[], |_| unreachable!()).is_err());
        // Good but of unknown trust (not expired): refused.
        let unknown = status(&[
            "[GNUPG:] GOODSIG 2222 P",
            VALID,
            "[GNUPG:] TRUST_UNDEFINED 0 pgp",
        ]);
        assert!(accept("k", &unknown, &masters, &[], |_| unreachable!()).is_err());
        assert!(confirm("k", &unknown).is_err());
        let trusted = status(&[
            "[GNUPG:] GOODSIG 2222 P",
            VALID,
            "[GNUPG:] TRUST_FULLY 0 pgp",
        ]);
        assert!(matches!(
            accept("k", &trusted, &masters, &[], |_| unreachable!()).unwrap(),
            Accepted::Current { .. }
        ));
        confirm("k", &trusted).unwrap();
        assert!(confirm("k", &expired).is_err());
    }
}
