//! The image as EBS sees it: 512 KiB blocks, which of them hold data, their
//! SHA-256 digests and the LINEAR aggregate that CompleteSnapshot checks.
//!
//! Only the image's data is read: SEEK_DATA/SEEK_HOLE give the extents that
//! hold data, and blocks that fall entirely in a hole are never read.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest as _, Sha256};

use crate::image::sparse;
use crate::sys::interrupt::{self, Interrupted};

/// The EBS direct APIs' block size. Real EBS answers it in StartSnapshot;
/// moto answers 512, so imgforge never trusts the answer.
pub const BLOCK_SIZE: u64 = 524_288;

/// A SHA-256 digest.
pub type Digest = [u8; 32];

#[derive(Debug, thiserror::Error)]
pub enum BlocksError {
    #[error("cannot read the image")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
}

/// One block that goes into the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRecord {
    pub index: u64,
    pub digest: Digest,
}

/// What a pass over the image found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Blocks to write, in ascending index order.
    pub blocks: Vec<BlockRecord>,
    /// Bytes actually read from the image (blocks in holes are not read).
    pub bytes_read: u64,
    /// Blocks that held data but only zeros.
    pub zero_blocks: u64,
}

/// Number of blocks that cover `size` bytes.
pub fn block_count(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE)
}

/// Indices of the blocks that overlap any of `extents`, ascending, unique.
pub fn blocks_touching(extents: &[Range<u64>]) -> Vec<u64> {
    let mut indices: Vec<u64> = Vec::new();
    for extent in extents {
        if extent.is_empty() {
            continue;
        }
        let first = extent.start / BLOCK_SIZE;
        let last = (extent.end - 1) / BLOCK_SIZE;
        // Extents are sorted; only the first block can repeat the previous one.
        let start = match indices.last() {
            Some(&prev) if prev >= first => prev + 1,
            _ => first,
        };
        indices.extend(start..=last);
    }
    indices
}

/// Reads block `index` into `buf` (BLOCK_SIZE bytes); bytes past the end of
/// the image read as zeros, which pads a last partial block.
pub fn read_block(file: &File, index: u64, image_size: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let offset = index * BLOCK_SIZE;
    let available = image_size.saturating_sub(offset).min(BLOCK_SIZE) as usize;
    file.read_exact_at(&mut buf[..available], offset)?;
    buf[available..].fill(0);
    Ok(())
}

/// True when every byte is zero. Compares 64 bytes at a time, which the
/// compiler turns into vector instructions, and stops at the first non-zero
/// chunk, so data blocks cost almost nothing here.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(64);
    let chunks_zero = chunks.all(|chunk| chunk.iter().fold(0u8, |acc, b| acc | b) == 0);
    chunks_zero && chunks.remainder().iter().all(|b| *b == 0)
}

pub fn sha256(buf: &[u8]) -> Digest {
    Sha256::digest(buf).into()
}

/// The digest of an all-zero block (what an encrypted snapshot's holes get).
/// Computed once: the writer asks for it for every block.
pub fn zero_block_digest() -> Digest {
    static DIGEST: LazyLock<Digest> = LazyLock::new(|| sha256(&vec![0u8; BLOCK_SIZE as usize]));
    *DIGEST
}

/// CompleteSnapshot's LINEAR aggregate: SHA-256 over the blocks' raw digests
/// concatenated in ascending block index.
pub fn linear_checksum<'a>(digests: impl IntoIterator<Item = &'a Digest>) -> Digest {
    let mut hasher = Sha256::new();
    for digest in digests {
        hasher.update(digest);
    }
    hasher.finalize().into()
}

