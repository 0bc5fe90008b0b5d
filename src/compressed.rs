//! The compressed streams imgforge reads inside files it did not make: the
//! kernel's IKCONFIG payload (a bzImage's gzip, zstd or xz vmlinux) and an
//! initramfs (an uncompressed early cpio, then a gzip, zstd or xz one).
//! Decoding is bounded: a stream that decodes past the caller's limit is cut
//! there, so a crafted file cannot exhaust memory.

use std::io::{self, Read};

pub const GZIP: &[u8] = &[0x1f, 0x8b, 0x08];
pub const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
pub const XZ: &[u8] = &[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];

/// The largest zstd window accepted: `zstd -22 --ultra` (windowLog 27,
/// 128 MiB), which the kernel's build uses for a zstd bzImage (Arch's) when
/// it pipes vmlinux through zstd (size unknown, so the full window is
/// declared). Set here rather than left to ruzstd's default, which happens
/// to be the same today: a smaller default would make every Arch kernel
/// unreadable.
pub const ZSTD_MAX_WINDOW: u64 = 1 << 27;

/// A compression format recognised by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gzip,
    Zstd,
    Xz,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Zstd, Format::Gzip, Format::Xz];

    pub fn magic(self) -> &'static [u8] {
        match self {
            Format::Gzip => GZIP,
            Format::Zstd => ZSTD,
            Format::Xz => XZ,
        }
    }

    /// The format whose magic `bytes` starts with.
    pub fn detect(bytes: &[u8]) -> Option<Format> {
        Self::ALL.into_iter().find(|f| bytes.starts_with(f.magic()))
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Gzip => "gzip",
            Format::Zstd => "zstd",
            Format::Xz => "xz",
        }
    }

    /// Everything the stream starting at `bytes[0]` decodes to, up to
    /// `limit` bytes. Like `zcat`, trailing bytes after the stream (the rest
    /// of a kernel) are not an error; a corrupt stream yields what decoded
    /// before the damage.
    pub fn decode(self, bytes: &[u8], limit: u64) -> Vec<u8> {
        match self {
            Format::Gzip => drain(flate2::read::GzDecoder::new(bytes), limit),
            Format::Zstd => {
                match ruzstd::decoding::StreamingDecoder::new_with_max_window_size(
                    bytes,
                    ZSTD_MAX_WINDOW,
                ) {
                    Ok(decoder) => drain(decoder, limit),
                    Err(_) => Vec::new(),
                }
            }
            Format::Xz => unxz(bytes, limit),
        }
    }
}

fn drain(mut reader: impl Read, limit: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    while (out.len() as u64) < limit {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

fn unxz(bytes: &[u8], limit: u64) -> Vec<u8> {
    /// A writer that stops the decoder at the size limit.
    struct Bounded(Vec<u8>, u64);
    impl io::Write for Bounded {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if (self.0.len() + buf.len()) as u64 > self.1 {
                return Err(io::Error::other("payload too large"));
            }
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut out = Bounded(Vec::new(), limit);
    // An error after the stream (padding, the rest of the image) still
    // leaves what was decoded in `out`.
    let _ = lzma_rs::xz_decompress(&mut io::BufReader::new(bytes), &mut out);
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::tool::Tool;

    /// What the kernel's build does for a zstd bzImage: vmlinux piped into
    /// zstd (size unknown), so the frame declares the full 128 MiB window
    /// of `-22 --ultra`. The host's zstd writes that header cheaply with
    /// `--zstd=wlog=27`; one more (wlog 28) is refused.
    #[test]
    fn a_zstd_frame_with_the_kernels_128_mib_window_decodes() {
        let text = b"CONFIG_EXT4_FS=m\n".repeat(1000);
        let compress = |wlog: u32| {
            let dir = tempfile::tempdir().unwrap();
            let input = dir.path().join("vmlinux");
            std::fs::write(&input, &text).unwrap();
            // `-c < file` would still give zstd the size; `cat |` does not.
            Tool::new("sh")
                .arg("-c")
                .arg(format!(
                    "cat '{}' | zstd -q -1 --zstd=wlog={wlog} -c",
                    input.display()
                ))
                .run()
                .expect("zstd (Debian package zstd) is needed for this test")
                .stdout
        };
        let frame = compress(27);
        assert_eq!(Format::detect(&frame), Some(Format::Zstd));
        assert_eq!(Format::Zstd.decode(&frame, 1 << 20), text);
        assert!(Format::Zstd.decode(&compress(28), 1 << 20).is_empty());
    }

    #[test]
    fn decoding_stops_at_the_limit() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut encoder, &[0u8; 1 << 20]).unwrap();
        let gz = encoder.finish().unwrap();
        let out = Format::Gzip.decode(&gz, 100_000);
        assert!(out.len() < 200_000, "{}", out.len());
    }
}
