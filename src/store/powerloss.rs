//! Power loss, simulated (tests only; compiled out of every other build).
//!
//! A process crash (`Store::simulate_crash`, `kill -9`) keeps the page cache, so it cannot show
//! what an unsynced write costs. This seam can, in the manner of redb's crash-consistency
//! tests: while a [`PowerSim`] covers a directory, every `MappedFile::flush` (msync) and
//! `zero_from` records the synced pages of its file (read back through the file descriptor, so
//! the copy races with nobody), and [`PowerSim::restore`] turns every data file back into
//! its last synced image: pages never synced become zeros, whatever the mapping held. From
//! [`PowerSim::cut`] on, every durability step (msync, file creation or deletion, directory
//! sync, checkpoint, abort marker) fails as if the machine were gone, so the store
//! acknowledges nothing more; its threads are then stopped with `simulate_crash`.
//!
//! What it does not model: file-system metadata is taken as durable when the call returns
//! (names are fsynced by the store anyway), and pages not synced never reach the disk early.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::error::StoreError;
use super::mapped::{parse_file_name, PAGE};

static SIMS: Mutex<Vec<Arc<PowerSim>>> = Mutex::new(Vec::new());

/// The simulated disk of one store directory.
pub(crate) struct PowerSim {
    root: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    cut: bool,
    /// Last synced image of each data file (absent: never synced, reads as zeros).
    images: HashMap<PathBuf, Vec<u8>>,
}

fn find(path: &Path) -> Option<Arc<PowerSim>> {
    let sims = SIMS.lock().unwrap_or_else(|p| p.into_inner());
    sims.iter().find(|s| path.starts_with(&s.root)).cloned()
}

fn lost(path: &Path) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other("power lost (simulated)"),
    }
}

/// Fails once the power of the directory holding `path` is cut.
pub(crate) fn check(path: &Path) -> Result<(), StoreError> {
    match find(path) {
        Some(sim) if sim.is_cut() => Err(lost(path)),
        _ => Ok(()),
    }
}

/// Records that `off..off + len` of `file` is on disk (whole pages, as the kernel writes
/// them); fails instead once the power is cut.
pub(crate) fn capture(path: &Path, file: &File, off: u64, len: u64) -> Result<(), StoreError> {
    let Some(sim) = find(path) else {
        return Ok(());
    };
    let mut st = sim.state.lock().unwrap_or_else(|p| p.into_inner());
    if st.cut {
        return Err(lost(path));
    }
    let file_len = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
    let from = off & !(PAGE - 1);
    let to = (off + len)
        .div_ceil(PAGE)
        .saturating_mul(PAGE)
        .min(file_len);
    let image = st
        .images
        .entry(path.to_path_buf())
        .or_insert_with(|| vec![0; file_len as usize]);
    file.read_exact_at(&mut image[from as usize..to as usize], from)
        .map_err(|e| StoreError::io(path, e))
}

impl PowerSim {
    /// Covers `root` (a test's own directory) until the returned value is dropped.
    pub(crate) fn install(root: &Path) -> Arc<PowerSim> {
        let sim = Arc::new(PowerSim {
            root: root.to_path_buf(),
            state: Mutex::new(State::default()),
        });
        SIMS.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sim.clone());
        sim
    }

    /// Removes the simulation (the files stay as they are).
    pub(crate) fn uninstall(&self) {
        SIMS.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| s.root != self.root);
    }

    pub(crate) fn is_cut(&self) -> bool {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).cut
    }

    /// Cuts the power, returning what `observe` sees at that instant (no sync can complete
    /// between the cut and the observation).
    pub(crate) fn cut<T>(&self, observe: impl FnOnce() -> T) -> T {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.cut = true;
        observe()
    }

    /// After the store's threads stopped: every data file becomes its last synced image (zeros
    /// where never synced), and the power comes back. Returns how many files were rewritten.
    pub(crate) fn restore(&self) -> std::io::Result<usize> {
        self.restore_with(|_, _| false)
    }

    /// Like [`Self::restore`], but a page for which `early(file, page)` is true holds what the
    /// page cache held at the cut instead: the kernel wrote it back before the power went,
    /// unasked and in no particular order.
    pub(crate) fn restore_with(
        &self,
        mut early: impl FnMut(&Path, usize) -> bool,
    ) -> std::io::Result<usize> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut files = Vec::new();
        collect_data_files(&self.root, &mut files)?;
        for path in &files {
            let current = std::fs::read(path)?;
            let len = current.len();
            let mut image = st.images.remove(path).unwrap_or_else(|| vec![0; len]);
            assert_eq!(image.len(), len, "{} changed size", path.display());
            for (i, page) in image.chunks_mut(PAGE as usize).enumerate() {
                if early(path, i) {
                    let at = i * PAGE as usize;
                    page.copy_from_slice(&current[at..at + page.len()]);
                }
            }
            std::fs::write(path, &image)?;
            File::open(path)?.sync_all()?;
            // What is on disk now is the durable state of the next run.
            st.images.insert(path.clone(), image);
        }
        st.images.retain(|p, _| files.contains(p));
        st.cut = false;
        Ok(files.len())
    }
}

