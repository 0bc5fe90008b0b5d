//! Running a foreign architecture's programs during the bootstrap: the
//! kernel's binfmt_misc hands them to qemu-user-static. imgforge registers
//! the architecture's entry (`boot/architectures.toml`, `[ARCH.binfmt]`)
//! only when it is not registered already, and on the way out removes only
//! what it added (the entry, and the binfmt_misc mount if it made it), on
//! success, error and Ctrl-C alike ([`Emulation`]'s `Drop`).

use std::fs;
use std::path::{Path, PathBuf};

use crate::platform::Architecture;
use crate::sys::tool::{HostTool, Tool, ToolError};

const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

#[derive(Debug, thiserror::Error)]
pub enum BinfmtError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(
        "cannot register {name} with binfmt_misc ({dir}/register): {source}; a {arch} build on \
         this host needs it (run as root on a kernel with binfmt_misc, or register it yourself, \
         e.g. apt-get install qemu-user-static binfmt-support)"
    )]
    Register {
        name: String,
        arch: String,
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the binfmt_misc entry {path} exists but is disabled; enable it (echo 1 > {path}) or \
         remove it, then build again"
    )]
    Disabled { path: PathBuf },
}

/// The host tools a bootstrap for `arch` needs on this host beyond the
/// distro's: none natively; qemu-user-static and mmdebstrap's emulation
/// check (arch-test) otherwise.
pub fn host_tools(arch: &'static Architecture) -> Vec<HostTool> {
    if arch.is_host() {
        return Vec::new();
    }
    vec![
        HostTool::new(
            arch.binfmt
                .interpreter
                .to_str()
                .expect("interpreter paths in the table are UTF-8"),
            &arch.binfmt.package,
        ),
        HostTool::new("arch-test", "arch-test"),
    ]
}

/// The binfmt_misc entry's name for `arch` (`qemu-aarch64`).
pub fn entry_name(arch: &Architecture) -> &str {
    &arch.binfmt.name
}

/// The line written to binfmt_misc's `register` file. `F` (fix binary):
/// the kernel opens the interpreter now, so it works inside the chroot,
/// which has no copy of it.
pub fn register_line(arch: &Architecture) -> String {
    let b = &arch.binfmt;
    format!(
        ":{}:M::{}:{}:{}:F",
        b.name,
        b.magic,
        b.mask,
        b.interpreter.display()
    )
}

/// What imgforge changed to run a foreign architecture; undone on drop.
#[derive(Debug, Default)]
pub struct Emulation {
    /// The entry imgforge registered (None: it was there, or not needed).
    registered: Option<PathBuf>,
    /// binfmt_misc was mounted by imgforge.
    mounted: Option<PathBuf>,
}

impl Emulation {
    /// Nothing for the host's own architecture; otherwise makes sure the
    /// architecture's entry is registered and enabled.
    pub fn ensure(arch: &Architecture) -> Result<Self, BinfmtError> {
        Self::ensure_in(Path::new(BINFMT_DIR), arch, !arch.is_host())
    }

    fn ensure_in(dir: &Path, arch: &Architecture, foreign: bool) -> Result<Self, BinfmtError> {
        let mut emulation = Self::default();
        if !foreign {
            return Ok(emulation);
        }
        let register = dir.join("register");
        if !register.exists() {
            Tool::new("mount")
                .args(["-t", "binfmt_misc", "binfmt_misc"])
                .arg(dir)
                .run()?;
            emulation.mounted = Some(dir.to_path_buf());
        }
        let entry = dir.join(entry_name(arch));
        if entry.exists() {
            let state = fs::read_to_string(&entry).unwrap_or_default();
            if state.lines().next() == Some("disabled") {
                return Err(BinfmtError::Disabled { path: entry });
            }
            log::info!(
                "binfmt_misc: {} is registered already; left as it is",
                entry.display()
            );
            return Ok(emulation);
        }
        fs::write(&register, register_line(arch)).map_err(|source| BinfmtError::Register {
            name: entry_name(arch).to_string(),
            arch: arch.name.clone(),
            dir: dir.display().to_string(),
            source,
        })?;
        log::info!("binfmt_misc: registered {} for this build", entry.display());
        emulation.registered = Some(entry);
        Ok(emulation)
    }

