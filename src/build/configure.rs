//! Stage 2, configure: layers copied in (templates rendered for the size
//! class), fstab by UUID, the default user, units enabled, the kernel's
//! config checked, and everything host- or build-specific scrubbed out.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::bootstrap::Rootfs;
use super::context::BuildContext;
use super::identity::{self, IdentityError};
use super::layers::{LAYER_SETTINGS, UserSpec};
use super::reproducible::{self, ReproducibleError};
use super::template::{TemplateError, render};
use super::units;
use crate::distro::DistroError;
use crate::distro::initrd;
use crate::kernelcheck::{self, KernelCheckError};
use crate::sys::fsio::{PathError, at};
use crate::sys::tool::{Tool, ToolError};

/// A file with this suffix is rendered, and written without it.
const TEMPLATE_SUFFIX: &str = ".tmpl";

/// Left behind by any bootstrap but specific to the build host, to one
/// machine or to one build (so two builds of the same inputs would
/// differ): removed from every image, with the distro's own `scrub` list.
/// `*` matches within the last component; a pattern starting `**/`
/// matches its last component in every folder of the tree.
const SCRUB: &[&str] = &[
    "etc/ssh/ssh_host_*",
    "etc/.resolv.conf.systemd-resolved.bak",
    "var/log/*.log",
    "var/log/journal/*",
    "root/.bash_history",
    "tmp/*",
    "var/tmp/*",
    // Per-build: regenerated on the machine when needed.
    "var/lib/systemd/random-seed",
    "var/cache/ldconfig/aux-cache",
    "var/cache/man/*",
    "var/cache/fontconfig/*",
    "**/__pycache__",
    "**/*.pyc",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(transparent)]
    Distro(#[from] DistroError),
    #[error(transparent)]
    Reproducible(#[from] ReproducibleError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    KernelCheck(#[from] KernelCheckError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Units(#[from] units::UnitsError),
    #[error("{path}: {message}")]
    Settings { path: PathBuf, message: String },
    #[error(
        "the image's kernel {kernel} lacks what {fragment} requires: {missing}; \
         choose a kernel package that has them (--packages) or drop the fragment"
    )]
    KernelConfig {
        kernel: String,
        fragment: String,
        missing: String,
    },
}

/// `source_date_epoch` goes to the tools run in the tree (useradd writes
/// it as the password's last change in /etc/shadow).
pub fn run(
    ctx: &BuildContext,
    rootfs: &Rootfs,
    source_date_epoch: u64,
) -> Result<(), ConfigureError> {
    let request = &ctx.request;
    check_kernel_config(ctx, rootfs)?;
    let vars = template_variables(ctx)?;
    for layer in &request.layers {
        ctx.progress.note(&format!("layer {}", layer.name));
        copy_layer(&layer.dir, &layer.dir, &rootfs.dir, &vars)?;
    }
    request.distro.configure(&rootfs.dir, &request.sources)?;
    write_fstab(ctx, &rootfs.dir)?;
    identity::reset(&rootfs.dir)?;
    for layer in &request.layers {
        for user in &layer.settings.users {
            create_user(&rootfs.dir, user, source_date_epoch)?;
        }
        let enable = units::to_enable(
            &layer.settings.enable,
            &layer.settings.enable_from,
            &rootfs.packages,
        );
        units::check_exist(&rootfs.dir, &layer.name, &enable)?;
        systemctl(&rootfs.dir, "enable", &enable)?;
        systemctl(&rootfs.dir, "disable", &layer.settings.disable)?;
    }
    scrub_leftovers(ctx, &rootfs.dir)?;
    for file in SHADOW_FILES {
        reproducible::clamp_shadow_dates(&rootfs.dir.join(file), source_date_epoch)?;
    }
    identity::check_first_boot_units(&rootfs.dir)?;
    Ok(())
}

/// Removes what is specific to the build host or to one build (the
/// [`SCRUB`] list and the distro's): after the layers, and again after the
/// user's provisioning steps.
pub fn scrub_leftovers(ctx: &BuildContext, root: &Path) -> Result<(), ConfigureError> {
    let distro_scrub = &ctx.request.distro.data().scrub;
    scrub(
        root,
        SCRUB
            .iter()
            .copied()
            .chain(distro_scrub.iter().map(String::as_str)),
    )
}

