//! Stage 3, bootloader: GRUB for BIOS and UEFI, built with the target's own
//! grub-mkimage and modules (`boot/bootloaders.toml`), one grub.cfg with the
//! size class's kernel command line; and, once the disk exists, the BIOS
//! boot code written into it the way grub-bios-setup would.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::assemble::{self, BIOS_BOOT, DiskLayout, SECTOR};
use super::bootstrap::Rootfs;
use super::configure;
use super::context::BuildContext;
use crate::data::{DataDir, DataError};
use crate::platform::Architecture;
use crate::profile::{Profile, ProfileError};
use crate::sizeclass::SizeClass;
use crate::sys::fsio::{PathError, at};
use crate::sys::tool::{Tool, ToolError};

const TARGETS: &str = "boot/bootloaders.toml";
const GRUB_CFG: &str = "boot/grub.cfg.tmpl";

/// boot.img: the LBA of core.img's first sector (GRUB_BOOT_MACHINE_KERNEL_SECTOR).
pub const BOOT_KERNEL_SECTOR: usize = 0x5c;
/// boot.img: the boot drive; 0xff means "the drive the BIOS booted from".
pub const BOOT_DRIVE: usize = 0x64;
/// boot.img: the drive check; NOPs, as grub-bios-setup writes for hard disks.
pub const BOOT_DRIVE_CHECK: usize = 0x66;
/// diskboot.img (core.img's first sector): the blocklist entry.
pub const CORE_BLOCKLIST: usize = 0x200 - 12;
/// The MBR's boot code area; the partition table after it must survive.
pub const MBR_CODE_BYTES: usize = 440;

#[derive(Debug, thiserror::Error)]
pub enum BootloaderError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Template(#[from] configure::ConfigureError),
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("boot/bootloaders.toml: {0}")]
    Targets(String),
    #[error(
        "the tree has no GRUB for {firmware} ({path} is missing): the distro's \
         [architectures.ARCH] table in rootfs/distros/ must list its GRUB packages (here: {packages})"
    )]
    NoGrub {
        firmware: String,
        path: PathBuf,
        packages: String,
    },
    #[error(
        "boot/bootloaders.toml has no [[target]] with format `{format}`, which the {arch} row \
         of boot/architectures.toml lists in grub_targets"
    )]
    NoTarget { arch: String, format: String },
    #[error("core.img is {size} bytes, larger than the BIOS boot partition ({room} bytes)")]
    CoreTooLarge { size: usize, room: u64 },
    #[error("{0} is not a GRUB boot.img (expected 512 bytes ending in 55 AA)")]
    BadBootImg(PathBuf),
}

#[derive(Debug, Deserialize)]
struct Targets {
    early_config: String,
    base_cmdline: String,
    target: Vec<Target>,
}

#[derive(Debug, Deserialize)]
struct Target {
    firmware: String,
    format: String,
    #[serde(default)]
    esp_path: Option<String>,
    modules: Vec<String>,
}

fn targets(data: &DataDir) -> Result<Targets, BootloaderError> {
    toml::from_str(&data.read_to_string(TARGETS)?)
        .map_err(|e| BootloaderError::Targets(e.to_string()))
}

/// The targets `arch` builds, in the order its row lists them.
fn targets_for(all: Vec<Target>, arch: &Architecture) -> Result<Vec<Target>, BootloaderError> {
    let mut all = all;
    arch.grub_targets
        .iter()
        .map(|format| {
            let at = all
                .iter()
                .position(|t| &t.format == format)
                .ok_or_else(|| BootloaderError::NoTarget {
                    arch: arch.name.clone(),
                    format: format.clone(),
                })?;
            Ok(all.swap_remove(at))
        })
        .collect()
}

/// The ESP paths of the UEFI bootloaders `arch` gets (`EFI/BOOT/BOOTAA64.EFI`).
pub fn esp_paths(data: &DataDir, arch: &Architecture) -> Result<Vec<String>, BootloaderError> {
    Ok(targets_for(targets(data)?.target, arch)?
        .into_iter()
        .filter_map(|t| t.esp_path)
        .collect())
}

