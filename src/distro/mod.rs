//! The distribution axis: everything the build stages ask of a distro.
//!
//! Each distro is one module here (its bootstrap tool, package database,
//! kernel layout) plus one data file, `rootfs/distros/NAME.toml` (packages,
//! kernels, the default user and admin group, service names, layers, scrub
//! list). The stages call the [`Distro`] trait and read [`DistroData`]; none
//! of them tests a distro's name. Adding a distro: a module implementing
//! [`Distro`], a line in [`REGISTRY`], a data file, and its tests.

pub mod arch;
pub mod debian;
pub mod initrd;
pub mod mirror;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::{DataDir, DataError};
use crate::image::manifest::Package;
use crate::platform::{self, Architecture, PlatformError};
use crate::sys::fsio::PathError;
use crate::sys::progress::Progress;
use crate::sys::tool::{HostTool, ToolError};

/// Makes a distro from its data file (and the data folder, for files it reads).
type Make = fn(DistroData, &DataDir) -> Result<Box<dyn Distro>, DistroError>;

/// Every distro imgforge knows: its name and how to make it from its data.
const REGISTRY: &[(&str, Make)] = &[
    ("debian", debian::Debian::boxed),
    ("arch", arch::Arch::boxed),
];

#[derive(Debug, thiserror::Error)]
pub enum DistroError {
    #[error("unknown distro `{given}`; choose one of: {known}")]
    Unknown { given: String, known: String },
    #[error("{path}: {message}")]
    Data { path: String, message: String },
    #[error(transparent)]
    DataDir(#[from] DataError),
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error(
        "{distro} cannot be built for {arch}: rootfs/distros/{distro}.toml has no \
         [architectures.{arch}] table (its architectures: {known})"
    )]
    NoArchitecture {
        distro: String,
        arch: String,
        known: String,
    },
    #[error(
        "unknown kernel `{given}` for {distro}; choose one of: {known} (see rootfs/distros/{distro}.toml)"
    )]
    UnknownKernel {
        distro: String,
        given: String,
        known: String,
    },
    #[error("{what}: not supported for {distro} images yet")]
    Unsupported { distro: String, what: String },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(transparent)]
    Initrd(#[from] initrd::InitrdError),
    #[error(transparent)]
    Debian(#[from] debian::DebianError),
    #[error(transparent)]
    Arch(#[from] arch::ArchError),
}

/// A distro's data file, `rootfs/distros/NAME.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistroData {
    pub name: String,
    pub default_release: String,
    /// The distro's own name for the CPU architecture of the build (`amd64`,
    /// `x86_64`). This and `grub_packages` and `kernels` are not read from
    /// the file: [`read_data_for`] fills them from the build's
    /// `architectures` table (a file that sets them is refused).
    #[serde(skip_deserializing)]
    pub architecture: String,
    /// The user an instance's launch key is installed for.
    pub default_user: String,
    /// The group whose members may administer the machine.
    pub admin_group: String,
    /// The unit that runs the SSH server.
    pub ssh_service: String,
    /// VirtualBox's `--ostype` for `imgforge export`'s hint.
    pub virtualbox_os_type: String,
    /// Packages every image gets (the kernel comes from `kernels`; the
    /// build's GRUB packages are added from its `architectures` table).
    pub packages: Vec<String>,
    /// The build's GRUB packages (named when GRUB's modules are missing).
    #[serde(skip_deserializing)]
    pub grub_packages: Vec<String>,
    /// `--kernel` choices for the build's architecture: name -> packages.
    #[serde(skip_deserializing)]
    pub kernels: BTreeMap<String, Vec<String>>,
    /// The build architecture's signed boot chain (`build --secure-boot`);
    /// `None` where the distro ships none for it.
    #[serde(skip_deserializing)]
    pub secure_boot: Option<SignedBootChain>,
    /// How GRUB starts the kernel under UEFI on the build's architecture.
    #[serde(skip_deserializing)]
    pub grub_efi: GrubEfiLoader,
    /// Per architecture (boot/architectures.toml's names): the distro's
    /// name for it, its GRUB packages and kernels. An architecture without
    /// a table cannot be built.
    pub architectures: BTreeMap<String, DistroArchitecture>,
    pub default_kernel: String,
    /// Kernel and initramfs as grub.cfg names them, relative to the root
    /// filesystem; `{{kernel}}` is the chosen kernel's name.
    pub grub_kernel: String,
    pub grub_initrd: String,
    /// How the initramfs is made and what it must carry, for `--plan`.
    pub initramfs: String,
    /// Layer folders under `rootfs/` applied after the common ones.
    #[serde(default)]
    pub layers: Vec<String>,
    /// A folder under `rootfs/` copied into the tree before any package is
    /// installed (so package scripts see it); part of the cache key.
    #[serde(default)]
    pub bootstrap_files: Option<String>,
    /// Left by the bootstrap and specific to the build host or one machine:
    /// removed from every image. `*` matches within the last component.
    #[serde(default)]
    pub scrub: Vec<String>,
    /// Settings only this distro's module reads.
    #[serde(default)]
    pub bootstrap: toml::Table,
    /// What `--ansible` needs in the image (Python, and what its package
    /// modules use); empty: the distro cannot run Ansible yet.
    #[serde(default)]
    pub ansible_packages: Vec<String>,
    /// The package manager's database the SBOM lists (`dpkg`, `pacman`:
    /// a name in `sbom::DATABASES`); recorded in the manifest, so a tree
    /// that also holds another's (a fixture) is read the distro's way.
    #[serde(default)]
    pub package_database: Option<String>,
    /// What `imgforge build --tpm-tools` installs to use the TPM from the
    /// instance (tpm2-tools; its TSS libraries come as dependencies).
    #[serde(default)]
    pub tpm_packages: Vec<String>,
}

/// `[architectures.NAME]` in a distro's data file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistroArchitecture {
    /// The distro's name for the architecture (`amd64`, `x86_64`, `arm64`).
    pub name: String,
    /// Packages carrying GRUB for the architecture's targets.
    pub grub_packages: Vec<String>,
    /// `--kernel` choices: name -> packages.
    pub kernels: BTreeMap<String, Vec<String>>,
    /// The distribution's signed boot chain for the architecture, if it
    /// ships one (`[architectures.NAME.secure_boot]`).
    #[serde(default)]
    pub secure_boot: Option<SignedBootChain>,
    /// How GRUB starts the kernel under UEFI (`[architectures.NAME.grub_efi]`).
    #[serde(default)]
    pub grub_efi: GrubEfiLoader,
}

