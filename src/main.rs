//! imgforge: build bootable Linux disk images offline and publish them as
//! EC2 AMIs. This file is only the command line's dispatch: parsing, logging,
//! printing a command's JSON document, and the exit status. Each subcommand
//! lives in its own module under `commands/`.
//!
//! Exit status: 0 success, 1 a failure during the work, 2 bad input found
//! before any work (clap usage errors, `commands::BadInput`, config-file
//! errors), 130 Ctrl-C/SIGTERM. With `--json`, an error is also one JSON
//! object on stdout: `{"error": "...", "exit_status": N}`.

mod commands;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;

use imgforge::{boottest, sys::interrupt};

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use serde_json::{Value, json};

use commands::BadInput;
use commands::config::Invocation;

#[derive(Parser)]
#[command(
    name = "imgforge",
    version,
    about = "Build bootable Linux disk images offline and publish them as EC2 AMIs",
    long_about = "imgforge builds a bootable raw disk image on this machine, with no builder \
instance: it bootstraps a root filesystem into a directory, configures it for a size class \
of instance, assembles a GPT disk (BIOS boot, EFI system and ext4 root partitions) and \
installs GRUB for BIOS and UEFI. It then boot-tests the image under QEMU, exports it for \
VirtualBox, and uploads it straight into an EBS snapshot to register an AMI.",
    after_help = "Examples:\n  imgforge build --distro debian --size-class small -o image.raw\n  \
imgforge boot-test image.raw --firmware both\n  imgforge upload image.raw --name web-small-v1\n  \
imgforge build --config imgforge.toml --all      (every [[image]] of the file)\n\n\
Exit status: 0 success, 1 failure, 2 bad input (nothing was done), 130 interrupted."
)]
struct Cli {
    /// More log output: -v shows every command imgforge runs, -vv also their output.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: a large variant costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Build a bootable raw disk image (bootstrap, configure, bootloader, assemble).
    Build(commands::build::BuildArgs),
    /// Show an image's partitions, boot modes, kernel command line and manifest, without mounting it.
    Inspect(commands::inspect::InspectArgs),
    /// Write an image's SBOMs (SPDX 2.3 and CycloneDX 1.5) beside it, as the build does.
    Sbom(commands::sbom::SbomArgs),
    /// Name what differs between two images: partition table, 512 KiB blocks per partition, files.
    Diff(commands::diff::DiffArgs),
    /// Boot an image under QEMU (SeaBIOS and/or OVMF) and check the guest's report.
    BootTest(commands::boot_test::BootTestArgs),
    /// Convert an image for VirtualBox or other hypervisors (vdi, vmdk, qcow2).
    Export(commands::export::ExportArgs),
    /// Write an image into an EBS snapshot through the EBS direct APIs and register an AMI.
    Upload(commands::upload::UploadArgs),
    /// Check a kernel config against a profile's requirements (kernel-configs/), for your own kernel.
    KernelCheck(commands::kernel_check::KernelCheckArgs),
    /// Read an EBS snapshot back into a raw image file (unwritten blocks stay holes).
    Download(commands::download::DownloadArgs),
    /// List, prune and promote published AMIs (by name prefix, per region).
    Ami(commands::ami::AmiArgs),
    /// Show imgforge.toml's merged variants, or the CI job matrix they make.
    Config(commands::config::ConfigArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(commands::completions::CompletionsArgs),
    /// Evict old cached root filesystem trees and package downloads.
    Clean(commands::clean::CleanArgs),
    /// Internal: QEMU runs this for each guest connection to the metadata
    /// address during `boot-test --ec2`.
    #[command(hide = true)]
    ImdsRelay {
        /// The metadata stand-in's address (127.0.0.1:PORT).
        addr: String,
    },
}

/// The whole command line as clap knows it: the derived arguments, the
/// config-file arguments of build and upload, and help wrapped to the
/// terminal (100 columns when stdout is not one).
fn cli_command() -> clap::Command {
    let command = commands::config::with_config_args(Cli::command());
    if std::io::stdout().is_terminal() {
        command
    } else {
        command.term_width(100)
    }
}

fn main() -> ExitCode {
    quiet_broken_pipe();
    let argv: Vec<OsString> = std::env::args_os().collect();
    let json = commands::wants_json(&argv);
    let status = match parse(argv) {
        Ok((clis, invocation)) => {
            init_logging(clis[0].verbose);
            match execute(clis, invocation, json) {
                Ok(()) => 0,
                Err(err) => report(&err, json),
            }
        }
        Err(Stop::Clap(err)) => clap_error(err, json),
        Err(Stop::Error(err)) => report(&err, json),
    };
    ExitCode::from(status)
}

/// `imgforge build --plan | head` closes stdout early; Rust's print macros
/// then panic. Leave quietly with the shell's status for SIGPIPE (141)
/// instead of a backtrace; every other panic keeps the default report.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            interrupt::terminate_all();
            std::process::exit(141);
        }
        default(info);
    }));
}

/// Why the command line did not turn into commands to run.
enum Stop {
    /// clap's own usage error, help or version.
    Clap(clap::Error),
    /// The config file (or its variant choice) was wrong.
    Error(anyhow::Error),
}

