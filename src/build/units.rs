//! The systemd units a layer enables: its `enable` list plus the
//! `[[enable_from]]` entries that the installed package's version selects
//! (cloud-init 24.3 renamed `cloud-init.service` to
//! `cloud-init-network.service` and added `cloud-init-main.service`: Debian
//! 12 has 22.4, Arch the newer), each checked to be in the tree before
//! `systemctl enable` runs, so that a renamed or missing unit fails the
//! build with its name and layer on every distro.

use std::cmp::Ordering;
use std::path::Path;

use serde::Deserialize;

use crate::image::manifest::Package;

/// Where unit files live in a tree (the layers', the packages').
const UNIT_DIRS: &[&str] = &[
    "etc/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];

#[derive(Debug, thiserror::Error)]
pub enum UnitsError {
    #[error(
        "layer {layer} enables {unit}, which is not in the image (looked in /{dirs}): the unit \
         was renamed or its package is missing; fix the layer's layer.toml (an `[[enable_from]]` \
         entry picks units by the installed package's version) or add the package"
    )]
    Missing {
        layer: String,
        unit: String,
        dirs: String,
    },
}

/// `[[enable_from]]` in a layer.toml: units enabled when `package` is
/// installed in a version `>= from` (`units`) or older (`older`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnableFrom {
    pub package: String,
    pub from: String,
    #[serde(default)]
    pub units: Vec<String>,
    #[serde(default)]
    pub older: Vec<String>,
}

impl EnableFrom {
    /// For `--plan`, before the package's version is known.
    pub fn describe(&self) -> String {
        format!(
            "{} if {} >= {}, else {}",
            self.units.join(" "),
            self.package,
            self.from,
            if self.older.is_empty() {
                "none".to_string()
            } else {
                self.older.join(" ")
            }
        )
    }
}

/// `enable` plus what each `[[enable_from]]` selects for the installed
/// `packages`. A package that is not installed selects nothing (the unit
/// check then names what its `enable` still needs).
pub fn to_enable(
    enable: &[String],
    enable_from: &[EnableFrom],
    packages: &[Package],
) -> Vec<String> {
    let mut units = enable.to_vec();
    for rule in enable_from {
        let Some(installed) = packages.iter().find(|p| p.name == rule.package) else {
            continue;
        };
        let chosen = if compare_versions(&installed.version, &rule.from) == Ordering::Less {
            &rule.older
        } else {
            &rule.units
        };
        units.extend(chosen.iter().cloned());
    }
    units
}

/// Every unit of `units` has a unit file in the tree (`a@b.service`: the
/// template `a@.service`).
pub fn check_exist(root: &Path, layer: &str, units: &[String]) -> Result<(), UnitsError> {
    for unit in units {
        let file = match unit.split_once('@') {
            Some((prefix, rest)) => {
                let suffix = rest.rsplit_once('.').map_or("", |(_, s)| s);
                format!("{prefix}@.{suffix}")
            }
            None => unit.clone(),
        };
        let found = UNIT_DIRS.iter().any(|dir| {
            let path = root.join(dir).join(&file);
            path.symlink_metadata().is_ok()
        });
        if !found {
            return Err(UnitsError::Missing {
                layer: layer.to_string(),
                unit: unit.clone(),
                dirs: UNIT_DIRS.join(", /"),
            });
        }
    }
    Ok(())
}

/// The upstream version's numbers compared in order: `1:24.3.1-2` is
/// 24.3.1 (epoch, Debian/Arch revision and `~`/`+` suffixes dropped), and
/// missing parts count as 0.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn numbers(v: &str) -> Vec<u64> {
        let v = v.split_once(':').map_or(v, |(_, rest)| rest);
        let upstream = v.split(['-', '~', '+']).next().unwrap_or(v);
        upstream
            .split('.')
            .map(|part| {
                let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().unwrap_or(0)
            })
            .collect()
    }
    let (a, b) = (numbers(a), numbers(b));
    for i in 0..a.len().max(b.len()) {
        let order = a.get(i).unwrap_or(&0).cmp(b.get(i).unwrap_or(&0));
        if order != Ordering::Equal {
            return order;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn package(name: &str, version: &str) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
        }
    }

    #[test]
    fn versions() {
        assert_eq!(compare_versions("22.4.2-1+deb12u1", "24.3"), Ordering::Less);
        assert_eq!(compare_versions("24.3-1", "24.3"), Ordering::Equal);
        assert_eq!(compare_versions("25.1.1-1", "24.3"), Ordering::Greater);
        assert_eq!(compare_versions("1:24.2-3", "24.3"), Ordering::Less);
    }

    /// The cloud-init layer as written, against Debian 12's and Arch's
    /// cloud-init versions, and each package's real unit names.
    #[test]
    fn cloud_init_units_follow_the_installed_version_and_must_exist() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("rootfs/first-boot-cloud-init/layer.toml");
        let layer: crate::build::layers::LayerSettings =
            toml::from_str(&fs::read_to_string(path).unwrap()).unwrap();
        let debian = to_enable(
            &layer.enable,
            &layer.enable_from,
            &[package("cloud-init", "22.4.2-1+deb12u1")],
        );
        assert!(
            debian.contains(&"cloud-init.service".to_string()),
            "{debian:?}"
        );
        assert!(!debian.iter().any(|u| u == "cloud-init-main.service"));
        let arch = to_enable(
            &layer.enable,
            &layer.enable_from,
            &[package("cloud-init", "25.1.4-1")],
        );
        for unit in ["cloud-init-main.service", "cloud-init-network.service"] {
            assert!(arch.contains(&unit.to_string()), "{unit}: {arch:?}");
        }
        assert!(!arch.iter().any(|u| u == "cloud-init.service"), "{arch:?}");

        // The units cloud-init 24.3 and later ships (as Arch installs them).
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("usr/lib/systemd/system");
        fs::create_dir_all(&dir).unwrap();
        for unit in [
            "cloud-init-main.service",
            "cloud-init-local.service",
            "cloud-init-network.service",
            "cloud-config.service",
            "cloud-final.service",
        ] {
            fs::write(dir.join(unit), "[Unit]\n").unwrap();
        }
        check_exist(root.path(), "first-boot-cloud-init", &arch).unwrap();
        // What the layer enabled before: the old name fails, named.
        let err = check_exist(root.path(), "first-boot-cloud-init", &debian)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cloud-init.service") && err.contains("first-boot-cloud-init"),
            "{err}"
        );
        // A template instance needs the template.
        fs::write(dir.join("serial-getty@.service"), "").unwrap();
        check_exist(root.path(), "x", &["serial-getty@ttyS0.service".into()]).unwrap();
    }
}
