//! The installed packages as dpkg recorded them (`/var/lib/dpkg/status`):
//! name, version, architecture and source package, for the SBOM.

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct InstalledPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// The source package and its version (the binary's own when dpkg
    /// records none, as Debian does when they are the same).
    pub source: String,
    pub source_version: String,
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
