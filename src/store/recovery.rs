//! Opening the store: the checkpoint, the commit-log scan from it (torn tails, incomplete
//! batches, missing segments), consume-queue recovery and re-dispatch (docs/STORAGE.md §5).
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::Instant;

use super::checkpoint::{AbortMarker, Checkpoint};
use super::commitlog::{CommitLog, Step};
use super::consume_queue::ConsumeQueue;
use super::index::Index;
use super::mapped::SpaceCheck;
use crate::clock::Clock;

use super::{
    FlushState, Inner, RecoveryReport, Store, StoreConfig, StoreError, Writer, FLAG_BATCH_CONT,
};

impl Store {
    /// Opens (creating if needed) and recovers the store in `cfg.dir`, then starts its flush and
    /// housekeeping threads.
    pub fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        Self::open_with_clock(cfg, Clock::system())
    }

    /// [`Store::open`], stamping records and checkpoints with `clock`'s time.
    pub fn open_with_clock(cfg: StoreConfig, clock: Clock) -> Result<Store, StoreError> {
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
        let seg_end = log.segments().last().map_or(min, |s| s.base() + s.len());
        let scan = scan_tail(&log, scan_from, seg_end, unclean);
        report.records_scanned = scan.records;
        report.truncated_at = scan.truncated_at;
        let (end, zero_tail) = (scan.end, scan.zero_tail);
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
        let epochs = super::epochs::EpochFile::open(&cfg.dir, end)?;

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
            clock,
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
            flush_observer: RwLock::new(None),
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
            replica: AtomicBool::new(false),
            epochs: Mutex::new(epochs),
            quiesce: Mutex::new(()),
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
}

/// What the scan past the checkpoint found (docs/STORAGE.md §5.3 steps 5-7).
#[derive(Debug, PartialEq, Eq)]
struct TailScan {
    /// The valid end of the log: past the last whole record, before an incomplete batch.
    end: u64,
    /// Records validated (a cut batch's records included).
    records: u64,
    /// Where and why a torn or invalid tail starts (not for plain zeros).
    truncated_at: Option<(u64, String)>,
    /// Bytes from `end` on must be cleared (an invalid tail, or any tail after an unclean stop).
    zero_tail: bool,
}

