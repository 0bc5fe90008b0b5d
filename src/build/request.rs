//! The typed build request: everything a build will use, resolved from the
//! build's options ([`BuildOptions`], what the command line or a config
//! variant asked for) and the data files, without root, network or
//! bootstrap. It is what `imgforge build --plan` prints
//! ([`super::plan`]) and what the stages read.

use crate::secureboot::module_key::{ModuleKeyError, SigningKey};
use std::path::{Path, PathBuf};

use super::cache_key;
use super::layers::{self, Layer, LayersError};
use super::lock::{self, Lock, LockError, LockedBuild};
use crate::data::{DataDir, DataError};
use crate::distro::{
    self, Distro, DistroData, DistroError, SignedBootChain, SourceOptions, Sources,
};
use crate::firstboot::{FirstBootError, FirstBootMode, FirstBootModes};
use crate::platform::Architecture;
use crate::profile::{Profile, ProfileError, Profiles};
use crate::sizeclass::SizeClass;
use crate::sys::fsio::PathError;
use crate::units::ByteSize;

/// What a build is asked for, as plain typed values: `imgforge build`'s
/// flags once checked (`src/commands/build.rs` makes it), or a library
/// caller's.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Distribution name (a file in rootfs/distros/).
    pub distro: String,
    /// The architecture's row of boot/architectures.toml.
    pub architecture: &'static Architecture,
    /// Default: the distro's own.
    pub release: Option<String>,
    /// A key of the distro's `kernels` table; default: the distro's own.
    pub kernel: Option<String>,
    pub size_class: SizeClass,
    /// The tuning profile (rootfs/profiles.toml); default: the table's.
    pub tuning: Option<String>,
    /// The disk's size; default: the tree plus headroom.
    pub size: Option<ByteSize>,
    pub mirror: Option<String>,
    /// `--security-mirror`: the security archive with `--mirror`.
    pub security_mirror: Option<String>,
    /// `--repository`: extra package sources with their keys (the
    /// distro's syntax: Debian `deb [signed-by=KEYFILE] URI SUITE COMPONENT...`).
    pub repositories: Vec<String>,
    /// `--package-file`: local packages installed with the set.
    pub package_files: Vec<PathBuf>,
    /// `--kernel-arg`: appended to the size class's kernel command line.
    pub kernel_args: Vec<String>,
    /// `--script`: run as root in the image's tree, in order, after the
    /// packages and layers.
    pub scripts: Vec<PathBuf>,
    /// `--ansible`: a playbook run against the image's tree.
    pub ansible: Option<PathBuf>,
    /// `--ansible-var KEY=VALUE`s.
    pub ansible_vars: Vec<(String, String)>,
    pub keyring: Option<PathBuf>,
    pub cache_dir: PathBuf,
    pub refresh_cache: bool,
    /// Where to write the lock file when the build succeeds.
    pub lock: Option<PathBuf>,
    /// The lock file whose versions to install.
    pub locked: Option<PathBuf>,
    pub packages: Vec<String>,
    /// Extra layer folders, after the built-in ones.
    pub layers: Vec<PathBuf>,
    pub output: PathBuf,
    pub seed: Option<String>,
    pub layout_from: Option<PathBuf>,
    /// SOURCE_DATE_EPOCH override, in seconds.
    pub epoch: Option<u64>,
    /// A key of rootfs/first-boot.toml; default: the table's.
    pub first_boot: Option<String>,
    /// Data files from this folder instead of the built-in copy.
    pub data_dir: Option<PathBuf>,
    /// Stage progress on stderr (off when stdout carries JSON).
    pub show_progress: bool,
    /// UEFI Secure Boot: the distribution's signed shim and GRUB on the ESP.
    pub secure_boot: bool,
    /// Install the distro's `tpm_packages` (tools to use the TPM).
    pub tpm_tools: bool,
    /// `--secure-boot-key` and `--secure-boot-cert`: sign the modules the
    /// distribution did not sign (DKMS's) with this pair.
    pub module_signing_key: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Distro(#[from] DistroError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    FirstBoot(#[from] FirstBootError),
    #[error(transparent)]
    Layers(#[from] LayersError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(
        "--secure-boot: {distro} has no signed boot chain (shim, signed GRUB and kernel) for \
         {arch} in rootfs/distros/{distro}.toml ([architectures.{arch}.secure_boot]), so an \
         image of it cannot boot with Secure Boot on; leave out --secure-boot, or build \
         --distro debian"
    )]
    NoSignedChain { distro: String, arch: String },
    #[error(
        "--tpm-tools: rootfs/distros/{distro}.toml names no tpm_packages; leave out \
         --tpm-tools, or name the packages with --package"
    )]
    NoTpmPackages { distro: String },
    #[error(transparent)]
    ModuleKey(#[from] ModuleKeyError),
    #[error(
        "--secure-boot-key and --secure-boot-cert sign modules for a Secure Boot image: add \
         --secure-boot (the certificate is enrolled in its db)"
    )]
    ModuleKeyWithoutSecureBoot,
    #[error("--script {path}: cannot read it ({source}); give the path of a script file")]
    Script {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--ansible {path}: {why}")]
    Ansible { path: PathBuf, why: String },
    #[error("--package-file {path}: {why}")]
    PackageFile { path: PathBuf, why: String },
}

