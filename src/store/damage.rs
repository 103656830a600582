//! Damage to files below the checkpoint: consume-queue entries are checked against the record
//! they point at, damaged entries are rebuilt from the commit log (the source of truth), and a
//! record that cannot be read is reported once and skipped instead of failing every read.
//! See docs/STORAGE.md §10.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use quiver_protocol::record::{
    get_u32, get_u64, RecordView, HEADER_SIZE, MIN_RECORD_SIZE, OFF_MAGIC, OFF_PHYS_OFFSET,
    OFF_QUEUE_ID, OFF_QUEUE_OFFSET, OFF_TOTAL_LEN, RECORD_MAGIC,
};

use super::commitlog::Step;
use super::consume_queue::ConsumeQueue;
use super::mapped::MappedFile;
use super::{tag_hash, CqEntry, Inner, StoreError};

/// How far past a queue's recovered end recovery looks for entries that prove the end wrong:
/// more than a 4 KiB page of entries (204), so a lost page at the end is seen. Measured cost
/// at open: about 5 µs per queue.
const TAIL_LOOKAHEAD: u64 = 256;
/// A rebuild that walks more than this many bytes of log logs its progress.
const PROGRESS_BYTES: u64 = 256 << 20;

/// What reading one consume-queue entry found.
pub(crate) enum Checked {
    /// The record the entry points at, whose header names this queue and offset.
    Ok(Bytes),
    /// Retention deleted the record meanwhile.
    Gone,
    /// The entry or its record is damaged; the reason says how.
    Bad(String),
}

/// The identity a record header gives: (topic, queue id, queue offset, phys offset).
fn identity(b: &[u8]) -> Option<(&[u8], u32, u64, u64)> {
    if b.len() < MIN_RECORD_SIZE || get_u32(b, OFF_MAGIC) != RECORD_MAGIC {
        return None;
    }
    let tlen = b[HEADER_SIZE] as usize;
    let topic = b.get(HEADER_SIZE + 1..HEADER_SIZE + 1 + tlen)?;
    Some((
        topic,
        get_u32(b, OFF_QUEUE_ID),
        get_u64(b, OFF_QUEUE_OFFSET),
        get_u64(b, OFF_PHYS_OFFSET),
    ))
}

/// Why the record `b` found through entry `off` of `cq` (pointing at `phys`) is not that
/// entry's record, or `None` when it is.
fn mismatch(b: &[u8], cq: &ConsumeQueue, off: u64, phys: u64) -> Option<String> {
    let Some((topic, qid, qo, p)) = identity(b) else {
        return Some("no record header at the offset the entry points at".into());
    };
    if p != phys {
        Some(format!(
            "the record there says it was written at offset {p}, not {phys}"
        ))
    } else if topic != cq.topic().as_bytes() || qid != cq.queue_id() {
        Some(format!(
            "the record there belongs to topic {:?} queue {qid}",
            String::from_utf8_lossy(topic)
        ))
    } else if qo != off {
        Some(format!("the record there has queue offset {qo}"))
    } else {
        None
    }
}

/// Per-queue state of a rebuild walk.
struct Target {
    cq: Arc<ConsumeQueue>,
    /// First entry to rebuild.
    from_off: u64,
    /// Entries at or past this are left alone.
    to_off: u64,
    /// Records before this commit-log offset precede the range.
    from_phys: u64,
    /// Queue offset the next record of this queue should carry.
    expect: u64,
    /// One past the last entry rebuilt.
    end: u64,
    rewritten: u64,
}

