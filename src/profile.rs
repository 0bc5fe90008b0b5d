//! Profiles: what an image is for, as data (`rootfs/profiles.toml`). A
//! profile names its layers, the packages they need, the kernel command line
//! tokens it adds (templates rendered for the size class) and the kernel
//! config fragments the image's kernel must satisfy.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::{DataDir, DataError};
use crate::sizeclass::SizeClass;

pub const PROFILES: &str = "rootfs/profiles.toml";

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{PROFILES}: {0}")]
    Parse(String),
    #[error("unknown tuning profile `{given}` (--tuning); choose one of: {known}")]
    Unknown { given: String, known: String },
    #[error("{PROFILES}: profile `{profile}` extends `{base}`, which is not defined before it")]
    Extends { profile: String, base: String },
    #[error(
        "{PROFILES}: profile `{profile}` cmdline token `{token}` uses `{{{{{name}}}}}`, which is not one of: {known}"
    )]
    Variable {
        profile: String,
        token: String,
        name: String,
        known: String,
    },
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Layer folders under rootfs/, in order.
    pub layers: Vec<String>,
    /// Packages the layers need, added to the distro's.
    pub packages: Vec<String>,
    /// Kernel command line tokens, templates (see [`Profile::cmdline_for`]).
    pub cmdline: Vec<String>,
    /// Fragments under kernel-configs/ the image's kernel must satisfy.
    pub kernel_configs: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    extends: Option<String>,
    layers: Option<Vec<String>>,
    packages: Option<Vec<String>>,
    cmdline: Option<Vec<String>>,
    kernel_configs: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    default: String,
    profile: Vec<RawProfile>,
}

/// Every profile, in file order, and the default's name.
#[derive(Debug, Clone)]
pub struct Profiles {
    pub default: String,
    pub all: Vec<Profile>,
}

impl Profiles {
    pub fn load(data: &DataDir) -> Result<Self, ProfileError> {
        Self::parse(&data.read_to_string(PROFILES)?)
    }

    pub fn parse(text: &str) -> Result<Self, ProfileError> {
        let raw: RawTable = toml::from_str(text).map_err(|e| ProfileError::Parse(e.to_string()))?;
        let mut all: Vec<Profile> = Vec::new();
        for r in raw.profile {
            let base = match &r.extends {
                Some(name) => Some(all.iter().find(|p| &p.name == name).cloned().ok_or_else(
                    || ProfileError::Extends {
                        profile: r.name.clone(),
                        base: name.clone(),
                    },
                )?),
                None => None,
            };
            let pick = |own: Option<Vec<String>>, inherited: fn(&Profile) -> &Vec<String>| {
                own.or_else(|| base.as_ref().map(|b| inherited(b).clone()))
                    .unwrap_or_default()
            };
            all.push(Profile {
                description: r
                    .description
                    .or_else(|| base.as_ref().map(|b| b.description.clone()))
                    .unwrap_or_default(),
                layers: pick(r.layers, |b| &b.layers),
                packages: pick(r.packages, |b| &b.packages),
                cmdline: pick(r.cmdline, |b| &b.cmdline),
                kernel_configs: pick(r.kernel_configs, |b| &b.kernel_configs),
                name: r.name,
            });
        }
        let profiles = Self {
            default: raw.default,
            all,
        };
        profiles.lookup(&profiles.default)?;
        Ok(profiles)
    }

    pub fn names(&self) -> Vec<String> {
        self.all.iter().map(|p| p.name.clone()).collect()
    }

    /// `name`, or the default profile when `None`.
    pub fn lookup(&self, name: &str) -> Result<Profile, ProfileError> {
        self.all
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| ProfileError::Unknown {
                given: name.to_string(),
                known: self.names().join(", "),
            })
    }

    pub fn choose(&self, name: Option<&str>) -> Result<Profile, ProfileError> {
        self.lookup(name.unwrap_or(&self.default))
    }
}

impl Profile {
    /// The command line tokens rendered for `class`.
    pub fn cmdline_for(&self, class: &SizeClass) -> Result<Vec<String>, ProfileError> {
        let vars = class.template_variables();
        self.cmdline
            .iter()
            .map(|token| {
                render(token, &vars).map_err(|name| ProfileError::Variable {
                    profile: self.name.clone(),
                    token: token.clone(),
                    name,
                    known: vars.keys().copied().collect::<Vec<_>>().join(", "),
                })
            })
            .collect()
    }

    /// Whether the profile isolates CPUs (puts `nohz_full=` on the cmdline).
    pub fn isolates(&self) -> bool {
        self.cmdline.iter().any(|t| t.starts_with("nohz_full="))
    }

    /// The profile's kernel config fragments, as paths under `fragments`.
    pub fn kernel_config_paths(&self, fragments: &Path) -> Vec<std::path::PathBuf> {
        self.kernel_configs
            .iter()
            .map(|f| fragments.join(f))
            .collect()
    }
}

