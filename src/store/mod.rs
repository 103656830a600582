//! The message store: commit log + consume queues + key index, flush (async or group-commit
//! sync), checkpoint and crash recovery, retention. Synchronous I/O only: no tokio, no network.
//! The broker calls [`Store::append`] and waits for durability through
//! [`PendingAppend::on_durable`], which runs on the store's flush thread (never an fsync on the
//! caller's thread).

mod checkpoint;
mod commitlog;
mod config;
mod consume_queue;
mod damage;
pub(crate) mod durable;
mod error;
mod index;
mod mapped;
#[cfg(test)]
mod powerloss;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use quiver_protocol::record;

use checkpoint::{AbortMarker, Checkpoint};
use commitlog::{CommitLog, Cursor, Step};
use consume_queue::ConsumeQueue;
use index::Index;
use mapped::SpaceCheck;

pub use config::{DiskSpace, DiskSpaceSource, FlushMode, StoreConfig};
pub use consume_queue::{CqEntry, CQ_ENTRY_SIZE};
pub use error::{DiskFullCause, StoreError};
pub use index::{id_hash, key_hash};
pub use record::{tag_hash, NewMessage, RecordView, FLAG_BATCH_CONT, HEADER_SIZE};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

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

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

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

struct Writer {
    cursor: Cursor,
    /// Next queue offset per topic and queue id.
    next_offsets: HashMap<String, HashMap<u32, u64>>,
    /// Store timestamps never go backwards, so time lookups can binary-search.
    last_ts: i64,
}

struct FlushState {
    waiters: Vec<(u64, Completion)>,
    shutdown: bool,
}

struct Inner {
    cfg: StoreConfig,
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
}

/// The store. Cheap to share behind an `Arc`; closing flushes and marks a clean shutdown.
pub struct Store {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    lock: File,
    recovery: RecoveryReport,
}

