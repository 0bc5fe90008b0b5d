//! The cached tree's key: a digest of everything known before the build
//! that decides a bootstrapped tree's content (distro, release, sources,
//! package set, bootstrap files), and of what pins the package versions
//! (the mirror's state, or a lock file's versions). The plan prints it; the
//! bootstrap names the cached tarball by it.

use std::fs;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::distro::MirrorDigest;
use crate::sys::fsio::{PathError, at};

/// Bump when the way a tree is bootstrapped changes, to invalidate caches.
const RECIPE_VERSION: &str = "imgforge-bootstrap-5";

/// Extra text mixed into the mirror-state part of the key. For tests only:
/// they cannot make a real (signed) mirror publish an update, and this
/// changes the key exactly as a new mirror state would.
pub const MIRROR_STATE_SALT_ENV: &str = "IMGFORGE_TEST_MIRROR_STATE_SALT";

/// The mirror state's part of the key: each index and the digest of the
/// package lists it names.
pub fn mirror_key_lines(state: &[MirrorDigest], salt: Option<String>) -> Vec<String> {
    state
        .iter()
        .map(|m| format!("mirror {} {}", m.url, m.packages_sha256))
        .chain(salt.map(|s| format!("mirror salt {s}")))
        .collect()
}

/// The cached tree's key: the request's inputs key and what pins the
/// package versions (the mirror's state, or a lock file's versions).
pub fn tree_key(inputs_key: &str, package_state: &[String]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(inputs_key.as_bytes());
    for line in package_state {
        hasher.update([0]);
        hasher.update(line.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// The request's part of the cache key: a digest of everything known
/// before the build that decides the tree's content (no network).
pub fn cache_key(
    parts: &[&str],
    sources: &[String],
    packages: &[String],
    bootstrap_files: Option<&Path>,
) -> Result<String, PathError> {
    let mut hasher = Sha256::new();
    let mut packages = packages.to_vec();
    packages.sort();
    for part in std::iter::once(&RECIPE_VERSION).chain(parts) {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    for line in sources.iter().chain(&packages) {
        hasher.update(line.as_bytes());
        hasher.update([0]);
    }
    if let Some(files) = bootstrap_files {
        hash_tree(&mut hasher, files, files)?;
    }
    Ok(hex::encode(hasher.finalize()))
}

fn hash_tree(hasher: &mut Sha256, root: &Path, dir: &Path) -> Result<(), PathError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(at("read", dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let relative = path.strip_prefix(root).unwrap_or(&path);
        hasher.update(relative.to_string_lossy().as_bytes());
        if path.is_symlink() {
            hasher.update(
                fs::read_link(&path)
                    .map_err(at("read link", &path))?
                    .as_os_str()
                    .as_encoded_bytes(),
            );
        } else if path.is_dir() {
            hash_tree(hasher, root, &path)?;
        } else {
            hasher.update(fs::read(&path).map_err(at("read", &path))?);
        }
    }
    Ok(())
}

/// The cached tree's file name under the cache's rootfs folder:
/// `DISTRO-RELEASE-KEY.tar` ([`tree_family`] reads it back).
pub fn tree_file_name(distro: &str, release: &str, key: &str) -> String {
    format!("{distro}-{release}-{key}.tar")
}

/// The file a tree is written to before it is renamed into place, unique
/// per process (`NAME.tar.PID.partial`, [`partial_writer`] reads it back):
/// two builds of the same package set may race.
pub fn partial_path(tarball: &Path) -> std::path::PathBuf {
    tarball.with_extension(format!("tar.{}.partial", std::process::id()))
}

/// `debian-bookworm-<64 hex>.tar` -> `debian-bookworm`; None for a name
/// [`tree_file_name`] did not make.
pub fn tree_family(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".tar")?;
    let (family, key) = stem.rsplit_once('-')?;
    (key.len() == 64 && key.chars().all(|c| c.is_ascii_hexdigit())).then(|| family.to_string())
}

/// The process writing a [`partial_path`] file.
pub fn partial_writer(name: &str) -> Option<u32> {
    name.strip_suffix(".partial")
        .and_then(|s| s.rsplit_once('.'))
        .and_then(|(_, pid)| pid.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::lock::Lock;

    #[test]
    fn cache_key_follows_every_input_but_package_order() {
        let files = tempfile::tempdir().unwrap();
        fs::write(files.path().join("hook"), "a").unwrap();
        let sources = vec!["deb http://m/debian bookworm main".to_string()];
        let packages = vec!["a".to_string(), "b".to_string()];
        let key = |parts: &[&str], s: &[String], p: &[String]| {
            cache_key(parts, s, p, Some(files.path())).unwrap()
        };
        let base = key(&["debian", "bookworm"], &sources, &packages);
        assert_eq!(
            base,
            key(&["debian", "bookworm"], &sources, &["b".into(), "a".into()])
        );
        assert_ne!(base, key(&["debian", "trixie"], &sources, &packages));
        assert_ne!(base, key(&["debian", "bookworm"], &[], &packages));
        assert_ne!(base, key(&["debian", "bookworm"], &sources, &["a".into()]));
        fs::write(files.path().join("hook"), "b").unwrap();
        assert_ne!(base, key(&["debian", "bookworm"], &sources, &packages));
    }

    fn digest(url: &str, packages: &str, whole: &str) -> MirrorDigest {
        MirrorDigest {
            url: url.into(),
            sha256: whole.into(),
            packages_sha256: packages.into(),
            date: None,
        }
    }

    #[test]
    fn tree_key_follows_the_mirror_packages_not_its_signature() {
        let inputs = "0".repeat(64);
        let url = "http://m/debian/dists/bookworm/InRelease";
        let key = |state: &[MirrorDigest], salt: Option<&str>| {
            tree_key(&inputs, &mirror_key_lines(state, salt.map(String::from)))
        };
        let base = key(&[digest(url, "p1", "f1")], None);
        assert_eq!(base.len(), 64);
        assert_ne!(base, inputs);
        // Re-signed (new file digest, same package indexes): same tree.
        assert_eq!(base, key(&[digest(url, "p1", "f2")], None));
        // A new package index (an update): another tree.
        assert_ne!(base, key(&[digest(url, "p2", "f2")], None));
        // Another suite's state counts too.
        assert_ne!(
            base,
            key(
                &[
                    digest(url, "p1", "f1"),
                    digest("http://m/sec/InRelease", "s", "s")
                ],
                None
            )
        );
        assert_ne!(base, key(&[digest(url, "p1", "f1")], Some("1")));
        assert_ne!(tree_key("a", &[]), tree_key("b", &[]));
    }

    #[test]
    fn a_locked_key_follows_the_locked_versions_only() {
        let mut lock: Lock = toml::from_str(
            "format = 1\ndistro = \"debian\"\nrelease = \"bookworm\"\narchitecture = \"amd64\"\n\
             kernel = \"cloud\"\nsources = []\nrequested = [\"a\"]\n[packages]\na = \"1\"\nb = \"2\"\n",
        )
        .unwrap();
        let inputs = "0".repeat(64);
        let base = tree_key(&inputs, &lock.key_lines());
        lock.mirror_state.push(digest("u", "p", "f"));
        lock.newest_package_date = Some("2026-01-01T00:00:00Z".into());
        assert_eq!(base, tree_key(&inputs, &lock.key_lines()));
        lock.packages.insert("b".into(), "3".into());
        assert_ne!(base, tree_key(&inputs, &lock.key_lines()));
    }
}
