//! Reading `imgforge.toml`: a `[defaults]` table and `[[image]]` variants
//! that override it, checked against [`super::settings::SETTINGS`]. A
//! variant becomes command-line flags placed *before* the user's own, so
//! flags given on the command line override the file (the last value wins;
//! lists such as tags add up). Errors name the file, the line and the key.
//!
//! ```toml
//! [defaults]
//! distro = "debian"
//! regions = ["eu-west-1", "us-west-2"]
//! ami_name = "{image}-{date}"
//! ssm_parameter = "/images/{image}/latest"
//! deprecate_in = "90d"
//! [defaults.tags]
//! team = "infra"
//!
//! [[image]]
//! name = "trading-large"
//! size_class = "large"
//! tuning = "trading"
//! packages = ["linux-cpupower"]
//! ```

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use toml::Spanned;

use super::settings::{self, For, Kind, RENAMED, SETTINGS, validate};

/// A value with where it came from.
#[derive(Debug, Clone)]
struct Located {
    value: toml::Value,
    /// For messages about a value (and the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    line: usize,
}

/// One variant after merging: key -> value, defaults first, the variant's own on top.
#[derive(Debug, Clone)]
pub struct Variant {
    pub name: String,
    values: BTreeMap<String, Located>,
}

/// A checked `imgforge.toml`.
#[derive(Debug)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub variants: Vec<Variant>,
    /// Deprecated keys and likely mistakes, `file:line: ...` (printed by `load`).
    pub warnings: Vec<String>,
}

fn line_of(text: &str, span: Range<usize>) -> usize {
    text[..span.start.min(text.len())].matches('\n').count() + 1
}

fn error_at(path: &Path, line: usize, key: &str, message: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{}:{line}: key `{key}`: {message}", path.display())
}

type Table = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    defaults: Option<Spanned<Table>>,
    #[serde(default)]
    image: Vec<Spanned<Table>>,
}

/// The file's text while it is read, for line numbers and warnings.
struct Reader<'a> {
    path: &'a Path,
    text: &'a str,
    warnings: Vec<String>,
}

impl Reader<'_> {
    /// One table's keys, checked; a variant's `name` is left out.
    fn table(&mut self, table: &Table) -> anyhow::Result<BTreeMap<String, Located>> {
        let mut out = BTreeMap::new();
        for (key, value) in table {
            let line = line_of(self.text, key.span());
            let mut name = key.get_ref().as_str();
            if name == "name" {
                continue;
            }
            if let Some((old, new)) = RENAMED.iter().find(|(old, _)| *old == name) {
                self.warnings.push(format!(
                    "{}:{line}: key `{old}` is now `{new}` (the old name is read for one release)",
                    self.path.display()
                ));
                name = new;
            }
            let Some(setting) = settings::lookup(name) else {
                let known: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
                return Err(error_at(
                    self.path,
                    line,
                    name,
                    format!(
                        "unknown key; known keys: name (in [[image]]), {}",
                        known.join(", ")
                    ),
                ));
            };
            let value_line = line_of(self.text, value.span());
            validate(setting, value.get_ref())
                .map_err(|m| error_at(self.path, value_line, name, m))?;
            if name == "profile"
                && let Some(hint) = value
                    .get_ref()
                    .as_str()
                    .and_then(settings::tuning_profile_hint)
            {
                self.warnings
                    .push(format!("{}:{value_line}: {hint}", self.path.display()));
            }
            out.insert(
                name.to_string(),
                Located {
                    value: value.get_ref().clone(),
                    line: value_line,
                },
            );
        }
        Ok(out)
    }

    /// A variant's `name`: present, a non-empty string.
    fn variant_name(&self, table: &Spanned<Table>) -> anyhow::Result<String> {
        let line = line_of(self.text, table.span());
        match table.get_ref().iter().find(|(k, _)| k.get_ref() == "name") {
            Some((_, v)) => match v.get_ref() {
                toml::Value::String(s) if !s.is_empty() => Ok(s.clone()),
                _ => Err(error_at(
                    self.path,
                    line_of(self.text, v.span()),
                    "name",
                    "a variant's name is a non-empty string",
                )),
            },
            None => Err(error_at(
                self.path,
                line,
                "name",
                "every [[image]] needs a name (e.g. name = \"trading-large\")",
            )),
        }
    }
}

