//! `imgforge build`: the offline half. [`build`] is the stage list; each
//! stage is a module here and reads the [`BuildContext`].

pub mod assemble;
pub mod binfmt;
pub mod bootloader;
pub mod bootstrap;
pub mod configure;
pub mod context;
pub mod layout_from;
pub mod lock;
pub mod manifest;
pub mod reproducible;
pub mod request;

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::data::DataError;
use crate::distro::DistroError;
use crate::platform::PlatformError;
use crate::profile::ProfileError;
use crate::sizeclass::SizeClassError;
use crate::sys::tool::ToolError;
use crate::sys::workdir::WorkDirError;
use assemble::AssembleError;
use binfmt::BinfmtError;
use bootloader::BootloaderError;
use bootstrap::BootstrapError;
use configure::ConfigureError;
pub use context::BuildContext;
use layout_from::LayoutFromError;
use lock::LockError;
use manifest::ManifestError;
use reproducible::ReproducibleError;
use request::{BuildRequest, Plan};

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  imgforge build\n  \
imgforge build --distro debian --release bookworm --size-class large --size 8G -o trading.raw\n  \
imgforge build --distro arch --size-class large --mirror 'https://mirror.example/archlinux/$repo/os/$arch'\n  \
imgforge build --distro arch --kernel lts --plan --json\n  \
imgforge build --arch arm64 --size-class medium -o graviton.raw\n  \
imgforge build --profile base -o plain.raw\n  \
imgforge build --packages htop,tcpdump --layer ./my-layer -o image.raw\n  \
imgforge build --packages htop --layout-from base.raw -o htop.raw")]
pub struct BuildArgs {
    /// Distribution to bootstrap: debian or arch (one data file each in
    /// rootfs/distros/).
    #[arg(long, default_value = "debian")]
    pub distro: String,

    /// CPU architecture of the image: x86_64 (default) or arm64 (Graviton:
    /// UEFI only). A foreign architecture is bootstrapped through
    /// qemu-user-static and binfmt_misc (registered only while the build
    /// runs, if it was not already). Rows in boot/architectures.toml.
    #[arg(long, default_value = "x86_64", value_name = "ARCH")]
    pub arch: String,

    /// Distribution release (default: the distro's own, bookworm for debian,
    /// rolling for arch).
    #[arg(long)]
    pub release: Option<String>,

    /// Kernel flavour, from the distro's `kernels` table: debian cloud
    /// (default) or generic; arch linux (default) or lts.
    #[arg(long)]
    pub kernel: Option<String>,

    /// Instance size class the image is tuned for: small (4-8 vCPUs),
    /// medium (16-32), large (48-96), xlarge (128-192). Decides the CPU
    /// isolation on the kernel command line.
    #[arg(long, default_value = "small")]
    pub size_class: String,

    /// What the image is for, from rootfs/profiles.toml: trading (default:
    /// low-latency tuning for the size class), trading-irqbalance, base
    /// (untuned). A profile is a list of layers, packages, kernel command
    /// line tokens and kernel config fragments.
    #[arg(long)]
    pub profile: Option<String>,

    /// Disk image size, e.g. 4G, 8GiB, 2048M (default: the root filesystem
    /// plus headroom, rounded up to whole GiB, at least 2G).
    #[arg(long)]
    pub size: Option<String>,

    /// Package mirror. Debian: a mirror URL (default: the host's apt
    /// sources, moved to --release). Arch: a URL with `$repo` and `$arch`
    /// placeholders, e.g. https://mirror.example/archlinux/$repo/os/$arch
    /// (default: Arch's geo mirror).
    #[arg(long)]
    pub mirror: Option<String>,

    /// A newer keyring to verify packages with (Arch: a folder holding
    /// archlinux.gpg, archlinux-trusted and archlinux-revoked), instead of
    /// the host's archlinux-keyring refreshed from the mirror.
    #[arg(long, value_name = "DIR")]
    pub keyring: Option<PathBuf>,

    /// Cache for bootstrapped trees and downloaded packages.
    #[arg(long, env = "IMGFORGE_CACHE_DIR", default_value_os_t = default_cache_dir())]
    pub cache_dir: PathBuf,

    /// Bootstrap again even when a cached tree for this package set exists.
    #[arg(long)]
    pub refresh_cache: bool,

    /// Write the installed package set with exact versions (and the
    /// architecture, sources, mirror state and newest package date) to
    /// FILE, as TOML, when the build succeeds. Read it back with --locked.
    #[arg(long, value_name = "FILE")]
    pub lock: Option<PathBuf>,

