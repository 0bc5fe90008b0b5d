//! The kernel-config check: every `CONFIG_X=y` of a tuning profile's
//! fragments (under `kernel-configs/`: EC2 Nitro for every profile, low
//! latency for the tuned ones) must be built in, or be a module the image's
//! initramfs carries where `kernel-configs/initramfs-modules.toml` allows it
//! (Arch's ext4: `=m`, loaded by mkinitcpio's `filesystems` hook); every
//! `=m` a module or built in. The build runs it against the image's kernel
//! and initramfs (configure), and `imgforge kernel-check` against a kernel
//! `.config` the user brings (e.g. `/boot/config-$(uname -r)`, or
//! `scripts/extract-ikconfig vmlinuz`), with `--initramfs` its initramfs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::DataDir;
use crate::profile::Profile;
use crate::sys::fsio::{PathError, at};

/// Beside the fragments: which `=y` a module in the initramfs may meet.
pub const MODULE_TABLE: &str = "initramfs-modules.toml";

#[derive(Debug, thiserror::Error)]
pub enum KernelCheckError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("cannot read the kernel config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} does not look like a kernel config (no CONFIG_ line)")]
    NotAConfig { path: PathBuf },
    #[error("the kernel config {config} does not meet profile {profile}: {gaps}")]
    Missing {
        config: PathBuf,
        profile: String,
        gaps: String,
    },
    #[error("{path}: {message}")]
    ModuleTable { path: PathBuf, message: String },
    #[error(transparent)]
    Initramfs(#[from] crate::initramfs::InitramfsError),
}

/// What one fragment requires that a kernel config lacks.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelConfigGap {
    pub fragment: PathBuf,
    pub missing: Vec<String>,
}

/// A `=y` requirement met by a module in the initramfs rather than built in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModuleFound {
    pub option: String,
    pub module: String,
    /// The module's path inside the initramfs.
    pub file: String,
}

/// Which modules may stand in for `=y`, and what the initramfs carries.
#[derive(Debug, Clone, Default)]
pub struct InitramfsModules {
    /// Option -> module name, from [`MODULE_TABLE`].
    pub allowed: BTreeMap<String, String>,
    /// Module name -> path inside the initramfs; None when no initramfs was
    /// read (then no module stands in for `=y`).
    pub carried: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModuleTableFile {
    modules: BTreeMap<String, String>,
}

impl InitramfsModules {
    /// [`MODULE_TABLE`] in the `kernel-configs` folder `dir`; `carried` is
    /// the initramfs's modules (see [`crate::initramfs::Initramfs::modules`]).
    pub fn load(
        dir: &Path,
        carried: Option<BTreeMap<String, String>>,
    ) -> Result<Self, KernelCheckError> {
        let path = dir.join(MODULE_TABLE);
        let text = fs::read_to_string(&path).map_err(at("read", &path))?;
        let table: ModuleTableFile =
            toml::from_str(&text).map_err(|e| KernelCheckError::ModuleTable {
                path: path.clone(),
                message: e.to_string(),
            })?;
        Ok(Self {
            allowed: table
                .modules
                .into_iter()
                .map(|(module, option)| (option, module))
                .collect(),
            carried,
        })
    }
}

/// The check's result: each unmet fragment, and each `=y` a module met.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checked {
    pub gaps: Vec<KernelConfigGap>,
    pub modules: Vec<(PathBuf, ModuleFound)>,
}

/// Each fragment whose requirements `config` (a kernel `.config`) does not
/// meet, with what is missing, and which `=y` were met by a module.
pub fn kernel_config_gaps(
    fragments: &[PathBuf],
    config: &str,
    modules: &InitramfsModules,
) -> Result<Checked, KernelCheckError> {
    let have: BTreeMap<&str, &str> = config
        .lines()
        .map(str::trim)
        .filter_map(|l| l.split_once('='))
        .collect();
    let mut checked = Checked::default();
    for file in fragments {
        let text = fs::read_to_string(file).map_err(at("read", file))?;
        let (missing, found) = missing_kernel_options(&text, &have, modules);
        checked
            .modules
            .extend(found.into_iter().map(|m| (file.clone(), m)));
        if !missing.is_empty() {
            checked.gaps.push(KernelConfigGap {
                fragment: file.clone(),
                missing,
            });
        }
    }
    Ok(checked)
}

