//! The user's own software on the image: a signed `file://` apt repository
//! made here (dpkg-deb, dpkg-scanpackages, a Release clearsigned with gpg)
//! used through `--repository`, a local `.deb` through `--package-file`,
//! `--kernel-arg`, and a `--script` that installs a package from the mirror
//! and records what it saw, an instance-style Ansible playbook (apt, sysctl,
//! lineinfile, template, copy, systemd); all checked in one built image with
//! debugfs, then the same build with a failing playbook.
//! Then the failures: a failing script (its name, status and last lines;
//! exit 1, no image, nothing mounted or running), a missing key file and an
//! unsigned repository (exit 2 before any work). Needs root, mmdebstrap,
//! gpg, dpkg-deb, dpkg-scanpackages, debugfs and the host's mirror.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::gpg::GpgHome;
use common::{BUILD, IMGFORGE, Need, heavy, prerequisites, run_program as run, text};

const NEEDS: &[Need] = &[
    Need::Tool("gpg"),
    Need::Tool("dpkg-deb"),
    Need::Tool("dpkg-scanpackages"),
    Need::Tool("debugfs"),
];

fn ok(out: Output, what: &str) -> Output {
    assert!(out.status.success(), "{what}: {}", text(&out));
    out
}

/// A package of one marker file, `Architecture: all`.
fn make_deb(dir: &Path, name: &str, depends: Option<&str>) -> PathBuf {
    let root = dir.join(format!("{name}-root"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(root.join(format!("usr/share/{name}"))).unwrap();
    std::fs::write(root.join(format!("usr/share/{name}/marker")), name).unwrap();
    let depends = depends
        .map(|d| format!("Depends: {d}\n"))
        .unwrap_or_default();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: imgforge tests \
             <tests@imgforge.test>\n{depends}Description: imgforge test package\n"
        ),
    )
    .unwrap();
    let deb = dir.join(format!("{name}_1.0_all.deb"));
    // The same bytes every run (they key the cached tree): fixed times.
    ok(
        run(
            "find",
            &[
                root.to_str().unwrap(),
                "-exec",
                "touch",
                "-h",
                "-d",
                "@1700000000",
                "{}",
                "+",
            ],
        ),
        "touch",
    );
    let built = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&deb)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    ok(built, "dpkg-deb");
    deb
}

/// The test repository's signing key, made once per machine and kept in
/// /var/tmp: the key's bytes are part of the tree's cache key, so a kept
/// key lets later runs reuse the bootstrapped tree.
fn signing_home() -> GpgHome {
    let home = PathBuf::from("/var/tmp/imgforge-test-apt-signing-key");
    if home.join("done").exists() {
        return GpgHome::open(&home);
    }
    let fresh = common::scratch("imgforge-test-apt-signing-key-");
    let fresh_home = fresh.path().to_path_buf();
    let gnupg = GpgHome::create(&fresh_home);
    gnupg.generate_key(
        "imgforge test repository <repo@imgforge.test>",
        "sign",
        "never",
    );
    gnupg.stop_agent();
    std::fs::write(fresh_home.join("done"), "").unwrap();
    // Another test binary may have made one meanwhile: the first one stays.
    if std::fs::rename(fresh.keep(), &home).is_err() {
        let _ = std::fs::remove_dir_all(&fresh_home);
    }
    GpgHome::open(&home)
}

/// A flat repository holding `deb`, its Release clearsigned with the test
/// key: the key file (in `dir`) and the `--repository` line.
fn signed_repository(dir: &Path, deb: &Path) -> (PathBuf, String) {
    let gnupg = signing_home();
    let key = dir.join("repo-key.gpg");
    std::fs::write(&key, gnupg.run(&["--export"])).unwrap();
    // At a fixed path: the source line (and so the tree's key) repeats
    // between runs, which then reuse the bootstrapped tree.
    let repo = PathBuf::from("/var/tmp/imgforge-test-apt-repository");
    let _ = std::fs::remove_dir_all(&repo);
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::copy(deb, repo.join(deb.file_name().unwrap())).unwrap();
    let scan = Command::new("dpkg-scanpackages")
        .args(["--multiversion", "."])
        .current_dir(&repo)
        .output()
        .unwrap();
    let packages = ok(scan, "dpkg-scanpackages").stdout;
    std::fs::write(repo.join("Packages"), &packages).unwrap();
    let date = text(&ok(
        run("date", &["-u", "+%a, %d %b %Y %H:%M:%S UTC"]),
        "date",
    ));
    let sha = common::sha256_file(&repo.join("Packages"));
    std::fs::write(
        repo.join("Release"),
        format!(
            "Origin: imgforge-test\nLabel: imgforge-test\nDate: {}\nSHA256:\n {sha} {} Packages\n",
            date.trim(),
            packages.len()
        ),
    )
    .unwrap();
    let release = repo.join("Release");
    let in_release = repo.join("InRelease");
    gnupg.run(&[
        "--yes",
        "--clearsign",
        "--output",
        in_release.to_str().unwrap(),
        release.to_str().unwrap(),
    ]);
    gnupg.stop_agent();
    let line = format!(
        "deb [signed-by={}] file://{} ./",
        key.display(),
        repo.display()
    );
    (key, line)
}

