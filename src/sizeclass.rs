//! Size classes: the table in `boot/size-classes.toml` and the kernel
//! command line each class bakes into an image.

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
struct Table {
    common_cmdline: Vec<String>,
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

    /// The class's kernel command line tokens (CPU isolation and tuning).
    pub fn cmdline_tokens(&self) -> Vec<String> {
        let isolated = self.isolated_list();
        let mut tokens = vec![
            format!("isolcpus=managed_irq,domain,{isolated}"),
            format!("nohz_full={isolated}"),
            format!("rcu_nocbs={isolated}"),
            format!("irqaffinity={}", self.housekeeping_list()),
        ];
        tokens.extend(table().common_cmdline);
        tokens
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
    fn each_class_isolates_all_but_its_housekeeping_cpus() {
        for (name, hk, iso) in [
            ("small", "0-1", "2-N"),
            ("medium", "0-3", "4-N"),
            ("large", "0-7", "8-N"),
            ("xlarge", "0-15", "16-N"),
        ] {
            let tokens = lookup(name).unwrap().cmdline_tokens();
            assert!(tokens.contains(&format!("isolcpus=managed_irq,domain,{iso}")));
            assert!(tokens.contains(&format!("nohz_full={iso}")));
            assert!(tokens.contains(&format!("rcu_nocbs={iso}")));
            assert!(tokens.contains(&format!("irqaffinity={hk}")));
            assert!(tokens.contains(&"skew_tick=1".to_string()));
        }
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
