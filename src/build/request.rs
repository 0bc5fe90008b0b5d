//! The typed build request: everything a build will use, resolved from the
//! command line and the data files without root, network or bootstrap. It
//! is what `imgforge build --plan` prints and what the stages read.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::BuildArgs;
use super::assemble::{self, ImageSize};
use super::bootstrap;
use super::configure::{self, Layer};
use super::lock::{self, Lock, LockedBuild};
use crate::data::DataDir;
use crate::distro::{self, Distro, Sources};
use crate::platform::{self, Architecture};
use crate::profile::{Profile, Profiles};
use crate::sizeclass::{self, SizeClass};

use super::BuildError;

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
    pub layers: Vec<Layer>,
    pub bootstrap_files: Option<PathBuf>,
    /// The profile's kernel config fragments (files under kernel-configs/).
    pub kernel_config_fragments: Vec<PathBuf>,
    /// What is known before the build of the cached tree's key (no
    /// network): the tree's key adds the package state to it (see
    /// [`bootstrap::tree_key`]).
    pub cache_key: String,
    /// `--locked FILE`: the versions to install.
    pub locked: Option<LockedBuild>,
    pub image_size: ImageSize,
    /// `--layout-from PARENT.raw`: the image whose root filesystem (and
    /// disk size and seed) this build's starts from.
    pub layout_from: Option<PathBuf>,
    pub output: PathBuf,
}

