//! What an initramfs carries, read in-process: the kernel's format, one or
//! more `newc` cpio archives back to back, the first ones uncompressed
//! (early microcode), the last one compressed (mkinitcpio and
//! initramfs-tools: zstd by default, gzip or xz on request). The kernel
//! check reads the kernel modules in it; the bootstrap only needs it to be
//! there and not empty.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::compressed::Format;
use crate::sys::fsio::{PathError, at};

/// A decompressed initramfs larger than this is not one.
const LIMIT: u64 = 2 << 30;
const HEADER: usize = 110;
const TRAILER: &str = "TRAILER!!!";

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(
        "{path} is not an initramfs imgforge can read: {reason} (a newc cpio archive, \
         uncompressed or gzip, zstd or xz; rebuild it with COMPRESSION=\"zstd\")"
    )]
    Unreadable { path: PathBuf, reason: String },
}

/// The files of an initramfs, by path inside it.
#[derive(Debug, Clone, Default)]
pub struct Initramfs {
    pub files: Vec<String>,
    /// Each compressed archive's format, in order.
    pub compression: Vec<&'static str>,
}

/// Reads the initramfs at `path`.
pub fn read(path: &Path) -> Result<Initramfs, InitramfsError> {
    let bytes = fs::read(path).map_err(at("read", path))?;
    parse(&bytes).map_err(|reason| InitramfsError::Unreadable {
        path: path.to_path_buf(),
        reason,
    })
}

/// The archives in `bytes`: uncompressed ones, then at most one compressed
/// stream holding the rest.
pub fn parse(bytes: &[u8]) -> Result<Initramfs, String> {
    let mut found = Initramfs::default();
    let mut at = 0;
    loop {
        at = skip_zeros(bytes, at);
        if at >= bytes.len() {
            break;
        }
        let rest = &bytes[at..];
        if let Some(format) = Format::detect(rest) {
            let inner = format.decode(rest, LIMIT);
            if inner.is_empty() {
                return Err(format!("its {} stream decodes to nothing", format.name()));
            }
            found.compression.push(format.name());
            let mut inner_at = 0;
            while skip_zeros(&inner, inner_at) < inner.len() {
                inner_at = archive(&inner, skip_zeros(&inner, inner_at), &mut found.files)?;
            }
            break;
        }
        at = archive(bytes, at, &mut found.files)?;
    }
    if found.files.is_empty() {
        return Err("it holds no file".into());
    }
    Ok(found)
}

fn skip_zeros(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at) == Some(&0) {
        at += 1;
    }
    at
}

/// One cpio archive starting at `at`; its file names go to `files`.
/// Returns the offset after its trailer.
fn archive(bytes: &[u8], mut at: usize, files: &mut Vec<String>) -> Result<usize, String> {
    loop {
        let header = bytes
            .get(at..at + HEADER)
            .ok_or_else(|| format!("a cpio header is cut short at byte {at}"))?;
        if !header.starts_with(b"07070") {
            return Err(format!(
                "byte {at} starts neither a newc cpio header nor a gzip, zstd or xz stream"
            ));
        }
        let field = |n: usize| -> Result<usize, String> {
            let text = std::str::from_utf8(&header[6 + 8 * n..14 + 8 * n]).unwrap_or("");
            usize::from_str_radix(text, 16).map_err(|_| format!("bad cpio header at byte {at}"))
        };
        let mode = field(1)?;
        let size = field(6)?;
        let name_size = field(11)?;
        let name_at = at + HEADER;
        let name = bytes
            .get(name_at..name_at + name_size.saturating_sub(1))
            .ok_or_else(|| format!("a cpio name is cut short at byte {name_at}"))?;
        let name = String::from_utf8_lossy(name).into_owned();
        let data_at = align4(name_at + name_size);
        at = align4(data_at + size);
        if name == TRAILER {
            return Ok(at.min(bytes.len()));
        }
        if at > bytes.len() {
            return Err(format!("{name} is cut short"));
        }
        // Regular files only: a module is a file.
        if mode & 0o170000 == 0o100000 {
            files.push(name.trim_start_matches("./").to_string());
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Initramfs {
    /// Kernel modules by name (`ext4`, `jbd2`: the file name without
    /// `.ko[.zst|.xz|.gz]`, `-` read as `_` as modprobe does), each with its
    /// path in the archive.
    pub fn modules(&self) -> BTreeMap<String, String> {
        let mut modules = BTreeMap::new();
        for path in &self.files {
            let file = path.rsplit('/').next().unwrap_or(path);
            let stem = [".ko", ".ko.zst", ".ko.xz", ".ko.gz"]
                .iter()
                .find_map(|suffix| file.strip_suffix(suffix));
            if let Some(stem) = stem {
                modules.insert(stem.replace('-', "_"), path.clone());
            }
        }
        modules
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A newc cpio archive of `files` (path, contents), as the kernel reads it.
    pub fn cpio(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut entry = |name: &str, mode: u32, data: &[u8]| {
            out.extend_from_slice(
                format!(
                    "070701{:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
                    1,
                    0,
                    0,
                    1,
                    0,
                    data.len(),
                    0,
                    0,
                    0,
                    0,
                    name.len() + 1,
                    0
                )
                .as_bytes(),
            );
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            while out.len() % 4 != 0 {
                out.push(0);
            }
            out.extend_from_slice(data);
            while out.len() % 4 != 0 {
                out.push(0);
            }
        };
        entry("usr", 0o040755, b"");
        for (name, data) in files {
            entry(name, 0o100644, data);
        }
        entry(TRAILER, 0, b"");
        out
    }

    #[test]
    fn early_uncompressed_then_zstd_main_archive() {
        let mut image = cpio(&[("kernel/x86/microcode/GenuineIntel.bin", b"ucode")]);
        image.extend_from_slice(&[0; 512]);
        let main = cpio(&[
            (
                "usr/lib/modules/6.12.1-arch1-1/kernel/fs/ext4/ext4.ko.zst",
                b"x",
            ),
            (
                "usr/lib/modules/6.12.1-arch1-1/kernel/fs/jbd2/jbd2.ko.zst",
                b"x",
            ),
            (
                "usr/lib/modules/6.12.1-arch1-1/kernel/drivers/nvme/host/nvme-core.ko.zst",
                b"x",
            ),
            ("init", b"#!/bin/sh\n"),
        ]);
        image.extend(ruzstd::encoding::compress_to_vec(
            &main[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        ));
        let found = parse(&image).unwrap();
        assert_eq!(found.compression, ["zstd"]);
        assert!(found.files.contains(&"init".to_string()), "{found:?}");
        let modules = found.modules();
        assert_eq!(
            modules.keys().collect::<Vec<_>>(),
            ["ext4", "jbd2", "nvme_core"]
        );
        assert!(modules["ext4"].ends_with("fs/ext4/ext4.ko.zst"));
    }

    #[test]
    fn junk_and_empty_are_refused() {
        assert!(parse(b"").unwrap_err().contains("no file"));
        assert!(parse(b"hello world").unwrap_err().contains("byte 0"));
        let mut cut = cpio(&[("a", b"0123456789")]);
        cut.truncate(150);
        assert!(parse(&cut).is_err());
    }
}
