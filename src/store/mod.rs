//! The message store: commit log + consume queues + key index, flush (async or group-commit
//! sync), checkpoint and crash recovery, retention. Synchronous I/O only: no tokio, no network.
//! The broker calls [`Store::append`] and waits for durability through
//! [`PendingAppend::on_durable`], which runs on the store's flush thread (never an fsync on the
//! caller's thread).
//!
//! This file is the store's public face (types, append, reads, close). The rest follows
//! docs/STORAGE.md's sections, each testable alone: `recovery.rs` (open), `dispatch.rs`,
//! `flush.rs` (group commit, housekeeping, checkpoint), `retention.rs`, `damage.rs`, and
//! `durable.rs` (the durable small-file writer the whole crate uses).

mod checkpoint;
mod commitlog;
mod config;
mod consume_queue;
mod damage;
mod dispatch;
pub(crate) mod durable;
mod epochs;
mod error;
mod flush;
mod index;
mod mapped;
#[cfg(test)]
mod powerloss;
mod recovery;
mod replica;
mod retention;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use quiver_protocol::record;

use crate::clock::Clock;
use checkpoint::AbortMarker;
use commitlog::{CommitLog, Cursor};
use consume_queue::ConsumeQueue;
use flush::FlushState;
use index::Index;
use mapped::SpaceCheck;

pub use config::{DiskSpace, DiskSpaceSource, FlushMode, StoreConfig};
pub use consume_queue::{CqEntry, CQ_ENTRY_SIZE};
pub use epochs::{epoch_end, EpochEntry};
pub use error::{DiskFullCause, StoreError};
pub use index::{id_hash, key_hash};
pub use record::{tag_hash, NewMessage, RecordView, FLAG_BATCH_CONT, HEADER_SIZE};
pub use replica::LogChunk;

/// Where one appended message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutResult {
    /// The producer-assigned id.
    pub msg_id: u128,
    /// Position in its consume queue.
    pub queue_offset: u64,
    /// Position in the commit log (also an id that needs no index).
    pub phys_offset: u64,
    /// Record size in bytes.
    pub size: u32,
}

/// The result of one append call (one message or one atomic batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// One result per message, in order.
    pub results: Vec<PutResult>,
    /// Commit-log offset just past the batch.
    pub end: u64,
    /// Store timestamp given to every record of the batch.
    pub store_timestamp: i64,
}

/// An append that may still be waiting for its fsync (sync mode).
#[must_use = "an append is acknowledged only once its durability is known"]
pub struct PendingAppend {
    appended: Appended,
    wait_for: Option<Arc<Inner>>,
}

impl PendingAppend {
    /// The positions assigned (valid even before durability).
    pub fn appended(&self) -> &Appended {
        &self.appended
    }

    /// Calls `f` once the batch is durable (sync mode) or at once (async mode). In sync mode
    /// `f` runs on the store's flush thread: keep it short (e.g. send on a channel).
    pub fn on_durable(self, f: impl FnOnce(Result<Appended, StoreError>) + Send + 'static) {
        match self.wait_for {
            None => f(Ok(self.appended)),
            Some(inner) => {
                let appended = self.appended;
                let end = appended.end;
                inner.wait_durable(end, Box::new(move |r| f(r.map(|()| appended))));
            }
        }
    }

    /// Blocks the calling thread until the batch is durable (sync) or returns at once (async).
    pub fn wait(self) -> Result<Appended, StoreError> {
        if self.wait_for.is_none() {
            return Ok(self.appended);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.on_durable(move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }
}

/// One message read back through a consume queue.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Position in its consume queue.
    pub queue_offset: u64,
    /// Position in the commit log.
    pub phys_offset: u64,
    /// The record exactly as stored (see docs/STORAGE.md); shares the mapping, no copy.
    pub bytes: Bytes,
}

impl StoredMessage {
    /// A parsed view of the record.
    pub fn view(&self) -> RecordView<'_> {
        // The store checked the record when reading it (CRC if configured, sections always).
        RecordView::parse_unchecked_crc(&self.bytes).expect("store returns parsed records")
    }
}

/// Bounds of one read through a consume queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// At most this many messages.
    pub max_count: usize,
    /// Stop before exceeding this many bytes (the first message is always returned).
    pub max_bytes: usize,
    /// Examine at most this many entries (bounds the work of a selective filter).
    pub max_scan: usize,
}

