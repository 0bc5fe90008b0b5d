//! The online half: EBS direct APIs and EC2.
//!
//! One module per job: `client` (SDK configuration), `retry` (which failures
//! are retried, and how), `blocks` (reading and hashing the image),
//! `journal` (resume state), `snapshot` (start/put/complete/wait),
//! `register` (RegisterImage), `output` (result files), and the two
//! subcommands `upload` and `download`.

pub mod blocks;
pub mod client;
pub mod download;
pub mod journal;
pub mod output;
pub mod register;
pub mod retry;
pub mod snapshot;
pub mod upload;
