//! The message index: on-disk hash files in the manner of RocketMQ's IndexFile, mapping
//! hash(topic, key) and hash(message id) to commit-log offsets. Memory is bounded by the active
//! file's slot table; lookups walk per-slot chains newest-first. Entries carry only a 64-bit
//! hash, so callers confirm each hit against the record itself (no false positives escape).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::error::StoreError;
use super::mapped::{list_files, MappedFile, SpaceCheck};
use super::record::{fnv1a, get_u32, get_u64, FNV_OFFSET};

const MAGIC: u32 = 0x5156_4958; // "QVIX"
const HEADER: usize = 64;
const ENTRY: usize = 24;
const OFF_SLOTS: usize = 8;
const OFF_CAP: usize = 12;
const OFF_COUNT: usize = 16;
const OFF_BEGIN_TS: usize = 24;
const OFF_END_TS: usize = 32;
const OFF_BEGIN_PHYS: usize = 40;
const OFF_END_PHYS: usize = 48;

/// Hash under which a message key is indexed.
pub fn key_hash(topic: &str, key: &str) -> u64 {
    let h = fnv1a(FNV_OFFSET, b"k");
    let h = fnv1a(h, topic.as_bytes());
    let h = fnv1a(h, &[0]);
    nonzero(fnv1a(h, key.as_bytes()))
}

/// Hash under which a message id is indexed.
pub fn id_hash(id: u128) -> u64 {
    nonzero(fnv1a(fnv1a(FNV_OFFSET, b"i"), &id.to_le_bytes()))
}

fn nonzero(h: u64) -> u64 {
    h.max(1)
}

struct IndexFile {
    map: MappedFile,
    slots: u32,
    cap: u32,
    /// Entries written; mirrors the header field, read by lookups.
    count: AtomicU32,
}

impl IndexFile {
    fn size(slots: u32, cap: u32) -> u64 {
        (HEADER + slots as usize * 4 + cap as usize * ENTRY) as u64
    }

