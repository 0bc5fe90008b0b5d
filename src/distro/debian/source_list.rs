//! apt's source files read as apt reads them: one-line `.list` entries
//! with any bracket options (`deb [arch=amd64 signed-by=K] URI SUITE
//! COMPONENT...`) and deb822 `.sources` stanzas (continuation lines,
//! comments, `Enabled: no`, several URIs and suites). Each entry remembers
//! the file it came from, so that the plan can say where a source is from.

use std::path::Path;

/// One `deb` entry: one URI and one suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptEntry {
    pub uri: String,
    pub suite: String,
    pub components: Vec<String>,
    /// Bracket options (deb822: the other fields, lower-cased), as written.
    pub options: Vec<(String, String)>,
    /// Where it was read: `FILE:LINE` (one-line) or `FILE` (deb822).
    pub from: String,
}

impl AptEntry {
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The keyring file(s) named by `signed-by`; None when absent or an
    /// inline key (deb822 allows the key itself as the field's value).
    pub fn signed_by(&self) -> Option<&str> {
        self.option("signed-by")
            .filter(|v| !v.contains("BEGIN PGP") && !v.contains('\n'))
    }

    /// The line as apt's one-line format spells it.
    pub fn line(&self) -> String {
        let options = if self.options.is_empty() {
            String::new()
        } else {
            let joined: Vec<String> = self
                .options
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!("[{}] ", joined.join(" "))
        };
        let mut line = format!("deb {options}{} {}", self.uri, self.suite);
        for c in &self.components {
            line.push(' ');
            line.push_str(c);
        }
        line
    }

    /// The suite's `InRelease` (a flat repository's suite ends in `/`).
    pub fn in_release_url(&self, name: &str) -> String {
        let uri = self.uri.trim_end_matches('/');
        match self.suite.strip_suffix('/') {
            Some(flat) if flat.is_empty() || flat == "." => format!("{uri}/{name}"),
            Some(flat) => format!("{uri}/{flat}/{name}"),
            None => format!("{uri}/dists/{}/{name}", self.suite),
        }
    }
}

/// One one-line entry: Ok(None) for a blank line, a comment or `deb-src`;
/// Err with what is wrong for a line apt would refuse.
pub fn parse_line(line: &str, from: &str) -> Result<Option<AptEntry>, String> {
    let line = line.split('#').next().unwrap_or_default().trim();
    if line.is_empty() {
        return Ok(None);
    }
    let (kind, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    match kind {
        "deb-src" => return Ok(None),
        "deb" => {}
        other => return Err(format!("`{other}` is not `deb` or `deb-src`")),
    }
    let rest = rest.trim_start();
    let (options, rest) = match rest.strip_prefix('[') {
        Some(inside) => {
            let (bracket, after) = inside
                .split_once(']')
                .ok_or_else(|| "an option list `[` without its `]`".to_string())?;
            (parse_options(bracket)?, after)
        }
        None => (Vec::new(), rest),
    };
    let mut words = rest.split_whitespace();
    let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
        return Err("expected `deb [OPTIONS] URI SUITE COMPONENT...`".into());
    };
    let components: Vec<String> = words.map(String::from).collect();
    if components.is_empty() && !suite.ends_with('/') {
        return Err(format!(
            "suite `{suite}` has no component (only a flat repository's suite, ending in `/`, has none)"
        ));
    }
    Ok(Some(AptEntry {
        uri: uri.to_string(),
        suite: suite.to_string(),
        components,
        options,
        from: from.to_string(),
    }))
}

/// `arch=amd64 signed-by=/k.gpg` (also `key+=v`, `key-=v`, kept as written).
fn parse_options(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split_whitespace()
        .map(|word| match word.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("option `{word}` is not `NAME=VALUE`")),
        })
        .collect()
}

/// A one-line file: its entries, and the lines apt would refuse (with why).
pub fn parse_one_line_file(text: &str, file: &Path) -> (Vec<AptEntry>, Vec<String>) {
    let mut entries = Vec::new();
    let mut refused = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let from = format!("{}:{}", file.display(), n + 1);
        match parse_line(line, &from) {
            Ok(Some(entry)) => entries.push(entry),
            Ok(None) => {}
            Err(why) => refused.push(format!("{from}: {why}")),
        }
    }
    (entries, refused)
}

/// A deb822 `.sources` file: one entry per URI and suite of every enabled
/// `deb` stanza.
pub fn parse_deb822_file(text: &str, file: &Path) -> Vec<AptEntry> {
    let from = file.display().to_string();
    stanzas(text)
        .iter()
        .flat_map(|fields| stanza_entries(fields, &from))
        .collect()
}

/// Stanzas as (lower-cased field, value) lists; continuation lines joined
/// with newlines (a ` .` line is an empty one), comments dropped.
fn stanzas(text: &str) -> Vec<Vec<(String, String)>> {
    let mut all = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                all.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.last_mut() {
                let more = line.trim();
                value.push('\n');
                value.push_str(if more == "." { "" } else { more });
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            current.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    if !current.is_empty() {
        all.push(current);
    }
    all
}

fn stanza_entries(fields: &[(String, String)], from: &str) -> Vec<AptEntry> {
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    let words =
        |name: &str| -> Vec<String> { field(name).split_whitespace().map(String::from).collect() };
    if !words("types").iter().any(|t| t == "deb") || field("enabled").eq_ignore_ascii_case("no") {
        return Vec::new();
    }
    let options: Vec<(String, String)> = fields
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "types" | "uris" | "suites" | "components"))
        .map(|(k, v)| (deb822_option_name(k), v.clone()))
        .collect();
    let mut entries = Vec::new();
    for uri in words("uris") {
        for suite in words("suites") {
            entries.push(AptEntry {
                uri: uri.clone(),
                suite,
                components: words("components"),
                options: options.clone(),
                from: from.to_string(),
            });
        }
    }
    entries
}

