//! ext4 trees for `imgforge diff`, through e2fsprogs' debugfs (no mount,
//! no root): `rdump` of the whole tree into a temporary folder, then
//! `ea_list` for each path in one debugfs run.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::files::{Entry, compare_entries};
use super::{DiffError, FileDiff, SECTOR, io_at};
use crate::image::inspect::PartitionInfo;
use crate::sys::tool::Tool;

/// The files of an ext4 partition: `debugfs rdump` of the whole tree into
/// a temporary folder (owners, modes and mtimes kept; device nodes and
/// sockets are not dumped; symlinks' own times are lost), then `ea_list` for each path in one debugfs run.
fn ext4_entries(image: &Path, p: &PartitionInfo) -> Result<BTreeMap<String, Entry>, DiffError> {
    let spec = format!("{}?offset={}", image.display(), p.first_lba * SECTOR);
    let dump = tempfile::Builder::new()
        .prefix("imgforge-diff-")
        .tempdir()
        .map_err(io_at("create a temporary folder in", &std::env::temp_dir()))?;
    Tool::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / \"{}\"", dump.path().display()))
        .arg(&spec)
        .run()?;
    let mut entries = BTreeMap::new();
    walk_dump(dump.path(), dump.path(), &mut entries)?;
    if entries.is_empty() {
        return Err(DiffError::Ext4 {
            image: image.to_path_buf(),
            partition: p.number,
            detail: "rdump wrote nothing".into(),
        });
    }
    let xattrs = ext4_xattrs(&spec, entries.keys())?;
    for (path, text) in xattrs {
        if let Some(entry) = entries.get_mut(&path) {
            entry.xattrs = text;
        }
    }
    Ok(entries)
}

fn walk_dump(
    root: &Path,
    dir: &Path,
    entries: &mut BTreeMap<String, Entry>,
) -> Result<(), DiffError> {
    for item in fs::read_dir(dir).map_err(io_at("read", dir))? {
        let path = item.map_err(io_at("read", dir))?.path();
        let meta = fs::symlink_metadata(&path).map_err(io_at("stat", &path))?;
        let relative = format!(
            "/{}",
            path.strip_prefix(root).unwrap_or(&path).to_string_lossy()
        );
        let kind = if meta.is_dir() {
            "directory"
        } else if meta.file_type().is_symlink() {
            "symlink"
        } else {
            "file"
        };
        let link_target = meta
            .file_type()
            .is_symlink()
            .then(|| fs::read_link(&path).map(|t| t.to_string_lossy().into_owned()))
            .transpose()
            .map_err(io_at("read link", &path))?;
        let digest = if meta.is_file() {
            Some(file_digest(&path)?)
        } else {
            None
        };
        entries.insert(
            relative,
            Entry {
                kind,
                mode: meta.mode() & 0o7777,
                owner: format!("{}:{}", meta.uid(), meta.gid()),
                // A directory's size depends on how its entries were added.
                size: if meta.is_dir() { 0 } else { meta.size() },
                // rdump creates symlinks with the time of the dump and cannot
                // set their times: a symlink's mtime is not compared.
                mtime: if meta.file_type().is_symlink() {
                    0
                } else {
                    meta.mtime()
                },
                link_target,
                digest,
                xattrs: String::new(),
            },
        );
        if meta.is_dir() {
            walk_dump(root, &path, entries)?;
        }
    }
    Ok(())
}

fn file_digest(path: &Path) -> Result<String, DiffError> {
    let mut file = File::open(path).map_err(io_at("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io_at("read", path))?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// `ea_list PATH` for every path, in one debugfs run; paths debugfs cannot
/// quote (a `"` or a line break) are left out.
fn ext4_xattrs<'a>(
    spec: &str,
    paths: impl Iterator<Item = &'a String>,
) -> Result<BTreeMap<String, String>, DiffError> {
    let mut script = tempfile::NamedTempFile::new()
        .map_err(io_at("create a temporary file in", &std::env::temp_dir()))?;
    let mut commands = String::new();
    for path in paths.filter(|p| !p.contains(['"', '\n'])) {
        commands.push_str(&format!("ea_list \"{path}\"\n"));
    }
    std::io::Write::write_all(&mut script, commands.as_bytes())
        .map_err(io_at("write", script.path()))?;
    let output = Tool::new("debugfs")
        .arg("-f")
        .arg(script.path())
        .arg(spec)
        .run()?;
    Ok(parse_ea_lists(&String::from_utf8_lossy(&output.stdout)))
}

/// debugfs echoes each command as `debugfs: ea_list "PATH"` before its
/// output; a path with no attributes prints nothing after it.
fn parse_ea_lists(text: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("debugfs: ea_list ") {
            current = Some(rest.trim().trim_matches('"').to_string());
            continue;
        }
        if let Some(path) = &current {
            let text = out.entry(path.clone()).or_default();
            text.push_str(line.trim());
            text.push('\n');
        }
    }
    out
}

pub(super) fn diff_ext4(
    a: &Path,
    pa: &PartitionInfo,
    b: &Path,
    pb: &PartitionInfo,
) -> Result<Vec<FileDiff>, DiffError> {
    Ok(compare_entries(
        &ext4_entries(a, pa)?,
        &ext4_entries(b, pb)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ea_list_output_is_split_per_path() {
        let text = "debugfs: ea_list \"/a\"\ndebugfs: ea_list \"/usr/bin/ping\"\n\
                    Extended attributes:\n  security.capability (20)\n\
                    debugfs: ea_list \"/b\"\n";
        let parsed = parse_ea_lists(text);
        assert!(!parsed.contains_key("/a"));
        assert!(parsed["/usr/bin/ping"].contains("security.capability"));
    }
}
