//! The AMI's block devices beyond the root snapshot: the root volume's type,
//! IOPS and throughput, extra EBS volumes (`--volume`), instance-store
//! mappings (`--instance-store`), all checked against EBS's limits for the
//! volume type ([`VOLUME_TYPES`]) before anything is uploaded.

use aws_sdk_ec2::types::{BlockDeviceMapping, EbsBlockDevice, VolumeType};

use crate::units::ByteSize;

/// What EBS allows for one volume type: the ranges the EC2 API documents
/// for `EbsBlockDevice` in the locked aws-sdk-ec2 (1.274: gp3 1-65,536 GiB,
/// 3,000-80,000 IOPS, 125-2,000 MiB/s; io2 up to 256,000 IOPS).
#[derive(Debug, Clone, Copy)]
pub struct VolumeLimits {
    pub name: &'static str,
    /// Whether an instance can boot from it.
    pub bootable: bool,
    pub size_gib: (u64, u64),
    /// Provisioned IOPS (min, max), when the type takes them.
    pub iops: Option<(u64, u64)>,
    /// Largest IOPS per GiB of volume size.
    pub iops_per_gib: u64,
    /// Provisioned throughput in MiB/s (min, max), when the type takes it.
    pub throughput: Option<(u64, u64)>,
    /// Largest throughput (MiB/s) per provisioned IOPS, as a divisor: at
    /// most IOPS / this.
    pub iops_per_mibps: u64,
    /// IOPS EBS gives without asking (gp3's baseline).
    pub default_iops: Option<u64>,
}

pub const VOLUME_TYPES: &[VolumeLimits] = &[
    VolumeLimits {
        name: "gp3",
        bootable: true,
        size_gib: (1, 65_536),
        iops: Some((3_000, 80_000)),
        iops_per_gib: 500,
        throughput: Some((125, 2_000)),
        iops_per_mibps: 4,
        default_iops: Some(3_000),
    },
    VolumeLimits {
        name: "gp2",
        bootable: true,
        size_gib: (1, 16_384),
        iops: None,
        iops_per_gib: 0,
        throughput: None,
        iops_per_mibps: 0,
        default_iops: None,
    },
    VolumeLimits {
        name: "io1",
        bootable: true,
        size_gib: (4, 16_384),
        iops: Some((100, 64_000)),
        iops_per_gib: 50,
        throughput: None,
        iops_per_mibps: 0,
        default_iops: None,
    },
    VolumeLimits {
        name: "io2",
        bootable: true,
        size_gib: (4, 65_536),
        iops: Some((100, 256_000)),
        iops_per_gib: 1_000,
        throughput: None,
        iops_per_mibps: 0,
        default_iops: None,
    },
    VolumeLimits {
        name: "st1",
        bootable: false,
        size_gib: (125, 16_384),
        iops: None,
        iops_per_gib: 0,
        throughput: None,
        iops_per_mibps: 0,
        default_iops: None,
    },
    VolumeLimits {
        name: "sc1",
        bootable: false,
        size_gib: (125, 16_384),
        iops: None,
        iops_per_gib: 0,
        throughput: None,
        iops_per_mibps: 0,
        default_iops: None,
    },
    VolumeLimits {
        name: "standard",
        bootable: true,
        size_gib: (1, 1_024),
        iops: None,
        iops_per_gib: 0,
        throughput: None,
        iops_per_mibps: 0,
        default_iops: None,
    },
];

pub fn limits(name: &str) -> Result<&'static VolumeLimits, String> {
    VOLUME_TYPES.iter().find(|t| t.name == name).ok_or_else(|| {
        let names: Vec<&str> = VOLUME_TYPES.iter().map(|t| t.name).collect();
        format!("{name:?} is not an EBS volume type ({})", names.join(", "))
    })
}

/// One EBS volume's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub volume_type: String,
    pub iops: Option<u64>,
    pub throughput: Option<u64>,
}

impl Default for VolumeSpec {
    fn default() -> Self {
        Self {
            volume_type: "gp3".into(),
            iops: None,
            throughput: None,
        }
    }
}

