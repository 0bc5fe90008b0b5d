//! The first-boot modes (`rootfs/first-boot.toml`): how an instance sets
//! itself up at first boot (`imgforge`'s lean units or `cloud-init`), each a
//! stanza of layers and packages plus the probes `boot-test --ec2` reads
//! its user-data outcome with. A mode is data only: the build takes its
//! layers and packages, boot-test its probes.

use std::collections::BTreeMap;

use crate::data::{DataDir, DataError};

const FIRST_BOOT_TABLE: &str = "rootfs/first-boot.toml";

#[derive(Debug, thiserror::Error)]
pub enum FirstBootError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{path}: {message}")]
    Table { path: &'static str, message: String },
    #[error("unknown --first-boot `{given}`; choose one of: {known}")]
    UnknownFirstBoot { given: String, known: String },
}

/// `rootfs/first-boot.toml`: how instances set themselves up at first boot.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstBootModes {
    default: String,
    mode: BTreeMap<String, FirstBootMode>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstBootMode {
    #[serde(skip)]
    pub name: String,
    pub layers: Vec<String>,
    pub packages: Vec<String>,
    pub rehearsal: RehearsalProbes,
}

/// How `boot-test --ec2` reads a mode's user-data outcome in the guest:
/// shell commands run over SSH as the default user (`{instance_id}` is
/// replaced).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RehearsalProbes {
    /// Prints the user-data script's exit status, or `none` / a word when
    /// no script ran.
    pub user_data_status: String,
    /// Prints the last lines of the user-data run's output.
    pub user_data_output: String,
    /// Prints a line when this boot skipped user-data as already run.
    pub user_data_skipped: String,
}

impl FirstBootModes {
    pub fn read(data: &DataDir) -> Result<Self, FirstBootError> {
        let text = data.read_to_string(FIRST_BOOT_TABLE)?;
        toml::from_str(&text).map_err(|e| FirstBootError::Table {
            path: FIRST_BOOT_TABLE,
            message: e.to_string(),
        })
    }

    /// The mode an image was built with, from the layers its manifest
    /// lists.
    pub fn of_layers(self, layers: &[String]) -> Option<FirstBootMode> {
        self.mode.into_iter().find_map(|(name, mode)| {
            mode.layers
                .iter()
                .all(|l| layers.contains(l))
                .then_some(FirstBootMode { name, ..mode })
        })
    }

    /// The mode called `name`, or the table's default.
    pub fn choose(mut self, name: Option<&str>) -> Result<FirstBootMode, FirstBootError> {
        let name = name.unwrap_or(&self.default).to_string();
        let known = self.mode.keys().cloned().collect::<Vec<_>>().join(", ");
        let mut mode = self
            .mode
            .remove(&name)
            .ok_or(FirstBootError::UnknownFirstBoot {
                given: name.clone(),
                known,
            })?;
        mode.name = name;
        Ok(mode)
    }
}
