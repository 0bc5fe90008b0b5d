//! imgforge: build bootable Linux disk images offline and publish them as
//! EC2 AMIs.
//!
//! The file tree is the architecture:
//!
//! - [`build`]: the offline half, one module per stage, listed in order by
//!   [`build::build`];
//! - [`distro`]: what the stages ask of a distribution, one module each;
//! - [`image`]: the disk image's formats (partition layout, ESP, manifest)
//!   and the reader that inspect, boot-test, export and upload share;
//! - [`platform`]: the architecture axis (`boot/architectures.toml`);
//! - [`boottest`]: QEMU boot tests;
//! - [`aws`]: the online half, upload, register, download;
//! - [`secureboot`]: the UEFI Secure Boot variables shipped and tested;
//! - [`sys`]: processes, interrupts, work directories, progress.
//!
//! Data (layers, GRUB templates, tables) lives in `rootfs/`, `boot/` and
//! `kernel-configs/`, embedded in the binary ([`data`]).

pub mod aws;
pub mod boottest;
pub mod build;
pub mod compressed;
pub mod data;
pub mod distro;
pub mod export;
pub mod firstboot;
pub mod image;
pub mod initramfs;
pub mod kernelcheck;
pub mod platform;
pub mod profile;
pub mod sbom;
pub mod secureboot;
pub mod sizeclass;
pub mod sys;
pub mod units;
