//! EC2 images: what an AMI is registered as and called.
//!
//! `register` (RegisterImage, idempotent by name; DeregisterImage),
//! `names` (parsers and naming rules: AMI names and families, tags,
//! regions, share targets, SSM templates), `platform` (the architecture and
//! boot mode an image is registered with, read from the image and checked
//! against the flags).

pub mod names;
pub mod platform;
pub mod register;
