//! The online half: EBS direct APIs and EC2, one module per job.
//!
//! `client` (SDK configuration, per region), `retry` (which failures are
//! retried, and how), `names` (parsers and naming rules), `blocks` (reading
//! and hashing the image), `journal` (resume state), `delta` (parent
//! snapshots and the block digest store), `snapshot`
//! (start/put/complete/wait), `writer` (the snapshot writer), `register`
//! (RegisterImage), `platform` (the architecture and boot mode it is told,
//! read from the image), `publish` (copy, tags, share, deprecate, SSM, list,
//! prune), `output` (result files), `request` (what an upload is asked to
//! do), and the jobs `upload` and `download`.

pub mod blocks;
pub mod client;
pub mod delta;
pub mod download;
pub mod journal;
pub mod names;
pub mod output;
pub mod platform;
pub mod publish;
pub mod register;
pub mod request;
pub mod retry;
pub mod snapshot;
pub mod upload;
pub mod writer;