impl BuildRequest {
    /// Checks and resolves the request; writes nothing.
    pub fn resolve(args: &BuildArgs) -> Result<Self, BuildError> {
        let data = DataDir::open(args.data_dir.as_deref())?;
        let architecture = platform::lookup(&args.arch)?;
        let distro = distro::lookup_for(&data, &args.distro, architecture)?;
        let size_class = sizeclass::lookup(&args.size_class)?;
        let profile = Profiles::load(&data)?.choose(args.profile.as_deref())?;
        let image_size = match &args.size {
            Some(text) => ImageSize::Fixed(assemble::parse_size(text)?),
            None => ImageSize::Auto,
        };
        let d = distro.data();
        let kernel = args
            .kernel
            .clone()
            .unwrap_or_else(|| d.default_kernel.clone());
        let first_boot = FirstBootModes::read(&data)?.choose(args.first_boot.as_deref())?;
        let extra_packages: Vec<String> = profile
            .packages
            .iter()
            .chain(&first_boot.packages)
            .chain(&args.packages)
            .cloned()
            .collect();
        let packages = d.packages(&kernel, &extra_packages)?;
        let release = args
            .release
            .clone()
            .unwrap_or_else(|| d.default_release.clone());
        let sources = distro.sources(&release, args.mirror.as_deref())?;
        let rootfs_data = data.path().join("rootfs");
        let built_in_layers: Vec<String> =
            d.layers.iter().chain(&first_boot.layers).cloned().collect();
        let layers = configure::resolve_layers(
            &rootfs_data,
            &profile.layers,
            &built_in_layers,
            &args.layers,
            &d.template_variables(&kernel),
        )?;
        let bootstrap_files = d.bootstrap_files.as_ref().map(|f| rootfs_data.join(f));
        let cache_key = bootstrap::cache_key(
            &[&d.name, &release, &d.architecture, &kernel],
            &sources.lines,
            &packages,
            bootstrap_files.as_deref(),
        )
        .map_err(super::configure::ConfigureError::from)?;
        let kernel_config_fragments =
            profile.kernel_config_paths(&data.path().join("kernel-configs"));
        let locked = match &args.locked {
            Some(path) => {
                let lock = Lock::read(path)?;
                lock.check(
                    path,
                    &lock::Expected {
                        distro: &d.name,
                        release: &release,
                        architecture: &d.architecture,
                        requested: &packages,
                    },
                )?;
                Some(LockedBuild {
                    path: path.clone(),
                    lock,
                })
            }
            None => None,
        };
        Ok(Self {
            first_boot: first_boot.name,
            distro,
            architecture,
            release,
            kernel,
            size_class,
            profile,
            packages,
            sources,
            layers,
            bootstrap_files,
            kernel_config_fragments,
            cache_key,
            locked,
            image_size,
            layout_from: args.layout_from.clone(),
            output: args.output.clone(),
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

/// `rootfs/first-boot.toml`: how instances set themselves up at first boot.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstBootModes {
    default: String,
    mode: std::collections::BTreeMap<String, FirstBootMode>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstBootMode {
    #[serde(skip)]
    pub name: String,
    pub layers: Vec<String>,
    pub packages: Vec<String>,
    pub rehearsal: RehearsalProbes,
}

/// How `boot-test --ec2` reads a mode's user-data outcome in the guest:
/// shell commands run over SSH as the default user (`{instance_id}` is
/// replaced).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RehearsalProbes {
    /// Prints the user-data script's exit status, or `none` / a word when
    /// no script ran.
    pub user_data_status: String,
    /// Prints the last lines of the user-data run's output.
    pub user_data_output: String,
    /// Prints a line when this boot skipped user-data as already run.
    pub user_data_skipped: String,
}

const FIRST_BOOT_TABLE: &str = "rootfs/first-boot.toml";

impl FirstBootModes {
    pub fn read(data: &DataDir) -> Result<Self, BuildError> {
        let text = data.read_to_string(FIRST_BOOT_TABLE)?;
        toml::from_str(&text).map_err(|e| BuildError::Table {
            path: FIRST_BOOT_TABLE,
            message: e.to_string(),
        })
    }

    /// The mode an image was built with, from the layers its manifest
    /// lists.
    pub fn of_layers(self, layers: &[String]) -> Option<FirstBootMode> {
        self.mode.into_iter().find_map(|(name, mode)| {
            mode.layers
                .iter()
                .all(|l| layers.contains(l))
                .then_some(FirstBootMode { name, ..mode })
        })
    }

    fn choose(mut self, name: Option<&str>) -> Result<FirstBootMode, BuildError> {
        let name = name.unwrap_or(&self.default).to_string();
        let known = self.mode.keys().cloned().collect::<Vec<_>>().join(", ");
        let mut mode = self
            .mode
            .remove(&name)
            .ok_or(BuildError::UnknownFirstBoot {
                given: name.clone(),
                known,
            })?;
        mode.name = name;
        Ok(mode)
    }
}

/// `imgforge build --plan`: the request as a reader (or a pipeline) sees it.
#[derive(Debug, Serialize)]
pub struct Plan {
    pub distro: String,
    pub first_boot: String,
    pub release: String,
    /// imgforge's name for the architecture (`x86_64`, `arm64`).
    pub architecture: String,
    /// What the architecture means for this build (boot/architectures.toml).
    pub platform: PlanPlatform,
    pub kernel: String,
    pub profile: PlanProfile,
    pub sources: Sources,
    pub packages: Vec<String>,
    pub default_user: String,
    pub admin_group: String,
    pub layers: Vec<PlanLayer>,
    pub first_boot_units: Vec<String>,
    pub size_class: PlanClass,
    pub kernel_cmdline: String,
    pub grub_kernel: String,
    pub grub_initrd: String,
    pub initramfs: String,
    pub partitions: Vec<PlanPartition>,
    pub image_size: String,
    /// With --locked, the cached tree's key; otherwise the key of the
    /// request's inputs, to which the build adds the mirror's state.
    pub cache_key: String,
    /// What else decides the tree's key, and when it is known.
    pub package_state: String,
    pub output: PathBuf,
    pub data_dir: String,
    pub notes: Vec<(String, String)>,
}

#[derive(Debug, Serialize)]
pub struct PlanPlatform {
    /// The distro's name for the architecture (`amd64`).
    pub distro_architecture: String,
    /// How the bootstrap runs the target's programs: natively, or through
    /// qemu-user-static registered with binfmt_misc.
    pub bootstrap: String,
    pub ec2_architecture: String,
    /// The EC2 boot mode upload will register.
    pub ec2_boot_mode: String,
    pub grub_targets: Vec<String>,
    pub efi_files: Vec<String>,
    pub root_partition_type: String,
    pub console: Vec<String>,
    /// Profile tokens the architecture's kernel does not have, left out.
    pub cmdline_left_out: Vec<String>,
    /// The EC2 instance sizes of the size class.
    pub instance_sizes: String,
    pub launch: String,
    /// boot-test's machine.
    pub qemu: String,
    pub uefi_firmware: String,
}

#[derive(Debug, Serialize)]
pub struct PlanProfile {
    pub name: String,
    pub description: String,
    pub kernel_configs: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct PlanLayer {
    pub name: String,
    pub dir: PathBuf,
    pub enable: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct PlanClass {
    pub name: String,
    pub vcpus: String,
    pub housekeeping_cpus: String,
    pub isolated_cpus: String,
}

#[derive(Debug, Serialize)]
pub struct PlanPartition {
    pub name: String,
    pub type_guid: String,
    pub size: String,
    pub filesystem: Option<String>,
}

impl Plan {
    pub fn of(request: &BuildRequest) -> Result<Self, BuildError> {
        let d = request.distro.data();
        let arch = request.architecture;
        let class = &request.size_class;
        let vars = d.template_variables(&request.kernel);
        let render = |text: &str| configure::render(text, &vars, Path::new("rootfs/distros"));
        let layers: Vec<PlanLayer> = request
            .layers
            .iter()
            .map(|l| PlanLayer {
                name: l.name.clone(),
                // Built-in layers by their place in the data, not a temporary path.
                dir: l
                    .dir
                    .strip_prefix(request.data.path())
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|_| l.dir.clone()),
                enable: l.settings.enable.clone(),
            })
            .collect();
        Ok(Self {
            distro: d.name.clone(),
            first_boot: request.first_boot.clone(),
            release: request.release.clone(),
            architecture: arch.name.clone(),
            platform: PlanPlatform {
                distro_architecture: d.architecture.clone(),
                bootstrap: if arch.is_host() {
                    "native".into()
                } else {
                    format!(
                        "foreign: the target's programs run through qemu-user-static \
                         (binfmt_misc entry {}, registered for the build if missing)",
                        super::binfmt::entry_name(arch)
                    )
                },
                ec2_architecture: arch.ec2.clone(),
                ec2_boot_mode: if arch.bios { "uefi-preferred" } else { "uefi" }.into(),
                grub_targets: arch.grub_targets.clone(),
                efi_files: super::bootloader::esp_paths(&request.data, arch)?,
                root_partition_type: arch.root_type.clone(),
                console: arch.console.clone(),
                cmdline_left_out: request
                    .profile
                    .cmdline_for(class)?
                    .into_iter()
                    .filter(|t| !arch.keep_cmdline_token(t))
                    .collect(),
                instance_sizes: arch.instance_sizes(class),
                launch: arch.launch_note.clone(),
                qemu: format!("{} -M {}, NVMe disk", arch.qemu.binary, arch.qemu.machine),
                uefi_firmware: format!(
                    "{} (Debian package {})",
                    arch.qemu
                        .firmware
                        .first()
                        .map(|(c, _)| c.display().to_string())
                        .unwrap_or_default(),
                    arch.qemu.firmware_package
                ),
            },
            kernel: request.kernel.clone(),
            profile: PlanProfile {
                name: request.profile.name.clone(),
                description: request.profile.description.clone(),
                kernel_configs: request.profile.kernel_configs.clone(),
            },
            sources: request.sources.clone(),
            packages: request.packages.clone(),
            default_user: d.default_user.clone(),
            admin_group: d.admin_group.clone(),
            first_boot_units: layers.iter().flat_map(|l| l.enable.clone()).collect(),
            layers,
            size_class: PlanClass {
                name: class.name.clone(),
                vcpus: format!("{}-{}", class.min_vcpus, class.max_vcpus),
                housekeeping_cpus: class.housekeeping_list(),
                isolated_cpus: class.isolated_list(),
            },
            kernel_cmdline: super::bootloader::kernel_cmdline(
                &request.data,
                "(root filesystem UUID, chosen at build time)",
                class,
                &request.profile,
                arch,
            )?,
            grub_kernel: render(&d.grub_kernel)?,
            grub_initrd: render(&d.grub_initrd)?,
            initramfs: d.initramfs.clone(),
            partitions: assemble::partitions(arch)
                .iter()
                .map(|(_, p)| PlanPartition {
                    name: p.name.into(),
                    type_guid: p.type_guid.into(),
                    size: p
                        .size
                        .map(|s| format!("{} MiB", s >> 20))
                        .unwrap_or_else(|| "the rest of the disk".into()),
                    filesystem: p.filesystem.map(String::from),
                })
                .collect(),
            image_size: match (&request.layout_from, request.image_size) {
                (Some(parent), _) => format!(
                    "{}'s (--layout-from: the root filesystem is laid out on its, the seed is its)",
                    parent.display()
                ),
                (None, ImageSize::Fixed(bytes)) => format!("{} MiB", bytes >> 20),
                (None, ImageSize::Auto) => {
                    "the root filesystem plus half again, whole GiB, at least 2 GiB".into()
                }
            },
            cache_key: match &request.locked {
                Some(locked) => bootstrap::tree_key(&request.cache_key, &locked.lock.key_lines()),
                None => request.cache_key.clone(),
            },
            package_state: match &request.locked {
                Some(locked) => format!(
                    "the {} package versions locked in {} (no mirror read on a cache hit)",
                    locked.lock.packages.len(),
                    locked.path.display()
                ),
                None => format!(
                    "the mirror's state, read at build time: {} (a new package version means a new bootstrap)",
                    request
                        .distro
                        .mirror_state_files(&request.release, &request.sources)
                        .join(" ")
                ),
            },
            output: request.output.clone(),
            data_dir: if request.data.is_embedded() {
                "built into imgforge".into()
            } else {
                request.data.path().display().to_string()
            },
            notes: request.distro.plan_notes(),
        })
    }

    pub fn print_text(&self) {
        let row = |k: &str, v: &str| println!("{k:>18}: {v}");
        row(
            "distro",
            &format!("{} {} ({})", self.distro, self.release, self.architecture),
        );
        let pf = &self.platform;
        row(
            "architecture",
            &format!(
                "{} (the distro's {}; EC2 {}, boot mode {})",
                self.architecture, pf.distro_architecture, pf.ec2_architecture, pf.ec2_boot_mode
            ),
        );
        row("bootstrap", &pf.bootstrap);
        row(
            "GRUB",
            &format!(
                "{} -> {}",
                pf.grub_targets.join(" "),
                pf.efi_files.join(" ")
            ),
        );
        row("console", &pf.console.join(" "));
        if !pf.cmdline_left_out.is_empty() {
            row("left out", &pf.cmdline_left_out.join(" "));
        }
        row("boot-test", &format!("{}; {}", pf.qemu, pf.uefi_firmware));
        row("kernel", &self.kernel);
        row(
            "profile",
            &format!(
                "{} ({}); kernel must satisfy {}",
                self.profile.name,
                self.profile.description,
                self.profile.kernel_configs.join(" ")
            ),
        );
        row(
            "sources",
            &self.sources.lines.join("\n                    "),
        );
        row("  from", &self.sources.origin);
        row("packages", &self.packages.join(" "));
        row(
            "default user",
            &format!("{} (group {})", self.default_user, self.admin_group),
        );
        for layer in &self.layers {
            row(
                "layer",
                &format!("{} ({})", layer.name, layer.dir.display()),
            );
        }
        row("first boot", &self.first_boot);
        row("units enabled", &self.first_boot_units.join(" "));
        row(
            "size class",
            &format!(
                "{} ({} vCPUs): housekeeping {}, isolated {}",
                self.size_class.name,
                self.size_class.vcpus,
                self.size_class.housekeeping_cpus,
                self.size_class.isolated_cpus
            ),
        );
        row(
            "instances",
            &format!("{} ({})", pf.instance_sizes, pf.launch),
        );
        row("kernel cmdline", &self.kernel_cmdline);
        row(
            "grub loads",
            &format!("{} + {}", self.grub_kernel, self.grub_initrd),
        );
        row("initramfs", &self.initramfs);
        for p in &self.partitions {
            row(
                "partition",
                &format!(
                    "{} {} {}{}",
                    p.name,
                    p.size,
                    p.type_guid,
                    p.filesystem
                        .as_deref()
                        .map(|f| format!(" {f}"))
                        .unwrap_or_default()
                ),
            );
        }
        row("image size", &self.image_size);
        row("cache key", &self.cache_key);
        row("  and", &self.package_state);
        row("output", &self.output.display().to_string());
        row("data", &self.data_dir);
        for (k, v) in &self.notes {
            row(k, v);
        }
    }
}
