//! The installed packages as pacman recorded them in its local database
//! (`var/lib/pacman/local/NAME-VERSION/desc`): name, version (with its
//! epoch), architecture, base (source) package and the `license` array, in
//! SPDX terms where it already is (Arch has written SPDX identifiers since
//! 2023); the purl's `alpm` type; the kernel's package from the `files`
//! lists.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::database::{InstalledPackage, Listing, PackageDatabase, percent};
use super::{Component, SbomError, licence};
use crate::image::manifest::Manifest;
use crate::sys::fsio::at;

const LOCAL: &str = "var/lib/pacman/local";

pub const DATABASE: PackageDatabase = PackageDatabase {
    name: "pacman",
    // pacman writes it when it makes the database.
    marker: "var/lib/pacman/local/ALPM_DB_VERSION",
    files: &[],
    folders: &[LOCAL],
    read,
};

#[derive(Debug, thiserror::Error)]
pub enum AlpmError {
    #[error(
        "/{entry} (in the image's root filesystem) is not a pacman database entry: {reason}; \
         pacman's local database is damaged: reinstall that package in the image or rebuild it"
    )]
    Entry { entry: String, reason: String },
}

/// Every installed package of the tree at `root`; the kernel's is the one
/// that installed `/usr/lib/modules/VERSION/vmlinuz`, as Arch's kernels do.
fn read(root: &Path, manifest: &Manifest) -> Result<Listing, SbomError> {
    let local = root.join(LOCAL);
    let mut entries: Vec<_> = fs::read_dir(&local)
        .map_err(at("read", &local))?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    let vmlinuz = format!("usr/lib/modules/{}/vmlinuz", manifest.kernel_version);
    let mut packages = Vec::new();
    let mut kernel_package = None;
    for folder in entries {
        let relative = format!("{LOCAL}/{folder}/desc");
        let path = root.join(&relative);
        let text = fs::read_to_string(&path).map_err(at("read", &path))?;
        let (package, licences) = entry(&text, &folder).map_err(|reason| AlpmError::Entry {
            entry: relative,
            reason,
        })?;
        let files = fs::read_to_string(local.join(&folder).join("files")).unwrap_or_default();
        if files.lines().any(|line| line == vmlinuz) {
            kernel_package = Some(package.name.clone());
        }
        let licences: Vec<&str> = licences.iter().map(String::as_str).collect();
        packages.push(Component {
            licence: licence::all_of(&licences),
            purl: purl(&manifest.distro, &package),
            package,
        });
    }
    packages.sort_by(|a, b| a.package.cmp(&b.package));
    Ok(Listing {
        packages,
        kernel_package,
    })
}

/// `pkg:alpm/arch/NAME@VERSION?arch=ARCH` (the purl specification's `alpm`
/// type: the vendor as namespace, the name lower-cased, the version as
/// pacman writes it, epoch and all; `arch` its one qualifier).
fn purl(vendor: &str, p: &InstalledPackage) -> String {
    format!(
        "pkg:alpm/{}/{}@{}?arch={}",
        percent(&vendor.to_lowercase()),
        percent(&p.name.to_lowercase()),
        percent(&p.version),
        percent(&p.architecture)
    )
}

/// One database entry (the `desc` file of the folder `folder`): the
/// package and its `license` array; the reason it is not an entry.
pub fn entry(text: &str, folder: &str) -> Result<(InstalledPackage, Vec<String>), String> {
    let mut fields = fields(text)?;
    let mut one = |name: &str| -> Result<String, String> {
        match fields.remove(name).as_deref() {
            Some([value]) => Ok(value.clone()),
            Some(values) => Err(format!("%{name}% has {} values, not one", values.len())),
            None => Err(format!("no %{name}%")),
        }
    };
    let name = one("NAME")?;
    let version = one("VERSION")?;
    let architecture = one("ARCH")?;
    // Packages made before pacman 5.1 carry no %BASE%: their own name.
    let source = match one("BASE") {
        Err(e) if e == "no %BASE%" => name.clone(),
        other => other?,
    };
    if folder != format!("{name}-{version}") {
        return Err(format!(
            "its folder is not NAME-VERSION (%NAME% {name}, %VERSION% {version})"
        ));
    }
    let licences = fields.remove("LICENSE").unwrap_or_default();
    Ok((
        InstalledPackage {
            name,
            source,
            source_version: version.clone(),
            version,
            architecture,
        },
        licences,
    ))
}

