//! pacman's local database entries (`var/lib/pacman/local/NAME-VERSION/desc`,
//! and the same `desc` files in a repository database): the fields imgforge
//! reads.

use crate::image::manifest::Package;

/// `%BUILDDATE%` of a pacman `desc` file (seconds since 1970).
pub fn desc_build_date(text: &str) -> Option<u64> {
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line == "%BUILDDATE%" {
            return lines.next()?.trim().parse().ok();
        }
    }
    None
}

/// `%NAME%` and `%VERSION%` of a pacman `desc` file.
pub fn parse_desc(text: &str) -> Option<Package> {
    let mut lines = text.lines();
    let mut name = None;
    let mut version = None;
    while let Some(line) = lines.next() {
        match line {
            "%NAME%" => name = lines.next().map(String::from),
            "%VERSION%" => version = lines.next().map(String::from),
            _ => {}
        }
    }
    Some(Package {
        name: name?,
        version: version?,
    })
}
