//! Same inputs, same image: real builds of the small Debian image (from the
//! tree cache when it is warm; a first run bootstraps), compared with
//! sha256sum, sgdisk and blkid as well as `imgforge diff`, against the run's
//! shared Debian small image (tests/common/image.rs). Needs root, like the
//! build.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::image::NAME;
use common::{IMGFORGE, heavy, run_program as run, text};
use serde_json::Value;

fn scratch() -> tempfile::TempDir {
    common::scratch("imgforge-repro-")
}

/// `imgforge build -o DIR/NAME ARGS --json`; returns the image's path and
/// the build summary.
fn build(dir: &Path, name: &str, extra: &[&str]) -> (PathBuf, Value) {
    let image = dir.join(name);
    let mut args = vec!["build", "-o", image.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let out = run(IMGFORGE, &args);
    assert!(out.status.success(), "imgforge build: {}", text(&out));
    (image, serde_json::from_slice(&out.stdout).unwrap())
}

fn sha256sum(path: &Path) -> String {
    let out = run("sha256sum", &[path.to_str().unwrap()]);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The image with the default seed (`debian-small`, from its name): the
/// run's shared Debian small image, or (when IMGFORGE_TEST_IMAGE gave one
/// without its build summary) one built here.
fn base() -> (Option<tempfile::TempDir>, PathBuf, Value) {
    let shared = common::image::debian_small();
    if !shared.summary.is_null() {
        return (None, shared.path.clone(), shared.summary.clone());
    }
    let dir = scratch();
    let (image, summary) = build(dir.path(), NAME, &[]);
    (Some(dir), image, summary)
}

fn diff_json(a: &Path, b: &Path) -> Value {
    let out = run(
        IMGFORGE,
        &["diff", a.to_str().unwrap(), b.to_str().unwrap(), "--json"],
    );
    assert!(out.status.success(), "imgforge diff: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Disk GUID and partition GUIDs as sgdisk reads them.
fn sgdisk_guids(image: &Path) -> Vec<String> {
    let mut guids = Vec::new();
    for args in [
        vec!["-p"],
        vec!["-i", "1"],
        vec!["-i", "2"],
        vec!["-i", "3"],
    ] {
        let mut all = args.clone();
        all.push(image.to_str().unwrap());
        let out = run("sgdisk", &all);
        let report = text(&out);
        let guid = report
            .lines()
            .find(|l| l.contains("Disk identifier (GUID)") || l.contains("unique GUID"))
            .unwrap_or_else(|| panic!("no GUID in sgdisk {args:?}: {report}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string();
        guids.push(guid);
    }
    guids
}

#[test]
fn same_name_into_other_folders_gives_the_same_sha256() {
    let _guard = heavy();
    let (_dir_a, image_a, summary_a) = base();
    let image_a = &image_a;
    let dir = scratch();
    let (image_b, summary_b) = build(dir.path(), NAME, &[]);
    assert_ne!(image_a.parent(), image_b.parent());
    assert_eq!(summary_a["seed"], "debian-small");
    assert_eq!(summary_a["sha256"], summary_b["sha256"]);
    // Not only imgforge's own hash: sha256sum over both files.
    assert_eq!(sha256sum(image_a), sha256sum(&image_b));
    assert_eq!(sha256sum(image_a), summary_a["sha256"].as_str().unwrap());
    // The manifest beside the image records what to rebuild it with.
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}.json", image_b.display())).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["seed"], "debian-small");
    assert_eq!(manifest["build_time"], summary_b["source_date_epoch"]);

    let out = run(
        IMGFORGE,
        &[
            "diff",
            image_a.to_str().unwrap(),
            image_b.to_str().unwrap(),
            "--exit-code",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).starts_with("identical:"), "{}", text(&out));
    let report = diff_json(image_a, &image_b);
    assert_eq!(report["identical"], true);
    assert_eq!(report["differing_blocks"], 0);
    assert!(report["data_blocks"].as_u64().unwrap() > 100);
}

/// The tree cache is not what makes a rebuild identical: a tree
/// bootstrapped again, minutes later, from the same mirror state gives the
/// image the first one gave (its initramfs is stamped with the mirror
/// state's date, not the time the bootstrap ran).
#[test]
fn a_fresh_bootstrap_gives_the_image_the_first_tree_gave() {
    let _guard = heavy();
    let (_dir_a, image_a, summary_a) = base();
    let dir = scratch();
    let (image_b, summary_b) = build(dir.path(), NAME, &["--refresh-cache"]);
    assert_eq!(summary_b["bootstrap_from_cache"], false);
    assert_eq!(
        summary_a["tree_key"], summary_b["tree_key"],
        "the mirror published an update between the two builds: run again"
    );
    if summary_a["sha256"] != summary_b["sha256"] {
        let out = run(
            IMGFORGE,
            &["diff", image_a.to_str().unwrap(), image_b.to_str().unwrap()],
        );
        panic!("a fresh bootstrap changed the image:\n{}", text(&out));
    }
    assert_eq!(sha256sum(&image_a), sha256sum(&image_b));
}

#[test]
fn another_seed_gives_other_guids_and_uuids() {
    let _guard = heavy();
    let (_dir_a, image_a, summary_a) = base();
    let image_a = &image_a;
    let dir = scratch();
    let (image_b, summary_b) = build(dir.path(), NAME, &["--seed", "another"]);
    assert_eq!(summary_b["seed"], "another");
    assert_ne!(summary_a["sha256"], summary_b["sha256"]);
    let (guids_a, guids_b) = (sgdisk_guids(image_a), sgdisk_guids(&image_b));
    for (a, b) in guids_a.iter().zip(&guids_b) {
        assert_ne!(a, b, "sgdisk: {guids_a:?} vs {guids_b:?}");
    }
    // The same seed again gives the same GUIDs: they are derived, not drawn.
    let again = scratch();
    let (image_c, _) = build(again.path(), "other-name.raw", &["--seed", "another"]);
    assert_eq!(sgdisk_guids(&image_c), guids_b);

    let report = diff_json(image_a, &image_b);
    assert_eq!(report["identical"], false);
    let table: Vec<&str> = report["table"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["what"].as_str().unwrap())
        .collect();
    assert!(table.contains(&"disk GUID"), "{table:?}");
    assert!(table.contains(&"partition 3 GUID"), "{table:?}");
    // The files that name the root filesystem's UUID differ.
    let root = report["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "root")
        .unwrap();
    let files: Vec<&str> = root["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(files.contains(&"/etc/fstab"), "{files:?}");
}

#[test]
fn diff_names_the_one_layer_file_that_changed() {
    let _guard = heavy();
    let dir = scratch();
    // Two layers with the same name (the layer's name is its folder's, and
    // goes into the manifest) and one file whose content differs.
    let mut images = Vec::new();
    for (variant, content) in [("one", "setting = 1\n"), ("two", "setting = 2\n")] {
        let layer = dir.path().join(variant).join("repro-layer");
        std::fs::create_dir_all(layer.join("etc")).unwrap();
        std::fs::write(layer.join("etc/imgforge-repro.conf"), content).unwrap();
        let out_dir = dir.path().join(format!("out-{variant}"));
        std::fs::create_dir_all(&out_dir).unwrap();
        let (image, _) = build(
            &out_dir,
            "layered.raw",
            &["--layer", layer.to_str().unwrap()],
        );
        images.push(image);
    }
    let report = diff_json(&images[0], &images[1]);
    assert_eq!(report["identical"], false);
    assert!(report["table"].as_array().unwrap().is_empty(), "{report}");
    let changed = changed_files(&report);
    assert_eq!(
        changed,
        [(
            "root".to_string(),
            "/etc/imgforge-repro.conf".to_string(),
            "content".to_string()
        )],
        "{report}"
    );
}

/// The root partition's byte offset and size, from sgdisk.
fn root_extent(image: &Path) -> (u64, u64) {
    let out = run("sgdisk", &["-p", image.to_str().unwrap()]);
    assert!(out.status.success(), "sgdisk: {}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = listing
        .lines()
        .find(|l| l.trim_end().ends_with(" root"))
        .unwrap_or_else(|| panic!("no root partition in {listing}"));
    let fields: Vec<u64> = line
        .split_whitespace()
        .take(3)
        .map(|f| f.parse().unwrap())
        .collect();
    (fields[1] * 512, (fields[2] - fields[1] + 1) * 512)
}

/// `debugfs -R COMMAND` on the image's root filesystem.
fn debugfs(image: &Path, command: &str) -> String {
    let (offset, _) = root_extent(image);
    let spec = format!("{}?offset={offset}", image.display());
    let out = run("debugfs", &["-R", command, &spec]);
    assert!(out.status.success(), "debugfs {command}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Files `imgforge diff` names, as (partition, path, what).
fn changed_files(report: &Value) -> Vec<(String, String, String)> {
    let mut changed = Vec::new();
    for region in report["regions"].as_array().unwrap() {
        for file in region["files"].as_array().into_iter().flatten() {
            let what: Vec<&str> = file["changes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["what"].as_str().unwrap())
                .collect();
            changed.push((
                region["name"].as_str().unwrap().to_string(),
                file["path"].as_str().unwrap().to_string(),
                what.join(","),
            ));
        }
    }
    changed
}

/// A layer folder named `lf-layer` with these files (path, content).
fn layer(dir: &Path, variant: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let root = dir.join(variant).join("lf-layer");
    for (path, content) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    root
}

#[test]
fn layout_from_keeps_the_parents_blocks_and_gives_the_tree_mkfs_gives() {
    let _guard = heavy();
    let dir = scratch();
    let big: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    // The parent has a layer with a big file, a file that will change and
    // one that will go; the child's layer changes one, drops one, adds one.
    let parent_layer = layer(
        dir.path(),
        "parent",
        &[
            ("opt/lf/big.bin", &big),
            ("etc/lf/changes.conf", b"setting = 1\n"),
            ("etc/lf/goes/away.conf", b"gone in the child\n"),
        ],
    );
    let child_layer = layer(
        dir.path(),
        "child",
        &[
            ("opt/lf/big.bin", &big),
            ("etc/lf/changes.conf", b"setting = 2\n"),
            ("etc/lf/new.conf", b"new in the child\n"),
        ],
    );
    let folder = |name: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    };
    let child_args = |parent: &Path| {
        vec![
            "--layer".to_string(),
            child_layer.to_str().unwrap().to_string(),
            "--layout-from".to_string(),
            parent.to_str().unwrap().to_string(),
        ]
    };
    let (parent, _) = build(
        &folder("parent-out"),
        "parent.raw",
        &["--seed", "lf", "--layer", parent_layer.to_str().unwrap()],
    );
    let args = child_args(&parent);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (child, summary) = build(&folder("child-out"), "child.raw", &args);
    assert_eq!(summary["seed"], "lf", "the child takes its parent's seed");
    // The same inputs laid out anew by mkfs.ext4 -d, for comparison.
    let (fresh, _) = build(
        &folder("fresh-out"),
        "fresh.raw",
        &["--seed", "lf", "--layer", child_layer.to_str().unwrap()],
    );

    // Same tree as mkfs gives: diff names only the manifest, which records
    // the parent (content, modes, owners, mtimes, links, xattrs compared).
    let same_tree = diff_json(&fresh, &child);
    assert!(
        same_tree["table"].as_array().unwrap().is_empty(),
        "{same_tree}"
    );
    let files = changed_files(&same_tree);
    assert!(
        !files.is_empty(),
        "the manifest records the parent: {same_tree}"
    );
    for (_, path, _) in &files {
        assert!(path.ends_with("imgforge/manifest.json"), "{files:?}");
    }
    // What rdump does not show diff: hard links and device nodes.
    for image in [&child, &fresh] {
        let perl = debugfs(image, "stat /usr/bin/perl");
        let perl_link = debugfs(image, "stat /usr/bin/perl5.36.0");
        assert!(perl.contains("Links: 2"), "{perl}");
        assert_eq!(
            perl.lines().next(),
            perl_link.lines().next(),
            "one inode for both names"
        );
        let null = debugfs(image, "stat /dev/null");
        assert!(null.contains("character special"), "{null}");
        assert!(null.contains("Device major/minor number: 01:03"), "{null}");
    }

    // Few blocks moved against the parent, where mkfs moves most.
    let laid_out = diff_json(&parent, &child);
    let anew = diff_json(&parent, &fresh);
    let share = |r: &Value| {
        r["differing_blocks"].as_u64().unwrap() as f64 / r["data_blocks"].as_u64().unwrap() as f64
    };
    assert!(
        share(&laid_out) <= 0.05,
        "laid out on the parent: {} of {} blocks differ",
        laid_out["differing_blocks"],
        laid_out["data_blocks"]
    );
    assert!(
        share(&anew) > 2.0 * share(&laid_out),
        "mkfs: {}",
        anew["differing_blocks"]
    );
    let moved = changed_files(&laid_out);
    for path in [
        "/etc/lf/changes.conf",
        "/etc/lf/new.conf",
        "/etc/lf/goes/away.conf",
    ] {
        assert!(
            moved.iter().any(|(_, p, _)| p == path),
            "{path} in {moved:?}"
        );
    }

    // A clean filesystem, and the parent's digest in the manifest.
    let (offset, bytes) = root_extent(&child);
    let spec = format!("{}?offset={offset}", child.display());
    let fsck = run("e2fsck", &["-fn", &spec]);
    assert!(fsck.status.success(), "e2fsck: {}", text(&fsck));
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(child.with_extension("raw.json")).unwrap())
            .unwrap();
    let (p_offset, p_bytes) = root_extent(&parent);
    assert_eq!((p_offset, p_bytes), (offset, bytes));
    let dd = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dd if='{}' bs=512 skip={} count={} status=none | sha256sum",
            parent.display(),
            p_offset / 512,
            p_bytes / 512
        ))
        .output()
        .unwrap();
    let parent_root = String::from_utf8_lossy(&dd.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(manifest["layout_from"]["root_sha256"], parent_root.as_str());

    // Same inputs and parent, same image.
    let (again, _) = build(&folder("again-out"), "child.raw", &args);
    assert_eq!(sha256sum(&again), sha256sum(&child));

    // A seed other than the parent's is refused, and nothing is written.
    let refused = folder("refused-out");
    let image = refused.join("child.raw");
    let out = run(
        IMGFORGE,
        &[
            "build",
            "-o",
            image.to_str().unwrap(),
            "--layout-from",
            parent.to_str().unwrap(),
            "--seed",
            "other",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "bad input: {}", text(&out));
    assert!(text(&out).contains("seed `lf`"), "{}", text(&out));
    assert_eq!(std::fs::read_dir(&refused).unwrap().count(), 0);
}