/// The GRUB commands that load the kernel and initramfs on a UEFI boot,
/// and the modules they need in the UEFI core image. The kernel must start
/// through its EFI stub on every UEFI boot: only then does it receive the
/// firmware's TPM event log and Secure Boot state. Upstream GRUB's `linux`
/// does that on arm64 (and from 2.12 on x86_64); Debian's 2.06 does it on
/// x86_64 only under Secure Boot, so Debian's row names `linuxefi`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrubEfiLoader {
    pub linux: String,
    pub initrd: String,
    #[serde(default)]
    pub modules: Vec<String>,
}

impl Default for GrubEfiLoader {
    fn default() -> Self {
        Self {
            linux: "linux".into(),
            initrd: "initrd".into(),
            modules: Vec::new(),
        }
    }
}

/// A distribution's signed UEFI boot chain: shim signed by Microsoft's UEFI
/// CA, the distribution's GRUB signed by its own key (which shim trusts),
/// and where that GRUB looks for its config. Paths are inside the tree.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignedBootChain {
    /// Packages that carry the signed files (installed by the bootstrap).
    pub packages: Vec<String>,
    /// The signed shim, e.g. `usr/lib/shim/shimx64.efi.signed`.
    pub shim: String,
    /// The signed GRUB, a monolithic image with its modules built in.
    pub grub: String,
    /// The name shim loads from its own ESP folder (`grubx64.efi`).
    pub grub_esp_name: String,
    /// The signed GRUB's built-in prefix on the ESP (`EFI/debian`): its
    /// embedded script reads `grub.cfg` there.
    pub grub_prefix: String,
}

