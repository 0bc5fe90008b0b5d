//! The offline half of imgforge: [`build`] is the stage list; each stage is
//! a module here and reads the [`BuildContext`]. The shared services the
//! stages and the plan use are modules of their own and import no stage:
//! [`request`] (the typed request), [`context`], [`template`], [`layers`],
//! [`grub`] (GRUB's targets and the kernel command line), [`cache_key`],
//! [`reproducible`], [`binfmt`], [`lock`] and [`plan`]. The disk format is
//! [`crate::image::layout`]; clap stays in `src/commands/build.rs`.
//!
//! Stages, in order: [`bootstrap`], [`configure`], [`provision`] (the
//! user's scripts, when there are any), [`module_signing`] (with
//! `--secure-boot-key`), [`bootloader`],
//! [`manifest`] (record), [`assemble`] (with [`layout_from`]), then
//! [`manifest`] again (seal).

pub mod assemble;
pub mod binfmt;
pub mod bootloader;
pub mod bootstrap;
pub mod cache_key;
pub mod configure;
pub mod context;
pub mod grub;
pub mod identity;
pub mod layers;
pub mod layout_from;
pub mod lock;
pub mod manifest;
pub mod module_signing;
pub mod plan;
pub mod provision;
pub mod reproducible;
pub mod request;
pub mod signed_chain;
pub mod template;
pub mod units;

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::sys::interrupt::Interrupted;
pub use crate::sys::progress::StageTime;
use crate::sys::tool::ToolError;
use assemble::AssembleError;
use binfmt::BinfmtError;
use bootloader::BootloaderError;
use bootstrap::BootstrapError;
use configure::ConfigureError;
pub use context::BuildContext;
use context::ContextError;
use layout_from::LayoutFromError;
use lock::LockError;
use manifest::ManifestError;
use module_signing::ModuleSigningError;
use provision::ProvisionError;
use reproducible::ReproducibleError;
pub use request::{BuildOptions, BuildRequest};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("bootstrap")]
    Bootstrap(#[from] BootstrapError),
    #[error(transparent)]
    Binfmt(#[from] BinfmtError),
    #[error("configure")]
    Configure(#[from] ConfigureError),
    #[error("provision")]
    Provision(#[from] ProvisionError),
    #[error("module signing")]
    ModuleSigning(#[from] ModuleSigningError),
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
    #[error("SBOM")]
    Sbom(#[from] crate::sbom::SbomError),
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
}

impl BuildError {
    /// True for what the context refused before any work (see
    /// [`ContextError::is_bad_input`]).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Self::Context(err) if err.is_bad_input())
    }
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
    /// `IMAGE.spdx.json` and `IMAGE.cdx.json`, when the distro's package
    /// database is one imgforge reads (Debian).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sbom: Option<SbomFiles>,
    pub stages: Vec<StageTime>,
}

/// The SBOM files written beside the image.
#[derive(Debug, Serialize)]
pub struct SbomFiles {
    pub spdx: PathBuf,
    pub cyclonedx: PathBuf,
}

/// The build, stage by stage: `request` is `options` resolved
/// ([`BuildRequest::resolve`]).
pub fn build(request: BuildRequest, options: &BuildOptions) -> Result<BuildSummary, BuildError> {
    let started = Instant::now();
    let ctx = BuildContext::prepare(request, options)?;
    let p = &ctx.progress;
    // A foreign architecture's programs (bootstrap, chroot grub-mkimage) run
    // through qemu-user-static until this is dropped.
    let _emulation = binfmt::Emulation::ensure(ctx.request.architecture)?;
    provision::check_host(&ctx)?;

    let mut rootfs = p.stage("bootstrap", || bootstrap::run(&ctx))?;
    ctx.check_interrupt()?;
    let epoch = reproducible::source_date_epoch(
        ctx.epoch_override,
        ctx.request.distro.as_ref(),
        &rootfs.dir,
    )?;
    p.stage("configure", || configure::run(&ctx, &rootfs, epoch))?;
    if provision::wanted(&ctx) {
        let vars = configure::template_variables(&ctx)?;
        p.stage("provision", || {
            provision::run(&ctx, &mut rootfs, &vars, epoch)
        })?;
        configure::scrub_leftovers(&ctx, &rootfs.dir)?;
    }
    let module_signing = match ctx.request.secure_boot {
        Some(_) => p.stage("module signing", || {
            module_signing::run(&ctx, &rootfs.dir, ctx.request.module_signing.as_ref())
        })?,
        None => None,
    };
    let mut boot = p.stage("bootloader", || bootloader::prepare(&ctx, &rootfs))?;
    if let Some(secure_boot) = boot.secure_boot.as_mut() {
        secure_boot.module_signing = module_signing;
    }
    let layout = assemble::plan(&ctx, &rootfs)?;
    let manifest = p.stage("manifest", || {
        manifest::record(&ctx, &rootfs, &boot, &layout, epoch)
    })?;
    let sbom = p.stage("sbom", || {
        crate::sbom::write_into_tree(&rootfs.dir, &manifest)
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
    let sbom = match &sbom {
        Some(documents) => {
            let (spdx, cyclonedx) = crate::sbom::write_beside(&ctx.request.output, documents)?;
            Some(SbomFiles { spdx, cyclonedx })
        }
        None => None,
    };
    // Last, so that a failed build leaves no lock file that names an image
    // that was never made.
    if let Some(path) = &options.lock {
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
        lock: options.lock.clone(),
        seed: ctx.seed.clone(),
        source_date_epoch: epoch,
        sbom,
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
        bootstrap_epoch: rootfs.bootstrap_epoch,
        packages: rootfs
            .bootstrapped_packages
            .iter()
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect(),
    }
}
