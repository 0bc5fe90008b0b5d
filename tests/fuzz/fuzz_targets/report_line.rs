//! A serial console line -> the guest report parser, and the checks.
#![no_main]

use imgforge::boottest::report::{self, Expectations};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let Some(got) = report::parse_line(&line) else {
        return;
    };
    let want = Expectations {
        firmware: imgforge::image::firmware::Firmware::Uefi,
        smp: 4,
        class: imgforge::sizeclass::lookup("small").ok(),
        class_tokens: vec!["isolcpus=managed_irq,domain,2-3".into()],
        manifest_cmdline: vec!["console=ttyS0,115200".into()],
        root_uuid: None,
    };
    let _ = report::check(&got, &want);
    let json = serde_json::to_string(&got).expect("serializes");
    let again = report::parse_line(&format!("{}{json}", report::MARKER));
    assert_eq!(again.as_ref(), Some(&got));
});
