//! A fixed-size file mapped into memory: the building block of commit-log segments, consume-queue
//! files and index files. Space is reserved with `fallocate` at creation, so a full disk is an
//! error at file creation, never a SIGBUS on a later write into a sparse page.
//!
//! Concurrency contract: one writer at a time writes a region that no reader looks at yet, then
//! publishes it through an atomic (owned by the caller); readers only read published regions.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw, UncheckedAdvice};

use super::error::StoreError;

/// Width of file names: a zero-padded decimal offset, as RocketMQ names its files.
pub(crate) const NAME_WIDTH: usize = 20;

pub(crate) fn file_name(offset: u64) -> String {
    format!("{offset:0width$}", width = NAME_WIDTH)
}

/// Parses a file name made by [`file_name`]; other names return `None`.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    (name.len() == NAME_WIDTH && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

pub(crate) struct MappedFile {
    path: PathBuf,
    /// Kept open for zeroing torn tails (fallocate) and syncing.
    _file: File,
    map: MmapRaw,
    len: u64,
    /// The logical offset of byte 0 (commit-log offset, or first entry index).
    base: u64,
    /// Bytes below this were handed back to the kernel (`MADV_DONTNEED`).
    released: AtomicU64,
}

impl MappedFile {
    /// Creates a new file of `len` bytes with reserved space, then makes its name durable.
    pub(crate) fn create(dir: &Path, base: u64, len: u64) -> Result<Self, StoreError> {
        let path = dir.join(file_name(base));
        let tmp = dir.join(format!("{}.tmp", file_name(base)));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| StoreError::io(&tmp, e))?;
        reserve(&file, len).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            StoreError::io(&tmp, e)
        })?;
        std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
        sync_dir(dir)?;
        Self::map(path, file, base, len)
    }

    /// Opens an existing file, which must be exactly `len` bytes.
    pub(crate) fn open(path: &Path, base: u64, len: u64) -> Result<Self, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::io(path, e))?;
        let actual = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
        if actual != len {
            return Err(StoreError::Corrupt {
                file: path.to_path_buf(),
                offset: 0,
                reason: format!("file is {actual} bytes, expected {len}"),
            });
        }
        Self::map(path.to_path_buf(), file, base, len)
    }

    fn map(path: PathBuf, file: File, base: u64, len: u64) -> Result<Self, StoreError> {
        let map = MmapOptions::new()
            .len(len as usize)
            .map_raw(&file)
            .map_err(|e| StoreError::io(&path, e))?;
        Ok(Self {
            path,
            _file: file,
            map,
            len,
            base,
            released: AtomicU64::new(0),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    /// Copies `data` to `off`.
    ///
    /// # Safety
    /// No other thread may read or write `off..off + data.len()` during the call.
    pub(crate) unsafe fn write(&self, off: usize, data: &[u8]) {
        assert!(
            off + data.len() <= self.len as usize,
            "write past the mapped file"
        );
        // SAFETY: in bounds (asserted); exclusivity is the caller's promise.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_mut_ptr().add(off), data.len())
        }
    }

    /// A mutable view of `off..off + len` for encoding in place.
    ///
    /// # Safety
    /// No other thread may read or write that range while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice_mut(&self, off: usize, len: usize) -> &mut [u8] {
        assert!(off + len <= self.len as usize, "slice past the mapped file");
        // SAFETY: in bounds; exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(off), len) }
    }

    /// A view of `off..off + len`. Bounds are checked; the caller reads only published bytes
    /// (unpublished bytes are still memory-safe to read as `u8`, just meaningless).
    pub(crate) fn slice(&self, off: usize, len: usize) -> &[u8] {
        let end = off.checked_add(len).expect("offset overflow");
        assert!(end <= self.len as usize, "read past the mapped file");
        // SAFETY: in bounds of a live mapping; u8 has no invalid bit patterns.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(off), len) }
    }

    /// Writes dirty pages of `off..off + len` to disk and waits (msync MS_SYNC).
    pub(crate) fn flush(&self, off: usize, len: usize) -> Result<(), StoreError> {
        if len == 0 {
            return Ok(());
        }
        self.map
            .flush_range(off, len)
            .map_err(|e| StoreError::io(&self.path, e))
    }

    /// Hands resident pages below `upto` back to the kernel so resident memory stays flat as
    /// the log grows. Only call for flushed ranges; the data stays in the file and page cache.
    pub(crate) fn release_below(&self, upto: u64) {
        let upto = (upto.min(self.len)) & !(PAGE - 1);
        let from = self.released.load(Ordering::Relaxed);
        if upto <= from {
            return;
        }
        self.release_range(from, upto);
        self.released.store(upto, Ordering::Relaxed);
    }

    /// Hands back every resident page (for files that are sealed and cold).
    pub(crate) fn release_all(&self) {
        self.release_range(0, self.len & !(PAGE - 1));
        self.released.store(self.len, Ordering::Relaxed);
    }

    fn release_range(&self, from: u64, to: u64) {
        if to <= from {
            return;
        }
        // SAFETY: MADV_DONTNEED on a shared file mapping drops page-table entries only; dirty
        // pages are carried over to the page cache, and later reads fault the data back in.
        let r = unsafe {
            self.map.unchecked_advise_range(
                UncheckedAdvice::DontNeed,
                from as usize,
                (to - from) as usize,
            )
        };
        if let Err(e) = r {
            tracing::debug!(file = %self.path.display(), error = %e, "madvise failed");
        }
    }

    /// Zeroes `from..len` (a torn tail found by recovery). Whole pages are zeroed with
    /// `FALLOC_FL_ZERO_RANGE`, which keeps the reserved space allocated (so a later write on a
    /// full disk still cannot fault) and costs O(extents), not O(segment size); filesystems
    /// without it get the non-zero pages overwritten by hand.
    pub(crate) fn zero_from(&self, from: u64) -> Result<(), StoreError> {
        if from >= self.len {
            return Ok(());
        }
        let page_end = ((from + PAGE - 1) & !(PAGE - 1)).min(self.len);
        // SAFETY: recovery runs before any reader or writer exists.
        unsafe {
            self.slice_mut(from as usize, (page_end - from) as usize)
                .fill(0)
        };
        self.flush(from as usize, (page_end - from) as usize)?;
        if page_end < self.len && zero_range(&self._file, page_end, self.len - page_end).is_err() {
            let mut off = page_end;
            while off < self.len {
                let n = PAGE.min(self.len - off) as usize;
                if self.slice(off as usize, n).iter().any(|b| *b != 0) {
                    // SAFETY: as above.
                    unsafe { self.slice_mut(off as usize, n).fill(0) };
                }
                off += n as u64;
            }
            self.flush(page_end as usize, (self.len - page_end) as usize)?;
        }
        self._file
            .sync_data()
            .map_err(|e| StoreError::io(&self.path, e))?;
        self.release_all();
        Ok(())
    }

    /// Removes the file from disk. The mapping stays valid for whoever still holds it.
    pub(crate) fn delete(&self) -> Result<(), StoreError> {
        std::fs::remove_file(&self.path).map_err(|e| StoreError::io(&self.path, e))
    }
}