    /// Install exactly the versions in FILE (written by --lock), the
    /// dependencies included; fails naming each version the mirror no
    /// longer has. The cached tree is keyed by FILE's versions, so a cache
    /// hit reads no mirror (an offline rebuild). Without --locked the build
    /// reads the mirror's state (its Release files or repository databases)
    /// and keys the cache by it, so an update is never missed.
    #[arg(long, value_name = "FILE")]
    pub locked: Option<PathBuf>,

    /// Extra packages to install, comma-separated (part of the cache key).
    #[arg(long, value_delimiter = ',')]
    pub packages: Vec<String>,

    /// Extra layer folder copied into the image after the built-in ones
    /// (repeatable; a `layer.toml` in it may list units to enable).
    #[arg(long = "layer")]
    pub layers: Vec<PathBuf>,

    /// Where to write the raw image; `IMAGE.json` gets the manifest.
    #[arg(short, long, default_value = "image.raw")]
    pub output: PathBuf,

    /// What the disk's ids (disk and partition GUIDs, filesystem UUID, ext4
    /// hash seed, FAT volume id) are derived from; the same seed gives the
    /// same ids. Default: the output's file name without folder and `.raw`
    /// (`-o out/web.raw` gives `web`). Give each image you boot side by side
    /// its own seed: two disks with one seed share their UUIDs.
    #[arg(long)]
    pub seed: Option<String>,

    /// Lay the root filesystem out on top of PARENT's (an image imgforge
    /// built, with its manifest's seed) instead of anew: files that did not
    /// change keep their blocks, so a delta upload against PARENT's snapshot
    /// (`imgforge upload --parent`) sends only what changed (adding a
    /// package moves a few percent of the blocks instead of nearly all).
    /// The image keeps PARENT's disk size and ids, and depends on PARENT's
    /// bytes as well as on its inputs (its manifest records their digest).
    #[arg(long, value_name = "PARENT.raw")]
    pub layout_from: Option<PathBuf>,

    /// SOURCE_DATE_EPOCH (seconds since 1970) that every timestamp in the
    /// image is clamped to. Default: the SOURCE_DATE_EPOCH environment
    /// variable, else when the newest installed package was built (Debian:
    /// the newest file dpkg installed under /usr; Arch: the newest
    /// %BUILDDATE%).
    #[arg(long, value_name = "SECONDS")]
    pub epoch: Option<u64>,

    /// How an instance sets itself up at first boot: `imgforge` (lean units:
    /// root volume growth, launch key, hostname, #! user-data once per
    /// instance; no cloud-init) or `cloud-init` (EC2 datasource only, IMDSv2;
    /// for cloud-config user-data). See rootfs/first-boot.toml.
    #[arg(long, value_name = "MODE")]
    pub first_boot: Option<String>,

    /// Print what the build would use (distro, sources, packages, layers,
    /// size class, kernel command line, partitions, cache key) and stop:
    /// no bootstrap, no root, no network.
    #[arg(long)]
    pub plan: bool,

