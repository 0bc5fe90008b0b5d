//! The EFI system partition: a FAT32 filesystem written in-process (fatfs)
//! inside the ESP's byte range of the image file.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::sys::calendar::civil_from_days;

#[derive(Debug, thiserror::Error)]
pub enum EspError {
    #[error("writing the EFI system partition")]
    Fat(#[from] io::Error),
    #[error("reading {path} for the EFI system partition")]
    Source {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Formats the byte range `[start, start + len)` of `file` as FAT32 and
/// copies the tree under `source` into it, in name order, every entry
/// stamped with `source_date_epoch` (UTC).
pub fn write(
    file: &mut File,
    start: u64,
    len: u64,
    volume_id: u32,
    source_date_epoch: u64,
    source: &Path,
) -> Result<(), EspError> {
    let mut slice = PartitionSlice::new(file, start, len)?;
    fatfs::format_volume(
        &mut slice,
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            .volume_id(volume_id)
            .volume_label(*b"EFI        "),
    )?;
    slice.seek(SeekFrom::Start(0))?;
    {
        // fatfs wants a provider that lives forever: one small leak per build.
        let clock: &'static FixedClock = Box::leak(Box::new(FixedClock::at(source_date_epoch)));
        let fs = fatfs::FileSystem::new(&mut slice, fatfs::FsOptions::new().time_provider(clock))?;
        copy_tree(&fs.root_dir(), source)?;
        fs.unmount()?;
    }
    tidy_fat32(&mut slice)
}

/// A clock stopped at SOURCE_DATE_EPOCH, for every FAT timestamp (FAT
/// keeps local time without a zone; UTC is written).
#[derive(Debug)]
struct FixedClock(fatfs::DateTime);

impl FixedClock {
    fn at(epoch: u64) -> Self {
        let (year, month, day) = civil_from_days((epoch / 86_400) as i64);
        let seconds = epoch % 86_400;
        // FAT dates run from 1980 to 2107.
        let (year, month, day) = match year {
            ..1980 => (1980, 1, 1),
            2108.. => (2107, 12, 31),
            _ => (year, month, day),
        };
        Self(fatfs::DateTime {
            date: fatfs::Date {
                year: year as u16,
                month: month as u16,
                day: day as u16,
            },
            time: fatfs::Time {
                hour: (seconds / 3600) as u16,
                min: (seconds / 60 % 60) as u16,
                sec: (seconds % 60) as u16,
                millis: 0,
            },
        })
    }
}

impl fatfs::TimeProvider for FixedClock {
    fn get_current_date(&self) -> fatfs::Date {
        self.0.date
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.0
    }
}

fn copy_tree<T: fatfs::ReadWriteSeek>(dir: &fatfs::Dir<T>, source: &Path) -> Result<(), EspError> {
    let source_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EspError::Source { path, source }
    };
    let mut entries: Vec<_> = fs::read_dir(source)
        .map_err(source_err(source))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if path.is_dir() {
            copy_tree(&dir.create_dir(&name)?, &path)?;
        } else {
            let bytes = fs::read(&path).map_err(source_err(&path))?;
            let mut out = dir.create_file(&name)?;
            out.truncate()?;
            out.write_all(&bytes)?;
        }
    }
    Ok(())
}

/// Repairs what fatfs 0.3 leaves behind and fsck.vfat reports (firmware
/// may trip over it too): long-name entries in front of every directory's
/// `.` and `..`, a `..` pointing at the root cluster instead of 0, and an
/// unset free-cluster count in the FSInfo sector.
fn tidy_fat32<S: Read + Write + Seek>(volume: &mut S) -> Result<(), EspError> {
    let geometry = Fat32Geometry::read(volume)?;
    let mut pending = vec![(geometry.root_cluster, true)];
    while let Some((first, is_root)) = pending.pop() {
        let chain = geometry.chain(volume, first)?;
        let mut entries = Vec::new();
        for &cluster in &chain {
            let mut buf = vec![0u8; geometry.cluster_bytes as usize];
            volume.seek(SeekFrom::Start(geometry.cluster_offset(cluster)))?;
            volume.read_exact(&mut buf)?;
            entries.extend(
                buf.chunks(32)
                    .map(|c| <[u8; 32]>::try_from(c).expect("32 bytes")),
            );
        }
        let (mut kept, subdirs) = filter_entries(&entries);
        pending.extend(subdirs.into_iter().map(|c| (c, false)));
        if is_root {
            continue;
        }
        for entry in kept.iter_mut().filter(|e| &e[..11] == b"..         ") {
            if u32::from(u16::from_le_bytes([entry[26], entry[27]])) == geometry.root_cluster {
                // A `..` that leads to the root says cluster 0.
                entry[20..22].fill(0);
                entry[26..28].fill(0);
            }
        }
        let mut bytes: Vec<u8> = kept.concat();
        bytes.resize(entries.len() * 32, 0);
        for (i, &cluster) in chain.iter().enumerate() {
            let size = geometry.cluster_bytes as usize;
            volume.seek(SeekFrom::Start(geometry.cluster_offset(cluster)))?;
            volume.write_all(&bytes[i * size..(i + 1) * size])?;
        }
    }
    geometry.write_free_count(volume)?;
    volume.flush()?;
    Ok(())
}

const ATTR_LONG_NAME: u8 = 0x0f;
const ATTR_DIRECTORY: u8 = 0x10;

fn is_dot_entry(entry: &[u8; 32]) -> bool {
    &entry[..11] == b".          " || &entry[..11] == b"..         "
}

/// Keeps every entry but long names that belong to a dot entry; returns
/// the kept entries (up to the end marker) and the subdirectories' clusters.
fn filter_entries(entries: &[[u8; 32]]) -> (Vec<[u8; 32]>, Vec<u32>) {
    let mut kept = Vec::new();
    let mut subdirs = Vec::new();
    let mut pending_long: Vec<[u8; 32]> = Vec::new();
    for entry in entries {
        if entry[0] == 0 {
            break;
        }
        if entry[11] == ATTR_LONG_NAME && entry[0] != 0xE5 {
            pending_long.push(*entry);
            continue;
        }
        if !is_dot_entry(entry) {
            kept.append(&mut pending_long);
            if entry[0] != 0xE5 && entry[11] & ATTR_DIRECTORY != 0 {
                let high = u16::from_le_bytes([entry[20], entry[21]]) as u32;
                let low = u16::from_le_bytes([entry[26], entry[27]]) as u32;
                subdirs.push(high << 16 | low);
            }
        }
        pending_long.clear();
        kept.push(*entry);
    }
    (kept, subdirs)
}

struct Fat32Geometry {
    bytes_per_sector: u64,
    sectors_per_cluster: u64,
    fat_offset: u64,
    data_offset: u64,
    cluster_bytes: u64,
    root_cluster: u32,
    clusters: u64,
    fsinfo_offset: u64,
}

impl Fat32Geometry {
    fn read<S: Read + Seek>(volume: &mut S) -> io::Result<Self> {
        let mut boot = [0u8; 512];
        volume.seek(SeekFrom::Start(0))?;
        volume.read_exact(&mut boot)?;
        let u16_at = |o: usize| u16::from_le_bytes([boot[o], boot[o + 1]]) as u64;
        let u32_at = |o: usize| u32::from_le_bytes(boot[o..o + 4].try_into().expect("4 bytes"));
        let bytes_per_sector = u16_at(0x0b);
        let sectors_per_cluster = boot[0x0d] as u64;
        let reserved = u16_at(0x0e);
        let fats = boot[0x10] as u64;
        let fat_sectors = u32_at(0x24) as u64;
        let total_sectors = match u16_at(0x13) {
            0 => u32_at(0x20) as u64,
            n => n,
        };
        let data_sectors = total_sectors - reserved - fats * fat_sectors;
        Ok(Self {
            clusters: data_sectors / sectors_per_cluster,
            fsinfo_offset: u16_at(0x30) * bytes_per_sector,
            bytes_per_sector,
            sectors_per_cluster,
            fat_offset: reserved * bytes_per_sector,
            data_offset: (reserved + fats * fat_sectors) * bytes_per_sector,
            cluster_bytes: bytes_per_sector * sectors_per_cluster,
            root_cluster: u32_at(0x2c),
        })
    }

    fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_offset + (cluster as u64 - 2) * self.sectors_per_cluster * self.bytes_per_sector
    }

    /// Counts free clusters in the first FAT and records the figure (and the
    /// first free cluster) in the FSInfo sector.
    fn write_free_count<S: Read + Write + Seek>(&self, volume: &mut S) -> io::Result<()> {
        let mut fat = vec![0u8; ((self.clusters + 2) * 4) as usize];
        volume.seek(SeekFrom::Start(self.fat_offset))?;
        volume.read_exact(&mut fat)?;
        let free: Vec<u32> = fat
            .chunks(4)
            .enumerate()
            .skip(2)
            .filter(|(_, e)| u32::from_le_bytes([e[0], e[1], e[2], e[3]]) & 0x0fff_ffff == 0)
            .map(|(i, _)| i as u32)
            .collect();
        let next = free.first().copied().unwrap_or(0xffff_ffff);
        volume.seek(SeekFrom::Start(self.fsinfo_offset + 0x1e8))?;
        volume.write_all(&(free.len() as u32).to_le_bytes())?;
        volume.write_all(&next.to_le_bytes())?;
        Ok(())
    }

    fn chain<S: Read + Seek>(&self, volume: &mut S, first: u32) -> io::Result<Vec<u32>> {
        let mut chain = vec![first];
        let mut cluster = first;
        loop {
            let mut next = [0u8; 4];
            volume.seek(SeekFrom::Start(self.fat_offset + cluster as u64 * 4))?;
            volume.read_exact(&mut next)?;
            cluster = u32::from_le_bytes(next) & 0x0fff_ffff;
            if !(2..0x0fff_fff8).contains(&cluster) || chain.len() > 1 << 16 {
                return Ok(chain);
            }
            chain.push(cluster);
        }
    }
}

