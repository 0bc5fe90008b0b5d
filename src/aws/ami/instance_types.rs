//! `--instance-types`: before anything is uploaded, EC2 DescribeInstanceTypes
//! says whether each type can run this image: its architecture, its boot
//! modes (a UEFI-only image on a BIOS-only type such as most `.metal` and
//! older types is refused; a hybrid `uefi-preferred` image boots either
//! way), NitroTPM for `--tpm`, and ENA (every imgforge AMI has it; a type
//! that requires it is then fine, one without it is told).

use serde::Serialize;

use super::platform::Registration;
use super::register::BootMode;
use crate::aws::client::Clients;
use crate::aws::retry::{RetryError, with_retries};
use crate::sys::interrupt::Interrupted;

/// One instance type's verdict (`--json`: `instance_types`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TypeCheck {
    pub instance_type: String,
    pub architectures: Vec<String>,
    pub boot_modes: Vec<String>,
    pub nitro_tpm: String,
    pub ena: String,
    pub ok: bool,
    /// Why it cannot run the image.
    pub reason: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InstanceTypeError {
    #[error("--instance-types: {message}; check the names (e.g. m7i.large, c7g.xlarge)")]
    Unknown { message: String },
    #[error("this image cannot run on {}; nothing was uploaded\n{table}", refused.join(", "))]
    Refused { refused: Vec<String>, table: String },
    #[error("DescribeInstanceTypes: {0}")]
    Api(crate::aws::retry::ApiError),
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
}

/// What EC2 says of one type, before judging it.
#[derive(Debug, Clone, Default)]
pub struct TypeFacts {
    pub instance_type: String,
    pub architectures: Vec<String>,
    pub boot_modes: Vec<String>,
    pub nitro_tpm: String,
    pub ena: String,
}

/// The verdict for one type.
pub fn judge(facts: TypeFacts, registration: Registration, tpm: bool) -> TypeCheck {
    let arch = registration.architecture.as_str();
    let has = |mode: &str| facts.boot_modes.iter().any(|m| m == mode);
    let reason = if !facts.architectures.iter().any(|a| a == arch) {
        Some(format!(
            "it runs {}, the image is {arch}",
            facts.architectures.join("/")
        ))
    } else {
        match registration.boot_mode {
            BootMode::Uefi if !has("uefi") => Some(
                "it boots legacy BIOS only and the image is UEFI-only (build it hybrid, with \
both bootloaders)"
                    .to_string(),
            ),
            BootMode::LegacyBios if !has("legacy-bios") => {
                Some("it boots UEFI only and the image is BIOS-only".to_string())
            }
            _ if tpm && facts.nitro_tpm != "supported" => {
                Some("it has no NitroTPM (--tpm)".to_string())
            }
            _ if tpm && !has("uefi") => Some("NitroTPM needs UEFI, which it lacks".to_string()),
            _ => None,
        }
    };
    TypeCheck {
        instance_type: facts.instance_type,
        architectures: facts.architectures,
        boot_modes: facts.boot_modes,
        nitro_tpm: facts.nitro_tpm,
        ena: facts.ena,
        ok: reason.is_none(),
        reason,
    }
}

/// The checks as a table (stderr).
pub fn table(checks: &[TypeCheck]) -> String {
    let mut out = format!(
        "{:<16} {:<14} {:<20} {:<12} {:<12} verdict\n",
        "instance type", "architecture", "boot modes", "NitroTPM", "ENA"
    );
    for c in checks {
        out.push_str(&format!(
            "{:<16} {:<14} {:<20} {:<12} {:<12} {}\n",
            c.instance_type,
            c.architectures.join(","),
            c.boot_modes.join(","),
            c.nitro_tpm,
            c.ena,
            c.reason
                .as_deref()
                .map_or("ok".to_string(), |r| format!("refused: {r}"))
        ));
    }
    out
}

/// Asks EC2 about `types` and judges each; refuses when any cannot run
/// the image.
pub async fn check(
    clients: &Clients,
    types: &[String],
    registration: Registration,
    tpm: bool,
) -> Result<Vec<TypeCheck>, InstanceTypeError> {
    let result = with_retries(
        &clients.retry,
        "DescribeInstanceTypes",
        "DescribeInstanceTypes",
        || {
            clients
                .ec2
                .describe_instance_types()
                .set_instance_types(Some(types.iter().map(|t| t.as_str().into()).collect()))
                .send()
        },
    )
    .await;
    let output = match result {
        Ok(output) => output,
        Err(RetryError::Interrupted(i)) => return Err(i.into()),
        Err(RetryError::Api(api)) if api.code.contains("InvalidInstanceType") => {
            return Err(InstanceTypeError::Unknown {
                message: api.message,
            });
        }
        Err(RetryError::Api(api)) => return Err(InstanceTypeError::Api(api)),
    };
    let mut checks: Vec<TypeCheck> = output
        .instance_types()
        .iter()
        .map(|t| {
            let facts = TypeFacts {
                instance_type: t
                    .instance_type()
                    .map(|i| i.as_str().to_string())
                    .unwrap_or_default(),
                architectures: t
                    .processor_info()
                    .map(|p| {
                        p.supported_architectures()
                            .iter()
                            .map(|a| a.as_str().to_string())
                            .collect()
                    })
                    .unwrap_or_default(),
                boot_modes: t
                    .supported_boot_modes()
                    .iter()
                    .map(|m| m.as_str().to_string())
                    .collect(),
                nitro_tpm: t
                    .nitro_tpm_support()
                    .map_or("unknown".into(), |n| n.as_str().to_string()),
                ena: t
                    .network_info()
                    .and_then(|n| n.ena_support())
                    .map_or("unknown".into(), |e| e.as_str().to_string()),
            };
            judge(facts, registration, tpm)
        })
        .collect();
    checks.sort_by_key(|c| types.iter().position(|t| *t == c.instance_type));
    let refused: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.instance_type.clone())
        .collect();
    if !refused.is_empty() {
        return Err(InstanceTypeError::Refused {
            refused,
            table: table(&checks),
        });
    }
    eprint!("{}", table(&checks));
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::ami::register::AmiArchitecture;

    fn facts(arch: &str, modes: &[&str], tpm: &str) -> TypeFacts {
        TypeFacts {
            instance_type: "t".into(),
            architectures: vec![arch.into()],
            boot_modes: modes.iter().map(|m| m.to_string()).collect(),
            nitro_tpm: tpm.into(),
            ena: "required".into(),
        }
    }

    fn reg(boot_mode: BootMode) -> Registration {
        Registration {
            architecture: AmiArchitecture::X86_64,
            boot_mode,
        }
    }

    #[test]
    fn verdicts() {
        let bios_only = facts("x86_64", &["legacy-bios"], "unsupported");
        assert!(!judge(bios_only.clone(), reg(BootMode::Uefi), false).ok);
        assert!(judge(bios_only.clone(), reg(BootMode::UefiPreferred), false).ok);
        assert!(!judge(bios_only, reg(BootMode::UefiPreferred), true).ok);
        let arm = facts("arm64", &["uefi"], "supported");
        assert!(!judge(arm, reg(BootMode::Uefi), false).ok);
        let both = facts("x86_64", &["legacy-bios", "uefi"], "supported");
        assert!(judge(both, reg(BootMode::Uefi), true).ok);
    }
}
