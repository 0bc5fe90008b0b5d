//! The command line's edge: one file per subcommand with its clap arguments,
//! the conversion to the engine's plain typed request (all input checks
//! happen there, before any work), and the printing. Nothing outside
//! `src/main.rs` and this folder imports clap.
//!
//! A subcommand's `run` either prints its own output and returns
//! `anyhow::Result<()>` (main wraps it as `Ok(None)`), or returns
//! [`Outcome`]: `Ok(Some(document))` with `--json`, which main prints (and
//! gathers into one array for `build --all --json`). `config`, `completions`
//! and `clean` return documents; the others print their own, so that their
//! JSON keeps its field order. A failure after the JSON was printed is
//! wrapped in [`JsonPrinted`], so stdout stays one document.

pub mod ami;
pub mod aws_options;
pub mod boot_test;
pub mod build;
pub mod clean;
pub mod completions;
pub mod config;
pub mod diff;
pub mod download;
pub mod export;
pub mod inspect;
pub mod kernel_check;
pub mod sbom;
pub mod secure_boot_keys;
pub mod uefi_data;
pub mod upload;
pub mod upload_values;

use std::ffi::OsString;

/// What a subcommand's `run` returns: its JSON document (`--json`), or None
/// when it printed its own output. See the module's header.
pub type Outcome = anyhow::Result<Option<serde_json::Value>>;

/// Bad input found before any work started (a flag's value, a missing file,
/// an unknown distro): `main` exits with status 2 for it, 1 for a failure
/// during the work and 130 for Ctrl-C. Return it as
/// `Err(BadInput::new(message))?` (anyhow converts it) or wrap an engine's validation error with
/// `.map_err(BadInput::from_error)`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

impl BadInput {
    pub fn new(message: impl Into<String>) -> Self {
        BadInput(message.into())
    }

    /// An engine's error, reported with its whole cause chain, as bad input.
    pub fn from_error(err: impl Into<anyhow::Error>) -> Self {
        let err: anyhow::Error = err.into();
        BadInput(error_message(&err))
    }
}

/// True when the subcommand's command line has `--json` (before a `--`):
/// its output, an error included, is then one JSON document on stdout.
pub fn wants_json(argv: &[OsString]) -> bool {
    argv.iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--json")
}

/// An error and its causes on one line, `outer: cause: root cause`; a cause
/// whose text the previous message already contains (SDK errors repeat
/// themselves down the chain) is left out.
pub fn error_message(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || parts.last().is_some_and(|last| last.contains(text)) {
            continue;
        }
        parts.push(text.to_string());
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_seen_before_a_double_dash_only() {
        let argv = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(wants_json(&argv(&[
            "imgforge", "build", "--plan", "--json"
        ])));
        assert!(!wants_json(&argv(&["imgforge", "build", "--", "--json"])));
        assert!(!wants_json(&argv(&["imgforge", "build"])));
    }

    #[test]
    fn error_message_joins_causes_without_repeats() {
        let err = anyhow::anyhow!("service error")
            .context("service error")
            .context("upload failed");
        assert_eq!(error_message(&err), "upload failed: service error");
        let err = anyhow::Error::new(BadInput::new("unknown distro \"x\"")).context("build failed");
        assert_eq!(error_message(&err), "build failed: unknown distro \"x\"");
    }
}

/// Warns once when the command line spells a renamed flag its old way
/// (`--architecture` for `--arch`): old names stay for one release.
pub fn warn_renamed_flag(old: &str, new: &str) {
    let given = std::env::args().any(|a| a == old || a.starts_with(&format!("{old}=")));
    if given {
        eprintln!("imgforge: warning: {old} is now {new}; the old name goes in a later release");
    }
}

/// A subcommand's result after it printed its `--json` document: a failure
/// is marked [`JsonPrinted`] so that main does not print a second document.
pub fn after_json_document(result: anyhow::Result<()>, json: bool) -> anyhow::Result<()> {
    match result {
        Err(err) if json => Err(JsonPrinted(err).into()),
        other => other,
    }
}

/// A command that did its work and only has a status to give (`diff
/// --exit-code` when the images differ): main exits with it and prints
/// nothing more, as diff(1) does.
#[derive(Debug, thiserror::Error)]
#[error("exit status {0}")]
pub struct ExitWith(pub u8);

/// A failure whose `--json` document the subcommand already printed (a boot
/// test that ran and failed prints its verdict): main then writes the error
/// line on stderr only, so stdout stays one JSON document.
#[derive(Debug, thiserror::Error)]
#[error("{}", error_message(.0))]
pub struct JsonPrinted(pub anyhow::Error);
