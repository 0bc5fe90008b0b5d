//! `imgforge build --plan`: everything a build would use, without root,
//! network or bootstrap; and the data it reads (built in, or --data-dir).

mod common;

use std::path::Path;
use std::process::Command;

use common::{IMGFORGE, is_root, text};

/// Runs `imgforge build --plan --json ARGS` as the unprivileged user
/// `nobody` when we are root (the plan must not need root).
fn plan(args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let mut command = if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", IMGFORGE]);
        c
    } else {
        Command::new(IMGFORGE)
    };
    command
        .args(["build", "--plan", "--json"])
        .args(args)
        .current_dir("/")
        .env("HOME", "/nonexistent")
        .env_remove("IMGFORGE_DATA_DIR");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("run imgforge");
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn arch_large_plan_resolves_without_root_or_network() {
    let p = plan(
        &[
            "--distro",
            "arch",
            "--size-class",
            "large",
            "--kernel",
            "lts",
        ],
        &[],
    );
    assert_eq!(p["distro"], "arch");
    assert_eq!(p["architecture"], "x86_64");
    let packages = strings(&p["packages"]);
    for wanted in [
        "base",
        "linux-lts",
        "mkinitcpio",
        "grub",
        "openssh",
        "sudo",
        "chrony",
    ] {
        assert!(
            packages.contains(&wanted.to_string()),
            "{wanted}: {packages:?}"
        );
    }
    assert!(!packages.contains(&"linux".to_string()), "{packages:?}");
    assert_eq!(p["admin_group"], "wheel");
    assert_eq!(p["default_user"], "arch");
    assert_eq!(
        strings(&p["sources"]["lines"]),
        ["Server = https://geo.mirror.pkgbuild.com/$repo/os/$arch"]
    );
    let cmdline = p["kernel_cmdline"].as_str().unwrap();
    assert!(
        cmdline.contains("isolcpus=managed_irq,domain,8-N"),
        "{cmdline}"
    );
    assert!(cmdline.contains("irqaffinity=0-7"), "{cmdline}");
    assert_eq!(p["grub_kernel"], "/boot/vmlinuz-linux-lts");
    assert_eq!(p["grub_initrd"], "/boot/initramfs-linux-lts.img");
    assert!(p["initramfs"].as_str().unwrap().contains("autodetect"));
    let layers: Vec<&str> = p["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        layers,
        [
            "base",
            "tuning",
            "irqbalance-off",
            "arch",
            "first-boot-imgforge"
        ]
    );
    assert_eq!(p["profile"]["name"], "trading");
    let units = strings(&p["first_boot_units"]);
    assert!(
        units.contains(&"imgforge-pacman-init.service".to_string()),
        "{units:?}"
    );
    assert!(
        units.contains(&"imgforge-imds-ssh-key.service".to_string()),
        "{units:?}"
    );
    let parts = p["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    assert_eq!(
        parts[0]["type_guid"],
        "21686148-6449-6E6F-744E-656564454649"
    );
    assert_eq!(p["data_dir"], "built into imgforge");
    assert_eq!(p["cache_key"].as_str().unwrap().len(), 64);
}

#[test]
fn the_cache_key_follows_what_decides_the_tree() {
    let key = |args: &[&str]| plan(args, &[])["cache_key"].as_str().unwrap().to_string();
    let base = key(&["--distro", "arch"]);
    assert_eq!(
        base,
        key(&["--distro", "arch", "--size-class", "xlarge"]),
        "class is not in the tree"
    );
    assert_ne!(base, key(&["--distro", "arch", "--kernel", "lts"]));
    assert_ne!(base, key(&["--distro", "arch", "--packages", "htop"]));
    assert_ne!(
        base,
        key(&[
            "--distro",
            "arch",
            "--mirror",
            "http://127.0.0.1:9/$repo/os/$arch"
        ])
    );
    let debian = plan(
        &[
            "--mirror",
            "http://127.0.0.1:9/debian",
            "--release",
            "trixie",
        ],
        &[],
    );
    assert_eq!(
        strings(&debian["sources"]["lines"]),
        [
            "deb http://127.0.0.1:9/debian trixie main",
            "deb http://127.0.0.1:9/debian trixie-updates main",
            "deb http://deb.debian.org/debian-security trixie-security main"
        ]
    );
    assert_eq!(debian["admin_group"], "sudo");
    assert_eq!(debian["grub_kernel"], "/vmlinuz");
}

fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn data_dir_overrides_the_built_in_data_and_a_copied_binary_needs_no_source_tree() {
    let dir = tempfile::Builder::new()
        .prefix("imgforge-data-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR"));
    for folder in ["rootfs", "boot", "kernel-configs"] {
        copy_tree(&source.join(folder), dir.path());
    }
    let toml = dir.path().join("rootfs/distros/arch.toml");
    let original = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, original.replace("\"less\",", "\"less\", \"htop\",")).unwrap();
    // Readable by `nobody`.
    let _ = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir.path())
        .status();
    let _ = Command::new("chmod").arg("a+rx").arg(dir.path()).status();
    let data = dir.path().to_str().unwrap();
    for p in [
        plan(&["--distro", "arch", "--data-dir", data], &[]),
        plan(&["--distro", "arch"], &[("IMGFORGE_DATA_DIR", data)]),
    ] {
        assert!(strings(&p["packages"]).contains(&"htop".to_string()));
        assert_eq!(p["data_dir"], data);
    }
    let built_in = plan(&["--distro", "arch"], &[]);
    assert!(!strings(&built_in["packages"]).contains(&"htop".to_string()));

    // A copy of the binary, far from the source tree, still has its data.
    let copy = dir.path().join("imgforge");
    // Copied by cp, not std::fs::copy: a file this process held open for
    // writing can be inherited by a child another test thread forks before
    // it execs, and exec'ing the copy then fails with "Text file busy".
    let copied = Command::new("cp")
        .arg(IMGFORGE)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(copied.success(), "cp {IMGFORGE} {}", copy.display());
    let out = Command::new(&copy)
        .args(["build", "--plan", "--distro", "debian"])
        .current_dir("/")
        .env_remove("IMGFORGE_DATA_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("built into imgforge"), "{}", text(&out));

    let not_data = Command::new(IMGFORGE)
        .args(["build", "--plan", "--data-dir", "/var"])
        .output()
        .unwrap();
    assert!(!not_data.status.success());
    assert!(
        text(&not_data).contains("has no rootfs/ folder"),
        "{}",
        text(&not_data)
    );
}

