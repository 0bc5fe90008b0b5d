//! Parsers and naming rules shared by the AWS commands and the config file:
//! tags, AMI names and families, regions, times, share targets, SSM
//! parameter templates. Each answers a message that says what is accepted.

use std::path::Path;

/// A `KEY=VALUE` tag as EC2 accepts it.
pub fn parse_tag(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    if key.is_empty() || key.len() > 128 || value.len() > 256 {
        return Err("a tag key has 1-128 characters and a value at most 256".into());
    }
    if key.starts_with("aws:") {
        return Err("tag keys starting with `aws:` are reserved by AWS".into());
    }
    Ok((key.to_string(), value.to_string()))
}

pub fn is_ami_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c)
}

/// An AMI name, or a template of one with `{date}` (the image's build
/// date, YYYYMMDD, from its manifest: see [`render_name`]).
pub fn parse_ami_name(text: &str) -> Result<String, String> {
    let rendered = render_name(text, "20260101");
    if !(3..=128).contains(&rendered.len()) {
        return Err("an AMI name has 3 to 128 characters".into());
    }
    if let Some(c) = rendered.chars().find(|c| !is_ami_name_char(*c)) {
        return Err(format!(
            "{c:?} is not allowed in an AMI name (letters, digits, ( ) [ ] . / - ' @ _ and spaces)"
        ));
    }
    Ok(text.to_string())
}

/// Whether a name template takes the image's build date.
pub fn has_date(template: &str) -> bool {
    template.contains(DATE_PLACEHOLDER)
}

pub const DATE_PLACEHOLDER: &str = "{date}";

/// A name template with `{date}` replaced by `date` (YYYYMMDD).
pub fn render_name(template: &str, date: &str) -> String {
    template.replace(DATE_PLACEHOLDER, date)
}

/// The default AMI name: the file name and the content hash's first digits,
/// so that uploading the same image twice finds the first AMI.
pub fn default_ami_name(image: &Path, content_sha256: &str) -> String {
    let stem: String = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| if is_ami_name_char(c) { c } else { '-' })
        .take(100)
        .collect();
    let stem = if stem.is_empty() {
        "image".into()
    } else {
        stem
    };
    format!("{stem}-{}", &content_sha256[..12])
}

/// The tag naming an AMI's image family on every AMI and snapshot imgforge
/// publishes; `--ssm-parameter` refuses to move a parameter across families.
pub const FAMILY_TAG: &str = "imgforge:family";
/// The tag listing every region an AMI was published in (its region and
/// its copies'), so that `ami list|prune --family` find every copy from any
/// one region.
pub const REGIONS_TAG: &str = "imgforge:regions";
/// The tag naming the AMI a snapshot belongs to; `ami prune` deletes only
/// snapshots that carry it.
pub const AMI_NAME_TAG: &str = "imgforge:ami-name";

/// An AMI name's family: the name without its trailing version parts
/// (`trading-large-v3` and `trading-large-20261126` are `trading-large`).
pub fn family_of(name: &str) -> String {
    let mut parts: Vec<&str> = name.split(['-', '_', '.', ' ']).collect();
    let is_version = |p: &str| {
        let digits = p.strip_prefix(['v', 'V']).unwrap_or(p);
        !digits.is_empty() && digits.starts_with(|c: char| c.is_ascii_digit())
    };
    while parts.len() > 1 && parts.last().is_some_and(|p| is_version(p)) {
        parts.pop();
    }
    let kept: usize = parts.iter().map(|p| p.len() + 1).sum::<usize>() - 1;
    name[..kept.min(name.len())].to_string()
}

/// The family a snapshot is filed under: `--family`, else the family of
/// `--name`, else of the image's file name (`trading-large.raw` ->
/// `trading-large`; a default AMI name ends in a content hash, which would
/// make every upload a family of its own).
pub fn family_for(family: Option<&str>, name: Option<&str>, image: &Path) -> String {
    if let Some(family) = family {
        return family.to_string();
    }
    if let Some(name) = name {
        return family_of(name);
    }
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    family_of(&stem)
}

/// An AWS region name's shape (`us-east-1`, `eu-central-2`, `us-gov-west-1`);
/// whether it exists is asked of EC2 (DescribeRegions) before anything is written.
pub fn parse_region(text: &str) -> Result<String, String> {
    let parts: Vec<&str> = text.split('-').collect();
    let ok = parts.len() >= 3
        && parts[0].len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
        && parts.last().unwrap().chars().all(|c| c.is_ascii_digit());
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not an AWS region name (e.g. us-east-1, eu-west-2)"
        ))
    }
}

/// The one duration notation (`30d`, `1h30m`; a bare number is seconds),
/// here too for the config file's checks.
pub use crate::units::parse_duration;

/// An RFC 3339 time (`2027-01-31T00:00:00Z`), as seconds since the epoch.
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    aws_smithy_types::DateTime::from_str(text, aws_smithy_types::date_time::Format::DateTime)
        .map(|t| t.secs())
        .map_err(|_| format!("{text:?} is not an RFC 3339 time (e.g. 2027-01-31T00:00:00Z)"))
}

pub fn format_rfc3339(secs: i64) -> String {
    aws_smithy_types::DateTime::from_secs(secs)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_else(|_| secs.to_string())
}

/// Whom an AMI is shared with (`--share-with`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum ShareTarget {
    /// A 12-digit AWS account ID: launch permission and createVolumePermission.
    Account(String),
    /// `all`: public.
    All,
    /// An organization ARN.
    Organization(String),
    /// An organizational unit ARN.
    OrganizationalUnit(String),
}