impl Inner {
    /// Reads entry `off` of `cq` and checks it against its record: the header must name the
    /// queue, the offset and the position; the length must match; the CRC must hold if
    /// `verify`.
    pub(super) fn check_entry(
        &self,
        cq: &ConsumeQueue,
        off: u64,
        e: &CqEntry,
        verify: bool,
    ) -> Result<Checked, StoreError> {
        if e.size == 0 {
            return Ok(Checked::Bad("empty entry below the queue's end".into()));
        }
        match self.log.read(e.phys_offset, e.size as usize, verify) {
            Ok(b) => Ok(match mismatch(&b, cq, off, e.phys_offset) {
                None => Checked::Ok(b),
                Some(r) => Checked::Bad(r),
            }),
            Err(StoreError::OffsetOutOfRange { .. }) if e.phys_offset < self.log.min_offset() => {
                Ok(Checked::Gone)
            }
            Err(StoreError::OffsetOutOfRange { min, max, .. }) => Ok(Checked::Bad(format!(
                "entry points at {}+{} bytes, outside the log {min}..{max}",
                e.phys_offset, e.size
            ))),
            Err(StoreError::Corrupt { reason, .. }) => Ok(Checked::Bad(reason)),
            Err(other) => Err(other),
        }
    }

    /// The log bytes `pos..pos+len` if they lie below `written` inside one segment.
    fn log_slice(&self, pos: u64, len: usize) -> Option<(Arc<MappedFile>, usize)> {
        if pos < self.log.min_offset() || pos + len as u64 > self.log.written() {
            return None;
        }
        let size = self.log.segment_size();
        let segs = self.log.segments();
        let first = segs.first()?.base();
        let seg = segs.get(((pos - first) / size) as usize)?.clone();
        let off = (pos - seg.base()) as usize;
        (off + len <= size as usize).then_some((seg, off))
    }

    /// True when entry `off` points at a record whose header names this queue, offset,
    /// position and length (no CRC check): the entry itself is right.
    fn entry_points_home(&self, cq: &ConsumeQueue, off: u64, e: &CqEntry) -> bool {
        if (e.size as usize) < MIN_RECORD_SIZE {
            return false;
        }
        let Some((seg, at)) = self.log_slice(e.phys_offset, e.size as usize) else {
            return false;
        };
        // SAFETY: `log_slice` only answers ranges below `written` (Acquire), which the append
        // thread published and never writes again.
        let b = unsafe { seg.slice(at, e.size as usize) };
        get_u32(b, OFF_TOTAL_LEN) == e.size && mismatch(b, cq, off, e.phys_offset).is_none()
    }

    /// The nearest entry below (`down`) or above `off` within `lo..hi` that points home,
    /// probing at distances 1, 2, 4, ... and finally the bound itself.
    fn anchor(&self, cq: &ConsumeQueue, off: u64, lo: u64, hi: u64, down: bool) -> Option<u64> {
        let mut dist = 1u64;
        loop {
            let c = if down {
                off.checked_sub(dist).filter(|c| *c >= lo).unwrap_or(lo)
            } else {
                off.saturating_add(dist).min(hi.saturating_sub(1))
            };
            if (down && (c >= off || c < lo)) || (!down && (c <= off || c >= hi)) {
                return None;
            }
            if cq.raw(c).is_some_and(|e| self.entry_points_home(cq, c, &e)) {
                return Some(c);
            }
            if c == lo || c + 1 == hi {
                return None;
            }
            dist = dist.saturating_mul(2);
        }
    }