    /// Whether imgforge registered the entry (and will remove it).
    pub fn registered(&self) -> bool {
        self.registered.is_some()
    }
}

impl Drop for Emulation {
    fn drop(&mut self) {
        if let Some(entry) = self.registered.take() {
            // Writing -1 to an entry removes it (and only it).
            match fs::write(&entry, "-1") {
                Ok(()) => log::info!("binfmt_misc: removed {}", entry.display()),
                Err(err) => log::warn!(
                    "cannot remove the binfmt_misc entry {} imgforge registered: {err}; \
                     remove it with: echo -1 > {}",
                    entry.display(),
                    entry.display()
                ),
            }
        }
        if let Some(dir) = self.mounted.take() {
            // Only when nothing else registered an entry meanwhile.
            let others = fs::read_dir(&dir)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .any(|e| e.file_name() != "register" && e.file_name() != "status")
                })
                .unwrap_or(true);
            if !others && let Err(err) = Tool::new("umount").arg(&dir).run() {
                log::warn!("cannot unmount binfmt_misc at {}: {err}", dir.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform;

    #[test]
    fn arm64_entry_matches_aarch64_elf_headers_only() {
        let arm = platform::lookup("arm64").unwrap();
        let line = register_line(arm);
        assert!(line.starts_with(":qemu-aarch64:M::\\x7fELF\\x02"), "{line}");
        assert!(line.ends_with(":/usr/bin/qemu-aarch64-static:F"), "{line}");
        // e_machine 0xb7 is EM_AARCH64; x86-64's is 0x3e.
        assert!(line.contains("\\x02\\x00\\xb7\\x00:"), "{line}");
        let x86 = platform::lookup("x86_64").unwrap();
        assert!(register_line(x86).contains("\\x02\\x00\\x3e\\x00:"));
        // magic and mask are the same length (20 bytes each).
        for a in [arm, x86] {
            assert_eq!(a.binfmt.magic.matches("\\x").count(), 17, "{}", a.name);
            assert_eq!(a.binfmt.mask.matches("\\x").count(), 20, "{}", a.name);
        }
    }

    #[test]
    fn a_foreign_build_needs_qemu_user_and_arch_test() {
        let arm = platform::lookup("arm64").unwrap();
        let x86 = platform::lookup("x86_64").unwrap();
        let (native, foreign) = if x86.is_host() {
            (x86, arm)
        } else {
            (arm, x86)
        };
        assert!(host_tools(native).is_empty());
        let tools: Vec<(&str, &str)> = host_tools(foreign)
            .iter()
            .map(|t| (t.name, t.package))
            .collect();
        assert_eq!(tools.len(), 2);
        assert_eq!(tools[0].1, "qemu-user-static");
        assert!(tools[0].0.ends_with("-static"), "{tools:?}");
        assert_eq!(tools[1], ("arch-test", "arch-test"));
    }

    #[test]
    fn native_builds_touch_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let arm = platform::lookup("arm64").unwrap();
        let emulation = Emulation::ensure_in(dir.path(), arm, false).unwrap();
        assert!(!emulation.registered());
        drop(emulation);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_entry_that_exists_is_kept_and_never_removed() {
        // A stand-in for the binfmt_misc folder: `register` exists (so no
        // mount), the entry too.
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("register"), "").unwrap();
        fs::write(
            dir.path().join("qemu-aarch64"),
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\n",
        )
        .unwrap();
        let arm = platform::lookup("arm64").unwrap();
        let emulation = Emulation::ensure_in(dir.path(), arm, true).unwrap();
        assert!(!emulation.registered());
        drop(emulation);
        let kept = fs::read_to_string(dir.path().join("qemu-aarch64")).unwrap();
        assert!(kept.starts_with("enabled"), "left as it was: {kept}");
        assert_eq!(
            fs::read_to_string(dir.path().join("register")).unwrap(),
            "",
            "nothing registered"
        );
    }

    #[test]
    fn a_disabled_entry_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("register"), "").unwrap();
        fs::write(dir.path().join("qemu-aarch64"), "disabled\n").unwrap();
        let arm = platform::lookup("arm64").unwrap();
        let err = Emulation::ensure_in(dir.path(), arm, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("disabled") && err.contains("echo 1 >"),
            "{err}"
        );
    }
}