impl ReadLimits {
    /// Limits from their three values.
    pub const fn new(max_count: usize, max_bytes: usize, max_scan: usize) -> Self {
        Self {
            max_count,
            max_bytes,
            max_scan,
        }
    }
}

/// Outcome of a read through a consume queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetStatus {
    /// At least one message returned.
    Found,
    /// Entries were scanned but none passed the filter; continue at `next_offset`.
    NoMatch,
    /// Nothing at or after the offset yet.
    NoNewMessages,
    /// The offset is below the first stored one; `next_offset` is the minimum.
    OffsetTooSmall,
    /// The offset is past the end; `next_offset` is the maximum.
    OffsetOverflow,
}

/// What a read returns.
#[derive(Debug, Clone)]
pub struct GetResult {
    /// What happened.
    pub status: GetStatus,
    /// Messages in queue order.
    pub messages: Vec<StoredMessage>,
    /// Where the next read should start.
    pub next_offset: u64,
    /// First readable offset of the queue.
    pub min_offset: u64,
    /// One past the last readable offset.
    pub max_offset: u64,
    /// Entries passed over because their message cannot be read (damaged below the
    /// checkpoint, see docs/STORAGE.md §10); `next_offset` is already past them.
    pub skipped: u64,
}

/// What the store found damaged and repaired since it was opened (docs/STORAGE.md §10).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DamageStats {
    /// Messages that cannot be read (each counted once, then skipped by reads).
    pub unreadable_records: u64,
    /// Consume-queue entries rewritten from the commit log.
    pub repaired_entries: u64,
    /// Places in the commit log where no record started where one should.
    pub damaged_log_spans: u64,
    /// Index files rebuilt from the commit log at open.
    pub rebuilt_index_files: u64,
}

/// Queues that lost messages no consumer group had consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostMessages {
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue_id: u32,
    /// How many unconsumed messages were deleted.
    pub count: u64,
}

/// What a retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Commit-log segments deleted, as (start, end) offsets.
    pub deleted_segments: Vec<(u64, u64)>,
    /// Unconsumed messages that were deleted, per queue.
    pub lost: Vec<LostMessages>,
}

/// What opening the store found and did.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// The previous run did not shut down cleanly.
    pub unclean: bool,
    /// Commit-log offset the scan started from.
    pub scanned_from: u64,
    /// Records validated by the scan.
    pub records_scanned: u64,
    /// Records re-dispatched into consume queues and the index.
    pub records_redispatched: u64,
    /// A torn or invalid tail was cut at this offset (bytes after it dropped).
    pub truncated_at: Option<(u64, String)>,
    /// Commit-log end after recovery.
    pub end: u64,
    /// How long recovery took.
    pub took: Duration,
}

/// Lowest offset any consumer group has committed for a queue (`None`: no group consumes it).
pub type ConsumerProgress = dyn Fn(&str, u32) -> Option<u64> + Send + Sync;
/// Called after new entries become readable: (topic, queue id, new max offset).
pub type ArrivalListener = dyn Fn(&str, u32, u64) + Send + Sync;
/// Called after each commit-log fsync of the flush thread: (its duration, appends it
/// acknowledged). Runs on the flush thread: keep it short.
pub type FlushObserver = dyn Fn(Duration, usize) + Send + Sync;

struct Writer {
    cursor: Cursor,
    /// Next queue offset per topic and queue id.
    next_offsets: HashMap<String, HashMap<u32, u64>>,
    /// Store timestamps never go backwards, so time lookups can binary-search.
    last_ts: i64,
}

