//! EC2 RegisterImage for a from-scratch image, idempotent by name.
//!
//! EC2's defaults are for another era (paravirtual, i386, no ENA), so every
//! attribute a Nitro instance needs is sent explicitly.

use aws_sdk_ec2::types::{
    ArchitectureValues, BootModeValues, Filter, ImdsSupportValues, ResourceType, Tag,
    TagSpecification, TpmSupportValues,
};

use super::digest::IMAGE_SHA256_TAG;
use super::storage::Storage;
use crate::aws::client::Clients;
use crate::aws::ebs::snapshot::{self, SnapshotError};
use crate::aws::retry::{ApiError, RetryError, with_retries};
use crate::sys::interrupt::Interrupted;

/// The root device every imgforge AMI uses.
pub const ROOT_DEVICE: &str = "/dev/xvda";

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("RegisterImage answered without an image id")]
    NoImageId,
    #[error("more than one AMI is named {name:?} ({ids}); deregister the extra ones first")]
    Ambiguous { name: String, ids: String },
}

impl From<RetryError> for RegisterError {
    fn from(err: RetryError) -> Self {
        match err {
            RetryError::Api(api) => Self::Api(api),
            RetryError::Interrupted(i) => Self::Interrupted(i),
        }
    }
}

/// Firmware the instance boots with (RegisterImage's BootMode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootMode {
    /// UEFI where the instance type supports it, else legacy BIOS (needs both bootloaders).
    UefiPreferred,
    /// UEFI only (required on Graviton, and for NitroTPM).
    Uefi,
    /// Legacy BIOS only.
    LegacyBios,
}

impl BootMode {
    pub const ALL: [BootMode; 3] = [Self::UefiPreferred, Self::Uefi, Self::LegacyBios];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UefiPreferred => "uefi-preferred",
            Self::Uefi => "uefi",
            Self::LegacyBios => "legacy-bios",
        }
    }

    fn to_ec2(self) -> BootModeValues {
        match self {
            Self::UefiPreferred => BootModeValues::UefiPreferred,
            Self::Uefi => BootModeValues::Uefi,
            Self::LegacyBios => BootModeValues::LegacyBios,
        }
    }

    /// The boot mode for an image carrying these bootloaders; `None` when it
    /// carries neither.
    pub fn from_bootloaders(bios: bool, uefi: bool) -> Option<Self> {
        match (bios, uefi) {
            (true, true) => Some(Self::UefiPreferred),
            (false, true) => Some(Self::Uefi),
            (true, false) => Some(Self::LegacyBios),
            (false, false) => None,
        }
    }
}

impl std::str::FromStr for BootMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == text)
            .ok_or_else(|| {
                format!("{text:?} is not a boot mode: uefi-preferred, uefi or legacy-bios")
            })
    }
}

impl std::fmt::Display for BootMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// RegisterImage's Architecture value: EC2's name for the machine, which
/// `boot/architectures.toml` gives each [`crate::platform::Architecture`]
/// row (its `ec2` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum AmiArchitecture {
    #[serde(rename = "x86_64")]
    X86_64,
    #[serde(rename = "arm64")]
    Arm64,
}

impl AmiArchitecture {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Arm64 => "arm64",
        }
    }
}

impl std::str::FromStr for AmiArchitecture {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "x86_64" => Ok(Self::X86_64),
            "arm64" => Ok(Self::Arm64),
            _ => Err(format!(
                "{text:?} is not an EC2 architecture RegisterImage takes (x86_64, arm64)"
            )),
        }
    }
}

/// Everything RegisterImage is called with.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub name: String,
    pub description: String,
    pub snapshot_id: String,
    pub volume_size_gib: u64,
    pub architecture: AmiArchitecture,
    pub boot_mode: BootMode,
    pub tpm: bool,
    /// UefiData: the Secure Boot variables (AWS's format, base64).
    pub uefi_data: Option<String>,
    pub tags: Vec<(String, String)>,
    /// The root volume's settings, extra and instance-store volumes.
    pub storage: Storage,
}

/// An AMI that already exists.
#[derive(Debug, Clone)]
pub struct ExistingImage {
    pub image_id: String,
    pub snapshot_ids: Vec<String>,
    /// Its [`IMAGE_SHA256_TAG`]: the image it holds, when imgforge made it.
    pub image_sha256: Option<String>,
}

