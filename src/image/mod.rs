//! The disk image's formats, and the reader that inspect, boot-test, export
//! and upload share: an image may come from anywhere, so every parser here
//! treats its input as untrusted.

pub mod bios_boot;
pub mod diff;
pub mod esp;
pub mod ext4;
pub mod firmware;
pub mod gpt_header;
pub mod ids;
pub mod inspect;
pub mod layout;
pub mod manifest;
pub mod parent;
pub mod sparse;
