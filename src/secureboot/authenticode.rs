//! Authenticode on EFI executables (a kernel with its EFI stub is one): is
//! a PE image signed at all, and signing one with the owner's key (sbsign,
//! from sbsigntool, as shim and the firmware verify it against db).

use std::path::Path;

use crate::sys::tool::{Tool, ToolError};

/// The PE data directory that holds the Authenticode certificate table.
const CERTIFICATE_TABLE: usize = 4;

/// Whether `image` is a PE file and, if so, whether it carries an
/// Authenticode signature (a non-empty certificate table). `None`: not a
/// PE file (a compressed kernel GRUB unpacks, for example).
pub fn is_signed(image: &[u8]) -> Option<bool> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(image.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(image.get(at..at + 4)?.try_into().ok()?));
    if image.get(..2)? != b"MZ" {
        return None;
    }
    let pe = u32_at(0x3c)? as usize;
    if image.get(pe..pe + 4)? != b"PE\0\0" {
        return None;
    }
    let optional = pe + 24;
    // PE32 keeps its data directories 96 bytes into the optional header,
    // PE32+ (64-bit) 112; both after NumberOfRvaAndSizes.
    let (count_at, directories) = match u16_at(optional)? {
        0x10b => (optional + 92, optional + 96),
        0x20b => (optional + 108, optional + 112),
        _ => return None,
    };
    if (u32_at(count_at)? as usize) <= CERTIFICATE_TABLE {
        return Some(false);
    }
    let size = u32_at(directories + CERTIFICATE_TABLE * 8 + 4)?;
    Some(size > 0)
}

/// Signs the EFI executable `input` into `output` with the owner's key.
pub fn sign(input: &Path, output: &Path, key: &Path, cert: &Path) -> Result<(), ToolError> {
    Tool::new("sbsign")
        .arg("--key")
        .arg(key)
        .arg("--cert")
        .arg(cert)
        .arg("--output")
        .arg(output)
        .arg(input)
        .run()
        .map(|_| ())
}

/// A minimal PE32+ header whose certificate table has the size given (for
/// tests here and in the signing stage).
#[cfg(test)]
pub fn test_pe(certificate_table_size: u32) -> Vec<u8> {
    tests::pe(certificate_table_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn pe(certificate_table_size: u32) -> Vec<u8> {
        let mut image = vec![0u8; 0x200];
        image[..2].copy_from_slice(b"MZ");
        image[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        image[0x80..0x84].copy_from_slice(b"PE\0\0");
        let optional = 0x80 + 24;
        image[optional..optional + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        image[optional + 108..optional + 112].copy_from_slice(&16u32.to_le_bytes());
        let table = optional + 112 + CERTIFICATE_TABLE * 8;
        image[table..table + 4].copy_from_slice(&0x180u32.to_le_bytes());
        image[table + 4..table + 8].copy_from_slice(&certificate_table_size.to_le_bytes());
        image
    }

    #[test]
    fn a_certificate_table_means_signed() {
        assert_eq!(is_signed(&pe(0)), Some(false));
        assert_eq!(is_signed(&pe(0x708)), Some(true));
    }

    #[test]
    fn what_is_not_pe_is_neither() {
        assert_eq!(is_signed(b"\x1f\x8b\x08 gzip kernel"), None);
        assert_eq!(is_signed(b"MZ"), None);
        let mut truncated = pe(0x708);
        truncated.truncate(0x90);
        assert_eq!(is_signed(&truncated), None);
    }
}