    /// Print the build summary (or, with --plan, the plan) as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// Read layers, tables and templates from this folder (with rootfs/,
    /// boot/ and kernel-configs/) instead of the copy built into imgforge.
    #[arg(long, env = "IMGFORGE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("imgforge")
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Distro(#[from] DistroError),
    #[error(transparent)]
    SizeClass(#[from] SizeClassError),
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    WorkDir(#[from] WorkDirError),
    #[error("bootstrap")]
    Bootstrap(#[from] BootstrapError),
    #[error(transparent)]
    Binfmt(#[from] BinfmtError),
    #[error("configure")]
    Configure(#[from] ConfigureError),
    #[error("bootloader")]
    Bootloader(#[from] BootloaderError),
    #[error("assemble")]
    Assemble(#[from] AssembleError),
    #[error("manifest")]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    LayoutFrom(#[from] LayoutFromError),
    #[error(transparent)]
    Reproducible(#[from] ReproducibleError),
    #[error(
        "imgforge build must run as root (it bootstraps into a tree it chroots into and mounts \
         /proc, /sys and /dev there): run it with sudo, or use --plan to see what it would do"
    )]
    NotRoot,
    #[error("output directory {0} does not exist: create it or choose another -o")]
    OutputDir(PathBuf),
    #[error("unknown --first-boot `{given}`; choose one of: {known}")]
    UnknownFirstBoot { given: String, known: String },
    #[error("{path}: {message}")]
    Table { path: &'static str, message: String },
    #[error("--keyring {0} is not a folder")]
    Keyring(PathBuf),
    #[error("cannot use cache directory {path}")]
    CacheDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("interrupted")]
    Interrupted,
}

#[derive(Debug, Serialize)]
pub struct BuildSummary {
    pub image: PathBuf,
    pub manifest: PathBuf,
    pub distro: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub seconds: f64,
    pub bootstrap_from_cache: bool,
    /// The cached tree's key.
    pub tree_key: String,
    /// The --lock file written, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<PathBuf>,
    /// What the disk ids were derived from.
    pub seed: String,
    /// What every timestamp was clamped to.
    pub source_date_epoch: u64,
    pub stages: Vec<StageTime>,
}

#[derive(Debug, Serialize, Clone)]
pub struct StageTime {
    pub stage: String,
    pub seconds: f64,
}

/// The build, stage by stage.
pub fn build(args: &BuildArgs) -> Result<BuildSummary, BuildError> {
    let started = Instant::now();
    let ctx = BuildContext::prepare(BuildRequest::resolve(args)?, args)?;
    let p = &ctx.progress;
    // A foreign architecture's programs (bootstrap, chroot grub-mkimage) run
    // through qemu-user-static until this is dropped.
    let _emulation = binfmt::Emulation::ensure(ctx.request.architecture)?;

    let rootfs = p.stage("bootstrap", || bootstrap::run(&ctx))?;
    ctx.check_interrupt()?;
    let epoch = reproducible::source_date_epoch(&ctx, &rootfs)?;
    p.stage("configure", || configure::run(&ctx, &rootfs, epoch))?;
    let boot = p.stage("bootloader", || bootloader::prepare(&ctx, &rootfs))?;
    let layout = assemble::plan(&ctx, &rootfs)?;
    let manifest = p.stage("manifest", || {
        manifest::record(&ctx, &rootfs, &boot, &layout, epoch)
    })?;
    p.stage("clamp times", || {
        reproducible::clamp_tree_times(&rootfs.dir, epoch)
    })?;
    ctx.check_interrupt()?;
    let image = p.stage("assemble", || assemble::run(&ctx, &layout, &boot, epoch))?;
    ctx.check_interrupt()?;
    let sealed = p.stage("seal", || {
        manifest::seal(image, manifest, &ctx.request.output)
    })?;
    // Last, so that a failed build leaves no lock file that names an image
    // that was never made.
    if let Some(path) = &args.lock {
        lock_of(&ctx, &rootfs).write(path)?;
    }

    Ok(BuildSummary {
        image: ctx.request.output.clone(),
        manifest: sealed.manifest_path,
        distro: ctx.request.distro.data().name.clone(),
        size_bytes: layout.disk_bytes,
        sha256: sealed.sha256,
        seconds: started.elapsed().as_secs_f64(),
        bootstrap_from_cache: rootfs.from_cache,
        tree_key: rootfs.key.clone(),
        lock: args.lock.clone(),
        seed: ctx.seed.clone(),
        source_date_epoch: epoch,
        stages: p.times(),
    })
}

/// The lock file of this build: the installed set, as bootstrapped.
fn lock_of(ctx: &BuildContext, rootfs: &bootstrap::Rootfs) -> lock::Lock {
    let request = &ctx.request;
    let d = request.distro.data();
    lock::Lock {
        format: lock::FORMAT,
        distro: d.name.clone(),
        release: request.release.clone(),
        architecture: d.architecture.clone(),
        kernel: request.kernel.clone(),
        sources: request.sources.lines.clone(),
        newest_package_date: rootfs.newest_package_date.clone(),
        requested: request.packages.clone(),
        mirror_state: rootfs.mirror_state.clone(),
        packages: rootfs
            .packages
            .iter()
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect(),
    }
}

pub fn run(args: &BuildArgs) -> Result<(), BuildError> {
    if args.plan {
        let plan = Plan::of(&BuildRequest::resolve(args)?)?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&plan).expect("plan serializes")
            );
        } else {
            plan.print_text();
        }
        return Ok(());
    }
    let summary = build(args)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).expect("summary serializes")
        );
    } else {
        eprintln!(
            "built {} ({:.1} GiB, sha256 {}) in {:.1}s",
            summary.image.display(),
            summary.size_bytes as f64 / (1u64 << 30) as f64,
            &summary.sha256[..16],
            summary.seconds
        );
    }
    Ok(())
}