/// One `--script`, read when the request was resolved.
#[derive(Debug, Clone)]
pub struct ScriptFile {
    pub path: PathBuf,
    /// SHA-256 of its bytes.
    pub sha256: String,
}

/// `--ansible PLAYBOOK`: what Ansible needs in the image (Python) is
/// the distro's `ansible_packages`.
#[derive(Debug, Clone)]
pub struct AnsibleRun {
    /// Absolute, so that roles and files beside it are found.
    pub playbook: PathBuf,
    pub vars: Vec<(String, String)>,
    /// SHA-256 over the playbook's folder (every file's path and bytes).
    pub dir_sha256: String,
    /// Installed for it (the distro's `ansible_packages`).
    pub packages: Vec<String>,
}

fn read_playbook(
    d: &DistroData,
    playbook: &Path,
    vars: &[(String, String)],
) -> Result<AnsibleRun, RequestError> {
    let refuse = |why: String| RequestError::Ansible {
        path: playbook.to_path_buf(),
        why,
    };
    if d.ansible_packages.is_empty() {
        return Err(refuse(format!("{} images cannot run Ansible yet", d.name)));
    }
    if !playbook.is_file() {
        return Err(refuse("no such playbook file".into()));
    }
    let playbook = std::path::absolute(playbook).map_err(|e| refuse(e.to_string()))?;
    let dir = playbook.parent().unwrap_or(Path::new("/"));
    Ok(AnsibleRun {
        dir_sha256: folder_digest(dir).map_err(|e| refuse(e.to_string()))?,
        playbook,
        vars: vars.to_vec(),
        packages: d.ansible_packages.clone(),
    })
}

/// SHA-256 over every file below `dir` (its relative path and bytes, in
/// name order; `.git` left out).
pub fn folder_digest(dir: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder)?.flatten() {
            let kind = entry.file_type()?;
            if entry.file_name() == ".git" {
                continue;
            }
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    let mut hash = Sha256::new();
    for file in files {
        hash.update(
            file.strip_prefix(dir)
                .unwrap_or(&file)
                .to_string_lossy()
                .as_bytes(),
        );
        hash.update([0]);
        hash.update(std::fs::read(&file)?);
        hash.update([0]);
    }
    Ok(hex::encode(hash.finalize()))
}

fn read_scripts(paths: &[PathBuf]) -> Result<Vec<ScriptFile>, RequestError> {
    paths
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path).map_err(|source| RequestError::Script {
                path: path.clone(),
                source,
            })?;
            Ok(ScriptFile {
                path: path.clone(),
                sha256: crate::distro::mirror::sha256_hex(&bytes),
            })
        })
        .collect()
}

/// The disk's size: `--size`, or made to fit the tree.
#[derive(Debug, Clone, Copy)]
pub enum ImageSize {
    Auto,
    Fixed(ByteSize),
}

pub struct BuildRequest {
    pub data: DataDir,
    /// The `--first-boot` mode (a key of rootfs/first-boot.toml).
    pub first_boot: String,
    pub distro: Box<dyn Distro>,
    /// The `--arch` row of boot/architectures.toml.
    pub architecture: &'static Architecture,
    pub release: String,
    /// The `--kernel` choice (a key of the distro's `kernels` table).
    pub kernel: String,
    pub size_class: SizeClass,
    /// What the image is for: its layers, packages, cmdline and kernel
    /// config fragments.
    pub profile: Profile,
    /// The distro's packages, the kernel's, then `--packages`.
    pub packages: Vec<String>,
    pub sources: Sources,
    /// `--package-file`s, as absolute paths, with their SHA-256.
    pub package_files: Vec<(PathBuf, String)>,
    /// `--kernel-arg`s, after the size class's command line.
    pub kernel_args: Vec<String>,
    /// `--script`s, read for their digest.
    pub scripts: Vec<ScriptFile>,
    /// `--ansible`, with its variables and its folder's digest.
    pub ansible: Option<AnsibleRun>,
    pub layers: Vec<Layer>,
    pub bootstrap_files: Option<PathBuf>,
    /// The profile's kernel config fragments (files under kernel-configs/).
    pub kernel_config_fragments: Vec<PathBuf>,
    /// What is known before the build of the cached tree's key (no
    /// network): the tree's key adds the package state to it (see
    /// [`cache_key::tree_key`]).
    pub cache_key: String,
    /// `--locked FILE`: the versions to install.
    pub locked: Option<LockedBuild>,
    pub image_size: ImageSize,
    /// `--secure-boot`: the signed chain the ESP gets.
    pub secure_boot: Option<SignedBootChain>,
    /// The owner's module-signing pair, checked (`--secure-boot-key`).
    pub module_signing: Option<SigningKey>,
    /// `--tpm-tools`: the distro's `tpm_packages` are among `packages`.
    pub tpm_tools: bool,
    /// `--layout-from PARENT.raw`: the image whose root filesystem (and
    /// disk size and seed) this build's starts from.
    pub layout_from: Option<PathBuf>,
    pub output: PathBuf,
}

