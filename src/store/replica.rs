//! Replication primitives: read whole records of the commit log as they are stored, and
//! append records read from another store's log at the same offsets (a slave mirrors its
//! master byte for byte, so commit-log offsets, queue offsets and consume queues agree).
//! docs/STORAGE.md §11.

use std::collections::HashMap;

use bytes::Bytes;
use quiver_protocol::record::{self, RecordView, FLAG_BATCH_CONT};

use super::commitlog::Step;
use super::{Appended, EpochEntry, PendingAppend, PutResult, Store, StoreError, Writer};

/// A run of whole commit-log records, as stored, for a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// Commit-log offset of the first byte.
    pub start: u64,
    /// The records, back to back (whole atomic batches).
    pub bytes: Bytes,
    /// Where the log continues after them: `start + bytes.len()`, or the next segment's
    /// base when the source's segment ended there (the replica closes its segment too).
    pub next: u64,
}

impl LogChunk {
    /// True when the chunk carries no record and does not close a segment.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.next == self.start
    }
}

impl Store {
    /// Makes the store a replica (`true`: [`Store::append`] is refused with
    /// [`StoreError::Replica`], only [`Store::append_replica`] writes) or a master again.
    /// Taking the writer lock, it waits for an append in progress: once it returns, no
    /// `append` writes until it is turned off.
    pub fn set_replica(&self, on: bool) {
        let _w = self.inner.writer.lock().expect("writer lock");
        self.inner
            .replica
            .store(on, std::sync::atomic::Ordering::Release);
    }

    /// True while the store is a replica.
    pub fn is_replica(&self) -> bool {
        self.inner
            .replica
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The end of the commit log: where a replica of this store continues, and the offset a
    /// replica reports when it has everything.
    pub fn log_end(&self) -> u64 {
        self.inner.log.written()
    }

    /// Reads whole records from `from` (a record boundary of this log: 0, a previous chunk's
    /// `next`, or [`Store::log_end`]), about `max_bytes` of them (at least one atomic batch,
    /// never part of one), stopping at a segment's end. Only records already readable by
    /// consumers are returned in sync flush mode (durable), all written ones in async mode.
    /// An empty chunk means the replica has everything.
    pub fn read_log(&self, from: u64, max_bytes: usize) -> Result<LogChunk, StoreError> {
        let log = &self.inner.log;
        let min = log.min_offset();
        // What a replica may see: in sync mode only what is durable (and dispatched).
        let limit = match self.inner.cfg.flush_mode {
            super::FlushMode::Sync => log.flushed(),
            super::FlushMode::Async => log.written(),
        };
        if from < min || from > log.written() {
            return Err(StoreError::OffsetOutOfRange {
                offset: from,
                min,
                max: log.written(),
            });
        }
        let mut pos = from;
        let mut boundary = from;
        let mut next = from;
        loop {
            match log.step(pos, true) {
                Step::Record { len, flags, .. } => {
                    let end = pos + len as u64;
                    if end > limit {
                        break;
                    }
                    // A batch starts here: stop before it once the chunk is big enough.
                    if pos == boundary && boundary - from >= max_bytes as u64 {
                        break;
                    }
                    pos = end;
                    if flags & FLAG_BATCH_CONT == 0 {
                        boundary = pos;
                        next = pos;
                    }
                }
                Step::NextSegment(base) => {
                    // Batches never cross segments: the segment ends at a batch boundary.
                    if pos == boundary && base <= limit {
                        next = base;
                    }
                    break;
                }
                Step::End { pos: at, reason } => {
                    if at < limit {
                        return Err(StoreError::Corrupt {
                            file: log.path_of(at),
                            offset: at,
                            reason: format!("reading the log for a replica: {reason}"),
                        });
                    }
                    break;
                }
            }
        }
        let bytes = if boundary > from {
            log.read_span(from, (boundary - from) as usize)?
        } else {
            Bytes::new()
        };
        Ok(LogChunk {
            start: from,
            bytes,
            next,
        })
    }

    /// Appends a chunk read from another store's log ([`Store::read_log`]) at the same
    /// offsets: it must start where this log ends, every record must be valid (CRC), sit at
    /// its own `phys_offset`, and continue its queue's offsets; otherwise nothing is appended
    /// and the answer is [`StoreError::Diverged`]. Durability and dispatch follow the flush
    /// mode, as for [`Store::append`].
    pub fn append_replica(&self, chunk: &LogChunk) -> Result<PendingAppend, StoreError> {
        let inner = &self.inner;
        inner.check_writable()?;
        let mut w = inner.writer.lock().expect("writer lock");
        inner.check_writable()?;
        let at = inner.log.written();
        if chunk.start != at {
            return Err(StoreError::Diverged(format!(
                "the chunk starts at {} but this log ends at {at}",
                chunk.start
            )));
        }
        let end = chunk.start + chunk.bytes.len() as u64;
        let seg = inner.log.segment_size();
        let seg_end = at - at % seg + seg;
        if end > seg_end {
            return Err(StoreError::Diverged(format!(
                "records {}..{end} cross the segment boundary at {seg_end}",
                chunk.start
            )));
        }
        let roll = chunk.next != end;
        if roll && chunk.next != seg_end {
            return Err(StoreError::Diverged(format!(
                "the chunk continues at {} after ending at {end}; only the next segment at \
                 {seg_end} may follow",
                chunk.next
            )));
        }
        let (results, last_ts, offsets) = validate(&chunk.bytes, chunk.start, &w)?;
        if let Some(last) = results.last() {
            let off = chunk.bytes.len() - last.size as usize;
            if record::get_u32(&chunk.bytes[off..], record::OFF_FLAGS) & FLAG_BATCH_CONT != 0 {
                return Err(StoreError::Diverged(
                    "the chunk ends inside an atomic batch".into(),
                ));
            }
        }
        let Writer { cursor, .. } = &mut *w;
        inner.log.append_raw(cursor, &chunk.bytes, roll)?;
        w.last_ts = w.last_ts.max(last_ts);
        for ((topic, queue), next) in offsets {
            w.next_offsets.entry(topic).or_default().insert(queue, next);
        }
        drop(w);
        let appended = Appended {
            results,
            end: chunk.next,
            store_timestamp: last_ts,
        };
        self.finish_append(appended)
    }
}

impl Store {
    /// The epoch file's entries (docs/STORAGE.md §11.2), oldest first.
    pub fn epochs(&self) -> Vec<EpochEntry> {
        self.inner
            .epochs
            .lock()
            .expect("epochs lock")
            .entries()
            .to_vec()
    }

