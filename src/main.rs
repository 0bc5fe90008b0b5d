//! imgforge: build bootable Linux disk images offline and publish them as
//! EC2 AMIs. This file is only the command line; each subcommand lives in
//! its own module.

mod commands;

use std::process::ExitCode;

use imgforge::{aws, boottest, build, export, image::inspect, kernelcheck, sys::interrupt};

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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
    after_help = "Example:\n  imgforge build --distro debian --size-class small -o image.raw\n  \
imgforge boot-test image.raw --firmware both\n  imgforge upload image.raw --name web-small-v1\n\n\
With a config file (imgforge.toml: [defaults] and [[image]] variants; see `imgforge config`):\n  \
imgforge build --config imgforge.toml --image trading-large\n  \
imgforge build --config imgforge.toml --all\n  \
imgforge upload trading-large.raw --config imgforge.toml --image trading-large --copy-to eu-west-1\n\
Flags given on the command line override the file."
)]
struct Cli {
    /// More log output: -v shows every command imgforge runs, -vv also their output.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a bootable raw disk image (bootstrap, configure, bootloader, assemble).
    Build(build::BuildArgs),
    /// Show an image's partitions, boot modes, kernel command line and manifest, without mounting it.
    Inspect(inspect::InspectArgs),
    /// Name what differs between two images: partition table, 512 KiB blocks per partition, files.
    Diff(commands::diff::DiffArgs),
    /// Boot an image under QEMU (SeaBIOS and/or OVMF) and check the guest's report.
    BootTest(commands::boot_test::BootTestArgs),
    /// Convert an image for VirtualBox or other hypervisors (vdi, vmdk, qcow2).
    Export(export::ExportArgs),
    /// Write an image into an EBS snapshot through the EBS direct APIs and register an AMI.
    Upload(commands::upload::UploadArgs),
    /// Check a kernel config against a profile's requirements (kernel-configs/), for your own kernel.
    KernelCheck(kernelcheck::KernelCheckArgs),
    /// Read an EBS snapshot back into a raw image file (unwritten blocks stay holes).
    Download(aws::download::DownloadArgs),
    /// List, prune and promote published AMIs (by name prefix, per region).
    Ami(commands::ami::AmiArgs),
    /// Show imgforge.toml's merged variants, or the CI job matrix they make.
    Config(commands::config::ConfigArgs),
    /// Internal: QEMU runs this for each guest connection to the metadata
    /// address during `boot-test --ec2`.
    #[command(hide = true)]
    ImdsRelay {
        /// The metadata stand-in's address (127.0.0.1:PORT).
        addr: String,
    },
}

/// Parses one command line; a flag given twice keeps its last value, so that
/// the command line overrides what a config file put before it.
fn parse(argv: Vec<std::ffi::OsString>) -> Cli {
    let command = Cli::command()
        .mut_subcommand("build", |c| c.args_override_self(true))
        .mut_subcommand("upload", |c| c.args_override_self(true));
    let matches = command.get_matches_from(argv);
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    let argvs = match commands::config::expand(std::env::args_os().collect()) {
        Ok(argvs) => argvs,
        Err(err) => {
            eprintln!("imgforge: error: {err:#}");
            return ExitCode::from(2);
        }
    };
    let clis: Vec<Cli> = argvs.into_iter().map(parse).collect();
    let level = match clis[0].verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    if let Err(err) = interrupt::install() {
        eprintln!("imgforge: cannot install signal handlers: {err}");
        return ExitCode::FAILURE;
    }
    // One command line, or one per config variant (`build --all`), in order.
    let mut result = Ok(());
    for cli in clis {
        result = run(cli.command);
        if result.is_err() {
            break;
        }
    }
    interrupt::terminate_all();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("imgforge: error: {err:#}");
            if interrupt::requested() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Build(args) => build::run(&args).context("build failed"),
        Command::Inspect(args) => inspect::run(&args).context("inspect failed"),
        Command::Diff(args) => commands::diff::run(&args).context("diff failed"),
        Command::BootTest(args) => commands::boot_test::run(&args),
        Command::Export(args) => export::run(&args).context("export failed"),
        Command::Upload(args) => commands::upload::run(&args).context("upload failed"),
        Command::Ami(args) => commands::ami::run(&args).context("ami failed"),
        Command::Config(args) => commands::config::run(&args).context("config failed"),
        Command::Download(args) => aws::download::run(&args).context("download failed"),
        Command::KernelCheck(args) => kernelcheck::run(&args).context("kernel-check failed"),
        Command::ImdsRelay { addr } => boottest::imds::relay(&addr).context("imds-relay failed"),
    }
}