pub fn parse_share_target(text: &str) -> Result<ShareTarget, String> {
    if text == "all" {
        return Ok(ShareTarget::All);
    }
    if text.len() == 12 && text.chars().all(|c| c.is_ascii_digit()) {
        return Ok(ShareTarget::Account(text.to_string()));
    }
    // arn:PARTITION:organizations::ACCOUNT:organization/o-xxxx
    // arn:PARTITION:organizations::ACCOUNT:ou/o-xxxx/ou-xxxx-xxxx
    let fields: Vec<&str> = text.splitn(6, ':').collect();
    if let ["arn", partition, "organizations", "", account, resource] = fields.as_slice()
        && partition.starts_with("aws")
        && account.len() == 12
        && account.chars().all(|c| c.is_ascii_digit())
    {
        let id_ok = |id: &str, prefix: &str| {
            id.strip_prefix(prefix).is_some_and(|rest| {
                !rest.is_empty()
                    && rest
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
        };
        let path: Vec<&str> = resource.split('/').collect();
        match path.as_slice() {
            ["organization", org] if id_ok(org, "o-") => {
                return Ok(ShareTarget::Organization(text.to_string()));
            }
            ["ou", org, ou] if id_ok(org, "o-") && id_ok(ou, "ou-") => {
                return Ok(ShareTarget::OrganizationalUnit(text.to_string()));
            }
            _ => {}
        }
    }
    Err(format!(
        "{text:?} is not a share target: give a 12-digit account ID, `all`, an organization ARN \
(arn:aws:organizations::123456789012:organization/o-abc123) or an OU ARN \
(arn:aws:organizations::123456789012:ou/o-abc123/ou-ab12-cdef3456)"
    ))
}

/// An SSM parameter name template: `/path/{name}/{region}`.
pub fn parse_ssm_template(text: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err(format!(
            "SSM parameter {text:?} must start with `/` (a path such as /images/{{name}}/latest)"
        ));
    }
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("SSM parameter {text:?} has a `{{` without `}}`"))?;
        let key = &rest[open + 1..open + close];
        if key != "name" && key != "region" {
            return Err(format!(
                "SSM parameter {text:?}: unknown placeholder {{{key}}} (known: {{name}}, {{region}})"
            ));
        }
        rest = &rest[open + close + 1..];
    }
    let bad = text
        .replace("{name}", "n")
        .replace("{region}", "r")
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.-/".contains(*c)));
    if let Some(c) = bad {
        return Err(format!(
            "SSM parameter {text:?}: {c:?} is not allowed (letters, digits, _ . - /)"
        ));
    }
    Ok(text.to_string())
}

pub fn render_ssm_name(template: &str, name: &str, region: &str) -> String {
    template.replace("{name}", name).replace("{region}", region)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn name_templates_take_a_date() {
        assert!(parse_ami_name("app-{date}").is_ok());
        assert!(parse_ami_name("app-{when}").is_err());
        assert_eq!(render_name("app-{date}", "20261205"), "app-20261205");
        assert!(has_date("a-{date}") && !has_date("a-b"));
    }

    #[test]
    fn families() {
        assert_eq!(family_of("trading-large-v3"), "trading-large");
        assert_eq!(family_of("trading-large-20261126-1"), "trading-large");
        assert_eq!(family_of("ci-builder"), "ci-builder");
        assert_eq!(family_of("v1"), "v1");
        assert_eq!(family_of("gpu node 2"), "gpu node");
    }

    #[test]
    fn share_targets() {
        assert_eq!(
            parse_share_target("123456789012"),
            Ok(ShareTarget::Account("123456789012".into()))
        );
        assert_eq!(parse_share_target("all"), Ok(ShareTarget::All));
        assert!(matches!(
            parse_share_target("arn:aws:organizations::123456789012:organization/o-abc123"),
            Ok(ShareTarget::Organization(_))
        ));
        assert!(matches!(
            parse_share_target("arn:aws:organizations::123456789012:ou/o-abc123/ou-ab12-cdef3456"),
            Ok(ShareTarget::OrganizationalUnit(_))
        ));
        for bad in [
            "1234",
            "everyone",
            "arn:aws:iam::123456789012:user/x",
            "arn:aws:organizations::123456789012:ou/o-abc",
        ] {
            assert!(parse_share_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_times_regions_templates() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("d").is_err());
        let t = parse_rfc3339("2027-01-31T00:00:00Z").unwrap();
        assert_eq!(format_rfc3339(t), "2027-01-31T00:00:00Z");
        assert!(parse_rfc3339("next week").is_err());
        assert!(parse_region("eu-west-1").is_ok());
        assert!(parse_region("us-gov-west-1").is_ok());
        assert!(parse_region("Europe").is_err());
        assert!(parse_ssm_template("/images/{name}/{region}/latest").is_ok());
        assert!(parse_ssm_template("images/latest").is_err());
        assert!(parse_ssm_template("/images/{arch}").is_err());
        assert_eq!(
            render_ssm_name("/i/{name}/{region}", "a-v1", "eu-west-1"),
            "/i/a-v1/eu-west-1"
        );
    }

    #[test]
    fn family_defaults() {
        let image = Path::new("/b/trading-large.raw");
        assert_eq!(family_for(Some("f"), Some("x-v1"), image), "f");
        assert_eq!(family_for(None, Some("web-small-v3"), image), "web-small");
        assert_eq!(family_for(None, None, image), "trading-large");
    }
}
