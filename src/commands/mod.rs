//! The command line's edge: one file per subcommand with its clap arguments,
//! the conversion to the engine's plain typed request (all input checks
//! happen there, before any work), and the printing. Nothing outside
//! `src/main.rs` and this folder imports clap.

pub mod ami;
pub mod boot_test;
pub mod config;
pub mod diff;
pub mod upload;

/// Bad input found before any work started (a flag's value, a missing file,
/// an unknown distro): `main` exits with status 2 for it, 1 for a failure
/// during the work and 130 for Ctrl-C. Return it as
/// `Err(BadInput::new(message))?` (anyhow converts it) or wrap an engine's validation error with
/// `.map_err(BadInput::from_error)`.
#[allow(dead_code)] // used as the subcommands move here (issue 20)
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

#[allow(dead_code)]
impl BadInput {
    pub fn new(message: impl Into<String>) -> Self {
        BadInput(message.into())
    }

    /// An engine's error, reported with its whole cause chain, as bad input.
    pub fn from_error(err: impl Into<anyhow::Error>) -> Self {
        let err: anyhow::Error = err.into();
        BadInput(format!("{err:#}"))
    }
}
