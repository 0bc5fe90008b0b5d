//! `imgforge completions SHELL`: the shell completion script, made by
//! clap_complete from the same command definition the parser uses (so it
//! knows every subcommand and flag, `--config`/`--image`/`--all` included).

use std::io::Write;

use anyhow::Context;
use clap::Args;
use clap_complete::Shell;

use crate::commands::Outcome;

#[derive(Debug, Args)]
#[command(after_help = "Install, e.g.:\n  \
imgforge completions bash > ~/.local/share/bash-completion/completions/imgforge\n  \
imgforge completions zsh > \"${fpath[1]}/_imgforge\"\n  \
imgforge completions fish > ~/.config/fish/completions/imgforge.fish")]
pub struct CompletionsArgs {
    /// The shell to write the completion script for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Prints the script for `command` (main's whole command line) on stdout.
pub fn run(args: &CompletionsArgs, mut command: clap::Command) -> Outcome {
    let name = command.get_name().to_string();
    // Into a buffer first: clap_complete panics when stdout closes early (`| head`).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, name, &mut script);
    match std::io::stdout().write_all(&script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write the completion script")
        }
        _ => Ok(None),
    }
}
