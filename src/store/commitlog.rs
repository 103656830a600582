//! The commit log: one append-only log for all topics, cut into fixed-size segment files named
//! by their starting physical offset. Owns segment files, appending records, reading them back
//! (zero-copy `Bytes` over the mapping) and walking the log for dispatch and recovery.
//! It does not know consume queues, indexes or flush policy.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use super::error::StoreError;
use super::mapped::{list_files, MappedFile, SpaceCheck};
use super::record::{self, NewMessage, Probe, RecordPlacement, RecordView, FLAG_BATCH_CONT};

pub(crate) struct CommitLog {
    dir: PathBuf,
    segment_size: u64,
    /// Sorted by base offset; contiguous (each base = previous base + segment_size).
    segments: RwLock<Vec<Arc<MappedFile>>>,
    /// End of the last completely written record; readers never look past it.
    written: AtomicU64,
    /// Everything below is on disk (fsync returned).
    flushed: AtomicU64,
    /// First readable offset (start of the oldest segment).
    min: AtomicU64,
    /// Set once the appender exists (`start_at`); from then on walks stop at `written`.
    live: AtomicBool,
    /// Free-space check for new segments (keeps `disk_headroom_bytes`).
    space: SpaceCheck,
}

/// Where the next record goes; only the appender (under the store's write lock) holds it.
pub(crate) struct Cursor {
    active: Arc<MappedFile>,
    pos: u64,
    /// Records are encoded here, then written to the segment file with one `pwrite`.
    scratch: Vec<u8>,
}

/// Appends of at least this many bytes are encoded into a buffer and written with one
/// `pwrite`; smaller ones are encoded straight into the mapping. Measured on the development
/// VM (docs/STORAGE.md §6.1): for batches, `pwrite` used 30% less broker CPU per GB (a page
/// a write covers whole is never zeroed, while a store into a fresh mapped page faults and
/// zeroes it); for single 1 KB messages the syscall per append cost more than the fault that
/// four of them share, and appends through the mapping ran about twice as fast.
const PWRITE_MIN: usize = 16 << 10;

/// Scratch capacity kept between appends; a larger batch's buffer is given back after it.
const SCRATCH_KEEP: usize = 8 << 20;

/// One step of a walk through the log.
pub(crate) enum Step {
    /// A record at `pos` of `len` bytes (header plausible; CRC checked if asked).
    Record { pos: u64, len: usize, flags: u32 },
    /// The segment ends here; continue at the next segment's base.
    NextSegment(u64),
    /// No valid data at `pos`; the reason says why.
    End { pos: u64, reason: String },
}

/// A record's bytes, borrowed from the mapping and kept alive by it.
struct SegmentBytes {
    seg: Arc<MappedFile>,
    off: usize,
    len: usize,
}

impl AsRef<[u8]> for SegmentBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: built by `read` over a range below `written` (published, never written
        // again: the appender only writes past `written`, recovery runs before any reader).
        unsafe { self.seg.slice(self.off, self.len) }
    }
}

impl CommitLog {
    /// Opens the segments in `dir` (creating the directory). Positions are set by recovery.
    pub(crate) fn open(
        dir: PathBuf,
        segment_size: u64,
        space: SpaceCheck,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let mut segments = Vec::new();
        for (base, path) in list_files(&dir)? {
            if let Some(prev) = segments.last().map(|s: &Arc<MappedFile>| s.base()) {
                if base != prev + segment_size {
                    return Err(StoreError::Corrupt {
                        file: path,
                        offset: 0,
                        reason: format!(
                            "segment does not follow the previous one (expected base {}); \
                             a segment is missing or the segment size changed",
                            prev + segment_size
                        ),
                    });
                }
            }
            if base % segment_size != 0 {
                return Err(StoreError::Config(format!(
                    "segment {} is not aligned to store.segment_size = {segment_size}; \
                     the segment size of an existing store cannot change",
                    path.display()
                )));
            }
            segments.push(Arc::new(MappedFile::open(&path, base, segment_size)?));
        }
        let min = segments.first().map_or(0, |s| s.base());
        Ok(Self {
            dir,
            segment_size,
            segments: RwLock::new(segments),
            written: AtomicU64::new(min),
            flushed: AtomicU64::new(min),
            min: AtomicU64::new(min),
            live: AtomicBool::new(false),
            space,
        })
    }

