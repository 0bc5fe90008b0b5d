//! `imgforge kernel-check CONFIG_FILE [--profile P]`: the build's kernel
//! config check for a kernel the user brings: the profile's fragments under
//! `kernel-configs/` (EC2 Nitro for every profile, low latency for the tuned
//! ones) against a kernel `.config` (e.g. `/boot/config-$(uname -r)`, or
//! `scripts/extract-ikconfig vmlinuz`).

use std::path::PathBuf;

use serde::Serialize;

use crate::build::configure::{self, ConfigureError};
use crate::data::{DataDir, DataError};
use crate::profile::{ProfileError, Profiles};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  imgforge kernel-check /boot/config-$(uname -r)\n  \
imgforge kernel-check ./linux/.config --profile base --json"
)]
pub struct KernelCheckArgs {
    /// A kernel config file (`.config`, /boot/config-VERSION).
    pub config: PathBuf,
    /// The profile whose requirements apply (default: the default profile,
    /// trading).
    #[arg(long)]
    pub profile: Option<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Read kernel-configs/ and rootfs/profiles.toml from this folder.
    #[arg(long, env = "IMGFORGE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelCheckError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Configure(#[from] ConfigureError),
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

#[derive(Debug, Serialize)]
struct Outcome {
    config: PathBuf,
    profile: String,
    passed: bool,
    fragments: Vec<FragmentOutcome>,
}

#[derive(Debug, Serialize)]
struct FragmentOutcome {
    fragment: String,
    missing: Vec<String>,
}

pub fn run(args: &KernelCheckArgs) -> Result<(), KernelCheckError> {
    let data = DataDir::open(args.data_dir.as_deref())?;
    let profile = Profiles::load(&data)?.choose(args.profile.as_deref())?;
    let config =
        std::fs::read_to_string(&args.config).map_err(|source| KernelCheckError::Read {
            path: args.config.clone(),
            source,
        })?;
    if !config.lines().any(|l| l.contains("CONFIG_")) {
        return Err(KernelCheckError::NotAConfig {
            path: args.config.clone(),
        });
    }
    let fragments = profile.kernel_config_paths(&data.path().join("kernel-configs"));
    let gaps = configure::kernel_config_gaps(&fragments, &config)?;
    let outcome = Outcome {
        config: args.config.clone(),
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
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&outcome).expect("outcome serializes")
        );
    } else {
        for f in &outcome.fragments {
            if f.missing.is_empty() {
                println!("ok      {}", f.fragment);
            } else {
                println!("MISSING {}: {}", f.fragment, f.missing.join(", "));
            }
        }
    }
    if outcome.passed {
        Ok(())
    } else {
        Err(KernelCheckError::Missing {
            config: args.config.clone(),
            profile: profile.name,
            gaps: outcome
                .fragments
                .iter()
                .filter(|f| !f.missing.is_empty())
                .map(|f| format!("{} needs {}", f.fragment, f.missing.join(", ")))
                .collect::<Vec<_>>()
                .join("; "),
        })
    }
}
