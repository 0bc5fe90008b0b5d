//! A FAT volume's bytes -> the ESP reader (bootloader check, manifest).
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;

#[path = "guarded_panics.rs"]
mod guarded_panics;

fuzz_target!(|data: &[u8]| {
    guarded_panics::let_imgforge_catch_fatfs_panics();
    let _ = imgforge::image::inspect::read_fat(Cursor::new(data));
});