/// A byte range of the image file (or of any seekable device), as a
/// stream for the FAT writer and reader.
pub struct PartitionSlice<'a, F = File> {
    file: &'a mut F,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'a, F: Seek> PartitionSlice<'a, F> {
    pub fn new(file: &'a mut F, start: u64, len: u64) -> io::Result<Self> {
        file.seek(SeekFrom::Start(start))?;
        Ok(Self {
            file,
            start,
            len,
            pos: 0,
        })
    }
}

impl<F: Read> Read for PartitionSlice<'_, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = (self.len - self.pos).min(buf.len() as u64) as usize;
        let n = self.file.read(&mut buf[..room])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<F: Write> Write for PartitionSlice<'_, F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = (self.len - self.pos).min(buf.len() as u64) as usize;
        if room == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "past the end of the partition",
            ));
        }
        let n = self.file.write(&buf[..room])?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl<F: Seek> Seek for PartitionSlice<'_, F> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::End(n) => self.len as i128 + n as i128,
            SeekFrom::Current(n) => self.pos as i128 + n as i128,
        };
        if target < 0 || target > self.len as i128 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the partition",
            ));
        }
        self.pos = target as u64;
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fsck.vfat (dosfstools) is the independent judge of the result.
    #[test]
    fn written_esp_passes_fsck_vfat_and_mtools_reads_it() {
        let source = tempfile::tempdir().unwrap();
        fs::create_dir_all(source.path().join("EFI/BOOT")).unwrap();
        fs::write(
            source.path().join("EFI/BOOT/BOOTX64.EFI"),
            vec![0x4d; 300_000],
        )
        .unwrap();
        fs::create_dir_all(source.path().join("imgforge")).unwrap();
        fs::write(source.path().join("imgforge/manifest.json"), b"{}").unwrap();
        let image = tempfile::NamedTempFile::new().unwrap();
        let mut file = image.reopen().unwrap();
        let (start, len) = (1 << 20, 100 << 20);
        file.set_len(start + len + (1 << 20)).unwrap();
        write(
            &mut file,
            start,
            len,
            0x1234_5678,
            1_700_000_000,
            source.path(),
        )
        .unwrap();

        let partition = tempfile::NamedTempFile::new().unwrap();
        let mut bytes = vec![0u8; len as usize];
        file.seek(SeekFrom::Start(start)).unwrap();
        file.read_exact(&mut bytes).unwrap();
        fs::write(partition.path(), &bytes).unwrap();
        let fsck = std::process::Command::new("fsck.vfat")
            .arg("-n")
            .arg(partition.path())
            .output()
            .expect("fsck.vfat runs (apt-get install dosfstools)");
        let report = String::from_utf8_lossy(&fsck.stdout);
        assert!(fsck.status.success(), "fsck.vfat -n: {report}");
        assert!(
            !report.contains("Fixing") && !report.contains("uninitialized"),
            "{report}"
        );
        let listing = std::process::Command::new("mdir")
            .args(["-/", "-b", "-i"])
            .arg(partition.path())
            .arg("::")
            .output()
            .expect("mdir runs (apt-get install mtools)");
        let listing = String::from_utf8_lossy(&listing.stdout);
        assert!(listing.contains("::/EFI/BOOT/BOOTX64.EFI"), "{listing}");
        assert!(listing.contains("::/imgforge/manifest.json"), "{listing}");
        // Every entry is stamped with the epoch: 2023-11-14 22:13:20 UTC.
        let dir = std::process::Command::new("mdir")
            .arg("-i")
            .arg(partition.path())
            .arg("::/EFI/BOOT")
            .output()
            .unwrap();
        let dir = String::from_utf8_lossy(&dir.stdout);
        assert!(dir.contains("2023-11-14  22:13"), "{dir}");
    }

    #[test]
    fn civil_dates_from_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_675), (2023, 11, 14));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        let clock = FixedClock::at(0);
        assert_eq!(clock.0.date.year, 1980, "FAT cannot go before 1980");
    }

    #[test]
    fn long_names_of_dot_entries_are_dropped() {
        let mut long = [0u8; 32];
        long[0] = 0x41;
        long[11] = ATTR_LONG_NAME;
        let mut dot = [b' '; 32];
        dot[..11].copy_from_slice(b".          ");
        dot[11] = ATTR_DIRECTORY;
        let mut dotdot = dot;
        dotdot[..11].copy_from_slice(b"..         ");
        let mut file = [0u8; 32];
        file[..11].copy_from_slice(b"BOOTX64 EFI");
        let entries = [long, dot, long, dotdot, long, file, [0u8; 32]];
        let (kept, subdirs) = filter_entries(&entries);
        assert_eq!(kept, vec![dot, dotdot, long, file]);
        assert!(subdirs.is_empty(), "dot entries are not descended into");
    }
}