pub(crate) const PAGE: u64 = 4096;

fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    // SAFETY: plain syscall on an owned, open descriptor.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if r == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        // Filesystems without fallocate: fall back to a sparse file.
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => file.set_len(len),
        _ => Err(err),
    }
}

fn zero_range(file: &File, off: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: plain syscall on an owned, open descriptor.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// fsyncs a directory so that created, renamed or deleted names survive a power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

/// Lists files named by [`file_name`] in `dir`, sorted by offset; stray `.tmp` files from an
/// interrupted creation are removed.
pub(crate) fn list_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StoreError::io(dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(off) = parse_file_name(name) {
            out.push((off, entry.path()));
        } else if name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    out.sort_by_key(|(off, _)| *off);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_write_reopen_and_zero_tail() {
        let dir = tempfile::tempdir().unwrap();
        let f = MappedFile::create(dir.path(), 4096 * 3, 4096 * 4).unwrap();
        assert_eq!(f.path().file_name().unwrap(), "00000000000000012288");
        unsafe { f.write(10, b"hello") };
        unsafe { f.write(9000, b"world") };
        f.flush(0, 16384).unwrap();
        drop(f);
        let files = list_files(dir.path()).unwrap();
        assert_eq!(files.len(), 1);
        let f = MappedFile::open(&files[0].1, files[0].0, 4096 * 4).unwrap();
        assert_eq!(f.slice(10, 5), b"hello");
        f.zero_from(12).unwrap();
        assert_eq!(f.slice(10, 5), b"he\0\0\0");
        assert_eq!(f.slice(9000, 5), &[0u8; 5]);
        f.release_all();
        assert_eq!(f.slice(10, 2), b"he");
        assert!(MappedFile::open(&files[0].1, 0, 4096).is_err());
    }
}
