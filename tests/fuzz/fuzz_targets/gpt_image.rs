//! Whole disk image bytes -> inspect's reader (GPT, MBR boot code, ESP,
//! manifest) and boot-test's preflight reader.
//!
//! The GPT headers' and the partition entry array's CRC-32s are recomputed
//! before each run, as a writer of a crafted image would: otherwise nearly
//! every mutation would stop at the checksum.
#![no_main]

use std::io::Cursor;
use std::path::Path;

use imgforge::image::gpt_header::crc32;
use libfuzzer_sys::fuzz_target;

#[path = "guarded_panics.rs"]
mod guarded_panics;

const SECTOR: usize = 512;

/// Makes the header at `at` (and its entry array) pass the gpt crate's checks.
fn fix_header(image: &mut [u8], at: usize) {
    if image.len() < at + 92 || &image[at..at + 8] != b"EFI PART" {
        return;
    }
    let u32_at = |img: &[u8], o: usize| u32::from_le_bytes(img[o..o + 4].try_into().unwrap());
    let part_start = u64::from_le_bytes(image[at + 72..at + 80].try_into().unwrap());
    let table_len = u64::from(u32_at(image, at + 80)) * u64::from(u32_at(image, at + 84));
    let start = part_start.saturating_mul(SECTOR as u64);
    if let Some(end) = start.checked_add(table_len)
        && end <= image.len() as u64
    {
        let crc = crc32(&image[start as usize..end as usize]);
        image[at + 88..at + 92].copy_from_slice(&crc.to_le_bytes());
    }
    image[at + 16..at + 20].fill(0);
    let crc = crc32(&image[at..at + 92]);
    image[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    guarded_panics::let_imgforge_catch_fatfs_panics();
    let mut image = data.to_vec();
    fix_header(&mut image, SECTOR);
    if image.len() >= 3 * SECTOR {
        let backup = (image.len() - SECTOR) / SECTOR * SECTOR;
        fix_header(&mut image, backup);
    }
    let path = Path::new("fuzz.raw");
    if let Ok(info) = imgforge::image::inspect::read_image_from(Cursor::new(&image[..]), path) {
        let _ = imgforge::image::inspect::render(&info);
        let _ = serde_json::to_string(&info).expect("serializes");
    }
    let _ = imgforge::boottest::image::read_from(
        Cursor::new(&image[..]),
        image.len() as u64,
        path,
    );
});
