//! The one error for a failed file operation: what was being done, to which
//! path, and why. Every stage's error enum wraps it.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {path}")]
pub struct PathError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// For `map_err`: `fs::read(&p).map_err(at("read", &p))?`.
pub fn at(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PathError {
    let path = path.to_path_buf();
    move |source| PathError {
        action,
        path,
        source,
    }
}
