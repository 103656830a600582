//! Consume queues: per (topic, queue id), fixed-size 20-byte entries (commit-log offset u64,
//! record size u32, tag hash u64), in segmented mapped files named by their first entry's queue
//! offset. Derived data: the dispatcher writes entry `n` at byte `n * 20` of the queue, so
//! rebuilding from the commit log is idempotent. Readers see entries below `max` only.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::durable::sync_dir;
use super::error::StoreError;
use super::mapped::{list_files, MappedFile, SpaceCheck};
use super::record::{get_u32, get_u64};

/// Size of one consume-queue entry in bytes.
pub const CQ_ENTRY_SIZE: u64 = 20;

/// One consume-queue entry: where a message of this queue is in the commit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqEntry {
    /// Commit-log offset of the record.
    pub phys_offset: u64,
    /// Record size in bytes.
    pub size: u32,
    /// [`super::tag_hash`] of the record's tag (0 = no tag).
    pub tag_hash: u64,
}

impl CqEntry {
    fn encode(&self) -> [u8; CQ_ENTRY_SIZE as usize] {
        let mut b = [0u8; CQ_ENTRY_SIZE as usize];
        b[0..8].copy_from_slice(&self.phys_offset.to_le_bytes());
        b[8..12].copy_from_slice(&self.size.to_le_bytes());
        b[12..20].copy_from_slice(&self.tag_hash.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Self {
        Self {
            phys_offset: get_u64(b, 0),
            size: get_u32(b, 8),
            tag_hash: get_u64(b, 12),
        }
    }

    fn is_empty(&self) -> bool {
        self.size == 0
    }
}

pub(crate) struct ConsumeQueue {
    topic: String,
    queue_id: u32,
    dir: PathBuf,
    per_file: u64,
    /// Contiguous files; the base of each is the queue offset of its first entry.
    files: RwLock<Vec<Arc<MappedFile>>>,
    /// One past the last readable entry.
    max: AtomicU64,
    /// First readable entry (older ones were removed by retention).
    min: AtomicU64,
    /// Entries below are on disk.
    flushed: AtomicU64,
    /// Free-space check for new files (they may use the headroom: keep = 0).
    space: SpaceCheck,
    /// Serializes repairs of damaged entries (readers that find the same damage wait for the
    /// first repair instead of repeating it).
    repair: Mutex<()>,
    /// Offsets whose record cannot be read even after a repair (reported once, then skipped).
    lost: Mutex<BTreeSet<u64>>,
}

/// The entry at queue offset `offset` of `file` (which holds it).
fn entry_at(file: &MappedFile, offset: u64) -> CqEntry {
    let at = ((offset - file.base()) * CQ_ENTRY_SIZE) as usize;
    let mut bytes = [0u8; CQ_ENTRY_SIZE as usize];
    // SAFETY: every access to consume-queue entries is byte-atomic (see `put`). A read racing
    // with a repair's rewrite may see a torn entry: readers check every entry against its
    // record and re-check a failed one under the repair lock.
    unsafe { file.load_bytes(at, &mut bytes) };
    CqEntry::decode(&bytes)
}

impl ConsumeQueue {
    pub(crate) fn open(
        root: &std::path::Path,
        topic: &str,
        queue_id: u32,
        per_file: u64,
        space: SpaceCheck,
    ) -> Result<Self, StoreError> {
        let dir = root.join(topic).join(queue_id.to_string());
        let mut files: Vec<Arc<MappedFile>> = Vec::new();
        for (base, path) in list_files(&dir)? {
            if base % per_file != 0
                || files
                    .last()
                    .is_some_and(|prev| base != prev.base() + per_file)
            {
                return Err(StoreError::Corrupt {
                    file: path,
                    offset: 0,
                    reason: "consume-queue file out of sequence".into(),
                });
            }
            files.push(Arc::new(MappedFile::open(
                &path,
                base,
                per_file * CQ_ENTRY_SIZE,
            )?));
        }
        let min = files.first().map_or(0, |f| f.base());
        Ok(Self {
            topic: topic.to_string(),
            queue_id,
            dir,
            per_file,
            files: RwLock::new(files),
            max: AtomicU64::new(min),
            min: AtomicU64::new(min),
            flushed: AtomicU64::new(min),
            space,
            repair: Mutex::new(()),
            lost: Mutex::new(BTreeSet::new()),
        })
    }

    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    pub(crate) fn queue_id(&self) -> u32 {
        self.queue_id
    }

    pub(crate) fn max(&self) -> u64 {
        self.max.load(Ordering::Acquire)
    }

    pub(crate) fn min(&self) -> u64 {
        self.min.load(Ordering::Acquire)
    }

    fn file_for(&self, offset: u64) -> Option<Arc<MappedFile>> {
        let files = self.files.read().expect("cq lock");
        let first = files.first()?.base();
        if offset < first {
            return None;
        }
        files
            .get(((offset - first) / self.per_file) as usize)
            .cloned()
    }

    /// Writes entry `offset` (dispatcher only). Readers see it after [`Self::publish`].
    pub(crate) fn put(&self, offset: u64, entry: CqEntry) -> Result<(), StoreError> {
        let file = match self.file_for(offset) {
            Some(f) => f,
            None => self.add_file(offset - offset % self.per_file, offset)?,
        };
        let at = ((offset - file.base()) * CQ_ENTRY_SIZE) as usize;
        // SAFETY: every access to consume-queue entries goes through `load_bytes` and
        // `store_bytes` (a repair may rewrite an entry a reader is reading, and `raw` may look
        // at unpublished entries); readers see this one after `publish` (Release).
        unsafe { file.store_bytes(at, &entry.encode()) };
        Ok(())
    }

    /// Adds the file starting at `base`; for a queue's first file, `first` (the first entry
    /// written) becomes the minimum, as a re-created topic continues at its old offsets.
    fn add_file(&self, base: u64, first: u64) -> Result<Arc<MappedFile>, StoreError> {
        if !self.dir.exists() {
            std::fs::create_dir_all(&self.dir).map_err(|e| StoreError::io(&self.dir, e))?;
            // The new `<topic>/<queue>` names must survive a power loss, or the queue's
            // entries below the checkpoint would vanish with them (recovery only re-dispatches
            // past the checkpoint). `create` below syncs the queue directory itself.
            if let Some(topic_dir) = self.dir.parent() {
                sync_dir(topic_dir)?;
                if let Some(root) = topic_dir.parent() {
                    sync_dir(root)?;
                }
            }
        }
        let mut files = self.files.write().expect("cq lock");
        if let Some(last) = files.last() {
            if base != last.base() + self.per_file {
                return Err(StoreError::Corrupt {
                    file: self.dir.clone(),
                    offset: base,
                    reason: format!(
                        "consume queue would skip from file {} to {base}",
                        last.base()
                    ),
                });
            }
        } else {
            self.min.store(first, Ordering::Release);
            self.max.store(first, Ordering::Release);
            self.flushed.store(first, Ordering::Release);
        }
        let file = Arc::new(MappedFile::create(
            &self.dir,
            base,
            self.per_file * CQ_ENTRY_SIZE,
            &self.space,
        )?);
        files.push(file.clone());
        Ok(file)
    }

    /// Makes entries below `max` readable.
    pub(crate) fn publish(&self, max: u64) {
        self.max.fetch_max(max, Ordering::AcqRel);
    }

    /// Entry at `offset`, or `None` when it is not readable.
    pub(crate) fn get(&self, offset: u64) -> Option<CqEntry> {
        if offset < self.min() || offset >= self.max() {
            return None;
        }
        self.raw(offset)
    }

    /// Entry at `offset` as stored, readable or not (`None` when no file holds it).
    pub(crate) fn raw(&self, offset: u64) -> Option<CqEntry> {
        let file = self.file_for(offset)?;
        Some(entry_at(&file, offset))
    }

    /// Reads up to `max_count` readable entries from `from`, calling `f(offset, entry)`;
    /// stops early when `f` returns false. Returns the offset after the last entry visited.
    pub(crate) fn scan(
        &self,
        from: u64,
        max_count: usize,
        mut f: impl FnMut(u64, CqEntry) -> bool,
    ) -> u64 {
        let max = self.max();
        let mut off = from.max(self.min());
        let end = max.min(off.saturating_add(max_count as u64));
        while off < end {
            let Some(file) = self.file_for(off) else {
                break;
            };
            let file_end = (file.base() + self.per_file).min(end);
            while off < file_end {
                let e = entry_at(&file, off);
                let keep_going = f(off, e);
                off += 1;
                if !keep_going {
                    return off;
                }
            }
        }
        off
    }

    /// Like [`Self::scan`] over `from..to` but ignoring `max` and `min` (recovery looks past
    /// the end): stops at the end of the files or when `f` returns false.
    pub(crate) fn scan_raw(&self, from: u64, to: u64, mut f: impl FnMut(u64, CqEntry) -> bool) {
        let mut off = from;
        while off < to {
            let Some(file) = self.file_for(off) else {
                return;
            };
            let file_end = (file.base() + self.per_file).min(to);
            while off < file_end {
                if !f(off, entry_at(&file, off)) {
                    return;
                }
                off += 1;
            }
        }
    }

    /// Flushes entries written since the last flush. Returns how many files were touched.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        let max = self.max();
        let from = self.flushed.load(Ordering::Acquire);
        if max <= from {
            return Ok(());
        }
        let mut off = from;
        while off < max {
            let Some(file) = self.file_for(off) else {
                break;
            };
            let end = max.min(file.base() + self.per_file);
            let a = (off - file.base()) * CQ_ENTRY_SIZE;
            let b = (end - file.base()) * CQ_ENTRY_SIZE;
            file.flush(a as usize, (b - a) as usize)?;
            // Flushed entries are read rarely (consumers mostly tail); hand their pages back so
            // resident memory does not grow with the backlog.
            file.release_below(b);
            off = end;
        }
        self.flushed.store(max, Ordering::Release);
        Ok(())
    }

    /// Recovery: finds the entries that refer to records below `valid_phys` (known durable
    /// and dispatched) and makes them the readable range; anything after them will be
    /// re-dispatched or was torn. Returns the new max.
    pub(crate) fn recover(&self, valid_phys: u64) -> u64 {
        let files = self.files.read().expect("cq lock").clone();
        let base = self.min();
        let end = files.last().map_or(base, |f| f.base() + self.per_file);
        // A queue's first file may start with empty entries (a topic deleted and created
        // again continues at its old offsets): the first written entry is the minimum.
        let first_file_end = (base + self.per_file).min(end);
        let mut min = base;
        while min < first_file_end && self.raw(min).is_some_and(|e| e.is_empty()) {
            min += 1;
        }
        if min == first_file_end {
            min = base;
        }
        self.min.store(min, Ordering::Release);
        // First entry that is empty or points at/after `valid_phys`: entries are dispatched in
        // commit-log order, so the predicate is monotonic over the queue.
        let (mut lo, mut hi) = (min, end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.raw(mid) {
                Some(e) if !e.is_empty() && e.phys_offset < valid_phys => lo = mid + 1,
                _ => hi = mid,
            }
        }
        self.max.store(lo, Ordering::Release);
        self.flushed.store(lo, Ordering::Release);
        lo
    }

    /// Recovery: erases stale entries from `max` up to the first empty one, so a later
    /// recovery never mistakes them for valid entries, and deletes files wholly past `max`.
    pub(crate) fn erase_after(&self, max: u64) -> Result<(), StoreError> {
        let mut files = self.files.write().expect("cq lock");
        while files
            .last()
            .is_some_and(|f| f.base() > max || (f.base() == max && files.len() > 1))
        {
            if let Some(f) = files.pop() {
                f.delete()?;
            }
        }
        drop(files);
        let mut off = max;
        while let Some(e) = self.raw(off) {
            if e.is_empty() {
                break;
            }
            let file = self.file_for(off).expect("entry has a file");
            let at = ((off - file.base()) * CQ_ENTRY_SIZE) as usize;
            // SAFETY: byte-atomic like every consume-queue access (see `put`).
            unsafe { file.store_bytes(at, &[0u8; CQ_ENTRY_SIZE as usize]) };
            off += 1;
        }
        if off > max {
            if let Some(file) = self.file_for(max) {
                file.flush(0, file.len() as usize)?;
            }
            let mut o = max;
            while o < off {
                if let Some(file) = self.file_for(o) {
                    file.flush(0, file.len() as usize)?;
                    o = file.base() + self.per_file;
                } else {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Retention: moves `min` to the first entry whose record is at or after `phys_min`, and
    /// deletes files entirely below it. Returns (old min, new min).
    pub(crate) fn trim_below_phys(&self, phys_min: u64) -> Result<(u64, u64), StoreError> {
        let old_min = self.min();
        let max = self.max();
        let (mut lo, mut hi) = (old_min, max);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.raw(mid) {
                Some(e) if e.phys_offset < phys_min => lo = mid + 1,
                _ => hi = mid,
            }
        }
        let new_min = lo;
        if new_min == old_min {
            return Ok((old_min, new_min));
        }
        self.min.store(new_min, Ordering::Release);
        let mut files = self.files.write().expect("cq lock");
        while files.len() > 1 && files[0].base() + self.per_file <= new_min {
            let f = files.remove(0);
            f.delete()?;
        }
        Ok((old_min, new_min))
    }

    /// Binary search: the first offset in `[min, max)` whose key (from `key_of(offset, entry)`)
    /// is >= `target`, or `max` if none. `key_of` must be monotonic over the queue.
    pub(crate) fn search(
        &self,
        target: i64,
        mut key_of: impl FnMut(u64, CqEntry) -> Result<i64, StoreError>,
    ) -> Result<u64, StoreError> {
        let (mut lo, mut hi) = (self.min(), self.max());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let Some(e) = self.get(mid) else {
                hi = mid;
                continue;
            };
            if key_of(mid, e)? < target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Where entry `offset` lives: (file, byte offset in it), for error messages.
    pub(crate) fn location(&self, offset: u64) -> (PathBuf, u64) {
        match self.file_for(offset) {
            Some(f) => (f.path().to_path_buf(), (offset - f.base()) * CQ_ENTRY_SIZE),
            None => (self.dir.clone(), offset * CQ_ENTRY_SIZE),
        }
    }

    /// One past the last entry the queue's files can hold.
    pub(crate) fn files_end(&self) -> u64 {
        let files = self.files.read().expect("cq lock");
        files
            .last()
            .map_or(self.min(), |f| f.base() + self.per_file)
    }

    /// Held while damaged entries of this queue are rebuilt.
    pub(crate) fn repair_lock(&self) -> MutexGuard<'_, ()> {
        self.repair.lock().expect("cq repair lock")
    }

    /// Repair: writes `entry` at `offset` if it differs from what is there; returns whether it
    /// wrote. Only for entries below `max` whose records are already dispatched, so the
    /// dispatcher never writes the same bytes; readers of a damaged entry re-check it after
    /// the repair (under [`Self::repair_lock`]).
    pub(crate) fn rewrite(&self, offset: u64, entry: CqEntry) -> bool {
        let Some(file) = self.file_for(offset) else {
            return false;
        };
        if self.raw(offset) == Some(entry) {
            return false;
        }
        let at = ((offset - file.base()) * CQ_ENTRY_SIZE) as usize;
        // SAFETY: byte-atomic like every consume-queue access (see `put`). One repairer per
        // queue (repair lock); the dispatcher only writes entries at or above `max`. A reader
        // racing with this write sees a damaged entry either way and re-checks it after
        // taking the repair lock.
        unsafe { file.store_bytes(at, &entry.encode()) };
        true
    }

    /// Open-time repair: entries up to `max` are now right (rebuilt from the log); the ones
    /// from `dirty_from` on must be flushed again.
    pub(crate) fn repaired(&self, max: u64, dirty_from: u64) {
        self.max.store(max, Ordering::Release);
        self.flushed
            .store(dirty_from.min(max).max(self.min()), Ordering::Release);
    }

    /// Writes entries `from..to` to disk now (after a repair below the flushed mark).
    pub(crate) fn flush_entries(&self, from: u64, to: u64) -> Result<(), StoreError> {
        let mut off = from.max(self.min());
        while off < to {
            let Some(file) = self.file_for(off) else {
                break;
            };
            let end = to.min(file.base() + self.per_file);
            let a = (off - file.base()) * CQ_ENTRY_SIZE;
            let b = (end - file.base()) * CQ_ENTRY_SIZE;
            file.flush(a as usize, (b - a) as usize)?;
            off = end;
        }
        Ok(())
    }

    /// Marks the record at `offset` as unreadable; true the first time.
    pub(crate) fn mark_lost(&self, offset: u64) -> bool {
        self.lost.lock().expect("cq lost lock").insert(offset)
    }

    /// True if the record at `offset` was found unreadable before.
    pub(crate) fn is_lost(&self, offset: u64) -> bool {
        self.lost.lock().expect("cq lost lock").contains(&offset)
    }

    /// Deletes every file of the queue (topic deletion).
    pub(crate) fn delete_files(&self) -> Result<(), StoreError> {
        let mut files = self.files.write().expect("cq lock");
        for f in files.drain(..) {
            f.delete()?;
        }
        let _ = std::fs::remove_dir(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        Ok(())
    }

    pub(crate) fn release_sealed(&self) {
        let files = self.files.read().expect("cq lock").clone();
        if let Some((_, sealed)) = files.split_last() {
            for f in sealed {
                f.release_all();
            }
        }
    }
}