/// deb822's field names as the one-line options spell them.
fn deb822_option_name(field: &str) -> String {
    match field {
        "architectures" => "arch".into(),
        "languages" => "lang".into(),
        "targets" => "target".into(),
        other => other.to_string(),
    }
}

/// apt's name in /var/lib/apt/lists/ for a file under `url`: the scheme
/// and credentials dropped, some characters %-quoted, `/` as `_`.
pub fn lists_file_name(url: &str) -> String {
    let without_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let without_user = match without_scheme.split_once('/') {
        Some((host, path)) => {
            let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
            format!("{host}/{path}")
        }
        None => without_scheme.to_string(),
    };
    let mut name = String::new();
    for c in without_user.chars() {
        match c {
            '/' => name.push('_'),
            '\\' | '|' | '{' | '}' | '[' | ']' | '<' | '>' | '"' | '^' | '~' | '_' | '=' | '!'
            | '@' | '#' | '$' | '%' | '&' | '*' => name.push_str(&format!("%{:02x}", c as u32)),
            c => name.push(c),
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bracket_with_several_options_keeps_uri_and_suite() {
        let line = "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                    http://deb.debian.org/debian-security bookworm-security main";
        let entry = parse_line(line, "f:1").unwrap().unwrap();
        assert_eq!(entry.uri, "http://deb.debian.org/debian-security");
        assert_eq!(entry.suite, "bookworm-security");
        assert_eq!(entry.components, ["main"]);
        assert_eq!(entry.option("arch"), Some("amd64"));
        assert_eq!(
            entry.signed_by(),
            Some("/usr/share/keyrings/debian-archive-keyring.gpg")
        );
        assert_eq!(entry.line(), line);
        // Spaces inside the brackets, a trailing comment.
        let spaced = parse_line(
            "deb [ arch=amd64,arm64 trusted=no ] http://m/debian bookworm main contrib # x",
            "f:2",
        )
        .unwrap()
        .unwrap();
        assert_eq!(spaced.uri, "http://m/debian");
        assert_eq!(spaced.components, ["main", "contrib"]);
        assert_eq!(spaced.option("arch"), Some("amd64,arm64"));
    }

    #[test]
    fn one_line_files_skip_comments_and_sources_and_report_bad_lines() {
        let (entries, refused) = parse_one_line_file(
            "# comment\n\ndeb-src http://m/debian bookworm main\ndeb http://m/debian bookworm main\n\
             deb [arch=amd64 http://m/debian bookworm main\ndeb http://m/debian\nrpm x y z\n",
            Path::new("/etc/apt/sources.list"),
        );
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].from, "/etc/apt/sources.list:4");
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert!(refused[0].contains(":5") && refused[0].contains("`]`"));
    }

    #[test]
    fn deb822_stanzas_with_comments_continuations_and_disabled_ones() {
        let text = "Types: deb deb-src\n# http://snapshot.debian.org/archive/debian/2025\n\
            URIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n\
            Components: main non-free-firmware\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
            \n\
            Types: deb\nURIs: https://example.org/repo\nSuites: stable\nComponents: main\nEnabled: no\n\
            \n\
            Types: deb\nURIs: https://inline.example/apt\nSuites: x\nComponents: main\n\
            Architectures: amd64\nSigned-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abc\n \
            -----END PGP PUBLIC KEY BLOCK-----\n";
        let entries = parse_deb822_file(text, Path::new("/etc/apt/sources.list.d/debian.sources"));
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[1].suite, "bookworm-updates");
        assert_eq!(entries[1].components, ["main", "non-free-firmware"]);
        assert_eq!(
            entries[0].signed_by(),
            Some("/usr/share/keyrings/debian-archive-keyring.gpg")
        );
        assert_eq!(entries[2].option("arch"), Some("amd64"));
        assert_eq!(entries[2].signed_by(), None, "an inline key is no file");
        assert_eq!(entries[0].from, "/etc/apt/sources.list.d/debian.sources");
    }

    #[test]
    fn lists_names_and_release_urls_are_apts() {
        assert_eq!(
            lists_file_name("http://deb.debian.org/debian/dists/bookworm/InRelease"),
            "deb.debian.org_debian_dists_bookworm_InRelease"
        );
        assert_eq!(
            lists_file_name("https://u:p@m.example/my_repo/dists/x/InRelease"),
            "m.example_my%5frepo_dists_x_InRelease"
        );
        let flat = parse_line("deb [signed-by=/k] file:///srv/repo ./", "f")
            .unwrap()
            .unwrap();
        assert_eq!(flat.in_release_url("Release"), "file:///srv/repo/Release");
        let normal = parse_line("deb http://m/debian/ bookworm main", "f")
            .unwrap()
            .unwrap();
        assert_eq!(
            normal.in_release_url("InRelease"),
            "http://m/debian/dists/bookworm/InRelease"
        );
    }
}
