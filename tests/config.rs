//! `imgforge.toml`: variants over defaults, flags over the file, the CI
//! matrix, and errors that name the file, line and key. Builds are planned
//! (`build --plan`), not run: the mapping onto build flags is what is tested.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

const CONFIG: &str = r#"# fleet
[defaults]
distro = "debian"
size_class = "small"
regions = ["eu-west-1"]
ami_name = "{image}-v1"
ssm_parameter = "/images/{image}/latest"
deprecate_in = "90d"
[defaults.tags]
team = "infra"

[[image]]
name = "trading-small"

[[image]]
name = "trading-large"
size_class = "large"
packages = ["htop", "jq"]
regions = ["us-west-2", "eu-west-1"]
share_with = ["210987654321"]
"#;

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("imgforge.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn plan(dir: &Path, args: &[&str]) -> Vec<Value> {
    let out = run(imgforge(dir).args(["build", "--plan", "--json"]).args(args));
    assert!(out.status.success(), "{}", stderr(&out));
    // One document: a plan, or with --all an array of them.
    match serde_json::from_slice(&out.stdout).unwrap() {
        Value::Array(plans) => plans,
        plan => vec![plan],
    }
}

#[test]
fn a_variant_overrides_the_defaults_and_flags_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), CONFIG);
    let large = plan(
        dir.path(),
        &["--config", &config, "--image", "trading-large"],
    );
    assert_eq!(large.len(), 1);
    assert_eq!(
        large[0]["size_class"]["name"], "large",
        "the variant's value"
    );
    let packages = large[0]["packages"].to_string();
    assert!(
        packages.contains("\"htop\"") && packages.contains("\"jq\""),
        "{packages}"
    );
    assert!(
        large[0]["output"]
            .as_str()
            .unwrap()
            .ends_with("trading-large.raw"),
        "one output per variant: {}",
        large[0]["output"]
    );
    let small = plan(
        dir.path(),
        &["--config", &config, "--image", "trading-small"],
    );
    assert_eq!(small[0]["size_class"]["name"], "small", "from [defaults]");
    let flag = plan(
        dir.path(),
        &[
            "--config",
            &config,
            "--image",
            "trading-large",
            "--size-class",
            "medium",
        ],
    );
    assert_eq!(flag[0]["size_class"]["name"], "medium", "the flag wins");
    let all = plan(dir.path(), &["--config", &config, "--all"]);
    let classes: Vec<&str> = all
        .iter()
        .map(|p| p["size_class"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        classes,
        ["small", "large"],
        "--all plans every variant in order"
    );
}

#[test]
fn config_show_and_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), CONFIG);
    let shown = json_stdout(&run(imgforge(dir.path()).args([
        "config",
        "show",
        "--config",
        &config,
        "--image",
        "trading-large",
    ])));
    let large = &shown[0];
    assert_eq!(large["name"], "trading-large");
    assert_eq!(large["distro"], "debian", "merged from [defaults]");
    assert_eq!(large["ami_name"], "trading-large-v1", "{{image}} filled in");
    assert_eq!(large["ssm_parameter"], "/images/trading-large/latest");
    assert_eq!(large["tags"]["team"], "infra");
    let upload_args: Vec<&str> = large["upload_args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for pair in [
        ["--copy-to", "us-west-2,eu-west-1"],
        ["--share-with", "210987654321"],
        ["--deprecate-in", "90d"],
        ["--tag", "team=infra"],
    ] {
        assert!(
            upload_args.windows(2).any(|w| w == pair),
            "{pair:?} in {upload_args:?}"
        );
    }
    let everything = json_stdout(&run(
        imgforge(dir.path()).args(["config", "show", "--config", &config])
    ));
    assert_eq!(everything.as_array().unwrap().len(), 2);

    let out = run(imgforge(dir.path()).args([
        "config", "matrix", "--config", &config, "--format", "github",
    ]));
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stdout);
    let json = line
        .trim()
        .strip_prefix("matrix=")
        .expect("a $GITHUB_OUTPUT line");
    let matrix: Value = serde_json::from_str(json).unwrap();
    let include = matrix["include"].as_array().unwrap();
    assert_eq!(include.len(), 2, "one job per variant");
    assert_eq!(include[1]["image"], "trading-large");
    assert!(
        include[1]["build"]
            .as_str()
            .unwrap()
            .contains("--image trading-large")
    );
    let jobs =
        json_stdout(&run(imgforge(dir.path()).args([
            "config", "matrix", "--config", &config, "--format", "json",
        ])));
    assert_eq!(jobs.as_array().unwrap().len(), 2);
    assert_eq!(jobs[0]["size_class"], "small");
}

