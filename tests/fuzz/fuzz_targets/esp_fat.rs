//! A FAT volume's bytes -> the ESP reader (bootloader check, manifest).
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = imgforge::image::inspect::read_fat(Cursor::new(data));
});
