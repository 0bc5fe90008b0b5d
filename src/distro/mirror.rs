//! Reading a mirror's state: small index files fetched with `curl` (short
//! timeouts, `file://` too), their digests, and the dates they carry.

use std::fs;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::sys::fsio::{PathError, at};
use crate::sys::tool::{HostTool, Tool, ToolError};

/// The host tool that reads mirror state.
pub const CURL: HostTool = HostTool::new("curl", "curl");

/// Seconds to wait for a connection, and for a whole index file: the mirror
/// state is read before every build, so an unreachable mirror must fail fast.
const CONNECT_TIMEOUT_S: u32 = 5;
const TRANSFER_TIMEOUT_S: u32 = 60;

/// Downloads `url` into `dest` (http, https or file).
pub fn fetch(url: &str, dest: &Path) -> Result<(), ToolError> {
    Tool::new("curl")
        .args(["--fail", "--silent", "--show-error", "--location"])
        .arg("--connect-timeout")
        .arg(CONNECT_TIMEOUT_S.to_string())
        .arg("--max-time")
        .arg(TRANSFER_TIMEOUT_S.to_string())
        .arg("--output")
        .arg(dest)
        .arg(url)
        .run()?;
    Ok(())
}

/// Whether a curl failure means "the server answered, the file is not
/// there" (HTTP 4xx, or a missing `file://` path), as opposed to an
/// unreachable mirror.
pub fn is_not_found(err: &ToolError) -> bool {
    match err {
        ToolError::Failed { tail, .. } => {
            tail.contains("error: 404")
                || tail.contains("error: 403")
                || tail.contains("error: 410")
                || tail.contains("Couldn't open file")
        }
        _ => false,
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn read(path: &Path) -> Result<Vec<u8>, PathError> {
    fs::read(path).map_err(at("read", path))
}

/// `Sat, 11 Jul 2026 10:16:37 UTC` (a Release file's `Date:`) as
/// `2026-07-11T10:16:37Z`; None for anything else. Debian's archive
/// always writes UTC.
pub fn rfc2822_to_iso(text: &str) -> Option<String> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let words: Vec<&str> = text.split_whitespace().collect();
    let [_, day, month, year, time, zone] = words.as_slice() else {
        return None;
    };
    if !matches!(*zone, "UTC" | "GMT" | "+0000" | "Z") {
        return None;
    }
    let month = MONTHS.iter().position(|m| m == month)? + 1;
    let day: u32 = day.parse().ok()?;
    let year: u32 = year.parse().ok()?;
    let clock: Vec<u32> = time
        .split(':')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let [h, m, s] = clock.as_slice() else {
        return None;
    };
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z"
    ))
}

pub use crate::sys::calendar::epoch_to_iso;

/// `YYYY-MM-DDTHH:MM:SSZ` as seconds since 1970 (UTC); None for anything
/// else. The inverse of [`epoch_to_iso`].
pub fn iso_to_epoch(text: &str) -> Option<u64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let numbers =
        |s: &str, sep: char| -> Option<Vec<i64>> { s.split(sep).map(|n| n.parse().ok()).collect() };
    let [year, month, day] = numbers(date, '-')?[..] else {
        return None;
    };
    let [h, m, s] = numbers(time, ':')?[..] else {
        return None;
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // H. Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let mp = (month + 9) % 12;
    let day_of_year = (153 * mp + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + m * 60 + s).ok()
}

/// The newest date a mirror state carries, as seconds since 1970: what the
/// state was published at, known before anything is bootstrapped.
pub fn newest_date(state: &[crate::distro::MirrorDigest]) -> Option<u64> {
    state
        .iter()
        .filter_map(|m| m.date.as_deref().and_then(iso_to_epoch))
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_dates_become_sortable_utc() {
        assert_eq!(
            rfc2822_to_iso("Sat, 11 Jul 2026 10:16:37 UTC").as_deref(),
            Some("2026-07-11T10:16:37Z")
        );
        assert_eq!(
            rfc2822_to_iso("Mon, 1 Jan 2024 00:00:05 UTC").as_deref(),
            Some("2024-01-01T00:00:05Z")
        );
        assert_eq!(rfc2822_to_iso("Sat, 11 Jul 2026 10:16:37 +0200"), None);
        assert_eq!(rfc2822_to_iso("yesterday"), None);
    }

    #[test]
    fn utc_dates_become_epoch_seconds_and_back() {
        for seconds in [0, 951_782_400, 1_709_251_199, 1_783_765_000, 4_102_444_800] {
            let iso = epoch_to_iso(seconds);
            assert_eq!(iso_to_epoch(&iso), Some(seconds), "{iso}");
        }
        assert_eq!(
            iso_to_epoch("2026-07-11T10:16:37Z"),
            Some(1_783_765_000 - 3)
        );
        assert_eq!(iso_to_epoch("2026-07-11T10:16:37"), None);
        assert_eq!(iso_to_epoch("2026-13-01T00:00:00Z"), None);
        assert_eq!(iso_to_epoch("yesterday"), None);
    }

    #[test]
    fn epoch_seconds_become_utc_dates() {
        assert_eq!(epoch_to_iso(0), "1970-01-01T00:00:00Z");
        // `date -u -d @1709251199`: leap day, last second.
        assert_eq!(epoch_to_iso(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(epoch_to_iso(1_783_765_000), "2026-07-11T10:16:40Z");
    }
}