/// Password files whose "last changed" days are the bootstrap's date.
const SHADOW_FILES: &[&str] = &["etc/shadow", "etc/shadow-"];

/// What templates may use, as `{{name}}`.
pub fn template_variables(
    ctx: &BuildContext,
) -> Result<BTreeMap<&'static str, String>, ConfigureError> {
    let request = &ctx.request;
    let class = &request.size_class;
    let mut vars = request.distro.data().template_variables(&request.kernel);
    vars.extend(class.template_variables());
    vars.extend([
        ("profile", request.profile.name.clone()),
        (
            "profile_cmdline",
            request
                .profile
                .cmdline_for(class)
                .map_err(|e| ConfigureError::Settings {
                    path: "rootfs/profiles.toml".into(),
                    message: e.to_string(),
                })?
                .into_iter()
                // What imgforge-verify expects is what grub.cfg carries:
                // the tokens the architecture's kernel has.
                .filter(|t| request.architecture.keep_cmdline_token(t))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("imgforge_version", env!("CARGO_PKG_VERSION").to_string()),
        ("root_uuid", ctx.ids.root_fs_uuid.to_string()),
        ("esp_uuid", ctx.ids.esp_volume_label()),
    ]);
    Ok(vars)
}

/// Copies a layer's tree (files, symlinks, modes), rendering templates.
fn copy_layer(
    layer_root: &Path,
    from: &Path,
    to: &Path,
    vars: &BTreeMap<&str, String>,
) -> Result<(), ConfigureError> {
    let mut entries: Vec<_> = fs::read_dir(from)
        .map_err(at("read", from))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let source = entry.path();
        let name = entry.file_name();
        if from == layer_root && (name == LAYER_SETTINGS || name == "README.md") {
            continue;
        }
        let kind = entry.file_type().map_err(at("stat", &source))?;
        let mut target = to.join(&name);
        if kind.is_dir() {
            if !target.is_dir() {
                fs::create_dir_all(&target).map_err(at("create", &target))?;
                let mode = source
                    .metadata()
                    .map_err(at("stat", &source))?
                    .permissions();
                fs::set_permissions(&target, mode).map_err(at("chmod", &target))?;
            }
            copy_layer(layer_root, &source, &target, vars)?;
            continue;
        }
        if target.symlink_metadata().is_ok() {
            fs::remove_file(&target).map_err(at("replace", &target))?;
        }
        if kind.is_symlink() {
            let link = fs::read_link(&source).map_err(at("read link", &source))?;
            symlink(&link, &target).map_err(at("symlink", &target))?;
        } else if let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(TEMPLATE_SUFFIX)) {
            target = to.join(stem);
            let text = fs::read_to_string(&source).map_err(at("read", &source))?;
            fs::write(&target, render(&text, vars, &source)?).map_err(at("write", &target))?;
            let mode = source
                .metadata()
                .map_err(at("stat", &source))?
                .permissions();
            fs::set_permissions(&target, mode).map_err(at("chmod", &target))?;
        } else {
            fs::copy(&source, &target).map_err(at("copy", &source))?;
        }
    }
    Ok(())
}

fn write_fstab(ctx: &BuildContext, root: &Path) -> Result<(), ConfigureError> {
    let fstab = format!(
        "# Written by imgforge: filesystems by UUID, never by a build host's device name.\n\
         UUID={root_uuid} / ext4 defaults,noatime,errors=remount-ro 0 1\n\
         UUID={esp} /boot/efi vfat umask=0077,nofail 0 2\n",
        root_uuid = ctx.ids.root_fs_uuid,
        esp = ctx.ids.esp_volume_label(),
    );
    let path = root.join("etc/fstab");
    fs::write(&path, fstab).map_err(at("write", &path))?;
    let efi = root.join("boot/efi");
    fs::create_dir_all(&efi).map_err(at("create", &efi))?;
    Ok(())
}

fn create_user(root: &Path, user: &UserSpec, epoch: u64) -> Result<(), ConfigureError> {
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    if passwd
        .lines()
        .any(|l| l.split(':').next() == Some(&user.name))
    {
        return Ok(());
    }
    let mut tool = Tool::new("chroot")
        .arg(root)
        .args(["useradd", "--create-home", "--shell", "/bin/bash"])
        .env("SOURCE_DATE_EPOCH", epoch.to_string());
    if !user.groups.is_empty() {
        tool = tool.arg("--groups").arg(user.groups.join(","));
    }
    tool.arg(&user.name).run()?;
    Ok(())
}