    /// Read-time repair: entry `off` of `cq` failed its check. Unless it points home (then
    /// the record itself is damaged and nothing in the queue can fix it), rebuilds the entries
    /// between the nearest good entries around it from the commit-log records between them.
    pub(super) fn repair_around(
        &self,
        cq: &Arc<ConsumeQueue>,
        off: u64,
        reason: &str,
    ) -> Result<(), StoreError> {
        let _g = cq.repair_lock();
        // Records below `d0` are dispatched and their entries are below `max` (published under
        // the same lock): the dispatcher never writes what this repair writes.
        let (d0, max) = {
            let g = self.dispatched.lock().expect("dispatch lock");
            (*g, cq.max())
        };
        let min = cq.min();
        if off < min || off >= max {
            return Ok(());
        }
        if cq
            .raw(off)
            .is_some_and(|e| self.entry_points_home(cq, off, &e))
        {
            return Ok(()); // right entry (perhaps repaired meanwhile); the record is damaged
        }
        let (file, at) = cq.location(off);
        tracing::error!(
            file = %file.display(),
            offset = at,
            topic = cq.topic(),
            queue = cq.queue_id(),
            queue_offset = off,
            %reason,
            "consume-queue entry does not match the record it points at; rebuilding the \
             damaged range from the commit log"
        );
        let low = self.anchor(cq, off, min, max, true);
        let high = self.anchor(cq, off, min, max, false);
        let (from_off, from_phys) = match low.and_then(|o| cq.raw(o).map(|e| (o, e))) {
            Some((o, e)) => (o + 1, e.phys_offset + e.size as u64),
            None => (min, self.log.min_offset()),
        };
        let (to_off, to_phys) = match high.and_then(|o| cq.raw(o).map(|e| (o, e))) {
            Some((o, e)) => (o, e.phys_offset),
            None => (max, d0),
        };
        let mut targets = vec![Target {
            cq: cq.clone(),
            from_off,
            to_off,
            from_phys,
            expect: from_off,
            end: from_off,
            rewritten: 0,
        }];
        self.rebuild_entries(&mut targets, from_phys, to_phys, false)?;
        let t = &targets[0];
        if t.rewritten > 0 {
            cq.flush_entries(from_off, to_off)?;
        }
        self.repaired_entries
            .fetch_add(t.rewritten, Ordering::Relaxed);
        tracing::warn!(
            topic = cq.topic(),
            queue = cq.queue_id(),
            from = from_off,
            to = to_off,
            rewritten = t.rewritten,
            "consume-queue entries rebuilt from the commit log"
        );
        Ok(())
    }

    /// Walks the log over `from..to` and writes, for every record of a target queue in its
    /// range, the entry the dispatcher would have written. A record is trusted when its CRC
    /// holds, or when its header still carries the next expected queue offset at its own
    /// position (a damaged record keeps its entry so that reads report it instead of hiding
    /// it). `at_open`: no readers yet, entries may be written past `max` (files are added).
    fn rebuild_entries(
        &self,
        targets: &mut [Target],
        from: u64,
        to: u64,
        at_open: bool,
    ) -> Result<(), StoreError> {
        let by_queue: HashMap<(String, u32), usize> = targets
            .iter()
            .enumerate()
            .map(|(i, t)| ((t.cq.topic().to_string(), t.cq.queue_id()), i))
            .collect();
        let started = Instant::now();
        let mut next_report = from.saturating_add(PROGRESS_BYTES);
        self.walk_log(from, to, |p, b| {
            if p >= next_report {
                next_report = p.saturating_add(PROGRESS_BYTES);
                tracing::info!(
                    at = p,
                    to,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "rebuilding consume-queue entries from the commit log"
                );
            }
            let Some((topic, qid, qo, phys)) = identity(b) else {
                return Ok(());
            };
            if phys != p {
                return Ok(());
            }
            let Ok(topic) = std::str::from_utf8(topic) else {
                return Ok(());
            };
            let Some(&i) = by_queue.get(&(topic.to_string(), qid)) else {
                return Ok(());
            };
            let t = &mut targets[i];
            if p < t.from_phys || qo < t.from_off || qo >= t.to_off {
                return Ok(());
            }
            let tag = match RecordView::parse(b) {
                Ok(r) => tag_hash(r.tag()),
                Err(_) if qo == t.expect => 0,
                Err(_) => return Ok(()),
            };
            let entry = CqEntry {
                phys_offset: p,
                size: b.len() as u32,
                tag_hash: tag,
            };
            let wrote = if at_open {
                let changed = t.cq.raw(qo) != Some(entry);
                t.cq.put(qo, entry)?;
                changed
            } else {
                t.cq.rewrite(qo, entry)
            };
            t.rewritten += u64::from(wrote);
            t.expect = qo + 1;
            t.end = t.end.max(qo + 1);
            Ok(())
        })
    }

