//! A host's pacman.conf read as pacman reads it: `[NAME]` sections, their
//! `Server =` lines, and `Include =` files (a mirrorlist, or a glob of
//! them) read in place, each line remembered with the file and line it
//! came from. Nothing else of the file matters to imgforge.

use std::fs;
use std::path::{Path, PathBuf};

/// How deep `Include` files may nest (pacman has no limit; a loop must end).
const MAX_INCLUDE_DEPTH: usize = 8;

/// One `[NAME]` section of a pacman.conf (not `[options]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfRepository {
    pub name: String,
    /// `FILE:LINE` of the `[NAME]` line.
    pub from: String,
    /// Each `Server =` URL, with the `FILE:LINE` it was read from (an
    /// Include'd mirrorlist's own line).
    pub servers: Vec<(String, String)>,
}

/// The repositories of the pacman.conf at `path`, in its order; a file
/// that cannot be read gives none.
pub fn read_repositories(path: &Path) -> Vec<ConfRepository> {
    let mut reader = Reader::default();
    reader.read_file(path, 0);
    reader.repositories
}

#[derive(Default)]
struct Reader {
    repositories: Vec<ConfRepository>,
    /// Inside `[options]` or before any section: no repository.
    in_repository: bool,
}

impl Reader {
    fn read_file(&mut self, path: &Path, depth: usize) {
        let Ok(text) = fs::read_to_string(path) else {
            log::warn!("pacman.conf: cannot read {}", path.display());
            return;
        };
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let from = format!("{}:{}", path.display(), n + 1);
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                let name = name.trim();
                self.in_repository = name != "options";
                if self.in_repository {
                    self.repositories.push(ConfRepository {
                        name: name.to_string(),
                        from,
                        servers: Vec::new(),
                    });
                }
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key.trim() {
                "Include" if depth < MAX_INCLUDE_DEPTH => {
                    for file in expand_include(value.trim()) {
                        self.read_file(&file, depth + 1);
                    }
                }
                "Server" if self.in_repository => {
                    if let Some(repo) = self.repositories.last_mut() {
                        repo.servers.push((value.trim().to_string(), from));
                    }
                }
                _ => {}
            }
        }
    }
}

/// An `Include` value: one file, or the files a `*` in its last component
/// matches (sorted, as pacman's glob does).
fn expand_include(value: &str) -> Vec<PathBuf> {
    let path = Path::new(value);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let Some((prefix, suffix)) = name.as_deref().and_then(|n| n.split_once('*')) else {
        return vec![path.to_path_buf()];
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|f| {
        f.file_name()
            .map(|n| n.to_string_lossy())
            .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
    });
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_servers_and_included_mirrorlists_with_their_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mirrorlist = dir.path().join("mirrorlist");
        fs::write(
            &mirrorlist,
            "## Germany\n#Server = https://commented.example/$repo/os/$arch\n\
             Server = https://one.example/$repo/os/$arch\n\n\
             Server = https://two.example/archlinux/$repo/os/$arch # fast\n",
        )
        .unwrap();
        let confd = dir.path().join("conf.d");
        fs::create_dir(&confd).unwrap();
        fs::write(
            confd.join("50-private.conf"),
            "[private]\nServer = https://private.example/$arch\n",
        )
        .unwrap();
        let conf = dir.path().join("pacman.conf");
        fs::write(
            &conf,
            format!(
                "[options]\nHoldPkg = pacman glibc\nArchitecture = auto\n\n\
                 [core]\nInclude = {m}\n\n[extra]\nInclude = {m}\n\n\
                 #[multilib]\n#Include = {m}\n\n\
                 Include = {d}/*.conf\n",
                m = mirrorlist.display(),
                d = confd.display()
            ),
        )
        .unwrap();
        let repos = read_repositories(&conf);
        let names: Vec<&str> = repos.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["core", "extra", "private"]);
        let core = &repos[0];
        assert_eq!(core.from, format!("{}:5", conf.display()));
        assert_eq!(
            core.servers,
            [
                (
                    "https://one.example/$repo/os/$arch".to_string(),
                    format!("{}:3", mirrorlist.display())
                ),
                (
                    "https://two.example/archlinux/$repo/os/$arch".to_string(),
                    format!("{}:5", mirrorlist.display())
                ),
            ]
        );
        assert_eq!(repos[1].servers, core.servers);
        assert_eq!(repos[2].servers[0].0, "https://private.example/$arch");
        assert!(read_repositories(&dir.path().join("missing.conf")).is_empty());
    }

    #[test]
    fn an_include_loop_ends() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("pacman.conf");
        fs::write(
            &conf,
            format!(
                "[core]\nServer = https://a.example/$repo\nInclude = {}\n",
                conf.display()
            ),
        )
        .unwrap();
        let repos = read_repositories(&conf);
        assert_eq!(repos.len(), MAX_INCLUDE_DEPTH + 1);
    }
}