    fn create(
        dir: &Path,
        name: u64,
        slots: u32,
        cap: u32,
        ts: i64,
        phys: u64,
        space: &SpaceCheck,
    ) -> Result<Self, StoreError> {
        let map = MappedFile::create(dir, name, Self::size(slots, cap), space)?;
        let mut h = [0u8; HEADER];
        h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&1u32.to_le_bytes());
        h[OFF_SLOTS..OFF_SLOTS + 4].copy_from_slice(&slots.to_le_bytes());
        h[OFF_CAP..OFF_CAP + 4].copy_from_slice(&cap.to_le_bytes());
        h[OFF_BEGIN_TS..OFF_BEGIN_TS + 8].copy_from_slice(&ts.to_le_bytes());
        h[OFF_END_TS..OFF_END_TS + 8].copy_from_slice(&ts.to_le_bytes());
        h[OFF_BEGIN_PHYS..OFF_BEGIN_PHYS + 8].copy_from_slice(&phys.to_le_bytes());
        h[OFF_END_PHYS..OFF_END_PHYS + 8].copy_from_slice(&phys.to_le_bytes());
        // SAFETY: the file is new and not shared yet.
        unsafe { map.write(0, &h) };
        map.flush(0, HEADER)?;
        Ok(Self {
            map,
            slots,
            cap,
            count: AtomicU32::new(0),
        })
    }

    fn open(path: &Path, name: u64) -> Result<Self, StoreError> {
        let len = std::fs::metadata(path)
            .map_err(|e| StoreError::io(path, e))?
            .len();
        if len < HEADER as u64 {
            return Err(super::commitlog::corrupt(
                path,
                0,
                "index file shorter than its header",
            ));
        }
        let map = MappedFile::open(path, name, len)?;
        // SAFETY: the file is not shared yet.
        let h = unsafe { map.slice(0, HEADER) };
        let (slots, cap) = (get_u32(h, OFF_SLOTS), get_u32(h, OFF_CAP));
        if get_u32(h, 0) != MAGIC || Self::size(slots, cap) != len || slots == 0 {
            return Err(super::commitlog::corrupt(path, 0, "bad index header"));
        }
        // A torn header count is harmless: hits are confirmed against the log, and chains are
        // bounds-checked; clamp so we never read past the file.
        let count = get_u32(h, OFF_COUNT).min(cap);
        Ok(Self {
            map,
            slots,
            cap,
            count: AtomicU32::new(count),
        })
    }

    /// For the file that will take inserts, before it is shared: a slot that reached the disk
    /// after the header did (a power loss between their pages) names an entry past `count`.
    /// The next `put` would rewrite that entry while a lookup that followed the slot reads
    /// it, so start past every slot instead: entries a reader can reach are never written
    /// again. O(slots), so only done for the newest file (sealed files are never written).
    fn raise_count_past_slots(&mut self) {
        // SAFETY: not shared yet (called from `Index::open`); in bounds (size checked at open).
        let table = unsafe { self.map.slice(HEADER, self.slots as usize * 4) };
        let top = table
            .chunks_exact(4)
            .map(|s| get_u32(s, 0).min(self.cap))
            .max()
            .unwrap_or(0);
        let count = self.count.get_mut();
        *count = (*count).max(top);
    }

    fn slot(&self, hash: u64) -> &AtomicU32 {
        let at = HEADER + (hash % self.slots as u64) as usize * 4;
        // SAFETY: once the file is shared, slot memory is only ever accessed through these
        // 4-byte atomics (`create` and `open` touch it before sharing; no slice covers it
        // afterwards; `flush`/msync and page release are not Rust accesses). Alignment and
        // bounds are checked by `atomic_u32`.
        unsafe { self.map.atomic_u32(at) }
    }

    /// A u64 header field, shared with lookups (stored little-endian like the rest).
    fn field(&self, off: usize) -> &AtomicU64 {
        // SAFETY: once shared, header bytes 16..64 (count, times, offsets) are only accessed
        // through these atomics: `OFF_BEGIN_TS` and the fields below are 8-byte aligned and
        // each has exactly one width (`OFF_COUNT` is the 4-byte one, see `count_field`).
        unsafe { self.map.atomic_u64(off) }
    }

    fn count_field(&self) -> &AtomicU32 {
        // SAFETY: as in `field`; bytes 16..20 are only ever accessed as this u32.
        unsafe { self.map.atomic_u32(OFF_COUNT) }
    }

    fn entry_at(&self, n: u32) -> usize {
        HEADER + self.slots as usize * 4 + (n as usize - 1) * ENTRY
    }

    /// Bytes in use: header, slots and the entries written so far.
    fn used_len(&self) -> usize {
        let n = self.count.load(Ordering::Acquire);
        HEADER + self.slots as usize * 4 + n as usize * ENTRY
    }

    fn is_full(&self) -> bool {
        self.count.load(Ordering::Acquire) >= self.cap
    }

    fn begin_ts(&self) -> i64 {
        u64::from_le(self.field(OFF_BEGIN_TS).load(Ordering::Relaxed)) as i64
    }

    fn end_ts(&self) -> i64 {
        u64::from_le(self.field(OFF_END_TS).load(Ordering::Acquire)) as i64
    }

    fn end_phys(&self) -> u64 {
        u64::from_le(self.field(OFF_END_PHYS).load(Ordering::Acquire))
    }

    /// Adds an entry; single writer (the dispatcher).
    fn put(&self, hash: u64, phys: u64, ts: i64) {
        let n = self.count.load(Ordering::Relaxed) + 1;
        let slot = self.slot(hash);
        let prev = slot.load(Ordering::Acquire);
        let delta = ((ts - self.begin_ts()).max(0) / 1000).min(u32::MAX as i64) as u32;
        let mut e = [0u8; ENTRY];
        e[0..8].copy_from_slice(&hash.to_le_bytes());
        e[8..16].copy_from_slice(&phys.to_le_bytes());
        e[16..20].copy_from_slice(&delta.to_le_bytes());
        e[20..24].copy_from_slice(&prev.to_le_bytes());
        // SAFETY: entry `n` is past every slot value and every link (`count` starts past them
        // at open and only this writer raises it), so no reader reaches it before the slot
        // store below publishes it.
        unsafe { self.map.write(self.entry_at(n), &e) };
        // Header first, so a lookup that finds the entry also finds the file's time range
        // covering it (Release here, Acquire in `end_ts`).
        if ts > self.end_ts() {
            self.field(OFF_END_TS)
                .store((ts as u64).to_le(), Ordering::Release);
        }
        if phys > self.end_phys() {
            self.field(OFF_END_PHYS)
                .store(phys.to_le(), Ordering::Release);
        }
        slot.store(n, Ordering::Release);
        self.count.store(n, Ordering::Release);
        self.count_field().store(n.to_le(), Ordering::Release);
    }

    /// Walks the chain of `hash`, newest first, pushing offsets stored between the times.
    fn lookup(&self, hash: u64, begin_ts: i64, end_ts: i64, limit: usize, out: &mut Vec<u64>) {
        // Bounded by capacity, not `count`: `put` publishes the slot (after the entry) before
        // it bumps `count`, and links only ever point backwards.
        let base_ts = self.begin_ts();
        let mut n = self.slot(hash).load(Ordering::Acquire);
        let mut steps = 0u32;
        while n != 0 && n <= self.cap && out.len() < limit && steps <= self.cap {
            // SAFETY: entry `n` was reached through a slot (Acquire) or a backward link of an
            // entry reached so; it was written before that slot store and is never written
            // again (`put` only writes past every reachable entry).
            let e = unsafe { self.map.slice(self.entry_at(n), ENTRY) };
            let ts = base_ts + get_u32(e, 16) as i64 * 1000;
            // Deltas are whole seconds, so widen the window by one second.
            if get_u64(e, 0) == hash && ts + 1000 >= begin_ts && ts <= end_ts {
                let phys = get_u64(e, 8);
                if !out.contains(&phys) {
                    out.push(phys);
                }
            }
            let prev = get_u32(e, 20);
            if prev >= n {
                break; // a link must point backwards; anything else is a torn entry
            }
            n = prev;
            steps += 1;
        }
    }
}