pub fn base64(digest: &Digest) -> String {
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// Reads and hashes the blocks that go into the snapshot, on `threads`
/// threads (each takes a contiguous share of the blocks).
///
/// Unencrypted (`write_zero_blocks` false): only blocks that overlap data are
/// read, and those holding only zeros are dropped (EBS reads unwritten blocks
/// as zeros). Encrypted: every block of the image is written; blocks in holes
/// get the zero digest without a read.
pub fn scan(
    file: &File,
    image_size: u64,
    write_zero_blocks: bool,
    threads: usize,
    mut progress: impl FnMut(u64) + Send,
) -> Result<Scan, BlocksError> {
    let extents = sparse::data_extents(file, image_size)?;
    let data_blocks = blocks_touching(&extents);
    let candidates: Vec<u64> = if write_zero_blocks {
        (0..block_count(image_size)).collect()
    } else {
        data_blocks.clone()
    };
    let threads = threads.clamp(1, candidates.len().max(1));
    let share = candidates.len().div_ceil(threads).max(1);
    let zero_digest = zero_block_digest();
    let (tx, rx) = std::sync::mpsc::channel::<u64>();

    let results: Vec<Result<Scan, BlocksError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = candidates
            .chunks(share)
            .map(|chunk| {
                let tx = tx.clone();
                let data_blocks = &data_blocks;
                scope.spawn(move || {
                    let mut buf = vec![0u8; BLOCK_SIZE as usize];
                    let mut part = Scan::default();
                    for &index in chunk {
                        if interrupt::requested() {
                            return Err(BlocksError::Interrupted(Interrupted));
                        }
                        if data_blocks.binary_search(&index).is_err() {
                            // Only reached when zero blocks are written.
                            part.blocks.push(BlockRecord {
                                index,
                                digest: zero_digest,
                            });
                            continue;
                        }
                        read_block(file, index, image_size, &mut buf)?;
                        let read = image_size
                            .saturating_sub(index * BLOCK_SIZE)
                            .min(BLOCK_SIZE);
                        part.bytes_read += read;
                        let _ = tx.send(read);
                        if is_zero(&buf) {
                            part.zero_blocks += 1;
                            if !write_zero_blocks {
                                continue;
                            }
                            part.blocks.push(BlockRecord {
                                index,
                                digest: zero_digest,
                            });
                            continue;
                        }
                        part.blocks.push(BlockRecord {
                            index,
                            digest: sha256(&buf),
                        });
                    }
                    Ok(part)
                })
            })
            .collect();
        drop(tx);
        for bytes in rx {
            progress(bytes);
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("scan thread panicked"))
            .collect()
    });

    let mut total = Scan::default();
    for part in results {
        let part = part?;
        total.blocks.extend(part.blocks);
        total.bytes_read += part.bytes_read;
        total.zero_blocks += part.zero_blocks;
    }
    // Chunks are contiguous and processed in order, so this is already
    // sorted; sorting again keeps the invariant obvious.
    total.blocks.sort_by_key(|b| b.index);
    Ok(total)
}

/// Throughput figures for `upload --hash-only`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HashBench {
    pub data_bytes: u64,
    pub blocks: usize,
    pub zero_blocks: u64,
    /// Read + zero check + SHA-256 of the image's data on one thread:
    /// wall-clock time, and CPU time (what one core sustains even when
    /// other processes compete for it).
    pub one_thread_seconds: f64,
    pub one_thread_gbps: f64,
    pub one_thread_cpu_seconds: f64,
    pub one_thread_gbps_per_cpu_second: f64,
    /// The same on every core.
    pub threads: usize,
    pub all_threads_gbps: f64,
    /// In memory, no I/O, per CPU second of one thread: SHA-256 of a random
    /// block, and the zero check of an all-zero block (its worst case).
    pub sha256_gbps: f64,
    pub zero_check_gbps: f64,
}

fn gbps(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64().max(1e-9) / 1e9
}

