//! `boot-test --tpm`: a software TPM 2.0 (swtpm) for one boot, with only
//! the SHA-256 PCR bank active, as EC2's NitroTPM firmware keeps it. Its
//! state lives in the attempt's folder; the process dies with the boot
//! (and with imgforge, even on SIGKILL).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sys::interrupt::{self, ChildGuard};
use crate::sys::tool::{HostTool, Tool, ToolError};

pub const SWTPM: HostTool = HostTool::new("swtpm", "swtpm");
pub const SWTPM_SETUP: HostTool = HostTool::new("swtpm_setup", "swtpm-tools");

#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("could not start swtpm")]
    Spawn(#[source] std::io::Error),
    #[error("swtpm did not open its socket {0} within 10 s")]
    NoSocket(PathBuf),
}

/// A running swtpm; dropping it stops it.
pub struct SoftwareTpm {
    child: Child,
    _guard: ChildGuard,
    /// The control socket QEMU's `-chardev socket` connects to.
    pub socket: PathBuf,
}

impl SoftwareTpm {
    /// A fresh TPM 2.0 (SHA-256 bank only) with its state in `dir`.
    pub fn start(dir: &Path) -> Result<Self, TpmError> {
        let state = dir.join("tpm");
        std::fs::create_dir_all(&state).map_err(TpmError::Spawn)?;
        Tool::new(SWTPM_SETUP.name)
            .args([
                "--tpm2",
                "--pcr-banks",
                "sha256",
                "--overwrite",
                "--tpmstate",
            ])
            .arg(&state)
            .run()?;
        let socket = dir.join("tpm.sock");
        let mut command = Command::new(SWTPM.name);
        command
            .args(["socket", "--tpm2", "--terminate", "--tpmstate"])
            .arg(format!("dir={}", state.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        log::info!("run: {command:?}");
        // SAFETY: between fork and exec only async-signal-safe calls are made.
        unsafe {
            command.pre_exec(|| {
                // If imgforge dies without cleaning up (SIGKILL), so does swtpm.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(TpmError::Spawn)?;
        let tpm = Self {
            _guard: ChildGuard::new(child.id()),
            child,
            socket,
        };
        let until = Instant::now() + Duration::from_secs(10);
        while !tpm.socket.exists() {
            if Instant::now() > until {
                return Err(TpmError::NoSocket(tpm.socket.clone()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(tpm)
    }
}

impl Drop for SoftwareTpm {
    fn drop(&mut self) {
        let child = &mut self.child;
        interrupt::terminate_group(child.id(), Duration::from_secs(2), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        let _ = self.child.wait();
    }
}