pub(crate) struct Index {
    dir: PathBuf,
    slots: u32,
    cap: u32,
    space: SpaceCheck,
    files: RwLock<Vec<Arc<IndexFile>>>,
}

impl Index {
    #[cfg(test)]
    pub(crate) fn open(
        dir: PathBuf,
        slots: u32,
        cap: u32,
        space: SpaceCheck,
    ) -> Result<Self, StoreError> {
        Self::open_with_discarded(dir, slots, cap, space).map(|(index, _)| index)
    }

    /// Opens the index; unreadable files are removed and their names returned, for the store
    /// to rebuild them from the log ([`Self::rebuild`]).
    pub(crate) fn open_with_discarded(
        dir: PathBuf,
        slots: u32,
        cap: u32,
        space: SpaceCheck,
    ) -> Result<(Self, Vec<u64>), StoreError> {
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let mut files = Vec::new();
        let mut discarded = Vec::new();
        for (name, path) in list_files(&dir)? {
            match IndexFile::open(&path, name) {
                Ok(f) => files.push(f),
                // The index is derived data: an unreadable file (a damaged header, or one cut
                // by a power loss before its header reached the disk) is rebuilt from the log.
                Err(StoreError::Corrupt { reason, .. }) => {
                    tracing::error!(
                        file = %path.display(),
                        %reason,
                        "unreadable index file; rebuilding it from the commit log"
                    );
                    std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
                    discarded.push(name);
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(last) = files.last_mut() {
            last.raise_count_past_slots();
        }
        let files = files.into_iter().map(Arc::new).collect();
        Ok((
            Self {
                dir,
                slots,
                cap,
                space,
                files: RwLock::new(files),
            },
            discarded,
        ))
    }

    /// The names of the files after `name` (the next one bounds the records a discarded
    /// file held).
    pub(crate) fn next_name_after(&self, name: u64) -> Option<u64> {
        let files = self.files.read().expect("index lock");
        files.iter().map(|f| f.map.base()).find(|b| *b > name)
    }

    /// Starts rebuilding the file `name` (recovery only, before the dispatcher runs): up to
    /// `entries` entries go into a new file of that name (at least the configured capacity),
    /// placed in order among the others.
    pub(crate) fn rebuild(&self, name: u64, entries: u64) -> IndexRebuild<'_> {
        IndexRebuild {
            index: self,
            name,
            cap: u32::try_from(entries).unwrap_or(u32::MAX).max(self.cap),
            file: None,
            full: false,
        }
    }

    /// Adds `hash -> phys` (dispatcher only).
    pub(crate) fn put(&self, hash: u64, phys: u64, ts: i64) -> Result<(), StoreError> {
        let last = self.files.read().expect("index lock").last().cloned();
        let file = match last {
            Some(f) if !f.is_full() => f,
            last => {
                let name = last.map_or(phys, |f| phys.max(f.map.base() + 1));
                let f = Arc::new(IndexFile::create(
                    &self.dir,
                    name,
                    self.slots,
                    self.cap,
                    ts,
                    phys,
                    &self.space,
                )?);
                self.files.write().expect("index lock").push(f.clone());
                f
            }
        };
        file.put(hash, phys, ts);
        Ok(())
    }

    /// Offsets indexed under `hash` between the times, newest first, at most `limit`.
    pub(crate) fn lookup(&self, hash: u64, begin_ts: i64, end_ts: i64, limit: usize) -> Vec<u64> {
        let files = self.files.read().expect("index lock").clone();
        let mut out = Vec::new();
        for f in files.iter().rev() {
            if out.len() >= limit {
                break;
            }
            if f.end_ts() + 1000 < begin_ts || f.begin_ts() > end_ts {
                continue;
            }
            f.lookup(hash, begin_ts, end_ts, limit, &mut out);
        }
        out
    }

    /// Flushes the files that may hold unflushed entries (the newest two).
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        let files = self.files.read().expect("index lock").clone();
        for f in files.iter().rev().take(2) {
            let used = f.used_len();
            f.map.flush(0, used)?;
            // Written pages go back to the kernel (the slot table faults back in as it is used).
            f.map.release_below(used as u64);
        }
        Ok(())
    }

    /// Retention: deletes files whose every entry points below `phys_min`.
    pub(crate) fn trim_below_phys(&self, phys_min: u64) -> Result<usize, StoreError> {
        let mut files = self.files.write().expect("index lock");
        let mut removed = 0;
        while files.len() > 1 && files[0].end_phys() < phys_min {
            let f = files.remove(0);
            f.map.delete()?;
            removed += 1;
        }
        Ok(removed)
    }

    pub(crate) fn release_sealed(&self) {
        let files = self.files.read().expect("index lock").clone();
        if let Some((_, sealed)) = files.split_last() {
            for f in sealed {
                f.map.release_all();
            }
        }
    }
}

/// A discarded index file being rebuilt from the log ([`Index::rebuild`]).
pub(crate) struct IndexRebuild<'a> {
    index: &'a Index,
    name: u64,
    cap: u32,
    file: Option<Arc<IndexFile>>,
    full: bool,
}