/// What a build asks of the bootstrap: the resolved request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sources {
    /// The package sources as lines (apt lines, pacman `Server =` URLs):
    /// part of the cache key and of `--plan`.
    pub lines: Vec<String>,
    /// Where they came from (host apt sources, --mirror, the distro default).
    pub origin: String,
    /// Each source considered, where it came from, and whether the image
    /// has it (a host's third-party repository is listed, left out).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<SourceEntry>,
    /// Keys the lines name, read from the host and installed into the image.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<SourceKey>,
    /// Repositories of their own beside `lines`, in the distro's form
    /// (Arch: a pacman.conf section each, from `--repository`); part of
    /// the cache key. Empty where `lines` say everything (Debian).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
}

/// One package source as the plan shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SourceEntry {
    /// The image's line (a source left out: the line as read).
    pub line: String,
    /// The file and line it was read from, or the flag that gave it.
    pub from: String,
    /// Whether the image (and the bootstrap) use it.
    pub used: bool,
    /// Why it was taken or left out.
    pub note: String,
}

/// A repository's key: a host file, installed into the image.
#[derive(Debug, Clone, Serialize)]
pub struct SourceKey {
    pub host: std::path::PathBuf,
    /// Its path in the image, which the image's line names.
    pub image: String,
    pub sha256: String,
}

impl Sources {
    /// The lines as the bootstrap (running on the host) reads them: a key
    /// named by its host file, not by its place in the image.
    pub fn bootstrap_lines(&self) -> Vec<String> {
        self.lines
            .iter()
            .map(|line| {
                self.keys.iter().fold(line.clone(), |line, key| {
                    line.replace(&key.image, &key.host.to_string_lossy())
                })
            })
            .collect()
    }
}

/// What a build asks of its package sources, beyond the release.
#[derive(Debug, Clone, Copy, Default)]
pub struct SourceOptions<'a> {
    /// `--mirror`.
    pub mirror: Option<&'a str>,
    /// `--security-mirror`.
    pub security_mirror: Option<&'a str>,
    /// `--repository` entries, in the distro's own syntax.
    pub repositories: &'a [String],
}

/// One index of the mirror's state: what a build without `--locked` keys
/// its cached tree by, and what a lock file records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorDigest {
    /// The file read (Debian: a suite's InRelease or Release; Arch: a
    /// repository's database).
    pub url: String,
    /// SHA-256 of that file.
    pub sha256: String,
    /// SHA-256 of what in it names packages (Debian: the `SHA256:` lines of
    /// the sources' `Packages` indexes, so that a re-signed Release with the
    /// same packages keeps the cache); the file's own digest elsewhere.
    pub packages_sha256: String,
    /// When the mirror published it (Debian: the Release `Date:`), as
    /// `YYYY-MM-DDTHH:MM:SSZ`, if the file says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
}

/// One bootstrap run: everything it needs, as plain values.
pub struct BootstrapJob<'a> {
    pub release: &'a str,
    pub packages: &'a [String],
    pub sources: &'a Sources,
    /// Downloaded packages, kept between builds (one folder per distro).
    pub package_cache: &'a Path,
    /// Copied into the tree before any package is installed.
    pub bootstrap_files: Option<&'a Path>,
    /// A scratch folder inside the build's work directory.
    pub work_dir: &'a Path,
    /// Where the bootstrapped tree goes, as a tar archive.
    pub output: &'a Path,
    pub source_date_epoch: u64,
    /// A newer keyring than the host's, where the distro verifies packages.
    pub keyring: Option<&'a Path>,
    /// `--package-file`: local packages installed with the set (their
    /// dependencies from the sources).
    pub package_files: &'a [std::path::PathBuf],
    /// `--locked`: install exactly these versions (name -> version), the
    /// dependencies included, or fail naming what the mirror lacks.
    pub locked: Option<&'a BTreeMap<String, String>>,
    pub progress: &'a Progress,
    /// The mirror's state the tree's cache key was made from (empty with
    /// `--locked`): a distro that syncs its indexes again checks it got
    /// the same ones, so the cached tree is what the key says.
    pub mirror_state: &'a [MirrorDigest],
}