    /// The newest epoch this log holds records of (or was begun in); 0 when none.
    pub fn last_epoch(&self) -> u64 {
        self.inner
            .epochs
            .lock()
            .expect("epochs lock")
            .entries()
            .last()
            .map_or(0, |e| e.epoch)
    }

    /// Where `epoch`'s part of this log ends ([`super::epoch_end`]): what a master answers a
    /// slave whose newest epoch is `epoch`.
    pub fn epoch_end(&self, epoch: u64) -> (u64, u64) {
        let ep = self.inner.epochs.lock().expect("epochs lock");
        super::epoch_end(ep.entries(), epoch, self.inner.log.written())
    }

    /// A master of `epoch` records that its records from the log's end on are that epoch's,
    /// unless the newest entry is `epoch` already. Call it before the store takes writes as
    /// master. Blocks on an fsync. Returns whether an entry was added.
    pub fn begin_epoch(&self, epoch: u64) -> Result<bool, StoreError> {
        let _w = self.inner.writer.lock().expect("writer lock");
        let mut ep = self.inner.epochs.lock().expect("epochs lock");
        if let Some(last) = ep.entries().last() {
            if last.epoch >= epoch {
                if last.epoch > epoch {
                    tracing::warn!(
                        epoch,
                        newest = last.epoch,
                        "master in an epoch older than its log's newest; no entry added"
                    );
                }
                return Ok(false);
            }
        }
        let mut entries = ep.entries().to_vec();
        entries.push(EpochEntry {
            epoch,
            start: self.inner.log.written(),
        });
        ep.set(entries)?;
        Ok(true)
    }

    /// A replica takes its master's epoch entries that lie within its log (start at or below
    /// its end). Blocks on an fsync when they changed.
    pub fn adopt_epochs(&self, master: &[EpochEntry]) -> Result<(), StoreError> {
        let end = self.inner.log.written();
        let mut ep = self.inner.epochs.lock().expect("epochs lock");
        let mine: Vec<EpochEntry> = master.iter().copied().filter(|e| e.start <= end).collect();
        ep.set(mine)
    }

