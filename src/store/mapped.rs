//! A fixed-size file mapped into memory: the building block of commit-log segments, consume-queue
//! files and index files. Space is reserved with `fallocate` at creation, so a full disk is an
//! error at file creation, never a SIGBUS on a later write into a sparse page.
//!
//! Concurrency contract: one writer at a time writes a region that no reader looks at yet, then
//! publishes it through an atomic (owned by the caller) with `Release`; readers load that atomic
//! with `Acquire` and only ever form slices over published regions. Bytes that are written while
//! others may read them (index slots and header fields) are accessed only as atomics. All of
//! this is what the `unsafe` methods below ask of their callers; the mapping itself is never
//! turned into a Rust reference as a whole.
//!
//! Every allocation asks [`SpaceCheck`] first, so a full disk refuses a new file with the
//! retryable `DiskFull` before the filesystem does.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw, UncheckedAdvice};

use super::config::DiskSpaceSource;
use super::durable::sync_dir;
use super::error::{DiskFullCause, StoreError};

/// The free-space check made before a file is allocated.
#[derive(Debug, Clone)]
pub(crate) struct SpaceCheck {
    dir: PathBuf,
    source: DiskSpaceSource,
    /// Bytes that must stay available after the allocation.
    keep: u64,
}

impl SpaceCheck {
    /// Checks against `source` measured on `dir`, keeping `keep` bytes free.
    pub(crate) fn new(dir: PathBuf, source: DiskSpaceSource, keep: u64) -> Self {
        Self { dir, source, keep }
    }

    /// The same measurement with another amount to keep (derived files keep nothing: they
    /// may use the headroom the commit log leaves).
    pub(crate) fn keeping(&self, keep: u64) -> Self {
        Self {
            keep,
            ..self.clone()
        }
    }

