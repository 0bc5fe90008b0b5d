//! Size classes: the table in `boot/size-classes.toml`, the CPU lists each
//! class bakes into an image. The command line tokens that use them are the
//! profile's (`rootfs/profiles.toml`, [`crate::profile`]).

use std::collections::BTreeMap;

use serde::Deserialize;

const TABLE: &str = include_str!("../boot/size-classes.toml");

#[derive(Debug, thiserror::Error)]
pub enum SizeClassError {
    #[error("unknown size class `{given}`; choose one of: {known}")]
    Unknown { given: String, known: String },
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct SizeClass {
    pub name: String,
    pub min_vcpus: u32,
    pub max_vcpus: u32,
    /// CPUs 0..housekeeping run the system; the rest are isolated.
    pub housekeeping: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    class: Vec<SizeClass>,
}

fn table() -> Table {
    toml::from_str(TABLE).expect("boot/size-classes.toml is valid (checked by a unit test)")
}

/// Every class, smallest first.
pub fn all() -> Vec<SizeClass> {
    table().class
}

pub fn names() -> Vec<String> {
    all().into_iter().map(|c| c.name).collect()
}

pub fn lookup(name: &str) -> Result<SizeClass, SizeClassError> {
    all()
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(|| SizeClassError::Unknown {
            given: name.to_string(),
            known: names().join(", "),
        })
}

impl SizeClass {
    /// Housekeeping CPU list, e.g. `0-1`.
    pub fn housekeeping_list(&self) -> String {
        format!("0-{}", self.housekeeping - 1)
    }

    /// Isolated CPU list in the kernel's notation, e.g. `2-N`.
    pub fn isolated_list(&self) -> String {
        format!("{}-N", self.housekeeping)
    }

    /// The isolated list as the kernel reports it in
    /// /sys/devices/system/cpu/isolated on a machine with `vcpus` CPUs
    /// (empty when the machine is too small for the class).
    pub fn isolated_on(&self, vcpus: u32) -> String {
        if vcpus <= self.housekeeping {
            String::new()
        } else if vcpus == self.housekeeping + 1 {
            self.housekeeping.to_string()
        } else {
            format!("{}-{}", self.housekeeping, vcpus - 1)
        }
    }

    pub fn fits(&self, vcpus: u32) -> bool {
        (self.min_vcpus..=self.max_vcpus).contains(&vcpus)
    }

    /// The housekeeping CPUs as a hex mask (`/proc/irq/*/smp_affinity`,
    /// `xps_cpus`, the workqueue cpumask), e.g. `3` for 0-1.
    pub fn housekeeping_mask(&self) -> String {
        let mut digits = String::new();
        let mut left = self.housekeeping;
        while left > 0 {
            let bits = left.min(4);
            digits.insert(0, char::from_digit((1u32 << bits) - 1, 16).unwrap());
            left -= bits;
        }
        digits
    }

    /// What templates (layers and the profile's command line) may use.
    pub fn template_variables(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("size_class", self.name.clone()),
            ("housekeeping_cpus", self.housekeeping_list()),
            ("isolated_cpus", self.isolated_list()),
            ("housekeeping_count", self.housekeeping.to_string()),
            ("housekeeping_mask", self.housekeeping_mask()),
            ("min_vcpus", self.min_vcpus.to_string()),
            ("max_vcpus", self.max_vcpus.to_string()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_parses_and_classes_grow() {
        let classes = all();
        assert_eq!(names(), ["small", "medium", "large", "xlarge"]);
        for pair in classes.windows(2) {
            assert!(pair[0].max_vcpus < pair[1].min_vcpus);
            assert!(pair[0].housekeeping < pair[1].housekeeping);
        }
        for class in &classes {
            assert!(class.housekeeping < class.min_vcpus, "{}", class.name);
        }
    }

    #[test]
    fn each_class_cpu_lists_and_masks() {
        for (name, hk, iso, mask, on_min) in [
            ("small", "0-1", "2-N", "3", "2-3"),
            ("medium", "0-3", "4-N", "f", "4-15"),
            ("large", "0-7", "8-N", "ff", "8-47"),
            ("xlarge", "0-15", "16-N", "ffff", "16-127"),
        ] {
            let class = lookup(name).unwrap();
            assert_eq!(class.housekeeping_list(), hk);
            assert_eq!(class.isolated_list(), iso);
            assert_eq!(class.housekeeping_mask(), mask);
            assert_eq!(class.isolated_on(class.min_vcpus), on_min);
            let vars = class.template_variables();
            assert_eq!(vars["housekeeping_cpus"], hk);
            assert_eq!(vars["isolated_cpus"], iso);
            assert_eq!(vars["min_vcpus"], class.min_vcpus.to_string());
        }
        let odd = SizeClass {
            name: "odd".into(),
            min_vcpus: 8,
            max_vcpus: 8,
            housekeeping: 6,
        };
        assert_eq!(odd.housekeeping_mask(), "3f");
    }

    #[test]
    fn isolated_on_a_given_machine() {
        let small = lookup("small").unwrap();
        assert_eq!(small.isolated_on(4), "2-3");
        assert_eq!(small.isolated_on(3), "2");
        assert_eq!(small.isolated_on(2), "");
        assert!(small.fits(8) && !small.fits(16));
    }

    #[test]
    fn unknown_class_lists_the_known_ones() {
        let err = lookup("huge").unwrap_err().to_string();
        assert!(err.contains("`huge`") && err.contains("small, medium, large, xlarge"));
    }
}
