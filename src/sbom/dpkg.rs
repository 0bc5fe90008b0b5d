//! The installed packages as dpkg recorded them (`/var/lib/dpkg/status`):
//! name, version, architecture and source package; the licence from each
//! package's DEP-5 copyright file; Debian's purl.

use std::fs;
use std::path::Path;

use super::database::{InstalledPackage, Listing, PackageDatabase, percent};
use super::{Component, SbomError, licence, read_in_root};
use crate::image::manifest::Manifest;
use crate::sys::fsio::at;

const STATUS: &str = "var/lib/dpkg/status";

pub const DATABASE: PackageDatabase = PackageDatabase {
    name: "dpkg",
    marker: STATUS,
    files: &[STATUS, "etc/debian_version"],
    folders: &["usr/share/doc"],
    read,
};

/// Every installed package of the tree at `root`; the kernel's is
/// `linux-image-VERSION`.
fn read(root: &Path, manifest: &Manifest) -> Result<Listing, SbomError> {
    let status_path = root.join(STATUS);
    let status = fs::read_to_string(&status_path).map_err(at("read", &status_path))?;
    let distro = distro_qualifier(root, manifest);
    let packages = installed(&status)
        .into_iter()
        .map(|package| Component {
            licence: read_in_root(root, &format!("usr/share/doc/{}/copyright", package.name))
                .and_then(|text| licence::from_copyright(&text)),
            purl: purl(&manifest.distro, &package, &distro),
            package,
        })
        .collect();
    Ok(Listing {
        packages,
        kernel_package: Some(format!("linux-image-{}", manifest.kernel_version)),
    })
}

/// `debian-12` from the tree's /etc/debian_version (`12.13`); the release
/// name when that file is missing or says `trixie/sid`.
fn distro_qualifier(root: &Path, manifest: &Manifest) -> String {
    let major = read_in_root(root, "etc/debian_version")
        .and_then(|v| v.trim().split('.').next().map(str::to_string))
        .filter(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_digit()));
    format!(
        "{}-{}",
        manifest.distro,
        major.unwrap_or_else(|| manifest.release.clone())
    )
}

/// `pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-12`.
fn purl(namespace: &str, p: &InstalledPackage, distro: &str) -> String {
    format!(
        "pkg:deb/{namespace}/{}@{}?arch={}&distro={distro}",
        percent(&p.name),
        percent(&p.version),
        percent(&p.architecture)
    )
}

/// The packages the status file lists as installed, sorted by name and
/// architecture.
pub fn installed(status: &str) -> Vec<InstalledPackage> {
    let mut packages: Vec<InstalledPackage> = status
        .split("\n\n")
        .filter_map(|paragraph| {
            let get = |name: &str| field(paragraph, name);
            if !get("Status")?.ends_with(" installed") {
                return None;
            }
            let name = get("Package")?;
            let version = get("Version")?;
            let (source, source_version) = match get("Source") {
                Some(source) => match source.split_once(' ') {
                    Some((src, ver)) => (
                        src.to_string(),
                        ver.trim_matches(|c| c == '(' || c == ')' || c == ' ')
                            .to_string(),
                    ),
                    None => (source, version.clone()),
                },
                None => (name.clone(), version.clone()),
            };
            Some(InstalledPackage {
                architecture: get("Architecture").unwrap_or_default(),
                name,
                version,
                source,
                source_version,
            })
        })
        .collect();
    packages.sort();
    packages
}

fn field(paragraph: &str, name: &str) -> Option<String> {
    paragraph.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(':')?;
        Some(value.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purl_encodes_plus_but_not_the_epoch_colon() {
        let p = InstalledPackage {
            name: "libstdc++6".into(),
            version: "1:12.2.0-14+deb12u1".into(),
            architecture: "amd64".into(),
            source: "gcc-12".into(),
            source_version: "12.2.0-14+deb12u1".into(),
        };
        assert_eq!(
            purl("debian", &p, "debian-12"),
            "pkg:deb/debian/libstdc%2B%2B6@1:12.2.0-14%2Bdeb12u1?arch=amd64&distro=debian-12"
        );
    }

    #[test]
    fn installed_packages_with_their_sources() {
        let status = "Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\n\
Source: zlib\nVersion: 1:1.2.13.dfsg-1\n\n\
Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc (2.36-9+deb12u4)\n\
Version: 2.36-9+deb12u4\n\n\
Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\n\
Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b2\n";
        let p = installed(status);
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["bash", "libc6", "zlib1g"]);
        assert_eq!(
            (p[0].source.as_str(), p[0].source_version.as_str()),
            ("bash", "5.2.15-2+b2")
        );
        assert_eq!(
            (p[1].source.as_str(), p[1].source_version.as_str()),
            ("glibc", "2.36-9+deb12u4")
        );
        assert_eq!(
            (p[2].source.as_str(), p[2].source_version.as_str()),
            ("zlib", "1:1.2.13.dfsg-1")
        );
    }
}