/// One command line, or one per config variant (`build --config F --all`).
fn parse(argv: Vec<OsString>) -> Result<(Vec<Cli>, Invocation), Stop> {
    let (argvs, invocation) = commands::config::expand(argv).map_err(Stop::Error)?;
    let clis = argvs
        .into_iter()
        .map(|argv| {
            let matches = cli_command().try_get_matches_from(argv)?;
            Cli::from_arg_matches(&matches)
        })
        .collect::<Result<Vec<Cli>, clap::Error>>()
        .map_err(Stop::Clap)?;
    Ok((clis, invocation))
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
}

/// Runs each command line in order and prints the JSON document(s): with
/// `--all --json`, one array of the variants' documents.
fn execute(clis: Vec<Cli>, invocation: Invocation, json: bool) -> anyhow::Result<()> {
    interrupt::install().context("cannot install signal handlers")?;
    let many = invocation == Invocation::AllVariants;
    let mut documents = Vec::new();
    let mut result = Ok(());
    for cli in clis {
        let outcome = if many && json {
            commands::config::capture_json(|| run(cli.command))
        } else {
            run(cli.command)
        };
        match outcome {
            Ok(Some(document)) if many => documents.push(document),
            Ok(Some(document)) => print_json(&document),
            Ok(None) => {}
            Err(err) => {
                result = Err(err);
                break;
            }
        }
    }
    interrupt::terminate_all();
    result?;
    if many && json {
        print_json(&Value::Array(documents));
    }
    Ok(())
}

fn print_json(document: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(document).expect("a JSON value serializes")
    );
}

/// The exit status an error means (see the file's header). An
/// `Interrupted` is only ever made once the stop flag is set
/// (`interrupt::check`, the tool helper, QEMU's wait), so the flag decides,
/// also when a module error wraps it transparently and hides it from the
/// chain.
fn exit_status(err: &anyhow::Error) -> u8 {
    if interrupt::requested() || err.chain().any(|e| e.is::<interrupt::Interrupted>()) {
        130
    } else if err.chain().any(|e| e.is::<BadInput>()) {
        2
    } else {
        1
    }
}

/// Prints the error (and with `--json` its JSON object) and gives the status.
fn report(err: &anyhow::Error, json: bool) -> u8 {
    if let Some(commands::ExitWith(status)) = err.downcast_ref() {
        return *status;
    }
    let status = exit_status(err);
    let message = commands::error_message(err);
    eprintln!("imgforge: error: {message}");
    if json && !err.chain().any(|e| e.is::<commands::JsonPrinted>()) {
        print_json(&json!({ "error": message, "exit_status": status }));
    }
    status
}

/// clap's usage errors exit 2 (help and version 0), as clap does itself.
fn clap_error(err: clap::Error, json: bool) -> u8 {
    let status = err.exit_code() as u8;
    if json && err.use_stderr() {
        let text = err.to_string();
        let message: Vec<&str> = text
            .lines()
            .map(str::trim)
            .take_while(|l| !l.is_empty())
            .collect();
        let message = message.join(" ");
        let message = message.strip_prefix("error: ").unwrap_or(&message);
        print_json(&json!({ "error": message, "exit_status": status }));
    }
    let _ = err.print();
    status
}

/// One subcommand. `Some(document)` is its one JSON document (`--json`),
/// printed by [`execute`]; `None` when it printed its own output. See
/// `commands::Outcome`.
fn run(command: Command) -> commands::Outcome {
    let printed = |r: anyhow::Result<()>| r.map(|()| None);
    match command {
        Command::Build(args) => printed(commands::build::run(&args).context("build failed")),
        Command::Inspect(args) => printed(commands::inspect::run(&args).context("inspect failed")),
        Command::Diff(args) => printed(commands::diff::run(&args).context("diff failed")),
        Command::Sbom(args) => printed(commands::sbom::run(&args).context("sbom failed")),
        Command::BootTest(args) => printed(commands::boot_test::run(&args)),
        Command::Export(args) => printed(commands::export::run(&args).context("export failed")),
        Command::Upload(args) => printed(commands::upload::run(&args).context("upload failed")),
        Command::Ami(args) => printed(commands::ami::run(&args).context("ami failed")),
        Command::Config(args) => commands::config::run(&args).context("config failed"),
        Command::Download(args) => {
            printed(commands::download::run(&args).context("download failed"))
        }
        Command::KernelCheck(args) => {
            printed(commands::kernel_check::run(&args).context("kernel-check failed"))
        }
        Command::Completions(args) => commands::completions::run(&args, cli_command()),
        Command::Clean(args) => commands::clean::run(&args).context("clean failed"),
        Command::ImdsRelay { addr } => {
            printed(boottest::imds::relay(&addr).context("imds-relay failed"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        cli_command().debug_assert();
    }

    #[test]
    fn errors_map_to_exit_statuses() {
        let bad = anyhow::Error::new(BadInput::new("unknown distro")).context("build failed");
        assert_eq!(exit_status(&bad), 2);
        let stopped = anyhow::Error::new(interrupt::Interrupted).context("build failed");
        assert_eq!(exit_status(&stopped), 130);
        // The message alone is not an interruption (the flag is not set here).
        let text = anyhow::anyhow!("{}", interrupt::Interrupted);
        assert_eq!(exit_status(&text), 1);
        assert_eq!(exit_status(&anyhow::anyhow!("disk full")), 1);
    }
}
