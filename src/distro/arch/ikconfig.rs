//! The kernel's own build configuration, read from its image the way the
//! kernel's `scripts/extract-ikconfig` does: with `CONFIG_IKCONFIG=y` the
//! config is a gzip stream between the markers `IKCFG_ST` and `IKCFG_ED`.
//! In a bzImage that lives inside the compressed payload (Arch: zstd), so
//! when the image itself has no marker every gzip, zstd and xz stream in it
//! is decompressed and searched.

use crate::compressed::Format;
pub(super) use crate::compressed::{GZIP, XZ, ZSTD};

const START: &[u8] = b"IKCFG_ST";

/// A decompressed payload larger than this is not a kernel.
const LIMIT: u64 = 512 << 20;

/// Decompresses a stream that starts at the slice's first byte.
type Decoder = fn(&[u8]) -> Vec<u8>;

/// The configuration (`CONFIG_X=y` lines), or None when the image carries
/// none (a kernel built without IKCONFIG) or in a format not handled here.
pub fn extract_ikconfig(image: &[u8]) -> Option<String> {
    if let Some(config) = dump_config(image) {
        return Some(config);
    }
    let decoders: [(&[u8], Decoder); 3] = [(ZSTD, unzstd), (GZIP, gunzip), (XZ, unxz)];
    for (magic, decode) in decoders {
        for at in find_all(image, magic) {
            let payload = decode(&image[at..]);
            if let Some(config) = dump_config(&payload) {
                return Some(config);
            }
        }
    }
    None
}

/// `IKCFG_ST` followed by a gzip stream: the config.
fn dump_config(bytes: &[u8]) -> Option<String> {
    for at in find_all(bytes, START) {
        let rest = &bytes[at + START.len()..];
        if !rest.starts_with(GZIP) {
            continue;
        }
        let text = gunzip(rest);
        if text.is_empty() {
            continue;
        }
        if let Ok(text) = String::from_utf8(text) {
            return Some(text);
        }
    }
    None
}

fn find_all<'a>(haystack: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(move |(_, w)| *w == needle)
        .map(|(i, _)| i)
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    Format::Gzip.decode(bytes, LIMIT)
}

fn unzstd(bytes: &[u8]) -> Vec<u8> {
    Format::Zstd.decode(bytes, LIMIT)
}

fn unxz(bytes: &[u8]) -> Vec<u8> {
    Format::Xz.decode(bytes, LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const CONFIG: &str = "CONFIG_IKCONFIG=y\nCONFIG_NVME_CORE=y\nCONFIG_ENA_ETHERNET=m\n";

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn zstd(bytes: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(bytes, ruzstd::encoding::CompressionLevel::Fastest)
    }

    /// xz as the kernel's build makes it. lzma-rs's own encoder writes
    /// stored (uncompressed) chunks, which would leave the marker visible.
    fn xz(bytes: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("vmlinux");
        std::fs::write(&input, bytes).unwrap();
        crate::sys::tool::Tool::new("xz")
            .args(["--check=crc32", "-c"])
            .arg(&input)
            .run()
            .expect("xz (Debian package xz-utils) is needed for this test")
            .stdout
    }

    /// Bytes that look like code, with stray magic-like bytes in them.
    fn junk(len: usize, seed: u8) -> Vec<u8> {
        let mut v: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        // A false gzip magic and a false IKCFG_ST that are not followed by a
        // valid stream: the search must skip them.
        v.extend_from_slice(&[0x1f, 0x8b, 0x08, 0, 0, 0]);
        v.extend_from_slice(b"IKCFG_ST not gzip");
        v.extend((0..len).map(|i| (i as u8) ^ seed));
        v
    }

    /// What a kernel with IKCONFIG holds: the config, gzipped, between markers.
    fn vmlinux() -> Vec<u8> {
        let mut v = junk(4096, 7);
        v.extend_from_slice(START);
        v.extend_from_slice(&gzip(CONFIG.as_bytes()));
        v.extend_from_slice(b"IKCFG_ED");
        v.extend(junk(2048, 9));
        v
    }

    /// A bzImage: setup code, the compressed vmlinux, trailing bytes.
    fn bzimage(compress: fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
        let mut v = junk(8192, 3);
        v.extend_from_slice(&compress(&vmlinux()));
        v.extend(junk(512, 5));
        v
    }

    #[test]
    fn config_in_an_uncompressed_image() {
        assert_eq!(extract_ikconfig(&vmlinux()).as_deref(), Some(CONFIG));
    }

    #[test]
    fn config_inside_a_zstd_gzip_or_xz_bzimage() {
        for (name, compress) in [
            ("zstd", zstd as fn(&[u8]) -> Vec<u8>),
            ("gzip", gzip),
            ("xz", xz),
        ] {
            let image = bzimage(compress);
            assert!(
                find_all(&image, START).all(|at| !image[at + 8..].starts_with(GZIP)),
                "{name}: the marker must not be visible outside the payload"
            );
            assert_eq!(extract_ikconfig(&image).as_deref(), Some(CONFIG), "{name}");
        }
    }

    #[test]
    fn no_config_without_ikconfig() {
        let mut no_config = junk(4096, 1);
        no_config.extend_from_slice(&zstd(&junk(4096, 2)));
        assert_eq!(extract_ikconfig(&no_config), None);
        assert_eq!(extract_ikconfig(b""), None);
    }
}