impl VolumeSpec {
    /// Checks the settings against the type's limits for a volume of
    /// `size_gib`; `what` names the volume in the message.
    pub fn check(&self, size_gib: u64, what: &str) -> Result<(), String> {
        let t = limits(&self.volume_type)?;
        let (lo, hi) = t.size_gib;
        if !(lo..=hi).contains(&size_gib) {
            return Err(format!(
                "{what}: a {} volume holds {lo} to {hi} GiB, not {size_gib}",
                t.name
            ));
        }
        if let Some(iops) = self.iops {
            let Some((lo, hi)) = t.iops else {
                return Err(format!(
                    "{what}: {} volumes take no IOPS setting (use gp3, io1 or io2)",
                    t.name
                ));
            };
            // gp3's baseline comes with any size; more needs size.
            let by_size = size_gib
                .saturating_mul(t.iops_per_gib)
                .max(t.default_iops.unwrap_or_default());
            if !(lo..=hi).contains(&iops) {
                return Err(format!(
                    "{what}: {} IOPS must be {lo} to {hi}, not {iops}",
                    t.name
                ));
            }
            if iops > by_size {
                return Err(format!(
                    "{what}: {iops} IOPS needs at least {} GiB on {} ({} IOPS per GiB); \
make the volume larger or ask for fewer IOPS",
                    iops.div_ceil(t.iops_per_gib),
                    t.name,
                    t.iops_per_gib
                ));
            }
        } else if t.iops.is_some() && t.default_iops.is_none() {
            return Err(format!("{what}: {} volumes need an IOPS setting", t.name));
        }
        if let Some(mibps) = self.throughput {
            let Some((lo, hi)) = t.throughput else {
                return Err(format!(
                    "{what}: {} volumes take no throughput setting (only gp3)",
                    t.name
                ));
            };
            if !(lo..=hi).contains(&mibps) {
                return Err(format!(
                    "{what}: {} throughput must be {lo} to {hi} MiB/s, not {mibps}",
                    t.name
                ));
            }
            let iops = self.iops.or(t.default_iops).unwrap_or_default();
            if mibps * t.iops_per_mibps > iops {
                return Err(format!(
                    "{what}: {mibps} MiB/s needs at least {} IOPS on {} (0.25 MiB/s per IOPS); \
raise the IOPS",
                    mibps * t.iops_per_mibps,
                    t.name
                ));
            }
        }
        Ok(())
    }

    fn ebs(&self, size_gib: u64) -> aws_sdk_ec2::types::builders::EbsBlockDeviceBuilder {
        EbsBlockDevice::builder()
            .volume_type(VolumeType::from(self.volume_type.as_str()))
            .volume_size(size_gib as i32)
            .delete_on_termination(true)
            .set_iops(self.iops.map(|n| n as i32))
            .set_throughput(self.throughput.map(|n| n as i32))
    }
}

/// An extra EBS volume (`--volume DEVICE=SIZE[,type=T][,iops=N][,throughput=N]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraVolume {
    pub device: String,
    pub size_gib: u64,
    pub spec: VolumeSpec,
}

impl ExtraVolume {
    pub fn parse(text: &str) -> Result<Self, String> {
        let usage = "DEVICE=SIZE[,type=T][,iops=N][,throughput=N], e.g. /dev/sdf=100G,type=gp3";
        let (device, rest) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not {usage}"))?;
        if !device.starts_with("/dev/") || device.len() < 7 {
            return Err(format!(
                "{text:?}: the device is a name such as /dev/sdf ({usage})"
            ));
        }
        let mut parts = rest.split(',');
        let size: ByteSize = parts.next().unwrap_or_default().parse()?;
        if size.bytes() == 0 || !size.bytes().is_multiple_of(ByteSize::GIB) {
            return Err(format!(
                "{text:?}: the size is a whole number of GiB (e.g. 100G)"
            ));
        }
        let mut spec = VolumeSpec::default();
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not KEY=VALUE ({usage})"))?;
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{key}={value:?} is not a whole number"))
            };
            match key {
                "type" => spec.volume_type = limits(value)?.name.to_string(),
                "iops" => spec.iops = Some(number()?),
                "throughput" => spec.throughput = Some(number()?),
                _ => return Err(format!("unknown volume setting {key:?} ({usage})")),
            }
        }
        let volume = ExtraVolume {
            device: device.to_string(),
            size_gib: size.bytes() / ByteSize::GIB,
            spec,
        };
        volume.spec.check(volume.size_gib, device)?;
        Ok(volume)
    }
}

/// Everything about the AMI's block devices that the flags set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Storage {
    pub root: VolumeSpec,
    pub volumes: Vec<ExtraVolume>,
    /// Instance-store volumes mapped (ephemeral0..N-1).
    pub instance_store: u32,
}

impl Storage {
    /// The checks before any upload (the root volume's size is known then).
    pub fn check(&self, root_device: &str, root_gib: u64) -> Result<(), String> {
        let root = limits(&self.root.volume_type)?;
        if !root.bootable {
            return Err(format!(
                "--root-volume-type {}: an instance cannot boot from it (use gp3, gp2, io1, io2)",
                root.name
            ));
        }
        self.root.check(root_gib, "the root volume")?;
        let mut devices = vec![root_device.to_string()];
        for volume in &self.volumes {
            if devices.contains(&volume.device) {
                return Err(format!(
                    "--volume {}: the device is used twice",
                    volume.device
                ));
            }
            devices.push(volume.device.clone());
        }
        if self.instance_store > 24 {
            return Err("--instance-store takes at most 24 volumes".into());
        }
        Ok(())
    }

