//! Booting images with `imgforge boot-test` under real QEMU: one helper for
//! every test file, with its temporary files (overlay, OVMF vars, probe disk)
//! under a folder of the test's own, so its QEMUs are told apart from any
//! other's, and the checks that nothing was left behind. Hold
//! [`super::heavy`] around a boot: one guest at a time (TCG on 2 cores).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{IMGFORGE, text};

/// imgforge with TMPDIR set to `tmp`.
pub fn imgforge_in(tmp: &Path) -> Command {
    let mut command = Command::new(IMGFORGE);
    command.env("TMPDIR", tmp);
    command
}

/// One `boot-test --json` run: exit status, the parsed summary, all output.
pub struct Boot {
    pub ok: bool,
    pub summary: Value,
    pub output: String,
    pub seconds: f64,
}

impl Boot {
    /// The result of the first (or only) firmware.
    pub fn result(&self) -> &Value {
        &self.summary["results"][0]
    }
}

/// `imgforge boot-test IMAGE --json ARGS` with TMPDIR=`tmp`; panics when no
/// JSON summary came out (the run did not get as far as booting).
pub fn boot_test(tmp: &Path, image: &Path, args: &[&str]) -> Boot {
    let started = Instant::now();
    let out = imgforge_in(tmp)
        .arg("boot-test")
        .arg(image)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let output = text(&out);
    let summary: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON summary ({e}):\n{output}"));
    eprintln!(
        "boot-test {} {args:?}: {seconds:.0} s, passed {}",
        image.display(),
        summary["passed"]
    );
    Boot {
        ok: out.status.success(),
        summary,
        output,
        seconds,
    }
}

/// Like [`boot_test`], asserting that it passed.
pub fn boot_test_ok(tmp: &Path, image: &Path, args: &[&str]) -> Boot {
    let boot = boot_test(tmp, image, args);
    assert!(boot.ok, "boot-test failed:\n{}", boot.output);
    boot
}

/// QEMU processes whose files are under `tmp`.
pub fn leftover_qemus(tmp: &Path) -> Vec<String> {
    let tmp = tmp.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("qemu-system") && cmdline.contains(&tmp) {
            found.push(cmdline);
        }
    }
    found
}

/// No QEMU of this test runs, and imgforge removed its temporary files.
pub fn assert_nothing_left(tmp: &Path) {
    // A reaped child vanishes at once; allow a moment for the kernel.
    let until = Instant::now() + Duration::from_secs(3);
    while !leftover_qemus(tmp).is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        leftover_qemus(tmp),
        Vec::<String>::new(),
        "QEMU outlived imgforge"
    );
    let left: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("imgforge-"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// imgforge-verify passed in the guest of a small image on 4 vCPUs: the
/// tuning report is there and the isolated CPUs are the class's.
pub fn assert_verify_passed(result: &Value) {
    let report = &result["report"];
    assert_eq!(report["verify"], "pass", "{report:#}");
    assert_eq!(report["verify_failures"], "");
    assert_eq!(report["isolated"], "2-3");
    assert_eq!(report["nohz_full"], "2-3");
    assert_eq!(report["tuning_report"], "present", "{report:#}");
    let verify = result["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "imgforge-verify in the guest")
        .expect("boot-test checks imgforge-verify");
    assert_eq!(verify["ok"], true);
}