/// The AMI of this name owned by this account, if any.
pub async fn find_by_name(
    clients: &Clients,
    name: &str,
) -> Result<Option<ExistingImage>, RegisterError> {
    let output = with_retries(&clients.retry, "DescribeImages", "DescribeImages", || {
        clients
            .ec2
            .describe_images()
            .owners("self")
            .filters(Filter::builder().name("name").values(name).build())
            .send()
    })
    .await?;
    let images: Vec<ExistingImage> = output
        .images()
        .iter()
        // Filters are matched server-side, but a filter the server ignores
        // must not make us reuse someone else's AMI.
        .filter(|image| image.name() == Some(name))
        .filter_map(|image| {
            Some(ExistingImage {
                image_id: image.image_id()?.to_string(),
                snapshot_ids: image
                    .block_device_mappings()
                    .iter()
                    .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
                    .collect(),
                image_sha256: image
                    .tags()
                    .iter()
                    .find(|t| t.key() == Some(IMAGE_SHA256_TAG))
                    .and_then(|t| t.value())
                    .map(str::to_ascii_lowercase),
            })
        })
        .collect();
    match images.len() {
        0 => Ok(None),
        1 => Ok(images.into_iter().next()),
        _ => Err(RegisterError::Ambiguous {
            name: name.to_string(),
            ids: images
                .iter()
                .map(|i| i.image_id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// RegisterImage; answers the new AMI id.
pub async fn register(clients: &Clients, spec: &ImageSpec) -> Result<String, RegisterError> {
    let mappings = spec
        .storage
        .mappings(ROOT_DEVICE, &spec.snapshot_id, spec.volume_size_gib);
    let tag_specs = if spec.tags.is_empty() {
        None
    } else {
        Some(vec![
            TagSpecification::builder()
                .resource_type(ResourceType::Image)
                .set_tags(Some(
                    spec.tags
                        .iter()
                        .map(|(k, v)| Tag::builder().key(k).value(v).build())
                        .collect(),
                ))
                .build(),
        ])
    };
    let architecture = match spec.architecture {
        AmiArchitecture::X86_64 => ArchitectureValues::X8664,
        AmiArchitecture::Arm64 => ArchitectureValues::Arm64,
    };
    let output = with_retries(&clients.retry, "RegisterImage", "RegisterImage", || {
        let mut request = clients
            .ec2
            .register_image()
            .name(&spec.name)
            .description(&spec.description)
            .virtualization_type("hvm")
            .architecture(architecture.clone())
            .root_device_name(ROOT_DEVICE)
            .set_block_device_mappings(Some(mappings.clone()))
            .ena_support(true)
            .imds_support(ImdsSupportValues::V20)
            .boot_mode(spec.boot_mode.to_ec2())
            .set_tag_specifications(tag_specs.clone());
        if spec.tpm {
            request = request.tpm_support(TpmSupportValues::V20);
        }
        if let Some(uefi_data) = &spec.uefi_data {
            request = request.uefi_data(uefi_data);
        }
        request.send()
    })
    .await?;
    output
        .image_id()
        .map(str::to_string)
        .ok_or(RegisterError::NoImageId)
}

/// DeregisterImage, then DeleteSnapshot on the snapshots it used.
pub async fn deregister(clients: &Clients, image: &ExistingImage) -> Result<(), RegisterError> {
    with_retries(&clients.retry, "DeregisterImage", "DeregisterImage", || {
        clients
            .ec2
            .deregister_image()
            .image_id(&image.image_id)
            .send()
    })
    .await?;
    for snapshot_id in &image.snapshot_ids {
        snapshot::delete(clients, snapshot_id).await?;
        log::info!("deleted snapshot {snapshot_id} of {}", image.image_id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_mode_from_bootloaders() {
        assert_eq!(
            BootMode::from_bootloaders(true, true),
            Some(BootMode::UefiPreferred)
        );
        assert_eq!(
            BootMode::from_bootloaders(false, true),
            Some(BootMode::Uefi)
        );
        assert_eq!(
            BootMode::from_bootloaders(true, false),
            Some(BootMode::LegacyBios)
        );
        assert_eq!(BootMode::from_bootloaders(false, false), None);
    }
}