fn config_error(dir: &Path, text: &str, args: &[&str]) -> String {
    let config = write_config(dir, text);
    let out = run(imgforge(dir).args(args).args(["--config", &config]));
    assert!(!out.status.success());
    stderr(&out)
}

#[test]
fn config_errors_name_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let show = ["config", "show"];
    let cases: &[(&str, &str)] = &[
        (
            "[defaults]\ndistro = \"debian\"\nsise_class = \"large\"\n[[image]]\nname = \"a\"\n",
            "imgforge.toml:3: key `sise_class`: unknown key",
        ),
        (
            "[[image]]\nname = \"a\"\nsize_class = \"huge\"\n",
            "imgforge.toml:3: key `size_class`: unknown size class \"huge\"",
        ),
        (
            "[[image]]\nname = \"a\"\n\nregions = [\"eu-west-1\", \"Mars\"]\n",
            "imgforge.toml:4: key `regions`: \"Mars\" is not an AWS region name",
        ),
        (
            "[[image]]\nname = \"a\"\nshare_with = [\"bob\"]\n",
            "imgforge.toml:3: key `share_with`: \"bob\" is not a share target",
        ),
        (
            "[[image]]\nname = \"a\"\nssm_parameter = \"images/latest\"\n",
            "imgforge.toml:3: key `ssm_parameter`",
        ),
        (
            "[[image]]\nname = \"a\"\ntpm = \"yes\"\n",
            "imgforge.toml:3: key `tpm`: expected true or false, found string",
        ),
        (
            "[[image]]\nsize_class = \"large\"\n",
            "imgforge.toml:1: key `name`: every [[image]] needs a name",
        ),
        ("[defaults]\ndistro = \n", "imgforge.toml:2:"),
    ];
    for (text, needle) in cases {
        let err = config_error(dir.path(), text, &show);
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    // The same checks guard build and upload.
    let err = config_error(
        dir.path(),
        "[[image]]\nname = \"a\"\nsize_class = \"huge\"\n",
        &["build", "--plan", "--image", "a"],
    );
    assert!(err.contains("imgforge.toml:3: key `size_class`"), "{err}");
    let err = config_error(dir.path(), CONFIG, &["build", "--plan", "--image", "nope"]);
    assert!(
        err.contains("no [[image]] named \"nope\"") && err.contains("trading-small, trading-large"),
        "{err}"
    );
    let err = config_error(dir.path(), CONFIG, &["build", "--plan"]);
    assert!(
        err.contains("--image NAME") && err.contains("--all"),
        "{err}"
    );
    let out = run(imgforge(dir.path()).args(["build", "--plan", "--image", "a"]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("pass --config"));
}

#[test]
fn provisioning_keys_become_build_flags() {
    let dir = scratch("imgforge-config-provision-");
    let script = dir.path().join("toolchain.sh");
    std::fs::write(&script, "#!/bin/sh\ntrue\n").unwrap();
    let key = dir.path().join("ci.asc");
    std::fs::write(&key, "-----BEGIN PGP PUBLIC KEY BLOCK-----\n").unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[[image]]\nname = \"ci\"\nkernel_args = [\"mitigations=off\", \"hugepages=64\"]\n\
             scripts = [\"{script}\"]\nsecurity_mirror = \"http://m/debian-security\"\n\
             mirror = \"http://m/debian\"\n\
             repositories = [\"deb [signed-by={key}] https://apt.example/ci stable main\"]\n",
            script = script.display(),
            key = key.display()
        ),
    );
    let plans = plan(dir.path(), &["--config", &config, "--image", "ci"]);
    let p = &plans[0];
    assert!(
        p["kernel_cmdline"]
            .as_str()
            .unwrap()
            .ends_with(" mitigations=off hugepages=64")
    );
    assert_eq!(p["provisioning"][0]["path"], script.to_str().unwrap());
    let lines = p["sources"]["lines"].to_string();
    assert!(
        lines.contains("http://m/debian-security bookworm-security"),
        "{lines}"
    );
    assert!(
        lines.contains("imgforge-repository-1.asc] https://apt.example/ci"),
        "{lines}"
    );
}
