//! Scheduled messages: a timer wheel over a log, as RocketMQ 5 does.
//!
//! A scheduled message is stored in the system topic `%SCHEDULE%` (queue 0) with its real
//! topic, queue and due time in properties, so it is durable like any message. A dispatcher
//! thread reads that queue in order and appends one 64-byte entry per message to the *timer
//! log*; entries of one wheel slot are chained backwards (`prev`), and the in-memory wheel
//! keeps only the newest entry of each slot: memory is 8 bytes per slot whatever the number of
//! pending messages. A scheduler thread fires each slot at its start, walks its chain, and
//! appends every entry's message to its real topic at its exact due time (same id). Messages
//! due beyond the wheel's horizon sit in its last slot and are re-appended to `%SCHEDULE%`
//! (rolled) when it fires, so their record also stays within the commit log's retention.
//!
//! Durability: a checkpoint (`timer/checkpoint.json`) records the slots delivered durably, the
//! timer-log length (fsynced first) and the `%SCHEDULE%` offset it covers. Recovery truncates
//! the log to the checkpoint, rebuilds the wheel from the live part of the log, and dispatches
//! again from the checkpointed offset. Messages that were due before this start may already
//! have been delivered by the previous run: for those the real topic is checked by id first, so
//! a restart delivers every message once.
//!
//! Cancelling appends a cancel record to `%SCHEDULE%`; its entry lands in the same final slot
//! as the message, and the scheduler skips a message whose cancel is in its slot.
//!
//! Time comes from the broker's [`Clock`]: due times are its epoch ms, the scheduler sleeps
//! until the next slot starts by it, and a manual clock wakes the scheduler when it moves.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::store::durable::write_file;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quiver_protocol::names::{props, SCHEDULE_TOPIC};
use quiver_protocol::RecordView;
use serde::{Deserialize, Serialize};

use super::Moved;
use crate::clock::{Clock, Waker};
use crate::store::{GetStatus, PendingAppend, ReadLimits, Store, StoreError};

/// Bytes per timer-log entry.
const ENTRY: u64 = 64;
/// Bytes per timer-log segment file (1 Mi entries).
const SEGMENT: u64 = 1 << 26;
const KIND_MESSAGE: u8 = 1;
const KIND_CANCEL: u8 = 2;
/// Checkpoint period.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// A mark for freeing old timer-log segments is kept this often.
const MARK_EVERY: Duration = Duration::from_secs(30);
/// Longest real sleep of the scheduler on the system clock (the wall clock may be set).
const SCHED_WAIT_MAX: Duration = Duration::from_millis(50);
/// Pause before a store that refused a message is tried again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Queue count of a topic (`None`: the topic does not exist).
pub(crate) type QueueCount = dyn Fn(&str) -> Option<u32> + Send + Sync;

/// Why a cancel was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CancelError {
    #[error("no scheduled message with id {0:032x}")]
    NotFound(u128),
    #[error("scheduled message {0:032x} is already due or delivered; it cannot be cancelled")]
    AlreadyDue(u128),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("timer: {0}")]
    Io(String),
}

/// Counters for `describe` and benchmarks.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TimerStats {
    /// Entries waiting in the wheel (messages and cancels).
    pub pending: u64,
    /// Messages delivered to their real topic since start.
    pub delivered: u64,
    /// Messages re-queued because they were due beyond the wheel's horizon.
    pub rolled: u64,
    /// Messages not delivered because they were cancelled.
    pub cancelled: u64,
    /// Messages skipped at recovery because the previous run had delivered them.
    pub deduplicated: u64,
    /// Bytes of memory the wheel reserves (8 per slot; pages are touched on use).
    pub wheel_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    deliver_at: i64,
    slot: i64,
    phys: u64,
    size: u32,
    kind: u8,
    /// Entry number + 1 of the previous entry of the same slot (0: none).
    prev: u64,
    id: u128,
}

impl Entry {
    fn encode(&self) -> [u8; ENTRY as usize] {
        let mut b = [0u8; ENTRY as usize];
        b[0..8].copy_from_slice(&self.deliver_at.to_le_bytes());
        b[8..16].copy_from_slice(&self.slot.to_le_bytes());
        b[16..24].copy_from_slice(&self.phys.to_le_bytes());
        b[24..28].copy_from_slice(&self.size.to_le_bytes());
        b[28] = self.kind;
        b[32..40].copy_from_slice(&self.prev.to_le_bytes());
        b[40..56].copy_from_slice(&self.id.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..56]);
        b[56..60].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8; ENTRY as usize]) -> Option<Entry> {
        let crc = u32::from_le_bytes(b[56..60].try_into().ok()?);
        if crc != crc32c::crc32c(&b[0..56]) || !matches!(b[28], KIND_MESSAGE | KIND_CANCEL) {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        Some(Entry {
            deliver_at: u64_at(0) as i64,
            slot: u64_at(8) as i64,
            phys: u64_at(16),
            size: u32::from_le_bytes(b[24..28].try_into().ok()?),
            kind: b[28],
            prev: u64_at(32),
            id: u128::from_le_bytes(b[40..56].try_into().ok()?),
        })
    }
}