impl ConfigFile {
    /// Reads and checks the file; its warnings go to stderr.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let file = Self::parse(path, &text)?;
        for warning in &file.warnings {
            eprintln!("imgforge: warning: {warning}");
        }
        Ok(file)
    }

    pub fn parse(path: &Path, text: &str) -> anyhow::Result<Self> {
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s)).unwrap_or(0);
            anyhow::anyhow!(
                "{}:{line}: {} (the file has a [defaults] table and [[image]] tables)",
                path.display(),
                e.message()
            )
        })?;
        let mut reader = Reader {
            path,
            text,
            warnings: Vec::new(),
        };
        let defaults = match &raw.defaults {
            Some(table) => reader.table(table.get_ref())?,
            None => BTreeMap::new(),
        };
        let mut variants: Vec<Variant> = Vec::new();
        for table in &raw.image {
            let name = reader.variant_name(table)?;
            if variants.iter().any(|v| v.name == name) {
                let line = line_of(text, table.span());
                return Err(error_at(
                    path,
                    line,
                    "name",
                    format!("{name:?} is defined twice"),
                ));
            }
            let mut values = defaults.clone();
            values.extend(reader.table(table.get_ref())?);
            variants.push(Variant { name, values });
        }
        if variants.is_empty() {
            bail!(
                "{}: no [[image]] variant; add one, e.g.\n[[image]]\nname = \"base\"",
                path.display()
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            variants,
            warnings: reader.warnings,
        })
    }

    pub fn variant(&self, name: &str) -> anyhow::Result<&Variant> {
        self.variants
            .iter()
            .find(|v| v.name == name)
            .with_context(|| {
                format!(
                    "{}: no [[image]] named {name:?}; the file has {}",
                    self.path.display(),
                    self.names().join(", ")
                )
            })
    }

    pub fn names(&self) -> Vec<&str> {
        self.variants.iter().map(|v| v.name.as_str()).collect()
    }
}

fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    imgforge::aws::ami::names::format_rfc3339(secs)[..10].replace('-', "")
}

impl Variant {
    fn render(&self, text: &str) -> String {
        text.replace("{image}", &self.name)
            .replace("{date}", &today())
    }

    /// The image file a build of this variant writes: its `output`, else NAME.raw.
    pub fn output(&self) -> String {
        match self.values.get("output").map(|l| &l.value) {
            Some(toml::Value::String(path)) => self.render(path),
            _ => format!("{}.raw", self.name),
        }
    }

    /// The flags this variant means for `command`.
    pub fn flags(&self, command: For) -> Vec<String> {
        let mut out = Vec::new();
        for setting in SETTINGS {
            let Some(target) = setting.target(command) else {
                continue;
            };
            let Some(located) = self.values.get(setting.key) else {
                continue;
            };
            let flag = target.flag.to_string();
            let text = |v: &str| {
                // upload fills {date} from the image's manifest (the build
                // date), so that a rerun on another day resumes.
                let v = match command {
                    For::Upload => v.replace("{image}", &self.name),
                    _ => self.render(v),
                };
                target.convert.map_or(v.clone(), |convert| convert(&v))
            };
            match (&located.value, setting.kind) {
                (toml::Value::String(v), _) => out.extend([flag, text(v)]),
                (toml::Value::Integer(n), _) => out.extend([flag, text(&n.to_string())]),
                (toml::Value::Boolean(true), _) => out.push(flag),
                (toml::Value::Array(items), Kind::List { joined }) => {
                    let items: Vec<String> =
                        items.iter().filter_map(|i| i.as_str().map(text)).collect();
                    if items.is_empty() {
                        continue;
                    }
                    if joined {
                        out.extend([flag, items.join(",")]);
                    } else {
                        for item in items {
                            out.extend([flag.clone(), item]);
                        }
                    }
                }
                (toml::Value::Table(t), _) => {
                    for (k, v) in t {
                        out.extend([
                            flag.clone(),
                            format!("{k}={}", v.as_str().unwrap_or_default()),
                        ]);
                    }
                }
                _ => {}
            }
        }
        if command == For::Build && !self.values.contains_key("output") {
            out.extend(["--output".to_string(), self.output()]);
        }
        // A variant is an image family: its AMIs are tagged with its name.
        if command == For::Upload && !self.values.contains_key("family") {
            out.extend(["--family".to_string(), self.name.clone()]);
        }
        out
    }

