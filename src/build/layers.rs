//! Layers: folders of files copied into the image, each with an optional
//! `layer.toml` (units to enable or disable, users to create). Which ones a
//! build gets is resolved here: the tuning profile's, the distro's and the
//! first-boot mode's (under rootfs/), then the `--layer` folders.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::template::{self, TemplateError};

/// A layer's own settings file, at the layer's top; never copied.
pub const LAYER_SETTINGS: &str = "layer.toml";

#[derive(Debug, thiserror::Error)]
pub enum LayersError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("layer folder {0} does not exist (check --layer)")]
    MissingLayer(PathBuf),
    #[error("{path}: {message}")]
    Settings { path: PathBuf, message: String },
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
    /// More units to enable, picked by an installed package's version
    /// (see [`super::units`]).
    #[serde(default)]
    pub enable_from: Vec<super::units::EnableFrom>,
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
) -> Result<Vec<Layer>, LayersError> {
    let dirs = profile_layers
        .iter()
        .chain(distro_layers)
        .map(|name| rootfs_data.join(name))
        .chain(extra.iter().cloned());
    dirs.map(|dir| Layer::load(&dir, vars)).collect()
}

impl Layer {
    pub fn load(dir: &Path, vars: &BTreeMap<&str, String>) -> Result<Self, LayersError> {
        if !dir.is_dir() {
            return Err(LayersError::MissingLayer(dir.to_path_buf()));
        }
        let settings_path = dir.join(LAYER_SETTINGS);
        let settings =
            match fs::read_to_string(&settings_path) {
                Ok(text) => toml::from_str(&template::render(&text, vars, &settings_path)?)
                    .map_err(|e| LayersError::Settings {
                        path: settings_path.clone(),
                        message: e.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