    pub(crate) fn segment_size(&self) -> u64 {
        self.segment_size
    }

    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    pub(crate) fn flushed(&self) -> u64 {
        self.flushed.load(Ordering::Acquire)
    }

    pub(crate) fn min_offset(&self) -> u64 {
        self.min.load(Ordering::Acquire)
    }

    pub(crate) fn segments(&self) -> Vec<Arc<MappedFile>> {
        self.segments.read().expect("segments lock").clone()
    }

    fn segment_for(&self, pos: u64) -> Option<Arc<MappedFile>> {
        let segs = self.segments.read().expect("segments lock");
        let first = segs.first()?.base();
        if pos < first {
            return None;
        }
        segs.get(((pos - first) / self.segment_size) as usize)
            .cloned()
    }

    /// Sets the write position after recovery and returns the cursor for appends.
    pub(crate) fn start_at(&self, pos: u64) -> Result<Cursor, StoreError> {
        self.written.store(pos, Ordering::Release);
        self.flushed.store(pos, Ordering::Release);
        let base = pos - pos % self.segment_size;
        let active = match self.segment_for(pos).filter(|s| s.base() == base) {
            Some(seg) => seg,
            None => self.add_segment(base)?,
        };
        self.live.store(true, Ordering::Release);
        Ok(Cursor {
            active,
            pos,
            scratch: Vec::new(),
        })
    }

    fn add_segment(&self, base: u64) -> Result<Arc<MappedFile>, StoreError> {
        let seg = Arc::new(MappedFile::create(
            &self.dir,
            base,
            self.segment_size,
            &self.space,
        )?);
        let mut segs = self.segments.write().expect("segments lock");
        if segs.is_empty() {
            self.min.store(base, Ordering::Release);
        }
        segs.push(seg.clone());
        Ok(seg)
    }

    /// Appends a batch for one (topic, queue) contiguously inside one segment. `sizes[i]` is
    /// the encoded size of `msgs[i]`. Returns the physical offset of each record; publishes
    /// the new written position only once every record is complete.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn append(
        &self,
        cur: &mut Cursor,
        topic: &str,
        queue_id: u32,
        first_queue_offset: u64,
        msgs: &[NewMessage<'_>],
        sizes: &[usize],
        store_timestamp: i64,
        phys_out: &mut Vec<u64>,
    ) -> Result<(), StoreError> {
        let total: u64 = sizes.iter().map(|s| *s as u64).sum();
        if total > self.segment_size {
            return Err(StoreError::BatchTooLarge {
                size: total as usize,
                segment_size: self.segment_size,
            });
        }
        let seg_end = cur.active.base() + self.segment_size;
        if cur.pos + total > seg_end {
            self.roll(cur)?;
        }
        let n = msgs.len();
        let start = cur.pos;
        let off = (start - cur.active.base()) as usize;
        let direct = (total as usize) < PWRITE_MIN;
        let Cursor {
            active, scratch, ..
        } = &mut *cur;
        let buf: &mut [u8] = if direct {
            // SAFETY: `start..start + total` is at or past `written`, so no reader forms a
            // slice over it (walks and reads stop at `written`), and the cursor is owned by the
            // single appender (under the store's writer lock).
            unsafe { active.slice_mut(off, total as usize) }
        } else {
            scratch.clear();
            scratch.resize(total as usize, 0);
            &mut scratch[..]
        };
        let mut pos = start;
        let mut at = 0usize;
        for (i, (m, size)) in msgs.iter().zip(sizes).enumerate() {
            let placement = RecordPlacement {
                queue_id,
                queue_offset: first_queue_offset + i as u64,
                phys_offset: pos,
                store_timestamp,
                extra_flags: if i + 1 < n { FLAG_BATCH_CONT } else { 0 },
            };
            record::encode_into(&mut buf[at..at + size], topic, m, &placement);
            phys_out.push(pos);
            pos += *size as u64;
            at += size;
        }
        if !direct {
            // SAFETY: as above: an unpublished range owned by the appender.
            let written = unsafe { active.write_at(off, scratch) };
            if scratch.capacity() > SCRATCH_KEEP {
                *scratch = Vec::new();
            }
            if let Err(e) = written {
                // Nothing published: the next append writes over whatever part landed.
                phys_out.truncate(phys_out.len() - n);
                return Err(e);
            }
        }
        cur.pos = pos;
        self.written.store(pos, Ordering::Release);
        Ok(())
    }

