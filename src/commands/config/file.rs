//! `imgforge.toml`: build and publish settings in a `[defaults]` table and
//! `[[image]]` variants that override it.
//!
//! One table ([`SETTINGS`]) drives everything: which keys exist, which
//! subcommand and flag each becomes, how a value is checked. A variant is
//! turned into command-line flags placed *before* the user's own, so flags
//! given on the command line override the file (the last value wins; lists
//! such as tags add up). Errors name the file, the line and the key.
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
//! packages = ["linux-cpupower"]
//! ```

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use imgforge::aws::names::{
    parse_duration, parse_region, parse_rfc3339, parse_share_target, parse_ssm_template, parse_tag,
};
use serde_json::{Value, json};
use toml::Spanned;

/// Which subcommand a setting belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum For {
    Build,
    Upload,
}

/// The shape of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A string: `--flag VALUE`.
    Text,
    /// An integer: `--flag N`.
    Integer,
    /// A boolean: `--flag` when true.
    Switch,
    /// A list of strings: `--flag A --flag B` (or `--flag A,B` with `joined`).
    List { joined: bool },
    /// A table of strings: `--flag K=V` per entry.
    Map,
}

/// Checks one value of a setting.
type Check = fn(&str) -> Result<(), String>;

/// One key of `imgforge.toml`.
struct Setting {
    key: &'static str,
    command: For,
    flag: &'static str,
    kind: Kind,
    /// Checks one (string) value; None: the subcommand's own parser decides.
    check: Option<Check>,
}

fn check<T>(parse: fn(&str) -> Result<T, String>) -> impl Fn(&str) -> Result<(), String> {
    move |v| parse(v).map(|_| ())
}

fn size_class(v: &str) -> Result<(), String> {
    let known = imgforge::sizeclass::names();
    if known.iter().any(|k| k == v) {
        Ok(())
    } else {
        Err(format!(
            "unknown size class {v:?}; choose one of: {}",
            known.join(", ")
        ))
    }
}

