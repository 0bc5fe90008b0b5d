//! `--config FILE`, `--image NAME` and `--all` of build and upload: real,
//! documented clap arguments ([`with_config_args`]), and the expansion of a
//! command line into one per chosen variant ([`expand`]): the file's flags
//! right after the subcommand's name, then the user's, so the user's win.
//!
//! The file is read before clap checks the merged command line because the
//! file supplies flags those checks depend on (`--ssm-overwrite` requires
//! `--ssm-parameter`, which may come from the file); clap then parses each
//! merged line, these three arguments included.

use std::ffi::OsString;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Arg, ArgAction};
use serde_json::Value;

use super::file::{ConfigFile, Variant};
use super::settings::For;
use crate::commands::{BadInput, Outcome};

/// How a command line was expanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invocation {
    /// As given, or with one variant's flags (`--image NAME`).
    Single,
    /// One command line per variant (`build --all`): with `--json`, main
    /// prints one array of their documents.
    AllVariants,
}

/// Adds `--config`, `--image` and `--all` (build only) to build and upload,
/// and lets a flag given twice keep its last value (the user's, after the
/// file's).
pub fn with_config_args(command: clap::Command) -> clap::Command {
    let config = Arg::new("config_file")
        .long("config")
        .value_name("FILE")
        .value_parser(clap::value_parser!(PathBuf))
        .help(
            "Take this subcommand's flags from imgforge.toml: [defaults] under the [[image]] \
             chosen with --image (or --all); flags on the command line override the file \
             (see `imgforge config show`)",
        );
    let image = Arg::new("config_image")
        .long("image")
        .value_name("NAME")
        .requires("config_file")
        .help("The [[image]] variant of --config to use");
    command
        .mut_subcommand("build", |c| {
            c.args_override_self(true)
                .arg(config.clone())
                .arg(image.clone().conflicts_with("config_all"))
                .arg(
                    Arg::new("config_all")
                        .long("all")
                        .action(ArgAction::SetTrue)
                        .requires("config_file")
                        .help(
                            "Build every [[image]] variant of --config in turn (with --json: \
                             one JSON array of their documents)",
                        ),
                )
        })
        .mut_subcommand("upload", |c| {
            // Upload's help names each flag's Packer counterpart.
            let config_help = format!("{}. Packer: -var-file", config.get_help().unwrap());
            let image_help = format!("{}. Packer: none", image.get_help().unwrap());
            c.args_override_self(true)
                .arg(config.help(config_help))
                .arg(image.help(image_help))
        })
}

/// What the command line asks of the config file.
#[derive(Debug, Default)]
struct Choice {
    config: Option<PathBuf>,
    image: Option<String>,
    all: bool,
}

/// Finds `--config`, `--image` and `--all` (`--flag VALUE` or `--flag=VALUE`,
/// before a `--`), leaving them in place for clap.
fn choice(strings: &[Option<&str>]) -> Result<Choice, BadInput> {
    let mut choice = Choice::default();
    let mut i = 1;
    while let Some(arg) = strings.get(i) {
        let arg = arg.unwrap_or("");
        if arg == "--" {
            break;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_string())),
            _ => (arg, None),
        };
        let mut value = || -> Result<String, BadInput> {
            if let Some(v) = &inline {
                return Ok(v.clone());
            }
            i += 1;
            strings
                .get(i)
                .copied()
                .flatten()
                .map(str::to_string)
                .ok_or_else(|| BadInput::new(format!("{flag} needs a value")))
        };
        match flag {
            "--config" => choice.config = Some(value()?.into()),
            "--image" => choice.image = Some(value()?),
            "--all" => choice.all = true,
            _ => {}
        }
        i += 1;
    }
    Ok(choice)
}