#[test]
fn arm64_plan_is_graviton_uefi_only_and_x86_stays_as_it_was() {
    let p = plan(&["--arch", "arm64", "--size-class", "medium"], &[]);
    assert_eq!(p["distro"], "debian");
    assert_eq!(p["architecture"], "arm64");
    let pf = &p["platform"];
    assert_eq!(pf["distro_architecture"], "arm64");
    assert_eq!(pf["ec2_architecture"], "arm64");
    assert_eq!(pf["ec2_boot_mode"], "uefi");
    assert_eq!(strings(&pf["grub_targets"]), ["arm64-efi"]);
    assert_eq!(strings(&pf["efi_files"]), ["EFI/BOOT/BOOTAA64.EFI"]);
    assert!(
        pf["bootstrap"].as_str().unwrap().contains("qemu-aarch64"),
        "{pf}"
    );
    assert!(
        pf["qemu"]
            .as_str()
            .unwrap()
            .starts_with("qemu-system-aarch64 -M virt")
    );
    assert!(pf["uefi_firmware"].as_str().unwrap().contains("AAVMF"));
    assert_eq!(pf["instance_sizes"], "4xlarge-8xlarge");
    let packages = strings(&p["packages"]);
    for wanted in ["linux-image-cloud-arm64", "grub-efi-arm64-bin"] {
        assert!(packages.contains(&wanted.to_string()), "{packages:?}");
    }
    for unwanted in [
        "grub-pc-bin",
        "grub-efi-amd64-bin",
        "linux-image-cloud-amd64",
    ] {
        assert!(!packages.contains(&unwanted.to_string()), "{packages:?}");
    }
    // UEFI only: no BIOS boot partition; the root is arm64's type.
    let partitions: Vec<(&str, &str)> = p["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["type_guid"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        partitions,
        [
            ("esp", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
            ("root", "B921B045-1DF0-41C3-AF44-4C6F280D3FAE")
        ]
    );
    let cmdline = p["kernel_cmdline"].as_str().unwrap();
    assert!(
        cmdline.contains(" console=ttyAMA0,115200n8 console=ttyS0,115200n8 "),
        "both serial ports, EC2's last: {cmdline}"
    );
    assert!(cmdline.contains("nohz_full=4-N"), "{cmdline}");
    assert!(!cmdline.contains("tsc"), "{cmdline}");
    assert!(strings(&pf["cmdline_left_out"]).contains(&"clocksource=tsc".to_string()));
    // A different tree from x86_64's.
    let x86 = plan(&["--size-class", "medium"], &[]);
    assert_ne!(x86["cache_key"], p["cache_key"]);
    assert_eq!(x86["architecture"], "x86_64");
    assert_eq!(x86["platform"]["distro_architecture"], "amd64");
    assert_eq!(x86["platform"]["ec2_boot_mode"], "uefi-preferred");
    assert_eq!(x86["partitions"].as_array().unwrap().len(), 3);
    let x86_cmdline = x86["kernel_cmdline"].as_str().unwrap();
    assert!(
        x86_cmdline.contains(" ro console=tty0 console=ttyS0,115200n8 nvme_core"),
        "{x86_cmdline}"
    );
    assert!(
        x86_cmdline.contains("clocksource=tsc tsc=reliable"),
        "{x86_cmdline}"
    );
}

#[test]
fn arch_linux_for_arm64_and_unknown_architectures_are_refused_with_the_choices() {
    for (args, wanted) in [
        (
            &["--distro", "arch", "--arch", "arm64"][..],
            "arch cannot be built for arm64",
        ),
        (&["--arch", "riscv64"][..], "choose one of: arm64, x86_64"),
    ] {
        let out = Command::new(IMGFORGE)
            .args(["build", "--plan"])
            .args(args)
            .env_remove("IMGFORGE_DATA_DIR")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(text(&out).contains(wanted), "{args:?}: {}", text(&out));
    }
}

/// Runs `imgforge build --plan ARGS` expecting bad input: exit 2, the
/// message on stderr.
fn plan_refused(args: &[&str]) -> String {
    let out = Command::new(IMGFORGE)
        .args(["build", "--plan"])
        .args(args)
        .output()
        .expect("run imgforge");
    assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn debian_sources_repositories_package_files_and_kernel_args_in_the_plan() {
    // Files the plan (run as nobody) can read.
    let dir = common::scratch("imgforge-plan-sources");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let key = dir.path().join("ci.asc");
    std::fs::write(&key, "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nx\n").unwrap();
    let deb = dir.path().join("tool_1.0_all.deb");
    std::fs::write(&deb, "not read by the plan beyond its digest").unwrap();
    let repository = format!(
        "deb [arch=amd64 signed-by={}] https://apt.example/ci stable main",
        key.display()
    );
    let p = plan(
        &[
            "--mirror",
            "http://mirror.example/debian",
            "--repository",
            &repository,
            "--package-file",
            deb.to_str().unwrap(),
            "--kernel-arg",
            "mitigations=off",
            "--kernel-arg",
            "hugepages=64",
            "--script",
            key.to_str().unwrap(),
            "--ansible",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(
        strings(&p["sources"]["lines"]),
        [
            "deb http://mirror.example/debian bookworm main",
            "deb http://mirror.example/debian bookworm-updates main",
            "deb http://deb.debian.org/debian-security bookworm-security main",
            "deb [arch=amd64 signed-by=/etc/apt/keyrings/imgforge-repository-1.asc] https://apt.example/ci stable main",
        ]
    );
    let entries = p["sources"]["entries"].as_array().unwrap();
    assert_eq!(entries[3]["from"], "--repository");
    assert_eq!(p["sources"]["keys"][0]["host"], key.to_str().unwrap());
    assert_eq!(p["package_files"][0][0], deb.to_str().unwrap());
    assert_eq!(p["provisioning"][0]["kind"], "ansible");
    assert_eq!(p["provisioning"][1]["kind"], "script");
    assert!(
        p["provisioning"][1]["network"]
            .as_str()
            .unwrap()
            .contains("outside the package manager")
    );
    assert!(strings(&p["packages"]).contains(&"python3".to_string()));
    let cmdline = p["kernel_cmdline"].as_str().unwrap();
    assert!(
        cmdline.ends_with(" mitigations=off hugepages=64"),
        "{cmdline}"
    );
    // The key's bytes decide the tree, like the package file's.
    let base = p["cache_key"].as_str().unwrap().to_string();
    std::fs::write(&key, "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\ny\n").unwrap();
    let key_changed = plan(
        &[
            "--mirror",
            "http://mirror.example/debian",
            "--repository",
            &repository,
            "--package-file",
            deb.to_str().unwrap(),
        ],
        &[],
    );
    assert_ne!(key_changed["cache_key"].as_str().unwrap(), base);

    let security = plan(
        &[
            "--mirror",
            "http://m/debian",
            "--security-mirror",
            "http://m/debian-security",
            "--release",
            "trixie",
        ],
        &[],
    );
    assert_eq!(
        strings(&security["sources"]["lines"])[2],
        "deb http://m/debian-security trixie-security main"
    );

    // The host's own sources: each line says where it came from, and only
    // Debian's archive is taken (this host also lists third parties).
    let host = plan(&[], &[]);
    for entry in host["sources"]["entries"].as_array().unwrap() {
        assert!(
            entry["from"].as_str().unwrap().starts_with("/etc/apt/"),
            "{entry}"
        );
    }
    let lines = strings(&host["sources"]["lines"]);
    assert!(lines.iter().any(|l| l.contains("-security")), "{lines:?}");

    let missing = plan_refused(&[
        "--repository",
        "deb [signed-by=/nonexistent/ci.gpg] https://apt.example/ci stable main",
    ]);
    assert!(missing.contains("/nonexistent/ci.gpg"), "{missing}");
    let unsigned = plan_refused(&["--repository", "deb https://apt.example/ci stable main"]);
    assert!(unsigned.contains("unsigned"), "{unsigned}");
    let not_deb = plan_refused(&["--package-file", key.to_str().unwrap()]);
    assert!(not_deb.contains(".deb"), "{not_deb}");
    let no_playbook = plan_refused(&["--ansible", "/nonexistent/tune_os.yaml"]);
    assert!(no_playbook.contains("no such playbook"), "{no_playbook}");
    let bad_var = plan_refused(&["--ansible-var", "1x=y"]);
    assert!(
        bad_var.contains("not an Ansible variable name"),
        "{bad_var}"
    );
    let no_script = plan_refused(&["--script", "/nonexistent/setup.sh"]);
    assert!(no_script.contains("/nonexistent/setup.sh"), "{no_script}");
    let bad_arg = plan_refused(&["--kernel-arg", "a b"]);
    assert!(bad_arg.contains("--kernel-arg"), "{bad_arg}");
}