fn root_partition_offset(manifest: &serde_json::Value) -> u64 {
    let root = manifest["disk"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["filesystem"] == "ext4")
        .unwrap();
    root["first_lba"].as_u64().unwrap() * 512
}

fn debugfs_command(image: &Path, manifest: &serde_json::Value, command: &str) -> String {
    let target = format!(
        "{}?offset={}",
        image.display(),
        root_partition_offset(manifest)
    );
    String::from_utf8_lossy(&run("debugfs", &["-R", command, &target]).stdout).into_owned()
}

/// Reads a file out of the image's ext4 root with debugfs (no mount).
fn image_file(image: &Path, manifest: &serde_json::Value, path: &str) -> String {
    let offset = root_partition_offset(manifest);
    let target = format!("{}?offset={offset}", image.display());
    let out = run("debugfs", &["-R", &format!("cat {path}"), &target]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mounts_under(dir: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|m| m.starts_with(dir))
        .collect()
}

fn processes_running(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).replace('\0', " ").trim() == needle)
        .count()
}

/// A playbook written for an instance, in the style of the trading teams'
/// tune_os.yaml, with a template and a file beside it.
fn tune_os_playbook(dir: &Path) -> PathBuf {
    let play = dir.join("ansible");
    std::fs::create_dir_all(play.join("templates")).unwrap();
    std::fs::create_dir_all(play.join("files")).unwrap();
    std::fs::write(
        play.join("templates/engine.conf.j2"),
        "ring={{ ring_size }} class={{ imgforge_size_class }} arch={{ imgforge_architecture }}\n",
    )
    .unwrap();
    std::fs::write(
        play.join("files/engine.service"),
        "[Unit]\nDescription=engine\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    let playbook = play.join("tune_os.yaml");
    std::fs::write(&playbook, TUNE_OS).unwrap();
    playbook
}

const TUNE_OS: &str = r#"- hosts: all
  vars:
    ring_size: 4096
  tasks:
    - name: packages
      ansible.builtin.apt:
        name: [hello]
        state: present
    - name: kernel settings
      ansible.posix.sysctl:
        name: vm.swappiness
        value: "7"
        sysctl_file: /etc/sysctl.d/90-trading.conf
    - name: limits
      ansible.builtin.lineinfile:
        path: /etc/security/limits.conf
        line: "* - memlock unlimited"
    - name: engine configuration
      ansible.builtin.template:
        src: templates/engine.conf.j2
        dest: /etc/engine.conf
    - name: engine unit
      ansible.builtin.copy:
        src: files/engine.service
        dest: /etc/systemd/system/engine.service
    - name: engine enabled
      ansible.builtin.systemd:
        name: engine.service
        enabled: true
    - name: what the playbook saw
      ansible.builtin.copy:
        dest: /root/ansible-facts
        content: "{{ ansible_distribution }} {{ ansible_distribution_release }} {{ imgforge_kernel_version }} {{ imgforge_release }} {{ team }}\n"
"#;

const SCRIPT: &str = r#"#!/bin/sh
set -e
apt-get install -y --no-install-recommends tree
uname -r > /root/provision-uname
env | grep '^IMGFORGE_' | sort > /root/provision-env
echo 'vm.swappiness = 7' > /etc/sysctl.d/90-imgforge-test.conf
sysctl -p /etc/sysctl.d/90-imgforge-test.conf
sysctl -w vm.swappiness=7
modprobe dummy
systemctl start ssh.service
if echo 7 > /proc/sys/vm/swappiness 2>/dev/null; then echo writable; else echo read-only; fi > /root/provision-proc-sys
[ -x /usr/sbin/policy-rc.d ] && echo present > /root/provision-policy
cat /usr/share/imgforge-repo-hello/marker > /root/provision-repo
getent hosts deb.debian.org >/dev/null && echo resolved > /root/provision-dns
date +%s%N > /root/provision-stamp
sleep 7777 &
"#;

#[test]
fn repository_package_file_kernel_arg_playbook_and_script_in_one_build() {
    if !prerequisites(
        "repository_package_file_kernel_arg_playbook_and_script_in_one_build",
        &[BUILD, NEEDS, &[Need::Tool("ansible-playbook")]],
    ) {
        return;
    }
    let _heavy = heavy();
    let dir = common::scratch("imgforge-provision-");
    let repo_deb = make_deb(dir.path(), "imgforge-repo-hello", None);
    let local_deb = make_deb(dir.path(), "imgforge-local-tool", Some("jq"));
    let (key, repository) = signed_repository(dir.path(), &repo_deb);
    let script = dir.path().join("toolchain.sh");
    // A new script every run: the steps run (the bootstrapped tree may come
    // from an earlier run's cache, the provisioned one must not).
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::fs::write(&script, format!("{SCRIPT}# run {nonce}\n")).unwrap();
    let playbook = tune_os_playbook(dir.path());
    let swappiness = std::fs::read_to_string("/proc/sys/vm/swappiness").unwrap();
    let image = dir.path().join("provisioned.raw");
    let started = std::time::Instant::now();
    let out = Command::new(IMGFORGE)
        .args(["build", "--json", "--repository", &repository])
        .args(["--packages", "imgforge-repo-hello", "--package-file"])
        .arg(&local_deb)
        .args(["--kernel-arg", "imgforge.test=1", "--script"])
        .arg(&script)
        .arg("--ansible")
        .arg(&playbook)
        .args(["--ansible-var", "team=trading"])
        .arg("-o")
        .arg(&image)
        // The work directory (and any mount in it) under the test's folder.
        .env("TMPDIR", dir.path())
        .output()
        .unwrap();
    eprintln!(
        "provisioned build: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string("/proc/sys/vm/swappiness").unwrap(),
        swappiness,
        "the host's kernel settings changed"
    );
    assert_eq!(
        processes_running("sleep 7777"),
        0,
        "a script's process survived"
    );
    assert!(mounts_under(dir.path().to_str().unwrap()).is_empty());

    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}.json", image.display())).unwrap(),
    )
    .unwrap();
    let kernel = manifest["kernel_version"].as_str().unwrap();
    let installed: Vec<&str> = manifest["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in [
        "imgforge-repo-hello",
        "imgforge-local-tool",
        "jq",
        "tree",
        "python3",
        "hello",
    ] {
        assert!(
            installed.contains(&name),
            "{name} not installed: {installed:?}"
        );
    }
    let played = &manifest["provisioning"][0];
    assert_eq!(played["kind"], "ansible");
    assert!(
        played["requires"].to_string().contains("python3"),
        "{played}"
    );
    assert!(
        played["packages_added"].to_string().contains("\"hello="),
        "{played}"
    );
    let step = &manifest["provisioning"][1];
    assert_eq!(step["kind"], "script");
    assert_eq!(step["sha256"], common::sha256_file(&script));
    let added = step["packages_added"].to_string();
    assert!(added.contains("\"tree="), "{added}");
    assert!(
        !added.contains("jq="),
        "jq came with the bootstrap: {added}"
    );
    assert!(
        manifest["kernel_cmdline"]
            .as_str()
            .unwrap()
            .ends_with(" imgforge.test=1")
    );

    let file = |path: &str| image_file(&image, &manifest, path);
    let stamp: u128 = file("/root/provision-stamp").trim().parse().unwrap();
    assert!(stamp > nonce, "the script did not run in this build");
    assert_eq!(file("/root/provision-uname").trim(), kernel);
    let uname = text(&run("uname", &["-r"]));
    assert_ne!(uname.trim(), kernel, "the host's kernel would not tell");
    let env = file("/root/provision-env");
    for wanted in [
        "IMGFORGE_DISTRO=debian".to_string(),
        "IMGFORGE_RELEASE=bookworm".into(),
        "IMGFORGE_ARCH=x86_64".into(),
        "IMGFORGE_SIZE_CLASS=small".into(),
        format!("IMGFORGE_KERNEL_VERSION={kernel}"),
    ] {
        assert!(env.contains(&wanted), "{wanted}: {env}");
    }
    assert_eq!(file("/root/provision-proc-sys").trim(), "read-only");
    assert_eq!(file("/root/provision-policy").trim(), "present");
    assert_eq!(file("/root/provision-repo").trim(), "imgforge-repo-hello");
    assert_eq!(file("/root/provision-dns").trim(), "resolved");
    assert!(file("/etc/sysctl.d/90-imgforge-test.conf").contains("vm.swappiness = 7"));
    assert!(file("/usr/share/imgforge-local-tool/marker").contains("imgforge-local-tool"));
    // The playbook's effects, with the image's facts and imgforge's variables.
    assert_eq!(
        file("/root/ansible-facts").trim(),
        format!("Debian bookworm {kernel} bookworm trading")
    );
    assert!(file("/etc/sysctl.d/90-trading.conf").contains("vm.swappiness=7"));
    assert!(file("/etc/security/limits.conf").contains("* - memlock unlimited"));
    assert_eq!(
        file("/etc/engine.conf").trim(),
        "ring=4096 class=small arch=x86_64"
    );
    let listing = debugfs_command(
        &image,
        &manifest,
        "ls -l /etc/systemd/system/multi-user.target.wants",
    );
    assert!(listing.contains("engine.service"), "{listing}");
    // Nothing of the machinery stays; the repository's key does.
    assert_eq!(file("/usr/sbin/policy-rc.d"), "");
    assert_eq!(file("/etc/apt/apt.conf.d/00imgforge-provision"), "");
    assert_eq!(file("/etc/resolv.conf.imgforge-saved"), "");
    let sources = file("/etc/apt/sources.list");
    assert!(
        sources.contains("deb [signed-by=/etc/apt/keyrings/imgforge-repository-1.gpg] file://"),
        "{sources}"
    );
    assert!(sources.contains("bookworm-security"), "{sources}");
    let copied = dir.path().join("key-from-image");
    let root_offset = root_partition_offset(&manifest);
    let dump = format!(
        "dump /etc/apt/keyrings/imgforge-repository-1.gpg {}",
        copied.display()
    );
    run(
        "debugfs",
        &[
            "-R",
            &dump,
            &format!("{}?offset={root_offset}", image.display()),
        ],
    );
    assert_eq!(
        std::fs::read(&copied).unwrap(),
        std::fs::read(&key).unwrap()
    );

    // The same inputs again (the same seed): the provisioned tree comes
    // from the cache, no step runs again.
    let again = dir.path().join("again.raw");
    let started = std::time::Instant::now();
    let out = Command::new(IMGFORGE)
        .args([
            "build",
            "--json",
            "--seed",
            "provisioned",
            "--repository",
            &repository,
        ])
        .args(["--packages", "imgforge-repo-hello", "--package-file"])
        .arg(&local_deb)
        .args(["--kernel-arg", "imgforge.test=1", "--script"])
        .arg(&script)
        .arg("--ansible")
        .arg(&playbook)
        .args(["--ansible-var", "team=trading"])
        .arg("-o")
        .arg(&again)
        .env("TMPDIR", dir.path())
        .output()
        .unwrap();
    eprintln!(
        "identical rebuild: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert!(out.status.success(), "{}", text(&out));
    let again_manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}.json", again.display())).unwrap(),
    )
    .unwrap();
    assert_eq!(
        image_file(&again, &again_manifest, "/root/provision-stamp"),
        file("/root/provision-stamp"),
        "the script ran again"
    );
    assert_eq!(again_manifest["provisioning"], manifest["provisioning"]);
    std::fs::remove_file(&again).unwrap();

    // The same image with a playbook that fails: the cached tree, then the
    // failure named, exit 1, no image, nothing left.
    let failing = dir.path().join("failing");
    std::fs::create_dir_all(&failing).unwrap();
    let broken = failing.join("broken.yaml");
    std::fs::write(
        &broken,
        "- hosts: all\n  tasks:\n    - name: the engine's build\n      ansible.builtin.command: /bin/sh -c 'echo engine build broke; exit 4'\n",
    )
    .unwrap();
    let never = dir.path().join("never.raw");
    let started = std::time::Instant::now();
    let out = Command::new(IMGFORGE)
        .args(["build", "--repository", &repository])
        .args(["--packages", "imgforge-repo-hello", "--package-file"])
        .arg(&local_deb)
        .arg("--ansible")
        .arg(&broken)
        .arg("-o")
        .arg(&never)
        .env("TMPDIR", &failing)
        .output()
        .unwrap();
    eprintln!("failing playbook: {:.0} s", started.elapsed().as_secs_f64());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr.contains(&format!("playbook {} failed", broken.display())),
        "{stderr}"
    );
    assert!(stderr.contains("engine build broke"), "{stderr}");
    assert!(!never.exists());
    assert!(mounts_under(failing.to_str().unwrap()).is_empty());
    let left: Vec<_> = std::fs::read_dir(&failing)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left,
        [std::ffi::OsString::from("broken.yaml")],
        "work directory left"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/vm/swappiness").unwrap(),
        swappiness
    );
}

