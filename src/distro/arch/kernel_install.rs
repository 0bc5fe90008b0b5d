//! The kernel at /boot after pacman's transaction. On Arch the `linux`
//! package ships /usr/lib/modules/VERSION/vmlinuz and mkinitcpio's install
//! hook copies it to /boot/vmlinuz-PKGBASE before building the initramfs;
//! pacman exits 0 when that hook fails. The initrd check looks only at the
//! kernels in /boot, so a failed hook left no kernel and no error until
//! after the tree was cached. Checked here, before the tree is archived,
//! with what pacman printed about its hooks.

use std::fs;
use std::path::Path;

use super::ArchError;
use crate::distro::DistroData;

/// After pacman's transaction: the kernel in /boot ([`check`]), then the
/// initramfs grub.cfg names (`distro::initrd`), pacman's hook output logged
/// when that is missing.
pub fn check_boot_files(
    tree: &Path,
    data: &DistroData,
    pacman_output: &str,
) -> Result<(), ArchError> {
    check(tree, pacman_output)?;
    crate::distro::initrd::check_installed(tree, data)
        .map(drop)
        .map_err(|err| {
            log::error!("pacman's hooks printed:\n{}", hook_output(pacman_output));
            err.into()
        })
}

/// How many of pacman's last hook lines the error quotes.
const QUOTED_LINES: usize = 12;

/// Ok when a kernel is in /boot or none is installed at all (a tree
/// without a kernel package); otherwise the error names the installed
/// kernel and quotes pacman's hook output (`pacman_output`: its stdout
/// and stderr, in that order).
pub fn check(tree: &Path, pacman_output: &str) -> Result<(), ArchError> {
    let in_boot = fs::read_dir(tree.join("boot"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"));
    if in_boot {
        return Ok(());
    }
    let installed: Vec<String> = fs::read_dir(tree.join("usr/lib/modules"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("vmlinuz").is_file())
        .map(|e| {
            format!(
                "/usr/lib/modules/{}/vmlinuz",
                e.file_name().to_string_lossy()
            )
        })
        .collect();
    if installed.is_empty() {
        return Ok(());
    }
    Err(ArchError::KernelNotInBoot {
        installed: installed.join(", "),
        output: hook_output(pacman_output),
    })
}

/// The hook section of pacman's output (from ":: Running post-transaction
/// hooks"), its last lines; all of the last lines when there is none.
fn hook_output(output: &str) -> String {
    let hooks = output
        .find(":: Running post-transaction hooks")
        .map_or(output, |at| &output[at..]);
    let lines: Vec<&str> = hooks.lines().filter(|l| !l.trim().is_empty()).collect();
    let from = lines.len().saturating_sub(QUOTED_LINES);
    lines[from..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAILED: &str = "installing linux...\n:: Running post-transaction hooks...\n\
        (1/1) Updating linux initcpios...\n==> ERROR: module not found: nvme\n\
        error: command failed to execute correctly\n";

    #[test]
    fn an_installed_kernel_missing_from_boot_fails_with_the_hook_output() {
        let tree = tempfile::tempdir().unwrap();
        let modules = tree.path().join("usr/lib/modules/6.12.1-arch1-1");
        fs::create_dir_all(&modules).unwrap();
        fs::write(modules.join("vmlinuz"), "kernel").unwrap();
        fs::create_dir_all(tree.path().join("boot")).unwrap();
        let err = check(tree.path(), FAILED).unwrap_err().to_string();
        assert!(
            err.contains("/usr/lib/modules/6.12.1-arch1-1/vmlinuz"),
            "{err}"
        );
        assert!(err.contains("module not found: nvme"), "{err}");
        assert!(err.contains("command failed to execute correctly"), "{err}");
        assert!(!err.contains("installing linux"), "{err}");

        // The hook copied the kernel: fine.
        fs::write(tree.path().join("boot/vmlinuz-linux"), "kernel").unwrap();
        check(tree.path(), FAILED).unwrap();
    }

    #[test]
    fn a_tree_without_a_kernel_package_passes() {
        let tree = tempfile::tempdir().unwrap();
        check(tree.path(), "").unwrap();
    }
}