struct Inner {
    cfg: StoreConfig,
    /// Where store timestamps and checkpoint times come from.
    clock: Clock,
    log: CommitLog,
    writer: Mutex<Writer>,
    /// Commit-log offset up to which consume queues and the index are built.
    dispatched: Mutex<u64>,
    queues: RwLock<HashMap<String, HashMap<u32, Arc<ConsumeQueue>>>>,
    index: Index,
    flush: Mutex<FlushState>,
    flush_cv: Condvar,
    /// Wakes the housekeeping thread (shutdown); separate so a flush request never wakes it
    /// instead of the flusher.
    housekeeping_cv: Condvar,
    poisoned: OnceLock<String>,
    /// Disk usage in basis points when above the high watermark, else 0.
    disk_full_bp: AtomicU64,
    /// Free-space check for consume-queue files (may use the headroom).
    derived_space: SpaceCheck,
    closed: AtomicBool,
    listener: RwLock<Option<Arc<ArrivalListener>>>,
    flush_observer: RwLock<Option<Arc<FlushObserver>>>,
    progress: RwLock<Option<Arc<ConsumerProgress>>>,
    lost_total: Mutex<HashMap<(String, u32), u64>>,
    /// Flushes done and appends they acknowledged (sync group-commit efficiency).
    flush_count: AtomicU64,
    flush_waiters: AtomicU64,
    flush_nanos: AtomicU64,
    /// Damage counters (see [`DamageStats`]).
    unreadable_records: AtomicU64,
    repaired_entries: AtomicU64,
    damaged_spans: AtomicU64,
    rebuilt_index_files: AtomicU64,
    /// Set while `open` re-dispatches: damaged records are passed over instead of failing.
    recovering: AtomicBool,
    /// A replica: `append` is refused, only `append_replica` writes (replica.rs).
    replica: AtomicBool,
    /// Which master epoch wrote which part of the log (epochs.rs).
    epochs: Mutex<epochs::EpochFile>,
    /// Held by the flush thread around a flush and dispatch, by housekeeping around a
    /// checkpoint or retention pass, and by a replica's cut (replica.rs) for all of it: a cut
    /// never races a thread that read the log's end before it.
    quiesce: Mutex<()>,
}

/// The store. Cheap to share behind an `Arc`; closing flushes and marks a clean shutdown.
pub struct Store {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    lock: File,
    recovery: RecoveryReport,
}

