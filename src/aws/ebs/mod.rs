//! The EBS direct APIs: an image's blocks into a snapshot and back.
//!
//! `blocks` (reading and hashing the image), `journal` (resume state),
//! `snapshot` (start/put/complete/wait/delete), `delta` (parent snapshots
//! and the block digest store), `start` (which snapshot an upload writes
//! to, and its clean-up after a failure), `writer` (the snapshot writer: one
//! pass that reads, hashes and sends; its block buffers come from `pool`),
//! `download` (a snapshot back into a file).

pub mod blocks;
pub mod delta;
pub mod download;
pub mod journal;
pub mod pool;
pub mod snapshot;
pub mod start;
pub mod writer;
