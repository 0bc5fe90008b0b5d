//! What the guest must show, read from the image's own manifest (through
//! [`crate::image::inspect`]): its kernel command line, its size class and
//! its root filesystem's UUID.
//!
//! The size class's CPU-list tokens (`isolcpus=...,2-N`, `irqaffinity=0-1`)
//! are not rebuilt here: the build rendered them from the profile's
//! templates (`rootfs/profiles.toml`) into the command line the manifest
//! records, so they are that command line's tokens whose CPU list is one of
//! the class's template values (`isolated_cpus`, `housekeeping_cpus`). A
//! profile that adds, drops or renames one changes what boot-test expects
//! with no change here.

use super::report::Expectations;
use crate::image::firmware::Firmware;
use crate::image::inspect::ImageInfo;
use crate::image::manifest::Manifest;
use crate::sizeclass::SizeClass;

/// The expectations of one boot of `firmware` on `smp` vCPUs.
pub fn expectations(
    firmware: Firmware,
    smp: u32,
    class: Option<&SizeClass>,
    info: &ImageInfo,
) -> Expectations {
    let manifest = info.manifest.as_ref();
    let manifest_cmdline: Vec<String> = manifest
        .map(|m| {
            m.kernel_cmdline
                .split_whitespace()
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    Expectations {
        firmware,
        smp,
        class: class.cloned(),
        class_tokens: class
            .map(|c| class_tokens(&manifest_cmdline, c))
            .unwrap_or_default(),
        manifest_cmdline,
        root_uuid: manifest.and_then(root_uuid),
        secure_boot: false,
        tpm: false,
        tpm_tools: manifest.is_some_and(|m| m.tpm_tools),
        signed_modules: manifest
            .and_then(|m| m.secure_boot.as_ref())
            .and_then(|s| s.module_signing.as_ref())
            .map(|signing| signing.module_names())
            .unwrap_or_default(),
    }
}

/// The command line's tokens that carry one of the class's CPU lists: a
/// `key=value` whose value (or its last comma-separated field, after flags
/// such as `managed_irq,domain`) is the class's `isolated_cpus` or
/// `housekeeping_cpus`.
pub fn class_tokens(cmdline: &[String], class: &SizeClass) -> Vec<String> {
    let vars = class.template_variables();
    let lists = [&vars["isolated_cpus"], &vars["housekeeping_cpus"]];
    cmdline
        .iter()
        .filter(|token| {
            token
                .split_once('=')
                .and_then(|(_, value)| value.rsplit(',').next())
                .is_some_and(|list| lists.iter().any(|l| *l == list))
        })
        .cloned()
        .collect()
}

/// The root filesystem's UUID: the partition named `root`, else the last
/// partition with a filesystem other than FAT.
fn root_uuid(manifest: &Manifest) -> Option<String> {
    let parts = &manifest.disk.partitions;
    parts
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case("root") && p.filesystem_uuid.is_some())
        .or_else(|| {
            parts.iter().rev().find(|p| {
                p.filesystem_uuid.is_some()
                    && !matches!(p.filesystem.as_deref(), Some("vfat" | "fat" | "fat32"))
            })
        })
        .and_then(|p| p.filesystem_uuid.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sizeclass;

    fn tokens(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_class_tokens_are_the_manifests_tokens_with_the_classs_cpu_lists() {
        let small = sizeclass::lookup("small").unwrap();
        let cmdline = tokens(
            "root=UUID=6f1c2a4e console=tty0 console=ttyS0,115200 \
             isolcpus=managed_irq,domain,2-N nohz_full=2-N rcu_nocbs=2-N irqaffinity=0-1 \
             skew_tick=1 nosoftlockup audit=0",
        );
        assert_eq!(
            class_tokens(&cmdline, &small),
            [
                "isolcpus=managed_irq,domain,2-N",
                "nohz_full=2-N",
                "rcu_nocbs=2-N",
                "irqaffinity=0-1"
            ]
        );
        // Another class's lists are not this class's.
        let medium = sizeclass::lookup("medium").unwrap();
        assert!(class_tokens(&cmdline, &medium).is_empty());
        // An untuned profile's command line promises no CPU lists.
        let base = tokens("root=UUID=6f1c2a4e console=ttyS0,115200");
        assert!(class_tokens(&base, &small).is_empty());
    }
}
