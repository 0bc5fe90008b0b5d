//! The host side: running tools, interrupts, work directories, progress,
//! file errors and calendar dates.

pub mod api_mounts;
pub mod calendar;
pub mod fsio;
pub mod interrupt;
pub mod progress;
pub mod tool;
pub mod workdir;
