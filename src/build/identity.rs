//! The image's machine identity, reset so that each instance makes its own
//! and systemd counts the instance's first boot as one (machine-id(5),
//! "First Boot Semantics"), and the lint that the layers' first-boot units
//! can run at all.
//!
//! An image whose layers have first-boot units (Arch's keyring unit) gets
//! `/etc/machine-id` = `uninitialized`: systemd then generates an ID,
//! treats the boot as the first (`ConditionFirstBoot=yes` units run) and
//! commits the ID once the root is writable (systemd-machine-id-commit). An
//! empty file gives an ID but no first boot, so first-boot units are
//! skipped silently; a missing file is a first boot too, but with a
//! read-only root systemd has no file to bind-mount the ID over. Debian's
//! and Arch's systemd both read `uninitialized` (systemd 247 and later).
//!
//! A first boot also starts systemd-firstboot.service, which prompts on the
//! console for what is not configured (locale, time zone, keymap; the root
//! password is taken as set when /etc/shadow exists). Nobody answers an EC2
//! console, so the values it would ask for are written where absent.
//!
//! An image without first-boot units (Debian's today) keeps an empty file,
//! as Debian's own cloud images do: it needs no first boot, and its
//! launch rehearsals stalled on the reboot after a counted first boot (seen
//! in 3 of 4 rehearsals, cause not found), while the empty file has passed
//! every rehearsal so far.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use crate::sys::fsio::{PathError, at};

/// What /etc/machine-id holds in an image with first-boot units.
pub const MACHINE_ID: &str = "uninitialized\n";

/// What it holds in an image without any: an ID per instance, no first boot.
pub const MACHINE_ID_NO_FIRST_BOOT: &str = "";

/// Where the layers put their units.
const UNIT_DIR: &str = "etc/systemd/system";

