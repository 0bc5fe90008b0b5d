//! The provisioned tree, cached beside the bootstrapped ones: keyed by the
//! bootstrapped tree's key, what configured it (the template variables,
//! every layer's files, the sources and keys, the epoch) and the exact
//! bytes of every provisioning input (each script, the playbook's folder,
//! its variables). An identical rebuild unpacks it and reruns nothing;
//! `--refresh-cache` runs the steps again.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::ProvisionError;
use crate::build::bootstrap::Rootfs;
use crate::build::cache_key;
use crate::build::context::BuildContext;
use crate::build::request::folder_digest;
use crate::image::manifest::ProvisionRecord;
use crate::sys::fsio::at;
use crate::sys::tool::Tool;

/// Bump when provisioning changes the way it leaves a tree.
const RECIPE_VERSION: &str = "imgforge-provision-1";
/// What the steps did, kept inside the cached tarball (and taken out).
const RECORDS: &str = ".imgforge-provisioned.json";

/// The provisioned tree's key.
pub fn key(
    ctx: &BuildContext,
    rootfs: &Rootfs,
    configure_vars: &BTreeMap<&str, String>,
    epoch: u64,
) -> Result<String, ProvisionError> {
    let request = &ctx.request;
    let mut lines = vec![
        RECIPE_VERSION.to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
        format!("tree {}", rootfs.key),
        format!("epoch {epoch}"),
    ];
    lines.extend(configure_vars.iter().map(|(k, v)| format!("var {k}={v}")));
    for layer in &request.layers {
        let digest = folder_digest(&layer.dir).map_err(at("read", &layer.dir))?;
        lines.push(format!("layer {} {digest}", layer.name));
    }
    lines.extend(request.sources.lines.iter().map(|l| format!("source {l}")));
    lines.extend(
        request
            .sources
            .keys
            .iter()
            .map(|k| format!("key {}", k.sha256)),
    );
    if let Some(run) = &request.ansible {
        lines.push(format!("ansible {}", run.dir_sha256));
        lines.extend(run.vars.iter().map(|(k, v)| format!("ansible-var {k}={v}")));
    }
    lines.extend(
        request
            .scripts
            .iter()
            .map(|s| format!("script {}", s.sha256)),
    );
    let mut hash = Sha256::new();
    for line in lines {
        hash.update(line.as_bytes());
        hash.update(b"\n");
    }
    Ok(hex::encode(hash.finalize()))
}

fn tarball(ctx: &BuildContext, key: &str) -> std::path::PathBuf {
    let name = &ctx.request.distro.data().name;
    ctx.cache
        .rootfs_dir
        .join(cache_key::tree_file_name(name, &ctx.request.release, key))
}

/// The cached provisioned tree in place of `rootfs.dir`, when there is one
/// (and no `--refresh-cache`); true when it was used.
pub fn restore(ctx: &BuildContext, key: &str, rootfs: &mut Rootfs) -> Result<bool, ProvisionError> {
    let tarball = tarball(ctx, key);
    if ctx.refresh_cache || !tarball.is_file() {
        return Ok(false);
    }
    ctx.progress
        .note(&format!("cached provisioned tree {}", &key[..12]));
    fs::remove_dir_all(&rootfs.dir).map_err(at("remove", &rootfs.dir))?;
    fs::create_dir_all(&rootfs.dir).map_err(at("create", &rootfs.dir))?;
    Tool::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&rootfs.dir)
        .run()?;
    let records = rootfs.dir.join(RECORDS);
    let text = fs::read_to_string(&records).map_err(at("read", &records))?;
    fs::remove_file(&records).map_err(at("remove", &records))?;
    rootfs.provisioned = serde_json::from_str(&text).unwrap_or_default();
    rootfs.packages = ctx.request.distro.installed_packages(&rootfs.dir)?;
    Ok(true)
}

/// Keeps the provisioned tree for the next identical build; a failure to
/// keep it only costs that build the steps, so it is a warning.
pub fn store(ctx: &BuildContext, key: &str, root: &Path, records: &[ProvisionRecord]) {
    let tarball = tarball(ctx, key);
    let partial = cache_key::partial_path(&tarball);
    let records_path = root.join(RECORDS);
    let text = serde_json::to_string(records).unwrap_or_default();
    let written = fs::write(&records_path, text)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            Tool::new("tar")
                .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-cpf"])
                .arg(&partial)
                .arg("-C")
                .arg(root)
                .arg(".")
                .run()
                .map_err(|e| e.to_string())
        })
        .and_then(|_| fs::rename(&partial, &tarball).map_err(|e| e.to_string()));
    let _ = fs::remove_file(&records_path);
    if let Err(err) = written {
        let _ = fs::remove_file(&partial);
        log::warn!("cannot cache the provisioned tree: {err}");
    }
}
