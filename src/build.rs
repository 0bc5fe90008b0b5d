//! `imgforge build`: the stage list, and the context every stage reads.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::assemble::{self, AssembleError, DiskIds, ImageSize};
use crate::bootloader::{self, BootloaderError};
use crate::bootstrap::{self, BootstrapError};
use crate::configure::{self, ConfigureError, Layer};
use crate::distro::{self, Distro, DistroError};
use crate::manifest::{self, ManifestError};
use crate::progress::Progress;
use crate::sizeclass::{self, SizeClass, SizeClassError};
use crate::tool::{self, HostTool, ToolError};
use crate::workdir::{WorkDir, WorkDirError};

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  imgforge build\n  \
imgforge build --distro debian --release bookworm --size-class large --size 8G -o trading.raw\n  \
imgforge build --packages htop,tcpdump --layer ./my-layer -o image.raw")]
pub struct BuildArgs {
    /// Distribution to bootstrap (see rootfs/distros.toml): debian.
    #[arg(long, default_value = "debian")]
    pub distro: String,

    /// Distribution release (default: the distro's default, bookworm for debian).
    #[arg(long)]
    pub release: Option<String>,

    /// Instance size class the image is tuned for: small (4-8 vCPUs),
    /// medium (16-32), large (48-96), xlarge (128-192). Decides the CPU
    /// isolation on the kernel command line.
    #[arg(long, default_value = "small")]
    pub size_class: String,

    /// Disk image size, e.g. 4G, 8GiB, 2048M (default: the root filesystem
    /// plus headroom, rounded up to whole GiB, at least 2G).
    #[arg(long)]
    pub size: Option<String>,

    /// Debian mirror URL (default: the host's apt sources, moved to --release).
    #[arg(long)]
    pub mirror: Option<String>,

    /// Cache for bootstrapped trees and downloaded packages.
    #[arg(long, env = "IMGFORGE_CACHE_DIR", default_value_os_t = default_cache_dir())]
    pub cache_dir: PathBuf,

    /// Bootstrap again even when a cached tree for this package set exists.
    #[arg(long)]
    pub refresh_cache: bool,

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

    /// Print the build summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("imgforge")
}

