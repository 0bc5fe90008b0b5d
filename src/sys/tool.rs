//! The one way imgforge runs an external program.
//!
//! Every call is logged with its full command line; a failure becomes a
//! [`ToolError`] that names the tool, its exit status and the last lines it
//! printed. Children run in their own process group so that a Ctrl-C reaches
//! imgforge first: imgforge then stops the child and cleans up in order,
//! instead of racing the child's own signal handling.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::sys::interrupt::{self, Interrupted};

/// How many trailing output lines a failure report carries.
const TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(
        "`{tool}` is not installed (install the Debian package `{package}`: apt-get install {package})"
    )]
    Missing { tool: String, package: String },
    #[error("could not start `{tool}`")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "`{tool}` failed ({status}); command: {command}\n--- last output of {tool} ---\n{tail}"
    )]
    Failed {
        tool: String,
        status: String,
        command: String,
        tail: String,
    },
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
}

/// A host tool imgforge needs, and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct HostTool {
    pub name: &'static str,
    pub package: &'static str,
}

impl HostTool {
    pub const fn new(name: &'static str, package: &'static str) -> Self {
        Self { name, package }
    }

    /// Fails with the package to install when `name` is not on PATH.
    pub fn require(&self) -> Result<(), ToolError> {
        if find_in_path(self.name).is_some() {
            Ok(())
        } else {
            Err(ToolError::Missing {
                tool: self.name.to_string(),
                package: self.package.to_string(),
            })
        }
    }
}

/// Checks a list of host tools; the first missing one is the error.
pub fn require_all(tools: &[HostTool]) -> Result<(), ToolError> {
    tools.iter().try_for_each(HostTool::require)
}

/// Looks a program up on PATH, and in /usr/sbin and /sbin, which a
/// non-login root shell's PATH may lack.
pub fn find_in_path(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(Into::into))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A command line to run, built like `std::process::Command`.
pub struct Tool {
    name: String,
    command: Command,
    printable: Vec<OsString>,
}

/// What a successful run printed.
#[derive(Debug)]
pub struct ToolOutput {
    pub stdout: Vec<u8>,
    /// The last lines of stderr: for tools that report a failed step there
    /// and still exit 0 (debugfs running a command file).
    pub stderr_tail: Vec<String>,
}

impl Tool {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref();
        let name = Path::new(program)
            .file_name()
            .unwrap_or(program)
            .to_string_lossy()
            .into_owned();
        // Resolve bare names ourselves so that sbin tools are found even
        // when PATH lacks sbin.
        let resolved = match program.to_str() {
            Some(bare) if !bare.contains('/') => find_in_path(bare)
                .map(|p| p.into_os_string())
                .unwrap_or_else(|| program.to_owned()),
            _ => program.to_owned(),
        };
        Self {
            name,
            command: Command::new(resolved),
            printable: vec![program.to_owned()],
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.printable.push(arg.as_ref().to_owned());
        self.command.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for arg in args {
            self = self.arg(arg);
        }
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    /// The value this tool's environment sets for `key` (None: inherited).
    pub fn env_value(&self, key: &str) -> Option<&OsStr> {
        self.command
            .get_envs()
            .find(|(k, _)| *k == OsStr::new(key))
            .and_then(|(_, v)| v)
    }

    pub fn command_line(&self) -> String {
        self.printable
            .iter()
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs to completion; stdout is captured and returned, stderr is kept
    /// (last lines) for the error report and logged at debug level.
    pub fn run(mut self) -> Result<ToolOutput, ToolError> {
        log::info!("run: {}", self.command_line());
        let command_line = self.command_line();
        self.command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = self.command.spawn().map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ToolError::Missing {
                tool: self.name.clone(),
                package: "(see README: host packages)".into(),
            },
            _ => ToolError::Spawn {
                tool: self.name.clone(),
                source,
            },
        })?;
        let _guard = interrupt::ChildGuard::new(child.id());

        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let stderr_thread = spawn_line_collector(child.stderr.take(), tail.clone(), &self.name);
        let stdout_pipe = child.stdout.take();
        let stdout_thread = thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = stdout_pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        });
        let status = wait_interruptibly(&mut child, &self.name)?;
        let stdout = stdout_thread.join().unwrap_or_default();
        let _ = stderr_thread.join();
        let mut lines: Vec<String> = tail.lock().unwrap().iter().cloned().collect();
        if status.success() {
            return Ok(ToolOutput {
                stdout,
                stderr_tail: lines,
            });
        }
        if lines.len() <= 1 {
            // Some tools report errors on stdout only, after a banner on
            // stderr (e2fsck, debugfs).
            let text = String::from_utf8_lossy(&stdout);
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(TAIL_LINES);
            lines.extend(all[from..].iter().map(|s| s.to_string()));
        }
        Err(ToolError::Failed {
            tool: self.name,
            status: describe_status(status),
            command: command_line,
            tail: lines.join("\n"),
        })
    }
}

fn spawn_line_collector(
    pipe: Option<impl Read + Send + 'static>,
    tail: Arc<Mutex<VecDeque<String>>>,
    tool: &str,
) -> thread::JoinHandle<()> {
    let tool = tool.to_string();
    thread::spawn(move || {
        let Some(pipe) = pipe else { return };
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            log::debug!("{tool}: {line}");
            let mut tail = tail.lock().unwrap();
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    })
}

/// Waits for the child, polling the interrupt flag; on Ctrl-C the child's
/// process group gets SIGTERM, then SIGKILL after a grace period.
fn wait_interruptibly(child: &mut Child, tool: &str) -> Result<ExitStatus, ToolError> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(source) => {
                return Err(ToolError::Spawn {
                    tool: tool.to_string(),
                    source,
                });
            }
        }
        if interrupt::requested() {
            let pid = child.id();
            interrupt::terminate_group(pid, Duration::from_secs(20), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            let _ = child.wait();
            log::info!("interrupted while `{tool}` was running: stopped it");
            return Err(Interrupted.into());
        }
        thread::sleep(Duration::from_millis(25));
    }
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

fn shell_quote(arg: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !arg.is_empty() && arg.chars().all(safe) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_tool_status_and_last_lines() {
        let err = Tool::new("sh")
            .args(["-c", "echo first >&2; echo boom >&2; exit 3"])
            .run()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`sh` failed (exit status 3)"), "{text}");
        assert!(text.contains("boom"), "{text}");
    }

    #[test]
    fn success_returns_stdout() {
        let out = Tool::new("sh").args(["-c", "echo hi"]).run().unwrap();
        assert_eq!(out.stdout, b"hi\n");
    }

    #[test]
    fn missing_tool_names_package() {
        let err = HostTool::new("no-such-tool-imgforge", "imgforge-pkg")
            .require()
            .unwrap_err();
        assert!(err.to_string().contains("apt-get install imgforge-pkg"));
    }

    #[test]
    fn quoting_keeps_plain_words() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("-E"), "-E");
    }
}
