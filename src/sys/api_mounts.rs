//! A running system's API filesystems mounted into a tree for programs run
//! chrooted into it (the user's provisioning scripts and playbooks, pacman's
//! install scriptlets and alpm hooks, as arch-chroot sets them up): /proc
//! with /proc/sys read-only, /sys read-only, /dev (with its own /dev/pts
//! and /dev/shm) and a fresh /run.
//!
//! /proc in a chroot is the build host's, so a write to /proc/sys (`sysctl
//! -w`, `sysctl -p`, a program setting a knob itself) would change the
//! HOST's kernel; the read-only bind makes every such write fail instead.
//! [`ApiMounts`] stops every process left running inside the tree and
//! unmounts on every exit path (error, Ctrl-C, panic).

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::sys::fsio::{PathError, at};
use crate::sys::workdir::mounts_below;

#[derive(Debug, thiserror::Error)]
pub enum ApiMountError {
    #[error(
        "cannot mount {target} for the programs run in the tree: {errno} (imgforge must run as \
         root, outside a container that forbids mounts)"
    )]
    Mount {
        target: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error(
        "still mounted below the tree after unmounting: {0:?}; unmount them (umount -l) before \
         removing the work directory"
    )]
    MountsLeft(Vec<PathBuf>),
    #[error(transparent)]
    Io(#[from] PathError),
}

pub struct ApiMounts {
    tree: PathBuf,
    /// Mounted so far, in mount order.
    mounted: Vec<PathBuf>,
}

impl ApiMounts {
    pub fn mount(tree: &Path) -> Result<Self, ApiMountError> {
        let mut mounts = Self {
            tree: tree.to_path_buf(),
            mounted: Vec::new(),
        };
        let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mounts.add(Some("proc"), "proc", "proc", nosuid_nodev_noexec, None)?;
        let proc_sys = tree.join("proc/sys");
        mounts.add(
            Some(proc_sys.as_path()),
            "proc/sys",
            "",
            MsFlags::MS_BIND,
            None,
        )?;
        mounts.remount_read_only("proc/sys")?;
        mounts.add(Some(Path::new("/sys")), "sys", "", MsFlags::MS_BIND, None)?;
        mounts.remount_read_only("sys")?;
        mounts.add(Some(Path::new("/dev")), "dev", "", MsFlags::MS_BIND, None)?;
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

    fn add<S: nix::NixPath + ?Sized>(
        &mut self,
        source: Option<&S>,
        relative: &str,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), ApiMountError> {
        // Always below the tree: an absolute `relative` would name a host path.
        let target = self.tree.join(relative.trim_start_matches('/'));
        if fs::symlink_metadata(&target).is_err() {
            fs::create_dir_all(&target).map_err(at("create", &target))?;
        }
        let fstype = (!fstype.is_empty()).then_some(fstype);
        mount(source, &target, fstype, flags, data).map_err(|errno| ApiMountError::Mount {
            target: target.clone(),
            errno,
        })?;
        log::debug!("mounted {}", target.display());
        self.mounted.push(target);
        Ok(())
    }

    /// Binds a host folder read-only at `relative` in the tree (a `file://`
    /// package source, at the path the image's sources name).
    pub fn bind_read_only(&mut self, host: &Path, relative: &str) -> Result<(), ApiMountError> {
        self.add(Some(host), relative, "", MsFlags::MS_BIND, None)?;
        self.remount_read_only(relative)
    }

    fn remount_read_only(&mut self, relative: &str) -> Result<(), ApiMountError> {
        let target = self.tree.join(relative.trim_start_matches('/'));
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|errno| ApiMountError::Mount { target, errno })
    }

    /// Stops what runs inside the tree and unmounts everything; an error if
    /// anything is still mounted below the tree afterwards.
    pub fn unmount(mut self) -> Result<(), ApiMountError> {
        self.release();
        let left = mounts_below(&self.tree);
        if left.is_empty() {
            Ok(())
        } else {
            Err(ApiMountError::MountsLeft(left))
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

/// The processes whose root directory is `tree` (a daemon a script or a
/// package's maintainer script started).
pub fn processes_in(tree: &Path) -> Vec<i32> {
    let Ok(tree) = fs::canonicalize(tree) else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let root = fs::read_link(entry.path().join("root")).ok()?;
            (root == tree).then_some(pid)
        })
        .collect()
}

/// SIGKILL to every process inside `tree`: it would keep the mounts busy
/// and must not outlive the build.
pub fn kill_processes_in(tree: &Path) {
    for pid in processes_in(tree) {
        log::warn!("stopping process {pid} left running in {}", tree.display());
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