/// CPU time consumed so far by `clock` (a CLOCK_*_CPUTIME_ID).
fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass and nothing else.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Measures the read + hash + zero-detection path on a real image.
pub fn bench(file: &File, image_size: u64, threads: usize) -> Result<HashBench, BlocksError> {
    let started = Instant::now();
    let cpu_started = cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID);
    let one = scan(file, image_size, false, 1, |_| {})?;
    let one_elapsed = started.elapsed();
    let one_cpu = cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID) - cpu_started;
    let started = Instant::now();
    let all = scan(file, image_size, false, threads, |_| {})?;
    let all_elapsed = started.elapsed();

    let mut random = vec![0u8; BLOCK_SIZE as usize];
    rand::fill(&mut random[..]);
    let zeros = vec![0u8; BLOCK_SIZE as usize];
    let rounds = 2048u64; // 1 GiB
    let started = cpu_time(libc::CLOCK_THREAD_CPUTIME_ID);
    let mut sink = 0u8;
    for _ in 0..rounds {
        sink ^= sha256(std::hint::black_box(&random))[0];
    }
    let sha_elapsed = cpu_time(libc::CLOCK_THREAD_CPUTIME_ID) - started;
    let started = cpu_time(libc::CLOCK_THREAD_CPUTIME_ID);
    let mut zero_count = 0u64;
    for _ in 0..rounds {
        zero_count += u64::from(is_zero(std::hint::black_box(&zeros)));
    }
    let zero_elapsed = cpu_time(libc::CLOCK_THREAD_CPUTIME_ID) - started;
    std::hint::black_box((sink, zero_count));

    Ok(HashBench {
        data_bytes: one.bytes_read,
        blocks: one.blocks.len(),
        zero_blocks: one.zero_blocks,
        one_thread_seconds: one_elapsed.as_secs_f64(),
        one_thread_gbps: gbps(one.bytes_read, one_elapsed),
        one_thread_cpu_seconds: one_cpu.as_secs_f64(),
        one_thread_gbps_per_cpu_second: gbps(one.bytes_read, one_cpu),
        threads,
        all_threads_gbps: gbps(all.bytes_read, all_elapsed),
        sha256_gbps: gbps(rounds * BLOCK_SIZE, sha_elapsed),
        zero_check_gbps: gbps(rounds * BLOCK_SIZE, zero_elapsed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn blocks_touching_merges_and_spans() {
        let b = BLOCK_SIZE;
        let extents = vec![0..10, 100..b + 1, 3 * b..3 * b + 1, 3 * b + 5..4 * b];
        assert_eq!(blocks_touching(&extents), vec![0, 1, 3]);
        assert!(blocks_touching(&[]).is_empty());
    }

    #[test]
    fn zero_detection() {
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        assert!(is_zero(&buf));
        buf[BLOCK_SIZE as usize - 1] = 1;
        assert!(!is_zero(&buf));
        buf.fill(0);
        buf[0] = 0x80;
        assert!(!is_zero(&buf));
        // Lengths that are not a multiple of 64 check the remainder too.
        assert!(!is_zero(&[0, 0, 0, 1]));
        assert!(is_zero(&[0; 67]));
    }

    #[test]
    fn linear_checksum_is_sha256_of_concatenated_digests() {
        let a = sha256(b"a");
        let b = sha256(b"b");
        let mut concat = Vec::new();
        concat.extend_from_slice(&a);
        concat.extend_from_slice(&b);
        assert_eq!(linear_checksum([&a, &b]), sha256(&concat));
        assert_ne!(linear_checksum([&b, &a]), linear_checksum([&a, &b]));
        // Known value: SHA-256 of the empty string.
        assert_eq!(
            hex::encode(linear_checksum([])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn scan_reads_only_data_and_drops_zero_blocks() {
        let mut file = tempfile::tempfile().unwrap();
        let size = 10 * BLOCK_SIZE + 100; // a partial last block
        file.set_len(size).unwrap();
        file.seek(SeekFrom::Start(2 * BLOCK_SIZE + 7)).unwrap();
        file.write_all(b"hello").unwrap();
        // An extent of explicit zeros: data to the file system, zero to EBS.
        file.seek(SeekFrom::Start(5 * BLOCK_SIZE)).unwrap();
        file.write_all(&vec![0u8; BLOCK_SIZE as usize]).unwrap();
        file.seek(SeekFrom::Start(10 * BLOCK_SIZE + 50)).unwrap();
        file.write_all(b"tail").unwrap();
        file.sync_all().unwrap();

        let scan = scan(&file, size, false, 2, |_| {}).unwrap();
        let indices: Vec<u64> = scan.blocks.iter().map(|b| b.index).collect();
        assert_eq!(indices, vec![2, 10]);
        assert_eq!(scan.zero_blocks, 1);
        // Blocks 2, 5 and the 100-byte tail; far less than the 5 MiB file.
        assert!(
            scan.bytes_read <= 3 * BLOCK_SIZE + 100,
            "{}",
            scan.bytes_read
        );

        let mut expected = vec![0u8; BLOCK_SIZE as usize];
        expected[50..54].copy_from_slice(b"tail");
        assert_eq!(scan.blocks[1].digest, sha256(&expected));

        let encrypted = super::scan(&file, size, true, 1, |_| {}).unwrap();
        assert_eq!(encrypted.blocks.len(), 11);
        assert_eq!(encrypted.blocks[0].digest, zero_block_digest());
    }
}
