//! Ctrl-C and SIGTERM handling.
//!
//! The signal only sets a flag. Long work polls [`requested`] and returns
//! an "interrupted" error, so that every guard (work directory, temporary
//! output, child process) is dropped in order on the normal error path.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
static CHILDREN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

fn flag() -> &'static Arc<AtomicBool> {
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Installs the handlers for SIGINT, SIGTERM and SIGHUP.
pub fn install() -> std::io::Result<()> {
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(signal, flag().clone())?;
    }
    Ok(())
}

/// True once the user asked imgforge to stop.
pub fn requested() -> bool {
    flag().load(Ordering::SeqCst)
}

/// Marks a child process group as live for as long as the guard exists, so
/// that [`terminate_all`] can stop it if imgforge must exit early.
pub struct ChildGuard(u32);

impl ChildGuard {
    pub fn new(pid: u32) -> Self {
        CHILDREN.lock().unwrap().insert(pid);
        Self(pid)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        CHILDREN.lock().unwrap().remove(&self.0);
    }
}

/// SIGTERM to the process group led by `pid`; SIGKILL to the group once
/// `grace` has passed without `finished` saying the leader is gone.
pub fn terminate_group(pid: u32, grace: Duration, mut finished: impl FnMut() -> bool) {
    let group = Pid::from_raw(pid as i32);
    if killpg(group, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Whatever the leader left behind in its group goes too.
    let _ = killpg(group, Signal::SIGKILL);
}

/// Stops every child group still registered (used on the way out).
pub fn terminate_all() {
    let pids: Vec<u32> = CHILDREN.lock().unwrap().iter().copied().collect();
    for pid in pids {
        // Not our child to reap here: probe the group with signal 0.
        let group = Pid::from_raw(pid as i32);
        terminate_group(pid, Duration::from_secs(5), || killpg(group, None).is_err());
    }
}

/// The one error every module returns when the user pressed Ctrl-C (or the
/// process got SIGTERM/SIGHUP): module error enums wrap it with
/// `#[error(transparent)] Interrupted(#[from] Interrupted)`, and `main` maps
/// it to exit status 130.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted (Ctrl-C or SIGTERM): stopped and cleaned up")]
pub struct Interrupted;

/// `Err(Interrupted)` once the user asked imgforge to stop.
pub fn check() -> Result<(), Interrupted> {
    if requested() {
        Err(Interrupted)
    } else {
        Ok(())
    }
}
