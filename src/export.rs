//! The engine of `imgforge export`: convert a raw image for other
//! hypervisors with `qemu-img convert`. The output is written beside its
//! final name and renamed into place only when complete. The command line
//! is `commands/export.rs`.

use std::path::{Path, PathBuf};

use crate::boottest::{self, ImageError};
use crate::sys::tool::{Tool, ToolError};

/// What to convert, and where: the plain request the command line makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRequest {
    /// The image to convert (raw, or any format boot-test accepts).
    pub image: PathBuf,
    pub format: ExportFormat,
    /// The output file; None: the image's name with the format's extension.
    pub output: Option<PathBuf>,
    /// Replace the output file if it exists.
    pub force: bool,
}

/// The formats `qemu-img convert` writes for other hypervisors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// VirtualBox.
    Vdi,
    /// VMware, VirtualBox.
    Vmdk,
    /// QEMU/libvirt.
    Qcow2,
}

impl ExportFormat {
    pub const ALL: [ExportFormat; 3] = [ExportFormat::Vdi, ExportFormat::Vmdk, ExportFormat::Qcow2];

    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Vdi => "vdi",
            ExportFormat::Vmdk => "vmdk",
            ExportFormat::Qcow2 => "qcow2",
        }
    }
}

impl std::fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ExportFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == text)
            .ok_or_else(|| format!("{text:?} is not an export format: vdi, vmdk or qcow2"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("{0} exists; pass --force to replace it")]
    Exists(PathBuf),
    #[error("the output {0} is the input image")]
    SameFile(PathBuf),
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ExportError {
    /// The input is wrong (not a disk image, an output that exists or is
    /// the input), found before anything was converted.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            ExportError::Exists(_)
                | ExportError::SameFile(_)
                | ExportError::Image(
                    ImageError::NotDiskImage { .. } | ImageError::UnsupportedFormat { .. }
                )
        )
    }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    pub output: PathBuf,
    /// The distro the image's manifest names, if it has one.
    pub distro: Option<String>,
}

/// Removes a half-written output unless disarmed.
struct Partial(Option<PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Converts the request's image to its format (see the module comment).
pub fn export(request: &ExportRequest) -> Result<Exported, ExportError> {
    let ExportRequest {
        image,
        format,
        output,
        force,
    } = request;
    boottest::QEMU_IMG.require()?;
    let input_format = boottest::detect_format(image)?;
    let scratch = tempfile::Builder::new()
        .prefix("imgforge-export-")
        .tempdir()
        .map_err(|source| ExportError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
    // Refuse what is not an imgforge-style disk (GPT) before converting.
    let info = boottest::check_disk_image(image, &input_format, scratch.path())?;
    let distro = info.manifest.map(|m| m.distro);
    drop(scratch);

    let output = match output {
        Some(path) => path.clone(),
        None => image.with_extension(format.name()),
    };
    if same_file(image, &output) {
        return Err(ExportError::SameFile(output));
    }
    if output.exists() && !*force {
        return Err(ExportError::Exists(output));
    }
    let file_name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let partial_path = output.with_file_name(format!(".{file_name}.partial"));
    let mut partial = Partial(Some(partial_path.clone()));
    Tool::new("qemu-img")
        .args([
            "convert",
            "--force-share",
            "-f",
            &input_format,
            "-O",
            format.name(),
        ])
        .arg(image)
        .arg(&partial_path)
        .run()?;
    std::fs::rename(&partial_path, &output).map_err(|source| ExportError::Io {
        path: output.clone(),
        source,
    })?;
    partial.0 = None;
    Ok(Exported { output, distro })
}

/// VirtualBox's name for the image's distro (its data file says), or
/// plain 64-bit Linux.
pub fn virtualbox_os_type(distro: Option<&str>) -> String {
    let known = || {
        let data = crate::data::DataDir::open(None).ok()?;
        let distro = crate::distro::lookup(&data, distro?).ok()?;
        Some(distro.data().virtualbox_os_type.clone())
    };
    known().unwrap_or_else(|| "Linux_64".into())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The VBoxManage commands for this file (the README has the same).
pub fn virtualbox_hint(disk: &Path, os_type: &str) -> String {
    let disk = std::fs::canonicalize(disk).unwrap_or_else(|_| disk.to_path_buf());
    let name = disk
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "imgforge".into());
    format!(
        "VirtualBox (UEFI; `--firmware bios` boots the same disk with BIOS):\n  \
VBoxManage createvm --name {name} --ostype {os_type} --register\n  \
VBoxManage modifyvm {name} --firmware efi --cpus 4 --memory 2048 --nic1 nat --nictype1 virtio \
--uart1 0x3F8 4 --uartmode1 file /tmp/{name}-console.log\n  \
VBoxManage storagectl {name} --name NVMe --add pcie --controller NVMe --portcount 1 --bootable on\n  \
VBoxManage storageattach {name} --storagectl NVMe --port 0 --device 0 --type hdd --medium {}\n  \
VBoxManage startvm {name} --type headless",
        disk.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtualbox_hint_names_the_disk_nvme_virtio_and_serial() {
        let hint = virtualbox_hint(Path::new("/images/web-small.vdi"), "Debian_64");
        assert!(hint.contains("createvm --name web-small --ostype Debian_64 --register"));
        assert!(hint.contains("--firmware efi"));
        assert!(hint.contains("--nictype1 virtio"));
        assert!(hint.contains("--uartmode1 file /tmp/web-small-console.log"));
        assert!(hint.contains("--add pcie --controller NVMe"));
        assert!(hint.contains("--medium /images/web-small.vdi"));
        assert!(hint.contains("startvm web-small --type headless"));
    }

    #[test]
    fn virtualbox_os_type_comes_from_the_distro_data() {
        assert_eq!(virtualbox_os_type(Some("debian")), "Debian_64");
        assert_eq!(virtualbox_os_type(Some("arch")), "ArchLinux_64");
        assert_eq!(virtualbox_os_type(Some("plan9")), "Linux_64");
        assert_eq!(virtualbox_os_type(None), "Linux_64");
    }
}