impl BuildRequest {
    /// Checks and resolves the request; writes nothing.
    pub fn resolve(options: &BuildOptions) -> Result<Self, RequestError> {
        let data = DataDir::open(options.data_dir.as_deref())?;
        let architecture = options.architecture;
        let distro = distro::lookup_for(&data, &options.distro, architecture)?;
        let profile = Profiles::load(&data)?.choose(options.tuning.as_deref())?;
        let first_boot = FirstBootModes::read(&data)?.choose(options.first_boot.as_deref())?;
        let d = distro.data();
        let kernel = options
            .kernel
            .clone()
            .unwrap_or_else(|| d.default_kernel.clone());
        let release = options
            .release
            .clone()
            .unwrap_or_else(|| d.default_release.clone());
        let secure_boot = signed_chain(d, options)?;
        let module_signing = match (&options.module_signing_key, &secure_boot) {
            (None, _) => None,
            (Some(_), None) => return Err(RequestError::ModuleKeyWithoutSecureBoot),
            (Some((key, cert)), Some(_)) => Some(SigningKey::load(key, cert)?),
        };
        let ansible = match &options.ansible {
            Some(playbook) => Some(read_playbook(d, playbook, &options.ansible_vars)?),
            None => None,
        };
        let ansible_packages = match ansible {
            Some(_) => d.ansible_packages.as_slice(),
            None => &[],
        };
        let tpm_packages = tpm_packages(d, options)?;
        let extra_packages: Vec<String> = profile
            .packages
            .iter()
            .chain(&first_boot.packages)
            // Always, as Debian's own cloud images do: --secure-boot then
            // changes only the ESP, and shares the cached tree.
            .chain(d.secure_boot.iter().flat_map(|c| &c.packages))
            .chain(ansible_packages)
            .chain(tpm_packages)
            .chain(&options.packages)
            .cloned()
            .collect();
        let packages = d.packages(&kernel, &extra_packages)?;
        let sources = distro.sources_with(
            &release,
            &SourceOptions {
                mirror: options.mirror.as_deref(),
                security_mirror: options.security_mirror.as_deref(),
                repositories: &options.repositories,
            },
        )?;
        let package_files = read_package_files(distro.as_ref(), &options.package_files)?;
        let layers = resolve_layers(&data, d, &kernel, &profile, &first_boot, &options.layers)?;
        let bootstrap_files = d
            .bootstrap_files
            .as_ref()
            .map(|f| data.path().join("rootfs").join(f));
        let cache_key = cache_key::cache_key(
            &[&d.name, &release, &d.architecture, &kernel],
            &source_key_lines(&sources, &package_files),
            &packages,
            bootstrap_files.as_deref(),
        )?;
        let kernel_config_fragments =
            profile.kernel_config_paths(&data.path().join("kernel-configs"));
        let locked = match &options.locked {
            Some(path) => Some(read_lock(path, d, &release, &packages)?),
            None => None,
        };
        Ok(Self {
            first_boot: first_boot.name,
            distro,
            architecture,
            release,
            kernel,
            size_class: options.size_class.clone(),
            profile,
            packages,
            sources,
            package_files,
            kernel_args: options.kernel_args.clone(),
            scripts: read_scripts(&options.scripts)?,
            ansible,
            layers,
            bootstrap_files,
            kernel_config_fragments,
            cache_key,
            locked,
            image_size: match options.size {
                Some(size) => ImageSize::Fixed(size),
                None => ImageSize::Auto,
            },
            layout_from: options.layout_from.clone(),
            output: options.output.clone(),
            secure_boot,
            module_signing,
            tpm_tools: options.tpm_tools,
            data,
        })
    }

