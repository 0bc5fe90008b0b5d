//! `imgforge build --plan`: the request as a reader (or a pipeline) sees
//! it, as text or JSON. It is made from the resolved
//! [`BuildRequest`](super::request::BuildRequest) and the tables alone: no
//! root, no network, no bootstrap.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::binfmt;
use super::cache_key;
use super::grub::{self, GrubError};
use super::request::{BuildRequest, ImageSize};
use super::signed_chain;
use super::template::{self, TemplateError};
use crate::distro::Sources;
use crate::image::layout;
use crate::platform::Architecture;
use crate::profile::ProfileError;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Grub(#[from] GrubError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
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
    /// `--package-file`s (absolute path, SHA-256).
    pub package_files: Vec<(PathBuf, String)>,
    /// The user's provisioning steps in the order they run (`--ansible`,
    /// then each `--script`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub provisioning: Vec<PlanStep>,
    pub default_user: String,
    pub admin_group: String,
    pub layers: Vec<PlanLayer>,
    pub first_boot_units: Vec<String>,
    pub size_class: PlanClass,
    pub kernel_cmdline: String,
    pub grub_kernel: String,
    pub grub_initrd: String,
    /// GRUB's commands for the kernel and initramfs on a UEFI boot (they
    /// start the kernel through its EFI stub).
    pub grub_efi_commands: String,
    pub initramfs: String,
    pub partitions: Vec<PlanPartition>,
    pub image_size: String,
    /// With --locked, the cached tree's key; otherwise the key of the
    /// request's inputs, to which the build adds the mirror's state.
    pub cache_key: String,
    /// What else decides the tree's key, and when it is known.
    pub package_state: String,
    pub output: PathBuf,
    /// `--secure-boot`: the signed chain and where each file goes on the
    /// ESP; `null` when the image boots grub-mkimage's unsigned GRUB.
    pub secure_boot: Option<PlanSecureBoot>,
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
pub struct PlanSecureBoot {
    pub packages: Vec<String>,
    /// `ESP path <- file in the tree`, shim first.
    pub esp_files: Vec<String>,
    /// What is unchanged.
    pub bios: String,
    /// `--secure-boot-key`: whose key signs the modules DKMS builds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module_signing: Option<String>,
}

impl PlanSecureBoot {
    fn of(request: &BuildRequest) -> Result<Option<Self>, PlanError> {
        let Some(chain) = &request.secure_boot else {
            return Ok(None);
        };
        let loaders = grub::esp_paths(&request.data, request.architecture)?;
        let esp_files = loaders
            .iter()
            .flat_map(|loader| {
                let placed = signed_chain::esp_layout(chain, loader);
                [
                    format!("{} <- /{} (shim)", placed.loader, chain.shim),
                    format!("{} <- /{} (signed GRUB)", placed.grub, chain.grub),
                    format!("{} -> /boot/grub/grub.cfg", placed.grub_cfg),
                ]
            })
            .collect();
        Ok(Some(Self {
            packages: chain.packages.clone(),
            esp_files,
            bios: if request.architecture.bios {
                "unchanged: grub-mkimage's core.img in the BIOS boot partition".into()
            } else {
                "none on this architecture".into()
            },
            module_signing: request.module_signing.as_ref().map(|key| {
                format!(
                    "modules under /lib/modules/*/updates signed with {} (sha256 {}), \
                     the certificate added to db",
                    key.subject,
                    &key.sha256[..16]
                )
            }),
        }))
    }
}

#[derive(Debug, Serialize)]
pub struct PlanStep {
    /// `ansible` or `script`.
    pub kind: String,
    pub path: PathBuf,
    /// Of the file (a playbook: of its folder's files).
    pub sha256: String,
    /// A step may download outside the package manager: the image then
    /// depends on the network at build time.
    pub network: String,
}

impl PlanStep {
    fn all(request: &BuildRequest) -> Vec<Self> {
        const NETWORK: &str = "may download outside the package manager: the image depends on \
                               what the network served at build time (a lock file pins packages only)";
        let playbook = request.ansible.iter().map(|a| PlanStep {
            kind: "ansible".into(),
            path: a.playbook.clone(),
            sha256: a.dir_sha256.clone(),
            network: NETWORK.into(),
        });
        let scripts = request.scripts.iter().map(|s| PlanStep {
            kind: "script".into(),
            path: s.path.clone(),
            sha256: s.sha256.clone(),
            network: NETWORK.into(),
        });
        playbook.chain(scripts).collect()
    }
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
    pub fn of(request: &BuildRequest) -> Result<Self, PlanError> {
        let d = request.distro.data();
        let arch = request.architecture;
        let class = &request.size_class;
        let vars = d.template_variables(&request.kernel);
        let render = |text: &str| template::render(text, &vars, Path::new("rootfs/distros"));
        let layers = PlanLayer::all(request);
        Ok(Self {
            distro: d.name.clone(),
            first_boot: request.first_boot.clone(),
            release: request.release.clone(),
            architecture: arch.name.clone(),
            platform: PlanPlatform::of(request)?,
            kernel: request.kernel.clone(),
            profile: PlanProfile {
                name: request.profile.name.clone(),
                description: request.profile.description.clone(),
                kernel_configs: request.profile.kernel_configs.clone(),
            },
            sources: request.sources.clone(),
            packages: request.packages.clone(),
            package_files: request.package_files.clone(),
            provisioning: PlanStep::all(request),
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
            kernel_cmdline: grub::kernel_cmdline(
                &request.data,
                "(root filesystem UUID, chosen at build time)",
                class,
                &request.profile,
                arch,
            )
            .map(|c| grub::with_kernel_args(c, &request.kernel_args))?,
            grub_kernel: render(&d.grub_kernel)?,
            grub_initrd: render(&d.grub_initrd)?,
            grub_efi_commands: format!("{} + {}", d.grub_efi.linux, d.grub_efi.initrd),
            initramfs: d.initramfs.clone(),
            partitions: PlanPartition::all(arch),
            image_size: image_size(request),
            cache_key: match &request.locked {
                Some(locked) => cache_key::tree_key(&request.cache_key, &locked.lock.key_lines()),
                None => request.cache_key.clone(),
            },
            package_state: package_state(request),
            output: request.output.clone(),
            secure_boot: PlanSecureBoot::of(request)?,
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
        self.print_sources();
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
        row(
            "uefi start",
            &format!("{} (the kernel's EFI stub)", self.grub_efi_commands),
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
        match &self.secure_boot {
            Some(sb) => {
                row("secure boot", &format!("on: {}", sb.packages.join(" ")));
                for file in &sb.esp_files {
                    row("  ESP", file);
                }
                row("  BIOS", &sb.bios);
                if let Some(signing) = &sb.module_signing {
                    row("  modules", signing);
                }
            }
            None => row("secure boot", "off (unsigned GRUB; --secure-boot to sign)"),
        }
        row("output", &self.output.display().to_string());
        row("data", &self.data_dir);
        for (k, v) in &self.notes {
            row(k, v);
        }
    }
    /// The sources (each with where it came from), keys, package files and
    /// provisioning steps.
    fn print_sources(&self) {
        let row = |k: &str, v: &str| println!("{k:>18}: {v}");
        row(
            "sources",
            &self.sources.lines.join("\n                    "),
        );
        row("  from", &self.sources.origin);
        for entry in &self.sources.entries {
            let mark = if entry.used { "source" } else { "left out" };
            row(
                mark,
                &format!("{}\n{:>20}{} ({})", entry.line, "", entry.from, entry.note),
            );
        }
        for key in &self.sources.keys {
            row("key", &format!("{} -> {}", key.host.display(), key.image));
        }
        for (path, _) in &self.package_files {
            row("package file", &path.display().to_string());
        }
        for step in &self.provisioning {
            row(
                &step.kind,
                &format!("{} (sha256 {})", step.path.display(), &step.sha256[..16]),
            );
        }
        if let Some(step) = self.provisioning.first() {
            row("  network", &format!("the steps {}", step.network));
        }
    }
}

impl PlanPlatform {
    /// What the architecture's row means for this build.
    fn of(request: &BuildRequest) -> Result<Self, PlanError> {
        let arch = request.architecture;
        let class = &request.size_class;
        Ok(Self {
            distro_architecture: request.distro.data().architecture.clone(),
            bootstrap: if arch.is_host() {
                "native".into()
            } else {
                format!(
                    "foreign: the target's programs run through qemu-user-static \
                     (binfmt_misc entry {}, registered for the build if missing)",
                    binfmt::entry_name(arch)
                )
            },
            ec2_architecture: arch.ec2.clone(),
            ec2_boot_mode: if arch.bios { "uefi-preferred" } else { "uefi" }.into(),
            grub_targets: arch.grub_targets.clone(),
            efi_files: grub::esp_paths(&request.data, arch)?,
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
        })
    }
}

impl PlanLayer {
    fn all(request: &BuildRequest) -> Vec<Self> {
        request
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
                enable: l
                    .settings
                    .enable
                    .iter()
                    .cloned()
                    .chain(l.settings.enable_from.iter().map(|r| r.describe()))
                    .collect(),
            })
            .collect()
    }
}

impl PlanPartition {
    fn all(arch: &'static Architecture) -> Vec<Self> {
        layout::partitions(arch)
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
            .collect()
    }
}

fn image_size(request: &BuildRequest) -> String {
    match (&request.layout_from, request.image_size) {
        (Some(parent), _) => format!(
            "{}'s (--layout-from: the root filesystem is laid out on its, the seed is its)",
            parent.display()
        ),
        (None, ImageSize::Fixed(size)) => format!("{} MiB", size.bytes() >> 20),
        (None, ImageSize::Auto) => {
            "the root filesystem plus half again, whole GiB, at least 2 GiB".into()
        }
    }
}

/// What else decides the tree's key, and when it is known.
fn package_state(request: &BuildRequest) -> String {
    match &request.locked {
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
    }
}
