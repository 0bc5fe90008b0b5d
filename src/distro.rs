//! The distributions imgforge can bootstrap: the table in
//! `rootfs/distros.toml`.

use std::collections::BTreeMap;

use serde::Deserialize;

const TABLE: &str = include_str!("../rootfs/distros.toml");

#[derive(Debug, thiserror::Error)]
pub enum DistroError {
    #[error("unknown distro `{given}`; choose one of: {known}")]
    Unknown { given: String, known: String },
    #[error("distro `{name}` cannot be built yet: {why}")]
    Unsupported { name: String, why: String },
}

#[derive(Debug, Clone, Deserialize)]
struct Entry {
    default_release: Option<String>,
    bootstrap_tool: Option<String>,
    variant: Option<String>,
    architecture: Option<String>,
    #[serde(default)]
    packages: Vec<String>,
    unsupported: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distro {
    pub name: String,
    pub default_release: String,
    pub bootstrap_tool: String,
    pub variant: String,
    pub architecture: String,
    pub packages: Vec<String>,
}

fn table() -> BTreeMap<String, Entry> {
    toml::from_str(TABLE).expect("rootfs/distros.toml is valid (checked by a unit test)")
}

pub fn lookup(name: &str) -> Result<Distro, DistroError> {
    let table = table();
    let Some(entry) = table.get(name) else {
        return Err(DistroError::Unknown {
            given: name.to_string(),
            known: table.keys().cloned().collect::<Vec<_>>().join(", "),
        });
    };
    if let Some(why) = &entry.unsupported {
        return Err(DistroError::Unsupported {
            name: name.to_string(),
            why: why.clone(),
        });
    }
    let field = |v: &Option<String>| v.clone().unwrap_or_default();
    Ok(Distro {
        name: name.to_string(),
        default_release: field(&entry.default_release),
        bootstrap_tool: field(&entry.bootstrap_tool),
        variant: field(&entry.variant),
        architecture: field(&entry.architecture),
        packages: entry.packages.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_is_complete() {
        let debian = lookup("debian").unwrap();
        assert_eq!(debian.default_release, "bookworm");
        assert!(
            debian
                .packages
                .iter()
                .any(|p| p == "linux-image-cloud-amd64")
        );
        assert!(debian.packages.iter().any(|p| p == "grub-efi-amd64-bin"));
    }

    #[test]
    fn unknown_and_unsupported_distros_say_why() {
        let unknown = lookup("gentoo").unwrap_err().to_string();
        assert!(
            unknown.contains("`gentoo`") && unknown.contains("debian"),
            "{unknown}"
        );
        let arch = lookup("arch").unwrap_err().to_string();
        assert!(arch.contains("cannot be built yet"), "{arch}");
    }
}
