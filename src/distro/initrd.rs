//! The initramfs grub.cfg will name, checked in a bootstrapped tree. The
//! generator (mkinitcpio, update-initramfs) runs in a package hook whose
//! failure does not change the package manager's exit status, so a tree
//! can have a kernel and no initramfs, or an empty one: the image would
//! stop at boot with "unable to mount root". Every distro's bootstrap is
//! checked here, before its tree is cached.

use std::fs;
use std::path::{Path, PathBuf};

use super::DistroData;
use crate::sys::fsio::{PathError, at};

/// Symlinks followed before a path is called a loop.
const MAX_LINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(
        "the bootstrapped tree has the kernel {kernel} but no initramfs at {initrd}, which grub.cfg \
         names: the initramfs generator ({generator}) failed or did not run in its package hook \
         (package managers do not fail for a failed hook; its output is in the build log, -v). \
         The tree was not cached; fix the package set or the generator's configuration"
    )]
    Missing {
        kernel: String,
        initrd: String,
        generator: String,
    },
    #[error(
        "the initramfs {initrd} that grub.cfg names is empty: the initramfs generator ({generator}) \
         failed part-way in its package hook (its output is in the build log, -v). The tree was \
         not cached; fix the package set or the generator's configuration"
    )]
    Empty { initrd: String, generator: String },
}

/// `template` with `{{name}}` replaced by the distro's template variables
/// for `kernel` (the same values grub.cfg is rendered with).
pub fn render_boot_path(data: &DistroData, template: &str, kernel: &str) -> String {
    let mut path = template.to_string();
    for (name, value) in data.template_variables(kernel) {
        path = path.replace(&format!("{{{{{name}}}}}"), &value);
    }
    path
}

/// `path` (absolute as the image sees it) inside `root`, symlinks followed
/// within the tree: an absolute target is relative to `root`, not the host.
pub fn resolve_in_tree(root: &Path, path: &str) -> PathBuf {
    let mut inside = PathBuf::from(path.trim_start_matches('/'));
    for _ in 0..MAX_LINKS {
        let host = root.join(&inside);
        let Ok(target) = fs::read_link(&host) else {
            return host;
        };
        inside = if target.is_absolute() {
            target.strip_prefix("/").unwrap_or(&target).to_path_buf()
        } else {
            inside
                .parent()
                .map_or_else(|| target.clone(), |p| p.join(&target))
        };
    }
    root.join(inside)
}

/// For every kernel choice of the distro whose image grub.cfg would name
/// is in the tree, its initramfs must be there and not empty. Returns the
/// initramfs files found (in the tree).
pub fn check_installed(root: &Path, data: &DistroData) -> Result<Vec<PathBuf>, InitrdError> {
    let mut found = Vec::new();
    let mut kernels: Vec<&String> = data.kernels.keys().collect();
    kernels.sort();
    for kernel in kernels {
        let kernel_path = render_boot_path(data, &data.grub_kernel, kernel);
        if !resolve_in_tree(root, &kernel_path).is_file() {
            continue;
        }
        let initrd = render_boot_path(data, &data.grub_initrd, kernel);
        let file = resolve_in_tree(root, &initrd);
        let Ok(meta) = fs::metadata(&file) else {
            return Err(InitrdError::Missing {
                kernel: kernel_path,
                initrd,
                generator: data.initramfs.clone(),
            });
        };
        if !meta.is_file() {
            let error = std::io::Error::other("not a regular file");
            return Err(at("read", &file)(error).into());
        }
        if meta.len() == 0 {
            return Err(InitrdError::Empty {
                initrd,
                generator: data.initramfs.clone(),
            });
        }
        if !found.contains(&file) {
            found.push(file);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::DataDir;
    use std::os::unix::fs::symlink;

    fn data(name: &str) -> DistroData {
        crate::distro::read_data(&DataDir::open(None).unwrap(), name).unwrap()
    }

    fn put(root: &Path, path: &str, bytes: &[u8]) {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn arch_initramfs_missing_or_empty_is_an_error() {
        let arch = data("arch");
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // No kernel: nothing to check (the kernel check says so later).
        assert!(check_installed(r, &arch).unwrap().is_empty());
        put(r, "boot/vmlinuz-linux", b"kernel");
        let err = check_installed(r, &arch).unwrap_err().to_string();
        assert!(
            err.contains("/boot/initramfs-linux.img") && err.contains("mkinitcpio"),
            "{err}"
        );
        put(r, "boot/initramfs-linux.img", b"");
        let err = check_installed(r, &arch).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
        put(r, "boot/initramfs-linux.img", b"cpio");
        assert_eq!(
            check_installed(r, &arch).unwrap(),
            [r.join("boot/initramfs-linux.img")]
        );
    }

    /// Debian's grub.cfg names /vmlinuz and /initrd.img, symlinks into
    /// boot/; an absolute link target is inside the tree, not the host's.
    #[test]
    fn debian_initrd_symlink_is_followed_inside_the_tree() {
        let debian = data("debian");
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        put(r, "boot/vmlinuz-6.1.0-cloud-amd64", b"kernel");
        symlink("boot/vmlinuz-6.1.0-cloud-amd64", r.join("vmlinuz")).unwrap();
        symlink("/boot/initrd.img-6.1.0-cloud-amd64", r.join("initrd.img")).unwrap();
        let err = check_installed(r, &debian).unwrap_err().to_string();
        assert!(err.contains("/initrd.img"), "{err}");
        put(r, "boot/initrd.img-6.1.0-cloud-amd64", b"cpio");
        assert_eq!(
            check_installed(r, &debian).unwrap(),
            [r.join("boot/initrd.img-6.1.0-cloud-amd64")]
        );
    }
}