/// The `KEY=VALUE` lines of `fragment` that `have` does not satisfy (a
/// `=y` met only as `=m` says what the initramfs lacked), and the `=y`
/// lines a module in the initramfs met.
pub fn missing_kernel_options(
    fragment: &str,
    have: &BTreeMap<&str, &str>,
    modules: &InitramfsModules,
) -> (Vec<String>, Vec<ModuleFound>) {
    let mut missing = Vec::new();
    let mut found = Vec::new();
    let wanted = fragment
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='));
    for (key, want) in wanted {
        let got = have.get(key).copied().unwrap_or("n");
        let met = match want {
            "m" => got == "y" || got == "m",
            _ => got == want,
        };
        if met {
            continue;
        }
        let module = modules
            .allowed
            .get(key)
            .filter(|_| want == "y" && got == "m");
        let Some(module) = module else {
            missing.push(format!("{key}={want}"));
            continue;
        };
        match modules.carried.as_ref().map(|c| c.get(module)) {
            Some(Some(file)) => found.push(ModuleFound {
                option: key.to_string(),
                module: module.clone(),
                file: file.clone(),
            }),
            Some(None) => missing.push(format!(
                "{key}={want} (the kernel has it as a module, =m, and the initramfs lacks {module})"
            )),
            None => missing.push(format!(
                "{key}={want} (the kernel has it as a module, =m: pass the initramfs \
                 (--initramfs FILE) to accept {module} there)"
            )),
        }
    }
    (missing, found)
}

/// The build's check of the image's kernel: `config` against `fragments`
/// (files of the `kernel-configs` folder `dir`). The initramfs `initrd` is
/// read only when a `=y` that [`MODULE_TABLE`] allows as a module is `=m`.
pub fn check_image(
    dir: &Path,
    fragments: &[PathBuf],
    config: &str,
    initrd: &Path,
) -> Result<Checked, KernelCheckError> {
    let mut modules = InitramfsModules::load(dir, None)?;
    let as_module = modules
        .allowed
        .keys()
        .any(|option| config.lines().any(|l| l.trim() == format!("{option}=m")));
    if as_module {
        modules.carried = Some(crate::initramfs::read(initrd)?.modules());
    }
    kernel_config_gaps(fragments, config, &modules)
}

/// `imgforge kernel-check`'s result: each of the profile's fragments with
/// what the config lacks of it and which `=y` a module in the initramfs met.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub config: PathBuf,
    pub profile: String,
    pub passed: bool,
    /// The initramfs read (--initramfs), if any.
    pub initramfs: Option<PathBuf>,
    pub fragments: Vec<FragmentOutcome>,
}

#[derive(Debug, Serialize)]
pub struct FragmentOutcome {
    pub fragment: String,
    pub missing: Vec<String>,
    /// `=y` requirements met by a module in the initramfs, not built in.
    pub modules: Vec<ModuleFound>,
}

/// Checks the kernel config file `config` against `profile`'s fragments
/// (under `data`'s kernel-configs/); with `initramfs`, a module it carries
/// meets a `=y` that [`MODULE_TABLE`] allows.
pub fn check(
    config: &Path,
    initramfs: Option<&Path>,
    profile: &Profile,
    data: &DataDir,
) -> Result<Outcome, KernelCheckError> {
    let text = fs::read_to_string(config).map_err(|source| KernelCheckError::Read {
        path: config.to_path_buf(),
        source,
    })?;
    if !text.lines().any(|l| l.contains("CONFIG_")) {
        return Err(KernelCheckError::NotAConfig {
            path: config.to_path_buf(),
        });
    }
    let carried = match initramfs {
        Some(path) => Some(crate::initramfs::read(path)?.modules()),
        None => None,
    };
    let dir = data.path().join("kernel-configs");
    let modules = InitramfsModules::load(&dir, carried)?;
    let fragments = profile.kernel_config_paths(&dir);
    let checked = kernel_config_gaps(&fragments, &text, &modules)?;
    Ok(Outcome {
        config: config.to_path_buf(),
        profile: profile.name.clone(),
        passed: checked.gaps.is_empty(),
        initramfs: initramfs.map(Path::to_path_buf),
        fragments: profile
            .kernel_configs
            .iter()
            .zip(&fragments)
            .map(|(name, path)| FragmentOutcome {
                fragment: name.clone(),
                missing: checked
                    .gaps
                    .iter()
                    .find(|g| &g.fragment == path)
                    .map(|g| g.missing.clone())
                    .unwrap_or_default(),
                modules: checked
                    .modules
                    .iter()
                    .filter(|(f, _)| f == path)
                    .map(|(_, m)| m.clone())
                    .collect(),
            })
            .collect(),
    })
}