    /// How many records lie between `from` (a record boundary, such as a slave's
    /// acknowledged offset) and the log's end, counting at most `cap`: `None` beyond it or
    /// when `from` is not a position of this log.
    pub fn records_after(&self, from: u64, cap: u64) -> Option<u64> {
        let log = &self.inner.log;
        let end = log.written();
        if from < log.min_offset() || from > end {
            return None;
        }
        let (mut pos, mut n) = (from, 0u64);
        while pos < end {
            match log.step(pos, false) {
                Step::Record { len, .. } => {
                    n += 1;
                    if n > cap {
                        return None;
                    }
                    pos += len as u64;
                }
                Step::NextSegment(next) => pos = next,
                Step::End { .. } => return None,
            }
        }
        Some(n)
    }

    /// A replica's side of the epoch check (docs/STORAGE.md §11.2): its master said that
    /// the part of its history for this replica's newest epoch is epoch `master_epoch`'s and
    /// ends at `master_end` ([`Store::epoch_end`] on the master). When this log agrees (same
    /// newest epoch, not longer) nothing happens and the answer is `None`; otherwise the log
    /// is cut back to where the histories part (the smaller of `master_end` and this log's
    /// own end of `master_epoch`) and the answer is how many bytes were cut (maybe 0, when
    /// only epoch entries went). Repeat with the next fetch until it answers `None`.
    pub fn follow_history(
        &self,
        master_epoch: u64,
        master_end: u64,
    ) -> Result<Option<u64>, StoreError> {
        let (mine, own_end) = {
            let ep = self.inner.epochs.lock().expect("epochs lock");
            let end = self.inner.log.written();
            let last = ep.entries().last().map_or(0, |e| e.epoch);
            if last == master_epoch && end <= master_end {
                return Ok(None);
            }
            (end, super::epoch_end(ep.entries(), master_epoch, end).1)
        };
        let to = master_end.min(own_end).min(mine);
        self.truncate_replica(to, master_epoch).map(Some)
    }