    /// Calls `f(pos, record bytes)` for every record in `from..to` whose header is plausible
    /// (CRC not checked). Where no record starts where one should (damage), logs an ERROR,
    /// counts it, and continues at the next position holding a record whose header says it
    /// was written there and whose CRC holds (or at the next segment).
    fn walk_log(
        &self,
        from: u64,
        to: u64,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut pos = from.max(self.log.min_offset());
        while pos < to {
            match self.log.step(pos, false) {
                Step::Record { pos: p, len, .. } => {
                    if let Some((seg, at)) = self.log_slice(p, len) {
                        // SAFETY: below `written`, as `log_slice` checks (see above).
                        f(p, unsafe { seg.slice(at, len) })?;
                    }
                    pos = p + len as u64;
                }
                Step::NextSegment(next) => pos = next,
                Step::End { pos: p, reason } => {
                    let next = self.resync(p + 1, to);
                    tracing::error!(
                        file = %self.log.path_of(p).display(),
                        offset = p % self.log.segment_size(),
                        %reason,
                        skipped_bytes = next - p,
                        "commit log damaged below the checkpoint: no record where one \
                         should start; continuing at the next intact record"
                    );
                    self.damaged_spans.fetch_add(1, Ordering::Relaxed);
                    pos = next;
                }
            }
        }
        Ok(())
    }

    /// The first position in `from..` (within its segment, below `to`) where an intact record
    /// starts: magic, length, its own position in the header, and CRC. Else the segment end.
    fn resync(&self, from: u64, to: u64) -> u64 {
        let size = self.log.segment_size();
        let seg_end = from - from % size + size;
        let limit = seg_end.min(to).min(self.log.written());
        let segs = self.log.segments();
        let Some(first) = segs.first().map(|s| s.base()) else {
            return to;
        };
        let Some(seg) = from
            .checked_sub(first)
            .and_then(|d| segs.get((d / size) as usize))
        else {
            return seg_end.min(to).max(from);
        };
        // SAFETY: only `..limit` of the segment, and `limit <= written` (Acquire): published
        // bytes the append thread never writes again (it writes past `written` only).
        let bytes = unsafe { seg.slice(0, limit.saturating_sub(seg.base()) as usize) };
        let mut p = from;
        while p + MIN_RECORD_SIZE as u64 <= limit {
            let o = (p - seg.base()) as usize;
            if get_u32(bytes, o + OFF_MAGIC) == RECORD_MAGIC {
                let len = get_u32(bytes, o + OFF_TOTAL_LEN) as usize;
                if len >= MIN_RECORD_SIZE
                    && p + len as u64 <= limit
                    && get_u64(bytes, o + OFF_PHYS_OFFSET) == p
                    && RecordView::parse(&bytes[o..o + len]).is_ok()
                {
                    return p;
                }
            }
            p += 1;
        }
        seg_end.min(to).max(from)
    }

    /// The store timestamp of entry `off`'s record for a time search. A damaged entry is
    /// repaired first; an unreadable record counts as stored before `target` (the search then
    /// lands past it: it cannot be read anyway).
    pub(super) fn entry_timestamp(
        &self,
        cq: &Arc<ConsumeQueue>,
        off: u64,
        e: CqEntry,
        target: i64,
    ) -> Result<i64, StoreError> {
        let header = |e: &CqEntry| {
            self.entry_points_home(cq, off, e)
                .then(|| self.log.store_timestamp(e.phys_offset).ok())
                .flatten()
        };
        if let Some(ts) = header(&e) {
            return Ok(ts);
        }
        if e.phys_offset < self.log.min_offset() && e.size != 0 {
            return Ok(target.saturating_sub(1)); // deleted by retention meanwhile
        }
        self.repair_around(cq, off, "entry does not point at its record (time search)")?;
        Ok(cq
            .raw(off)
            .and_then(|e| header(&e))
            .unwrap_or(target.saturating_sub(1)))
    }

