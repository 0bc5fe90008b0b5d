//! What every stage reads: the resolved request, the disk identities, the
//! caches and the work area. It imports no stage (only the request, the
//! emulation's host tools and the seed's default, which are not stages).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::binfmt;
use super::reproducible;
use super::request::{BuildOptions, BuildRequest, ImageSize};
use crate::distro::{MirrorDigest, mirror};
use crate::image::layout::DiskIds;
use crate::image::parent::{Parent, ParentError};
use crate::sys::interrupt::{self, Interrupted};
use crate::sys::progress::Progress;
use crate::sys::tool::{self, HostTool, ToolError};
use crate::sys::workdir::{WorkDir, WorkDirError};

/// Host tools every build runs, whatever the distro, with their packages.
const COMMON_HOST_TOOLS: &[HostTool] = &[
    HostTool::new("tar", "tar"),
    HostTool::new("mkfs.ext4", "e2fsprogs"),
    HostTool::new("chroot", "coreutils"),
];

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    WorkDir(#[from] WorkDirError),
    #[error(transparent)]
    Parent(#[from] ParentError),
    #[error(
        "imgforge build must run as root (it bootstraps into a tree it chroots into and mounts \
         /proc, /sys and /dev there): run it with sudo, or use --plan to see what it would do"
    )]
    NotRoot,
    #[error("output directory {0} does not exist: create it or choose another -o")]
    OutputDir(PathBuf),
    #[error("--keyring {0} is not a folder")]
    Keyring(PathBuf),
    #[error("cannot use cache directory {path}")]
    CacheDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ContextError {
    /// Found from the flags and the host before any work: the command line
    /// (or the host's setup) has to change; nothing failed.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::OutputDir(_)
                | Self::Keyring(_)
                | Self::NotRoot
                | Self::Parent(_)
                | Self::Tool(ToolError::Missing { .. })
        )
    }
}

/// The build cache's folders under its top (`--cache-dir`).
pub struct CacheDirs {
    /// Bootstrapped trees, as tarballs named by their cache key.
    pub rootfs_dir: PathBuf,
    /// Downloaded packages, one folder per distro.
    pub packages_dir: PathBuf,
}

impl CacheDirs {
    pub fn under(cache_dir: &Path) -> Self {
        Self {
            rootfs_dir: cache_dir.join("rootfs"),
            packages_dir: cache_dir.join("packages"),
        }
    }
}

pub struct BuildContext {
    pub request: BuildRequest,
    /// What `ids` are derived from (`--seed`, or the output's name).
    pub seed: String,
    pub ids: DiskIds,
    /// `--layout-from`: the image whose root filesystem this build's is
    /// laid out on; it also gives the seed and the disk size.
    pub parent: Option<Parent>,
    /// `--epoch`, else the SOURCE_DATE_EPOCH environment variable; without
    /// either the epoch comes from the tree's packages after the bootstrap.
    pub epoch_override: Option<u64>,
    pub cache: CacheDirs,
    pub refresh_cache: bool,
    pub keyring: Option<PathBuf>,
    pub progress: Progress,
    work: WorkDir,
}

impl BuildContext {
    /// Checks what a real build needs beyond the request (root, host tools,
    /// output and cache folders), then makes the work directory.
    pub fn prepare(request: BuildRequest, options: &BuildOptions) -> Result<Self, ContextError> {
        check_host(&request, options)?;
        let cache = CacheDirs::under(&options.cache_dir);
        for dir in [&cache.rootfs_dir, &cache.packages_dir] {
            fs::create_dir_all(dir).map_err(|source| ContextError::CacheDir {
                path: dir.clone(),
                source,
            })?;
        }
        let parent = match &request.layout_from {
            Some(path) => Some(Parent::read(path, request.architecture)?),
            None => None,
        };
        let seed = match &parent {
            Some(parent) => {
                if let ImageSize::Fixed(size) = request.image_size {
                    parent.disk_bytes_for(Some(size.bytes()))?;
                }
                parent.seed_for(options.seed.as_deref())?
            }
            None => options
                .seed
                .clone()
                .unwrap_or_else(|| reproducible::default_seed(&request.output)),
        };
        Ok(Self {
            request,
            ids: DiskIds::from_seed(&seed),
            parent,
            seed,
            epoch_override: options.epoch.or_else(epoch_from_environment),
            cache,
            refresh_cache: options.refresh_cache,
            keyring: options.keyring.clone(),
            progress: Progress::new(options.show_progress),
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

    /// SOURCE_DATE_EPOCH for the bootstrap's own tools (mmdebstrap,
    /// initramfs-tools, mkinitcpio): the override, else the newest date of
    /// the mirror state the tree is keyed by, so that a tree bootstrapped
    /// again from the same state gets the same initramfs; else (a state
    /// without dates) now.
    pub fn bootstrap_epoch(&self, mirror_state: &[MirrorDigest]) -> u64 {
        if let Some(epoch) = self.epoch_override {
            return epoch;
        }
        if let Some(epoch) = mirror::newest_date(mirror_state) {
            return epoch;
        }
        log::warn!(
            "the mirror state carries no date: the bootstrap's generated files \
             (the initramfs) are stamped with the time it runs, so a tree \
             bootstrapped again will differ; give --epoch to pin it"
        );
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    pub fn check_interrupt(&self) -> Result<(), Interrupted> {
        interrupt::check()
    }
}

/// The output folder and keyring exist, imgforge runs as root, and the
/// host has every tool the build will run.
fn check_host(request: &BuildRequest, options: &BuildOptions) -> Result<(), ContextError> {
    let output_dir = request.output_dir();
    if !output_dir.is_dir() {
        return Err(ContextError::OutputDir(output_dir));
    }
    if let Some(keyring) = &options.keyring
        && !keyring.is_dir()
    {
        return Err(ContextError::Keyring(keyring.clone()));
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(ContextError::NotRoot);
    }
    tool::require_all(&request.distro.host_tools())?;
    tool::require_all(COMMON_HOST_TOOLS)?;
    tool::require_all(&binfmt::host_tools(request.architecture))?;
    Ok(())
}

fn epoch_from_environment() -> Option<u64> {
    std::env::var("SOURCE_DATE_EPOCH").ok()?.trim().parse().ok()
}