impl Store {
    /// Opens (creating if needed) and recovers the store in `cfg.dir`, then starts its flush and
    /// housekeeping threads.
    pub fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        cfg.validate()?;
        let started = Instant::now();
        std::fs::create_dir_all(&cfg.dir).map_err(|e| StoreError::io(&cfg.dir, e))?;
        let lock_path = cfg.dir.join("lock");
        let lock = File::create(&lock_path).map_err(|e| StoreError::io(&lock_path, e))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked(cfg.dir.clone()));
        }
        let unclean = AbortMarker::exists(&cfg.dir);
        let cp = Checkpoint::read(&cfg.dir)?;
        // New segments keep the headroom; derived files (queues, index) may use it.
        let space = SpaceCheck::new(
            cfg.dir.clone(),
            cfg.disk_space.clone(),
            cfg.disk_headroom_bytes,
        );
        let derived_space = space.keeping(0);
        let log = CommitLog::open(cfg.dir.join("commitlog"), cfg.segment_size, space)?;
        let cq_root = cfg.dir.join("consumequeue");
        let index_dir = cfg.dir.join("index");
        // Deleting consumequeue/ or index/ asks for a full rebuild from the log.
        let rebuild_all = !cq_root.exists() || !index_dir.exists();
        let (index, discarded_index) = Index::open_with_discarded(
            index_dir,
            cfg.index_slots,
            cfg.index_entries,
            derived_space.clone(),
        )?;
        let queues = load_queues(&cq_root, cfg.cq_entries_per_file, &derived_space)?;

        // 1. Find the valid end of the commit log, scanning only past the checkpoint.
        let min = log.min_offset();
        let scan_from = cp.map_or(min, |c| c.commitlog.max(min));
        let mut report = RecoveryReport {
            unclean,
            scanned_from: scan_from,
            ..Default::default()
        };
        let mut pos = scan_from;
        let seg_end = log.segments().last().map_or(min, |s| s.base() + s.len());
        let mut batch_start = None;
        let mut zero_tail = false;
        while pos < seg_end {
            match log.step(pos, true) {
                Step::Record { pos: p, len, flags } => {
                    if batch_start.is_none() && flags & FLAG_BATCH_CONT != 0 {
                        batch_start = Some(p);
                    } else if flags & FLAG_BATCH_CONT == 0 {
                        batch_start = None;
                    }
                    report.records_scanned += 1;
                    pos = p + len as u64;
                }
                Step::NextSegment(next) => pos = next,
                Step::End { pos: p, reason } => {
                    // After an unclean stop, bytes past the end may hold pieces of unflushed
                    // writes even where the end itself reads as zeros: clear them too.
                    zero_tail = unclean || reason != "zeros";
                    if reason != "zeros" {
                        report.truncated_at = Some((p, reason));
                    }
                    break;
                }
            }
        }
        // A batch is atomic: a batch cut short by the crash goes entirely.
        if let Some(start) = batch_start {
            report.truncated_at = Some((start, "incomplete batch".into()));
            pos = start;
        }
        let end = pos.min(seg_end.max(min));
        if let Some(c) = cp {
            if c.commitlog > seg_end.max(min) {
                return Err(StoreError::Corrupt {
                    file: cfg.dir.join("commitlog"),
                    offset: seg_end,
                    reason: format!(
                        "the checkpoint says the log is durable up to offset {} but the segments \
                         end at {seg_end}: a segment file is missing; restore it from a backup",
                        c.commitlog
                    ),
                });
            }
        }
        if report.truncated_at.is_some() || zero_tail {
            let (at, reason) = report
                .truncated_at
                .clone()
                .unwrap_or((end, "unclean shutdown".into()));
            let (at, reason) = (&at, &reason);
            // Later segments that still hold valid records mean damage in the middle of the
            // log, not a torn tail: refuse to cut them away. Except past the checkpoint after
            // an unclean stop: nothing there is known durable, and a power loss writes pages
            // back in no particular order, so a later segment's unsynced page may have
            // reached the disk while this one's did not. (Nothing acknowledged in sync mode
            // lies past an invalid record, as a flush covers everything below its end.)
            let next = *at - *at % cfg.segment_size + cfg.segment_size;
            if next < seg_end {
                if let Step::Record { .. } = log.step(next, true) {
                    let past_durable = unclean && cp.is_some_and(|c| end >= c.commitlog);
                    if !past_durable {
                        return Err(StoreError::Corrupt {
                            file: log.path_of(*at),
                            offset: *at % cfg.segment_size,
                            reason: format!(
                                "invalid record ({reason}) but later segments hold valid \
                                 data; refusing to truncate the log; restore the damaged \
                                 segment from a backup"
                            ),
                        });
                    }
                    tracing::warn!(
                        at = *at,
                        %reason,
                        dropped_from = next,
                        "invalid record past the checkpoint after an unclean stop, with \
                         records after it: unsynced writes of a power loss; cutting the log \
                         there and dropping the later segments"
                    );
                }
            }
            log.truncate(end)?;
        }
        let cursor = log.start_at(end)?;
        report.end = end;

        // 2. Consume queues keep what refers to durable, dispatched records; the rest is rebuilt.
        let dispatched_cp = if rebuild_all {
            min
        } else {
            cp.map_or(min, |c| c.dispatched.max(min)).min(end)
        };
        let all_queues: Vec<Arc<ConsumeQueue>> = queues
            .values()
            .flat_map(|per| per.values().cloned())
            .collect();
        for cq in &all_queues {
            cq.recover(dispatched_cp);
        }
        let inner = Arc::new(Inner {
            log,
            writer: Mutex::new(Writer {
                cursor,
                next_offsets: HashMap::new(),
                last_ts: 0,
            }),
            dispatched: Mutex::new(dispatched_cp),
            queues: RwLock::new(queues),
            index,
            flush: Mutex::new(FlushState {
                waiters: Vec::new(),
                shutdown: false,
            }),
            flush_cv: Condvar::new(),
            housekeeping_cv: Condvar::new(),
            poisoned: OnceLock::new(),
            disk_full_bp: AtomicU64::new(0),
            derived_space,
            closed: AtomicBool::new(false),
            listener: RwLock::new(None),
            progress: RwLock::new(None),
            lost_total: Mutex::new(HashMap::new()),
            flush_count: AtomicU64::new(0),
            flush_waiters: AtomicU64::new(0),
            flush_nanos: AtomicU64::new(0),
            unreadable_records: AtomicU64::new(0),
            repaired_entries: AtomicU64::new(0),
            damaged_spans: AtomicU64::new(0),
            rebuilt_index_files: AtomicU64::new(0),
            recovering: AtomicBool::new(false),
            cfg,
        });
        // Damage below the checkpoint must not move a queue's end: check each end against the
        // log (rebuilding what is wrong) before stale entries past it are erased.
        inner.repair_queue_ends(&all_queues, dispatched_cp)?;
        for cq in &all_queues {
            cq.erase_after(cq.max())?;
        }
        if !rebuild_all {
            let mut names = discarded_index;
            names.sort_unstable();
            for (i, &name) in names.iter().enumerate() {
                // A file holds the entries of records from its name up to the next file's.
                let next = [names.get(i + 1).copied(), inner.index.next_name_after(name)]
                    .into_iter()
                    .flatten()
                    .min();
                let upto = next.unwrap_or(dispatched_cp.saturating_sub(1));
                if name >= dispatched_cp {
                    continue; // re-dispatch indexes these records
                }
                let n =
                    inner.rebuild_index_file(name, upto.min(dispatched_cp.saturating_sub(1)))?;
                inner.rebuilt_index_files.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(name, records = n, "index file rebuilt from the commit log");
            }
        }
        inner.recovering.store(true, Ordering::Relaxed);
        let redispatched = inner.dispatch_to(end);
        inner.recovering.store(false, Ordering::Relaxed);
        report.records_redispatched = redispatched?;
        inner.trim_queues_below(inner.log.min_offset(), false)?;
        {
            let mut w = inner.writer.lock().expect("writer lock");
            let queues = inner.queues.read().expect("queues lock");
            for (topic, per) in queues.iter() {
                let map = w.next_offsets.entry(topic.clone()).or_default();
                for (qid, cq) in per {
                    map.insert(*qid, cq.max());
                }
            }
            if end > min {
                // Keep store timestamps monotonic across restarts.
                let last = inner.last_record_before(end);
                w.last_ts = last.unwrap_or(0);
            }
        }
        inner.log.flush(end, end)?;
        inner.checkpoint()?;
        AbortMarker::create(&inner.cfg.dir)?;
        inner.check_disk();
        report.took = started.elapsed();
        if report.unclean || report.truncated_at.is_some() {
            tracing::warn!(
                unclean = report.unclean,
                scanned_from = report.scanned_from,
                records = report.records_scanned,
                truncated = ?report.truncated_at,
                took_ms = report.took.as_millis() as u64,
                "store recovered after an unclean shutdown"
            );
        }

        let mut threads = Vec::new();
        let i = inner.clone();
        threads.push(
            std::thread::Builder::new()
                .name("quiver-flush".into())
                .spawn(move || i.flush_loop())
                .map_err(|e| StoreError::io(&inner.cfg.dir, e))?,
        );
        let i = inner.clone();
        threads.push(
            std::thread::Builder::new()
                .name("quiver-housekeeping".into())
                .spawn(move || i.housekeeping_loop())
                .map_err(|e| StoreError::io(&inner.cfg.dir, e))?,
        );
        Ok(Store {
            inner,
            threads: Mutex::new(threads),
            lock,
            recovery: report,
        })
    }

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
            let ts = now_ms().max(w.last_ts);
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