/// Where imgforge's data (rootfs/ layers, kernel-configs/) lives.
pub fn data_dir() -> PathBuf {
    std::env::var_os("IMGFORGE_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Distro(#[from] DistroError),
    #[error(transparent)]
    SizeClass(#[from] SizeClassError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    WorkDir(#[from] WorkDirError),
    #[error("bootstrap")]
    Bootstrap(#[from] BootstrapError),
    #[error("configure")]
    Configure(#[from] ConfigureError),
    #[error("bootloader")]
    Bootloader(#[from] BootloaderError),
    #[error("assemble")]
    Assemble(#[from] AssembleError),
    #[error("manifest")]
    Manifest(#[from] ManifestError),
    #[error(
        "imgforge build must run as root (it bootstraps with mmdebstrap --mode=root and chroots into the tree): run it with sudo"
    )]
    NotRoot,
    #[error("output directory {0} does not exist: create it or choose another -o")]
    OutputDir(PathBuf),
    #[error("cannot use cache directory {path}")]
    CacheDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("interrupted")]
    Interrupted,
}

/// The host tools a build runs, with the Debian package for each.
const HOST_TOOLS: &[HostTool] = &[
    HostTool::new("mmdebstrap", "mmdebstrap"),
    HostTool::new("tar", "tar"),
    HostTool::new("mkfs.ext4", "e2fsprogs"),
    HostTool::new("chroot", "coreutils"),
];

pub struct CacheDirs {
    pub rootfs_dir: PathBuf,
    pub apt_dir: PathBuf,
}

/// Everything the stages share: the validated request and the work area.
pub struct BuildContext {
    pub distro: Distro,
    pub release: String,
    pub size_class: SizeClass,
    /// The distro's packages plus `--packages`.
    pub packages: Vec<String>,
    pub layers: Vec<Layer>,
    pub bootstrap_files: PathBuf,
    pub kernel_config_fragments: PathBuf,
    pub mirror: Option<String>,
    pub cache: CacheDirs,
    pub refresh_cache: bool,
    pub image_size: ImageSize,
    pub ids: DiskIds,
    pub source_date_epoch: u64,
    pub output: PathBuf,
    pub progress: Progress,
    work: WorkDir,
}

impl BuildContext {
    /// Validates the request before anything is written.
    fn prepare(args: &BuildArgs) -> Result<Self, BuildError> {
        let distro = distro::lookup(&args.distro)?;
        let size_class = sizeclass::lookup(&args.size_class)?;
        let image_size = match &args.size {
            Some(text) => ImageSize::Fixed(assemble::parse_size(text)?),
            None => ImageSize::Auto,
        };
        let output_dir = match args.output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !output_dir.is_dir() {
            return Err(BuildError::OutputDir(output_dir));
        }
        let data = data_dir();
        let layers = configure::resolve_layers(&data.join("rootfs"), &args.layers)?;
        if !nix::unistd::geteuid().is_root() {
            return Err(BuildError::NotRoot);
        }
        tool::require_all(HOST_TOOLS)?;
        let cache = CacheDirs {
            rootfs_dir: args.cache_dir.join("rootfs"),
            apt_dir: args.cache_dir.join("apt"),
        };
        for dir in [&cache.rootfs_dir, &cache.apt_dir] {
            fs::create_dir_all(dir).map_err(|source| BuildError::CacheDir {
                path: dir.clone(),
                source,
            })?;
        }
        let mut packages = distro.packages.clone();
        packages.extend(args.packages.iter().filter(|p| !p.is_empty()).cloned());
        Ok(Self {
            release: args
                .release
                .clone()
                .unwrap_or_else(|| distro.default_release.clone()),
            distro,
            size_class,
            packages,
            layers,
            bootstrap_files: data.join("rootfs/bootstrap"),
            kernel_config_fragments: data.join("kernel-configs"),
            mirror: args.mirror.clone(),
            cache,
            refresh_cache: args.refresh_cache,
            image_size,
            ids: DiskIds::random(),
            source_date_epoch: source_date_epoch(),
            output: args.output.clone(),
            progress: Progress::new(!args.json),
            work: WorkDir::create()?,
        })
    }

    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    pub fn rootfs_dir(&self) -> PathBuf {
        self.work.path().join("rootfs")
    }

    /// Files that go onto the EFI system partition.
    pub fn esp_dir(&self) -> PathBuf {
        self.work.path().join("esp")
    }

    pub fn check_interrupt(&self) -> Result<(), BuildError> {
        if crate::interrupt::requested() {
            Err(BuildError::Interrupted)
        } else {
            Ok(())
        }
    }
}

fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        })
}

#[derive(Debug, Serialize)]
pub struct BuildSummary {
    pub image: PathBuf,
    pub manifest: PathBuf,
    pub size_bytes: u64,
    pub sha256: String,
    pub seconds: f64,
    pub bootstrap_from_cache: bool,
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
    let ctx = BuildContext::prepare(args)?;
    let p = &ctx.progress;

    let rootfs = p.stage("bootstrap", || bootstrap::run(&ctx))?;
    ctx.check_interrupt()?;
    p.stage("configure", || configure::run(&ctx, &rootfs))?;
    let boot = p.stage("bootloader", || bootloader::prepare(&ctx, &rootfs))?;
    let layout = assemble::plan(&ctx, &rootfs)?;
    let manifest = p.stage("manifest", || {
        manifest::record(&ctx, &rootfs, &boot, &layout)
    })?;
    ctx.check_interrupt()?;
    let image = p.stage("assemble", || assemble::run(&ctx, &layout, &boot))?;
    ctx.check_interrupt()?;
    let sealed = p.stage("seal", || manifest::seal(image, manifest, &ctx.output))?;

    let summary = BuildSummary {
        image: ctx.output.clone(),
        manifest: sealed.manifest_path,
        size_bytes: layout.disk_bytes,
        sha256: sealed.sha256,
        seconds: started.elapsed().as_secs_f64(),
        bootstrap_from_cache: rootfs.from_cache,
        stages: p.times(),
    };
    Ok(summary)
}

pub fn run(args: &BuildArgs) -> Result<(), BuildError> {
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
