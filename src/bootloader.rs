//! bootloader