/// The fields of a `desc` file: each a `%NAME%` line followed by its
/// values, one a line, up to an empty line.
pub fn fields(text: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (number, line) in text.lines().enumerate() {
        if line.is_empty() {
            current = None;
            continue;
        }
        if let Some(name) = &current {
            fields
                .entry(name.clone())
                .or_default()
                .push(line.to_string());
            continue;
        }
        let name = line
            .strip_prefix('%')
            .and_then(|l| l.strip_suffix('%'))
            .filter(|n| {
                !n.is_empty()
                    && n.chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            })
            .ok_or_else(|| format!("line {}: `{line}` where a %FIELD% line belongs", number + 1))?;
        if fields.insert(name.to_string(), Vec::new()).is_some() {
            return Err(format!("line {}: %{name}% a second time", number + 1));
        }
        current = Some(name.to_string());
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESC: &str = "%NAME%\ncontainers-common\n\n%VERSION%\n1:0.47.4-4\n\n\
%BASE%\ncontainers-common\n\n%DESC%\nConfiguration files\n\n%ARCH%\nx86_64\n\n\
%BUILDDATE%\n1700000000\n\n%LICENSE%\nApache-2.0\nGPL-2.0-only WITH Linux-syscall-note\n\n\
%VALIDATION%\npgp\n\n%DEPENDS%\nglibc\nsh\n\n";

    #[test]
    fn multi_value_fields_keep_every_value() {
        let f = fields(DESC).unwrap();
        assert_eq!(
            f["LICENSE"],
            ["Apache-2.0", "GPL-2.0-only WITH Linux-syscall-note"]
        );
        assert_eq!(f["DEPENDS"], ["glibc", "sh"]);
        assert_eq!(f["NAME"], ["containers-common"]);
    }

    #[test]
    fn an_entry_with_an_epoch_keeps_it_in_version_and_purl() {
        let (p, licences) = entry(DESC, "containers-common-1:0.47.4-4").unwrap();
        assert_eq!(p.version, "1:0.47.4-4");
        assert_eq!(p.source_version, "1:0.47.4-4");
        assert_eq!(
            purl("arch", &p),
            "pkg:alpm/arch/containers-common@1:0.47.4-4?arch=x86_64"
        );
        let licences: Vec<&str> = licences.iter().map(String::as_str).collect();
        assert_eq!(
            licence::all_of(&licences).as_deref(),
            Some("Apache-2.0 AND (GPL-2.0-only WITH Linux-syscall-note)")
        );
    }

    #[test]
    fn split_packages_name_their_base_and_purls_lower_case_and_encode() {
        let desc = "%NAME%\nPython-Pip\n\n%VERSION%\n21.0+git1-1\n\n%BASE%\npython-pip-base\n\n\
%ARCH%\nany\n";
        let (p, licences) = entry(desc, "Python-Pip-21.0+git1-1").unwrap();
        assert_eq!(p.source, "python-pip-base");
        assert!(licences.is_empty());
        assert_eq!(
            purl("Arch", &p),
            "pkg:alpm/arch/python-pip@21.0%2Bgit1-1?arch=any"
        );
        let (no_base, _) = entry(
            "%NAME%\nzlib\n\n%VERSION%\n1.3-1\n\n%ARCH%\nx86_64\n",
            "zlib-1.3-1",
        )
        .unwrap();
        assert_eq!(no_base.source, "zlib");
    }

    #[test]
    fn malformed_entries_say_what_is_wrong() {
        let stray = fields("%NAME%\nbash\n\nbash\n").unwrap_err();
        assert!(
            stray.contains("line 4") && stray.contains("`bash`"),
            "{stray}"
        );
        let twice = fields("%NAME%\na\n\n%NAME%\nb\n").unwrap_err();
        assert!(twice.contains("%NAME% a second time"), "{twice}");
        let no_version = entry("%NAME%\nbash\n\n%ARCH%\nx86_64\n", "bash-5").unwrap_err();
        assert_eq!(no_version, "no %VERSION%");
        let two = entry(
            "%NAME%\nbash\nzsh\n\n%VERSION%\n1-1\n\n%ARCH%\nx86_64\n",
            "bash-1-1",
        )
        .unwrap_err();
        assert_eq!(two, "%NAME% has 2 values, not one");
        let bases = entry(
            "%NAME%\nbash\n\n%VERSION%\n1-1\n\n%BASE%\na\nb\n\n%ARCH%\nx86_64\n",
            "bash-1-1",
        )
        .unwrap_err();
        assert_eq!(bases, "%BASE% has 2 values, not one");
        let moved = entry(
            "%NAME%\nbash\n\n%VERSION%\n1-1\n\n%ARCH%\nx86_64\n",
            "bash-2-1",
        )
        .unwrap_err();
        assert!(moved.contains("not NAME-VERSION"), "{moved}");
    }

    #[test]
    fn the_error_names_the_entry_inside_the_image() {
        let root = tempfile::tempdir().unwrap();
        let local = root.path().join(LOCAL);
        fs::create_dir_all(local.join("bash-5.2-1")).unwrap();
        fs::write(local.join("ALPM_DB_VERSION"), "9\n").unwrap();
        fs::write(
            local.join("bash-5.2-1/desc"),
            "%NAME%\nbash\n\n%VERSION\n5.2-1\n",
        )
        .unwrap();
        let manifest: Manifest = serde_json::from_value(manifest_json()).unwrap();
        let err = read(root.path(), &manifest).unwrap_err().to_string();
        assert!(
            err.starts_with("/var/lib/pacman/local/bash-5.2-1/desc (in the image's root"),
            "{err}"
        );
        assert!(err.contains("line 4: `%VERSION`"), "{err}");
    }

    #[test]
    fn the_kernel_package_installed_its_vmlinuz() {
        let root = tempfile::tempdir().unwrap();
        let local = root.path().join(LOCAL);
        for (name, files) in [
            (
                "linux",
                "%FILES%\nusr/\nusr/lib/modules/6.12.1-arch1-1/vmlinuz\n",
            ),
            (
                "linux-headers",
                "%FILES%\nusr/lib/modules/6.12.1-arch1-1/build/\n",
            ),
        ] {
            let dir = local.join(format!("{name}-6.12.1.arch1-1"));
            fs::create_dir_all(&dir).unwrap();
            fs::write(
                dir.join("desc"),
                format!(
                    "%NAME%\n{name}\n\n%VERSION%\n6.12.1.arch1-1\n\n%BASE%\nlinux\n\n\
%ARCH%\nx86_64\n\n%LICENSE%\nGPL-2.0-only\n"
                ),
            )
            .unwrap();
            fs::write(dir.join("files"), files).unwrap();
        }
        let manifest: Manifest = serde_json::from_value(manifest_json()).unwrap();
        let listing = read(root.path(), &manifest).unwrap();
        assert_eq!(listing.kernel_package.as_deref(), Some("linux"));
        let names: Vec<&str> = listing
            .packages
            .iter()
            .map(|c| c.package.name.as_str())
            .collect();
        assert_eq!(names, ["linux", "linux-headers"]);
        assert_eq!(listing.packages[1].licence.as_deref(), Some("GPL-2.0-only"));
        assert_eq!(listing.packages[1].package.source, "linux");
    }

    fn manifest_json() -> serde_json::Value {
        serde_json::json!({
            "imgforge_version": "0", "distro": "arch", "release": "rolling",
            "architecture": "x86_64", "size_class": "small",
            "kernel_version": "6.12.1-arch1-1", "kernel_cmdline": "",
            "boot_modes": ["bios"], "disk": {"size_bytes": 0, "disk_guid": "", "partitions": []},
            "layers": [], "packages": [], "build_time": 0
        })
    }
}