/// Steps through the log from `scan_from` up to `seg_end` with full validation (CRC and
/// sections), tracking atomic batches: finds the valid end of the log.
fn scan_tail(log: &CommitLog, scan_from: u64, seg_end: u64, unclean: bool) -> TailScan {
    let min = log.min_offset();
    let mut pos = scan_from;
    let mut records = 0;
    let mut truncated_at = None;
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
                records += 1;
                pos = p + len as u64;
            }
            Step::NextSegment(next) => pos = next,
            Step::End { pos: p, reason } => {
                // After an unclean stop, bytes past the end may hold pieces of unflushed
                // writes even where the end itself reads as zeros: clear them too.
                zero_tail = unclean || reason != "zeros";
                if reason != "zeros" {
                    truncated_at = Some((p, reason));
                }
                break;
            }
        }
    }
    // A batch is atomic: a batch cut short by the crash goes entirely.
    if let Some(start) = batch_start {
        truncated_at = Some((start, "incomplete batch".into()));
        pos = start;
    }
    TailScan {
        end: pos.min(seg_end.max(min)),
        records,
        truncated_at,
        zero_tail,
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
    pub(super) fn last_record_before(&self, end: u64) -> Option<i64> {
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
}

#[cfg(test)]
mod tests {
    use super::super::tests::{append, read_all, Msg};
    use super::*;
    use crate::store::FlushMode;

    fn scan_log(dir: &Path, cfg: &StoreConfig, from: u64, unclean: bool) -> TailScan {
        let space = SpaceCheck::new(dir.to_path_buf(), cfg.disk_space.clone(), 0);
        let log = CommitLog::open(dir.join("commitlog"), cfg.segment_size, space).unwrap();
        let seg_end = log.segments().last().map_or(0, |s| s.base() + s.len());
        scan_tail(&log, from, seg_end, unclean)
    }

    /// The scan on its own, over a log a crashed store left: it ends at zeros after the last
    /// record, counts only what it stepped over, and cuts a batch whose last record is damaged
    /// back to the batch's start.
    #[test]
    fn the_tail_scan_finds_the_end_and_cuts_an_incomplete_batch() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::small_for_tests(dir.path());
        let (singles_end, batch_end);
        {
            let store = Store::open(cfg.clone()).unwrap();
            for i in 0..3u128 {
                append(&store, "T", 0, &[Msg::new(i, &[1u8; 100])]).unwrap();
            }
            singles_end = store.log_offsets().1;
            let batch: Vec<Msg> = (10..14).map(|i| Msg::new(i, &[2u8; 200])).collect();
            batch_end = append(&store, "T", 0, &batch).unwrap().end;
            store.simulate_crash();
        }
        let whole = TailScan {
            end: batch_end,
            records: 7,
            truncated_at: None,
            zero_tail: false,
        };
        assert_eq!(scan_log(dir.path(), &cfg, 0, false), whole);
        let after_unclean = scan_log(dir.path(), &cfg, 0, true);
        assert!(
            after_unclean.zero_tail,
            "an unclean stop clears what lies past the end"
        );
        assert_eq!(after_unclean.end, batch_end);
        assert_eq!(scan_log(dir.path(), &cfg, singles_end, false).records, 4);

        let seg = last_segment(dir.path());
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[(batch_end % cfg.segment_size) as usize - 5] ^= 0xff;
        std::fs::write(&seg, bytes).unwrap();
        let cut = scan_log(dir.path(), &cfg, 0, false);
        assert_eq!(cut.end, singles_end);
        assert_eq!(
            cut.records, 6,
            "the batch's intact records were stepped over"
        );
        assert_eq!(
            cut.truncated_at,
            Some((singles_end, "incomplete batch".to_string()))
        );
        assert!(cut.zero_tail);
    }

    fn last_segment(dir: &std::path::Path) -> std::path::PathBuf {
        let mut segs: Vec<_> = std::fs::read_dir(dir.join("commitlog"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        segs.sort();
        segs.pop().unwrap()
    }

    #[test]
    fn torn_tail_is_truncated_and_reported_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::small_for_tests(dir.path());
        let (end, last_len);
        {
            let store = Store::open(cfg.clone()).unwrap();
            let mut last = None;
            for i in 0..10u128 {
                last = Some(
                    append(&store, "T", 0, &[Msg::new(i, &[9u8; 100])])
                        .unwrap()
                        .results[0],
                );
            }
            end = store.log_offsets().1;
            last_len = last.unwrap().size as usize;
            store.simulate_crash();
        }
        // A half-written record after the valid end: the start of a real record (plausible
        // header), cut short by the crash.
        let seg = last_segment(dir.path());
        let mut bytes = std::fs::read(&seg).unwrap();
        let at = (end % cfg.segment_size) as usize;
        let copy: Vec<u8> = bytes[at - last_len..at - last_len + 150].to_vec();
        bytes[at..at + 150].copy_from_slice(&copy);
        std::fs::write(&seg, bytes).unwrap();

        let store = Store::open(cfg).unwrap();
        let rep = store.recovery_report();
        assert!(rep.unclean);
        let (cut, reason) = rep.truncated_at.clone().expect("torn tail reported");
        assert_eq!(cut, end, "{reason}");
        assert_eq!(read_all(&store, "T", 0).len(), 10);
        let a = append(&store, "T", 0, &[Msg::new(99, b"after")]).unwrap();
        assert_eq!(a.results[0].queue_offset, 10);
        assert_eq!(
            a.results[0].phys_offset, end,
            "the torn bytes were overwritten"
        );
        assert_eq!(read_all(&store, "T", 0)[10].2, b"after");
    }

    #[test]
    fn a_batch_cut_by_a_crash_disappears_entirely() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::small_for_tests(dir.path());
        let batch_end;
        {
            let store = Store::open(cfg.clone()).unwrap();
            append(&store, "T", 0, &[Msg::new(1, b"single")]).unwrap();
            store.close().unwrap();
            let store = Store::open(cfg.clone()).unwrap();
            let batch: Vec<Msg> = (10..14).map(|i| Msg::new(i, &[3u8; 200])).collect();
            batch_end = append(&store, "T", 0, &batch).unwrap().end;
            store.simulate_crash();
        }
        // Damage the last record of the batch: the three before it are valid but must go too.
        let seg = last_segment(dir.path());
        let mut bytes = std::fs::read(&seg).unwrap();
        let at = (batch_end % cfg.segment_size) as usize - 5;
        bytes[at] ^= 0xff;
        std::fs::write(&seg, bytes).unwrap();
        let store = Store::open(cfg).unwrap();
        assert_eq!(
            store
                .recovery_report()
                .truncated_at
                .as_ref()
                .map(|t| t.1.as_str()),
            Some("incomplete batch")
        );
        let got = read_all(&store, "T", 0);
        assert_eq!(got.len(), 1, "only the single message survives");
        assert_eq!(
            append(&store, "T", 0, &[Msg::new(2, b"x")])
                .unwrap()
                .results[0]
                .queue_offset,
            1
        );
    }

    #[test]
    fn reopen_after_crash_keeps_everything_acked_in_sync_mode() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::small_for_tests(dir.path());
        cfg.flush_mode = FlushMode::Sync;
        {
            let store = Store::open(cfg.clone()).unwrap();
            for i in 0..100u128 {
                append(&store, "T", (i % 3) as u32, &[Msg::new(i, &[1u8; 700])]).unwrap();
            }
            store.simulate_crash();
        }
        let store = Store::open(cfg).unwrap();
        assert!(store.recovery_report().unclean);
        let total: usize = (0..3).map(|q| read_all(&store, "T", q).len()).sum();
        assert_eq!(total, 100);
        for i in 0..100u128 {
            assert!(
                store.message_by_id(i).unwrap().is_some(),
                "id {i} findable after recovery"
            );
        }
    }
}
