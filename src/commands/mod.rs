//! One file per subcommand that has grown a command layer: clap arguments,
//! conversion to the engine's plain request, printing.

pub mod ami;
pub mod config;
pub mod diff;
pub mod upload;
