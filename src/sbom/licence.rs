//! Licences as a package declares them machine-readably: Debian's DEP-5
//! `copyright` file (`Format: .../copyright-format/1.0/`), the `License:`
//! of its `Files: *` paragraph, in SPDX terms. A licence name with no SPDX
//! identifier here, or a free-form copyright file, gives none: an SBOM
//! says "no assertion" rather than guess. Licences already written as
//! SPDX expressions (pacman's `%LICENSE%`) are checked against the SPDX
//! licence list ([`all_of`]).

/// Debian's short names (lower case) and their SPDX identifiers.
const SPDX_IDS: &[(&str, &str)] = &[
    ("agpl-3", "AGPL-3.0-only"),
    ("agpl-3+", "AGPL-3.0-or-later"),
    ("apache-2", "Apache-2.0"),
    ("apache-2.0", "Apache-2.0"),
    ("artistic-2.0", "Artistic-2.0"),
    ("bsd-2-clause", "BSD-2-Clause"),
    ("bsd-3-clause", "BSD-3-Clause"),
    ("bsd-4-clause", "BSD-4-Clause"),
    ("cc0", "CC0-1.0"),
    ("cc0-1.0", "CC0-1.0"),
    ("curl", "curl"),
    ("expat", "MIT"),
    ("gfdl-1.2+", "GFDL-1.2-or-later"),
    ("gfdl-1.3+", "GFDL-1.3-or-later"),
    ("gpl-1+", "GPL-1.0-or-later"),
    ("gpl-2", "GPL-2.0-only"),
    ("gpl-2+", "GPL-2.0-or-later"),
    ("gpl-2.0", "GPL-2.0-only"),
    ("gpl-2.0+", "GPL-2.0-or-later"),
    ("gpl-3", "GPL-3.0-only"),
    ("gpl-3+", "GPL-3.0-or-later"),
    ("gpl-3.0", "GPL-3.0-only"),
    ("gpl-3.0+", "GPL-3.0-or-later"),
    ("isc", "ISC"),
    ("lgpl-2", "LGPL-2.0-only"),
    ("lgpl-2+", "LGPL-2.0-or-later"),
    ("lgpl-2.1", "LGPL-2.1-only"),
    ("lgpl-2.1+", "LGPL-2.1-or-later"),
    ("lgpl-3", "LGPL-3.0-only"),
    ("lgpl-3+", "LGPL-3.0-or-later"),
    ("mit", "MIT"),
    ("mpl-1.1", "MPL-1.1"),
    ("mpl-2.0", "MPL-2.0"),
    ("openssl", "OpenSSL"),
    ("psf-2", "PSF-2.0"),
    ("zlib", "Zlib"),
];

/// The SPDX expression of a DEP-5 copyright file's `Files: *` licence;
/// `None` for a file in another format or a licence without an SPDX id.
pub fn from_copyright(text: &str) -> Option<String> {
    let mut paragraphs = text.split("\n\n");
    let header = paragraphs.next()?;
    if !header
        .lines()
        .any(|l| l.starts_with("Format:") && l.contains("copyright-format/1.0"))
    {
        return None;
    }
    paragraphs
        .filter(|p| field(p, "Files").is_some_and(|f| f.split_whitespace().next() == Some("*")))
        .find_map(|p| field(p, "License"))
        .and_then(|name| spdx_expression(&name))
}

/// A field's first line in a deb822 paragraph.
fn field(paragraph: &str, name: &str) -> Option<String> {
    paragraph.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.eq_ignore_ascii_case(name) && !line.starts_with([' ', '\t']))
            .then(|| value.trim().to_string())
    })
}

/// `GPL-2+ or Artistic-2.0` as SPDX (`GPL-2.0-or-later OR Artistic-2.0`);
/// `None` when any part has no SPDX identifier or the two operators mix.
pub fn spdx_expression(name: &str) -> Option<String> {
    let lower = name.trim().to_lowercase();
    let (parts, joiner): (Vec<&str>, &str) = match (lower.contains(" or "), lower.contains(" and "))
    {
        (true, true) => return None,
        (true, false) => (lower.split(" or ").collect(), " OR "),
        (false, true) => (lower.split(" and ").collect(), " AND "),
        (false, false) => (vec![lower.as_str()], ""),
    };
    let ids: Option<Vec<&str>> = parts
        .iter()
        .map(|part| {
            let part = part.trim();
            SPDX_IDS
                .iter()
                .find(|(debian, _)| *debian == part)
                .map(|(_, id)| *id)
        })
        .collect();
    ids.map(|ids| ids.join(joiner))
}

