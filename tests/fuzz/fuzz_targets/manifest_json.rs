//! Manifest JSON -> Manifest, and what inspect and boot-test do with one:
//! the text and JSON output, the size class lookup, the expectations and
//! the checks against a report.
#![no_main]

use std::path::PathBuf;

use imgforge::boottest::report::{self, GuestReport};
use imgforge::image::inspect::{BootModes, ImageInfo, render};
use imgforge::image::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(manifest) = Manifest::from_json(text) else {
        return;
    };
    let again = Manifest::from_json(&manifest.to_json()).expect("a written manifest reads back");
    assert_eq!(again, manifest);
    let class = imgforge::sizeclass::lookup(&manifest.size_class).ok();
    let info = ImageInfo {
        path: PathBuf::from("fuzz.raw"),
        size_bytes: manifest.disk.size_bytes,
        disk_guid: manifest.disk.disk_guid.clone(),
        partitions: Vec::new(),
        boot_modes: BootModes::default(),
        architecture: None,
        manifest: Some(manifest),
    };
    let _ = render(&info);
    let _ = serde_json::to_string_pretty(&info).expect("serializes");
    for firmware in imgforge::image::firmware::Firmware::ALL {
        let want = imgforge::boottest::expectations(firmware, 4, class.as_ref(), &info);
        let _ = report::check(&GuestReport::default(), &want);
    }
});
