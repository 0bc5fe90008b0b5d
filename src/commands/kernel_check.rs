//! `imgforge kernel-check CONFIG_FILE [--tuning P]`: the command line only;
//! the check is [`imgforge::kernelcheck`], the same the build runs against
//! the image's kernel.

use std::path::PathBuf;

use imgforge::data::DataDir;
use imgforge::kernelcheck;
use imgforge::profile::Profiles;

use super::BadInput;
use super::build::tuning_flag;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  imgforge kernel-check /boot/config-$(uname -r)\n  \
imgforge kernel-check ./linux/.config --tuning base --json\n  \
imgforge kernel-check config-linux --initramfs /boot/initramfs-linux.img"
)]
pub struct KernelCheckArgs {
    /// A kernel config file (`.config`, /boot/config-VERSION).
    pub config: PathBuf,
    /// The kernel's initramfs (e.g. /boot/initramfs-linux.img): a `=y`
    /// requirement that the kernel has as a module (`=m`) is met when the
    /// initramfs carries the module, where kernel-configs/initramfs-modules.toml
    /// allows it (ext4, jbd2, mbcache: Arch builds them as modules). Without
    /// it such a requirement fails. Read in-process: cpio, gzip/zstd/xz.
    #[arg(long, value_name = "FILE")]
    pub initramfs: Option<PathBuf>,
    /// The tuning profile whose requirements apply (default: the default
    /// profile, trading).
    #[arg(long, value_name = "NAME")]
    pub tuning: Option<String>,
    /// The old name of --tuning, for one release.
    #[arg(long = "profile", hide = true, value_name = "NAME")]
    pub old_profile: Option<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Read kernel-configs/ and rootfs/profiles.toml from this folder.
    #[arg(long, env = "IMGFORGE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

pub fn run(args: &KernelCheckArgs) -> anyhow::Result<()> {
    let data = DataDir::open(args.data_dir.as_deref()).map_err(BadInput::from_error)?;
    let tuning = tuning_flag(&args.tuning, &args.old_profile);
    let profile = Profiles::load(&data)
        .and_then(|p| p.choose(tuning.as_deref()))
        .map_err(BadInput::from_error)?;
    let outcome = kernelcheck::check(&args.config, args.initramfs.as_deref(), &profile, &data)
        .map_err(|e| match e {
            kernelcheck::KernelCheckError::Read { .. }
            | kernelcheck::KernelCheckError::NotAConfig { .. }
            | kernelcheck::KernelCheckError::Initramfs(_) => {
                anyhow::Error::from(BadInput::from_error(e))
            }
            other => other.into(),
        })?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&outcome).expect("outcome serializes")
        );
    } else {
        for f in &outcome.fragments {
            if f.missing.is_empty() {
                println!("ok      {}", f.fragment);
            } else {
                println!("MISSING {}: {}", f.fragment, f.missing.join(", "));
            }
            for m in &f.modules {
                println!(
                    "        {}: not built in; module {} in the initramfs ({})",
                    m.option, m.module, m.file
                );
            }
        }
    }
    super::after_json_document(outcome.verdict().map_err(Into::into), args.json)
}
