//! imgforge: build bootable Linux disk images offline and publish them as
//! EC2 AMIs. This file is only the command line; each subcommand lives in
//! its own module.

use std::process::ExitCode;

use imgforge::{aws, boottest, build, export, image::inspect, sys::interrupt};

use anyhow::Context;
use clap::{Parser, Subcommand};

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
imgforge boot-test image.raw --firmware both\n  imgforge upload image.raw --name web-small-v1"
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
    /// Boot an image under QEMU (SeaBIOS and/or OVMF) and check the guest's report.
    BootTest(boottest::BootTestArgs),
    /// Convert an image for VirtualBox or other hypervisors (vdi, vmdk, qcow2).
    Export(export::ExportArgs),
    /// Write an image into an EBS snapshot through the EBS direct APIs and register an AMI.
    Upload(aws::upload::UploadArgs),
    /// Read an EBS snapshot back into a raw image file (unwritten blocks stay holes).
    Download(aws::download::DownloadArgs),
    /// Internal: QEMU runs this for each guest connection to the metadata
    /// address during `boot-test --ec2`.
    #[command(hide = true)]
    ImdsRelay {
        /// The metadata stand-in's address (127.0.0.1:PORT).
        addr: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
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
    let result = run(cli.command);
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
        Command::BootTest(args) => boottest::run(&args).context("boot test failed"),
        Command::Export(args) => export::run(&args).context("export failed"),
        Command::Upload(args) => aws::upload::run(&args).context("upload failed"),
        Command::Download(args) => aws::download::run(&args).context("download failed"),
        Command::ImdsRelay { addr } => boottest::imds::relay(&addr).context("imds-relay failed"),
    }
}
