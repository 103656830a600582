//! Replication primitives: read whole records of the commit log as they are stored, and
//! append records read from another store's log at the same offsets (a slave mirrors its
//! master byte for byte, so commit-log offsets, queue offsets and consume queues agree).
//! docs/STORAGE.md §11.

use std::collections::HashMap;

use bytes::Bytes;
use quiver_protocol::record::{self, RecordView, FLAG_BATCH_CONT};

use super::commitlog::Step;
use super::{Appended, PendingAppend, PutResult, Store, StoreError, Writer};

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
