//! The GPT header checks made before the gpt crate reads a disk, and the
//! reason given when a file is not a GPT disk at all: the gpt crate (4.1)
//! trusts the header it reads (a panic on entries of another size, an
//! allocation as large as the header claims), and says only "Header IO
//! Error" of a text file.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use crate::image::layout::SECTOR;

/// GPT partition entry arrays larger than this are refused (the gpt crate
/// would read and allocate whatever the header claims; UEFI's minimum is
/// 128 entries and sgdisk's default too).
pub const MAX_GPT_ENTRIES: u32 = 16384;
/// The smallest disk a GPT tool writes: the protective MBR, the header and
/// 128 partition entries of 128 bytes.
pub const MIN_GPT_SECTORS: u64 = 34;

/// How one place of the disk answered for a GPT header.
enum Header {
    /// No `EFI PART` signature (or no such sector).
    Absent,
    /// The signature, with a CRC that does not match.
    Damaged,
    Valid([u8; 92]),
}

/// The checks the gpt crate (4.1) leaves out, on the header it will use
/// (the primary if its CRC holds, else the backup in the last sector): it
/// asserts 128-byte entries (a panic otherwise) and reads and allocates
/// as many entries as the header claims. `Ok(Err(reason))` when the
/// device is not a GPT disk the gpt crate can read; `path` is named in
/// the conversion hint.
pub fn check<D: Read + Seek>(
    device: &mut D,
    len: u64,
    path: &Path,
) -> io::Result<Result<(), String>> {
    let mut places = vec![("primary", SECTOR)];
    if len >= 3 * SECTOR {
        places.push(("backup", (len - SECTOR) / SECTOR * SECTOR));
    }
    let mut damaged = false;
    for (which, offset) in places {
        match read_header(device, offset)? {
            Header::Absent => {}
            Header::Damaged => damaged = true,
            Header::Valid(header) => return Ok(check_entries(&header, which, len)),
        }
    }
    // The gpt crate accepts exactly the headers found valid above (the
    // signature and the CRC of the first 92 bytes): say why there is none.
    Ok(Err(if damaged {
        "its GPT header fails its CRC check, in LBA 1 and in the last sector: the image is \
         damaged or was not completely written; rebuild or copy it again"
            .to_string()
    } else {
        why_no_header(device, len, path)?
    }))
}

fn read_header<D: Read + Seek>(device: &mut D, offset: u64) -> io::Result<Header> {
    let mut header = [0u8; 92];
    device.seek(SeekFrom::Start(offset))?;
    if device.read_exact(&mut header).is_err() || &header[..8] != b"EFI PART" {
        return Ok(Header::Absent);
    }
    let stored = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes"));
    let mut zeroed = header;
    zeroed[16..20].fill(0);
    Ok(if crc32(&zeroed) == stored {
        Header::Valid(header)
    } else {
        Header::Damaged
    })
}

/// A valid header's partition entries: 128 bytes each, not too many, and
/// inside the image.
fn check_entries(header: &[u8; 92], which: &str, len: u64) -> Result<(), String> {
    let u32_at = |o: usize| u32::from_le_bytes(header[o..o + 4].try_into().expect("4 bytes"));
    let part_start = u64::from_le_bytes(header[72..80].try_into().expect("8 bytes"));
    let (entries, entry_size) = (u32_at(80), u32_at(84));
    if entry_size != 128 {
        return Err(format!(
            "the {which} GPT header gives partition entries of {entry_size} bytes \
             (only 128 is supported)"
        ));
    }
    if entries > MAX_GPT_ENTRIES {
        return Err(format!(
            "the {which} GPT header claims {entries} partition entries \
             (at most {MAX_GPT_ENTRIES} are read)"
        ));
    }
    let end = part_start
        .checked_mul(SECTOR)
        .and_then(|start| start.checked_add(u64::from(entries) * 128));
    if end.is_none_or(|end| end > len) {
        return Err(format!(
            "the {which} GPT header puts its {entries} partition entries at LBA \
             {part_start}, past the end of the image"
        ));
    }
    Ok(())
}