    /// Appends records copied from another store's log (replication): `bytes` are whole,
    /// validated records that belong exactly at the cursor; then, with `roll_after`, the
    /// segment is closed as the source's was. Publishes the new written position once.
    pub(crate) fn append_raw(
        &self,
        cur: &mut Cursor,
        bytes: &[u8],
        roll_after: bool,
    ) -> Result<(), StoreError> {
        let seg_end = cur.active.base() + self.segment_size;
        if cur.pos + bytes.len() as u64 > seg_end {
            return Err(corrupt(
                cur.active.path(),
                cur.pos - cur.active.base(),
                "replicated records cross a segment boundary",
            ));
        }
        if !bytes.is_empty() {
            let off = (cur.pos - cur.active.base()) as usize;
            // SAFETY: an unpublished range (at or past `written`) owned by the appender.
            unsafe { cur.active.write_at(off, bytes) }?;
            cur.pos += bytes.len() as u64;
            self.written.store(cur.pos, Ordering::Release);
        }
        if roll_after {
            self.roll(cur)?;
        }
        Ok(())
    }

    /// The published bytes `pos..pos+len`, inside one segment, sharing the mapping.
    pub(crate) fn read_span(&self, pos: u64, len: usize) -> Result<Bytes, StoreError> {
        let seg = self.checked_segment(pos, len)?;
        let off = (pos - seg.base()) as usize;
        Ok(Bytes::from_owner(SegmentBytes { seg, off, len }))
    }

    /// Closes the active segment with a blank filler and moves to a new one. When the new
    /// segment cannot be allocated (disk full) nothing is published and the cursor stays: the
    /// filler lies past `written`, and the next append writes over it or rolls again.
    fn roll(&self, cur: &mut Cursor) -> Result<(), StoreError> {
        let seg_end = cur.active.base() + self.segment_size;
        let left = seg_end - cur.pos;
        if left >= 8 {
            let off = (cur.pos - cur.active.base()) as usize;
            let mut blank = [0u8; 8];
            record::encode_blank(&mut blank, left as u32);
            // SAFETY: unpublished range (at or past `written`) owned by the appender.
            unsafe { cur.active.write_at(off, &blank) }?;
        }
        let next = self.add_segment(seg_end)?;
        cur.active = next;
        cur.pos = seg_end;
        self.written.store(seg_end, Ordering::Release);
        Ok(())
    }

    /// Looks at what is stored at `pos` without checking a CRC unless `check_crc`. Once the
    /// appender exists, only published bytes (below `written`) are looked at; before that
    /// (recovery) the walk may look up to the end of the segment.
    pub(crate) fn step(&self, pos: u64, check_crc: bool) -> Step {
        let Some(seg) = self.segment_for(pos) else {
            return Step::End {
                pos,
                reason: "no segment holds this offset".into(),
            };
        };
        let seg_end = seg.base() + self.segment_size;
        let limit = if self.live.load(Ordering::Acquire) {
            self.written().min(seg_end)
        } else {
            seg_end
        };
        // Anything short of a full header before the limit, inside the segment, is not
        // published yet (a published segment tail shorter than a header reaches `seg_end`).
        if pos >= limit || (limit < seg_end && limit - pos < 8) {
            return Step::End {
                pos,
                reason: "end of the written data".into(),
            };
        }
        let off = (pos - seg.base()) as usize;
        // SAFETY: `pos..limit` is below `written` (loaded with Acquire, so the appender's
        // writes are visible and it never writes there again), or no appender exists yet.
        let avail = unsafe { seg.slice(off, (limit - pos) as usize) };
        match record::probe(avail) {
            Probe::Blank => Step::NextSegment(seg.base() + self.segment_size),
            Probe::End(reason) => Step::End {
                pos,
                reason: reason.into(),
            },
            Probe::Record(len) => {
                if check_crc {
                    if let Err(reason) = RecordView::parse(&avail[..len]) {
                        return Step::End {
                            pos,
                            reason: reason.into(),
                        };
                    }
                }
                let flags = record::get_u32(avail, record::OFF_FLAGS);
                Step::Record { pos, len, flags }
            }
        }
    }

