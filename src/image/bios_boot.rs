//! The BIOS boot code as it sits on the disk: GRUB's boot.img in the MBR's
//! code area, pointing at core.img in the BIOS boot partition, patched the
//! way grub-bios-setup would. The build writes it; inspect reads the same
//! offsets back.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::image::layout::{BIOS_BOOT, DiskLayout, SECTOR};
use crate::sys::fsio::{PathError, at};

/// boot.img: the LBA of core.img's first sector (GRUB_BOOT_MACHINE_KERNEL_SECTOR).
pub const BOOT_KERNEL_SECTOR: usize = 0x5c;
/// boot.img: the boot drive; 0xff means "the drive the BIOS booted from".
pub const BOOT_DRIVE: usize = 0x64;
/// boot.img: the drive check; NOPs, as grub-bios-setup writes for hard disks.
pub const BOOT_DRIVE_CHECK: usize = 0x66;
/// diskboot.img (core.img's first sector): the blocklist entry.
pub const CORE_BLOCKLIST: usize = 0x200 - 12;
/// The MBR's boot code area; the partition table after it must survive.
pub const MBR_CODE_BYTES: usize = 440;

#[derive(Debug, thiserror::Error)]
pub enum BiosBootError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("core.img is {size} bytes, larger than the BIOS boot partition ({room} bytes)")]
    CoreTooLarge { size: usize, room: u64 },
}

/// Whether `bytes` can be GRUB's boot.img: one sector ending in 55 AA.
pub fn is_boot_img(bytes: &[u8]) -> bool {
    bytes.len() == 512 && bytes[510..] == [0x55, 0xAA]
}

/// Points boot.img at core.img: boot code into LBA 0 (only its first 440
/// bytes, so the partition table stays), then the core's LBA, drive and
/// drive check.
pub fn patch_mbr(lba0: &mut [u8; 512], boot_img: &[u8], core_lba: u64) {
    lba0[..MBR_CODE_BYTES].copy_from_slice(&boot_img[..MBR_CODE_BYTES]);
    lba0[BOOT_KERNEL_SECTOR..BOOT_KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    lba0[BOOT_DRIVE] = 0xff;
    lba0[BOOT_DRIVE_CHECK] = 0x90;
    lba0[BOOT_DRIVE_CHECK + 1] = 0x90;
}

/// core.img's first sector loads the rest from the sectors that follow it.
pub fn patch_core(core: &mut [u8], core_lba: u64) {
    core[CORE_BLOCKLIST..CORE_BLOCKLIST + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
}

/// Writes GRUB's BIOS boot code (`boot_img`, `core`) into the image: core.img
/// at the start of the BIOS boot partition, boot.img into the MBR. A layout
/// without a BIOS boot partition gets nothing.
pub fn embed(
    file: &mut File,
    layout: &DiskLayout,
    boot_img: &[u8],
    core: &[u8],
) -> Result<(), BiosBootError> {
    let Some(bios_boot) = layout.get(BIOS_BOOT) else {
        return Ok(());
    };
    let room = layout.bytes(BIOS_BOOT);
    if core.len() as u64 > room {
        return Err(BiosBootError::CoreTooLarge {
            size: core.len(),
            room,
        });
    }
    let core_lba = bios_boot.first_lba;
    let mut core = core.to_vec();
    patch_core(&mut core, core_lba);
    let image = Path::new("image");
    file.seek(SeekFrom::Start(core_lba * SECTOR))
        .map_err(at("seek", image))?;
    file.write_all(&core)
        .map_err(at("write core.img into", image))?;

    let mut lba0 = [0u8; 512];
    file.seek(SeekFrom::Start(0)).map_err(at("seek", image))?;
    file.read_exact(&mut lba0)
        .map_err(at("read LBA 0 of", image))?;
    patch_mbr(&mut lba0, boot_img, core_lba);
    file.seek(SeekFrom::Start(0)).map_err(at("seek", image))?;
    file.write_all(&lba0)
        .map_err(at("write boot.img into", image))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_boot_img() -> Vec<u8> {
        let mut img: Vec<u8> = (0..512).map(|i| (i % 251) as u8).collect();
        img[510] = 0x55;
        img[511] = 0xAA;
        img
    }

    #[test]
    fn mbr_gets_boot_code_and_keeps_the_partition_table() {
        let mut lba0 = [0u8; 512];
        // A protective MBR: disk signature, one 0xEE entry, boot signature.
        lba0[440..444].copy_from_slice(&[1, 2, 3, 4]);
        lba0[446 + 4] = 0xEE;
        lba0[510] = 0x55;
        lba0[511] = 0xAA;
        let table_before = lba0[440..].to_vec();
        let boot = fake_boot_img();
        assert!(is_boot_img(&boot));
        patch_mbr(&mut lba0, &boot, 2048);
        assert_eq!(&lba0[440..], &table_before[..], "partition table preserved");
        assert_eq!(&lba0[..0x5c], &boot[..0x5c]);
        assert_eq!(
            u64::from_le_bytes(lba0[0x5c..0x64].try_into().unwrap()),
            2048
        );
        assert_eq!(lba0[0x64], 0xff);
        assert_eq!(&lba0[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(&lba0[0x68..440], &boot[0x68..440]);
    }

    #[test]
    fn core_blocklist_points_past_its_first_sector() {
        let mut core = vec![0u8; 4096];
        // grub-mkimage fills the length (u16) and segment (u16) after the start.
        core[0x1fc..0x1fe].copy_from_slice(&7u16.to_le_bytes());
        core[0x1fe..0x200].copy_from_slice(&0x820u16.to_le_bytes());
        patch_core(&mut core, 2048);
        assert_eq!(
            u64::from_le_bytes(core[0x1f4..0x1fc].try_into().unwrap()),
            2049
        );
        assert_eq!(
            u16::from_le_bytes(core[0x1fc..0x1fe].try_into().unwrap()),
            7,
            "length kept"
        );
        assert_eq!(
            u16::from_le_bytes(core[0x1fe..0x200].try_into().unwrap()),
            0x820,
            "segment kept"
        );
    }
}