    /// The merged settings as JSON (`config show`, `config matrix`).
    pub fn to_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        map.insert("name".into(), json!(self.name));
        for (key, located) in &self.values {
            let value = serde_json::to_value(&located.value).unwrap_or(Value::Null);
            let value = match value {
                Value::String(s) => Value::String(self.render(&s)),
                other => other,
            };
            map.insert(key.clone(), value);
        }
        map.insert("build_args".into(), json!(self.flags(For::Build)));
        map.insert("upload_args".into(), json!(self.flags(For::Upload)));
        Value::Object(map)
    }

    #[cfg(test)]
    pub fn line_of(&self, key: &str) -> Option<usize> {
        self.values.get(key).map(|l| l.line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[defaults]
distro = "debian"
regions = ["eu-west-1"]
ami_name = "{image}-v1"
ssm_parameter = "/images/{image}/latest"
[defaults.tags]
team = "infra"

[[image]]
name = "trading-small"
size_class = "small"
tuning = "base"
profile = "prod"
first_boot = "cloud-init"

[[image]]
name = "trading-large"
size_class = "large"
packages = ["a", "b"]
regions = ["us-west-2", "eu-west-1"]
"#;

    #[test]
    fn variants_override_defaults() {
        let file = ConfigFile::parse(Path::new("f.toml"), GOOD).unwrap();
        let large = file.variant("trading-large").unwrap();
        let flags = large.flags(For::Upload);
        assert!(
            flags
                .windows(2)
                .any(|w| w == ["--copy-to", "us-west-2,eu-west-1"])
        );
        assert!(
            flags
                .windows(2)
                .any(|w| w == ["--name", "trading-large-v1"])
        );
        assert!(
            flags
                .windows(2)
                .any(|w| w == ["--ssm-parameter", "/images/trading-large/latest"])
        );
        assert!(flags.windows(2).any(|w| w == ["--tag", "team=infra"]));
        let build = large.flags(For::Build);
        assert!(build.windows(2).any(|w| w == ["--packages", "a,b"]));
        assert!(
            build
                .windows(2)
                .any(|w| w == ["--output", "trading-large.raw"])
        );
        assert_eq!(
            file.variant("trading-small").unwrap().line_of("size_class"),
            Some(12)
        );
        let small = file.variant("trading-small").unwrap().flags(For::Build);
        assert!(small.windows(2).any(|w| w == ["--tuning", "base"]));
        assert!(!small.iter().any(|f| f == "--profile"), "profile is AWS's");
        let small_upload = file.variant("trading-small").unwrap().flags(For::Upload);
        assert!(small_upload.windows(2).any(|w| w == ["--profile", "prod"]));
        assert!(
            small
                .windows(2)
                .any(|w| w == ["--first-boot", "cloud-init"])
        );
        assert!(
            !build.iter().any(|f| f == "--tuning"),
            "unset keys give no flag"
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let bad_key =
            "[defaults]\ndistro = \"debian\"\nsise_class = \"large\"\n[[image]]\nname = \"x\"\n";
        let err = ConfigFile::parse(Path::new("f.toml"), bad_key)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("f.toml:3: key `sise_class`: unknown key"),
            "{err}"
        );
        let bad_value = "[[image]]\nname = \"x\"\nsize_class = \"huge\"\n";
        let err = ConfigFile::parse(Path::new("f.toml"), bad_value)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("f.toml:3: key `size_class`: unknown size class"),
            "{err}"
        );
        let bad_region = "[[image]]\nname = \"x\"\n\nregions = [\"eu-west-1\", \"Mars\"]\n";
        let err = ConfigFile::parse(Path::new("f.toml"), bad_region)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("f.toml:4: key `regions`"), "{err}");
        let bad_type = "[[image]]\nname = \"x\"\ntpm = \"yes\"\n";
        let err = ConfigFile::parse(Path::new("f.toml"), bad_type)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("f.toml:3: key `tpm`: expected true or false"),
            "{err}"
        );
        let no_name = "[[image]]\ndistro = \"debian\"\n";
        let err = ConfigFile::parse(Path::new("f.toml"), no_name)
            .unwrap_err()
            .to_string();
        assert!(err.contains("f.toml:1: key `name`"), "{err}");
        let bad_table = "[default]\ndistro = \"debian\"\n";
        let err = ConfigFile::parse(Path::new("f.toml"), bad_table)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("f.toml:1:") && err.contains("default"),
            "{err}"
        );
    }
}
