//! `--secure-boot-keys DIR`, shared by `upload` (the UefiData) and
//! `boot-test --secure-boot` (its variable store): the owner's PK and KEK,
//! the user's own or the image family's generated pair, and telling the
//! user where a generated private half is.

use std::path::{Path, PathBuf};

use imgforge::aws::ami::names;
use imgforge::secureboot::keys::{self, OwnerKeys};

use super::BadInput;

/// The help text of `--secure-boot-keys`, the same for both commands.
pub const HELP: &str = "\
Directory with the owner's Secure Boot certificates PK.crt and KEK.crt (PEM or DER; the \
private PK.key and KEK.key need not be there). Default: a pair imgforge generates once per \
image family (openssl, RSA-2048) in $XDG_STATE_HOME/imgforge/secure-boot/FAMILY (else \
~/.local/state/...), private keys mode 0600: whoever holds PK.key controls the firmware of \
every instance of the family, so back it up and keep it secret";

/// The user's own keys; a directory without them is bad input.
pub fn load(dir: &Path) -> Result<OwnerKeys, BadInput> {
    keys::load(dir).map_err(|e| BadInput::new(format!("--secure-boot-keys {}: {e}", dir.display())))
}

/// The family's generated keys (generated now the first time), and the
/// user told where they are.
pub fn generated(family: &str) -> anyhow::Result<OwnerKeys> {
    let owner = keys::for_family(family)?;
    if owner.generated_now {
        eprintln!("imgforge: {}", keys::generated_notice(&owner));
    } else {
        log::info!(
            "Secure Boot keys of image family `{family}`: {}",
            owner.dir.display()
        );
    }
    Ok(owner)
}

/// The family generated keys are filed under: `--family`, else the family
/// of `--name` (unless it is a template), else the image's file name.
pub fn family(family: Option<&str>, name: Option<&str>, image: &Path) -> String {
    let name = name.filter(|n| !n.contains('{'));
    names::family_for(family, name, image)
}

/// `--secure-boot-keys`, parsed: the directory must exist.
pub fn parse_dir(text: &str) -> Result<PathBuf, String> {
    let dir = PathBuf::from(text);
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(format!("{text} is not a directory"))
    }
}