    /// A replica cuts its log back to `to` (a record boundary): the records from `to` on,
    /// their consume-queue entries and the epoch entries newer than `keep_epoch` or starting
    /// past `to` are gone, and appends continue at `to`. A returning old master does it to
    /// drop what the new master never had (docs/STORAGE.md §11.2). Reads in flight keep the
    /// bytes they hold (`CommitLog::cut_live`). Returns how many bytes were cut. Blocks on
    /// fsyncs and on a copy of the cut segment's bytes below `to`.
    pub fn truncate_replica(&self, to: u64, keep_epoch: u64) -> Result<u64, StoreError> {
        let inner = &self.inner;
        if !self.is_replica() {
            return Err(StoreError::Diverged(
                "only a replica's log may be cut back".into(),
            ));
        }
        let _quiet = inner.quiesce.lock().expect("quiesce lock");
        let mut w = inner.writer.lock().expect("writer lock");
        inner.check_writable()?;
        let end = inner.log.written();
        let min = inner.log.min_offset();
        let to = to.min(end);
        if to < min {
            return Err(StoreError::Diverged(format!(
                "the log must be cut back to offset {to} but it starts at {min} (retention \
                 deleted the rest): move the data directory away so the broker rejoins empty"
            )));
        }
        if to < end {
            match inner.log.step(to, true) {
                Step::Record { .. } | Step::NextSegment(_) => {}
                Step::End { reason, .. } => {
                    return Err(StoreError::Diverged(format!(
                        "no record starts at offset {to}, where the log should be cut: {reason}"
                    )))
                }
            }
            let queues: Vec<_> = inner
                .queues
                .read()
                .expect("queues lock")
                .values()
                .flat_map(|m| m.values().cloned())
                .collect();
            let mut dispatched = inner.dispatched.lock().expect("dispatch lock");
            // Queues first: no read that starts from now on finds an entry past the cut.
            for cq in &queues {
                cq.flush()?;
                let max = cq.recover(to);
                cq.erase_after(max)?;
                w.next_offsets
                    .entry(cq.topic().to_string())
                    .or_default()
                    .insert(cq.queue_id(), max);
            }
            *dispatched = (*dispatched).min(to);
            drop(dispatched);
            w.cursor = inner.log.cut_live(to)?;
            // Nobody waits for records past the cut (a replica's appends are sequential),
            // but should anyone, it hears that they are gone.
            let gone: Vec<_> = {
                let mut st = inner.flush.lock().expect("flush lock");
                let (gone, keep) = std::mem::take(&mut st.waiters)
                    .into_iter()
                    .partition(|(e, _)| *e > to);
                st.waiters = keep;
                gone
            };
            for (_, done) in gone {
                done(Err(StoreError::Diverged(format!(
                    "the log was cut back to {to}"
                ))));
            }
            tracing::warn!(from = end, to, cut = end - to, "replica log cut back");
        }
        {
            let mut ep = inner.epochs.lock().expect("epochs lock");
            let keep: Vec<EpochEntry> = ep
                .entries()
                .iter()
                .copied()
                .filter(|e| e.epoch <= keep_epoch && e.start <= to)
                .collect();
            ep.set(keep)?;
        }
        drop(w);
        inner.checkpoint()?;
        Ok(end - to)
    }
}

type Validated = (Vec<PutResult>, i64, HashMap<(String, u32), u64>);

/// Checks every record of a chunk against the log it continues; what appending it means
/// for the queues' next offsets.
fn validate(bytes: &[u8], start: u64, w: &Writer) -> Result<Validated, StoreError> {
    let mut results = Vec::new();
    let mut next: HashMap<(String, u32), u64> = HashMap::new();
    let mut last_ts = i64::MIN;
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < record::HEADER_SIZE {
            return Err(StoreError::Diverged(format!(
                "{} stray bytes at {}",
                rest.len(),
                start + at as u64
            )));
        }
        let len = record::get_u32(rest, record::OFF_TOTAL_LEN) as usize;
        if len < record::MIN_RECORD_SIZE || len > rest.len() {
            return Err(StoreError::Diverged(format!(
                "a record length of {len} at {}",
                start + at as u64
            )));
        }
        let pos = start + at as u64;
        let view = RecordView::parse(&rest[..len])
            .map_err(|reason| StoreError::Diverged(format!("record at {pos}: {reason}")))?;
        if view.phys_offset() != pos {
            return Err(StoreError::Diverged(format!(
                "the record at {pos} says it belongs at {}",
                view.phys_offset()
            )));
        }
        let topic = view.topic();
        // Topic names become directory names.
        quiver_protocol::names::check_name("topic", topic)
            .map_err(|e| StoreError::Diverged(format!("record at {pos}: {e}")))?;
        let key = (topic.to_string(), view.queue_id());
        let expected = match next.get(&key) {
            Some(n) => *n,
            None => w
                .next_offsets
                .get(topic)
                .and_then(|m| m.get(&view.queue_id()))
                .copied()
                .unwrap_or(0),
        };
        if view.queue_offset() != expected {
            return Err(StoreError::Diverged(format!(
                "the record at {pos} is entry {} of {topic}/{} but this log expects entry {expected}",
                view.queue_offset(),
                view.queue_id()
            )));
        }
        next.insert(key, expected + 1);
        last_ts = last_ts.max(view.store_timestamp());
        results.push(PutResult {
            msg_id: view.msg_id(),
            queue_offset: view.queue_offset(),
            phys_offset: pos,
            size: len as u32,
        });
        at += len;
    }
    Ok((results, last_ts, next))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::tests::{append, read_all, Msg};
    use super::super::{FlushMode, StoreConfig};
    use super::*;

    /// Copies everything `master` has that `slave` lacks, `max` bytes per chunk; the chunks.
    fn catch_up(master: &Store, slave: &Store, max: usize) -> usize {
        let mut chunks = 0;
        loop {
            let chunk = master.read_log(slave.log_end(), max).unwrap();
            if chunk.is_empty() {
                return chunks;
            }
            slave.append_replica(&chunk).unwrap().wait().unwrap();
            chunks += 1;
        }
    }