    /// `Ok` when `len` more bytes leave at least the headroom available (or when space is
    /// unknown); otherwise `DiskFull`, before anything is written.
    pub(crate) fn before_alloc(&self, len: u64) -> Result<(), StoreError> {
        let Some(space) = self.source.query(&self.dir) else {
            return Ok(());
        };
        if space.available < len.saturating_add(self.keep) {
            return Err(StoreError::DiskFull {
                path: self.dir.clone(),
                cause: DiskFullCause::Headroom {
                    needed: len,
                    available: space.available,
                    headroom: self.keep,
                },
            });
        }
        Ok(())
    }
}

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
    /// Refused with `DiskFull` when `space` says the disk is too full, or when the filesystem
    /// answers `ENOSPC`; nothing is left behind then.
    pub(crate) fn create(
        dir: &Path,
        base: u64,
        len: u64,
        space: &SpaceCheck,
    ) -> Result<Self, StoreError> {
        space.before_alloc(len)?;
        let path = dir.join(file_name(base));
        #[cfg(test)]
        super::powerloss::check(&path)?;
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
        if let Err(e) = sync_dir(dir) {
            // Not durable: take the name back so a retry starts clean.
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Self::map(path, file, base, len)
    }

    /// A new file that replaces this one under its name, holding its first `keep` bytes and
    /// zeros after them (reserved like [`MappedFile::create`]), made durable before the
    /// rename. The old file's bytes are never written: whoever still holds its mapping (a
    /// read in flight) keeps reading what it read, the unlinked file lives on until the last
    /// mapping goes. A replica cutting its log uses it (docs/STORAGE.md §11.2).
    pub(crate) fn copy_prefix(&self, keep: u64, space: &SpaceCheck) -> Result<Self, StoreError> {
        use std::os::unix::fs::FileExt;
        let keep = keep.min(self.len);
        space.before_alloc(self.len)?;
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".cut");
        let tmp = PathBuf::from(tmp);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| StoreError::io(&tmp, e))?;
        let fill = || -> std::io::Result<()> {
            reserve(&file, self.len)?;
            let mut off = 0u64;
            while off < keep {
                let n = (keep - off).min(8 << 20);
                // SAFETY: bytes below the cut were written before it and are never written
                // again (the appender writes only past the log's end, which is past them).
                let src = unsafe { self.slice(off as usize, n as usize) };
                file.write_all_at(src, off)?;
                off += n;
            }
            file.sync_data()
        };
        if let Err(e) = fill() {
            let _ = std::fs::remove_file(&tmp);
            return Err(StoreError::io(&tmp, e));
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| StoreError::io(&self.path, e))?;
        sync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
        Self::map(self.path.clone(), file, self.base, self.len)
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

    /// A pointer to byte `off` of the mapping, with write provenance (from the mapping's
    /// mutable base, never from a shared slice). Panics when `off + len` is past the end.
    fn ptr(&self, off: usize, len: usize) -> *mut u8 {
        let end = off.checked_add(len).expect("offset overflow");
        assert!(end <= self.len as usize, "access past the mapped file");
        // SAFETY: `off <= len` of the mapping (asserted), so the result stays inside (or one
        // past the end of) the same allocation.
        unsafe { self.map.as_mut_ptr().add(off) }
    }

    /// Copies `data` to `off`.
    ///
    /// # Safety
    /// No other thread may read or write `off..off + data.len()` during the call, and no
    /// slice over that range may be alive.
    pub(crate) unsafe fn write(&self, off: usize, data: &[u8]) {
        let dst = self.ptr(off, data.len());
        // SAFETY: `dst..dst + data.len()` is inside the live mapping (checked by `ptr`) and
        // writable (shared read-write mapping, pointer from the mutable base); `data` is a
        // Rust slice, so it cannot overlap memory nobody may touch; exclusivity of the
        // destination is the caller's promise.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) }
    }

    /// Writes `data` at `off` through the file (`pwrite`), not through the mapping. The
    /// mapping sees the bytes at once (one page cache), and a fresh page that a write covers
    /// whole is never read or zeroed first: the commit log's appends cost a copy instead of a
    /// page fault, a zeroing and a copy (docs/PROTOCOL.md §2.2). A failed write (an I/O
    /// error) is an error here instead of a SIGBUS on a store into the mapping.
    ///
    /// # Safety
    /// As [`Self::write`]: no other thread may read or write the range during the call, and
    /// no slice over it may be alive.
    pub(crate) unsafe fn write_at(&self, off: usize, data: &[u8]) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        let end = off.checked_add(data.len()).expect("offset overflow");
        assert!(end <= self.len as usize, "write past the mapped file");
        self._file
            .write_all_at(data, off as u64)
            .map_err(|e| StoreError::io(&self.path, e))
    }

    /// A mutable view of `off..off + len` for encoding in place.
    ///
    /// # Safety
    /// No other thread may read or write that range while the slice lives, and no other
    /// slice over it may be alive.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice_mut(&self, off: usize, len: usize) -> &mut [u8] {
        let p = self.ptr(off, len);
        // SAFETY: in bounds of the live mapping (checked by `ptr`), writable, and any byte
        // pattern is a valid `u8`; exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(p, len) }
    }

    /// A view of `off..off + len`.
    ///
    /// # Safety
    /// No thread may write `off..off + len` while the slice lives (normally: the range was
    /// published with `Release` and the caller loaded the publishing atomic with `Acquire`,
    /// and writers only write unpublished ranges), and nothing in it may be accessed as an
    /// atomic meanwhile.
    pub(crate) unsafe fn slice(&self, off: usize, len: usize) -> &[u8] {
        let p = self.ptr(off, len);
        // SAFETY: in bounds of a live mapping (checked by `ptr`), `u8` has no invalid bit
        // patterns, and the range is not written while the slice lives (caller's promise).
        unsafe { std::slice::from_raw_parts(p, len) }
    }

    /// Copies `out.len()` bytes from `off` into `out`, each byte an atomic (relaxed) load: a
    /// read that races with [`Self::store_bytes`] may see a mix of old and new bytes (callers
    /// validate what they read) but is not a data race.
    ///
    /// # Safety
    /// Every concurrent access to these bytes must go through `load_bytes`/`store_bytes`
    /// (no slice may cover them, no `write` may touch them, while another thread may).
    pub(crate) unsafe fn load_bytes(&self, off: usize, out: &mut [u8]) {
        let p = self.ptr(off, out.len());
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: in bounds (checked by `ptr`), `AtomicU8` has alignment 1, the mapping
            // lives as long as `self`; concurrent accesses are atomic (caller's promise).
            *b = unsafe { std::sync::atomic::AtomicU8::from_ptr(p.add(i)) }
                .load(std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Writes `data` at `off`, each byte an atomic (relaxed) store. Publish with a `Release`
    /// store of the atomic that makes the range visible, as for [`Self::write`].
    ///
    /// # Safety
    /// As for [`Self::load_bytes`].
    pub(crate) unsafe fn store_bytes(&self, off: usize, data: &[u8]) {
        let p = self.ptr(off, data.len());
        for (i, b) in data.iter().enumerate() {
            // SAFETY: as in `load_bytes`; the mapping is shared read-write and `p` has write
            // provenance (from the mutable base).
            unsafe { std::sync::atomic::AtomicU8::from_ptr(p.add(i)) }
                .store(*b, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The 4-byte field at `off` as an atomic (index slots and header counters).
    ///
    /// # Safety
    /// While the reference lives, every access to `off..off + 4` by any thread must be atomic
    /// and of this size (no slice may cover it, no `write` may touch it).
    pub(crate) unsafe fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        let p = self.ptr(off, 4);
        assert!(p.align_offset(4) == 0, "misaligned atomic field");
        // SAFETY: aligned (asserted), in bounds and writable for the life of `self` (the
        // mapping is unmapped only on drop); the caller promises every concurrent access to
        // these bytes is a 4-byte atomic.
        unsafe { AtomicU32::from_ptr(p.cast()) }
    }

    /// The 8-byte field at `off` as an atomic (index header fields).
    ///
    /// # Safety
    /// As for [`Self::atomic_u32`], with 8-byte accesses.
    pub(crate) unsafe fn atomic_u64(&self, off: usize) -> &AtomicU64 {
        let p = self.ptr(off, 8);
        assert!(p.align_offset(8) == 0, "misaligned atomic field");
        // SAFETY: as in `atomic_u32`.
        unsafe { AtomicU64::from_ptr(p.cast()) }
    }

    /// Writes dirty pages of `off..off + len` to disk and waits (msync MS_SYNC).
    pub(crate) fn flush(&self, off: usize, len: usize) -> Result<(), StoreError> {
        if len == 0 {
            return Ok(());
        }
        self.map
            .flush_range(off, len)
            .map_err(|e| StoreError::io(&self.path, e))?;
        #[cfg(test)]
        super::powerloss::capture(&self.path, &self._file, off as u64, len as u64)?;
        Ok(())
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
        // SAFETY: recovery runs before any reader or writer exists, so nothing else touches
        // the file's bytes.
        unsafe {
            self.slice_mut(from as usize, (page_end - from) as usize)
                .fill(0)
        };
        self.flush(from as usize, (page_end - from) as usize)?;
        if page_end < self.len && zero_range(&self._file, page_end, self.len - page_end).is_err() {
            let mut off = page_end;
            while off < self.len {
                let n = PAGE.min(self.len - off) as usize;
                // SAFETY: as above.
                if unsafe { self.slice(off as usize, n) }
                    .iter()
                    .any(|b| *b != 0)
                {
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
        #[cfg(test)]
        super::powerloss::capture(&self.path, &self._file, from, self.len - from)?;
        self.release_all();
        Ok(())
    }

    /// Removes the file from disk. The mapping stays valid for whoever still holds it.
    pub(crate) fn delete(&self) -> Result<(), StoreError> {
        #[cfg(test)]
        super::powerloss::check(&self.path)?;
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
        let space = SpaceCheck::new(dir.path().into(), DiskSpaceSource::statvfs(), 0);
        let f = MappedFile::create(dir.path(), 4096 * 3, 4096 * 4, &space).unwrap();
        assert_eq!(f.path().file_name().unwrap(), "00000000000000012288");
        unsafe { f.write(10, b"hello") };
        unsafe { f.write(9000, b"world") };
        f.flush(0, 16384).unwrap();
        drop(f);
        let files = list_files(dir.path()).unwrap();
        assert_eq!(files.len(), 1);
        let f = MappedFile::open(&files[0].1, files[0].0, 4096 * 4).unwrap();
        // SAFETY (whole test): one thread.
        assert_eq!(unsafe { f.slice(10, 5) }, b"hello");
        f.zero_from(12).unwrap();
        assert_eq!(unsafe { f.slice(10, 5) }, b"he\0\0\0");
        assert_eq!(unsafe { f.slice(9000, 5) }, &[0u8; 5]);
        f.release_all();
        assert_eq!(unsafe { f.slice(10, 2) }, b"he");
        assert!(MappedFile::open(&files[0].1, 0, 4096).is_err());
    }
}
