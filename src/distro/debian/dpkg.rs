//! What dpkg recorded in a bootstrapped Debian tree: the installed packages
//! (its status file, no host dpkg needed) and the newest time a package
//! gave one of its files (the build's SOURCE_DATE_EPOCH).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::super::DistroError;
use crate::image::manifest::Package;
use crate::sys::fsio::at;

/// The newest modification time among the files dpkg installed under
/// /usr (the `.list` files in /var/lib/dpkg/info/). dpkg gives each file the
/// time recorded in its package, which Debian clamps to the package's
/// changelog date; files outside /usr are left out because maintainer
/// scripts and the build rewrite some of them (/etc, /var, /boot).
pub(super) fn newest_packaged_file(root: &Path) -> Result<Option<u64>, DistroError> {
    let info = root.join("var/lib/dpkg/info");
    let mut newest: Option<u64> = None;
    for entry in fs::read_dir(&info).map_err(at("read", &info))?.flatten() {
        let list = entry.path();
        if list.extension().and_then(|e| e.to_str()) != Some("list") {
            continue;
        }
        let text = fs::read_to_string(&list).map_err(at("read", &list))?;
        for file in text.lines().filter(|l| l.starts_with("/usr/")) {
            let Ok(meta) = fs::symlink_metadata(root.join(&file[1..])) else {
                continue;
            };
            if meta.is_file() {
                let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
                newest = Some(newest.map_or(mtime, |n| n.max(mtime)));
            }
        }
    }
    Ok(newest)
}

/// The packages dpkg's status file lists as installed, sorted.
pub fn parse_status(status: &str) -> Vec<Package> {
    let mut packages: Vec<Package> = status
        .split("\n\n")
        .filter_map(|stanza| {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
                    .map(str::trim)
            };
            (field("Status")? == "install ok installed").then(|| Package {
                name: field("Package").unwrap_or_default().to_string(),
                version: field("Version").unwrap_or_default().to_string(),
            })
        })
        .collect();
    packages.sort();
    packages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_is_the_newest_file_dpkg_installed_under_usr() {
        use nix::sys::stat::{UtimensatFlags, utimensat};
        use nix::sys::time::TimeSpec;
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("var/lib/dpkg/info")).unwrap();
        fs::create_dir_all(r.join("usr/bin")).unwrap();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::write(
            r.join("var/lib/dpkg/info/a.list"),
            "/.\n/usr\n/usr/bin\n/usr/bin/a\n/etc/a.conf\n/usr/bin/gone\n",
        )
        .unwrap();
        fs::write(r.join("var/lib/dpkg/info/b.list"), "/usr/bin/b\n").unwrap();
        fs::write(r.join("var/lib/dpkg/info/b.md5sums"), "/usr/bin/c\n").unwrap();
        for (file, secs) in [
            ("usr/bin/a", 1_600_000_000),
            ("usr/bin/b", 1_650_000_000),
            ("usr/bin/c", 1_900_000_000),
            ("etc/a.conf", 1_800_000_000),
        ] {
            fs::write(r.join(file), "x").unwrap();
            let t = TimeSpec::new(secs, 0);
            utimensat(
                nix::fcntl::AT_FDCWD,
                &r.join(file),
                &t,
                &t,
                UtimensatFlags::FollowSymlink,
            )
            .unwrap();
        }
        assert_eq!(newest_packaged_file(r).unwrap(), Some(1_650_000_000));
        let empty = tempfile::tempdir().unwrap();
        assert!(
            newest_packaged_file(empty.path()).is_err(),
            "no dpkg database"
        );
    }

    #[test]
    fn dpkg_status_lists_installed_packages_only() {
        let status = "Package: b\nStatus: install ok installed\nVersion: 2.0\n\n\
                      Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n\
                      Package: a\nStatus: install ok installed\nVersion: 1:1.0-1\n";
        let packages = parse_status(status);
        assert_eq!(packages.len(), 2);
        assert_eq!(packages[0].name, "a");
        assert_eq!(packages[0].version, "1:1.0-1");
    }
}