#[test]
fn a_failing_script_fails_the_build_naming_it_and_leaves_nothing() {
    if !prerequisites(
        "a_failing_script_fails_the_build_naming_it_and_leaves_nothing",
        &[BUILD],
    ) {
        return;
    }
    let _heavy = heavy();
    let dir = common::scratch("imgforge-provision-fail-");
    let script = dir.path().join("broken.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho preparing the toolchain\nsleep 7778 &\necho 'cannot find zig-0.99' >&2\nexit 3\n",
    )
    .unwrap();
    let image = dir.path().join("never.raw");
    let out = Command::new(IMGFORGE)
        .args(["build", "--script"])
        .arg(&script)
        .arg("-o")
        .arg(&image)
        .env("TMPDIR", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr.contains(&script.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("exit status: 3") || stderr.contains("status 3"),
        "{stderr}"
    );
    assert!(stderr.contains("cannot find zig-0.99"), "{stderr}");
    assert!(stderr.contains("preparing the toolchain"), "{stderr}");
    assert!(!image.exists());
    assert!(!Path::new(&format!("{}.json", image.display())).exists());
    assert_eq!(processes_running("sleep 7778"), 0);
    assert!(mounts_under(dir.path().to_str().unwrap()).is_empty());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left,
        [std::ffi::OsString::from("broken.sh")],
        "work directory left"
    );

    // Bad input, before any work: exit 2.
    let missing = Command::new(IMGFORGE)
        .args(["build", "--repository"])
        .arg("deb [signed-by=/nonexistent/key.gpg] file:///srv/repo ./")
        .arg("-o")
        .arg(&image)
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(text(&missing).contains("/nonexistent/key.gpg"));
    let unsigned = Command::new(IMGFORGE)
        .args(["build", "--repository", "deb file:///srv/repo ./", "-o"])
        .arg(&image)
        .output()
        .unwrap();
    assert_eq!(unsigned.status.code(), Some(2), "{}", text(&unsigned));
    assert!(text(&unsigned).contains("unsigned"));
    let no_script = Command::new(IMGFORGE)
        .args(["build", "--script", "/nonexistent/setup.sh", "-o"])
        .arg(&image)
        .output()
        .unwrap();
    assert_eq!(no_script.status.code(), Some(2), "{}", text(&no_script));
    assert!(!image.exists());
}