/// `systemctl enable` inside the tree: it works offline in a chroot.
fn systemctl(root: &Path, verb: &str, units: &[String]) -> Result<(), ConfigureError> {
    if units.is_empty() {
        return Ok(());
    }
    Tool::new("chroot")
        .arg(root)
        .args(["systemctl", verb])
        .args(units)
        .run()?;
    Ok(())
}

fn scrub<'a>(root: &Path, patterns: impl Iterator<Item = &'a str>) -> Result<(), ConfigureError> {
    let (anywhere, rooted): (Vec<&str>, Vec<&str>) = patterns.partition(|p| p.starts_with("**/"));
    let leaves: Vec<&str> = anywhere.iter().map(|p| &p[3..]).collect();
    if !leaves.is_empty() {
        scrub_everywhere(root, &leaves)?;
    }
    for pattern in rooted {
        let (dir, leaf) = pattern.rsplit_once('/').unwrap_or(("", pattern));
        let dir = root.join(dir);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !glob_match(leaf, &name) {
                continue;
            }
            let path = entry.path();
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(at("remove", &path))?;
        }
    }
    Ok(())
}

/// Removes every entry under `dir` whose name matches one of `leaves`,
/// in one walk of the tree (symlinks are not followed).
fn scrub_everywhere(dir: &Path, leaves: &[&str]) -> Result<(), ConfigureError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let name = entry.file_name().to_string_lossy().into_owned();
        if leaves.iter().any(|leaf| glob_match(leaf, &name)) {
            let removed = if is_dir {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(at("remove", &path))?;
        } else if is_dir {
            scrub_everywhere(&path, leaves)?;
        }
    }
    Ok(())
}

/// `*` matches any run of characters; everything else matches itself.
fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || !name[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// Every `CONFIG_X=y` of every fragment (the profile's, under
/// kernel-configs/) must be built in, or a module the initramfs carries
/// where kernel-configs/ allows it; `=m` may be a module or built in.
fn check_kernel_config(ctx: &BuildContext, rootfs: &Rootfs) -> Result<(), ConfigureError> {
    let request = &ctx.request;
    let data = request.distro.data();
    let grub_initrd = initrd::render_boot_path(data, &data.grub_initrd, &request.kernel);
    let checked = kernelcheck::check_image(
        &request.data.path().join("kernel-configs"),
        &request.kernel_config_fragments,
        &rootfs.kernel.config,
        &initrd::resolve_in_tree(&rootfs.dir, &grub_initrd),
    )?;
    for (_, found) in &checked.modules {
        ctx.progress.note(&format!(
            "{}: a module, {} in the initramfs ({})",
            found.option, found.module, found.file
        ));
    }
    match checked.gaps.into_iter().next() {
        Some(gap) => Err(ConfigureError::KernelConfig {
            kernel: rootfs.kernel.version.clone(),
            fragment: gap.fragment.display().to_string(),
            missing: gap.missing.join(", "),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_rooted_and_anywhere_patterns() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for file in [
            "var/lib/systemd/random-seed",
            "usr/lib/python3/dist-packages/x/__pycache__/a.cpython-311.pyc",
            "usr/lib/python3/dist-packages/x/b.pyc",
            "usr/lib/python3/dist-packages/x/b.py",
            "var/log/keep/me",
        ] {
            fs::create_dir_all(r.join(file).parent().unwrap()).unwrap();
            fs::write(r.join(file), "x").unwrap();
        }
        scrub(r, SCRUB.iter().copied()).unwrap();
        assert!(!r.join("var/lib/systemd/random-seed").exists());
        assert!(
            !r.join("usr/lib/python3/dist-packages/x/__pycache__")
                .exists()
        );
        assert!(!r.join("usr/lib/python3/dist-packages/x/b.pyc").exists());
        assert!(r.join("usr/lib/python3/dist-packages/x/b.py").exists());
        assert!(r.join("var/log/keep/me").exists());
    }

    #[test]
    fn globs() {
        assert!(glob_match("ssh_host_*", "ssh_host_rsa_key"));
        assert!(glob_match("*proxy*", "01proxy"));
        assert!(glob_match("*_*", "deb.debian.org_debian_dists"));
        assert!(!glob_match("*_*", "lock"));
        assert!(!glob_match("*.log", "apt"));
    }
}
