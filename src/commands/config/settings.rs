//! The one table of `imgforge.toml` keys ([`SETTINGS`]): which keys exist,
//! which subcommand(s) and flag each becomes, and how a value is checked.
//! Sizes and durations use the one notation of `imgforge::units`.

use imgforge::aws::ami::names::{
    parse_region, parse_rfc3339, parse_share_target, parse_ssm_template, parse_tag,
};
use imgforge::units::{ByteSize, parse_duration};

/// Which subcommand a setting belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum For {
    Build,
    /// Upload (and the other subcommands that talk to AWS).
    Upload,
}

/// The shape of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string: `--flag VALUE`.
    Text,
    /// A string or a whole number: `--flag VALUE` (sizes: a bare number is bytes).
    TextOrInteger,
    /// A boolean: `--flag` when true.
    Switch,
    /// A list of strings: `--flag A --flag B` (or `--flag A,B` with `joined`).
    List { joined: bool },
    /// A table of strings: `--flag K=V` per entry.
    Map,
}

/// Checks one value of a setting.
pub type Check = fn(&str) -> Result<(), String>;

/// Where a key goes: a subcommand's flag, and how its value is spelled there.
pub struct Target {
    pub command: For,
    pub flag: &'static str,
    /// Rewrites a (string) value for this subcommand; None: as written.
    pub convert: Option<fn(&str) -> String>,
}

/// One key of `imgforge.toml`.
pub struct Setting {
    pub key: &'static str,
    pub targets: &'static [Target],
    pub kind: Kind,
    /// Checks one (string) value; None: the subcommand's own parser decides.
    pub check: Option<Check>,
}

impl Setting {
    pub fn target(&self, command: For) -> Option<&Target> {
        self.targets.iter().find(|t| t.command == command)
    }
}

/// Keys renamed by issue 20, still read for one release with a warning.
pub const RENAMED: &[(&str, &str)] = &[("architecture", "arch")];

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
    parse_region(v).map(|_| ())
}
fn share(v: &str) -> Result<(), String> {
    parse_share_target(v).map(|_| ())
}
/// `copy_kms_keys = { "eu-west-1" = "alias/images" }`.
fn region_key(v: &str) -> Result<(), String> {
    imgforge::aws::kms::parse_region_key(v).map(|_| ())
}
fn duration(v: &str) -> Result<(), String> {
    parse_duration(v).map(|_| ())
}
fn size(v: &str) -> Result<(), String> {
    v.parse::<ByteSize>().map(|_| ())
}
fn time(v: &str) -> Result<(), String> {
    parse_rfc3339(v).map(|_| ())
}
fn ssm(v: &str) -> Result<(), String> {
    // {image} is filled in from the variant before the upload sees it.
    parse_ssm_template(&v.replace("{image}", "image")).map(|_| ())
}
fn boot_mode(v: &str) -> Result<(), String> {
    v.parse::<imgforge::aws::ami::register::BootMode>()
        .map(|_| ())
}
fn arch(v: &str) -> Result<(), String> {
    imgforge::platform::lookup(v)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
/// `volume_size = 8` has always meant GiB in the file: spelled `8G` for
/// upload, whose bare numbers are the size notation's (bytes).
fn whole_gib(v: &str) -> String {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        format!("{v}G")
    } else {
        v.to_string()
    }
}
/// EC2's name of an architecture (`aarch64` -> `arm64`).
fn ec2_arch(v: &str) -> String {
    imgforge::platform::lookup(v).map_or_else(|_| v.to_string(), |a| a.ec2.clone())
}

const fn build(flag: &'static str) -> Target {
    Target {
        command: For::Build,
        flag,
        convert: None,
    }
}
const fn upload(flag: &'static str) -> Target {
    Target {
        command: For::Upload,
        flag,
        convert: None,
    }
}

const fn s(
    key: &'static str,
    targets: &'static [Target],
    kind: Kind,
    check: Option<Check>,
) -> Setting {
    Setting {
        key,
        targets,
        kind,
        check,
    }
}

const LIST: Kind = Kind::List { joined: false };
const JOINED: Kind = Kind::List { joined: true };

