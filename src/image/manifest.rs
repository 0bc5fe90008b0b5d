//! The build manifest: what an image is, written inside it (root
//! filesystem and ESP) and beside it (`IMAGE.json`, with the image's sha256).

use serde::{Deserialize, Serialize};

/// Where the manifest lives on the ESP (readable without mounting).
pub const ESP_PATH: &str = "imgforge/manifest.json";
/// Where the manifest lives in the root filesystem.
pub const ROOTFS_PATH: &str = "etc/imgforge/manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub imgforge_version: String,
    pub distro: String,
    pub release: String,
    pub architecture: String,
    pub size_class: String,
    /// The profile (rootfs/profiles.toml) the image was built with; empty
    /// in manifests written before profiles existed.
    #[serde(default)]
    pub profile: String,
    pub kernel_version: String,
    pub kernel_cmdline: String,
    /// `bios` and/or `uefi`.
    pub boot_modes: Vec<String>,
    pub disk: DiskManifest,
    pub layers: Vec<String>,
    pub packages: Vec<Package>,
    /// The user's provisioning steps (`--ansible`, `--script`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provisioning: Vec<ProvisionRecord>,
    /// SOURCE_DATE_EPOCH of the build (seconds since 1970): every
    /// timestamp in the image is at most this.
    pub build_time: u64,
    /// What the disk ids were derived from (`imgforge build --seed`); with
    /// the same inputs, the same seed and `build_time` rebuild the image
    /// bit for bit. Absent in manifests of images with random ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
    /// The image whose root filesystem this one was laid out on
    /// (`imgforge build --layout-from`): the image depends on its bytes too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout_from: Option<LayoutParent>,
    /// `build --secure-boot`: the signed chain on the ESP; absent when the
    /// image boots an unsigned GRUB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<SecureBootManifest>,
    /// `build --tpm-tools`: the image carries the distro's TPM tools
    /// (`tpm2_pcrread`), so boot-test reads PCR 7 with them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tpm_tools: bool,
    /// The package manager whose database lists the image's packages
    /// (`dpkg`, `pacman`); absent in manifests written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_database: Option<String>,
    /// sha256 of the whole raw image; only in the copy beside the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The parent of a `--layout-from` build.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayoutParent {
    /// The parent's file name, as given.
    pub image: String,
    /// sha256 of the parent's root partition, the bytes the new root
    /// filesystem started from.
    pub root_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DiskManifest {
    pub size_bytes: u64,
    pub disk_guid: String,
    pub partitions: Vec<PartitionManifest>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartitionManifest {
    pub number: u32,
    pub name: String,
    pub type_guid: String,
    pub partition_guid: String,
    pub first_lba: u64,
    pub last_lba: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem_uuid: Option<String>,
}

/// The signed UEFI chain of a Secure Boot image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SecureBootManifest {
    /// On the ESP: shim, the signed GRUB, the early grub.cfg.
    pub esp_files: Vec<String>,
    /// The packages the signed files came from, with versions.
    pub packages: Vec<Package>,
    /// `--secure-boot-key`: the owner's module-signing certificate (enrolled
    /// in db by boot-test and upload) and the modules signed with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_signing: Option<ModuleSigningManifest>,
}

/// Modules signed with the owner's key, and the certificate that verifies them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModuleSigningManifest {
    /// The certificate, PEM.
    pub certificate: String,
    /// Its subject (RFC 2253).
    pub subject: String,
    /// SHA-256 of its DER bytes.
    pub sha256: String,
    /// The signature's hash (the kernel's CONFIG_MODULE_SIG_HASH).
    pub hash: String,
    /// The signed modules, paths in the image (DKMS's copies under
    /// /var/lib/dkms too).
    pub modules: Vec<String>,
    /// Kernels that came unsigned (the owner's own) and were signed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<String>,
}

impl ModuleSigningManifest {
    /// The certificate's DER bytes (for db).
    pub fn certificate_der(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        let body: String = self
            .certificate
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        base64::engine::general_purpose::STANDARD.decode(body).ok()
    }

    /// The installed modules' names as the kernel knows them (`acpi_call`).
    pub fn module_names(&self) -> Vec<String> {
        self.modules
            .iter()
            .filter(|m| m.starts_with("/lib/modules/"))
            .filter_map(|m| m.rsplit('/').next())
            .map(|f| f.trim_end_matches(".ko").replace('-', "_"))
            .collect()
    }
}

/// One provisioning step of the build (`--script`), as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionRecord {
    /// `script` or `ansible`.
    pub kind: String,
    /// The file as given.
    pub name: String,
    /// SHA-256 of its bytes (a playbook: of its folder's files).
    pub sha256: String,
    /// Packages the step installed (`name=version`).
    pub packages_added: Vec<String>,
    /// Whether it could reach the network outside the package manager (a
    /// script can): the image then depends on what was downloaded at build
    /// time, which the lock file does not pin.
    pub network: bool,
    /// Packages installed with the image's for the step (Ansible: Python).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    pub name: String,
    pub version: String,
}

impl Manifest {
    /// Reads a manifest (the ESP's, or `IMAGE.json` beside an image).
    pub fn from_json(text: &str) -> serde_json::Result<Self> {
        serde_json::from_str(text)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("manifest serializes") + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(extra: serde_json::Value) -> Manifest {
        let mut value = serde_json::json!({
            "imgforge_version": "0", "distro": "debian", "release": "bookworm",
            "architecture": "x86_64", "size_class": "small",
            "kernel_version": "6.1.0-28-cloud-amd64", "kernel_cmdline": "",
            "boot_modes": ["bios", "uefi"],
            "disk": {"size_bytes": 0, "disk_guid": "", "partitions": []},
            "layers": [], "packages": [], "build_time": 0
        });
        for (key, v) in extra.as_object().unwrap() {
            value[key] = v.clone();
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn tpm_tools_is_recorded_only_when_the_build_asked_for_them() {
        // An image built without --tpm-tools (or before the field existed)
        // says nothing, so its manifest's bytes are what they were.
        let without = minimal(serde_json::json!({}));
        assert!(!without.tpm_tools);
        assert!(!without.to_json().contains("tpm_tools"));
        let with = minimal(serde_json::json!({"tpm_tools": true}));
        assert!(with.tpm_tools);
        let again: Manifest = serde_json::from_str(&with.to_json()).unwrap();
        assert!(again.tpm_tools);
    }
}