/// The kernel installed in a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub version: String,
    /// The kernel's build configuration (`CONFIG_X=y` lines).
    pub config: String,
}

/// What the stages ask of a distribution.
pub trait Distro {
    fn data(&self) -> &DistroData;

    /// Host programs the bootstrap runs, with the Debian package of each.
    fn host_tools(&self) -> Vec<HostTool>;

    /// The package sources a bootstrap would use; no network.
    fn sources(&self, release: &str, mirror: Option<&str>) -> Result<Sources, DistroError>;

    /// The files [`Distro::mirror_state`] reads, for `--plan` (no network).
    fn mirror_state_files(&self, release: &str, sources: &Sources) -> Vec<String>;

    /// The mirror's current state, read from the network at build time (a
    /// few small files, short timeouts): part of the cache key unless the
    /// build is `--locked`.
    fn mirror_state(
        &self,
        release: &str,
        sources: &Sources,
        work_dir: &Path,
    ) -> Result<Vec<MirrorDigest>, DistroError>;

    /// The newest date the installed package set can be pinned to (for an
    /// archive by date), as `YYYY-MM-DDTHH:MM:SSZ`; None when unknown.
    fn newest_package_date(
        &self,
        _root: &Path,
        _mirror_state: &[MirrorDigest],
    ) -> Result<Option<String>, DistroError> {
        Ok(None)
    }

    /// Bootstraps a root filesystem with these packages into `job.output`.
    fn bootstrap(&self, job: &BootstrapJob) -> Result<(), DistroError>;

    /// Installed packages and versions, read from the tree's package database.
    fn installed_packages(&self, root: &Path) -> Result<Vec<Package>, DistroError>;

    /// The one kernel installed in the tree, and its configuration.
    fn kernel(&self, root: &Path) -> Result<Kernel, DistroError>;

    /// SOURCE_DATE_EPOCH for an image of this tree: when its newest package
    /// was built, from the package database (None: the tree cannot tell).
    /// The same package versions give the same answer, whether the tree
    /// was bootstrapped now or comes from the cache.
    fn source_date_epoch(&self, root: &Path) -> Result<Option<u64>, DistroError>;

    /// The package sources with the build's options (`--security-mirror`,
    /// `--repository`); a distro without them refuses those.
    fn sources_with(&self, release: &str, options: &SourceOptions) -> Result<Sources, DistroError> {
        if options.security_mirror.is_some() || !options.repositories.is_empty() {
            return Err(DistroError::Unsupported {
                distro: self.data().name.clone(),
                what: "--security-mirror and --repository".into(),
            });
        }
        self.sources(release, options.mirror)
    }

    /// The command, run inside the tree, that makes the package manager's
    /// lists fresh before the user's provisioning steps (the bootstrap's
    /// were removed from the image); None: nothing to run.
    fn refresh_package_lists(&self) -> Option<Vec<&'static str>> {
        None
    }

    /// Makes the tree's package manager usable by the user's provisioning
    /// steps, run from the host before them (Arch: the keyring and the
    /// synced databases); nothing by default (Debian refreshes inside the
    /// tree, [`Distro::refresh_package_lists`]). What it leaves is removed
    /// with the distro's `scrub` list after the steps.
    fn prepare_package_manager(
        &self,
        _root: &Path,
        _sources: &Sources,
        _work_dir: &Path,
    ) -> Result<(), DistroError> {
        Ok(())
    }

    /// The file name ending of a local package `--package-file` takes
    /// (`.deb`); None: the distro takes none.
    fn package_file_suffix(&self) -> Option<&'static str> {
        None
    }

    /// Distro settings written after the layers (e.g. the image's own
    /// package sources); nothing by default.
    fn configure(&self, _root: &Path, _sources: &Sources) -> Result<(), DistroError> {
        Ok(())
    }

    /// Extra lines for `imgforge build --plan` (keyring, initramfs...).
    fn plan_notes(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

impl DistroData {
    /// The packages of a build: the distro's, the kernel's, then `extra`.
    pub fn packages(&self, kernel: &str, extra: &[String]) -> Result<Vec<String>, DistroError> {
        let kernel_packages =
            self.kernels
                .get(kernel)
                .ok_or_else(|| DistroError::UnknownKernel {
                    distro: self.name.clone(),
                    given: kernel.to_string(),
                    known: self.kernels.keys().cloned().collect::<Vec<_>>().join(", "),
                })?;
        let mut packages = self.packages.clone();
        for p in kernel_packages.iter().chain(extra) {
            if !p.is_empty() && !packages.contains(p) {
                packages.push(p.clone());
            }
        }
        Ok(packages)
    }

    /// Template variables a distro contributes to layers and grub.cfg;
    /// `{{kernel}}` is the chosen kernel's first package (`linux-lts`).
    pub fn template_variables(&self, kernel: &str) -> BTreeMap<&'static str, String> {
        let kernel_package = self
            .kernels
            .get(kernel)
            .and_then(|p| p.first())
            .map_or(kernel, String::as_str);
        BTreeMap::from([
            ("distro", self.name.clone()),
            ("default_user", self.default_user.clone()),
            ("admin_group", self.admin_group.clone()),
            ("ssh_service", self.ssh_service.clone()),
            ("kernel", kernel_package.to_string()),
        ])
    }
}