fn load_queues(
    root: &Path,
    per_file: u64,
    space: &SpaceCheck,
) -> Result<HashMap<String, HashMap<u32, Arc<ConsumeQueue>>>, StoreError> {
    let mut out: HashMap<String, HashMap<u32, Arc<ConsumeQueue>>> = HashMap::new();
    std::fs::create_dir_all(root).map_err(|e| StoreError::io(root, e))?;
    for topic in std::fs::read_dir(root).map_err(|e| StoreError::io(root, e))? {
        let topic = topic.map_err(|e| StoreError::io(root, e))?;
        let Some(name) = topic.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let tdir = topic.path();
        if !tdir.is_dir() {
            continue;
        }
        for q in std::fs::read_dir(&tdir).map_err(|e| StoreError::io(&tdir, e))? {
            let q = q.map_err(|e| StoreError::io(&tdir, e))?;
            let Some(qid) = q.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let cq = ConsumeQueue::open(root, &name, qid, per_file, space.clone())?;
            out.entry(name.clone())
                .or_default()
                .insert(qid, Arc::new(cq));
        }
    }
    Ok(out)
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

    fn queue_or_create(&self, topic: &str, queue_id: u32) -> Result<Arc<ConsumeQueue>, StoreError> {
        if let Some(cq) = self.queue(topic, queue_id) {
            return Ok(cq);
        }
        let mut queues = self.queues.write().expect("queues lock");
        if let Some(cq) = queues.get(topic).and_then(|m| m.get(&queue_id)) {
            return Ok(cq.clone());
        }
        let cq = Arc::new(ConsumeQueue::open(
            &self.cfg.dir.join("consumequeue"),
            topic,
            queue_id,
            self.cfg.cq_entries_per_file,
            self.derived_space.clone(),
        )?);
        queues
            .entry(topic.to_string())
            .or_default()
            .insert(queue_id, cq.clone());
        Ok(cq)
    }

    /// Builds consume-queue and index entries for records up to `end` and publishes them.
    /// Returns how many records were dispatched.
    fn dispatch_to(&self, end: u64) -> Result<u64, StoreError> {
        let mut pos_guard = self.dispatched.lock().expect("dispatch lock");
        let mut pos = *pos_guard;
        if pos >= end {
            return Ok(0);
        }
        let mut touched: Vec<(Arc<ConsumeQueue>, u64)> = Vec::new();
        let mut n = 0;
        while pos < end {
            match self.log.step(pos, false) {
                Step::Record { pos: p, len, .. } => {
                    // Recovery re-dispatches records below the checkpoint that no scan
                    // CRC-checked: an unparsable one is damage to report and pass over
                    // (docs/STORAGE.md §10), not a reason to refuse to open.
                    if self.recovering.load(Ordering::Relaxed) && !self.log_record_parses(p, len) {
                        self.dispatch_damaged_record(p, len, &mut touched)?;
                        pos = p + len as u64;
                        continue;
                    }
                    self.log
                        .with_record(p, len, false, |r| -> Result<(), StoreError> {
                            let qo = r.queue_offset();
                            let cq = match touched.iter().find(|(c, _)| {
                                c.queue_id() == r.queue_id() && c.topic() == r.topic()
                            }) {
                                Some((c, _)) => c.clone(),
                                None => {
                                    let c = self.queue_or_create(r.topic(), r.queue_id())?;
                                    touched.push((c.clone(), 0));
                                    c
                                }
                            };
                            cq.put(
                                qo,
                                CqEntry {
                                    phys_offset: p,
                                    size: len as u32,
                                    tag_hash: tag_hash(r.tag()),
                                },
                            )?;
                            if let Some(t) = touched.iter_mut().find(|(c, _)| Arc::ptr_eq(c, &cq)) {
                                t.1 = t.1.max(qo + 1);
                            }
                            let ts = r.store_timestamp();
                            self.index.put(id_hash(r.msg_id()), p, ts)?;
                            for key in r.keys() {
                                self.index.put(key_hash(r.topic(), key), p, ts)?;
                            }
                            Ok(())
                        })??;
                    pos = p + len as u64;
                    n += 1;
                }
                Step::NextSegment(next) => pos = next,
                Step::End { pos: p, reason } if self.recovering.load(Ordering::Relaxed) => {
                    pos = self.dispatch_skip(p, end, &reason);
                }
                Step::End { pos: p, reason } => {
                    return Err(commitlog::corrupt(
                        &self.log.path_of(p),
                        p % self.log.segment_size(),
                        &format!("dispatch found no record below the written end: {reason}"),
                    ));
                }
            }
        }
        // Publish under the lock, so a checkpoint that reads the new position also flushes
        // these entries.
        for (cq, max) in &touched {
            cq.publish(*max);
        }
        *pos_guard = pos;
        drop(pos_guard);
        if let Some(l) = self.listener.read().expect("listener lock").clone() {
            for (cq, max) in touched {
                l(cq.topic(), cq.queue_id(), max);
            }
        }
        Ok(n)
    }

    fn last_record_before(&self, end: u64) -> Option<i64> {
        // The newest queue entry below `end` gives the newest store timestamp cheaply.
        let queues = self.queues.read().expect("queues lock");
        let mut best = None;
        for per in queues.values() {
            for cq in per.values() {
                let max = cq.max();
                if max > cq.min() {
                    if let Some(e) = cq.get(max - 1) {
                        if e.phys_offset < end {
                            if let Ok(ts) = self.log.store_timestamp(e.phys_offset) {
                                best = best.max(Some(ts));
                            }
                        }
                    }
                }
            }
        }
        best
    }

    fn wait_durable(&self, end: u64, done: Completion) {
        if let Some(p) = self.poisoned.get() {
            return done(Err(StoreError::Poisoned(p.clone())));
        }
        let mut st = self.flush.lock().expect("flush lock");
        if self.log.flushed() >= end {
            drop(st);
            return done(Ok(()));
        }
        if st.shutdown {
            drop(st);
            return done(Err(StoreError::Closed));
        }
        st.waiters.push((end, done));
        drop(st);
        self.flush_cv.notify_one();
    }

    fn flush_loop(self: Arc<Self>) {
        let interval = Duration::from_millis(self.cfg.flush_interval_ms.max(1));
        let sync = self.cfg.flush_mode == FlushMode::Sync;
        let gather = Duration::from_micros(self.cfg.group_commit_wait_us);
        let mut last_group = 0usize;
        loop {
            let (waiters, shutdown) = {
                let mut st = self.flush.lock().expect("flush lock");
                let deadline = Instant::now() + interval;
                loop {
                    if st.shutdown || !st.waiters.is_empty() {
                        break;
                    }
                    let dirty = self.log.written() - self.log.flushed();
                    if !sync && dirty >= self.cfg.flush_dirty_pages * mapped::PAGE {
                        break;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    st = self
                        .flush_cv
                        .wait_timeout(st, deadline - now)
                        .expect("flush lock")
                        .0;
                }
                // Group commit: when the last fsync served a large group, wait a moment for
                // its writers to come back, so one fsync again serves many instead of
                // splitting them into small groups (PostgreSQL's commit_delay, adaptively).
                if sync && !st.shutdown && !gather.is_zero() {
                    let until = Instant::now() + gather;
                    while st.waiters.len() < last_group / 2 && !st.shutdown {
                        let now = Instant::now();
                        if now >= until {
                            break;
                        }
                        st = self
                            .flush_cv
                            .wait_timeout(st, until - now)
                            .expect("flush lock")
                            .0;
                    }
                }
                last_group = st.waiters.len();
                (std::mem::take(&mut st.waiters), st.shutdown)
            };
            // Every waiter taken registered after its records were written, so `written` read
            // now covers all of them: one fsync serves the whole group.
            if let Some(p) = self.poisoned.get() {
                for (_, done) in waiters {
                    done(Err(StoreError::Poisoned(p.clone())));
                }
                if shutdown {
                    return;
                }
                continue;
            }
            let w = self.log.written();
            let t0 = Instant::now();
            let flushed = self.log.flush(self.log.flushed(), w);
            self.flush_nanos
                .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
            self.flush_count.fetch_add(1, Ordering::Relaxed);
            self.flush_waiters
                .fetch_add(waiters.len() as u64, Ordering::Relaxed);
            // Dispatch what is in the log: in sync mode the records just made durable; in
            // async mode only what an append could not dispatch itself (disk full).
            let dispatched = match &flushed {
                Ok(()) => self.dispatch_to(w).map(|_| ()),
                Err(_) => Ok(()),
            };
            let outcome = match (flushed, dispatched) {
                (Ok(()), Ok(())) => Ok(()),
                // Durable, so acknowledged; readable once a consume-queue or index file can
                // be allocated (retried every cycle).
                (Ok(()), Err(e @ StoreError::DiskFull { .. })) => {
                    tracing::warn!(error = %e, "dispatch deferred: disk full");
                    Ok(())
                }
                // Sync mode, no space for the write-back: nothing in `flushed..w` was
                // acknowledged, so refuse this group with the retryable error and try again
                // next cycle. In async mode those records were acknowledged: poison below.
                (Err(e @ StoreError::DiskFull { .. }), _) if sync => {
                    tracing::warn!(error = %e, "flush failed: disk full");
                    Err(e)
                }
                (Ok(()), Err(e)) | (Err(e), _) => {
                    self.poison(&e);
                    Err(StoreError::Poisoned(e.to_string()))
                }
            };
            match outcome {
                Ok(()) => {
                    for (_, done) in waiters {
                        done(Ok(()));
                    }
                    self.log.release_flushed(8 << 20);
                }
                Err(e) => {
                    for (_, done) in waiters {
                        done(Err(e.clone()));
                    }
                }
            }
            if shutdown {
                let rest = std::mem::take(&mut self.flush.lock().expect("flush lock").waiters);
                let flushed = self.log.flushed();
                for (end, done) in rest {
                    done(if end <= flushed && self.poisoned.get().is_none() {
                        Ok(())
                    } else {
                        Err(StoreError::Closed)
                    });
                }
                return;
            }
        }
    }

    fn housekeeping_loop(self: Arc<Self>) {
        let tick = Duration::from_millis(self.cfg.checkpoint_interval_ms.clamp(10, 1000));
        let mut last_checkpoint = Instant::now();
        let mut last_retention = Instant::now();
        let mut last_release = Instant::now();
        let mut checkpoint_deferred = false;
        loop {
            {
                let st = self.flush.lock().expect("flush lock");
                if st.shutdown {
                    return;
                }
                let (st, _) = self
                    .housekeeping_cv
                    .wait_timeout(st, tick)
                    .expect("flush lock");
                if st.shutdown {
                    return;
                }
            }
            self.check_disk();
            if last_checkpoint.elapsed() >= Duration::from_millis(self.cfg.checkpoint_interval_ms) {
                last_checkpoint = Instant::now();
                if self.poisoned.get().is_none() {
                    match self.checkpoint() {
                        Ok(()) => {
                            if checkpoint_deferred {
                                checkpoint_deferred = false;
                                tracing::info!("checkpoint written again");
                            }
                        }
                        // A full disk stops the checkpoint from advancing, nothing more: the
                        // previous one stays valid (atomic rename), and recovery just scans
                        // further. Try again next time.
                        Err(e @ StoreError::DiskFull { .. }) => {
                            if !checkpoint_deferred {
                                checkpoint_deferred = true;
                                tracing::warn!(error = %e, "checkpoint deferred: disk full");
                            }
                        }
                        Err(e) => self.poison(&e),
                    }
                }
            }
            if last_retention.elapsed() >= Duration::from_secs(10) {
                last_retention = Instant::now();
                if let Err(e) = self.run_retention(false) {
                    tracing::error!(error = %e, "retention pass failed");
                }
            }
            if last_release.elapsed() >= Duration::from_secs(30) {
                last_release = Instant::now();
                self.log.release_sealed();
                self.index.release_sealed();
                for per in self.queues.read().expect("queues lock").values() {
                    for cq in per.values() {
                        cq.release_sealed();
                    }
                }
            }
        }
    }

    /// Flushes consume queues and the index, then records what is durable.
    fn checkpoint(&self) -> Result<(), StoreError> {
        let dispatched = *self.dispatched.lock().expect("dispatch lock");
        let commitlog = self.log.flushed();
        let queues: Vec<Arc<ConsumeQueue>> = self
            .queues
            .read()
            .expect("queues lock")
            .values()
            .flat_map(|m| m.values().cloned())
            .collect();
        for cq in queues {
            cq.flush()?;
        }
        self.index.flush()?;
        Checkpoint {
            commitlog,
            dispatched,
            written_at: now_ms(),
        }
        .write(&self.cfg.dir)
    }

    fn disk_usage(&self) -> Option<f64> {
        let space = self.cfg.disk_space.query(&self.cfg.dir)?;
        if space.total == 0 {
            return None;
        }
        let used = space.total.saturating_sub(space.available) as f64;
        Some(used / space.total as f64)
    }

    fn check_disk(&self) {
        let Some(usage) = self.disk_usage() else {
            return;
        };
        let bp = if usage > self.cfg.disk_high_watermark {
            ((usage * 10_000.0) as u64).max(1)
        } else {
            0
        };
        let was = self.disk_full_bp.swap(bp, Ordering::Relaxed);
        if (was == 0) != (bp == 0) {
            if bp > 0 {
                tracing::error!(
                    used = usage,
                    watermark = self.cfg.disk_high_watermark,
                    "disk above the high watermark: refusing writes"
                );
            } else {
                tracing::info!(
                    used = usage,
                    "disk below the high watermark: accepting writes again"
                );
            }
        }
    }

    fn run_retention(&self, force: bool) -> Result<RetentionReport, StoreError> {
        let mut report = RetentionReport::default();
        let max_age = Duration::from_secs(self.cfg.retention_hours * 3600);
        let mut under_pressure = false;
        loop {
            let pressure = self
                .disk_usage()
                .is_some_and(|u| u > self.cfg.disk_clean_watermark);
            let in_window = force || local_hour() == Some(self.cfg.delete_hour);
            let deleted = self.log.delete_oldest_if(|seg| {
                if pressure {
                    return true;
                }
                let age = std::fs::metadata(seg.path())
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok());
                in_window && age.is_some_and(|a| a >= max_age)
            })?;
            match deleted {
                Some(range) => {
                    if pressure {
                        under_pressure = true;
                        tracing::warn!(
                            start = range.0,
                            end = range.1,
                            "disk above the clean watermark: deleted commit-log segment \
                             whatever its age"
                        );
                    } else {
                        tracing::info!(
                            start = range.0,
                            end = range.1,
                            "deleted expired commit-log segment"
                        );
                    }
                    report.deleted_segments.push(range);
                }
                None => break,
            }
        }
        if report.deleted_segments.is_empty() {
            return Ok(report);
        }
        report.lost = self.trim_queues_below(self.log.min_offset(), under_pressure)?;
        Ok(report)
    }

    /// Moves every queue's minimum past `phys_min`. Unconsumed messages deleted are logged at
    /// WARN per queue; under disk pressure so is every queue's count of deleted messages.
    fn trim_queues_below(
        &self,
        phys_min: u64,
        pressure: bool,
    ) -> Result<Vec<LostMessages>, StoreError> {
        let progress = self.progress.read().expect("progress lock").clone();
        let queues: Vec<Arc<ConsumeQueue>> = self
            .queues
            .read()
            .expect("queues lock")
            .values()
            .flat_map(|m| m.values().cloned())
            .collect();
        let mut lost = Vec::new();
        for cq in queues {
            let (old, new) = cq.trim_below_phys(phys_min)?;
            if new <= old {
                continue;
            }
            let consumed = progress.as_ref().and_then(|p| p(cq.topic(), cq.queue_id()));
            if pressure {
                tracing::warn!(
                    topic = cq.topic(),
                    queue = cq.queue_id(),
                    deleted = new - old,
                    unconsumed = ?consumed.map(|c| new.saturating_sub(c.max(old))),
                    "disk pressure deleted messages of this queue"
                );
            }
            if let Some(c) = consumed {
                let count = new.saturating_sub(c.max(old));
                if count > 0 {
                    tracing::warn!(
                        topic = cq.topic(),
                        queue = cq.queue_id(),
                        count,
                        "retention deleted unconsumed messages"
                    );
                    *self
                        .lost_total
                        .lock()
                        .expect("lost lock")
                        .entry((cq.topic().to_string(), cq.queue_id()))
                        .or_default() += count;
                    lost.push(LostMessages {
                        topic: cq.topic().to_string(),
                        queue_id: cq.queue_id(),
                        count,
                    });
                }
            }
        }
        self.index.trim_below_phys(phys_min)?;
        Ok(lost)
    }
}

fn local_hour() -> Option<u8> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs() as libc::time_t;
    // SAFETY: localtime_r fills the struct we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::localtime_r(&now, &mut tm) };
    (!r.is_null()).then_some(tm.tm_hour as u8)
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
