//! `imgforge clean`: evicts cached root filesystem trees
//! (`CACHE/rootfs/DISTRO-RELEASE-KEY.tar`, one per package state, so every
//! security update adds one) and package downloads (`CACHE/packages/DISTRO/`)
//! by last use, keeping the newest trees of each distro and release if asked.
//!
//! A build takes no lock on the cache: it checks that a tree exists, then
//! reads it. So anything used or written in the last hour is never removed
//! (a build in progress), nor a `.partial` tree whose writer is still alive.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Args;
use imgforge::build::cache_key::{partial_writer, tree_family};
use imgforge::sys::workdir::default_cache_dir;
use imgforge::units::{format_duration, human_bytes, parse_duration};
use serde::Serialize;
use serde_json::json;

use crate::commands::Outcome;

/// Entries used this recently may belong to a running build.
const IN_USE: Duration = Duration::from_secs(3600);

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  imgforge clean --dry-run\n  \
imgforge clean --older-than 7d --keep 2\n  imgforge clean --all\n\n\
A build takes no lock on the cache, so anything used or written in the last hour is kept \
(it may belong to a running build), with --all too.")]
pub struct CleanArgs {
    /// The cache directory (the same as build's --cache-dir).
    #[arg(long, env = "IMGFORGE_CACHE_DIR", value_name = "DIR",
          default_value_os_t = default_cache_dir())]
    pub cache_dir: PathBuf,
    /// Evict what was last used (read or written) longer ago than this (e.g. 30d, 12h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30d")]
    pub older_than: Duration,
    /// Keep the N most recently used trees of each distro and release, however old.
    #[arg(long, value_name = "N")]
    pub keep: Option<usize>,
    /// Evict everything, whatever its age (except what the last hour used; --keep still applies).
    #[arg(long, conflicts_with = "older_than")]
    pub all: bool,
    /// List what would go and how many bytes, and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON document: what was (or would be) removed, and the bytes.
    #[arg(long)]
    pub json: bool,
}

/// One file of the cache.
#[derive(Debug, Clone, Serialize)]
struct Entry {
    path: PathBuf,
    /// `tree` (a bootstrapped tree), `partial` (one being written) or `package`.
    kind: &'static str,
    bytes: u64,
    /// Seconds since it was last read or written.
    idle_seconds: u64,
    /// DISTRO-RELEASE for a tree: --keep counts per family.
    #[serde(skip)]
    family: Option<String>,
}

