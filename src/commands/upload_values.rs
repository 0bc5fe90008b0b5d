//! The values of `upload` flags that remember an old spelling (a bare
//! number that used to mean another unit), for the one-line warnings.

use std::str::FromStr;
use std::time::Duration;

use imgforge::units::{ByteSize, parse_duration};

/// `--volume-size`: a size in the one notation; a bare number is still read
/// as GiB (its old unit), with a warning, for one release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeSize {
    pub size: ByteSize,
    /// Given as a bare number (GiB).
    pub bare: bool,
}

impl FromStr for VolumeSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(gib) = text.parse::<u64>() {
            return gib
                .checked_mul(ByteSize::GIB)
                .filter(|b| *b > 0)
                .map(|bytes| VolumeSize {
                    size: ByteSize(bytes),
                    bare: true,
                })
                .ok_or_else(|| format!("{text:?} is not a volume size (e.g. 8G)"));
        }
        Ok(VolumeSize {
            size: text.parse()?,
            bare: false,
        })
    }
}

/// A duration flag that remembers whether it was a bare number (seconds),
/// to warn where that used to mean minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout {
    pub duration: Duration,
    pub bare: bool,
}

impl FromStr for Timeout {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Ok(Timeout {
            duration: parse_duration(text)?,
            bare: !text.trim().is_empty() && text.trim().chars().all(|c| c.is_ascii_digit()),
        })
    }
}
