//! The kernel-config check: every `CONFIG_X=y` of a tuning profile's
//! fragments (under `kernel-configs/`: EC2 Nitro for every profile, low
//! latency for the tuned ones) must be built in, and every `=m` a module or
//! built in. The build runs it against the image's kernel (configure), and
//! `imgforge kernel-check` against a kernel `.config` the user brings
//! (e.g. `/boot/config-$(uname -r)`, or `scripts/extract-ikconfig vmlinuz`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::DataDir;
use crate::profile::Profile;
use crate::sys::fsio::{PathError, at};

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
) -> Result<Vec<KernelConfigGap>, KernelCheckError> {
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

/// The `KEY=VALUE` lines of `fragment` that `have` does not satisfy.
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

/// `imgforge kernel-check`'s result: each of the profile's fragments with
/// what the config lacks of it.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub config: PathBuf,
    pub profile: String,
    pub passed: bool,
    pub fragments: Vec<FragmentOutcome>,
}

#[derive(Debug, Serialize)]
pub struct FragmentOutcome {
    pub fragment: String,
    pub missing: Vec<String>,
}

/// Checks the kernel config file `config` against `profile`'s fragments
/// (under `data`'s kernel-configs/).
pub fn check(
    config: &Path,
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
    let fragments = profile.kernel_config_paths(&data.path().join("kernel-configs"));
    let gaps = kernel_config_gaps(&fragments, &text)?;
    Ok(Outcome {
        config: config.to_path_buf(),
        profile: profile.name.clone(),
        passed: gaps.is_empty(),
        fragments: profile
            .kernel_configs
            .iter()
            .zip(&fragments)
            .map(|(name, path)| FragmentOutcome {
                fragment: name.clone(),
                missing: gaps
                    .iter()
                    .find(|g| &g.fragment == path)
                    .map(|g| g.missing.clone())
                    .unwrap_or_default(),
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

    #[test]
    fn kernel_options_y_and_m() {
        let have = BTreeMap::from([("CONFIG_A", "y"), ("CONFIG_B", "m")]);
        let fragment = "# c\nCONFIG_A=m\nCONFIG_B=y\nCONFIG_C=m\n";
        assert_eq!(
            missing_kernel_options(fragment, &have),
            ["CONFIG_B=y", "CONFIG_C=m"]
        );
    }
}