/// The names of every known distro.
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|(name, _)| *name).collect()
}

/// The distro called `name` for x86_64, with its data from the data directory.
pub fn lookup(data: &DataDir, name: &str) -> Result<Box<dyn Distro>, DistroError> {
    lookup_for(data, name, platform::lookup("x86_64")?)
}

/// The distro called `name` built for `arch`: its data file completed with
/// the architecture's row for it (the distro's name for the architecture,
/// the GRUB packages, the kernels).
pub fn lookup_for(
    data: &DataDir,
    name: &str,
    arch: &Architecture,
) -> Result<Box<dyn Distro>, DistroError> {
    let Some((_, make)) = REGISTRY.iter().find(|(n, _)| *n == name) else {
        return Err(DistroError::Unknown {
            given: name.to_string(),
            known: names().join(", "),
        });
    };
    make(read_data_for(data, name, arch)?, data)
}

/// `rootfs/distros/NAME.toml` completed for x86_64 (see [`read_data_for`]).
pub fn read_data(data: &DataDir, name: &str) -> Result<DistroData, DistroError> {
    read_data_for(data, name, platform::lookup("x86_64")?)
}

/// `rootfs/distros/NAME.toml` completed with its table for `arch` (its
/// name for the architecture, the GRUB packages, the kernels).
pub fn read_data_for(
    data: &DataDir,
    name: &str,
    arch: &Architecture,
) -> Result<DistroData, DistroError> {
    let mut distro_data = read_data_file(data, name)?;
    let Some(row) = distro_data.architectures.get(&arch.name).cloned() else {
        return Err(DistroError::NoArchitecture {
            distro: name.to_string(),
            arch: arch.name.clone(),
            known: (distro_data.architectures.keys().cloned())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    distro_data.architecture = row.name;
    distro_data
        .packages
        .extend(row.grub_packages.iter().cloned());
    distro_data.grub_packages = row.grub_packages;
    distro_data.kernels = row.kernels;
    distro_data.secure_boot = row.secure_boot;
    distro_data.grub_efi = row.grub_efi;
    Ok(distro_data)
}

/// `rootfs/distros/NAME.toml` from the data directory, checked.
fn read_data_file(data: &DataDir, name: &str) -> Result<DistroData, DistroError> {
    let relative = format!("rootfs/distros/{name}.toml");
    let text = data.read_to_string(&relative)?;
    let parsed: DistroData = toml::from_str(&text).map_err(|e| DistroError::Data {
        path: relative.clone(),
        message: e.to_string(),
    })?;
    if parsed.name != name {
        return Err(DistroError::Data {
            path: relative,
            message: format!("`name` is `{}`, expected `{name}`", parsed.name),
        });
    }
    Ok(parsed)
}

/// A distro module's own settings, from the data file's `[bootstrap]` table.
pub fn bootstrap_settings<T: serde::de::DeserializeOwned>(
    data: &DistroData,
) -> Result<T, DistroError> {
    toml::Value::Table(data.bootstrap.clone())
        .try_into()
        .map_err(|e: toml::de::Error| DistroError::Data {
            path: format!("rootfs/distros/{}.toml [bootstrap]", data.name),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedded() -> DataDir {
        DataDir::open(None).unwrap()
    }

    #[test]
    fn every_registered_distro_has_valid_data() {
        let data = embedded();
        for name in names() {
            let distro = lookup(&data, name).unwrap_or_else(|e| panic!("{name}: {e}"));
            let d = distro.data();
            assert!(d.kernels.contains_key(&d.default_kernel), "{name}");
            assert!(!d.packages.is_empty(), "{name}");
            for layer in &d.layers {
                assert!(
                    data.path().join("rootfs").join(layer).is_dir(),
                    "{name}: {layer}"
                );
            }
        }
    }

    #[test]
    fn debian_and_arch_differ_where_they_should() {
        let data = embedded();
        let debian = lookup(&data, "debian").unwrap();
        let arch = lookup(&data, "arch").unwrap();
        assert_eq!(debian.data().admin_group, "sudo");
        assert_eq!(arch.data().admin_group, "wheel");
        assert_eq!(debian.data().ssh_service, "ssh.service");
        assert_eq!(arch.data().ssh_service, "sshd.service");
        let packages = debian.data().packages("cloud", &[]).unwrap();
        assert!(packages.iter().any(|p| p == "linux-image-cloud-amd64"));
        let lts = arch.data().packages("lts", &["htop".into()]).unwrap();
        assert!(lts.iter().any(|p| p == "linux-lts") && lts.iter().any(|p| p == "htop"));
        assert!(!lts.iter().any(|p| p == "linux"));
    }

    #[test]
    fn the_architecture_row_completes_the_distro() {
        let data = embedded();
        let arm = platform::lookup("arm64").unwrap();
        let debian = lookup_for(&data, "debian", arm).unwrap();
        let d = debian.data();
        assert_eq!(d.architecture, "arm64");
        let packages = d.packages("cloud", &[]).unwrap();
        assert!(packages.iter().any(|p| p == "linux-image-cloud-arm64"));
        assert!(packages.iter().any(|p| p == "grub-efi-arm64-bin"));
        assert!(
            !packages
                .iter()
                .any(|p| p.contains("amd64") || p == "grub-pc-bin")
        );
        let x86 = lookup(&data, "debian").unwrap();
        assert_eq!(x86.data().architecture, "amd64");
        assert!(x86.data().packages.iter().any(|p| p == "grub-pc-bin"));
        let err = lookup_for(&data, "arch", arm).err().unwrap().to_string();
        assert!(
            err.contains("arch cannot be built for arm64")
                && err.contains("[architectures.arm64]")
                && err.contains("x86_64"),
            "{err}"
        );
        for name in names() {
            let d = read_data_file(&data, name).unwrap();
            for arch in d.architectures.keys() {
                platform::lookup(arch).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }

    #[test]
    fn a_distro_file_cannot_set_what_its_architecture_tables_decide() {
        let data = embedded();
        let text = data.read_to_string("rootfs/distros/debian.toml").unwrap();
        assert!(toml::from_str::<DistroData>(&text).is_ok());
        for line in [
            "architecture = \"amd64\"",
            "grub_packages = [\"grub-pc-bin\"]",
            "kernels = { cloud = [\"linux-image-cloud-amd64\"] }",
        ] {
            let err = toml::from_str::<DistroData>(&format!("{line}\n{text}")).unwrap_err();
            assert!(err.to_string().contains("unknown field"), "{line}: {err}");
        }
    }

    #[test]
    fn unknown_distro_and_kernel_say_what_exists() {
        let data = embedded();
        let err = lookup(&data, "gentoo").err().unwrap().to_string();
        assert!(
            err.contains("`gentoo`") && err.contains("debian, arch"),
            "{err}"
        );
        let arch = lookup(&data, "arch").unwrap();
        let err = arch.data().packages("zen", &[]).unwrap_err().to_string();
        assert!(err.contains("`zen`") && err.contains("lts"), "{err}");
    }
}
