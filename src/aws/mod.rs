//! The online half: EBS direct APIs and EC2, split by API.
//!
//! At the top: `client` (SDK configuration, per region), `retry` (which
//! failures are retried, and how; the short form of an AWS error),
//! `iam` (the policy `--print-iam-policy` prints, from the request alone),
//! `kms` (keys resolved to ARNs; what sharing an encrypted AMI needs),
//! `regional` (`--copy-method upload`: one upload per region), `output`
//! (result files), `request` (what an upload is asked to do) and
//! the job `upload`, which lists its steps. Below, one folder per API:
//! `ebs` (blocks, journal, snapshot, delta, writer, download), `ami`
//! (register, names, platform checks) and `publish` (copy, tags, share,
//! deprecate, SSM, list, prune).

pub mod ami;
pub mod client;
pub mod ebs;
pub mod iam;
pub mod kms;
pub mod output;
pub mod publish;
pub mod regional;
pub mod request;
pub mod retry;
pub mod upload;