/// What the bootloader stage produced for the disk and the manifest.
#[derive(Debug)]
pub struct BootFiles {
    pub kernel_cmdline: String,
    /// `bios`, `uefi`: the firmwares this image boots with.
    pub boot_modes: Vec<String>,
    /// GRUB's boot.img (512 bytes) and core.img, for the BIOS path.
    pub bios: Option<(Vec<u8>, Vec<u8>)>,
}

/// The kernel command line: the root by UUID, the base tokens with the
/// architecture's consoles, the profile's tokens for the size class that
/// the architecture's kernel has.
pub fn kernel_cmdline(
    data: &DataDir,
    root_uuid: &str,
    class: &SizeClass,
    profile: &Profile,
    arch: &Architecture,
) -> Result<String, BootloaderError> {
    let vars = std::collections::BTreeMap::from([("console", arch.console.join(" "))]);
    let base = configure::render(&targets(data)?.base_cmdline, &vars, Path::new(TARGETS))?;
    let mut tokens = vec![format!("root=UUID={root_uuid}"), base];
    tokens.extend(
        profile
            .cmdline_for(class)?
            .into_iter()
            .filter(|t| arch.keep_cmdline_token(t)),
    );
    Ok(tokens.join(" "))
}

pub fn prepare(ctx: &BuildContext, rootfs: &Rootfs) -> Result<BootFiles, BootloaderError> {
    let root = &rootfs.dir;
    let request = &ctx.request;
    let settings = targets(&request.data)?;
    let arch = request.architecture;
    let class = &request.size_class;
    let cmdline = kernel_cmdline(
        &request.data,
        &ctx.ids.root_fs_uuid.to_string(),
        class,
        &request.profile,
        arch,
    )?;
    let distro = request.distro.data();
    let mut vars = distro.template_variables(&request.kernel);
    let data_file = Path::new("rootfs/distros");
    let grub_kernel = configure::render(&distro.grub_kernel, &vars, data_file)?;
    let grub_initrd = configure::render(&distro.grub_initrd, &vars, data_file)?;
    vars.extend([
        ("size_class", class.name.clone()),
        ("root_uuid", ctx.ids.root_fs_uuid.to_string()),
        ("cmdline", cmdline.clone()),
        ("grub_terminal", arch.grub_terminal.clone()),
        ("grub_kernel", grub_kernel),
        ("grub_initrd", grub_initrd),
        (
            "title",
            format!("{} {} ({})", distro.name, request.release, class.name),
        ),
    ]);
    let grub_dir = root.join("boot/grub");
    fs::create_dir_all(&grub_dir).map_err(at("create", &grub_dir))?;
    let template = request.data.read_to_string(GRUB_CFG)?;
    let grub_cfg = configure::render(&template, &vars, Path::new(GRUB_CFG))?;
    fs::write(grub_dir.join("grub.cfg"), grub_cfg).map_err(at("write", &grub_dir))?;
    let early = configure::render(
        &settings.early_config,
        &vars,
        Path::new("boot/bootloaders.toml"),
    )?;
    let early_path = root.join("tmp/imgforge-early.cfg");
    fs::write(&early_path, early).map_err(at("write", &early_path))?;

    let mut files = BootFiles {
        kernel_cmdline: cmdline,
        boot_modes: Vec::new(),
        bios: None,
    };
    for target in &targets_for(settings.target, arch)? {
        ctx.progress.note(&format!("GRUB for {}", target.firmware));
        let modules_src = root.join("usr/lib/grub").join(&target.format);
        if !modules_src.is_dir() {
            return Err(BootloaderError::NoGrub {
                firmware: target.firmware.clone(),
                path: modules_src,
                packages: distro.grub_packages.join(", "),
            });
        }
        copy_modules(&modules_src, &grub_dir.join(&target.format))?;
        let image = build_core_image(root, target)?;
        match &target.esp_path {
            Some(esp_path) => {
                let dest = ctx.esp_dir().join(esp_path);
                fs::create_dir_all(dest.parent().expect("esp path has a folder"))
                    .map_err(at("create", &dest))?;
                fs::write(&dest, image).map_err(at("write", &dest))?;
            }
            None => {
                let boot_img_path = modules_src.join("boot.img");
                let boot_img = fs::read(&boot_img_path).map_err(at("read", &boot_img_path))?;
                if boot_img.len() != 512 || boot_img[510..] != [0x55, 0xAA] {
                    return Err(BootloaderError::BadBootImg(boot_img_path));
                }
                files.bios = Some((boot_img, image));
            }
        }
        files.boot_modes.push(target.firmware.clone());
    }
    fs::remove_file(&early_path).map_err(at("remove", &early_path))?;
    Ok(files)
}

