//! The one fixture home of the integration tests. Each test file says
//! `mod common;` and uses what it needs:
//!
//! - here: the binary's path, [`text`], [`is_root`], [`have`], [`scratch`],
//!   [`heavy`] (one heavy job at a time) and [`prerequisites`] (fail under
//!   `CI=true` when what CI always has is missing; skip loudly elsewhere);
//! - [`aws`]: moto (one per test file), the recording/fault proxy, pattern
//!   images, imgforge with fake credentials;
//! - [`image`]: the one Debian small image of a `cargo test` run, shared by
//!   every test binary;
//! - [`qemu`]: boot-test runs and the checks that nothing was left behind;
//! - [`gpg`]: throwaway GnuPG homes for signed fixtures;
//! - [`sbom`]: the SBOM validators;
//! - [`uefi`]: UEFI variable stores read by independent tools.
#![allow(dead_code)]

pub mod aws;
pub mod gpg;
pub mod image;
pub mod qemu;
pub mod sbom;
pub mod uefi;

#[allow(unused_imports)]
pub use aws::*;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, Once};

/// The imgforge binary under test.
pub const IMGFORGE: &str = env!("CARGO_BIN_EXE_imgforge");

/// stdout then stderr, for assertions and failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether `tool` is on PATH or in an sbin folder (where root's tools are).
pub fn have(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(Into::into))
        .any(|dir| dir.join(tool).is_file())
}

/// Runs `program ARGS` and returns its output (panics only if it cannot start).
pub fn run_program(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// A temporary folder under /var/tmp (images are large; /tmp may be a tmpfs).
pub fn scratch(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .unwrap()
}

/// Removes `path` (a folder) when the test binary exits. For scratch folders
/// kept in a `static` for all of a file's tests: statics are never dropped,
/// so their `TempDir` alone would leave an image behind after every run.
pub fn remove_at_exit(path: &Path) {
    static PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    static REGISTER: Once = Once::new();
    extern "C" fn remove_all() {
        let paths = PATHS.lock().unwrap_or_else(|e| e.into_inner());
        for path in paths.iter() {
            let _ = std::fs::remove_dir_all(path);
        }
    }
    // SAFETY: atexit only stores the function pointer; the test harness
    // leaves through exit(3) (a return from main or process::exit), which
    // runs it once, after every test thread is done.
    REGISTER.call_once(|| unsafe {
        libc::atexit(remove_all);
    });
    PATHS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(path.to_owned());
}

/// One heavy job (a bootstrap, a build, a QEMU guest) at a time in this test
/// binary: the machine has 2 cores, and test binaries run one after another.
pub fn heavy() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Something a test needs from the host that CI always provides.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// Running as root (builds, pacman, mounts).
    Root,
    /// A command, on PATH or in sbin.
    Tool(&'static str),
    /// A file, e.g. the OVMF firmware.
    File(&'static str),
}

/// What a QEMU boot of an x86_64 image needs (BIOS and UEFI).
pub const BOOT: &[Need] = &[
    Need::Tool("qemu-system-x86_64"),
    Need::Tool("qemu-img"),
    Need::File("/usr/share/OVMF/OVMF_CODE_4M.fd"),
    Need::File("/usr/share/OVMF/OVMF_VARS_4M.fd"),
];

/// What a Debian build needs.
pub const BUILD: &[Need] = &[Need::Root, Need::Tool("mmdebstrap")];

/// Whether `CI` says this is a CI run (`.ci/run` exports CI=true).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// True when every need is met. Otherwise: under CI, the test fails naming
/// what is missing (CI always has it: `.ci/setup` installs it); outside CI
/// it returns false after saying loudly, past the test harness's output
/// capture, that the test did NOT run.
pub fn prerequisites(test: &str, needs: &[&[Need]]) -> bool {
    let missing: Vec<String> = needs
        .iter()
        .flat_map(|group| group.iter())
        .filter_map(|need| match *need {
            Need::Root if !is_root() => Some("root".to_string()),
            Need::Tool(tool) if !have(tool) => Some(format!("the command `{tool}`")),
            Need::File(file) if !Path::new(file).exists() => Some(file.to_string()),
            _ => None,
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let what = missing.join(", ");
    if in_ci() {
        panic!(
            "{test} needs {what}, which CI always has: run `sudo bash .ci/setup` \
             (or run the tests as root)"
        );
    }
    // Written to the process's stderr, not through eprintln!, so that the
    // harness does not swallow it for a test that returns early.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED {test}: needs {what} (not CI, so it counts as passed but DID NOT RUN; \
         `sudo bash .ci/setup` installs everything) ***"
    );
    false
}