/// Expands `imgforge build|upload --config F (--image NAME | --all) ...` into
/// one argument list per variant: the file's flags, then the user's. Any
/// other command line comes back as it is. Every error here is bad input.
pub fn expand(argv: Vec<OsString>) -> anyhow::Result<(Vec<Vec<OsString>>, Invocation)> {
    let strings: Vec<Option<&str>> = argv.iter().map(|a| a.to_str()).collect();
    // The subcommand is the first word that is not a flag (-v takes no value).
    let Some(at) = (1..strings.len()).find(|&i| strings[i].is_some_and(|a| !a.starts_with('-')))
    else {
        return Ok((vec![argv], Invocation::Single));
    };
    let target = match strings[at] {
        Some("build") => For::Build,
        Some("upload") => For::Upload,
        _ => return Ok((vec![argv], Invocation::Single)),
    };
    // Help needs no file (and must not fail on one).
    if strings[at..]
        .iter()
        .take_while(|a| **a != Some("--"))
        .any(|a| matches!(a, Some("--help" | "-h")))
    {
        return Ok((vec![argv], Invocation::Single));
    }
    let choice = choice(&strings)?;
    let Some(config) = &choice.config else {
        if choice.image.is_some() || choice.all {
            return Err(BadInput::new(
                "--image and --all choose variants of a config file: pass --config imgforge.toml",
            )
            .into());
        }
        return Ok((vec![argv], Invocation::Single));
    };
    let file = ConfigFile::load(config).map_err(BadInput::from_error)?;
    let variants = variants(&file, &choice, target).map_err(BadInput::from_error)?;
    let invocation = if choice.all {
        Invocation::AllVariants
    } else {
        Invocation::Single
    };
    let argvs = variants
        .into_iter()
        .map(|variant| {
            let mut out: Vec<OsString> = argv[..=at].to_vec();
            out.extend(variant.flags(target).into_iter().map(OsString::from));
            out.extend(argv[at + 1..].iter().cloned());
            out
        })
        .collect();
    Ok((argvs, invocation))
}

/// The variants the command line chose.
fn variants<'a>(
    file: &'a ConfigFile,
    choice: &Choice,
    target: For,
) -> anyhow::Result<Vec<&'a Variant>> {
    Ok(match (&choice.image, choice.all) {
        (Some(_), true) => anyhow::bail!("pass either --image NAME or --all, not both"),
        (Some(name), false) => vec![file.variant(name)?],
        (None, true) if target == For::Build => file.variants.iter().collect(),
        (None, true) => anyhow::bail!("upload takes one variant: pass --image NAME"),
        (None, false) => anyhow::bail!(
            "{}: choose a variant with --image NAME ({}) or --all",
            file.path.display(),
            file.names().join(", ")
        ),
    })
}

/// Runs one variant of `--all --json` with stdout caught, so that main can
/// print one JSON array: a command that returns its document (the
/// `commands::Outcome` seam) is taken as it is; one that still prints its
/// JSON itself has the printed document parsed back. Anything on stdout that
/// is not JSON goes to stderr, to keep stdout one document.
pub fn capture_json(run: impl FnOnce() -> Outcome) -> Outcome {
    let mut captured = tempfile::tempfile().context("cannot create a temporary file")?;
    let _ = std::io::stdout().flush();
    // SAFETY: plain descriptor calls on stdout; the saved copy is restored
    // and closed before returning.
    let saved = unsafe { libc::dup(1) };
    if saved < 0 || unsafe { libc::dup2(captured.as_raw_fd(), 1) } < 0 {
        return run();
    }
    let outcome = run();
    let _ = std::io::stdout().flush();
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    let mut text = String::new();
    captured
        .rewind()
        .context("cannot read back the captured output")?;
    captured
        .read_to_string(&mut text)
        .context("cannot read back the captured output")?;
    let printed: Result<Vec<Value>, _> = serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .collect();
    match (outcome, printed) {
        (Ok(None), Ok(mut documents)) if documents.len() == 1 => Ok(documents.pop()),
        (Ok(None), Ok(documents)) if !documents.is_empty() => Ok(Some(Value::Array(documents))),
        (outcome, _) => {
            if !text.trim().is_empty() {
                eprint!("{text}");
            }
            outcome
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&'static str]) -> Vec<Option<&'static str>> {
        a.iter().map(|s| Some(*s)).collect()
    }

    #[test]
    fn finds_the_config_arguments_in_both_spellings() {
        let c = choice(&strings(&[
            "imgforge",
            "build",
            "--config=f.toml",
            "--image",
            "a",
            "--plan",
        ]))
        .unwrap();
        assert_eq!(c.config, Some(PathBuf::from("f.toml")));
        assert_eq!(c.image.as_deref(), Some("a"));
        assert!(!c.all);
        let c = choice(&strings(&["imgforge", "build", "--", "--all"])).unwrap();
        assert!(!c.all, "after -- nothing is a flag");
        assert!(choice(&strings(&["imgforge", "build", "--image"])).is_err());
    }

    #[test]
    fn the_arguments_show_in_help() {
        let mut command = with_config_args(
            clap::Command::new("imgforge")
                .subcommand(clap::Command::new("build"))
                .subcommand(clap::Command::new("upload")),
        );
        let build = command.find_subcommand_mut("build").unwrap();
        let help = build.render_help().to_string();
        for flag in ["--config", "--image", "--all"] {
            assert!(help.contains(flag), "{flag} in {help}");
        }
    }
}