/// What grub-install would put in /boot/grub/<format>: modules and lists,
/// so that grub.cfg can load more modules at boot.
fn copy_modules(from: &Path, to: &Path) -> Result<(), BootloaderError> {
    fs::create_dir_all(to).map_err(at("create", to))?;
    for entry in fs::read_dir(from)
        .map_err(at("read", from))?
        .filter_map(Result::ok)
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "mod" || e == "lst") {
            let dest = to.join(entry.file_name());
            fs::copy(&path, &dest).map_err(at("copy", &path))?;
        }
    }
    Ok(())
}

/// grub-mkimage of the target's own GRUB, run inside the tree.
fn build_core_image(root: &Path, target: &Target) -> Result<Vec<u8>, BootloaderError> {
    let inside = format!("/tmp/imgforge-core-{}.img", target.format);
    Tool::new("chroot")
        .arg(root)
        .args(["grub-mkimage", "-O", &target.format, "-o", &inside])
        .args(["-c", "/tmp/imgforge-early.cfg", "-p", "/boot/grub"])
        .args(&target.modules)
        .run()?;
    let outside = root.join(inside.trim_start_matches('/'));
    let bytes = fs::read(&outside).map_err(at("read", &outside))?;
    fs::remove_file(&outside).map_err(at("remove", &outside))?;
    Ok(bytes)
}