impl IndexRebuild<'_> {
    /// Adds `hash -> phys`; the file is created by the first entry.
    pub(crate) fn put(&mut self, hash: u64, phys: u64, ts: i64) -> Result<(), StoreError> {
        if self.full {
            return Ok(());
        }
        let file = match &self.file {
            Some(f) => f.clone(),
            None => {
                let ix = self.index;
                let f = Arc::new(IndexFile::create(
                    &ix.dir, self.name, ix.slots, self.cap, ts, phys, &ix.space,
                )?);
                let mut files = ix.files.write().expect("index lock");
                let at = files.partition_point(|g| g.map.base() < self.name);
                files.insert(at, f.clone());
                self.file = Some(f.clone());
                f
            }
        };
        if file.is_full() {
            // The original may have had a larger capacity: keep what fits.
            tracing::warn!(
                name = self.name,
                "rebuilt index file is full; later entries of its range are not indexed"
            );
            self.full = true;
            return Ok(());
        }
        file.put(hash, phys, ts);
        Ok(())
    }

    /// Makes the rebuilt file durable.
    pub(crate) fn finish(self) -> Result<(), StoreError> {
        if let Some(f) = &self.file {
            f.map.flush(0, f.used_len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(dir: &Path) -> SpaceCheck {
        SpaceCheck::new(dir.into(), super::super::DiskSpaceSource::statvfs(), 0)
    }

    #[test]
    fn lookups_follow_chains_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(dir.path().to_path_buf(), 4, 8, space(dir.path())).unwrap();
        for i in 0..20u64 {
            let h = if i % 2 == 0 {
                key_hash("t", "even")
            } else {
                key_hash("t", &format!("k{i}"))
            };
            idx.put(h, i * 100, 1_000_000 + i as i64 * 1000).unwrap();
        }
        let evens = idx.lookup(key_hash("t", "even"), 0, i64::MAX, 100);
        assert_eq!(
            evens,
            (0..20u32)
                .step_by(2)
                .rev()
                .map(|i| i as u64 * 100)
                .collect::<Vec<u64>>()
        );
        assert_eq!(idx.lookup(key_hash("t", "k7"), 0, i64::MAX, 10), vec![700]);
        assert!(idx
            .lookup(key_hash("other", "k7"), 0, i64::MAX, 10)
            .is_empty());
        assert_eq!(idx.lookup(key_hash("t", "even"), 0, i64::MAX, 3).len(), 3);
        // time window: only entries stored at or after t=1_010_000
        let late = idx.lookup(key_hash("t", "even"), 1_010_000, i64::MAX, 100);
        assert!(late.iter().all(|p| *p >= 900), "{late:?}");
        idx.flush().unwrap();
        drop(idx);
        let idx = Index::open(dir.path().to_path_buf(), 4, 8, space(dir.path())).unwrap();
        assert_eq!(
            idx.lookup(key_hash("t", "k19"), 0, i64::MAX, 10),
            vec![1900]
        );
        assert_eq!(idx.trim_below_phys(1000).unwrap(), 1);
        assert!(idx.lookup(key_hash("t", "k1"), 0, i64::MAX, 10).is_empty());
    }

    #[test]
    fn a_count_torn_below_the_slots_never_lets_an_insert_rewrite_a_reachable_entry() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(dir.path().to_path_buf(), 4, 64, space(dir.path())).unwrap();
        let h = key_hash("t", "k");
        for i in 0..6u64 {
            idx.put(h, i * 100, 1_000_000).unwrap();
        }
        idx.flush().unwrap();
        drop(idx);
        // The header page says 2 entries while the slot page says 6 (written back out of order
        // before a power loss).
        let path = list_files(dir.path()).unwrap()[0].1.clone();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[OFF_COUNT..OFF_COUNT + 4].copy_from_slice(&2u32.to_le_bytes());
        std::fs::write(&path, bytes).unwrap();
        let idx = Index::open(dir.path().to_path_buf(), 4, 64, space(dir.path())).unwrap();
        idx.put(h, 600, 1_000_000).unwrap();
        assert_eq!(
            idx.lookup(h, 0, i64::MAX, 100),
            vec![600, 500, 400, 300, 200, 100, 0],
            "the chain the slot names is intact"
        );
    }
}