/// `{{name}}` replaced from `vars`; the unknown name as the error.
fn render(text: &str, vars: &BTreeMap<&str, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            break;
        };
        let name = after[..end].trim();
        out.push_str(vars.get(name).ok_or_else(|| name.to_string())?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sizeclass;

    fn checkout() -> Profiles {
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(PROFILES)).unwrap();
        Profiles::parse(&text).unwrap()
    }

    #[test]
    fn profiles_parse_and_trading_is_the_default() {
        let p = checkout();
        assert_eq!(p.default, "trading");
        assert_eq!(p.choose(None).unwrap().name, "trading");
        assert_eq!(
            p.lookup("trading").unwrap().layers,
            ["base", "tuning", "irqbalance-off"]
        );
        assert_eq!(p.lookup("base").unwrap().layers, ["base"]);
        let err = p.lookup("fast").unwrap_err().to_string();
        assert!(err.contains("`fast`") && err.contains("trading, "), "{err}");
        // Every layer a profile names exists beside profiles.toml.
        let rootfs = Path::new(env!("CARGO_MANIFEST_DIR")).join("rootfs");
        let fragments = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernel-configs");
        for profile in &p.all {
            for layer in &profile.layers {
                assert!(rootfs.join(layer).is_dir(), "{}: {layer}", profile.name);
            }
            for f in profile.kernel_config_paths(&fragments) {
                assert!(f.is_file(), "{}: {}", profile.name, f.display());
            }
        }
    }

    #[test]
    fn extends_inherits_what_it_does_not_set() {
        let p = checkout();
        let trading = p.lookup("trading").unwrap();
        let irq = p.lookup("trading-irqbalance").unwrap();
        assert_eq!(irq.cmdline, trading.cmdline);
        assert_eq!(irq.kernel_configs, trading.kernel_configs);
        assert_eq!(irq.packages, ["irqbalance"]);
        assert_eq!(irq.layers, ["base", "tuning", "irqbalance-ena"]);
        let bad = "default = \"a\"\n[[profile]]\nname = \"a\"\nextends = \"b\"\n";
        assert!(matches!(
            Profiles::parse(bad),
            Err(ProfileError::Extends { .. })
        ));
    }

    #[test]
    fn trading_cmdline_per_class() {
        let trading = checkout().lookup("trading").unwrap();
        for (name, hk, iso) in [
            ("small", "0-1", "2-N"),
            ("medium", "0-3", "4-N"),
            ("large", "0-7", "8-N"),
            ("xlarge", "0-15", "16-N"),
        ] {
            let tokens = trading
                .cmdline_for(&sizeclass::lookup(name).unwrap())
                .unwrap();
            for want in [
                format!("isolcpus=managed_irq,domain,{iso}"),
                format!("nohz_full={iso}"),
                format!("rcu_nocbs={iso}"),
                format!("irqaffinity={hk}"),
                "skew_tick=1".into(),
                "nosoftlockup".into(),
                "rcupdate.rcu_normal_after_boot=1".into(),
                "intel_idle.max_cstate=1".into(),
                "processor.max_cstate=1".into(),
                "clocksource=tsc".into(),
                "tsc=reliable".into(),
                "transparent_hugepage=never".into(),
                "audit=0".into(),
            ] {
                assert!(tokens.contains(&want), "{name}: {want} not in {tokens:?}");
            }
            assert!(!tokens.iter().any(|t| t.contains("{{")), "{tokens:?}");
            // SMT is left to the launch (ThreadsPerCore=1), not `nosmt`.
            assert!(!tokens.iter().any(|t| t == "nosmt"));
            assert!(trading.isolates());
        }
    }

    #[test]
    fn base_profile_adds_no_tuning_tokens() {
        let base = checkout().lookup("base").unwrap();
        for class in sizeclass::all() {
            assert!(base.cmdline_for(&class).unwrap().is_empty());
        }
        assert!(!base.isolates());
        assert_eq!(base.kernel_configs, ["cloud.config"]);
    }

    /// imgforge-verify checks the sysctls listed in the tuning layer's
    /// expectations: they must be exactly those of its sysctl.d file.
    #[test]
    fn verify_expects_every_sysctl_of_the_tuning_layer() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("rootfs/tuning/etc");
        let squeeze = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let conf = std::fs::read_to_string(root.join("sysctl.d/90-imgforge-latency.conf")).unwrap();
        let mut from_conf: Vec<(String, String)> = conf
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                let k = k.trim();
                // `-key`: may be absent on some kernels; verify writes `key?`.
                let k = match k.strip_prefix('-') {
                    Some(k) => format!("{k}?"),
                    None => k.to_string(),
                };
                (k, squeeze(v))
            })
            .collect();
        let expect = std::fs::read_to_string(root.join("imgforge/tuning.expect.tmpl")).unwrap();
        let mut from_expect: Vec<(String, String)> = expect
            .lines()
            .filter_map(|l| l.strip_prefix("sysctl "))
            .map(|l| {
                let (k, v) = l.split_once(' ').unwrap();
                (k.to_string(), squeeze(v))
            })
            .collect();
        from_conf.sort();
        from_expect.sort();
        assert_eq!(from_conf, from_expect);
        assert!(from_conf.len() >= 20);
        // Gone from current kernels: never set, never expected.
        for gone in [
            "net.ipv4.tcp_low_latency",
            "kernel.sched_min_granularity_ns",
        ] {
            assert!(!from_conf.iter().any(|(k, _)| k == gone), "{gone}");
        }
    }

    #[test]
    fn an_unknown_variable_in_a_token_is_named() {
        let p = Profiles::parse(
            "default = \"x\"\n[[profile]]\nname = \"x\"\ncmdline = [\"a={{nope}}\"]\n",
        )
        .unwrap();
        let err = p
            .lookup("x")
            .unwrap()
            .cmdline_for(&sizeclass::lookup("small").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("{{nope}}") && err.contains("isolated_cpus"),
            "{err}"
        );
    }
}