    /// RegisterImage's mappings: the root, the extra volumes, the instance
    /// stores (on the first free /dev/sdX names from sdb).
    pub fn mappings(
        &self,
        root_device: &str,
        snapshot_id: &str,
        root_gib: u64,
    ) -> Vec<BlockDeviceMapping> {
        let mut out = vec![
            BlockDeviceMapping::builder()
                .device_name(root_device)
                .ebs(self.root.ebs(root_gib).snapshot_id(snapshot_id).build())
                .build(),
        ];
        for volume in &self.volumes {
            out.push(
                BlockDeviceMapping::builder()
                    .device_name(&volume.device)
                    .ebs(volume.spec.ebs(volume.size_gib).build())
                    .build(),
            );
        }
        let used: Vec<&str> = self.volumes.iter().map(|v| v.device.as_str()).collect();
        let free = ('b'..='z').map(|c| format!("/dev/sd{c}")).filter(|d| {
            !used.contains(&d.as_str()) && !used.contains(&d.replace("sd", "xvd").as_str())
        });
        for (index, device) in (0..self.instance_store).zip(free) {
            out.push(
                BlockDeviceMapping::builder()
                    .device_name(device)
                    .virtual_name(format!("ephemeral{index}"))
                    .build(),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(t: &str, iops: Option<u64>, throughput: Option<u64>) -> VolumeSpec {
        VolumeSpec {
            volume_type: t.into(),
            iops,
            throughput,
        }
    }

    #[test]
    fn limits_per_type() {
        assert!(spec("gp3", Some(6_000), Some(500)).check(20, "r").is_ok());
        assert!(spec("gp3", None, Some(125)).check(8, "r").is_ok());
        assert!(spec("gp3", Some(3_000), Some(750)).check(1, "r").is_ok());
        let err = spec("gp3", Some(2_000), None).check(8, "r").unwrap_err();
        assert!(err.contains("3000 to 80000"), "{err}");
        let err = spec("gp3", Some(6_000), None).check(8, "r").unwrap_err();
        assert!(err.contains("at least 12 GiB"), "{err}");
        let err = spec("gp3", Some(3_000), Some(1_000))
            .check(8, "r")
            .unwrap_err();
        assert!(err.contains("at least 4000 IOPS"), "{err}");
        assert!(spec("gp2", Some(100), None).check(8, "r").is_err());
        assert!(
            spec("io2", None, None).check(8, "r").is_err(),
            "io2 needs IOPS"
        );
        assert!(spec("io2", Some(4_000), Some(200)).check(8, "r").is_err());
        assert!(spec("io1", Some(400), None).check(8, "r").is_ok());
        assert!(limits("gp9").is_err());
        // Sizes as the EC2 API documents them: gp3 and io2 to 64 TiB, gp2
        // and io1 to 16 TiB.
        assert!(spec("gp3", None, None).check(65_536, "r").is_ok());
        assert!(spec("gp3", None, None).check(65_537, "r").is_err());
        assert!(spec("gp2", None, None).check(16_385, "r").is_err());
        assert!(spec("io1", Some(1_000), None).check(16_385, "r").is_err());
    }

    #[test]
    fn volumes_parse_and_map() {
        let v = ExtraVolume::parse("/dev/sdf=100G,type=io2,iops=5000").unwrap();
        assert_eq!((v.size_gib, v.spec.iops), (100, Some(5_000)));
        assert!(ExtraVolume::parse("/dev/sdf").is_err());
        assert!(ExtraVolume::parse("sdf=1G").is_err());
        assert!(ExtraVolume::parse("/dev/sdf=1M").is_err());
        assert!(ExtraVolume::parse("/dev/sdf=10G,colour=red").is_err());
        let storage = Storage {
            root: VolumeSpec::default(),
            volumes: vec![ExtraVolume::parse("/dev/sdb=10G").unwrap()],
            instance_store: 2,
        };
        let maps = storage.mappings("/dev/xvda", "snap-1", 8);
        let names: Vec<&str> = maps.iter().filter_map(|m| m.device_name()).collect();
        assert_eq!(names, ["/dev/xvda", "/dev/sdb", "/dev/sdc", "/dev/sdd"]);
        assert_eq!(maps[2].virtual_name(), Some("ephemeral0"));
        assert!(storage.check("/dev/xvda", 8).is_ok());
        let twice = Storage {
            volumes: vec![
                ExtraVolume::parse("/dev/sdb=10G").unwrap(),
                ExtraVolume::parse("/dev/sdb=20G").unwrap(),
            ],
            ..storage
        };
        assert!(twice.check("/dev/xvda", 8).is_err());
    }
}
