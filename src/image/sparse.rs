//! Sparse files: where a file holds data, so that holes are neither read
//! nor sent. Used by the image hash (seal) and the EBS upload.

use std::fs::File;
use std::ops::Range;
use std::os::unix::io::AsRawFd;

/// The byte ranges of `file` that hold data, from SEEK_DATA/SEEK_HOLE.
/// A file system without hole reporting answers one extent for the whole
/// file, which is still correct, only slower.
pub fn data_extents(file: &File, size: u64) -> std::io::Result<Vec<Range<u64>>> {
    let fd = file.as_raw_fd();
    let mut extents = Vec::new();
    let mut offset: u64 = 0;
    while offset < size {
        // SAFETY: lseek on a file descriptor we own; no memory is touched.
        let data = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                // No data after `offset`: the rest is a hole.
                Some(libc::ENXIO) => break,
                // No hole support: everything is data.
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => {
                    extents.push(offset..size);
                    return Ok(extents);
                }
                _ => return Err(err),
            }
        }
        let data = data as u64;
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let hole = (hole as u64).min(size);
        if hole > data {
            extents.push(data..hole);
        }
        offset = hole;
    }
    Ok(extents)
}