/// What systemd-firstboot would prompt for, written when the tree has not
/// got it: (file, contents or, for localtime, the symlink's target, what
/// must be in the tree for the value to mean something).
const FIRSTBOOT_PRESETS: &[(&str, &str, Option<&str>)] = &[
    ("etc/locale.conf", "LANG=C.UTF-8\n", None),
    (
        "etc/vconsole.conf",
        "KEYMAP=us\n",
        Some("usr/share/kbd/keymaps"),
    ),
    (
        "etc/localtime",
        "/usr/share/zoneinfo/UTC",
        Some("usr/share/zoneinfo/UTC"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(
        "{unit} has ConditionFirstBoot=yes, but the image's /etc/machine-id ({content}) does not \
         make systemd count the first boot (machine-id(5): only a missing file or `uninitialized` \
         does), so the unit would never run; reset the identity with build::identity::MACHINE_ID"
    )]
    FirstBootNeverRuns { unit: String, content: String },
}

/// Whether systemd counts a boot as the first with this /etc/machine-id
/// (`None`: no such file), as machine-id(5) says.
pub fn counts_as_first_boot(machine_id: Option<&str>) -> bool {
    match machine_id {
        None => true,
        Some(content) => content.trim() == "uninitialized",
    }
}

/// Resets the tree's identity: machine-id, D-Bus's copy, and (when the
/// layers' units need a counted first boot) the settings systemd-firstboot
/// would prompt for. Call it after the layers are copied.
pub fn reset(root: &Path) -> Result<(), IdentityError> {
    let first_boot = !first_boot_units(&root.join(UNIT_DIR))?.is_empty();
    let machine_id = root.join("etc/machine-id");
    let content = if first_boot {
        MACHINE_ID
    } else {
        MACHINE_ID_NO_FIRST_BOOT
    };
    fs::write(&machine_id, content).map_err(at("write", &machine_id))?;
    fs::set_permissions(&machine_id, fs::Permissions::from_mode(0o444))
        .map_err(at("chmod", &machine_id))?;
    let dbus_id = root.join("var/lib/dbus/machine-id");
    if dbus_id
        .symlink_metadata()
        .is_ok_and(|m| !m.file_type().is_symlink())
    {
        fs::remove_file(&dbus_id).map_err(at("remove", &dbus_id))?;
    }
    if !first_boot {
        return Ok(());
    }
    for (file, value, needs) in FIRSTBOOT_PRESETS {
        let path = root.join(file);
        if path.symlink_metadata().is_ok() || needs.is_some_and(|n| !root.join(n).exists()) {
            continue;
        }
        if file.ends_with("localtime") {
            symlink(value, &path).map_err(at("symlink", &path))?;
        } else {
            fs::write(&path, value).map_err(at("write", &path))?;
        }
    }
    Ok(())
}

/// The lint: every unit under etc/systemd/system with
/// `ConditionFirstBoot=yes` needs a machine-id that counts as a first boot.
pub fn check_first_boot_units(root: &Path) -> Result<Vec<String>, IdentityError> {
    let units = first_boot_units(&root.join(UNIT_DIR))?;
    let machine_id = root.join("etc/machine-id");
    let content = fs::read_to_string(&machine_id).ok();
    if let Some(unit) = units.first()
        && !counts_as_first_boot(content.as_deref())
    {
        return Err(IdentityError::FirstBootNeverRuns {
            unit: unit.clone(),
            content: match content.as_deref().map(str::trim) {
                Some("") => "empty".into(),
                Some(other) => format!("`{other}`"),
                None => "missing".into(),
            },
        });
    }
    Ok(units)
}

/// The units in `dir` whose [Unit] has `ConditionFirstBoot=` true.
pub fn first_boot_units(dir: &Path) -> Result<Vec<String>, IdentityError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    let mut units = Vec::new();
    for path in paths {
        if !path.is_file() {
            continue;
        }
        let text = fs::read_to_string(&path).map_err(at("read", &path))?;
        let first_boot = text.lines().any(|l| {
            l.trim()
                .strip_prefix("ConditionFirstBoot=")
                .is_some_and(|v| matches!(v.trim(), "yes" | "true" | "1" | "on"))
        });
        if first_boot {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            units.push(name.trim_end_matches(".tmpl").to_string());
        }
    }
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_boot_semantics_of_machine_id() {
        assert!(counts_as_first_boot(None));
        assert!(counts_as_first_boot(Some(MACHINE_ID)));
        assert!(!counts_as_first_boot(Some("")));
        assert!(!counts_as_first_boot(Some(
            "b08dfa6083e7567a1921a715000001fb\n"
        )));
    }

    /// The lint over the real layers: Arch's keyring unit is a first-boot
    /// unit; with the empty machine-id the build used to write it fails,
    /// naming the unit; after [`reset`] it passes.
    #[test]
    fn an_empty_machine_id_fails_the_lint_for_the_keyring_unit() {
        let layer = Path::new(env!("CARGO_MANIFEST_DIR")).join("rootfs/distros/arch/layer");
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join(UNIT_DIR)).unwrap();
        for unit in first_boot_units(&layer.join(UNIT_DIR)).unwrap() {
            fs::copy(
                layer.join(UNIT_DIR).join(&unit),
                r.join(UNIT_DIR).join(&unit),
            )
            .unwrap();
        }
        fs::write(r.join("etc/machine-id"), "").unwrap();
        let err = check_first_boot_units(r).unwrap_err().to_string();
        assert!(
            err.contains("imgforge-pacman-init.service") && err.contains("empty"),
            "{err}"
        );
        fs::remove_file(r.join("etc/machine-id")).unwrap();
        reset(r).unwrap();
        assert_eq!(
            check_first_boot_units(r).unwrap(),
            ["imgforge-pacman-init.service"]
        );
        assert_eq!(
            fs::read_to_string(r.join("etc/machine-id")).unwrap(),
            "uninitialized\n"
        );
        // systemd-firstboot gets nothing to prompt for that the tree can
        // have: the locale is written; the time zone and keymap only where
        // their data is in the tree (not in this bare one).
        assert!(r.join("etc/locale.conf").is_file());
        assert!(r.join("etc/localtime").symlink_metadata().is_err());
    }

    #[test]
    fn an_image_without_first_boot_units_keeps_an_empty_machine_id() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join(UNIT_DIR)).unwrap();
        fs::write(
            r.join(UNIT_DIR).join("plain.service"),
            "[Unit]\nDescription=x\n",
        )
        .unwrap();
        reset(r).unwrap();
        assert_eq!(fs::read_to_string(r.join("etc/machine-id")).unwrap(), "");
        assert!(!r.join("etc/locale.conf").exists());
        assert!(check_first_boot_units(r).unwrap().is_empty());
    }

    #[test]
    fn existing_settings_are_kept() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::create_dir_all(r.join(UNIT_DIR)).unwrap();
        fs::write(
            r.join(UNIT_DIR).join("once.service"),
            "[Unit]\nConditionFirstBoot=yes\n",
        )
        .unwrap();
        fs::create_dir_all(r.join("usr/share/zoneinfo")).unwrap();
        fs::write(r.join("usr/share/zoneinfo/UTC"), "TZif").unwrap();
        fs::write(r.join("etc/locale.conf"), "LANG=de_DE.UTF-8\n").unwrap();
        reset(r).unwrap();
        assert_eq!(
            fs::read_to_string(r.join("etc/locale.conf")).unwrap(),
            "LANG=de_DE.UTF-8\n"
        );
        assert_eq!(
            fs::read_link(r.join("etc/localtime")).unwrap(),
            Path::new("/usr/share/zoneinfo/UTC")
        );
        assert!(!r.join("etc/vconsole.conf").exists());
    }
}