/// What the file is instead of a GPT disk, as far as its first bytes tell,
/// and what to do.
fn why_no_header<D: Read + Seek>(device: &mut D, len: u64, path: &Path) -> io::Result<String> {
    if len == 0 {
        return Ok("the file is empty".into());
    }
    let mut head = vec![0u8; len.min(SECTOR) as usize];
    device.seek(SeekFrom::Start(0))?;
    device.read_exact(&mut head)?;
    let convert = |format: &str| {
        format!(
            "no GPT header at LBA 1: it is a {format} image, not a raw disk; convert it with \
             `qemu-img convert -O raw {} IMAGE.raw`",
            path.display()
        )
    };
    Ok(if let Some(format) = container_format(&head) {
        convert(format)
    } else if len < MIN_GPT_SECTORS * SECTOR {
        format!(
            "no GPT header at LBA 1, and at {len} bytes it is shorter than the smallest GPT disk \
             ({MIN_GPT_SECTORS} sectors of {SECTOR} bytes); give the raw image imgforge built"
        )
    } else if head.len() == SECTOR as usize && head[510..512] == [0x55, 0xaa] {
        "no GPT header at LBA 1, only an MBR partition table (imgforge images are GPT disks)".into()
    } else {
        "no GPT header at LBA 1 (is it a qcow2/vdi? convert with `qemu-img convert -O raw`)".into()
    })
}

/// The container format a file's first sector announces, if it is one
/// qemu-img converts from.
fn container_format(head: &[u8]) -> Option<&'static str> {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(0, b"QFI\xfb") {
        Some("qcow2")
    } else if at(0x40, &0xbeda_107f_u32.to_le_bytes()) {
        Some("vdi")
    } else if at(0, b"KDMV") || at(0, b"# Disk DescriptorFile") {
        Some("vmdk")
    } else if at(0, b"vhdxfile") {
        Some("vhdx")
    } else if at(0, b"conectix") {
        Some("vhd")
    } else {
        None
    }
}

/// CRC-32 (ISO-HDLC, as GPT uses).
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn reason(bytes: &[u8]) -> String {
        check(
            &mut Cursor::new(bytes),
            bytes.len() as u64,
            Path::new("x.img"),
        )
        .unwrap()
        .unwrap_err()
    }

    #[test]
    fn a_file_that_is_no_disk_says_what_it_is() {
        assert_eq!(reason(b""), "the file is empty");
        let text = reason(b"root:x:0:0:root:/root:/bin/bash\n");
        assert!(text.starts_with("no GPT header at LBA 1"), "{text}");
        assert!(
            text.contains("shorter than the smallest GPT disk"),
            "{text}"
        );
        let mut mbr = vec![0u8; 1 << 20];
        mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
        assert!(reason(&mbr).contains("only an MBR partition table"));
        assert!(reason(&vec![0u8; 1 << 20]).contains("is it a qcow2/vdi?"));
        let mut qcow2 = vec![0u8; 1 << 20];
        qcow2[..4].copy_from_slice(b"QFI\xfb");
        let text = reason(&qcow2);
        assert!(
            text.contains("it is a qcow2 image") && text.contains("qemu-img convert -O raw x.img"),
            "{text}"
        );
        let mut vdi = vec![0u8; 4096];
        vdi[0x40..0x44].copy_from_slice(&0xbeda_107f_u32.to_le_bytes());
        assert!(reason(&vdi).contains("it is a vdi image"));
    }

    #[test]
    fn a_header_with_a_bad_crc_is_called_damaged() {
        let mut disk = vec![0u8; 1 << 20];
        disk[512..520].copy_from_slice(b"EFI PART");
        assert!(reason(&disk).contains("fails its CRC check"));
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
