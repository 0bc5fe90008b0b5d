//! The online half: EBS direct APIs and EC2.

pub mod download;
pub mod upload;