impl Store {
    /// What recovery found when the store was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The configuration in force.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    /// Appends `msgs` to (topic, queue) atomically and contiguously. Returns once the records
    /// are in the log; durability (sync mode) is reported by the returned [`PendingAppend`].
    pub fn append(
        &self,
        topic: &str,
        queue_id: u32,
        msgs: &[NewMessage<'_>],
    ) -> Result<PendingAppend, StoreError> {
        let inner = &self.inner;
        inner.check_writable()?;
        if inner.replica.load(Ordering::Acquire) {
            return Err(StoreError::Replica);
        }
        if msgs.is_empty() {
            return Err(StoreError::InvalidMessage("empty batch".into()));
        }
        // Topic names become directory names: only the documented characters get in.
        quiver_protocol::names::check_name("topic", topic).map_err(StoreError::InvalidMessage)?;
        let limits = record::RecordLimits {
            max_body: inner.cfg.max_message_size,
            max_properties: inner.cfg.max_properties_size,
        };
        let mut sizes = Vec::with_capacity(msgs.len());
        for m in msgs {
            sizes.push(m.encoded_len(topic, &limits)?);
        }
        let mut phys = Vec::with_capacity(msgs.len());
        let (first, ts) = {
            let mut w = inner.writer.lock().expect("writer lock");
            inner.check_writable()?;
            // Checked again under the lock: a store turned replica takes no write after.
            if inner.replica.load(Ordering::Acquire) {
                return Err(StoreError::Replica);
            }
            let ts = inner.clock.now_ms().max(w.last_ts);
            let first = match w.next_offsets.get(topic).and_then(|m| m.get(&queue_id)) {
                Some(o) => *o,
                None => 0,
            };
            let Writer { cursor, .. } = &mut *w;
            inner
                .log
                .append(cursor, topic, queue_id, first, msgs, &sizes, ts, &mut phys)?;
            w.last_ts = ts;
            let next = first + msgs.len() as u64;
            match w.next_offsets.get_mut(topic) {
                Some(m) => {
                    m.insert(queue_id, next);
                }
                None => {
                    w.next_offsets
                        .insert(topic.to_string(), HashMap::from([(queue_id, next)]));
                }
            }
            (first, ts)
        };
        let results = msgs
            .iter()
            .zip(phys.iter().zip(&sizes))
            .enumerate()
            .map(|(i, (m, (p, s)))| PutResult {
                msg_id: m.msg_id,
                queue_offset: first + i as u64,
                phys_offset: *p,
                size: *s as u32,
            })
            .collect();
        let end = phys.last().copied().unwrap_or(0) + *sizes.last().unwrap_or(&0) as u64;
        let appended = Appended {
            results,
            end,
            store_timestamp: ts,
        };
        self.finish_append(appended)
    }

    /// After records are in the log: dispatch them now (async) or after their fsync (sync).
    fn finish_append(&self, appended: Appended) -> Result<PendingAppend, StoreError> {
        let inner = &self.inner;
        match inner.cfg.flush_mode {
            FlushMode::Async => {
                match inner.dispatch_to(inner.log.written()) {
                    Ok(_) => {}
                    // No room for a consume-queue or index file: the record is in the log,
                    // which is all an async ack promises; it becomes readable when the flush
                    // thread's next dispatch finds room (a refusal would make the producer
                    // store it twice).
                    Err(e @ StoreError::DiskFull { .. }) => {
                        tracing::warn!(error = %e, "dispatch deferred: disk full");
                    }
                    Err(e) => {
                        // The record is in the log but cannot be indexed: stop accepting
                        // writes rather than acknowledge (a retry would duplicate it).
                        inner.poison(&e);
                        return Err(StoreError::Poisoned(e.to_string()));
                    }
                }
                let dirty = inner.log.written() - inner.log.flushed();
                if dirty >= inner.cfg.flush_dirty_pages * mapped::PAGE {
                    inner.flush_cv.notify_one();
                }
                Ok(PendingAppend {
                    appended,
                    wait_for: None,
                })
            }
            FlushMode::Sync => Ok(PendingAppend {
                appended,
                wait_for: Some(inner.clone()),
            }),
        }
    }

    /// Reads up to `limits.max_count` messages (and about `max_bytes`) of (topic, queue) from
    /// `offset`, skipping entries for which `keep(entry)` is false (e.g. by tag hash) without
    /// touching the commit log. At most `limits.max_scan` entries are examined.
    pub fn get_messages(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        limits: ReadLimits,
        keep: impl FnMut(&CqEntry) -> bool,
    ) -> Result<GetResult, StoreError> {
        self.get_messages_where(topic, queue_id, offset, limits, keep, |_| true)
    }

    /// Like [`Store::get_messages`], with a second filter on the record itself (run after the
    /// entry filter, on the record read from the log): e.g. an exact tag check or a SQL filter.
    /// Offsets advance past records either filter refuses.
    pub fn get_messages_where(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        limits: ReadLimits,
        mut keep: impl FnMut(&CqEntry) -> bool,
        mut keep_record: impl FnMut(&RecordView<'_>) -> bool,
    ) -> Result<GetResult, StoreError> {
        let ReadLimits {
            max_count,
            max_bytes,
            max_scan,
        } = limits;
        let max_count = max_count.max(1);
        let Some(cq) = self.inner.queue(topic, queue_id) else {
            let status = if offset == 0 {
                GetStatus::NoNewMessages
            } else {
                GetStatus::OffsetOverflow
            };
            return Ok(GetResult {
                status,
                messages: Vec::new(),
                next_offset: 0,
                min_offset: 0,
                max_offset: 0,
                skipped: 0,
            });
        };
        let (min, max) = (cq.min(), cq.max());
        let mut result = GetResult {
            status: GetStatus::NoNewMessages,
            messages: Vec::new(),
            next_offset: offset,
            min_offset: min,
            max_offset: max,
            skipped: 0,
        };
        if offset < min {
            result.status = GetStatus::OffsetTooSmall;
            result.next_offset = min;
            return Ok(result);
        }
        if offset > max {
            result.status = GetStatus::OffsetOverflow;
            result.next_offset = max;
            return Ok(result);
        }
        if offset == max {
            return Ok(result);
        }
        let verify = self.inner.cfg.verify_crc_on_read;
        let mut bytes = 0usize;
        let mut err = None;
        let mut refused = None;
        let mut from = offset;
        let mut budget = max_scan.max(1);
        // The entry that was repaired last: failing again, its record is unreadable.
        let mut repaired: Option<u64> = None;
        // Entries below `max` point below `written`, each after the one before it.
        let written = self.inner.log.written();
        let mut prev_end = 0u64;
        let next = loop {
            let mut damaged = None;
            let next = cq.scan(from, budget, |off, e| {
                // The filter trusts the tag hash only of an entry that looks like one: an empty
                // or implausible entry is checked (and repaired) whatever its tag hash says.
                let end = e.phys_offset.saturating_add(e.size as u64);
                let plausible = e.size as usize >= record::MIN_RECORD_SIZE
                    && end <= written
                    && e.phys_offset >= prev_end;
                if plausible {
                    prev_end = end;
                    if !keep(&e) {
                        return true;
                    }
                }
                if !result.messages.is_empty() && bytes + e.size as usize > max_bytes {
                    refused = Some(off);
                    return false;
                }
                match self.inner.check_entry(&cq, off, &e, verify) {
                    Ok(damage::Checked::Ok(b)) => {
                        // `read` checked the sections, so the view parses.
                        let wanted =
                            RecordView::parse_unchecked_crc(&b).is_ok_and(|r| keep_record(&r));
                        if !wanted {
                            return true;
                        }
                        bytes += b.len();
                        result.messages.push(StoredMessage {
                            queue_offset: off,
                            phys_offset: e.phys_offset,
                            bytes: b,
                        });
                        result.messages.len() < max_count
                    }
                    Ok(damage::Checked::Gone) => true, // deleted by retention meanwhile
                    Ok(damage::Checked::Bad(reason)) => {
                        if repaired == Some(off) || cq.is_lost(off) {
                            self.inner.report_unreadable(&cq, off, &e, &reason);
                            result.skipped += 1;
                            true
                        } else {
                            damaged = Some((off, reason));
                            false
                        }
                    }
                    Err(e) => {
                        err = Some(e);
                        false
                    }
                }
            });
            match damaged {
                Some((off, reason)) if err.is_none() => {
                    // Repair outside the scan (it rewrites entries), then read the entry again.
                    budget -= (off - from) as usize;
                    self.inner.repair_around(&cq, off, &reason)?;
                    repaired = Some(off);
                    from = off;
                }
                _ => break next,
            }
        };
        if let Some(e) = err {
            return Err(e);
        }
        // The entry the byte budget refused is read next time.
        result.next_offset = refused.unwrap_or(next);
        result.status = if result.messages.is_empty() {
            GetStatus::NoMatch
        } else {
            GetStatus::Found
        };
        Ok(result)
    }

    /// The consume-queue entries of (topic, queue) from `offset`, at most `max`.
    pub fn read_entries(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max: usize,
    ) -> Vec<(u64, CqEntry)> {
        let mut out = Vec::new();
        if let Some(cq) = self.inner.queue(topic, queue_id) {
            cq.scan(offset, max, |o, e| {
                out.push((o, e));
                true
            });
        }
        out
    }

    /// (min, max) readable offsets of a queue; (0, 0) for a queue that never got a message.
    pub fn queue_bounds(&self, topic: &str, queue_id: u32) -> (u64, u64) {
        self.inner
            .queue(topic, queue_id)
            .map_or((0, 0), |cq| (cq.min(), cq.max()))
    }

    /// Every queue the store holds: (topic, queue id, min, max).
    pub fn queues(&self) -> Vec<(String, u32, u64, u64)> {
        let queues = self.inner.queues.read().expect("queues lock");
        let mut out: Vec<_> = queues
            .iter()
            .flat_map(|(t, per)| {
                per.iter()
                    .map(|(q, cq)| (t.clone(), *q, cq.min(), cq.max()))
            })
            .collect();
        out.sort();
        out
    }

    /// The record at a commit-log offset (the offset is itself an id that needs no index).
    pub fn message_at(&self, phys_offset: u64) -> Result<Bytes, StoreError> {
        let log = &self.inner.log;
        let head = log.read_header_len(phys_offset)?;
        log.read(phys_offset, head, true)
    }

    /// The message with this producer-assigned id, if stored.
    pub fn message_by_id(&self, id: u128) -> Result<Option<Bytes>, StoreError> {
        for phys in self.inner.index.lookup(id_hash(id), i64::MIN, i64::MAX, 32) {
            let Ok(b) = self.message_at(phys) else {
                continue;
            };
            if RecordView::parse_unchecked_crc(&b).is_ok_and(|r| r.msg_id() == id) {
                return Ok(Some(b));
            }
        }
        Ok(None)
    }

    /// Every stored record with this id (a scheduled, retried or transactional message has
    /// one record per stage: the system topic's, then the real topic's), newest first.
    pub fn messages_by_id(&self, id: u128) -> Result<Vec<Bytes>, StoreError> {
        let mut out = Vec::new();
        for phys in self.inner.index.lookup(id_hash(id), i64::MIN, i64::MAX, 64) {
            let Ok(b) = self.message_at(phys) else {
                continue;
            };
            if RecordView::parse_unchecked_crc(&b).is_ok_and(|r| r.msg_id() == id) {
                out.push(b);
            }
        }
        Ok(out)
    }

    /// Messages of `topic` carrying `key`, stored between the times (ms), newest first.
    pub fn query_by_key(
        &self,
        topic: &str,
        key: &str,
        limit: usize,
        begin_ts: i64,
        end_ts: i64,
    ) -> Result<Vec<Bytes>, StoreError> {
        let mut out = Vec::new();
        for phys in self.inner.index.lookup(
            key_hash(topic, key),
            begin_ts,
            end_ts,
            limit.saturating_mul(2).max(limit),
        ) {
            let Ok(b) = self.message_at(phys) else {
                continue;
            };
            let ok = RecordView::parse_unchecked_crc(&b).is_ok_and(|r| {
                r.topic() == topic
                    && r.keys().any(|k| k == key)
                    && (begin_ts..=end_ts).contains(&r.store_timestamp())
            });
            if ok {
                out.push(b);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The first queue offset whose message was stored at or after `timestamp_ms` (the max
    /// offset when none was).
    pub fn offset_for_timestamp(
        &self,
        topic: &str,
        queue_id: u32,
        timestamp_ms: i64,
    ) -> Result<u64, StoreError> {
        let Some(cq) = self.inner.queue(topic, queue_id) else {
            return Ok(0);
        };
        cq.search(timestamp_ms, |off, e| {
            self.inner.entry_timestamp(&cq, off, e, timestamp_ms)
        })
    }

    /// Deletes a topic's consume queues: its messages can no longer be read (the commit log
    /// keeps the bytes until retention). Queue offsets are never reused: a topic created again
    /// continues after the old offsets, so old committed offsets cannot point at new messages.
    pub fn delete_topic(&self, topic: &str) -> Result<u64, StoreError> {
        let removed = self
            .inner
            .queues
            .write()
            .expect("queues lock")
            .remove(topic);
        let mut n = 0;
        for cq in removed.into_iter().flat_map(|m| m.into_values()) {
            n += cq.max() - cq.min();
            cq.delete_files()?;
        }
        Ok(n)
    }

    /// Registers who is told of new readable entries (long polling).
    pub fn set_arrival_listener(&self, f: Arc<ArrivalListener>) {
        *self.inner.listener.write().expect("listener lock") = Some(f);
    }

    /// Registers where retention learns consumer progress, to report unconsumed losses.
    pub fn set_consumer_progress(&self, f: Arc<ConsumerProgress>) {
        *self.inner.progress.write().expect("progress lock") = Some(f);
    }

    /// Runs a retention pass now. `force` deletes expired segments whatever the hour.
    pub fn run_retention(&self, force: bool) -> Result<RetentionReport, StoreError> {
        let _quiet = self.inner.quiesce.lock().expect("quiesce lock");
        self.inner.run_retention(force)
    }

    /// Unconsumed messages lost to retention since start, per queue.
    pub fn lost_messages(&self) -> Vec<LostMessages> {
        let lost = self.inner.lost_total.lock().expect("lost lock");
        let mut out: Vec<_> = lost
            .iter()
            .map(|((t, q), c)| LostMessages {
                topic: t.clone(),
                queue_id: *q,
                count: *c,
            })
            .collect();
        out.sort_by(|a, b| (&a.topic, a.queue_id).cmp(&(&b.topic, b.queue_id)));
        out
    }

    /// Damage found and repaired since open (docs/STORAGE.md §10).
    pub fn damage_stats(&self) -> DamageStats {
        let i = &self.inner;
        DamageStats {
            unreadable_records: i.unreadable_records.load(Ordering::Relaxed),
            repaired_entries: i.repaired_entries.load(Ordering::Relaxed),
            damaged_log_spans: i.damaged_spans.load(Ordering::Relaxed),
            rebuilt_index_files: i.rebuilt_index_files.load(Ordering::Relaxed),
        }
    }

    /// Re-reads disk usage now (the housekeeping thread does it every second).
    pub fn check_disk(&self) {
        self.inner.check_disk();
    }

    /// The used fraction of the filesystem holding the store, when the system tells.
    pub fn disk_used_ratio(&self) -> Option<f64> {
        self.inner.disk_usage()
    }

    /// True while writes are refused because the disk is above its high watermark.
    pub fn disk_full(&self) -> bool {
        self.inner.disk_full_bp.load(Ordering::Relaxed) > 0
    }

    /// Sets the function told about every fsync of the flush thread (metrics).
    pub fn set_flush_observer(&self, f: Arc<FlushObserver>) {
        *self.inner.flush_observer.write().expect("observer lock") = Some(f);
    }

    /// Flush statistics since open: (flushes, appends acknowledged by them, time in fsync).
    pub fn flush_stats(&self) -> (u64, u64, Duration) {
        let i = &self.inner;
        (
            i.flush_count.load(Ordering::Relaxed),
            i.flush_waiters.load(Ordering::Relaxed),
            Duration::from_nanos(i.flush_nanos.load(Ordering::Relaxed)),
        )
    }

    /// Commit-log offsets: (min, written, flushed).
    pub fn log_offsets(&self) -> (u64, u64, u64) {
        let log = &self.inner.log;
        (log.min_offset(), log.written(), log.flushed())
    }

    /// Stops the store's threads without flushing, checkpointing or marking a clean shutdown:
    /// what the files look like after `kill -9` (the page cache survives, as it does then).
    /// For crash tests.
    #[doc(hidden)]
    pub fn simulate_crash(self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.flush.lock().expect("flush lock").shutdown = true;
        self.inner.flush_cv.notify_all();
        self.inner.housekeeping_cv.notify_all();
        for t in self.threads.lock().expect("threads lock").drain(..) {
            let _ = t.join();
        }
        let _ = self.lock.unlock();
        // Drop sees `closed` already set and does nothing more.
    }

    /// Flushes everything, writes the checkpoint, removes the unclean-shutdown marker and stops
    /// the store's threads. Appends after this fail with [`StoreError::Closed`].
    pub fn close(&self) -> Result<(), StoreError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Let in-flight appends finish: they hold the writer lock.
        drop(self.inner.writer.lock().expect("writer lock"));
        self.inner.flush.lock().expect("flush lock").shutdown = true;
        self.inner.flush_cv.notify_all();
        self.inner.housekeeping_cv.notify_all();
        for t in self.threads.lock().expect("threads lock").drain(..) {
            let _ = t.join();
        }
        let inner = &self.inner;
        if let Some(p) = inner.poisoned.get() {
            return Err(StoreError::Poisoned(p.clone()));
        }
        let w = inner.log.written();
        inner.log.flush(inner.log.flushed(), w)?;
        inner.dispatch_to(w)?;
        inner.checkpoint()?;
        AbortMarker::remove(&inner.cfg.dir)?;
        let _ = self.lock.unlock();
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "store did not close cleanly");
        }
    }
}

impl Inner {
    fn check_writable(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        if let Some(p) = self.poisoned.get() {
            return Err(StoreError::Poisoned(p.clone()));
        }
        let bp = self.disk_full_bp.load(Ordering::Relaxed);
        if bp > 0 {
            return Err(StoreError::DiskFull {
                path: self.cfg.dir.clone(),
                cause: error::DiskFullCause::Watermark {
                    used_percent: bp as f64 / 100.0,
                    limit_percent: self.cfg.disk_high_watermark * 100.0,
                },
            });
        }
        Ok(())
    }

    fn poison(&self, e: &StoreError) {
        let msg = e.to_string();
        if self.poisoned.set(msg.clone()).is_ok() {
            tracing::error!(error = %msg, "flush failed: the store refuses writes until restarted");
        }
    }

    fn queue(&self, topic: &str, queue_id: u32) -> Option<Arc<ConsumeQueue>> {
        self.queues
            .read()
            .expect("queues lock")
            .get(topic)
            .and_then(|m| m.get(&queue_id))
            .cloned()
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Store>();
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod diskfull_tests;

#[cfg(test)]
mod damage_tests;

/// The directory layout, for tools and tests that look at files.
pub fn commitlog_dir(dir: &Path) -> PathBuf {
    dir.join("commitlog")
}
