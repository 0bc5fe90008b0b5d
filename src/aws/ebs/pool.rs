//! Block buffers, reused. A fresh 512 KiB buffer for every block costs page
//! faults, zeroing and allocator work (about a seventh of an upload's CPU);
//! a buffer comes back here when the request that sent it lets go of it.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::blocks::BLOCK_SIZE;

/// Buffers of BLOCK_SIZE bytes that no request holds any more.
#[derive(Debug, Default)]
pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    /// At most this many are kept (the requests in flight, plus a few).
    keep: usize,
}

impl BufferPool {
    pub fn new(keep: usize) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(Vec::new()),
            keep,
        })
    }

    /// A buffer of BLOCK_SIZE bytes whose content is undefined (a reused
    /// one holds an earlier block): the caller overwrites all of it.
    pub fn take(self: &Arc<Self>) -> PooledBuffer {
        let reused = self.free.lock().expect("buffer pool poisoned").pop();
        PooledBuffer {
            buf: reused.unwrap_or_else(|| vec![0u8; BLOCK_SIZE as usize]),
            pool: Arc::clone(self),
        }
    }
}

/// A buffer on loan from a [`BufferPool`]; dropping it gives it back.
pub struct PooledBuffer {
    buf: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl PooledBuffer {
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Shared, read-only: the buffer returns to the pool when the last
    /// clone of the `Bytes` is dropped.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PooledBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.len() != BLOCK_SIZE as usize {
            return;
        }
        let mut free = self.pool.free.lock().expect("buffer pool poisoned");
        if free.len() < self.pool.keep {
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_when_the_last_bytes_clone_is_dropped() {
        let pool = BufferPool::new(4);
        let mut first = pool.take();
        first.as_mut_slice()[0] = 42;
        let bytes = first.into_bytes();
        let clone = bytes.clone();
        drop(bytes);
        assert_eq!(pool.free.lock().unwrap().len(), 0, "a clone still holds it");
        assert_eq!(clone[0], 42);
        assert_eq!(clone.len(), BLOCK_SIZE as usize);
        drop(clone);
        assert_eq!(pool.free.lock().unwrap().len(), 1);
        // The same memory again, content as left.
        let again = pool.take();
        assert_eq!(again.as_ref()[0], 42);
        assert_eq!(pool.free.lock().unwrap().len(), 0);
    }

    #[test]
    fn keeps_at_most_its_limit() {
        let pool = BufferPool::new(2);
        let loans: Vec<_> = (0..5).map(|_| pool.take()).collect();
        drop(loans);
        assert_eq!(pool.free.lock().unwrap().len(), 2);
    }
}
