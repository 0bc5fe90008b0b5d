//! Storage and protection on RegisterImage (issue 22, item 4) against moto,
//! through the recording proxy (moto keeps little of a block device mapping,
//! and lacks EnableImageDeregistrationProtection, which the proxy answers):
//! what is asked goes on the wire; values outside a volume type's limits
//! are bad input before anything is uploaded.

mod common;

use common::*;

#[test]
fn root_volume_extra_volumes_instance_store_and_protection_go_on_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    let out = upload_pattern(
        dir.path(),
        &proxy.url(),
        &pattern_image(dir.path(), "storage-1.raw", 1),
        &[
            "--name",
            "storage-ci-runner-v1",
            "--volume-size",
            "20G",
            "--root-volume-type",
            "gp3",
            "--root-volume-iops",
            "6000",
            "--root-volume-throughput",
            "500",
            "--volume",
            "/dev/sdf=100G,type=io2,iops=5000",
            "--volume",
            "/dev/sdg=50G",
            "--instance-store",
            "2",
            "--deregistration-protection",
            "--copy-to",
            "eu-west-1",
        ],
    );
    let result = json_stdout(&out);
    let requests = proxy.requests();
    let register = &Proxy::operations(&requests, "RegisterImage")[0]["params"];
    let expect = [
        ("BlockDeviceMapping.1.DeviceName", "/dev/xvda"),
        ("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
        ("BlockDeviceMapping.1.Ebs.VolumeSize", "20"),
        ("BlockDeviceMapping.1.Ebs.Iops", "6000"),
        ("BlockDeviceMapping.1.Ebs.Throughput", "500"),
        ("BlockDeviceMapping.2.DeviceName", "/dev/sdf"),
        ("BlockDeviceMapping.2.Ebs.VolumeType", "io2"),
        ("BlockDeviceMapping.2.Ebs.VolumeSize", "100"),
        ("BlockDeviceMapping.2.Ebs.Iops", "5000"),
        ("BlockDeviceMapping.2.Ebs.DeleteOnTermination", "true"),
        ("BlockDeviceMapping.3.DeviceName", "/dev/sdg"),
        ("BlockDeviceMapping.3.Ebs.VolumeType", "gp3"),
        ("BlockDeviceMapping.3.Ebs.DeleteOnTermination", "true"),
        ("BlockDeviceMapping.4.DeviceName", "/dev/sdb"),
        ("BlockDeviceMapping.4.VirtualName", "ephemeral0"),
        ("BlockDeviceMapping.5.DeviceName", "/dev/sdc"),
        ("BlockDeviceMapping.5.VirtualName", "ephemeral1"),
    ];
    for (key, value) in expect {
        assert_eq!(register[key], value, "RegisterImage {key}: {register}");
    }
    let protected: Vec<(String, String)> =
        Proxy::operations(&requests, "EnableImageDeregistrationProtection")
            .iter()
            .map(|r| {
                (
                    r["region"].as_str().unwrap().to_string(),
                    r["params"]["ImageId"].as_str().unwrap().to_string(),
                )
            })
            .collect();
    assert_eq!(protected.len(), 2, "in every region: {protected:?}");
    assert!(protected.contains(&(
        "us-east-1".into(),
        result["ami_id"].as_str().unwrap().into()
    )));
    for region in result["regions"].as_array().unwrap() {
        assert_eq!(region["deregistration_protection"], true, "{region}");
    }
}

#[test]
fn volume_settings_outside_the_types_limits_are_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    let image = pattern_image(dir.path(), "storage-2.raw", 2);
    for (args, needle) in [
        (&["--root-volume-iops", "2000"][..], "3000 to 80000"),
        (&["--root-volume-iops", "6000"][..], "at least 12 GiB"),
        (
            &[
                "--root-volume-iops",
                "3000",
                "--root-volume-throughput",
                "1000",
            ][..],
            "at least 4000 IOPS",
        ),
        (
            &["--root-volume-type", "gp2", "--root-volume-iops", "3000"][..],
            "take no IOPS",
        ),
        (&["--root-volume-type", "st1"][..], "cannot boot"),
        (&["--root-volume-type", "gp9"][..], "not an EBS volume type"),
        (
            &["--volume", "/dev/sdf=10G,type=io2"][..],
            "need an IOPS setting",
        ),
        (
            &["--volume", "/dev/sdf=10G,type=gp3,throughput=900"][..],
            "IOPS",
        ),
    ] {
        let out = upload_pattern(
            dir.path(),
            &proxy.url(),
            &image,
            &[&["--name", "storage-bad-v1"][..], args].concat(),
        );
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains(needle),
            "{needle} for {args:?}: {}",
            stderr(&out)
        );
    }
    assert!(
        proxy.requests().is_empty(),
        "refused before any AWS call: {:?}",
        proxy.requests()
    );
}

#[test]
fn instance_types_are_checked_before_anything_is_uploaded() {
    let dir = tempfile::tempdir().unwrap();
    let moto = moto();
    let proxy = Proxy::start(moto, dir.path(), &[]);
    let image = pattern_image(dir.path(), "storage-3.raw", 3);
    let run_with = |boot_mode: &str, extra: &[&str]| {
        run(imgforge(dir.path())
            .arg("upload")
            .arg(&image)
            .args(["--endpoint-url", &proxy.url(), "--json", "--workers", "4"])
            .args(["--name", "storage-types-v1", "--arch", "x86_64"])
            .args(["--boot-mode", boot_mode])
            .args(extra))
    };
    // A UEFI-only image on a BIOS-only .metal type, NitroTPM on a type
    // without it, an arm64 type for an x86_64 image, a type that does not
    // exist: each refused before any snapshot starts.
    for (mode, extra, needles) in [
        (
            "uefi",
            &["--instance-types", "c5.large,m5.metal"][..],
            &["m5.metal", "legacy BIOS only"][..],
        ),
        (
            "uefi-preferred",
            &["--instance-types", "c5.metal", "--tpm"][..],
            &["c5.metal", "NitroTPM"][..],
        ),
        (
            "uefi",
            &["--instance-types", "m6g.large"][..],
            &["m6g.large", "arm64"][..],
        ),
        (
            "uefi",
            &["--instance-types", "m9z.huge"][..],
            &["m9z.huge"][..],
        ),
    ] {
        let out = run_with(mode, extra);
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        for needle in needles {
            assert!(
                stderr(&out).contains(needle),
                "{needle} for {extra:?}: {}",
                stderr(&out)
            );
        }
    }
    assert!(Proxy::operations(&proxy.requests(), "StartSnapshot").is_empty());

    // A hybrid image runs on both: a table on stderr, the verdicts in --json.
    let out = run_with("uefi-preferred", &["--instance-types", "c5.large,m5.metal"]);
    let result = json_stdout(&out);
    let verdicts: Vec<(&str, bool)> = result["instance_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["instance_type"].as_str().unwrap(),
                c["ok"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(verdicts, [("c5.large", true), ("m5.metal", true)]);
    assert!(stderr(&out).contains("boot modes"), "{}", stderr(&out));
}
