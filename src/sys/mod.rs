//! The host side: running tools, interrupts, work directories, progress and
//! file errors.

pub mod api_mounts;
pub mod fsio;
pub mod interrupt;
pub mod progress;
pub mod tool;
pub mod workdir;