fn collect_data_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect_data_files(&path, out)?;
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_file_name)
            .is_some()
        {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use proptest::prelude::*;

    use super::super::mapped::{MappedFile, SpaceCheck};
    use super::super::*;
    use super::*;

    #[test]
    fn unsynced_pages_revert_and_synced_pages_stay() {
        let dir = tempfile::tempdir().unwrap();
        let sim = PowerSim::install(dir.path());
        let space = SpaceCheck::new(dir.path().into(), DiskSpaceSource::statvfs(), 0);
        let f = MappedFile::create(dir.path(), 0, 4 * PAGE, &space).unwrap();
        // SAFETY (whole test): one thread touches the mapping.
        unsafe { f.write(10, b"synced") };
        f.flush(10, 6).unwrap();
        unsafe { f.write(PAGE as usize + 5, b"lost") };
        unsafe { f.write(20, b"same page, unsynced") };
        sim.cut(|| ());
        assert!(
            f.flush(0, 4 * PAGE as usize).is_err(),
            "no sync after the cut"
        );
        drop(f);
        assert_eq!(sim.restore().unwrap(), 1);
        let bytes = std::fs::read(dir.path().join("00000000000000000000")).unwrap();
        assert_eq!(&bytes[10..16], b"synced");
        assert_eq!(
            &bytes[20..39],
            &[0u8; 19],
            "written after the page was synced"
        );
        assert_eq!(&bytes[PAGE as usize + 5..PAGE as usize + 9], &[0u8; 4]);
        sim.uninstall();
    }

    fn host() -> SocketAddr {
        "127.0.0.1:5000".parse().unwrap()
    }

    fn body_of(id: u128, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (id as usize).wrapping_mul(31).wrapping_add(i) as u8)
            .collect()
    }

    /// One append of `n` messages (ids `first..first + n`) to `queue`.
    fn append_batch(
        store: &Store,
        queue: u32,
        first: u128,
        n: usize,
        len: usize,
    ) -> Result<PendingAppend, StoreError> {
        let bodies: Vec<Vec<u8>> = (0..n).map(|i| body_of(first + i as u128, len)).collect();
        let msgs: Vec<NewMessage<'_>> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| NewMessage {
                msg_id: first + i as u128,
                flags: 0,
                born_timestamp: 1,
                born_host: host(),
                reconsume_times: 0,
                tag: "t",
                keys: &[],
                properties: &[],
                body: b,
            })
            .collect();
        store.append("T", queue, &msgs)
    }

    /// Every message of a queue after reopening: queue offset -> (id, body).
    fn survivors(store: &Store, queue: u32) -> BTreeMap<u64, (u128, Vec<u8>)> {
        super::super::tests::read_all(store, "T", queue)
            .into_iter()
            .map(|(offset, id, body)| (offset, (id, body)))
            .collect()
    }

    /// An acknowledged append: its queue, first queue offset, ids and end in the log.
    #[derive(Debug, Clone)]
    struct Acked {
        queue: u32,
        first_offset: u64,
        first_id: u128,
        n: usize,
        len: usize,
        end: u64,
    }

    struct Run {
        acked: Vec<Acked>,
        /// Commit-log offset the store had flushed when the power went.
        flushed_at_cut: u64,
        /// Per queue, how many messages were attempted (acknowledged or in flight).
        attempted: Vec<u64>,
    }

    /// `writers` threads append to their own queue (writer i -> queue i, message ids equal to
    /// queue offsets, from `start[i]`) until the power is cut after `cut_after`; sync-mode
    /// writers wait for durability. Returns what was acknowledged before the cut. The store is
    /// crashed and the disk restored afterwards.
    #[allow(clippy::too_many_arguments)]
    fn run_until_power_loss(
        cfg: &StoreConfig,
        sim: &Arc<PowerSim>,
        start: &[u64],
        batch: usize,
        len: usize,
        cut_after: Duration,
        early_writeback: Option<u64>,
    ) -> Run {
        let writers = start.len() as u32;
        let store = Arc::new(Store::open(cfg.clone()).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (store, stop, sim) = (store.clone(), stop.clone(), sim.clone());
                let first = start[w as usize];
                std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    let mut next = first as u128;
                    while !stop.load(Ordering::Relaxed) {
                        let first_id = ((w as u128) << 64) | next;
                        // Vary the batch size so records straddle pages and segments.
                        let n = 1 + (next as usize % batch);
                        let len = 1 + (next as usize).wrapping_mul(397) % len;
                        next += n as u128;
                        let Ok(pending) = append_batch(&store, w, first_id, n, len) else {
                            break;
                        };
                        let Ok(a) = pending.wait() else { break };
                        // Acknowledged before the cut only if the cut had not happened
                        // when the acknowledgement arrived.
                        if sim.is_cut() {
                            break;
                        }
                        acked.push(Acked {
                            queue: w,
                            first_offset: a.results[0].queue_offset,
                            first_id,
                            n,
                            len,
                            end: a.end,
                        });
                    }
                    (acked, next as u64)
                })
            })
            .collect();
        std::thread::sleep(cut_after);
        let flushed_at_cut = sim.cut(|| store.log_offsets().2);
        stop.store(true, Ordering::Relaxed);
        let mut acked = Vec::new();
        let mut attempted = Vec::new();
        for h in handles {
            let (a, n) = h.join().unwrap();
            acked.extend(a);
            attempted.push(n);
        }
        let store = Arc::into_inner(store).expect("writers are gone");
        store.simulate_crash();
        match early_writeback {
            None => sim.restore().unwrap(),
            Some(seed) => sim
                .restore_with(|path, page| {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    (seed, path, page).hash(&mut h);
                    h.finish().is_multiple_of(2)
                })
                .unwrap(),
        };
        Run {
            acked,
            flushed_at_cut,
            attempted,
        }
    }

    /// What must hold after any power loss: each queue holds a prefix of what its writer
    /// attempted, in order, with intact bodies (no holes, nothing invented). Returns the
    /// survivors per queue.
    fn check_prefixes(store: &Store, run: &Run) -> Vec<BTreeMap<u64, (u128, Vec<u8>)>> {
        let mut all = Vec::new();
        for (q, attempted) in run.attempted.iter().enumerate() {
            let got = survivors(store, q as u32);
            for (i, (off, (id, body))) in got.iter().enumerate() {
                assert_eq!(
                    *off, i as u64,
                    "queue {q}: offsets start at 0 without holes"
                );
                assert_eq!(
                    *id >> 64,
                    q as u128,
                    "queue {q}: a message of another writer"
                );
                assert_eq!(*id as u64, i as u64, "queue {q}: ids in append order");
                assert_eq!(body, &body_of(*id, body.len()), "queue {q}: body of {id}");
            }
            assert!(
                got.len() as u64 <= *attempted,
                "queue {q}: nothing invented"
            );
            all.push(got);
        }
        all
    }

    fn has(got: &[BTreeMap<u64, (u128, Vec<u8>)>], a: &Acked) -> bool {
        (0..a.n).all(|i| {
            let id = a.first_id + i as u128;
            got[a.queue as usize]
                .get(&(a.first_offset + i as u64))
                .is_some_and(|(got_id, body)| *got_id == id && body.len() == a.len)
        })
    }

    /// Reopens after the power loss; the store must open, and take appends where each queue
    /// ends (checked after the survivors were read).
    fn reopen(cfg: &StoreConfig) -> Store {
        let store = Store::open(cfg.clone()).expect("the store opens after a power loss");
        assert!(store.recovery_report().unclean);
        store
    }

    fn append_after_recovery(store: &Store, got: &[BTreeMap<u64, (u128, Vec<u8>)>]) {
        let next = got[0].len() as u128;
        let a = append_batch(store, 0, next, 1, 10).unwrap().wait().unwrap();
        assert_eq!(a.results[0].queue_offset, next as u64);
        assert_eq!(survivors(store, 0).len(), got[0].len() + 1);
    }

    /// Two power losses in a row, the second one hitting a store whose recovery and further
    /// appends may not all be synced yet. After each: the checks above, plus everything that
    /// survived the first loss survives the second.
    #[allow(clippy::too_many_arguments)]
    fn two_power_losses(
        cfg: &StoreConfig,
        sim: &Arc<PowerSim>,
        writers: u32,
        batch: usize,
        len: usize,
        cut_ms: u64,
        early: Option<u64>,
    ) -> Result<(), TestCaseError> {
        let sync = cfg.flush_mode == FlushMode::Sync;
        let mut start = vec![0u64; writers as usize];
        let mut kept = vec![0u64; writers as usize];
        for round in 0..2u64 {
            let run = run_until_power_loss(
                cfg,
                sim,
                &start,
                batch,
                len,
                Duration::from_millis(cut_ms),
                early.map(|e| e ^ round),
            );
            let store = reopen(cfg);
            let got = check_prefixes(&store, &run);
            for a in &run.acked {
                if sync {
                    prop_assert!(has(&got, a), "round {round}: acknowledged, yet lost: {a:?}");
                } else if a.end <= run.flushed_at_cut {
                    prop_assert!(has(&got, a), "round {round}: flushed, yet lost: {a:?}");
                }
            }
            for (q, k) in kept.iter().enumerate() {
                prop_assert!(
                    got[q].len() as u64 >= *k,
                    "round {round}: queue {q} lost what an earlier loss left"
                );
            }
            append_after_recovery(&store, &got);
            // Sync mode acknowledged the extra message; async mode may lose it.
            kept = got.iter().map(|g| g.len() as u64).collect();
            kept[0] += sync as u64;
            start = got.iter().map(|g| g.len() as u64).collect();
            start[0] += 1;
            // No clean close: the next round opens what a kill -9 leaves.
            store.simulate_crash();
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

        /// Sync mode: a power loss at any moment loses no acknowledged message (twice over).
        #[test]
        fn sync_mode_loses_no_acknowledged_message_on_power_loss(
            writers in 1u32..5,
            batch in 1usize..4,
            len in 1usize..3000,
            // Each fsync takes milliseconds: cut late enough for many acknowledgements.
            cut_ms in 5u64..150,
            gather_us in prop_oneof![Just(0u64), Just(200)],
            early in proptest::option::of(any::<u64>()),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let sim = PowerSim::install(dir.path());
            let mut cfg = StoreConfig::small_for_tests(dir.path());
            cfg.flush_mode = FlushMode::Sync;
            cfg.group_commit_wait_us = gather_us;
            cfg.checkpoint_interval_ms = 10;
            two_power_losses(&cfg, &sim, writers, batch, len, cut_ms, early)?;
            sim.uninstall();
        }

        /// Async mode: a power loss loses at most the acknowledged records past the last
        /// completed flush (docs/SEMANTICS.md), and what survives is a prefix of each queue.
        #[test]
        fn async_mode_loses_at_most_what_was_not_flushed(
            writers in 1u32..4,
            batch in 1usize..4,
            len in 1usize..3000,
            cut_ms in 0u64..60,
            interval_ms in prop_oneof![Just(5u64), Just(20), Just(50)],
            dirty_pages in prop_oneof![Just(1u64), Just(4), Just(16)],
            early in proptest::option::of(any::<u64>()),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let sim = PowerSim::install(dir.path());
            let mut cfg = StoreConfig::small_for_tests(dir.path());
            cfg.flush_mode = FlushMode::Async;
            cfg.flush_interval_ms = interval_ms;
            cfg.flush_dirty_pages = dirty_pages;
            cfg.checkpoint_interval_ms = 10;
            two_power_losses(&cfg, &sim, writers, batch, len, cut_ms, early)?;
            sim.uninstall();
        }
    }

    /// Async mode: once `flush_interval_ms` has passed without appends, a power loss loses
    /// nothing (the window is the interval, not "until the next append").
    #[test]
    fn async_mode_loses_nothing_acknowledged_more_than_an_interval_ago() {
        let dir = tempfile::tempdir().unwrap();
        let sim = PowerSim::install(dir.path());
        let mut cfg = StoreConfig::small_for_tests(dir.path());
        cfg.flush_interval_ms = 20;
        cfg.flush_dirty_pages = 1 << 20; // only the timer flushes
        let store = Store::open(cfg.clone()).unwrap();
        let mut n = 0;
        for i in 0..40u128 {
            append_batch(&store, 0, i, 1, 500).unwrap().wait().unwrap();
            n += 1;
        }
        // Many intervals, so a loaded machine still gets one flush in.
        std::thread::sleep(Duration::from_millis(600));
        sim.cut(|| ());
        store.simulate_crash();
        sim.restore().unwrap();
        let store = reopen(&cfg);
        assert_eq!(survivors(&store, 0).len(), n);
        sim.uninstall();
    }

    /// Writes 100 records of ~1 KB (two segments) and stops without a checkpoint past the
    /// start, then flips a byte of the 5th record: a record past the checkpoint is invalid
    /// while the next segment holds valid records.
    fn damaged_log_with_valid_later_segment(cfg: &StoreConfig) -> (u64, u64) {
        let store = Store::open(cfg.clone()).unwrap();
        let mut ends = Vec::new();
        for i in 0..100u128 {
            ends.push(
                append_batch(&store, 0, i, 1, 1000)
                    .unwrap()
                    .wait()
                    .unwrap()
                    .end,
            );
        }
        assert!(ends[99] > cfg.segment_size, "two segments");
        store.simulate_crash();
        let seg0 = cfg.dir.join("commitlog").join("00000000000000000000");
        let mut bytes = std::fs::read(&seg0).unwrap();
        bytes[ends[4] as usize + 200] ^= 0x40;
        std::fs::write(&seg0, bytes).unwrap();
        (ends[4], ends[99])
    }

    #[test]
    fn past_the_checkpoint_an_unclean_stop_cuts_at_the_first_invalid_record_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::small_for_tests(dir.path());
        cfg.checkpoint_interval_ms = 3_600_000;
        let (cut, _) = damaged_log_with_valid_later_segment(&cfg);
        let store = Store::open(cfg).expect("unsynced writes of a power loss are cut away");
        let report = store.recovery_report();
        assert_eq!(report.truncated_at.as_ref().map(|t| t.0), Some(cut));
        assert_eq!(report.end, cut);
        assert_eq!(survivors(&store, 0).len(), 5);
        let files = std::fs::read_dir(dir.path().join("commitlog"))
            .unwrap()
            .count();
        assert_eq!(files, 1, "the later segment is gone");
    }

    #[test]
    fn without_a_checkpoint_damage_before_valid_segments_still_stops_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::small_for_tests(dir.path());
        cfg.checkpoint_interval_ms = 3_600_000;
        damaged_log_with_valid_later_segment(&cfg);
        std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
        match Store::open(cfg) {
            Err(StoreError::Corrupt { reason, .. }) => {
                assert!(
                    reason.contains("later segments hold valid data"),
                    "{reason}"
                )
            }
            Err(e) => panic!("expected Corrupt, got {e}"),
            Ok(_) => panic!("expected Corrupt, the store opened"),
        }
    }
}