pub fn run(args: &CleanArgs) -> Outcome {
    let entries = scan(&args.cache_dir)?;
    let (evict, kept) = choose(args, entries);
    let mut removed_bytes = 0;
    if !args.dry_run {
        for entry in &evict {
            fs::remove_file(&entry.path)
                .with_context(|| format!("cannot remove {}", entry.path.display()))?;
            removed_bytes += entry.bytes;
        }
    }
    let bytes: u64 = evict.iter().map(|e| e.bytes).sum();
    if args.json {
        return Ok(Some(json!({
            "cache_dir": args.cache_dir,
            "dry_run": args.dry_run,
            "removed": evict,
            "bytes": bytes,
            "removed_bytes": removed_bytes,
            "kept": kept.len(),
        })));
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for entry in &evict {
        eprintln!(
            "{verb} {} ({}, unused for {})",
            entry.path.display(),
            human_bytes(entry.bytes),
            format_duration(Duration::from_secs(entry.idle_seconds))
        );
    }
    println!(
        "{verb} {} file(s), {} from {}; kept {}",
        evict.len(),
        human_bytes(bytes),
        args.cache_dir.display(),
        kept.len()
    );
    Ok(None)
}

/// Every tree, partial tree and package file of the cache (none if it does
/// not exist yet).
fn scan(cache: &Path) -> anyhow::Result<Vec<Entry>> {
    let now = SystemTime::now();
    let mut out = Vec::new();
    for path in files(&cache.join("rootfs"))? {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let (kind, family) = if name.ends_with(".partial") {
            if writer_alive(&name) {
                continue;
            }
            ("partial", None)
        } else if name.ends_with(".tar") {
            ("tree", tree_family(&name))
        } else {
            continue;
        };
        out.push(entry(path, kind, family, now)?);
    }
    for path in files(&cache.join("packages"))? {
        out.push(entry(path, "package", None, now)?);
    }
    Ok(out)
}

/// The files under `dir`, recursively; none if it does not exist.
fn files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let read = match fs::read_dir(&dir) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        };
        for item in read {
            let item = item.with_context(|| format!("cannot read {}", dir.display()))?;
            let kind = item.file_type()?;
            if kind.is_dir() {
                todo.push(item.path());
            } else if kind.is_file() {
                out.push(item.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

fn entry(
    path: PathBuf,
    kind: &'static str,
    family: Option<String>,
    now: SystemTime,
) -> anyhow::Result<Entry> {
    let meta = fs::metadata(&path).with_context(|| format!("cannot stat {}", path.display()))?;
    // Last use: a reused tree is only read (atime), a new one written (mtime).
    let used = [meta.accessed().ok(), meta.modified().ok()]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(now);
    Ok(Entry {
        idle_seconds: now.duration_since(used).unwrap_or_default().as_secs(),
        bytes: meta.len(),
        path,
        kind,
        family,
    })
}

/// A partial tree whose writing process still runs.
fn writer_alive(name: &str) -> bool {
    partial_writer(name).is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Splits the entries into (to evict, to keep).
fn choose(args: &CleanArgs, entries: Vec<Entry>) -> (Vec<Entry>, Vec<Entry>) {
    let older_than = if args.all {
        Duration::ZERO
    } else {
        args.older_than
    };
    // The N most recently used trees of each family.
    let mut newest: BTreeMap<&str, Vec<(u64, &Path)>> = BTreeMap::new();
    for e in &entries {
        if let Some(family) = &e.family {
            newest
                .entry(family)
                .or_default()
                .push((e.idle_seconds, &e.path));
        }
    }
    let keep_n = args.keep.unwrap_or(0);
    let protected: Vec<PathBuf> = newest
        .into_values()
        .flat_map(|mut trees| {
            trees.sort();
            trees.into_iter().take(keep_n).map(|(_, p)| p.to_path_buf())
        })
        .collect();
    entries.into_iter().partition(|e| {
        e.idle_seconds >= IN_USE.as_secs()
            && e.idle_seconds >= older_than.as_secs()
            && !protected.contains(&e.path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(older_than: &str, keep: Option<usize>, all: bool) -> CleanArgs {
        CleanArgs {
            cache_dir: PathBuf::new(),
            older_than: parse_duration(older_than).unwrap(),
            keep,
            all,
            dry_run: true,
            json: false,
        }
    }

    fn tree(family: &str, n: char, idle_days: u64) -> Entry {
        let key: String = std::iter::repeat_n(n, 64).collect();
        let name = format!("{family}-{key}.tar");
        Entry {
            family: tree_family(&name),
            path: PathBuf::from(name),
            kind: "tree",
            bytes: 1,
            idle_seconds: idle_days * 86_400,
        }
    }

    #[test]
    fn families_come_from_tree_names() {
        let key = "a".repeat(64);
        assert_eq!(
            tree_family(&format!("debian-bookworm-{key}.tar")).as_deref(),
            Some("debian-bookworm")
        );
        assert_eq!(tree_family("debian-bookworm-short.tar"), None);
    }

    #[test]
    fn old_trees_go_and_the_newest_n_per_family_stay() {
        let entries = vec![
            tree("debian-bookworm", 'a', 40),
            tree("debian-bookworm", 'b', 35),
            tree("debian-bookworm", 'c', 1),
            tree("arch-rolling", 'd', 50),
        ];
        let (evict, _) = choose(&args("30d", None, false), entries.clone());
        assert_eq!(evict.len(), 3);
        let (evict, _) = choose(&args("30d", Some(2), false), entries.clone());
        let gone: Vec<_> = evict.iter().map(|e| e.path.clone()).collect();
        assert_eq!(gone, [entries[0].path.clone()]);
        let (evict, kept) = choose(&args("30d", None, true), entries);
        assert_eq!((evict.len(), kept.len()), (4, 0));
    }

    #[test]
    fn what_the_last_hour_used_stays_even_with_all() {
        let mut fresh = tree("debian-bookworm", 'a', 0);
        fresh.idle_seconds = 60;
        let (evict, kept) = choose(&args("30d", None, true), vec![fresh]);
        assert_eq!((evict.len(), kept.len()), (0, 1));
    }
}