impl Outcome {
    /// `Err(Missing)` naming each unmet fragment, unless the check passed.
    pub fn verdict(&self) -> Result<(), KernelCheckError> {
        if self.passed {
            return Ok(());
        }
        Err(KernelCheckError::Missing {
            config: self.config.clone(),
            profile: self.profile.clone(),
            gaps: self
                .fragments
                .iter()
                .filter(|f| !f.missing.is_empty())
                .map(|f| format!("{} needs {}", f.fragment, f.missing.join(", ")))
                .collect::<Vec<_>>()
                .join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(carried: Option<&[(&str, &str)]>) -> InitramfsModules {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernel-configs");
        InitramfsModules::load(
            &dir,
            carried.map(|c| {
                c.iter()
                    .map(|(m, f)| (m.to_string(), f.to_string()))
                    .collect()
            }),
        )
        .unwrap()
    }

    #[test]
    fn kernel_options_y_and_m() {
        let have = BTreeMap::from([("CONFIG_A", "y"), ("CONFIG_B", "m")]);
        let fragment = "# c\nCONFIG_A=m\nCONFIG_B=y\nCONFIG_C=m\n";
        let (missing, found) = missing_kernel_options(fragment, &have, &table(Some(&[])));
        assert_eq!(missing, ["CONFIG_B=y", "CONFIG_C=m"]);
        assert!(found.is_empty());
    }

    /// Arch's `linux` config, as its IKCONFIG has these lines: ext4 and
    /// what it needs are modules, the rest of cloud.config built in.
    const ARCH_LINUX: &str = include_str!("../tests/fixtures/arch-linux.config");
    const EXT4: &str = "usr/lib/modules/6.12.1-arch1-1/kernel/fs/ext4/ext4.ko.zst";

    fn cloud_config() -> Vec<PathBuf> {
        vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("kernel-configs/cloud.config")]
    }

    #[test]
    fn arch_ext4_module_passes_when_the_initramfs_carries_it_and_says_so() {
        let initramfs = [
            ("ext4", EXT4),
            (
                "jbd2",
                "usr/lib/modules/6.12.1-arch1-1/kernel/fs/jbd2/jbd2.ko.zst",
            ),
            (
                "mbcache",
                "usr/lib/modules/6.12.1-arch1-1/kernel/fs/mbcache.ko.zst",
            ),
        ];
        let checked =
            kernel_config_gaps(&cloud_config(), ARCH_LINUX, &table(Some(&initramfs))).unwrap();
        assert!(checked.gaps.is_empty(), "{:?}", checked.gaps);
        let found: Vec<(&str, &str)> = checked
            .modules
            .iter()
            .map(|(_, m)| (m.option.as_str(), m.module.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("CONFIG_EXT4_FS", "ext4"),
                ("CONFIG_JBD2", "jbd2"),
                ("CONFIG_FS_MBCACHE", "mbcache")
            ]
        );
        assert_eq!(checked.modules[0].1.file, EXT4);
    }

    #[test]
    fn arch_ext4_module_fails_when_the_initramfs_lacks_it_or_none_was_read() {
        let no_ext4 = [(
            "jbd2",
            "usr/lib/modules/6.12.1-arch1-1/kernel/fs/jbd2/jbd2.ko.zst",
        )];
        let checked =
            kernel_config_gaps(&cloud_config(), ARCH_LINUX, &table(Some(&no_ext4))).unwrap();
        let missing = &checked.gaps[0].missing;
        assert!(
            missing[0].starts_with("CONFIG_EXT4_FS=y") && missing[0].contains("lacks ext4"),
            "{missing:?}"
        );
        assert!(
            missing.iter().any(|m| m.contains("lacks mbcache")),
            "{missing:?}"
        );
        // jbd2 is there: that one is found, not missing.
        assert!(!missing.iter().any(|m| m.contains("JBD2")), "{missing:?}");
        let checked = kernel_config_gaps(&cloud_config(), ARCH_LINUX, &table(None)).unwrap();
        assert!(
            checked.gaps[0].missing[0].contains("--initramfs"),
            "{:?}",
            checked.gaps
        );
        // An option the table does not name is never met by a module: EFI=m
        // stays missing however the initramfs looks.
        let efi_module = ARCH_LINUX.replace("CONFIG_EFI=y", "CONFIG_EFI=m");
        let checked = kernel_config_gaps(&cloud_config(), &efi_module, &table(Some(&[]))).unwrap();
        assert!(
            checked.gaps[0]
                .missing
                .contains(&"CONFIG_EFI=y".to_string())
        );
    }

    /// Debian's cloud kernel builds ext4 in: "built in", no module needed.
    #[test]
    fn builtin_ext4_needs_no_initramfs() {
        let debian = ARCH_LINUX
            .replace("CONFIG_EXT4_FS=m", "CONFIG_EXT4_FS=y")
            .replace("CONFIG_JBD2=m", "CONFIG_JBD2=y")
            .replace("CONFIG_FS_MBCACHE=m", "CONFIG_FS_MBCACHE=y");
        let checked = kernel_config_gaps(&cloud_config(), &debian, &table(None)).unwrap();
        assert_eq!(checked, Checked::default());
    }
}
