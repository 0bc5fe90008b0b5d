//! /proc, /sys, /dev (with /dev/pts and /dev/shm) and /run mounted into the
//! tree while packages are installed: pacman runs install scriptlets and
//! alpm hooks chrooted into the tree, and they expect a running system's
//! API filesystems (as arch-chroot sets them up).
//!
//! [`ApiMounts`] unmounts on every exit path (error, Ctrl-C, panic), after
//! stopping any process still running inside the tree, and
//! [`ApiMounts::unmount`] reports a mount that would not go, so that the tree
//! is never archived or removed with the host's /dev mounted in it.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::ArchError;
use crate::sys::fsio::at;
use crate::sys::workdir::mounts_below;

pub struct ApiMounts {
    tree: PathBuf,
    /// Mounted so far, in mount order.
    mounted: Vec<PathBuf>,
}

impl ApiMounts {
    pub fn mount(tree: &Path) -> Result<Self, ArchError> {
        let mut mounts = Self {
            tree: tree.to_path_buf(),
            mounted: Vec::new(),
        };
        let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mounts.add(Some("proc"), "proc", "proc", nosuid_nodev_noexec, None)?;
        mounts.add(Some("/sys"), "sys", "", MsFlags::MS_BIND, None)?;
        // Read-only: a scriptlet has no business changing the host's sysfs.
        mounts.remount_read_only("sys")?;
        mounts.add(Some("/dev"), "dev", "", MsFlags::MS_BIND, None)?;
        mounts.add(
            Some("devpts"),
            "dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        )?;
        mounts.add(
            Some("shm"),
            "dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        )?;
        mounts.add(
            Some("run"),
            "run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        )?;
        Ok(mounts)
    }

    fn add(
        &mut self,
        source: Option<&str>,
        relative: &str,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), ArchError> {
        let target = self.tree.join(relative);
        if fs::symlink_metadata(&target).is_err() {
            fs::create_dir_all(&target).map_err(at("create", &target))?;
        }
        let fstype = (!fstype.is_empty()).then_some(fstype);
        mount(source, &target, fstype, flags, data).map_err(|errno| ArchError::Mount {
            target: target.clone(),
            errno,
        })?;
        log::debug!("mounted {}", target.display());
        self.mounted.push(target);
        Ok(())
    }

    fn remount_read_only(&mut self, relative: &str) -> Result<(), ArchError> {
        let target = self.tree.join(relative);
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|errno| ArchError::Mount { target, errno })
    }

    /// Unmounts everything; an error if anything is still mounted below
    /// the tree afterwards.
    pub fn unmount(mut self) -> Result<(), ArchError> {
        self.release();
        let left = mounts_below(&self.tree);
        if left.is_empty() {
            Ok(())
        } else {
            Err(ArchError::MountsLeft(left))
        }
    }

    fn release(&mut self) {
        kill_processes_in(&self.tree);
        while let Some(target) = self.mounted.pop() {
            if let Err(errno) = umount2(&target, MntFlags::empty()) {
                log::warn!(
                    "unmounting {}: {errno}; detaching it instead",
                    target.display()
                );
                if let Err(errno) = umount2(&target, MntFlags::MNT_DETACH) {
                    log::error!("cannot unmount {}: {errno}", target.display());
                }
            }
        }
    }
}

impl Drop for ApiMounts {
    fn drop(&mut self) {
        self.release();
    }
}

/// SIGKILL to every process whose root directory is `tree` (a daemon a
/// scriptlet started, e.g. a gpg-agent): it would keep the mounts busy.
fn kill_processes_in(tree: &Path) {
    let Ok(tree) = fs::canonicalize(tree) else {
        return;
    };
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if fs::read_link(entry.path().join("root")).is_ok_and(|root| root == tree) {
            log::warn!("stopping process {pid} left running in {}", tree.display());
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