    /// Re-dispatch at open found no record at `pos` (below `end`): report it and return where
    /// the next intact record starts.
    pub(super) fn dispatch_skip(&self, pos: u64, end: u64, reason: &str) -> u64 {
        let next = self.resync(pos + 1, end);
        tracing::error!(
            file = %self.log.path_of(pos).display(),
            offset = pos % self.log.segment_size(),
            %reason,
            skipped_bytes = next - pos,
            "commit log damaged below the checkpoint: no record where one should start; \
             re-dispatch continues at the next intact record"
        );
        self.damaged_spans.fetch_add(1, Ordering::Relaxed);
        next
    }

    /// True if the record at `pos..pos+len` parses (sections; no CRC).
    pub(super) fn log_record_parses(&self, pos: u64, len: usize) -> bool {
        self.log.with_record(pos, len, false, |_| ()).is_ok()
    }

    /// Re-dispatch at open could not parse the record at `pos`: reports it, and if its header
    /// still names an existing queue, its own position and exactly that queue's next offset,
    /// writes its entry (tag hash 0), so reads report it and its queue offset is never reused.
    /// `touched` is the dispatcher's list of queues and their new ends.
    pub(super) fn dispatch_damaged_record(
        &self,
        pos: u64,
        len: usize,
        touched: &mut Vec<(Arc<ConsumeQueue>, u64)>,
    ) -> Result<(), StoreError> {
        tracing::error!(
            file = %self.log.path_of(pos).display(),
            offset = pos % self.log.segment_size(),
            "commit-log record below the checkpoint cannot be parsed; not dispatched"
        );
        self.damaged_spans.fetch_add(1, Ordering::Relaxed);
        let Some((seg, at)) = self.log_slice(pos, len) else {
            return Ok(());
        };
        // SAFETY: below `written`, as `log_slice` checks.
        let Some((topic, qid, qo, phys)) = identity(unsafe { seg.slice(at, len) }) else {
            return Ok(());
        };
        let Some(cq) = std::str::from_utf8(topic)
            .ok()
            .and_then(|t| self.queue(t, qid))
        else {
            return Ok(());
        };
        let t = touched.iter().position(|(c, _)| Arc::ptr_eq(c, &cq));
        let next = t.map_or(cq.max(), |i| touched[i].1.max(cq.max()));
        if phys != pos || qo != next {
            return Ok(());
        }
        let entry = CqEntry {
            phys_offset: pos,
            size: len as u32,
            tag_hash: 0,
        };
        cq.put(qo, entry)?;
        match t {
            Some(i) => touched[i].1 = qo + 1,
            None => touched.push((cq, qo + 1)),
        }
        Ok(())
    }

    /// Reports the record behind entry `off` of `cq` as unreadable: an ERROR and the counter,
    /// once per entry.
    pub(super) fn report_unreadable(&self, cq: &ConsumeQueue, off: u64, e: &CqEntry, reason: &str) {
        if !cq.mark_lost(off) {
            return;
        }
        self.unreadable_records.fetch_add(1, Ordering::Relaxed);
        let file = if e.size == 0 {
            cq.location(off).0
        } else {
            self.log.path_of(e.phys_offset)
        };
        tracing::error!(
            topic = cq.topic(),
            queue = cq.queue_id(),
            queue_offset = off,
            file = %file.display(),
            offset = e.phys_offset % self.log.segment_size(),
            %reason,
            "message cannot be read (damaged below the checkpoint); consumers skip it"
        );
    }