#[test]
fn ctrl_c_during_a_script_stops_the_build_and_leaves_nothing() {
    if !prerequisites(
        "ctrl_c_during_a_script_stops_the_build_and_leaves_nothing",
        &[BUILD],
    ) {
        return;
    }
    let _heavy = heavy();
    let dir = common::scratch("imgforge-provision-ctrl-c-");
    let logs = common::scratch("imgforge-provision-ctrl-c-log-");
    let script = dir.path().join("slow.sh");
    std::fs::write(&script, "#!/bin/sh\necho compiling\nsleep 7779\n").unwrap();
    let image = dir.path().join("never.raw");
    let stderr_path = logs.path().join("stderr");
    let mut build = Command::new(IMGFORGE)
        .args(["build", "--script"])
        .arg(&script)
        .arg("-o")
        .arg(&image)
        .env("TMPDIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    // Ctrl-C once the script runs (a cold bootstrap comes first).
    let started = std::time::Instant::now();
    while processes_running("sleep 7779") == 0 {
        assert!(
            build.try_wait().unwrap().is_none(),
            "the build ended before its script ran: {}",
            std::fs::read_to_string(&stderr_path).unwrap()
        );
        assert!(started.elapsed().as_secs() < 900, "the script never ran");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let pid = nix::unistd::Pid::from_raw(build.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let interrupted = std::time::Instant::now();
    let status = loop {
        if let Some(status) = build.try_wait().unwrap() {
            break status;
        }
        assert!(
            interrupted.elapsed().as_secs() < 120,
            "the build did not stop within 120 s of Ctrl-C"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(processes_running("sleep 7779"), 0, "the script's child");
    assert!(mounts_under(dir.path().to_str().unwrap()).is_empty());
    assert!(!image.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left,
        [std::ffi::OsString::from("slow.sh")],
        "work directory left"
    );
}