fn tag_entry(v: &str) -> Result<(), String> {
    parse_tag(v).map(|_| ())
}
fn region(v: &str) -> Result<(), String> {
    check(parse_region)(v)
}
fn share(v: &str) -> Result<(), String> {
    check(parse_share_target)(v)
}
fn duration(v: &str) -> Result<(), String> {
    check(parse_duration)(v)
}
fn time(v: &str) -> Result<(), String> {
    check(parse_rfc3339)(v)
}
fn ssm(v: &str) -> Result<(), String> {
    // {image} is filled in from the variant before the upload sees it.
    check(parse_ssm_template)(&v.replace("{image}", "image"))
}
fn boot_mode(v: &str) -> Result<(), String> {
    imgforge::aws::register::BootMode::from_str(v, false).map(|_| ())
}
fn build_arch(v: &str) -> Result<(), String> {
    imgforge::platform::lookup(v)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
fn architecture(v: &str) -> Result<(), String> {
    imgforge::aws::register::Architecture::from_str(v, false).map(|_| ())
}

const fn s(
    key: &'static str,
    command: For,
    flag: &'static str,
    kind: Kind,
    check: Option<Check>,
) -> Setting {
    Setting {
        key,
        command,
        flag,
        kind,
        check,
    }
}

/// Every key the file accepts (besides a variant's `name`).
const SETTINGS: &[Setting] = &[
    // build
    s("distro", For::Build, "--distro", Kind::Text, None),
    s("release", For::Build, "--release", Kind::Text, None),
    s("arch", For::Build, "--arch", Kind::Text, Some(build_arch)),
    s("kernel", For::Build, "--kernel", Kind::Text, None),
    s("profile", For::Build, "--profile", Kind::Text, None),
    s("first_boot", For::Build, "--first-boot", Kind::Text, None),
    s(
        "size_class",
        For::Build,
        "--size-class",
        Kind::Text,
        Some(size_class),
    ),
    s("size", For::Build, "--size", Kind::Text, None),
    s("mirror", For::Build, "--mirror", Kind::Text, None),
    s(
        "packages",
        For::Build,
        "--packages",
        Kind::List { joined: true },
        None,
    ),
    s(
        "layers",
        For::Build,
        "--layer",
        Kind::List { joined: false },
        None,
    ),
    s("output", For::Build, "--output", Kind::Text, None),
    // upload and publish
    s("region", For::Upload, "--region", Kind::Text, Some(region)),
    s("ami_name", For::Upload, "--name", Kind::Text, None),
    s(
        "description",
        For::Upload,
        "--description",
        Kind::Text,
        None,
    ),
    s("family", For::Upload, "--family", Kind::Text, None),
    s(
        "boot_mode",
        For::Upload,
        "--boot-mode",
        Kind::Text,
        Some(boot_mode),
    ),
    s(
        "architecture",
        For::Upload,
        "--architecture",
        Kind::Text,
        Some(architecture),
    ),
    s(
        "volume_size",
        For::Upload,
        "--volume-size",
        Kind::Integer,
        None,
    ),
    s("tpm", For::Upload, "--tpm", Kind::Switch, None),
    s("encrypted", For::Upload, "--encrypted", Kind::Switch, None),
    s("kms_key_id", For::Upload, "--kms-key-id", Kind::Text, None),
    s("tags", For::Upload, "--tag", Kind::Map, Some(tag_entry)),
    s(
        "snapshot_tags",
        For::Upload,
        "--snapshot-tag",
        Kind::Map,
        Some(tag_entry),
    ),
    s(
        "regions",
        For::Upload,
        "--copy-to",
        Kind::List { joined: true },
        Some(region),
    ),
    s(
        "copy_timeout",
        For::Upload,
        "--copy-timeout",
        Kind::Text,
        Some(duration),
    ),
    s(
        "share_with",
        For::Upload,
        "--share-with",
        Kind::List { joined: false },
        Some(share),
    ),
    s(
        "deprecate_in",
        For::Upload,
        "--deprecate-in",
        Kind::Text,
        Some(duration),
    ),
    s(
        "deprecate_at",
        For::Upload,
        "--deprecate-at",
        Kind::Text,
        Some(time),
    ),
    s(
        "ssm_parameter",
        For::Upload,
        "--ssm-parameter",
        Kind::Text,
        Some(ssm),
    ),
    s(
        "ssm_overwrite",
        For::Upload,
        "--ssm-overwrite",
        Kind::Switch,
        None,
    ),
];

/// A value with where it came from.
#[derive(Debug, Clone)]
struct Located {
    value: toml::Value,
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

impl ConfigFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        Self::parse(path, &text)
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
        let check_table =
            |table: &Table, in_variant: bool| -> anyhow::Result<BTreeMap<String, Located>> {
                let mut out = BTreeMap::new();
                for (key, value) in table {
                    let line = line_of(text, key.span());
                    let name = key.get_ref().as_str();
                    if name == "name" && in_variant {
                        continue;
                    }
                    let Some(setting) = SETTINGS.iter().find(|s| s.key == name) else {
                        let known: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
                        return Err(error_at(
                            path,
                            line,
                            name,
                            format!(
                                "unknown key; known keys: name (in [[image]]), {}",
                                known.join(", ")
                            ),
                        ));
                    };
                    let value_line = line_of(text, value.span());
                    validate(setting, value.get_ref())
                        .map_err(|m| error_at(path, value_line, name, m))?;
                    out.insert(
                        name.to_string(),
                        Located {
                            value: value.get_ref().clone(),
                            line: value_line,
                        },
                    );
                }
                Ok(out)
            };
        let defaults = match &raw.defaults {
            Some(table) => check_table(table.get_ref(), false)?,
            None => BTreeMap::new(),
        };
        let mut variants: Vec<Variant> = Vec::new();
        for table in &raw.image {
            let line = line_of(text, table.span());
            let name = match table.get_ref().iter().find(|(k, _)| k.get_ref() == "name") {
                Some((_, v)) => match v.get_ref() {
                    toml::Value::String(s) if !s.is_empty() => s.clone(),
                    _ => {
                        return Err(error_at(
                            path,
                            line_of(text, v.span()),
                            "name",
                            "a variant's name is a non-empty string",
                        ));
                    }
                },
                None => {
                    return Err(error_at(
                        path,
                        line,
                        "name",
                        "every [[image]] needs a name (e.g. name = \"trading-large\")",
                    ));
                }
            };
            if variants.iter().any(|v| v.name == name) {
                return Err(error_at(
                    path,
                    line,
                    "name",
                    format!("{name:?} is defined twice"),
                ));
            }
            let mut values = defaults.clone();
            values.extend(check_table(table.get_ref(), true)?);
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
                    self.variants
                        .iter()
                        .map(|v| v.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => "a string",
        Kind::Integer => "an integer",
        Kind::Switch => "true or false",
        Kind::List { .. } => "a list of strings",
        Kind::Map => "a table of strings (key = \"value\")",
    }
}

fn validate(setting: &Setting, value: &toml::Value) -> Result<(), String> {
    let wrong = || {
        format!(
            "expected {}, found {}",
            kind_name(setting.kind),
            value.type_str()
        )
    };
    let strings: Vec<String> = match (setting.kind, value) {
        (Kind::Text, toml::Value::String(s)) => vec![s.clone()],
        (Kind::Integer, toml::Value::Integer(n)) if *n >= 0 => vec![],
        (Kind::Switch, toml::Value::Boolean(_)) => vec![],
        (Kind::List { .. }, toml::Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string).ok_or_else(wrong))
            .collect::<Result<_, _>>()?,
        (Kind::Map, toml::Value::Table(t)) => t
            .iter()
            .map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")).ok_or_else(wrong))
            .collect::<Result<_, _>>()?,
        _ => return Err(wrong()),
    };
    if let Some(check) = setting.check {
        for s in &strings {
            check(s)?;
        }
    }
    Ok(())
}

fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    imgforge::aws::names::format_rfc3339(secs)[..10].replace('-', "")
}