    /// The folder the image is written into.
    pub fn output_dir(&self) -> PathBuf {
        match self.output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    pub fn data_path(&self, relative: &str) -> PathBuf {
        self.data.path().join(relative)
    }
}

/// `--tpm-tools`: the distro's `tpm_packages`, or why it has none.
fn tpm_packages<'d>(
    d: &'d DistroData,
    options: &BuildOptions,
) -> Result<&'d [String], RequestError> {
    match (options.tpm_tools, d.tpm_packages.is_empty()) {
        (false, _) => Ok(&[]),
        (true, false) => Ok(&d.tpm_packages),
        (true, true) => Err(RequestError::NoTpmPackages {
            distro: d.name.clone(),
        }),
    }
}

/// `--secure-boot`: the distro's signed chain for the architecture, or
/// why there is none.
fn signed_chain(
    d: &DistroData,
    options: &BuildOptions,
) -> Result<Option<SignedBootChain>, RequestError> {
    if !options.secure_boot {
        return Ok(None);
    }
    match &d.secure_boot {
        Some(chain) => Ok(Some(chain.clone())),
        None => Err(RequestError::NoSignedChain {
            distro: d.name.clone(),
            arch: options.architecture.name.clone(),
        }),
    }
}

/// The tuning profile's layers, the distro's and the first-boot mode's
/// (under rootfs/), then the `--layer` folders.
fn resolve_layers(
    data: &DataDir,
    d: &DistroData,
    kernel: &str,
    profile: &Profile,
    first_boot: &FirstBootMode,
    extra: &[PathBuf],
) -> Result<Vec<Layer>, LayersError> {
    let built_in: Vec<String> = d.layers.iter().chain(&first_boot.layers).cloned().collect();
    layers::resolve_layers(
        &data.path().join("rootfs"),
        &profile.layers,
        &built_in,
        extra,
        &d.template_variables(kernel),
    )
}

/// `--locked FILE`, read and checked against what this build asks for.
fn read_lock(
    path: &Path,
    d: &DistroData,
    release: &str,
    packages: &[String],
) -> Result<LockedBuild, LockError> {
    let lock = Lock::read(path)?;
    lock.check(
        path,
        &lock::Expected {
            distro: &d.name,
            release,
            architecture: &d.architecture,
            requested: packages,
        },
    )?;
    Ok(LockedBuild {
        path: path.to_path_buf(),
        lock,
    })
}

/// What of the sources decides the tree: the lines, and the exact bytes
/// of every key they name and every `--package-file`.
fn source_key_lines(sources: &Sources, package_files: &[(PathBuf, String)]) -> Vec<String> {
    let keys = sources
        .keys
        .iter()
        .map(|k| format!("key {} {}", k.image, k.sha256));
    let files = package_files.iter().map(|(path, sha256)| {
        format!(
            "package-file {} {sha256}",
            path.file_name().unwrap_or_default().to_string_lossy()
        )
    });
    let repositories = (sources.repositories.iter()).map(|s| format!("repository {s}"));
    sources
        .lines
        .iter()
        .cloned()
        .chain(repositories)
        .chain(keys)
        .chain(files)
        .collect()
}

/// `--package-file`s: files the distro installs (`.deb`), read for their
/// digest, named by absolute path.
fn read_package_files(
    distro: &dyn Distro,
    paths: &[PathBuf],
) -> Result<Vec<(PathBuf, String)>, RequestError> {
    let refuse = |path: &Path, why: String| RequestError::PackageFile {
        path: path.to_path_buf(),
        why,
    };
    let mut files = Vec::new();
    for path in paths {
        let Some(suffix) = distro.package_file_suffix() else {
            return Err(refuse(
                path,
                format!(
                    "{} images take no local package files yet",
                    distro.data().name
                ),
            ));
        };
        if !path.to_string_lossy().ends_with(suffix) {
            return Err(refuse(
                path,
                format!(
                    "not a package file {} images take (`{suffix}`)",
                    distro.data().name
                ),
            ));
        }
        let bytes =
            std::fs::read(path).map_err(|e| refuse(path, format!("cannot read it ({e})")))?;
        let absolute = std::path::absolute(path)
            .map_err(|e| refuse(path, format!("cannot resolve it ({e})")))?;
        if absolute.to_string_lossy().contains([',', ' ']) {
            return Err(refuse(
                path,
                "its path has a comma or a space, which the bootstrap splits; rename it".into(),
            ));
        }
        files.push((absolute, crate::distro::mirror::sha256_hex(&bytes)));
    }
    Ok(files)
}
