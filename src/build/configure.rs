//! Stage 2, configure: layers copied in (templates rendered for the size
//! class), fstab by UUID, the default user, units enabled, the kernel's
//! config checked, and everything host- or build-specific scrubbed out.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::bootstrap::Rootfs;
use super::context::BuildContext;
use crate::distro::DistroError;
use crate::sys::fsio::{PathError, at};
use crate::sys::tool::{Tool, ToolError};

/// A layer's own settings file, at the layer's top; never copied.
const LAYER_SETTINGS: &str = "layer.toml";
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
    Reproducible(#[from] super::reproducible::ReproducibleError),
    #[error("layer folder {0} does not exist (check --layer)")]
    MissingLayer(PathBuf),
    #[error("{path}: {message}")]
    Settings { path: PathBuf, message: String },
    #[error("template {path} uses `{{{{{name}}}}}`, which is not one of: {known}")]
    UnknownVariable {
        path: PathBuf,
        name: String,
        known: String,
    },
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

/// A folder of files to copy into the image, and the units it enables.
#[derive(Debug, Clone)]
pub struct Layer {
    pub name: String,
    pub dir: PathBuf,
    pub settings: LayerSettings,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSettings {
    /// systemd units to enable after the copy.
    #[serde(default)]
    pub enable: Vec<String>,
    /// systemd units to disable.
    #[serde(default)]
    pub disable: Vec<String>,
    /// Users to create (home directory, bash), with their groups.
    #[serde(default)]
    pub users: Vec<UserSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// The profile's layers (`rootfs/profiles.toml`), the distro's, then the
/// `--layer` folders. `vars` are the distro's template variables: a
/// `layer.toml` is rendered with them before it is read.
pub fn resolve_layers(
    rootfs_data: &Path,
    profile_layers: &[String],
    distro_layers: &[String],
    extra: &[PathBuf],
    vars: &BTreeMap<&str, String>,
) -> Result<Vec<Layer>, ConfigureError> {
    let dirs = profile_layers
        .iter()
        .chain(distro_layers)
        .map(|name| rootfs_data.join(name))
        .chain(extra.iter().cloned());
    dirs.map(|dir| Layer::load(&dir, vars)).collect()
}

impl Layer {
    pub fn load(dir: &Path, vars: &BTreeMap<&str, String>) -> Result<Self, ConfigureError> {
        if !dir.is_dir() {
            return Err(ConfigureError::MissingLayer(dir.to_path_buf()));
        }
        let settings_path = dir.join(LAYER_SETTINGS);
        let settings = match fs::read_to_string(&settings_path) {
            Ok(text) => toml::from_str(&render(&text, vars, &settings_path)?).map_err(|e| {
                ConfigureError::Settings {
                    path: settings_path.clone(),
                    message: e.to_string(),
                }
            })?,
            Err(_) => LayerSettings::default(),
        };
        // `distros/arch/layer` is called `arch`.
        let named = if dir.ends_with("layer") {
            dir.parent().unwrap_or(dir)
        } else {
            dir
        };
        let name = named
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        Ok(Self {
            name,
            dir: dir.to_path_buf(),
            settings,
        })
    }
}

/// `source_date_epoch` goes to the tools run in the tree (useradd writes
/// it as the password's last change in /etc/shadow).
pub fn run(
    ctx: &BuildContext,
    rootfs: &Rootfs,
    source_date_epoch: u64,
) -> Result<(), ConfigureError> {
    let request = &ctx.request;
    check_kernel_config(
        &request.kernel_config_fragments,
        &rootfs.kernel.config,
        &rootfs.kernel.version,
    )?;
    let vars = template_variables(ctx)?;
    for layer in &request.layers {
        ctx.progress.note(&format!("layer {}", layer.name));
        copy_layer(&layer.dir, &layer.dir, &rootfs.dir, &vars)?;
    }
    request.distro.configure(&rootfs.dir, &request.sources)?;
    write_fstab(ctx, &rootfs.dir)?;
    reset_machine_identity(&rootfs.dir)?;
    for layer in &request.layers {
        for user in &layer.settings.users {
            create_user(&rootfs.dir, user, source_date_epoch)?;
        }
        systemctl(&rootfs.dir, "enable", &layer.settings.enable)?;
        systemctl(&rootfs.dir, "disable", &layer.settings.disable)?;
    }
    let distro_scrub = &request.distro.data().scrub;
    scrub(
        &rootfs.dir,
        SCRUB
            .iter()
            .copied()
            .chain(distro_scrub.iter().map(String::as_str)),
    )?;
    for file in SHADOW_FILES {
        super::reproducible::clamp_shadow_dates(&rootfs.dir.join(file), source_date_epoch)?;
    }
    Ok(())
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

pub fn render(
    template: &str,
    vars: &BTreeMap<&str, String>,
    path: &Path,
) -> Result<String, ConfigureError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = after[..end].trim();
        let value = vars
            .get(name)
            .ok_or_else(|| ConfigureError::UnknownVariable {
                path: path.to_path_buf(),
                name: name.to_string(),
                known: vars.keys().copied().collect::<Vec<_>>().join(", "),
            })?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
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

/// An empty machine-id makes systemd create one on first boot, so no two
/// instances share it.
fn reset_machine_identity(root: &Path) -> Result<(), ConfigureError> {
    let machine_id = root.join("etc/machine-id");
    fs::write(&machine_id, b"").map_err(at("write", &machine_id))?;
    fs::set_permissions(&machine_id, fs::Permissions::from_mode(0o444))
        .map_err(at("chmod", &machine_id))?;
    let dbus_id = root.join("var/lib/dbus/machine-id");
    if dbus_id
        .symlink_metadata()
        .is_ok_and(|m| !m.file_type().is_symlink())
    {
        fs::remove_file(&dbus_id).map_err(at("remove", &dbus_id))?;
    }
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
/// kernel-configs/) must be built in; `=m` may be a module or built in.
fn check_kernel_config(
    fragments: &[PathBuf],
    config: &str,
    kernel: &str,
) -> Result<(), ConfigureError> {
    match kernel_config_gaps(fragments, config)?.into_iter().next() {
        Some(gap) => Err(ConfigureError::KernelConfig {
            kernel: kernel.to_string(),
            fragment: gap.fragment.display().to_string(),
            missing: gap.missing.join(", "),
        }),
        None => Ok(()),
    }
}

/// What one fragment requires that a kernel config lacks.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelConfigGap {
    pub fragment: PathBuf,
    pub missing: Vec<String>,
}

/// Each fragment whose requirements `config` (a kernel `.config`) does not
/// meet, with what is missing; empty when all are met.
pub fn kernel_config_gaps(
    fragments: &[PathBuf],
    config: &str,
) -> Result<Vec<KernelConfigGap>, ConfigureError> {
    let have: BTreeMap<&str, &str> = config
        .lines()
        .map(str::trim)
        .filter_map(|l| l.split_once('='))
        .collect();
    let mut gaps = Vec::new();
    for file in fragments {
        let text = fs::read_to_string(file).map_err(at("read", file))?;
        let missing = missing_kernel_options(&text, &have);
        if !missing.is_empty() {
            gaps.push(KernelConfigGap {
                fragment: file.clone(),
                missing,
            });
        }
    }
    Ok(gaps)
}

pub fn missing_kernel_options(fragment: &str, have: &BTreeMap<&str, &str>) -> Vec<String> {
    fragment
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(key, want)| {
            let got = have.get(key).copied().unwrap_or("n");
            match *want {
                "m" => got != "y" && got != "m",
                _ => got != *want,
            }
        })
        .map(|(key, want)| format!("{key}={want}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_known_variables_and_reject_unknown_ones() {
        let vars = BTreeMap::from([("isolated_cpus", "2-N".to_string())]);
        let path = Path::new("t.tmpl");
        assert_eq!(
            render("a={{isolated_cpus}};", &vars, path).unwrap(),
            "a=2-N;"
        );
        let err = render("{{nope}}", &vars, path).unwrap_err().to_string();
        assert!(
            err.contains("`{{nope}}`") && err.contains("isolated_cpus"),
            "{err}"
        );
    }

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

    #[test]
    fn kernel_options_y_and_m() {
        let have = BTreeMap::from([("CONFIG_A", "y"), ("CONFIG_B", "m")]);
        let fragment = "# c\nCONFIG_A=m\nCONFIG_B=y\nCONFIG_C=m\n";
        assert_eq!(
            missing_kernel_options(fragment, &have),
            ["CONFIG_B=y", "CONFIG_C=m"]
        );
    }

    #[test]
    fn built_in_layers_load() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("rootfs");
        let vars = BTreeMap::from([
            ("default_user", "arch".to_string()),
            ("admin_group", "wheel".to_string()),
        ]);
        let trading = ["base".to_string(), "tuning".into(), "irqbalance-off".into()];
        let layers =
            resolve_layers(&data, &trading, &["distros/arch/layer".into()], &[], &vars).unwrap();
        assert_eq!(layers[0].name, "base");
        assert_eq!(layers[0].settings.users[0].name, "arch");
        assert_eq!(layers[0].settings.users[0].groups, ["wheel"]);
        assert_eq!(layers[1].name, "tuning");
        assert_eq!(layers.last().unwrap().name, "arch");
        let missing =
            resolve_layers(&data, &[], &[], &[PathBuf::from("/no/such/layer")], &vars).unwrap_err();
        assert!(missing.to_string().contains("/no/such/layer"));
    }
}
