//! EC2 images: what an AMI is registered as and called.
//!
//! `instance_types` (whether each `--instance-types` type can run the
//! image), `digest` (the image's sha256, tagged on what imgforge makes; its build
//! date), `register` (RegisterImage, idempotent by name; DeregisterImage),
//! `names` (parsers and naming rules: AMI names and families, tags,
//! regions, share targets, SSM templates), `platform` (the architecture and
//! boot mode an image is registered with, read from the image and checked
//! against the flags), `same_name` (an AMI of the name is reused only when
//! it holds the same image), `sbom_tags` (the SBOM's digests as tags), `storage` (the root volume's type, IOPS and
//! throughput, extra and instance-store volumes, checked against EBS's
//! limits).

pub mod digest;
pub mod instance_types;
pub mod names;
pub mod platform;
pub mod register;
pub mod same_name;
pub mod sbom_tags;
pub mod storage;