    /// Recovery: checks the end `recover` found for each queue against the log (the entry
    /// before it must point home; no entry soon after it may point home below `valid`). Queues
    /// where it does not hold are rebuilt from the log from their last good entry up to
    /// `valid`, in one walk, so no acknowledged entry is dropped and no queue offset is handed
    /// out twice. Returns how many queues were rebuilt.
    pub(super) fn repair_queue_ends(
        &self,
        queues: &[Arc<ConsumeQueue>],
        valid: u64,
    ) -> Result<usize, StoreError> {
        let mut targets = Vec::new();
        let log_min = self.log.min_offset();
        for cq in queues {
            let (min, lo) = (cq.min(), cq.max());
            // An entry whose record retention deleted cannot be checked: it counts as good
            // (trimming moves the queue's min past it after recovery).
            let good = |o: u64| {
                cq.raw(o).is_some_and(|e| {
                    e.size != 0
                        && e.phys_offset < valid
                        && (e.phys_offset < log_min || self.entry_points_home(cq, o, &e))
                })
            };
            let tail_ok = lo == min || good(lo - 1);
            let ahead_end = cq.files_end().min(lo + 1 + TAIL_LOOKAHEAD);
            let mut beyond = None;
            cq.scan_raw(lo + 1, ahead_end, |j, e| {
                // Past the end nearly every entry is empty: only the others cost a log read.
                if e.size != 0 && e.phys_offset < valid && good(j) {
                    beyond = Some(j);
                    return false;
                }
                true
            });
            if tail_ok && beyond.is_none() {
                continue;
            }
            let anchor = if tail_ok && lo > min {
                Some(lo - 1)
            } else {
                let mut dist = 1u64;
                let mut found = None;
                if lo > min {
                    loop {
                        let c = lo.saturating_sub(dist).max(min);
                        if good(c) {
                            found = Some(c);
                            break;
                        }
                        if c == min {
                            break;
                        }
                        dist = dist.saturating_mul(2);
                    }
                }
                found
            };
            let (from_off, from_phys) = match anchor.and_then(|o| cq.raw(o).map(|e| (o, e))) {
                Some((o, e)) => (o + 1, e.phys_offset + e.size as u64),
                None => (min, self.log.min_offset()),
            };
            let (file, at) = cq.location(lo);
            tracing::error!(
                file = %file.display(),
                offset = at,
                topic = cq.topic(),
                queue = cq.queue_id(),
                recovered_end = lo,
                proof = ?beyond,
                "consume queue damaged near its end; rebuilding it from the commit log"
            );
            targets.push(Target {
                cq: cq.clone(),
                from_off,
                to_off: u64::MAX,
                from_phys,
                expect: from_off,
                end: from_off,
                rewritten: 0,
            });
        }
        if targets.is_empty() {
            return Ok(0);
        }
        let from = targets.iter().map(|t| t.from_phys).min().unwrap_or(valid);
        self.rebuild_entries(&mut targets, from, valid, true)?;
        for t in &targets {
            t.cq.repaired(t.end, t.from_off);
            self.repaired_entries
                .fetch_add(t.rewritten, Ordering::Relaxed);
            tracing::warn!(
                topic = t.cq.topic(),
                queue = t.cq.queue_id(),
                end = t.end,
                rewritten = t.rewritten,
                "consume queue rebuilt from the commit log"
            );
        }
        Ok(targets.len())
    }

    /// Recovery: rebuilds the index file `name` (discarded as unreadable) from the records in
    /// `name..=upto` (the next file's name: a record's entries may straddle two files).
    pub(super) fn rebuild_index_file(&self, name: u64, upto: u64) -> Result<u64, StoreError> {
        let to = upto.saturating_add(1).min(self.log.written());
        // First count the entries: the records at both ends put some of their entries in the
        // neighbouring files too, so the rebuilt file may need more room than the original.
        let mut entries = 0u64;
        self.walk_log(name, to, |_, b| {
            if let Ok(r) = RecordView::parse(b) {
                entries += 1 + r.keys().count() as u64;
            }
            Ok(())
        })?;
        let mut rebuilt = self.index.rebuild(name, entries);
        let mut n = 0u64;
        self.walk_log(name, to, |p, b| {
            let Ok(r) = RecordView::parse(b) else {
                return Ok(());
            };
            let ts = r.store_timestamp();
            rebuilt.put(super::id_hash(r.msg_id()), p, ts)?;
            for key in r.keys() {
                rebuilt.put(super::key_hash(r.topic(), key), p, ts)?;
            }
            n += 1;
            Ok(())
        })?;
        rebuilt.finish()?;
        Ok(n)
    }
}