/// The timer log: fixed-size entries in segment files named by their first byte offset.
struct Log {
    dir: PathBuf,
    segments: BTreeMap<u64, File>,
    /// Bytes written.
    len: u64,
    /// Segments written since the last sync.
    dirty: HashSet<u64>,
}

impl Log {
    /// Opens the segments; `hint_len` (the checkpoint's length) is the length when every
    /// segment was freed.
    fn open(dir: &Path, hint_len: u64) -> std::io::Result<Log> {
        std::fs::create_dir_all(dir)?;
        let mut segments = BTreeMap::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(start) = name.to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            let f = OpenOptions::new().read(true).write(true).open(e.path())?;
            segments.insert(start, f);
        }
        let len = match segments.iter().next_back() {
            Some((start, f)) => start + f.metadata()?.len() / ENTRY * ENTRY,
            None => hint_len,
        };
        Ok(Log {
            dir: dir.to_path_buf(),
            segments,
            len,
            dirty: HashSet::new(),
        })
    }

    fn segment(&mut self, pos: u64) -> std::io::Result<(&File, u64)> {
        let start = pos / SEGMENT * SEGMENT;
        if !self.segments.contains_key(&start) {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(self.dir.join(format!("{start:020}")))?;
            self.segments.insert(start, f);
        }
        let f = self
            .segments
            .get(&start)
            .ok_or_else(|| std::io::Error::other("segment"))?;
        Ok((f, pos - start))
    }

    fn write_at(&mut self, pos: u64, e: &Entry) -> std::io::Result<()> {
        let (f, at) = self.segment(pos)?;
        f.write_all_at(&e.encode(), at)?;
        self.dirty.insert(pos / SEGMENT * SEGMENT);
        Ok(())
    }

    fn push(&mut self, e: &Entry) -> std::io::Result<u64> {
        let pos = self.len;
        self.write_at(pos, e)?;
        self.len += ENTRY;
        Ok(pos)
    }

    fn read(&self, pos: u64) -> Option<Entry> {
        if pos + ENTRY > self.len {
            return None;
        }
        let start = pos / SEGMENT * SEGMENT;
        let f = self.segments.get(&start)?;
        let mut b = [0u8; ENTRY as usize];
        f.read_exact_at(&mut b, pos - start).ok()?;
        Entry::decode(&b)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        for start in self.dirty.drain() {
            if let Some(f) = self.segments.get(&start) {
                f.sync_data()?;
            }
        }
        Ok(())
    }

    /// Drops everything at or after `len`.
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        let starts: Vec<u64> = self.segments.keys().copied().collect();
        for start in starts {
            if start >= len && !(start == 0 && len == 0) {
                self.segments.remove(&start);
                std::fs::remove_file(self.dir.join(format!("{start:020}")))?;
            } else if start + SEGMENT > len {
                if let Some(f) = self.segments.get(&start) {
                    f.set_len(len - start)?;
                    f.sync_all()?;
                }
            }
        }
        self.len = len;
        Ok(())
    }

    /// Deletes segments that end at or before `pos`.
    fn free_below(&mut self, pos: u64) {
        let starts: Vec<u64> = self
            .segments
            .keys()
            .copied()
            .filter(|s| s + SEGMENT <= pos)
            .collect();
        for start in starts {
            self.segments.remove(&start);
            self.dirty.remove(&start);
            if let Err(e) = std::fs::remove_file(self.dir.join(format!("{start:020}"))) {
                tracing::warn!(error = %e, "cannot delete an old timer-log segment");
            }
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Checkpoint {
    /// Slots below this one are delivered durably.
    done: i64,
    /// Next `%SCHEDULE%` queue offset to dispatch (matches `log_len`).
    dispatched: u64,
    /// Timer-log bytes covered (fsynced before the checkpoint was written).
    log_len: u64,
    /// Timer-log bytes before this are dead (every slot they point to is done).
    live_from: u64,
}

struct Wheel {
    heads: Vec<u64>,
    /// Next slot to fire.
    fired: i64,
    /// Slots below this one are delivered durably.
    done: i64,
    dispatched: u64,
    log: Log,
    /// (fired, log length) samples: log bytes before a sample whose `fired + slots - 1` is
    /// below `done` are dead.
    marks: VecDeque<(i64, u64)>,
    live_from: u64,
    pending: u64,
    /// Cancel records dispatched, by `%SCHEDULE%` offset: whether they came in time.
    cancels: HashMap<u64, bool>,
}

struct Inner {
    store: Arc<Store>,
    dir: PathBuf,
    slot_ms: i64,
    slots: i64,
    queues: Arc<QueueCount>,
    wheel: Mutex<Wheel>,
    /// Wakes the dispatcher (new `%SCHEDULE%` records) and cancel waiters.
    dispatch_cv: Condvar,
    /// Wakes the scheduler (an entry for the next slot, or stop).
    sched_cv: Condvar,
    stop: AtomicBool,
    /// Messages due before this time may have been delivered by the previous run, or by the
    /// set's previous master (moved to the failover's time by [`Timer::trust_from`]).
    started_at: std::sync::atomic::AtomicI64,
    delivered: AtomicU64,
    rolled: AtomicU64,
    cancelled: AtomicU64,
    deduplicated: AtomicU64,
    clock: Clock,
}

/// The scheduled-message service: a dispatcher and a scheduler thread.
pub(crate) struct Timer {
    inner: Arc<Inner>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Wakes the scheduler when a manual clock moves (kept alive here).
    _on_advance: Arc<Waker>,
}

impl Timer {
    /// Opens (recovers) the timer under `dir` and starts its threads.
    pub(crate) fn open(
        store: Arc<Store>,
        dir: PathBuf,
        slot_ms: u64,
        slots: u32,
        queues: Arc<QueueCount>,
        clock: Clock,
    ) -> std::io::Result<Timer> {
        std::fs::create_dir_all(&dir).map_err(|e| {
            std::io::Error::new(e.kind(), format!("creating {}: {e}", dir.display()))
        })?;
        let slot_ms = slot_ms as i64;
        let slots = i64::from(slots);
        let started_at = clock.now_ms();
        let ckpt_path = dir.join("checkpoint.json");
        let ckpt: Option<Checkpoint> = match std::fs::read(&ckpt_path) {
            Ok(b) => Some(
                serde_json::from_slice(&b)
                    .map_err(|e| std::io::Error::other(format!("{}: {e}", ckpt_path.display())))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut log = Log::open(&dir.join("log"), ckpt.map_or(0, |c| c.log_len))?;
        let ckpt = ckpt.unwrap_or(Checkpoint {
            done: started_at / slot_ms,
            // No checkpoint: dispatch the whole queue again (messages the previous run
            // delivered are recognised by id).
            dispatched: store.queue_bounds(SCHEDULE_TOPIC, 0).0,
            log_len: 0,
            live_from: 0,
        });
        log.truncate(ckpt.log_len.min(log.len))?;
        // `vec![0; n]` is zero-allocated: only touched slots take memory.
        let mut heads = vec![0u64; slots as usize];
        let mut pending = 0;
        let mut pos = ckpt.live_from.min(log.len);
        // Rebuild the wheel from the live entries, re-linking those whose slot is past the
        // horizon of the restored position.
        while pos < log.len {
            let Some(mut e) = log.read(pos) else {
                tracing::warn!(pos, "torn timer-log entry; the rest is dispatched again");
                log.truncate(pos)?;
                break;
            };
            if e.slot >= ckpt.done {
                let slot = e.slot.min(ckpt.done + slots - 1);
                let prev = heads[(slot % slots) as usize];
                if slot != e.slot || prev != e.prev {
                    e.slot = slot;
                    e.prev = prev;
                    log.write_at(pos, &e)?;
                }
                heads[(slot % slots) as usize] = pos / ENTRY + 1;
                pending += 1;
            }
            pos += ENTRY;
        }
        let dispatched = if log.len < ckpt.log_len {
            // Torn: re-dispatch from the last checkpoint whose log we still have.
            ckpt.dispatched
                .min(dispatched_upto(&store, &log, ckpt.live_from))
        } else {
            ckpt.dispatched
        };
        log.sync()?;
        tracing::info!(
            pending,
            dispatched,
            slots_behind = (started_at / slot_ms - ckpt.done).max(0),
            "timer recovered"
        );
        let inner = Arc::new(Inner {
            store,
            dir,
            slot_ms,
            slots,
            queues,
            wheel: Mutex::new(Wheel {
                heads,
                fired: ckpt.done,
                done: ckpt.done,
                dispatched,
                marks: VecDeque::from([(ckpt.done, ckpt.live_from)]),
                live_from: ckpt.live_from,
                log,
                pending,
                cancels: HashMap::new(),
            }),
            dispatch_cv: Condvar::new(),
            sched_cv: Condvar::new(),
            stop: AtomicBool::new(false),
            started_at: std::sync::atomic::AtomicI64::new(started_at),
            delivered: AtomicU64::new(0),
            rolled: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            deduplicated: AtomicU64::new(0),
            clock,
        });
        let weak = Arc::downgrade(&inner);
        let on_advance: Arc<Waker> = Arc::new(move || {
            if let Some(i) = weak.upgrade() {
                i.wake_scheduler();
            }
        });
        inner.clock.on_advance(&on_advance);
        let mut threads = Vec::new();
        let i = inner.clone();
        threads.push(
            std::thread::Builder::new()
                .name("quiver-timer-dispatch".into())
                .spawn(move || i.dispatch_loop())?,
        );
        let i = inner.clone();
        threads.push(
            std::thread::Builder::new()
                .name("quiver-timer".into())
                .spawn(move || i.schedule_loop())?,
        );
        Ok(Timer {
            inner,
            threads: Mutex::new(threads),
            _on_advance: on_advance,
        })
    }

    /// New `%SCHEDULE%` records were stored.
    pub(crate) fn notify(&self) {
        self.inner.dispatch_cv.notify_all();
    }

    /// Slots below this one have been delivered (tests wait for the scheduler with it).
    #[cfg(test)]
    fn done_slot(&self) -> i64 {
        lock(&self.inner.wheel).done
    }

    /// Counters.
    /// Messages due before `now_ms` may have been delivered by another broker (this one was
    /// a slave until now): each is looked up by id in its topic before it is delivered.
    pub(crate) fn trust_from(&self, now_ms: i64) {
        self.inner.started_at.fetch_max(now_ms, Ordering::AcqRel);
    }

    pub(crate) fn stats(&self) -> TimerStats {
        let i = &self.inner;
        TimerStats {
            pending: lock(&i.wheel).pending,
            delivered: i.delivered.load(Ordering::Relaxed),
            rolled: i.rolled.load(Ordering::Relaxed),
            cancelled: i.cancelled.load(Ordering::Relaxed),
            deduplicated: i.deduplicated.load(Ordering::Relaxed),
            wheel_bytes: i.slots as u64 * 8,
        }
    }

    /// Cancels the scheduled message `id`. Blocking (appends and waits for dispatch).
    pub(crate) fn cancel(&self, id: u128) -> Result<(), CancelError> {
        let i = &self.inner;
        let records = i.store.messages_by_id(id)?;
        let mut target = None;
        for b in &records {
            let Ok(v) = RecordView::parse_unchecked_crc(b) else {
                continue;
            };
            if v.topic() != SCHEDULE_TOPIC {
                continue;
            }
            if v.property(props::TIMER_CANCEL).is_some() {
                return Ok(()); // already cancelled
            }
            if target.is_none() {
                target = Some(b.clone());
            }
        }
        let Some(rec) = target else {
            return Err(if records.is_empty() {
                CancelError::NotFound(id)
            } else {
                CancelError::AlreadyDue(id)
            });
        };
        let v = RecordView::parse_unchecked_crc(&rec)
            .map_err(|e| CancelError::Io(format!("unreadable scheduled record: {e}")))?;
        let due = deliver_at(&v);
        if due <= i.clock.now_ms() + 2 * i.slot_ms {
            return Err(CancelError::AlreadyDue(id));
        }
        let mut m = Moved::from_record(&v, Bytes::new(), true);
        m.set(props::TIMER_CANCEL, "1");
        let appended = m.append_blocking(&i.store, SCHEDULE_TOPIC, 0)?;
        let offset = appended
            .results
            .first()
            .map(|r| r.queue_offset)
            .ok_or_else(|| CancelError::Io("no receipt for the cancel record".into()))?;
        self.notify();
        // Wait for the dispatcher to place it: it says whether the message's slot was
        // still ahead.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut w = lock(&i.wheel);
        loop {
            if let Some(in_time) = w.cancels.remove(&offset) {
                return if in_time {
                    Ok(())
                } else {
                    Err(CancelError::AlreadyDue(id))
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(CancelError::Io(
                    "the timer did not take the cancel within 5 s; it applies if it arrives in time"
                        .into(),
                ));
            }
            w = i
                .dispatch_cv
                .wait_timeout(w, left.min(Duration::from_millis(20)))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Stops the threads and writes a last checkpoint.
    pub(crate) fn close(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.dispatch_cv.notify_all();
        self.inner.wake_scheduler();
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
        if let Err(e) = self.inner.checkpoint() {
            tracing::warn!(error = %e, "cannot write the timer checkpoint");
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.dispatch_cv.notify_all();
        self.inner.wake_scheduler();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The due time of a `%SCHEDULE%` record (at once when missing or unreadable).
fn deliver_at(v: &RecordView<'_>) -> i64 {
    v.property(props::DELIVER_AT)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// One past the highest `%SCHEDULE%` queue offset referenced by log entries from `from`.
fn dispatched_upto(store: &Store, log: &Log, from: u64) -> u64 {
    let mut best = store.queue_bounds(SCHEDULE_TOPIC, 0).0;
    let mut pos = from;
    while let Some(e) = log.read(pos) {
        if let Ok(b) = store.message_at(e.phys) {
            if let Ok(v) = RecordView::parse_unchecked_crc(&b) {
                best = best.max(v.queue_offset() + 1);
            }
        }
        pos += ENTRY;
    }
    best
}

impl Inner {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Wakes the scheduler: time moved or it must stop. Under the wheel lock, which the
    /// scheduler reads the time under, so the wake-up cannot fall between its look and its
    /// wait.
    fn wake_scheduler(&self) {
        let _w = lock(&self.wheel);
        self.sched_cv.notify_all();
    }

    /// Waits on the scheduler's condition: `wait` of real time (`None`: until woken).
    fn sched_wait<'a>(
        &self,
        w: MutexGuard<'a, Wheel>,
        wait: Option<Duration>,
    ) -> MutexGuard<'a, Wheel> {
        if self.stopping() {
            return w;
        }
        match wait {
            Some(d) => {
                self.sched_cv
                    .wait_timeout(w, d)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => self.sched_cv.wait(w).unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Waits before retrying a store that refused a message (woken early by stop).
    fn retry_pause(&self) {
        let w = lock(&self.wheel);
        drop(self.sched_wait(w, Some(RETRY_PAUSE)));
    }

    /// Waits until the clock reads `at` (or stop).
    fn wait_until(&self, at: i64) {
        let mut w = lock(&self.wheel);
        loop {
            let left = at - self.clock.now_ms();
            if left <= 0 || self.stopping() {
                return;
            }
            w = self.sched_wait(w, self.clock.real_wait(left));
        }
    }

    /// Reads `%SCHEDULE%` in order and places each record in the wheel.
    fn dispatch_loop(self: Arc<Self>) {
        while !self.stopping() {
            let from = lock(&self.wheel).dispatched;
            let r = self.store.get_messages(
                SCHEDULE_TOPIC,
                0,
                from,
                ReadLimits::new(1024, 8 << 20, 1024),
                |_| true,
            );
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "timer cannot read %SCHEDULE%; retrying");
                    self.idle(Duration::from_secs(1));
                    continue;
                }
            };
            match r.status {
                GetStatus::Found | GetStatus::NoMatch => {
                    let mut failed = None;
                    {
                        let mut w = lock(&self.wheel);
                        for m in &r.messages {
                            if let Err(e) =
                                self.place(&mut w, m.queue_offset, m.phys_offset, &m.bytes)
                            {
                                failed = Some(e);
                                break;
                            }
                        }
                        if r.messages.is_empty() {
                            w.dispatched = r.next_offset;
                        }
                    }
                    self.dispatch_cv.notify_all();
                    if let Some(e) = failed {
                        tracing::error!(error = %e, "timer log write failed; retrying");
                        self.idle(Duration::from_secs(1));
                    }
                }
                GetStatus::OffsetTooSmall => {
                    tracing::error!(
                        from,
                        min = r.min_offset,
                        "scheduled messages were deleted by retention before they were due"
                    );
                    lock(&self.wheel).dispatched = r.next_offset;
                }
                GetStatus::NoNewMessages | GetStatus::OffsetOverflow => {
                    if r.status == GetStatus::OffsetOverflow {
                        lock(&self.wheel).dispatched = r.max_offset;
                    }
                    self.idle(Duration::from_millis(50));
                }
            }
        }
    }

    fn idle(&self, d: Duration) {
        let w = lock(&self.wheel);
        if !self.stopping() {
            let _ = self.dispatch_cv.wait_timeout(w, d);
        }
    }

    fn place(
        &self,
        w: &mut Wheel,
        queue_offset: u64,
        phys: u64,
        rec: &Bytes,
    ) -> std::io::Result<()> {
        let Ok(v) = RecordView::parse_unchecked_crc(rec) else {
            w.dispatched = queue_offset + 1;
            return Ok(());
        };
        let due = deliver_at(&v);
        let cancel = v.property(props::TIMER_CANCEL).is_some();
        let due_slot = due.div_euclid(self.slot_ms);
        let slot = due_slot.clamp(w.fired, w.fired + self.slots - 1);
        let idx = (slot % self.slots) as usize;
        let e = Entry {
            deliver_at: due,
            slot,
            phys,
            size: rec.len() as u32,
            kind: if cancel { KIND_CANCEL } else { KIND_MESSAGE },
            prev: w.heads[idx],
            id: v.msg_id(),
        };
        let pos = w.log.push(&e)?;
        w.heads[idx] = pos / ENTRY + 1;
        w.pending += 1;
        w.dispatched = queue_offset + 1;
        if cancel {
            if w.cancels.len() >= 4096 {
                w.cancels.clear(); // nobody waits for these any more
            }
            w.cancels.insert(queue_offset, due_slot >= w.fired);
        }
        if slot == w.fired {
            self.sched_cv.notify_all();
        }
        Ok(())
    }

    /// Fires slots as their time comes; checkpoints once a second.
    fn schedule_loop(self: Arc<Self>) {
        let mut last_ckpt = self.clock.instant();
        let mut last_mark = last_ckpt;
        while !self.stopping() {
            let now = self.clock.instant();
            if now.duration_since(last_ckpt) >= CHECKPOINT_EVERY {
                if now.duration_since(last_mark) >= MARK_EVERY {
                    let mut w = lock(&self.wheel);
                    let mark = (w.fired, w.log.len);
                    w.marks.push_back(mark);
                    last_mark = now;
                }
                if let Err(e) = self.checkpoint() {
                    tracing::error!(error = %e, "cannot write the timer checkpoint");
                }
                last_ckpt = now;
            }
            let (slot, head) = {
                let mut w = lock(&self.wheel);
                let now = self.clock.now_ms();
                let start = w.fired * self.slot_ms;
                if start > now {
                    // Until the slot starts (woken early by new entries for it, a manual
                    // clock moving, or stop).
                    let wait = self
                        .clock
                        .real_wait(start - now)
                        .map(|d| d.min(SCHED_WAIT_MAX));
                    drop(self.sched_wait(w, wait));
                    continue;
                }
                let s = w.fired;
                let idx = (s % self.slots) as usize;
                let head = std::mem::take(&mut w.heads[idx]);
                w.fired += 1;
                (s, head)
            };
            self.fire(slot, head);
            lock(&self.wheel).done = slot + 1;
        }
    }

    fn fire(&self, slot: i64, head: u64) {
        if head == 0 {
            return;
        }
        let mut entries = Vec::new();
        {
            let w = lock(&self.wheel);
            let mut n = head;
            while n != 0 {
                let Some(e) = w.log.read((n - 1) * ENTRY) else {
                    tracing::error!(slot, entry = n - 1, "unreadable timer-log entry");
                    break;
                };
                if e.prev >= n {
                    break; // links point backwards
                }
                n = e.prev;
                entries.push(e);
            }
        }
        let count = entries.len() as u64;
        entries.reverse(); // arrival order
        entries.sort_by_key(|e| e.deliver_at); // stable
        let end = (slot + 1) * self.slot_ms;
        let cancels: HashSet<u128> = entries
            .iter()
            .filter(|e| e.kind == KIND_CANCEL && e.deliver_at < end)
            .map(|e| e.id)
            .collect();
        let mut waits: Vec<PendingAppend> = Vec::new();
        for e in &entries {
            if e.deliver_at >= end {
                while !self.roll(e) && !self.stopping() {
                    self.retry_pause();
                }
                continue;
            }
            if e.kind == KIND_CANCEL {
                continue;
            }
            if cancels.contains(&e.id) {
                self.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // Exact time within the slot (the slot fired at its start).
            self.wait_until(e.deliver_at);
            // A store that cannot take the message (disk full...) is retried, never skipped:
            // later slots wait.
            loop {
                match self.deliver(e) {
                    Ok(Some(p)) => waits.push(p),
                    Ok(None) => {}
                    Err(()) if !self.stopping() => {
                        self.retry_pause();
                        continue;
                    }
                    Err(()) => {}
                }
                break;
            }
        }
        for p in waits {
            if let Err(e) = p.wait() {
                tracing::error!(error = %e, "a due scheduled message may not be durable");
            }
        }
        let mut w = lock(&self.wheel);
        w.pending = w.pending.saturating_sub(count);
    }

    /// Reads the `%SCHEDULE%` record of an entry.
    fn record(&self, e: &Entry) -> Option<Bytes> {
        match self.store.message_at(e.phys) {
            Ok(b) if RecordView::parse_unchecked_crc(&b).is_ok_and(|v| v.msg_id() == e.id) => {
                Some(b)
            }
            Ok(_) | Err(_) => {
                tracing::error!(
                    id = %format!("{:032x}", e.id),
                    phys = e.phys,
                    "scheduled message record is gone (retention?); it cannot be delivered"
                );
                None
            }
        }
    }

    /// True when the previous run already stored this stage of the message.
    fn already_done(&self, e: &Entry, v: &RecordView<'_>, topic: &str) -> bool {
        if e.deliver_at >= self.started_at.load(Ordering::Acquire) {
            return false;
        }
        let Ok(found) = self.store.messages_by_id(e.id) else {
            return false;
        };
        let done = found.iter().any(|b| {
            RecordView::parse_unchecked_crc(b).is_ok_and(|r| {
                r.topic() == topic
                    && r.store_timestamp() >= v.store_timestamp()
                    && r.phys_offset() != v.phys_offset()
                    && r.reconsume_times() == v.reconsume_times()
            })
        });
        if done {
            self.deduplicated.fetch_add(1, Ordering::Relaxed);
        }
        done
    }

    /// Re-queues an entry due beyond this slot; false when the store refused (retry).
    fn roll(&self, e: &Entry) -> bool {
        let Some(b) = self.record(e) else { return true };
        let Ok(v) = RecordView::parse_unchecked_crc(&b) else {
            return true;
        };
        if self.already_done(e, &v, SCHEDULE_TOPIC) {
            return true;
        }
        let body = super::body_of(&b).map(|(b, _)| b).unwrap_or_default();
        let m = Moved::from_record(&v, body, true);
        match m.append_blocking(&self.store, SCHEDULE_TOPIC, 0) {
            Ok(_) => {
                self.rolled.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot re-queue a scheduled message; retrying");
                false
            }
        }
    }

    /// Appends a due message to its topic. `Err` when the store refused it (retry).
    #[allow(clippy::result_unit_err)]
    fn deliver(&self, e: &Entry) -> Result<Option<PendingAppend>, ()> {
        let Some(b) = self.record(e) else {
            return Ok(None);
        };
        let Ok(v) = RecordView::parse_unchecked_crc(&b) else {
            return Ok(None);
        };
        let Some(topic) = v.property(props::REAL_TOPIC) else {
            tracing::error!("scheduled record without REAL_TOPIC; dropped");
            return Ok(None);
        };
        let qid: u32 = v
            .property(props::REAL_QID)
            .and_then(|q| q.parse().ok())
            .unwrap_or(0);
        let Some(queues) = (self.queues)(topic) else {
            tracing::warn!(%topic, id = %format!("{:032x}", e.id), "topic of a due scheduled message no longer exists; dropped");
            return Ok(None);
        };
        if self.already_done(e, &v, topic) {
            return Ok(None);
        }
        let body = super::body_of(&b).map(|(b, _)| b).unwrap_or_default();
        let m = Moved::from_record(&v, body, false);
        match m.append(&self.store, topic, qid % queues.max(1)) {
            Ok(p) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                Ok(Some(p))
            }
            // A slave's store takes only its master's records: the master delivers it, and
            // that delivery is replicated here.
            Err(crate::store::StoreError::Replica) => {
                tracing::debug!(%topic, "due scheduled message left to the set's master");
                Err(())
            }
            Err(err) => {
                tracing::error!(%topic, error = %err, "cannot deliver a due scheduled message; retrying");
                Err(())
            }
        }
    }

    fn checkpoint(&self) -> std::io::Result<()> {
        let ckpt = {
            let mut w = lock(&self.wheel);
            w.log.sync()?;
            // Free timer-log segments no live slot points into.
            while let Some(&(fired, len)) = w.marks.front() {
                if fired + self.slots - 1 < w.done {
                    w.live_from = w.live_from.max(len);
                    w.marks.pop_front();
                } else {
                    break;
                }
            }
            let live_from = w.live_from;
            w.log.free_below(live_from);
            Checkpoint {
                done: w.done,
                dispatched: w.dispatched,
                log_len: w.log.len,
                live_from,
            }
        };
        let bytes = serde_json::to_vec(&ckpt).map_err(std::io::Error::other)?;
        write_file(&self.dir.join("checkpoint.json"), &bytes)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_detect_damage() {
        let e = Entry {
            deliver_at: 1_700_000_000_123,
            slot: 17_000_000_001,
            phys: 4096,
            size: 300,
            kind: KIND_MESSAGE,
            prev: 7,
            id: 0x1234_5678_9abc_def0_1122_3344_5566_7788,
        };
        let mut b = e.encode();
        assert_eq!(Entry::decode(&b), Some(e));
        b[3] ^= 1;
        assert_eq!(Entry::decode(&b), None);
        assert_eq!(Entry::decode(&[0u8; 64]), None, "zeroes are not an entry");
    }
}

#[cfg(test)]
mod clock_tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::StoreConfig;
    use quiver_protocol::NewMessage;

    const SLOT_MS: i64 = 100;

    /// Stores a scheduled message for topic `T` due at `due` (clock ms).
    fn schedule(store: &Store, id: u128, due: i64) {
        let due = due.to_string();
        let props = [
            (props::REAL_TOPIC, "T"),
            (props::REAL_QID, "0"),
            (props::DELIVER_AT, due.as_str()),
        ];
        let m = NewMessage {
            msg_id: id,
            flags: 0,
            born_timestamp: 0,
            born_host: "127.0.0.1:1".parse().unwrap(),
            reconsume_times: 0,
            tag: "",
            keys: &[],
            properties: &props,
            body: b"later",
        };
        store
            .append(SCHEDULE_TOPIC, 0, std::slice::from_ref(&m))
            .unwrap()
            .wait()
            .unwrap();
    }

    fn delivered(store: &Store) -> Vec<u128> {
        let r = store
            .get_messages("T", 0, 0, ReadLimits::new(64, 1 << 20, 64), |_| true)
            .unwrap();
        r.messages.iter().map(|m| m.view().msg_id()).collect()
    }

    /// Waits for something the timer's threads do (no time passes on the manual clock).
    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_scheduled_message_is_delivered_when_the_clock_reaches_its_due_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(StoreConfig::small_for_tests(dir.path())).unwrap());
        // Slot-aligned start; a clock far from the system's shows nothing reads the latter.
        let time = ManualClock::at(1_000_000 * SLOT_MS);
        let queues: Arc<QueueCount> = Arc::new(|t: &str| (t == "T").then_some(1));
        let timer = Timer::open(
            store.clone(),
            dir.path().join("timer"),
            SLOT_MS as u64,
            64,
            queues,
            time.clock(),
        )
        .unwrap();
        let due = time.now_ms() + 10 * SLOT_MS; // at a slot's start
        schedule(&store, 1, due);
        schedule(&store, 2, due + 3 * SLOT_MS);
        timer.notify();
        wait_for("both placed in the wheel", || timer.stats().pending == 2);

        time.advance(Duration::from_millis((due - 1 - time.now_ms()) as u64));
        wait_for("the slots before the due one fired", || {
            timer.done_slot() * SLOT_MS >= due
        });
        assert!(delivered(&store).is_empty(), "nothing is due 1 ms early");

        time.advance(Duration::from_millis(1));
        wait_for("the first delivery", || !delivered(&store).is_empty());
        assert_eq!(delivered(&store), vec![1]);
        let r = store
            .get_messages("T", 0, 0, ReadLimits::new(1, 1 << 20, 1), |_| true)
            .unwrap();
        let v = r.messages[0].view();
        assert!(
            v.property(props::REAL_TOPIC).is_none(),
            "staging properties go"
        );
        assert_eq!(
            v.property(props::DELIVER_AT),
            Some(due.to_string().as_str())
        );

        time.advance(Duration::from_secs(1));
        wait_for("the second delivery", || delivered(&store).len() == 2);
        assert_eq!(delivered(&store), vec![1, 2]);
        assert_eq!(timer.stats().delivered, 2);
        timer.close();
    }

    #[test]
    fn a_message_due_beyond_the_horizon_is_rolled_and_delivered_once_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(StoreConfig::small_for_tests(dir.path())).unwrap());
        let time = ManualClock::at(2_000_000 * SLOT_MS);
        let queues: Arc<QueueCount> = Arc::new(|t: &str| (t == "T").then_some(1));
        // 16 slots of 100 ms: a horizon of 1.6 s.
        let timer = Timer::open(
            store.clone(),
            dir.path().join("timer"),
            SLOT_MS as u64,
            16,
            queues,
            time.clock(),
        )
        .unwrap();
        let due = time.now_ms() + 50 * SLOT_MS; // 5 s: beyond the horizon
        schedule(&store, 3, due);
        timer.notify();
        wait_for("placed in the wheel", || timer.stats().pending == 1);
        // Past the horizon once: the message is re-queued, not delivered.
        time.advance(Duration::from_millis(16 * SLOT_MS as u64));
        wait_for("rolled and placed again", || {
            let st = timer.stats();
            st.rolled == 1 && st.pending == 1 && timer.done_slot() * SLOT_MS > time.now_ms()
        });
        assert!(delivered(&store).is_empty(), "not due yet");
        time.advance(Duration::from_millis((due - time.now_ms()) as u64));
        // Rolled again when its last pre-due slot fires, it may reach the wheel after the
        // scheduler (catching up with the jump) passed its slot: then it goes out at the start
        // of the next slot to fire, as a message arriving late does (SEMANTICS.md, timing).
        wait_for("delivered, or waiting in the next slot", || {
            !delivered(&store).is_empty()
                || (timer.stats().pending == 1 && timer.done_slot() * SLOT_MS > time.now_ms())
        });
        if delivered(&store).is_empty() {
            time.advance(Duration::from_millis(SLOT_MS as u64));
        }
        wait_for("the delivery", || !delivered(&store).is_empty());
        wait_for("the wheel caught up with the clock", || {
            timer.done_slot() * SLOT_MS > time.now_ms()
        });
        assert_eq!(delivered(&store), vec![3], "delivered once");
        timer.close();
    }
}