    /// Runs `f` on the record at `pos..pos+len` in place (no copy).
    pub(crate) fn with_record<T>(
        &self,
        pos: u64,
        len: usize,
        check_crc: bool,
        f: impl FnOnce(RecordView<'_>) -> T,
    ) -> Result<T, StoreError> {
        let seg = self.checked_segment(pos, len)?;
        let off = (pos - seg.base()) as usize;
        // SAFETY: `checked_segment` bounded the range by `written` (Acquire): published.
        let buf = unsafe { seg.slice(off, len) };
        let parsed = if check_crc {
            RecordView::parse(buf)
        } else {
            RecordView::parse_unchecked_crc(buf)
        };
        parsed
            .map(f)
            .map_err(|reason| corrupt(seg.path(), off as u64, reason))
    }

    /// The record at `pos..pos+len` as `Bytes` sharing the mapping (no copy), CRC-checked if
    /// `check_crc`.
    pub(crate) fn read(&self, pos: u64, len: usize, check_crc: bool) -> Result<Bytes, StoreError> {
        let seg = self.checked_segment(pos, len)?;
        let off = (pos - seg.base()) as usize;
        // SAFETY: `checked_segment` bounded the range by `written` (Acquire): published.
        let buf = unsafe { seg.slice(off, len) };
        let valid = if record::get_u32(buf, 0) as usize != len {
            Err("length field does not match the consume-queue entry")
        } else if check_crc {
            RecordView::parse(buf).map(|_| ())
        } else {
            // Sections are always checked, so a returned record always parses.
            RecordView::parse_unchecked_crc(buf).map(|_| ())
        };
        valid.map_err(|reason| corrupt(seg.path(), off as u64, reason))?;
        Ok(Bytes::from_owner(SegmentBytes { seg, off, len }))
    }

    /// The length of the record at `pos`, from its header (for lookups by offset or index).
    pub(crate) fn read_header_len(&self, pos: u64) -> Result<usize, StoreError> {
        let seg = self.checked_segment(pos, record::HEADER_SIZE)?;
        let off = (pos - seg.base()) as usize;
        // SAFETY: `checked_segment` bounded the range by `written` (Acquire): published.
        let h = unsafe { seg.slice(off, 8) };
        if record::get_u32(h, record::OFF_MAGIC) != record::RECORD_MAGIC {
            return Err(corrupt(
                seg.path(),
                off as u64,
                "no record starts at this offset",
            ));
        }
        Ok(record::get_u32(h, record::OFF_TOTAL_LEN) as usize)
    }

    /// The store timestamp of the record at `pos` (header read only).
    pub(crate) fn store_timestamp(&self, pos: u64) -> Result<i64, StoreError> {
        let seg = self.checked_segment(pos, record::HEADER_SIZE)?;
        let off = (pos - seg.base()) as usize;
        // SAFETY: `checked_segment` bounded the range by `written` (Acquire): published.
        let h = unsafe { seg.slice(off, record::HEADER_SIZE) };
        Ok(record::get_u64(h, record::OFF_STORE_TS) as i64)
    }

    fn checked_segment(&self, pos: u64, len: usize) -> Result<Arc<MappedFile>, StoreError> {
        let written = self.written();
        let min = self.min_offset();
        let past_end = pos.checked_add(len as u64).is_none_or(|end| end > written);
        if pos < min || past_end || len < record::HEADER_SIZE {
            return Err(StoreError::OffsetOutOfRange {
                offset: pos,
                min,
                max: written,
            });
        }
        let seg = self.segment_for(pos).ok_or(StoreError::OffsetOutOfRange {
            offset: pos,
            min,
            max: written,
        })?;
        if pos + len as u64 > seg.base() + self.segment_size {
            return Err(corrupt(
                seg.path(),
                pos - seg.base(),
                "record crosses a segment boundary",
            ));
        }
        Ok(seg)
    }

    /// Flushes `from..to` to disk, segment by segment.
    pub(crate) fn flush(&self, from: u64, to: u64) -> Result<(), StoreError> {
        let mut pos = from;
        while pos < to {
            let Some(seg) = self.segment_for(pos) else {
                break;
            };
            let seg_end = seg.base() + self.segment_size;
            let end = to.min(seg_end);
            let off = pos - seg.base();
            seg.flush(off as usize, (end - pos) as usize)?;
            pos = end;
        }
        self.flushed.fetch_max(to, Ordering::AcqRel);
        Ok(())
    }

    /// Returns resident pages of flushed data, keeping `keep` bytes below the flush point.
    pub(crate) fn release_flushed(&self, keep: u64) {
        let upto = self.flushed().saturating_sub(keep);
        for seg in self.segments() {
            if seg.base() >= upto {
                break;
            }
            seg.release_below(upto - seg.base());
        }
    }

    /// Drops everything from `pos` on: zeroes the rest of its segment, deletes later segments.
    pub(crate) fn truncate(&self, pos: u64) -> Result<usize, StoreError> {
        let mut segs = self.segments.write().expect("segments lock");
        let mut removed = 0;
        while let Some(last) = segs.last() {
            if last.base() > pos || (last.base() == pos && segs.len() > 1) {
                last.delete()?;
                segs.pop();
                removed += 1;
            } else {
                break;
            }
        }
        if let Some(last) = segs.last() {
            if pos >= last.base() {
                last.zero_from(pos - last.base())?;
            }
        }
        super::durable::sync_dir(&self.dir)?;
        Ok(removed)
    }

    /// Drops everything from `pos` on in a live log (readers may hold records past `pos`):
    /// later segments are deleted (their mappings stay valid for whoever holds them), and the
    /// segment holding `pos` is replaced by a copy of its bytes below `pos`, so no byte a
    /// reader may be looking at is ever written. Returns the cursor for appends at `pos`;
    /// `written` becomes `pos` and `flushed` at most `pos`. The caller holds the writer lock.
    pub(crate) fn cut_live(&self, pos: u64) -> Result<Cursor, StoreError> {
        {
            let mut segs = self.segments.write().expect("segments lock");
            while let Some(last) = segs.last() {
                if last.base() > pos || (last.base() == pos && segs.len() > 1) {
                    last.delete()?;
                    segs.pop();
                } else {
                    break;
                }
            }
            if let Some(last) = segs.last_mut() {
                if pos >= last.base() && pos < last.base() + self.segment_size {
                    let copy = last.copy_prefix(pos - last.base(), &self.space)?;
                    *last = Arc::new(copy);
                }
            }
            super::durable::sync_dir(&self.dir)?;
        }
        self.written.store(pos, Ordering::Release);
        self.flushed.fetch_min(pos, Ordering::AcqRel);
        let base = pos - pos % self.segment_size;
        let active = match self.segment_for(pos).filter(|s| s.base() == base) {
            Some(seg) => seg,
            None => self.add_segment(base)?,
        };
        Ok(Cursor {
            active,
            pos,
            scratch: Vec::new(),
        })
    }

    /// Deletes the oldest segment if it is sealed and `keep(segment)` says no; returns its
    /// range. The active segment is never deleted.
    pub(crate) fn delete_oldest_if(
        &self,
        remove: impl FnOnce(&MappedFile) -> bool,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let mut segs = self.segments.write().expect("segments lock");
        if segs.len() < 2 {
            return Ok(None);
        }
        if !remove(&segs[0]) {
            return Ok(None);
        }
        let seg = segs.remove(0);
        self.min.store(segs[0].base(), Ordering::Release);
        drop(segs);
        seg.delete()?;
        // Otherwise a power loss can bring the segment back.
        super::durable::sync_dir(&self.dir)?;
        Ok(Some((seg.base(), seg.base() + self.segment_size)))
    }

    /// Releases every resident page of sealed segments (cold data).
    pub(crate) fn release_sealed(&self) {
        let segs = self.segments();
        if let Some((_, sealed)) = segs.split_last() {
            for seg in sealed {
                seg.release_all();
            }
        }
    }

    pub(crate) fn path_of(&self, pos: u64) -> PathBuf {
        self.segment_for(pos)
            .map(|s| s.path().to_path_buf())
            .unwrap_or_else(|| self.dir.clone())
    }
}

pub(crate) fn corrupt(file: &Path, offset: u64, reason: &str) -> StoreError {
    StoreError::Corrupt {
        file: file.to_path_buf(),
        offset,
        reason: reason.to_string(),
    }
}
