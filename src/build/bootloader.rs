//! Stage 3, bootloader: GRUB for BIOS and UEFI, built with the target's own
//! grub-mkimage and modules (the targets in [`super::grub`]), one grub.cfg
//! with the size class's kernel command line. The BIOS boot code it makes
//! is written into the disk by assemble ([`crate::image::bios_boot`]).
//! With `--secure-boot` the UEFI target is the distribution's signed chain
//! instead ([`super::signed_chain`]); the BIOS path is the same.

use std::fs;
use std::path::{Path, PathBuf};

use super::bootstrap::Rootfs;
use super::context::BuildContext;
use super::grub::{self, GrubError, Target};
use super::signed_chain::{self, SignedChainError};
use super::template::{TemplateError, render};
use crate::data::DataError;
use crate::image::bios_boot;
use crate::image::firmware::Firmware;
use crate::image::manifest::SecureBootManifest;
use crate::sys::fsio::{PathError, at};
use crate::sys::tool::{Tool, ToolError};

const GRUB_CFG: &str = "boot/grub.cfg.tmpl";

#[derive(Debug, thiserror::Error)]
pub enum BootloaderError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Grub(#[from] GrubError),
    #[error(
        "the tree has no GRUB for {firmware} ({path} is missing): the distro's \
         [architectures.ARCH] table in rootfs/distros/ must list its GRUB packages (here: {packages})"
    )]
    NoGrub {
        firmware: Firmware,
        path: PathBuf,
        packages: String,
    },
    #[error(transparent)]
    SignedChain(#[from] SignedChainError),
    #[error("{0} is not a GRUB boot.img (expected 512 bytes ending in 55 AA)")]
    BadBootImg(PathBuf),
}

/// What the bootloader stage produced for the disk and the manifest.
#[derive(Debug)]
pub struct BootFiles {
    pub kernel_cmdline: String,
    /// The firmwares this image boots with.
    pub boot_modes: Vec<Firmware>,
    /// GRUB's boot.img (512 bytes) and core.img, for the BIOS path.
    pub bios: Option<(Vec<u8>, Vec<u8>)>,
    /// `--secure-boot`: the signed chain placed on the ESP.
    pub secure_boot: Option<SecureBootManifest>,
}

pub fn prepare(ctx: &BuildContext, rootfs: &Rootfs) -> Result<BootFiles, BootloaderError> {
    let root = &rootfs.dir;
    let request = &ctx.request;
    let settings = grub::targets(&request.data)?;
    let arch = request.architecture;
    let class = &request.size_class;
    let cmdline = grub::kernel_cmdline(
        &request.data,
        &ctx.ids.root_fs_uuid.to_string(),
        class,
        &request.profile,
        arch,
    )
    .map(|c| grub::with_kernel_args(c, &request.kernel_args))?;
    let distro = request.distro.data();
    let mut vars = distro.template_variables(&request.kernel);
    let data_file = Path::new("rootfs/distros");
    let grub_kernel = render(&distro.grub_kernel, &vars, data_file)?;
    let grub_initrd = render(&distro.grub_initrd, &vars, data_file)?;
    vars.extend([
        ("size_class", class.name.clone()),
        ("root_uuid", ctx.ids.root_fs_uuid.to_string()),
        ("cmdline", cmdline.clone()),
        ("grub_terminal", arch.grub_terminal.clone()),
        ("grub_kernel", grub_kernel),
        ("grub_initrd", grub_initrd),
        ("efi_linux", distro.grub_efi.linux.clone()),
        ("efi_initrd", distro.grub_efi.initrd.clone()),
        (
            "title",
            format!("{} {} ({})", distro.name, request.release, class.name),
        ),
    ]);
    let grub_dir = root.join("boot/grub");
    fs::create_dir_all(&grub_dir).map_err(at("create", &grub_dir))?;
    let template = request.data.read_to_string(GRUB_CFG)?;
    let grub_cfg = render(&template, &vars, Path::new(GRUB_CFG))?;
    fs::write(grub_dir.join("grub.cfg"), grub_cfg).map_err(at("write", &grub_dir))?;
    let early = render(&settings.early_config, &vars, Path::new(grub::TARGETS))?;
    let early_path = root.join("tmp/imgforge-early.cfg");
    fs::write(&early_path, &early).map_err(at("write", &early_path))?;

    let mut files = BootFiles {
        kernel_cmdline: cmdline,
        boot_modes: Vec::new(),
        bios: None,
        secure_boot: None,
    };
    for target in &grub::targets_for(settings.target, arch)? {
        ctx.progress.note(&format!("GRUB for {}", target.firmware));
        let modules_src = root.join("usr/lib/grub").join(&target.format);
        if !modules_src.is_dir() {
            return Err(BootloaderError::NoGrub {
                firmware: target.firmware,
                path: modules_src,
                packages: distro.grub_packages.join(", "),
            });
        }
        copy_modules(&modules_src, &grub_dir.join(&target.format))?;
        if let (Some(chain), Some(esp_path)) = (&request.secure_boot, &target.esp_path) {
            let placed = signed_chain::install(chain, root, &ctx.esp_dir(), esp_path, &early)?;
            files.secure_boot = Some(signed_chain::manifest(chain, &placed, &rootfs.packages));
            files.boot_modes.push(target.firmware);
            continue;
        }
        let extra_modules = match target.esp_path {
            Some(_) => distro.grub_efi.modules.as_slice(),
            None => &[],
        };
        let image = build_core_image(root, target, extra_modules)?;
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
                if !bios_boot::is_boot_img(&boot_img) {
                    return Err(BootloaderError::BadBootImg(boot_img_path));
                }
                files.bios = Some((boot_img, image));
            }
        }
        files.boot_modes.push(target.firmware);
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
fn build_core_image(
    root: &Path,
    target: &Target,
    extra_modules: &[String],
) -> Result<Vec<u8>, BootloaderError> {
    let inside = format!("/tmp/imgforge-core-{}.img", target.format);
    Tool::new("chroot")
        .arg(root)
        .args(["grub-mkimage", "-O", &target.format, "-o", &inside])
        .args(["-c", "/tmp/imgforge-early.cfg", "-p", "/boot/grub"])
        .args(&target.modules)
        .args(extra_modules)
        .run()?;
    let outside = root.join(inside.trim_start_matches('/'));
    let bytes = fs::read(&outside).map_err(at("read", &outside))?;
    fs::remove_file(&outside).map_err(at("remove", &outside))?;
    Ok(bytes)
}
