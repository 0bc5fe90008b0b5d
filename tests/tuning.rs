//! The trading profile: profiles in the plan (no root), `imgforge
//! kernel-check` (no root), and imgforge-verify in a booted guest (root,
//! qemu-system-x86 and ovmf; TCG, 4 vCPUs): it fails naming the sysctl a
//! conflicting layer changed (that it passes on a fresh small image is
//! checked by tests/boot.rs on its boots of the shared image).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use common::qemu::boot_test;
use common::{BOOT, BUILD, IMGFORGE, heavy, prerequisites, text};

fn plan(args: &[&str]) -> serde_json::Value {
    let out = Command::new(IMGFORGE)
        .args(["build", "--plan", "--json"])
        .args(args)
        .env_remove("IMGFORGE_DATA_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn tokens(p: &serde_json::Value) -> Vec<String> {
    p["kernel_cmdline"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect()
}

const TUNING_TOKENS: &[&str] = &[
    "skew_tick=1",
    "nosoftlockup",
    "rcupdate.rcu_normal_after_boot=1",
    "intel_idle.max_cstate=1",
    "processor.max_cstate=1",
    "clocksource=tsc",
    "tsc=reliable",
    "transparent_hugepage=never",
    "audit=0",
];

#[test]
fn trading_is_the_default_profile_and_base_has_no_tuning() {
    let trading = plan(&["--size-class", "large"]);
    assert_eq!(trading["profile"]["name"], "trading");
    let t = tokens(&trading);
    for want in [
        "isolcpus=managed_irq,domain,8-N",
        "nohz_full=8-N",
        "rcu_nocbs=8-N",
        "irqaffinity=0-7",
    ]
    .iter()
    .chain(TUNING_TOKENS)
    {
        assert!(t.iter().any(|x| x == want), "{want} not in {t:?}");
    }
    let layers: Vec<&str> = trading["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    // The profile's layers, then the first-boot mode's.
    assert_eq!(
        layers,
        ["base", "tuning", "irqbalance-off", "first-boot-imgforge"]
    );
    assert_eq!(
        trading["profile"]["kernel_configs"],
        serde_json::json!(["cloud.config", "low-latency.config"])
    );
    let units = trading["first_boot_units"].to_string();
    assert!(units.contains("imgforge-verify.service"), "{units}");

    let base = plan(&["--profile", "base", "--size-class", "large"]);
    assert_eq!(base["profile"]["name"], "base");
    let b = tokens(&base);
    for token in &b {
        assert!(
            !TUNING_TOKENS.contains(&token.as_str())
                && !["isolcpus=", "nohz_full=", "rcu_nocbs=", "irqaffinity="]
                    .iter()
                    .any(|k| token.starts_with(k)),
            "tuning token {token} on the base profile's cmdline {b:?}"
        );
    }
    assert!(b.iter().any(|t| t.starts_with("root=UUID=")));
    let base_layers: Vec<&str> = base["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(base_layers, ["base", "first-boot-imgforge"]);
    assert_eq!(
        base["profile"]["kernel_configs"],
        serde_json::json!(["cloud.config"])
    );

    let irq = plan(&["--profile", "trading-irqbalance"]);
    assert!(
        irq["packages"]
            .as_array()
            .unwrap()
            .contains(&"irqbalance".into())
    );
    assert_ne!(irq["cache_key"], plan(&[])["cache_key"]);
    assert_eq!(tokens(&irq).len(), tokens(&plan(&[])).len());

    let out = Command::new(IMGFORGE)
        .args(["build", "--plan", "--profile", "fastest"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out);
    assert!(
        err.contains("unknown tuning profile `fastest`")
            && err.contains("trading, trading-irqbalance, base"),
        "{err}"
    );
}

/// A kernel config meeting every fragment, minus `drop`.
fn kernel_config(dir: &Path, drop: &str) -> PathBuf {
    let fragments = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernel-configs");
    let mut config = String::from("#\n# Linux/x86 6.1.0 Kernel Configuration\n#\n");
    for entry in std::fs::read_dir(fragments).unwrap().flatten() {
        for line in std::fs::read_to_string(entry.path()).unwrap().lines() {
            if line.starts_with("CONFIG_") && !line.starts_with(&format!("{drop}=")) {
                config.push_str(line);
                config.push('\n');
            }
        }
    }
    config.push_str(&format!("# {drop} is not set\n"));
    let path = dir.join(format!("config-without-{drop}"));
    std::fs::write(&path, config).unwrap();
    path
}

fn kernel_check(config: &Path, extra: &[&str]) -> Output {
    Command::new(IMGFORGE)
        .arg("kernel-check")
        .arg(config)
        .args(extra)
        .env_remove("IMGFORGE_DATA_DIR")
        .output()
        .unwrap()
}

#[test]
fn kernel_check_fails_without_no_hz_full_for_trading_only() {
    let dir = tempfile::tempdir().unwrap();
    let good = kernel_config(dir.path(), "CONFIG_NOTHING");
    let out = kernel_check(&good, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("ok      low-latency.config"));

    let no_hz = kernel_config(dir.path(), "CONFIG_NO_HZ_FULL");
    let out = kernel_check(&no_hz, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("MISSING low-latency.config: CONFIG_NO_HZ_FULL=y")
            && all.contains("does not meet profile trading"),
        "{all}"
    );
    // The untuned profile does not need it.
    let out = kernel_check(&no_hz, &["--profile", "base"]);
    assert!(out.status.success(), "{}", text(&out));

    let out = kernel_check(&no_hz, &["--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["passed"], false);
    assert_eq!(json["profile"], "trading");
    assert_eq!(
        json["fragments"][1]["missing"],
        serde_json::json!(["CONFIG_NO_HZ_FULL=y"])
    );

    let nvme = kernel_config(dir.path(), "CONFIG_BLK_DEV_NVME");
    let out = kernel_check(&nvme, &["--profile", "base"]);
    assert!(text(&out).contains("MISSING cloud.config: CONFIG_BLK_DEV_NVME=m"));

    let not_config = dir.path().join("notes.txt");
    std::fs::write(&not_config, "hello\n").unwrap();
    let out = kernel_check(&not_config, &[]);
    assert!(text(&out).contains("does not look like a kernel config"));
}

fn can_boot(test: &str) -> bool {
    prerequisites(test, &[BUILD, BOOT])
}

fn scratch() -> tempfile::TempDir {
    common::scratch("imgforge-tuning-")
}

fn build_small(dir: &Path, extra: &[&str]) -> PathBuf {
    build_class(dir, "small", extra)
}

fn build_class(dir: &Path, class: &str, extra: &[&str]) -> PathBuf {
    let image = dir.join(format!("{class}.raw"));
    let started = Instant::now();
    let out = Command::new(IMGFORGE)
        .args(["build", "--size-class", class, "-o"])
        .arg(&image)
        .args(extra)
        .env("TMPDIR", dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "build failed:\n{}", text(&out));
    eprintln!(
        "built {} in {:.0} s",
        image.display(),
        started.elapsed().as_secs_f64()
    );
    image
}

/// boot-test --firmware uefi --accel tcg --smp 4; the one result and the
/// output. A boot that never reached the report line (a TCG stall on this
/// shared machine, which is being fixed apart from this work) is tried once
/// more, and says so; a boot that reported is never retried.
fn boot_small(dir: &Path, image: &Path) -> (bool, serde_json::Value, String) {
    boot(dir, image, 4, 1024)
}

fn boot(dir: &Path, image: &Path, smp: u32, memory: u32) -> (bool, serde_json::Value, String) {
    let (smp, memory) = (smp.to_string(), format!("{memory}M"));
    for attempt in 1..=2 {
        let log = dir.join(format!("console-{attempt}.log"));
        let boot = boot_test(
            dir,
            image,
            &[
                "--firmware",
                "uefi",
                "--accel",
                "tcg",
                "--smp",
                &smp,
                "--memory",
                &memory,
                "--timeout",
                "600",
                "--log",
                log.to_str().unwrap(),
            ],
        );
        let result = boot.result().clone();
        if result["report"].is_null() && attempt == 1 {
            let console = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = console.lines().rev().take(15).collect();
            eprintln!(
                "no report; console tail (newest first):\n{}",
                tail.join("\n")
            );
            continue;
        }
        return (boot.ok, result, boot.output);
    }
    unreachable!("the second attempt returns")
}

// imgforge-verify passing in a small guest with 4 vCPUs (UEFI, TCG, 1 GiB:
// the configuration this file's boots use) is asserted by tests/boot.rs
// (`common::qemu::assert_verify_passed`) on the boots it makes of the same
// shared image anyway, instead of one more TCG boot here.

#[test]
fn verify_fails_naming_a_sysctl_a_layer_changed() {
    if !can_boot("verify_fails_naming_a_sysctl_a_layer_changed") {
        return;
    }
    let dir = scratch();
    // A later sysctl.d file wins over the tuning layer's vm.swappiness = 10.
    let layer = dir.path().join("conflict");
    std::fs::create_dir_all(layer.join("etc/sysctl.d")).unwrap();
    std::fs::write(
        layer.join("etc/sysctl.d/99-conflict.conf"),
        "vm.swappiness = 60\n",
    )
    .unwrap();
    let _one_guest = heavy();
    let image = build_small(dir.path(), &["--layer", layer.to_str().unwrap()]);
    let (passed, result, all) = boot_small(dir.path(), &image);
    assert!(
        !passed,
        "boot-test must fail when imgforge-verify fails:\n{all}"
    );
    let report = &result["report"];
    assert_eq!(report["verify"], "fail", "{report:#}");
    assert_eq!(
        report["verify_failures"], "sysctl vm.swappiness: expected 10, actual 60",
        "{report:#}"
    );
    let failed: Vec<&str> = result["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["imgforge-verify in the guest"], "{all}");
    assert!(all.contains("vm.swappiness"), "{all}");
}

/// imgforge-verify itself, run on this host against expectations rendered
/// for a class this machine cannot fit: it says so plainly, names every
/// check with expected and actual, and exits 1.
#[test]
fn verify_says_plainly_when_the_vcpu_count_is_outside_the_class() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("rootfs/tuning");
    let dir = tempfile::tempdir().unwrap();
    let template = std::fs::read_to_string(root.join("etc/imgforge/tuning.expect.tmpl")).unwrap();
    let mut expect = template;
    for (k, v) in [
        ("imgforge_version", "test"),
        ("profile", "trading"),
        ("size_class", "xlarge"),
        ("min_vcpus", "128"),
        ("max_vcpus", "192"),
        ("housekeeping_count", "16"),
        ("housekeeping_cpus", "0-15"),
        ("isolated_cpus", "16-N"),
        ("profile_cmdline", "nohz_full=16-N audit=0"),
    ] {
        expect = expect.replace(&format!("{{{{{k}}}}}"), v);
    }
    assert!(!expect.contains("{{"), "{expect}");
    let expect_path = dir.path().join("tuning.expect");
    std::fs::write(&expect_path, expect).unwrap();
    let verify = |args: &[&str]| {
        Command::new("bash")
            .arg(root.join("usr/local/bin/imgforge-verify"))
            .args(args)
            .env(
                "IMGFORGE_LIB",
                root.join("usr/local/libexec/imgforge/tuning-lib.sh"),
            )
            .env("IMGFORGE_EXPECT", &expect_path)
            .env("IMGFORGE_EXPECT_DIR", dir.path().join("none"))
            .env("IMGFORGE_RUN_DIR", dir.path().join("run"))
            .output()
            .unwrap()
    };
    let out = verify(&["--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(json["fits_class"], false);
    assert_eq!(json["passed"], false);
    assert_eq!(json["class_vcpus"], "128-192");
    let statement = json["statement"].as_str().unwrap();
    assert!(
        statement.contains("OUTSIDE size class xlarge (128-192 vCPUs)"),
        "{statement}"
    );
    let checks = json["checks"].as_array().unwrap();
    assert_eq!(checks[0]["name"], "vCPUs in size class xlarge");
    assert_eq!(checks[0]["ok"], false);
    for check in checks {
        for field in ["name", "expected", "actual"] {
            assert!(check[field].is_string(), "{check}");
        }
    }
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    for want in [
        "cmdline nohz_full=16-N",
        "isolated CPUs",
        "nohz_full CPUs",
        "transparent hugepages",
        "sysctl vm.swappiness",
        "IRQ affinity",
        "PID 1 Cpus_allowed_list",
        "unit imgforge-tuning.service",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(want)),
            "{want} not in {names:?}"
        );
    }
    let table = verify(&[]);
    assert_eq!(table.status.code(), Some(1));
    let table = text(&table);
    assert!(
        table.contains("FAIL  vCPUs in size class xlarge"),
        "{table}"
    );
    assert!(table.contains("OUTSIDE size class xlarge"), "{table}");
    assert!(verify(&["--bogus"]).status.code() == Some(2));
}

/// A medium image on 16 vCPUs: opt-in (`--ignored`), because under TCG on a
/// shared 2-core machine one manual such boot passed in 191 s while three
/// others (both attempts of this test's only run among them) panicked at
/// 0.03-0.05 s in the kernel's IO-APIC timer check (the host too slow to
/// deliver the timer), which boot-test only notices at its timeout.
#[test]
#[ignore = "a 16-vCPU TCG boot: minutes, and flaky on a loaded host; run with: cargo test --test tuning -- --ignored"]
fn verify_passes_in_a_medium_guest_with_16_vcpus() {
    if !can_boot("verify_passes_in_a_medium_guest_with_16_vcpus") {
        return;
    }
    let _one_guest = heavy();
    let dir = scratch();
    let image = build_class(dir.path(), "medium", &[]);
    let (passed, result, all) = boot(dir.path(), &image, 16, 2048);
    assert!(passed, "{all}");
    let report = &result["report"];
    assert_eq!(report["verify"], "pass", "{report:#}");
    assert_eq!(report["isolated"], "4-15");
    assert_eq!(report["nohz_full"], "4-15");
    assert!(
        report["cmdline"]
            .as_str()
            .unwrap()
            .contains("irqaffinity=0-3")
    );
}