/// Every key the file accepts (besides a variant's `name`).
pub const SETTINGS: &[Setting] = &[
    // build
    s("distro", &[build("--distro")], Kind::Text, None),
    s("release", &[build("--release")], Kind::Text, None),
    s(
        "arch",
        &[
            build("--arch"),
            Target {
                command: For::Upload,
                flag: "--arch",
                convert: Some(ec2_arch),
            },
        ],
        Kind::Text,
        Some(arch),
    ),
    s("kernel", &[build("--kernel")], Kind::Text, None),
    s("tuning", &[build("--tuning")], Kind::Text, None),
    s("first_boot", &[build("--first-boot")], Kind::Text, None),
    s(
        "size_class",
        &[build("--size-class")],
        Kind::Text,
        Some(size_class),
    ),
    s("size", &[build("--size")], Kind::TextOrInteger, Some(size)),
    s("mirror", &[build("--mirror")], Kind::Text, None),
    s(
        "security_mirror",
        &[build("--security-mirror")],
        Kind::Text,
        None,
    ),
    s("repositories", &[build("--repository")], LIST, None),
    s("package_files", &[build("--package-file")], LIST, None),
    s("kernel_args", &[build("--kernel-arg")], LIST, None),
    s("scripts", &[build("--script")], LIST, None),
    s("ansible", &[build("--ansible")], Kind::Text, None),
    s("ansible_vars", &[build("--ansible-var")], Kind::Map, None),
    s("packages", &[build("--packages")], JOINED, None),
    s("layers", &[build("--layer")], LIST, None),
    s("output", &[build("--output")], Kind::Text, None),
    s("secure_boot", &[build("--secure-boot")], Kind::Switch, None),
    s("tpm_tools", &[build("--tpm-tools")], Kind::Switch, None),
    s(
        "secure_boot_key",
        &[build("--secure-boot-key")],
        Kind::Text,
        None,
    ),
    s(
        "secure_boot_cert",
        &[build("--secure-boot-cert")],
        Kind::Text,
        None,
    ),
    // upload and publish (AWS)
    s("profile", &[upload("--profile")], Kind::Text, None),
    s("region", &[upload("--region")], Kind::Text, Some(region)),
    s("ami_name", &[upload("--name")], Kind::Text, None),
    s("description", &[upload("--description")], Kind::Text, None),
    s("family", &[upload("--family")], Kind::Text, None),
    s(
        "boot_mode",
        &[upload("--boot-mode")],
        Kind::Text,
        Some(boot_mode),
    ),
    s(
        "volume_size",
        &[Target {
            command: For::Upload,
            flag: "--volume-size",
            convert: Some(whole_gib),
        }],
        Kind::TextOrInteger,
        Some(size),
    ),
    s("tpm", &[upload("--tpm")], Kind::Switch, None),
    s(
        "root_volume_type",
        &[upload("--root-volume-type")],
        Kind::Text,
        None,
    ),
    s(
        "root_volume_iops",
        &[upload("--root-volume-iops")],
        Kind::TextOrInteger,
        None,
    ),
    s(
        "root_volume_throughput",
        &[upload("--root-volume-throughput")],
        Kind::TextOrInteger,
        None,
    ),
    s("volumes", &[upload("--volume")], LIST, None),
    s(
        "instance_types",
        &[upload("--instance-types")],
        JOINED,
        None,
    ),
    s(
        "deregistration_protection",
        &[upload("--deregistration-protection")],
        Kind::Switch,
        None,
    ),
    s("encrypted", &[upload("--encrypted")], Kind::Switch, None),
    s("kms_key_id", &[upload("--kms-key-id")], Kind::Text, None),
    s("tags", &[upload("--tag")], Kind::Map, Some(tag_entry)),
    s(
        "snapshot_tags",
        &[upload("--snapshot-tag")],
        Kind::Map,
        Some(tag_entry),
    ),
    s("regions", &[upload("--copy-to")], JOINED, Some(region)),
    s(
        "copy_kms_keys",
        &[upload("--copy-kms-key")],
        Kind::Map,
        Some(region_key),
    ),
    s(
        "copy_timeout",
        &[upload("--copy-timeout")],
        Kind::Text,
        Some(duration),
    ),
    s("share_with", &[upload("--share-with")], LIST, Some(share)),
    s(
        "deprecate_in",
        &[upload("--deprecate-in")],
        Kind::Text,
        Some(duration),
    ),
    s(
        "deprecate_at",
        &[upload("--deprecate-at")],
        Kind::Text,
        Some(time),
    ),
    s(
        "ssm_parameter",
        &[upload("--ssm-parameter")],
        Kind::Text,
        Some(ssm),
    ),
    s(
        "ssm_overwrite",
        &[upload("--ssm-overwrite")],
        Kind::Switch,
        None,
    ),
];

pub fn lookup(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => "a string",
        Kind::TextOrInteger => "a string or a whole number",
        Kind::Switch => "true or false",
        Kind::List { .. } => "a list of strings",
        Kind::Map => "a table of strings (key = \"value\")",
    }
}

/// Checks a value's shape against the setting's kind, then each string in it.
pub fn validate(setting: &Setting, value: &toml::Value) -> Result<(), String> {
    let wrong = || {
        format!(
            "expected {}, found {}",
            kind_name(setting.kind),
            value.type_str()
        )
    };
    let strings: Vec<String> = match (setting.kind, value) {
        (Kind::Text | Kind::TextOrInteger, toml::Value::String(s)) => vec![s.clone()],
        (Kind::TextOrInteger, toml::Value::Integer(n)) if *n > 0 => vec![n.to_string()],
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

/// A warning for `profile = NAME` when NAME is a tuning profile (of
/// rootfs/profiles.toml): `profile` is the AWS profile since issue 20.
pub fn tuning_profile_hint(value: &str) -> Option<String> {
    let data = imgforge::data::DataDir::open(None).ok()?;
    let profiles = imgforge::profile::Profiles::load(&data).ok()?;
    profiles.names().iter().any(|n| n == value).then(|| {
        format!(
            "`profile` is the AWS named profile (for upload); {value:?} is a tuning profile: \
             did you mean tuning = {value:?}?"
        )
    })
}