/// Points boot.img at core.img: boot code into LBA 0 (only its first 440
/// bytes, so the partition table stays), then the core's LBA, drive and
/// drive check.
pub fn patch_mbr(lba0: &mut [u8; 512], boot_img: &[u8], core_lba: u64) {
    lba0[..MBR_CODE_BYTES].copy_from_slice(&boot_img[..MBR_CODE_BYTES]);
    lba0[BOOT_KERNEL_SECTOR..BOOT_KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    lba0[BOOT_DRIVE] = 0xff;
    lba0[BOOT_DRIVE_CHECK] = 0x90;
    lba0[BOOT_DRIVE_CHECK + 1] = 0x90;
}

/// core.img's first sector loads the rest from the sectors that follow it.
pub fn patch_core(core: &mut [u8], core_lba: u64) {
    core[CORE_BLOCKLIST..CORE_BLOCKLIST + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
}

/// Writes GRUB's BIOS boot code into the image.
pub fn embed_bios(
    file: &mut File,
    layout: &DiskLayout,
    boot: &BootFiles,
) -> Result<(), BootloaderError> {
    let (Some((boot_img, core)), Some(bios_boot)) = (&boot.bios, layout.get(BIOS_BOOT)) else {
        return Ok(());
    };
    let room = layout.bytes(BIOS_BOOT);
    if core.len() as u64 > room {
        return Err(BootloaderError::CoreTooLarge {
            size: core.len(),
            room,
        });
    }
    let core_lba = bios_boot.first_lba;
    let mut core = core.clone();
    patch_core(&mut core, core_lba);
    let image = Path::new("image");
    file.seek(SeekFrom::Start(core_lba * SECTOR))
        .map_err(at("seek", image))?;
    file.write_all(&core)
        .map_err(at("write core.img into", image))?;

    let mut lba0 = [0u8; 512];
    file.seek(SeekFrom::Start(0)).map_err(at("seek", image))?;
    file.read_exact(&mut lba0)
        .map_err(at("read LBA 0 of", image))?;
    patch_mbr(&mut lba0, boot_img, core_lba);
    file.seek(SeekFrom::Start(0)).map_err(at("seek", image))?;
    file.write_all(&lba0)
        .map_err(at("write boot.img into", image))?;
    let _ = assemble::SECTOR;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform;

    fn fake_boot_img() -> Vec<u8> {
        let mut img: Vec<u8> = (0..512).map(|i| (i % 251) as u8).collect();
        img[510] = 0x55;
        img[511] = 0xAA;
        img
    }

    #[test]
    fn mbr_gets_boot_code_and_keeps_the_partition_table() {
        let mut lba0 = [0u8; 512];
        // A protective MBR: disk signature, one 0xEE entry, boot signature.
        lba0[440..444].copy_from_slice(&[1, 2, 3, 4]);
        lba0[446 + 4] = 0xEE;
        lba0[510] = 0x55;
        lba0[511] = 0xAA;
        let table_before = lba0[440..].to_vec();
        let boot = fake_boot_img();
        patch_mbr(&mut lba0, &boot, 2048);
        assert_eq!(&lba0[440..], &table_before[..], "partition table preserved");
        assert_eq!(&lba0[..0x5c], &boot[..0x5c]);
        assert_eq!(
            u64::from_le_bytes(lba0[0x5c..0x64].try_into().unwrap()),
            2048
        );
        assert_eq!(lba0[0x64], 0xff);
        assert_eq!(&lba0[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(&lba0[0x68..440], &boot[0x68..440]);
    }

    #[test]
    fn core_blocklist_points_past_its_first_sector() {
        let mut core = vec![0u8; 4096];
        // grub-mkimage fills the length (u16) and segment (u16) after the start.
        core[0x1fc..0x1fe].copy_from_slice(&7u16.to_le_bytes());
        core[0x1fe..0x200].copy_from_slice(&0x820u16.to_le_bytes());
        patch_core(&mut core, 2048);
        assert_eq!(
            u64::from_le_bytes(core[0x1f4..0x1fc].try_into().unwrap()),
            2049
        );
        assert_eq!(
            u16::from_le_bytes(core[0x1fc..0x1fe].try_into().unwrap()),
            7,
            "length kept"
        );
        assert_eq!(
            u16::from_le_bytes(core[0x1fe..0x200].try_into().unwrap()),
            0x820,
            "segment kept"
        );
    }

    #[test]
    fn targets_parse() {
        let t = targets(&DataDir::open(None).unwrap()).unwrap();
        assert!(t.early_config.contains("{{root_uuid}}"));
        let x86 = targets_for(t.target, platform::lookup("x86_64").unwrap()).unwrap();
        let formats: Vec<_> = x86.iter().map(|t| t.format.as_str()).collect();
        assert_eq!(formats, ["i386-pc", "x86_64-efi"]);
        assert_eq!(x86[1].esp_path.as_deref(), Some("EFI/BOOT/BOOTX64.EFI"));
    }

    #[test]
    fn arm64_gets_only_uefi_grub_as_bootaa64() {
        let data = DataDir::open(None).unwrap();
        let arm = platform::lookup("arm64").unwrap();
        let arm_targets = targets_for(targets(&data).unwrap().target, arm).unwrap();
        assert_eq!(arm_targets.len(), 1);
        assert_eq!(arm_targets[0].format, "arm64-efi");
        assert_eq!(arm_targets[0].firmware, "uefi");
        assert_eq!(
            esp_paths(&data, arm).unwrap(),
            ["EFI/BOOT/BOOTAA64.EFI"],
            "the removable-media path for arm64"
        );
    }

    #[test]
    fn cmdline_has_the_architectures_consoles_and_only_its_parameters() {
        let data = DataDir::open(None).unwrap();
        let profile = crate::profile::Profiles::load(&data)
            .unwrap()
            .choose(None)
            .unwrap();
        let small = crate::sizeclass::lookup("small").unwrap();
        let x86 = kernel_cmdline(
            &data,
            "U",
            &small,
            &profile,
            platform::lookup("x86_64").unwrap(),
        )
        .unwrap();
        assert!(
            x86.starts_with("root=UUID=U ro console=tty0 console=ttyS0,115200n8 nvme_core"),
            "{x86}"
        );
        assert!(x86.contains(" clocksource=tsc tsc=reliable"), "{x86}");
        let arm = kernel_cmdline(
            &data,
            "U",
            &small,
            &profile,
            platform::lookup("arm64").unwrap(),
        )
        .unwrap();
        assert!(
            arm.starts_with(
                "root=UUID=U ro console=ttyAMA0,115200n8 console=ttyS0,115200n8 nvme_core"
            ),
            "{arm}"
        );
        for gone in ["tsc", "intel_idle", "processor.max_cstate"] {
            assert!(!arm.contains(gone), "{gone}: {arm}");
        }
        assert!(
            arm.contains("nohz_full=2-N") && arm.contains("irqaffinity=0-1"),
            "{arm}"
        );
    }
}
