//! `imgforge export IMAGE --format F`: the command line only; the
//! conversion is [`imgforge::export`]. A missing image, a file that is not
//! a disk image, or an output that exists is bad input (exit status 2).

use std::path::PathBuf;

use imgforge::export::{self, ExportFormat, ExportRequest};

use super::BadInput;

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The image to convert (raw, or any format boot-test accepts).
    pub image: PathBuf,
    /// Output format: vdi (VirtualBox), vmdk (VMware, VirtualBox), qcow2 (QEMU/libvirt).
    #[arg(long, value_enum)]
    pub format: FormatArg,
    /// Output file [default: the image's name with the format's extension].
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub force: bool,
}

/// `--format`'s values (clap lists them in --help and completions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    Vdi,
    Vmdk,
    Qcow2,
}

impl From<FormatArg> for ExportFormat {
    fn from(arg: FormatArg) -> Self {
        match arg {
            FormatArg::Vdi => ExportFormat::Vdi,
            FormatArg::Vmdk => ExportFormat::Vmdk,
            FormatArg::Qcow2 => ExportFormat::Qcow2,
        }
    }
}

impl ExportArgs {
    /// The engine's request; the image must be readable.
    fn request(&self) -> Result<ExportRequest, BadInput> {
        super::inspect::require_file(&self.image)?;
        Ok(ExportRequest {
            image: self.image.clone(),
            format: self.format.into(),
            output: self.output.clone(),
            force: self.force,
        })
    }
}

pub fn run(args: &ExportArgs) -> anyhow::Result<()> {
    let request = args.request()?;
    let exported = export::export(&request).map_err(|err| -> anyhow::Error {
        if err.is_bad_input() {
            BadInput::from_error(err).into()
        } else {
            err.into()
        }
    })?;
    let output = &exported.output;
    let size = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
    println!("{}", output.display());
    eprintln!(
        "export: wrote {} ({}, {:.1} MiB)",
        output.display(),
        request.format,
        size as f64 / (1 << 20) as f64
    );
    if request.format != ExportFormat::Qcow2 {
        eprintln!(
            "{}",
            export::virtualbox_hint(
                output,
                &export::virtualbox_os_type(exported.distro.as_deref())
            )
        );
    }
    Ok(())
}