/// The SPDX expression that requires every one of `declared` (each an
/// SPDX expression, as pacman's `license` array holds them since Arch's
/// RFC 16; its entries all apply); `None` when there are none, or any is
/// not a valid expression of SPDX-listed identifiers (`custom:foo`, a
/// `LicenseRef-` without its text, a misspelt id): no assertion then.
pub fn all_of(declared: &[&str]) -> Option<String> {
    let parts: Vec<String> = declared
        .iter()
        .map(|text| listed_expression(text.trim()))
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        [] => None,
        [one] => Some(one.clone()),
        many => Some(
            many.iter()
                .map(|p| {
                    if p.contains(' ') {
                        format!("({p})")
                    } else {
                        p.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(" AND "),
        ),
    }
}

/// `text` when it is a strict SPDX expression whose identifiers are all on
/// the SPDX licence list and not deprecated there (validators built on an
/// older list know those; `GPL-2.0-with-GCC-exception` and the like are
/// written with `WITH` now). `NOASSERTION` is no licence.
fn listed_expression(text: &str) -> Option<String> {
    let expression = spdx::Expression::parse(text).ok()?;
    expression
        .requirements()
        .all(|r| {
            let licence = match &r.req.license {
                spdx::LicenseItem::Spdx { id, .. } => {
                    !id.is_deprecated() && id.name != "NOASSERTION"
                }
                spdx::LicenseItem::Other(_) => false,
            };
            let addition = match &r.req.addition {
                None => true,
                Some(spdx::AdditionItem::Spdx(id)) => !id.is_deprecated(),
                Some(spdx::AdditionItem::Other(_)) => false,
            };
            licence && addition
        })
        .then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP5: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
Upstream-Name: zlib\n\nFiles: debian/*\nLicense: GPL-2+\n\nFiles: *\nCopyright: 1995 Jean-loup Gailly\n\
License: Zlib\n\nLicense: Zlib\n text\n";

    #[test]
    fn the_files_star_paragraph_decides() {
        assert_eq!(from_copyright(DEP5).as_deref(), Some("Zlib"));
    }

    #[test]
    fn free_form_copyright_gives_no_licence() {
        assert_eq!(
            from_copyright("This package was debianized by ...\n\nGPL-2\n"),
            None
        );
    }

    #[test]
    fn compound_names_map_part_by_part() {
        assert_eq!(
            spdx_expression("GPL-2+ or Artistic-2.0").as_deref(),
            Some("GPL-2.0-or-later OR Artistic-2.0")
        );
        assert_eq!(
            spdx_expression("LGPL-2.1+ and BSD-3-clause").as_deref(),
            Some("LGPL-2.1-or-later AND BSD-3-Clause")
        );
        assert_eq!(
            spdx_expression("GPL-2+ or Artistic"),
            None,
            "Artistic has no one SPDX id"
        );
        assert_eq!(spdx_expression("public-domain"), None);
    }

    #[test]
    fn pacman_licences_are_checked_against_the_spdx_list() {
        assert_eq!(all_of(&["MIT"]).as_deref(), Some("MIT"));
        assert_eq!(
            all_of(&["GPL-2.0-or-later", "LGPL-2.1-or-later"]).as_deref(),
            Some("GPL-2.0-or-later AND LGPL-2.1-or-later")
        );
        assert_eq!(
            all_of(&["Apache-2.0 OR MIT", "BSD-3-Clause"]).as_deref(),
            Some("(Apache-2.0 OR MIT) AND BSD-3-Clause")
        );
        assert_eq!(
            all_of(&["GPL-2.0-only WITH Linux-syscall-note"]).as_deref(),
            Some("GPL-2.0-only WITH Linux-syscall-note")
        );
        // One entry without an SPDX id spoils the whole: no assertion.
        assert_eq!(all_of(&["MIT", "custom:imgforge"]), None);
        assert_eq!(all_of(&["LicenseRef-Arch-custom"]), None);
        assert_eq!(all_of(&["GPL2"]), None, "the pre-2023 Arch name");
        assert_eq!(all_of(&["GPL-2.0-with-GCC-exception"]), None, "deprecated");
        assert_eq!(all_of(&["NOASSERTION"]), None);
        assert_eq!(all_of(&[]), None);
    }
}
