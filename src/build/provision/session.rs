//! The image tree made ready for the user's programs, and put back after:
//! API filesystems mounted ([`ApiMounts`], /proc/sys read-only), the
//! host's DNS answers reachable through the image's own resolv.conf, no
//! service started (`policy-rc.d` answers 101), and stand-ins first on
//! PATH (apt's `DPkg::Path` too, for maintainer scripts), in the tree's fresh /run (so nothing of them outlives the
//! session):
//!
//! - `uname` reports the image's kernel, not the build host's, so that
//!   DKMS and kernel-aware maintainer scripts build for the image;
//! - `sysctl -w`/`-p`/`--system`, `modprobe`, `insmod`, `rmmod` and
//!   `systemctl start` (and the like) succeed without touching the host:
//!   in a chroot they would change the BUILD HOST's kernel and services.
//!   The settings stay in the image's files and apply when it boots, as
//!   they would on an instance after a reboot. The read-only /proc/sys
//!   catches a program that writes the knobs itself.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::sys::api_mounts::{ApiMountError, ApiMounts};
use crate::sys::fsio::{PathError, at};

/// Where the stand-ins live inside the tree (on the session's /run tmpfs).
pub const STAND_INS: &str = "/run/imgforge/bin";
/// Where the session puts the files it runs (also on /run).
pub const SCRATCH: &str = "/run/imgforge";
const POLICY_RC_D: &str = "usr/sbin/policy-rc.d";
const RESOLV_CONF: &str = "etc/resolv.conf";
const APT_CONF: &str = "etc/apt/apt.conf.d/00imgforge-provision";
const SAVED_SUFFIX: &str = ".imgforge-saved";

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Mounts(#[from] ApiMountError),
    #[error(transparent)]
    Io(#[from] PathError),
}

/// A file of the image replaced for the session and put back at its end.
struct Replaced {
    path: PathBuf,
    saved: Option<PathBuf>,
}

pub struct Session {
    root: PathBuf,
    mounts: Option<ApiMounts>,
    replaced: Vec<Replaced>,
    /// Folders made in the tree for the session's mounts, outermost first.
    created: Vec<PathBuf>,
}

impl Session {
    /// `local_sources`: host folders of `file://` package sources, bound
    /// read-only at the same path in the tree so that apt reads them there.
    pub fn open(
        root: &Path,
        kernel_version: &str,
        local_sources: &[PathBuf],
    ) -> Result<Self, SessionError> {
        let mut session = Self {
            root: root.to_path_buf(),
            mounts: Some(ApiMounts::mount(root)?),
            replaced: Vec::new(),
            created: Vec::new(),
        };
        for dir in local_sources {
            session.bind_local_source(dir)?;
        }
        session.write_stand_ins(kernel_version)?;
        session.replace(
            POLICY_RC_D,
            b"#!/bin/sh\n# imgforge: no service starts while the image is built.\nexit 101\n",
            0o755,
        )?;
        // apt runs dpkg with a PATH of its own: the stand-ins first there
        // too, so that maintainer scripts (DKMS's, procps's) see them. A
        // tree without apt (Arch) gets no apt folder.
        let dpkg_path = format!(
            "// imgforge: removed after the build.\nDPkg::Path \"{}\";\n",
            Self::path_variable()
        );
        if root.join(APT_CONF).parent().is_some_and(Path::is_dir) {
            session.replace(APT_CONF, dpkg_path.as_bytes(), 0o644)?;
        }
        session.link_resolv_conf()?;
        Ok(session)
    }

    /// The PATH programs in the tree get: the stand-ins first.
    pub fn path_variable() -> String {
        format!("{STAND_INS}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    }

    /// A path inside the tree as the host sees it.
    pub fn host_path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }

    fn bind_local_source(&mut self, dir: &Path) -> Result<(), SessionError> {
        let target = self.host_path(&dir.to_string_lossy());
        if target.exists() {
            return Ok(()); // the tree has it already: the image's own
        }
        // Remember the outermost folder made, to remove it afterwards.
        let mut outermost = target.clone();
        while let Some(parent) = outermost.parent() {
            if parent.exists() {
                break;
            }
            outermost = parent.to_path_buf();
        }
        self.created.push(outermost);
        if let Some(mounts) = &mut self.mounts {
            mounts.bind_read_only(dir, &dir.to_string_lossy())?;
        }
        Ok(())
    }

    fn write_stand_ins(&self, kernel_version: &str) -> Result<(), SessionError> {
        let dir = self.host_path(STAND_INS);
        fs::create_dir_all(&dir).map_err(at("create", &dir))?;
        for (name, body) in stand_ins(kernel_version) {
            let path = dir.join(name);
            fs::write(&path, body).map_err(at("write", &path))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .map_err(at("chmod", &path))?;
        }
        Ok(())
    }

    /// Writes `relative` for the session, keeping what was there.
    fn replace(&mut self, relative: &str, bytes: &[u8], mode: u32) -> Result<(), SessionError> {
        let path = self.root.join(relative);
        let saved = if path.symlink_metadata().is_ok() {
            let saved = PathBuf::from(format!("{}{SAVED_SUFFIX}", path.display()));
            fs::rename(&path, &saved).map_err(at("move aside", &path))?;
            Some(saved)
        } else {
            None
        };
        self.replaced.push(Replaced {
            path: path.clone(),
            saved,
        });
        fs::write(&path, bytes).map_err(at("write", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(at("chmod", &path))?;
        Ok(())
    }

    /// The host's name servers for the session. The image's resolv.conf
    /// usually links into /run (systemd-resolved's stub): the link stays
    /// and its target is written on the session's /run; otherwise the file
    /// is replaced and put back.
    fn link_resolv_conf(&mut self) -> Result<(), SessionError> {
        let host = fs::read("/etc/resolv.conf").unwrap_or_default();
        let path = self.root.join(RESOLV_CONF);
        if let Ok(link) = fs::read_link(&path) {
            let target = resolve_inside(&self.root, Path::new("/etc"), &link);
            if target.starts_with(self.root.join("run")) {
                if let Some(dir) = target.parent() {
                    fs::create_dir_all(dir).map_err(at("create", dir))?;
                }
                fs::write(&target, &host).map_err(at("write", &target))?;
                return Ok(());
            }
        }
        self.replace(RESOLV_CONF, &host, 0o644)
    }

    /// Puts everything back: the replaced files, then the mounts (after
    /// stopping every process left inside the tree).
    pub fn close(mut self) -> Result<(), SessionError> {
        self.restore();
        if let Some(mounts) = self.mounts.take() {
            mounts.unmount()?;
        }
        self.remove_created();
        Ok(())
    }

    /// The folders made for mounts, once nothing is mounted on them (empty
    /// folders only: never anything a mount brought).
    fn remove_created(&mut self) {
        for top in self.created.drain(..) {
            let mut dirs: Vec<PathBuf> = walkdir_dirs(&top);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for dir in dirs {
                let _ = fs::remove_dir(&dir);
            }
        }
    }

    fn restore(&mut self) {
        while let Some(file) = self.replaced.pop() {
            let _ = fs::remove_file(&file.path);
            if let Some(saved) = file.saved
                && let Err(err) = fs::rename(&saved, &file.path)
            {
                log::error!("cannot put back {}: {err}", file.path.display());
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.restore();
        // ApiMounts' own drop stops what runs inside and unmounts.
        let mounts = self.mounts.take();
        let was_open = mounts.is_some();
        drop(mounts);
        if was_open {
            self.remove_created();
        }
    }
}

/// `top` and the folders below it (not following symlinks).
fn walkdir_dirs(top: &Path) -> Vec<PathBuf> {
    let mut found = vec![top.to_path_buf()];
    let mut i = 0;
    while i < found.len() {
        if let Ok(entries) = fs::read_dir(&found[i]) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    found.push(entry.path());
                }
            }
        }
        i += 1;
    }
    found
}

/// A symlink's target inside the tree, `..` resolved lexically (never
/// above the tree's root).
fn resolve_inside(root: &Path, link_dir: &Path, link: &Path) -> PathBuf {
    let joined = if link.is_absolute() {
        link.to_path_buf()
    } else {
        link_dir.join(link)
    };
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for component in joined.components() {
        match component {
            Component::Normal(name) => parts.push(name),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    parts
        .iter()
        .fold(root.to_path_buf(), |p, name| p.join(name))
}

/// The stand-ins (see the module's header), by name.
fn stand_ins(kernel_version: &str) -> Vec<(&'static str, String)> {
    const NOT_ON_THE_HOST: &str = "echo \"imgforge: '$0 $*' not run: this is the image's tree on the build host, \
whose kernel must not change (the image applies its settings when it boots)\"";
    vec![
        (
            "uname",
            format!(
                "#!/bin/sh\n# imgforge: the image's kernel, not the build host's.\n\
                 out=$(/usr/bin/uname \"$@\") || exit $?\nhost=$(/usr/bin/uname -r)\n\
                 printf '%s\\n' \"$out\" | sed \"s|$host|{kernel_version}|g\"\n"
            ),
        ),
        (
            "sysctl",
            format!(
                "#!/bin/sh\nfor arg in \"$@\"; do\n  case \"$arg\" in\n    \
                 -w|--write|-p|-p*|--load|--load=*|--system|*=*) {NOT_ON_THE_HOST}; exit 0 ;;\n  \
                 esac\ndone\nexec /usr/sbin/sysctl \"$@\"\n"
            ),
        ),
        (
            "modprobe",
            format!(
                "#!/bin/sh\nfor arg in \"$@\"; do\n  case \"$arg\" in\n    \
                 -n|--dry-run|-D|--show-depends|-c|--showconfig|-V|--version) exec /usr/sbin/modprobe \"$@\" ;;\n  \
                 esac\ndone\n{NOT_ON_THE_HOST}\n"
            ),
        ),
        ("insmod", format!("#!/bin/sh\n{NOT_ON_THE_HOST}\n")),
        ("rmmod", format!("#!/bin/sh\n{NOT_ON_THE_HOST}\n")),
        (
            "systemctl",
            format!(
                "#!/bin/sh\n# imgforge: units are enabled in the image, never started on the build host.\n\
                 for arg in \"$@\"; do\n  case \"$arg\" in\n    \
                 start|stop|restart|reload|try-restart|reload-or-restart|try-reload-or-restart|isolate|kill|daemon-reload|daemon-reexec) \
                 {NOT_ON_THE_HOST}; exit 0 ;;\n  esac\ndone\n\
                 first=1\nfor arg in \"$@\"; do\n  [ \"$first\" = 1 ] && set -- && first=0\n  \
                 [ \"$arg\" = --now ] || set -- \"$@\" \"$arg\"\ndone\nexec /usr/bin/systemctl \"$@\"\n"
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_resolve_inside_the_tree() {
        let root = Path::new("/w/rootfs");
        assert_eq!(
            resolve_inside(
                root,
                Path::new("/etc"),
                Path::new("../run/systemd/resolve/stub-resolv.conf")
            ),
            Path::new("/w/rootfs/run/systemd/resolve/stub-resolv.conf")
        );
        assert_eq!(
            resolve_inside(root, Path::new("/etc"), Path::new("/../../x")),
            Path::new("/w/rootfs/x")
        );
    }

    /// The stand-ins run here as they would in the tree (the host's
    /// /usr/bin/uname and /usr/sbin/sysctl stand for the image's); only
    /// those that change nothing are run.
    #[test]
    fn uname_tells_the_images_kernel_and_sysctl_writes_do_nothing() {
        let stand_ins = stand_ins("6.1.0-99-cloud-amd64");
        let run = |name: &str, args: &[&str]| {
            let body = &stand_ins.iter().find(|(n, _)| *n == name).unwrap().1;
            std::process::Command::new("sh")
                .args(["-c", body, name])
                .args(args)
                .output()
                .unwrap()
        };
        let uname = run("uname", &["-r"]);
        assert_eq!(
            String::from_utf8_lossy(&uname.stdout).trim(),
            "6.1.0-99-cloud-amd64"
        );
        let all = String::from_utf8_lossy(&run("uname", &["-a"]).stdout).into_owned();
        assert!(all.contains("6.1.0-99-cloud-amd64"), "{all}");
        let before = fs::read_to_string("/proc/sys/vm/swappiness").unwrap_or_default();
        for args in [
            &["-w", "vm.swappiness=7"][..],
            &["-p", "/etc/sysctl.d/x.conf"],
            &["--system"],
        ] {
            let out = run("sysctl", args);
            assert!(out.status.success(), "{args:?}");
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("not run"),
                "{args:?}"
            );
        }
        assert_eq!(
            fs::read_to_string("/proc/sys/vm/swappiness").unwrap_or_default(),
            before
        );
        for (name, args) in [
            ("modprobe", &["dummy"][..]),
            ("systemctl", &["start", "ssh"]),
        ] {
            let out = run(name, args);
            assert!(
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains("not run")
            );
        }
    }

    #[test]
    fn stand_ins_are_shell_that_sh_accepts() {
        for (name, body) in stand_ins("6.1.0-99-cloud-amd64") {
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", &body])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