    fn whole_log(store: &Store) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let c = store.read_log(at, usize::MAX).unwrap();
            if c.is_empty() {
                return out;
            }
            out.extend_from_slice(&c.bytes);
            out.push(0xFF); // segment ends are part of the comparison
            at = c.next;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
        /// A replica fed the master's chunks, in any chunk size, across segment rolls, holds
        /// the same log, the same queues and the same messages, also after it is reopened
        /// midway.
        #[test]
        fn a_replica_mirrors_its_master(
            batches in proptest::collection::vec(
                (0u32..3, proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..8)),
                1..30),
            max in 1usize..40_000,
            reopen_at in 0usize..30,
            sync in any::<bool>(),
        ) {
            let (md, sd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let mut mcfg = StoreConfig::small_for_tests(md.path());
            mcfg.flush_mode = if sync { FlushMode::Sync } else { FlushMode::Async };
            let mut scfg = StoreConfig::small_for_tests(sd.path());
            scfg.flush_mode = mcfg.flush_mode;
            let master = Store::open(mcfg).unwrap();
            let mut slave = Store::open(scfg.clone()).unwrap();
            let mut id = 0u128;
            for (i, (queue, bodies)) in batches.iter().enumerate() {
                let msgs: Vec<Msg> = bodies.iter().map(|b| { id += 1; Msg::new(id, b) }).collect();
                append(&master, "T", *queue, &msgs).unwrap();
                if i % 3 == 0 {
                    catch_up(&master, &slave, max);
                }
                if i == reopen_at {
                    slave.close().unwrap();
                    drop(slave);
                    slave = Store::open(scfg.clone()).unwrap();
                }
            }
            catch_up(&master, &slave, max);
            prop_assert_eq!(slave.log_end(), master.log_end());
            prop_assert_eq!(whole_log(&slave), whole_log(&master));
            for q in 0..3 {
                prop_assert_eq!(slave.queue_bounds("T", q), master.queue_bounds("T", q));
                prop_assert_eq!(read_all(&slave, "T", q), read_all(&master, "T", q));
            }
            // The replica continues the queues where the master left them, as a new master.
            let a = append(&slave, "T", 0, &[Msg::new(u128::MAX, b"after")]).unwrap();
            prop_assert_eq!(a.results[0].queue_offset, master.queue_bounds("T", 0).1);
        }
    }

    /// What a slave does (cluster/member.rs) at the store level: agree on history with the
    /// master, then copy and adopt its epoch entries.
    fn follow(master: &Store, slave: &Store, max: usize) -> u64 {
        let mut cut = 0;
        loop {
            let (e, end) = master.epoch_end(slave.last_epoch());
            match slave.follow_history(e, end).unwrap() {
                Some(n) => cut += n,
                None => break,
            }
        }
        loop {
            let chunk = master.read_log(slave.log_end(), max).unwrap();
            if !chunk.is_empty() {
                slave.append_replica(&chunk).unwrap().wait().unwrap();
            }
            slave.adopt_epochs(&master.epochs()).unwrap();
            if chunk.is_empty() {
                break;
            }
        }
        cut
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
        /// Node A is master in epoch 1; B copies part of its log and becomes master in epoch
        /// 2 (a failover) and writes; A, cut off, goes on writing in epoch 1, then returns as
        /// B's slave: it cuts exactly its own tail, then mirrors B (log, queues, epochs), also
        /// after a reopen; and the new master C of epoch 3 (from B's history) brings B back
        /// the same way.
        #[test]
        fn a_returning_old_master_cuts_what_the_new_master_never_had(
            first in proptest::collection::vec((0u32..3, 1usize..6), 1..12),
            copied in 0usize..12,
            theirs in proptest::collection::vec((0u32..3, 1usize..6), 0..10),
            ours in proptest::collection::vec((0u32..3, 1usize..6), 0..10),
            max in 1usize..20_000,
        ) {
            let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
            let open = |i: usize| Store::open(StoreConfig::small_for_tests(dirs[i].path())).unwrap();
            let (a, b, c) = (open(0), open(1), open(2));
            let mut id = 0u128;
            let mut write = |s: &Store, batches: &[(u32, usize)]| {
                for (q, n) in batches {
                    let msgs: Vec<Msg> = (0..*n).map(|_| { id += 1; Msg::new(id, &[id as u8; 700]) }).collect();
                    append(s, "T", *q, &msgs).unwrap();
                }
            };
            a.begin_epoch(1).unwrap();
            b.set_replica(true);
            c.set_replica(true);
            write(&a, &first[..copied.min(first.len())]);
            follow(&a, &b, max);
            follow(&a, &c, max);
            write(&a, &first[copied.min(first.len())..]);
            // Failover: B is master in epoch 2; A writes on in epoch 1 (partitioned).
            b.set_replica(false);
            b.begin_epoch(2).unwrap();
            let b_start = b.log_end();
            write(&b, &theirs);
            write(&a, &ours);
            a.set_replica(true);
            let a_end = a.log_end();
            let cut = follow(&b, &a, max);
            // Exactly what A wrote after B's copy ended.
            prop_assert_eq!(cut, a_end - b_start);
            prop_assert_eq!(whole_log(&a), whole_log(&b));
            prop_assert_eq!(a.epochs(), b.epochs());
            prop_assert_eq!(a.epochs().last().copied(), Some(EpochEntry { epoch: 2, start: b_start }));
            for q in 0..3 {
                prop_assert_eq!(a.queue_bounds("T", q), b.queue_bounds("T", q));
                prop_assert_eq!(read_all(&a, "T", q), read_all(&b, "T", q));
            }
            a.close().unwrap();
            drop(a);
            let a = open(0);
            prop_assert_eq!(whole_log(&a), whole_log(&b));
            prop_assert_eq!(a.epochs(), b.epochs());
            // C (a slave of epoch 1 that missed epoch 2) becomes master in epoch 3: B cuts
            // its epoch-2 records back to where C's history parts from it.
            c.set_replica(false);
            c.begin_epoch(3).unwrap();
            write(&c, &theirs);
            b.set_replica(true);
            follow(&c, &b, max);
            prop_assert_eq!(whole_log(&b), whole_log(&c));
            prop_assert_eq!(b.epochs(), c.epochs());
            // What a master counts as a slave's lag in messages: the records after a position.
            let total: usize = (0..3).map(|q| read_all(&c, "T", q).len()).sum();
            prop_assert_eq!(c.records_after(0, u64::MAX), Some(total as u64));
            prop_assert_eq!(c.records_after(c.log_end(), 10), Some(0));
            if total > 1 {
                prop_assert_eq!(c.records_after(0, total as u64 - 1), None);
            }
            for q in 0..3 {
                prop_assert_eq!(read_all(&b, "T", q), read_all(&c, "T", q));
            }
            // The cut replica takes writes as a master again, continuing its queues.
            b.set_replica(false);
            let next = append(&b, "T", 0, &[Msg::new(u128::MAX, b"after")]).unwrap();
            prop_assert_eq!(next.results[0].queue_offset, c.queue_bounds("T", 0).1);
        }
    }

    #[test]
    fn chunks_that_do_not_continue_the_log_are_refused_and_change_nothing() {
        let (md, sd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let master = Store::open(StoreConfig::small_for_tests(md.path())).unwrap();
        let slave = Store::open(StoreConfig::small_for_tests(sd.path())).unwrap();
        for i in 0..4u128 {
            append(&master, "T", 0, &[Msg::new(i, b"body")]).unwrap();
        }
        let all = master.read_log(0, usize::MAX).unwrap();
        let first = master.read_log(0, 1).unwrap();
        assert!(
            first.bytes.len() < all.bytes.len(),
            "one batch per chunk at most max"
        );
        // Not where the replica's log ends.
        let later = master.read_log(first.next, 1).unwrap();
        assert!(matches!(
            slave.append_replica(&later),
            Err(StoreError::Diverged(_))
        ));
        // A flipped byte fails the record's CRC.
        let mut bad = all.bytes.to_vec();
        bad[100] ^= 1;
        let damaged = LogChunk {
            bytes: Bytes::from(bad),
            ..all.clone()
        };
        assert!(matches!(
            slave.append_replica(&damaged),
            Err(StoreError::Diverged(_))
        ));
        assert_eq!(slave.log_end(), 0);
        // Same position, another history: the replica took a write of its own (to queue 1,
        // the same size as the master's first record), so the master's next record (entry 1
        // of queue 0) does not continue the replica's queue 0.
        append(&slave, "T", 1, &[Msg::new(0, b"body")]).unwrap();
        assert_eq!(slave.log_end(), first.next);
        let next = master.read_log(first.next, 1).unwrap();
        assert!(matches!(
            slave.append_replica(&next),
            Err(StoreError::Diverged(m)) if m.contains("expects entry 0")
        ));
        assert_eq!(slave.log_end(), first.next);
        assert_eq!(read_all(&slave, "T", 0).len(), 0);
        assert_eq!(read_all(&slave, "T", 1).len(), 1);
    }

    #[test]
    fn a_chunk_that_splits_a_batch_is_refused() {
        let (md, sd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let master = Store::open(StoreConfig::small_for_tests(md.path())).unwrap();
        let slave = Store::open(StoreConfig::small_for_tests(sd.path())).unwrap();
        let msgs: Vec<Msg> = (0..3u128).map(|i| Msg::new(i, b"batch")).collect();
        append(&master, "T", 0, &msgs).unwrap();
        let all = master.read_log(0, 1).unwrap();
        // read_log never splits it, even with max 1.
        assert_eq!(all.next, master.log_end());
        let first_len = record::get_u32(&all.bytes, 0) as usize;
        let cut = LogChunk {
            start: 0,
            bytes: all.bytes.slice(..first_len),
            next: first_len as u64,
        };
        assert!(matches!(
            slave.append_replica(&cut),
            Err(StoreError::Diverged(m)) if m.contains("inside an atomic batch")
        ));
        assert_eq!(slave.log_end(), 0);
    }
}