impl Variant {
    fn render(&self, text: &str) -> String {
        text.replace("{image}", &self.name)
            .replace("{date}", &today())
    }

    /// The flags this variant means for `command`.
    fn flags(&self, command: For) -> Vec<String> {
        let mut out = Vec::new();
        for setting in SETTINGS.iter().filter(|s| s.command == command) {
            let Some(located) = self.values.get(setting.key) else {
                continue;
            };
            match (&located.value, setting.kind) {
                (toml::Value::String(v), _) => {
                    out.push(setting.flag.to_string());
                    out.push(self.render(v));
                }
                (toml::Value::Integer(n), _) => {
                    out.push(setting.flag.to_string());
                    out.push(n.to_string());
                }
                (toml::Value::Boolean(true), _) => out.push(setting.flag.to_string()),
                (toml::Value::Array(items), Kind::List { joined }) => {
                    let items: Vec<String> = items
                        .iter()
                        .filter_map(|i| i.as_str().map(|s| self.render(s)))
                        .collect();
                    if items.is_empty() {
                        continue;
                    }
                    if joined {
                        out.push(setting.flag.to_string());
                        out.push(items.join(","));
                    } else {
                        for item in items {
                            out.push(setting.flag.to_string());
                            out.push(item);
                        }
                    }
                }
                (toml::Value::Table(t), _) => {
                    for (k, v) in t {
                        out.push(setting.flag.to_string());
                        out.push(format!("{k}={}", v.as_str().unwrap_or_default()));
                    }
                }
                _ => {}
            }
        }
        if command == For::Build && !self.values.contains_key("output") {
            out.push("--output".into());
            out.push(format!("{}.raw", self.name));
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

    #[allow(dead_code)]
    pub fn line_of(&self, key: &str) -> Option<usize> {
        self.values.get(key).map(|l| l.line)
    }
}

/// Expands `imgforge build|upload --config F (--image NAME | --all) ...` into
/// one argument list per variant: the file's flags, then the user's.
/// Any other command line comes back as it is.
pub fn expand(argv: Vec<OsString>) -> anyhow::Result<Vec<Vec<OsString>>> {
    let strings: Vec<Option<&str>> = argv.iter().map(|a| a.to_str()).collect();
    let command = strings
        .iter()
        .skip(1)
        .flatten()
        .find(|a| !a.starts_with('-'))
        .copied();
    let target = match command {
        Some("build") => For::Build,
        Some("upload") => For::Upload,
        _ => return Ok(vec![argv]),
    };
    let mut config: Option<PathBuf> = None;
    let mut image: Option<String> = None;
    let mut all = false;
    let mut rest: Vec<OsString> = Vec::new();
    let mut i = 0;
    while i < argv.len() {
        let arg = strings[i].unwrap_or("");
        let value = |i: usize| -> anyhow::Result<String> {
            strings
                .get(i + 1)
                .copied()
                .flatten()
                .map(str::to_string)
                .with_context(|| format!("{arg} needs a value"))
        };
        if arg == "--config" {
            config = Some(value(i)?.into());
            i += 2;
        } else if let Some(v) = arg.strip_prefix("--config=") {
            config = Some(v.into());
            i += 1;
        } else if arg == "--image" {
            image = Some(value(i)?);
            i += 2;
        } else if arg == "--all" {
            all = true;
            i += 1;
        } else {
            rest.push(argv[i].clone());
            i += 1;
        }
    }
    let Some(config) = config else {
        if image.is_some() || all {
            bail!(
                "--image and --all choose variants of a config file: pass --config imgforge.toml"
            );
        }
        return Ok(vec![argv]);
    };
    let file = ConfigFile::load(&config)?;
    let variants: Vec<&Variant> = match (&image, all) {
        (Some(_), true) => bail!("pass either --image NAME or --all, not both"),
        (Some(name), false) => vec![file.variant(name)?],
        (None, true) if target == For::Build => file.variants.iter().collect(),
        (None, true) => bail!("upload takes one variant: pass --image NAME"),
        (None, false) => bail!(
            "{}: choose a variant with --image NAME ({}) or --all",
            config.display(),
            file.variants
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    // Insert the file's flags right after the subcommand name.
    let at = rest
        .iter()
        .position(|a| a.to_str() == command)
        .map_or(rest.len(), |p| p + 1);
    Ok(variants
        .into_iter()
        .map(|variant| {
            let mut out: Vec<OsString> = rest[..at].to_vec();
            out.extend(variant.flags(target).into_iter().map(OsString::from));
            out.extend(rest[at..].iter().cloned());
            out
        })
        .collect())
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the merged settings ([defaults] under each [[image]]) and the flags they become.
    Show {
        /// The config file.
        #[arg(long, default_value = "imgforge.toml")]
        config: PathBuf,
        /// Only this variant.
        #[arg(long)]
        image: Option<String>,
    },
    /// Print the CI job matrix: one job per variant, for GitHub Actions (a
    /// `matrix=...` line for $GITHUB_OUTPUT) or as JSON (Buildkite, others).
    Matrix {
        #[arg(long, default_value = "imgforge.toml")]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "json")]
        format: MatrixFormat,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MatrixFormat {
    Github,
    Json,
}

pub fn run(args: &ConfigArgs) -> anyhow::Result<()> {
    match &args.command {
        ConfigCommand::Show { config, image } => {
            let file = ConfigFile::load(config)?;
            let shown: Vec<Value> = match image {
                Some(name) => vec![file.variant(name)?.to_json()],
                None => file.variants.iter().map(Variant::to_json).collect(),
            };
            println!("{}", serde_json::to_string_pretty(&shown)?);
        }
        ConfigCommand::Matrix { config, format } => {
            let file = ConfigFile::load(config)?;
            let include: Vec<Value> = file
                .variants
                .iter()
                .map(|v| {
                    let all = v.to_json();
                    json!({
                        "image": v.name,
                        "distro": all.get("distro"),
                        "size_class": all.get("size_class"),
                        "build": format!("imgforge build --config {} --image {}", config.display(), v.name),
                        "upload": format!("imgforge upload {}.raw --config {} --image {}", v.name, config.display(), v.name),
                    })
                })
                .collect();
            match format {
                MatrixFormat::Github => {
                    println!(
                        "matrix={}",
                        serde_json::to_string(&json!({ "include": include }))?
                    )
                }
                MatrixFormat::Json => println!("{}", serde_json::to_string_pretty(&include)?),
            }
        }
    }
    Ok(())
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
profile = "base"
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
        assert!(small.windows(2).any(|w| w == ["--profile", "base"]));
        assert!(
            small
                .windows(2)
                .any(|w| w == ["--first-boot", "cloud-init"])
        );
        assert!(
            !build.iter().any(|f| f == "--profile"),
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
