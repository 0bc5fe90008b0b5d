//! `imgforge diff A B`: the command line only; the comparison is
//! [`imgforge::image::diff`]. A missing image or one that is not a GPT disk
//! is bad input (exit status 2).

use std::path::PathBuf;

use imgforge::image::diff::{self, DiffError};
use imgforge::image::inspect::InspectError;

use super::BadInput;

#[derive(Debug, clap::Args)]
#[command(after_long_help = "What is compared, level by level:\n  \
1. the partition tables: disk size and GUID, each partition's name, type, GUID and LBA range;\n  \
2. the 512 KiB blocks (the EBS block size) of each partition and of what lies outside them: \
how many hold data (are not all zero in A or B) and which differ;\n  \
3. in a partition whose blocks differ, its files: ext4 through `debugfs rdump` into a temporary \
folder and `debugfs ea_list` (no mount; debugfs is in e2fsprogs), FAT read in-process: content, \
size, type, mode, owner, mtime, symlink target and extended attributes.\n\n\
A partition whose blocks differ but whose files do not differs only in metadata (inode times, \
block allocation, the journal): look for an input that changes the order or the times of \
files.\n\n\
Examples:\n  imgforge diff a.raw b.raw\n  imgforge diff a.raw b.raw --json | jq '.regions[].files'\n  \
imgforge diff a.raw b.raw --exit-code && echo reproducible")]
pub struct DiffArgs {
    /// The first image (raw, GPT).
    pub a: PathBuf,
    /// The second image.
    pub b: PathBuf,
    /// Print the differences as JSON on stdout (every file and block).
    #[arg(long)]
    pub json: bool,
    /// Files listed per partition in the text report.
    #[arg(long, default_value_t = 50)]
    pub max_files: usize,
    /// Exit with status 1 when the images differ (0 when identical), like
    /// cmp; without it, any successful comparison exits 0.
    #[arg(long)]
    pub exit_code: bool,
}

pub fn run(args: &DiffArgs) -> anyhow::Result<()> {
    super::inspect::require_file(&args.a)?;
    super::inspect::require_file(&args.b)?;
    // Both images' tables are read before any comparison: one that is not
    // a GPT disk is bad input.
    let result = diff::diff(&args.a, &args.b).map_err(|err| -> anyhow::Error {
        match err {
            DiffError::Inspect(InspectError::NotGpt { .. }) => BadInput::from_error(err).into(),
            other => other.into(),
        }
    })?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).expect("diff serializes")
        );
    } else {
        print!("{}", result.render(args.max_files));
    }
    if args.exit_code && !result.identical {
        return Err(super::ExitWith(1).into());
    }
    Ok(())
}
