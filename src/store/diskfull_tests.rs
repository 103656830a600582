//! A full disk: refused before the filesystem refuses (free-space check with headroom at every
//! allocation), `ENOSPC` as the retryable `DiskFull`, and no poisoning for either.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;

fn host() -> SocketAddr {
    "127.0.0.1:5000".parse().unwrap()
}

fn append_one(store: &Store, queue: u32, id: u128, len: usize) -> Result<Appended, StoreError> {
    let body = vec![id as u8; len];
    let msg = NewMessage {
        msg_id: id,
        flags: 0,
        born_timestamp: 1,
        born_host: host(),
        reconsume_times: 0,
        tag: "t",
        keys: &[],
        properties: &[],
        body: &body,
    };
    store.append("T", queue, &[msg])?.wait()
}

fn ids(store: &Store, queue: u32) -> Vec<u128> {
    super::tests::read_all(store, "T", queue)
        .into_iter()
        .map(|(_, id, _)| id)
        .collect()
}

/// A disk of `total` bytes whose free space the test sets.
fn fake_disk(cfg: &mut StoreConfig, free: &Arc<AtomicU64>) {
    let free = free.clone();
    cfg.disk_space = DiskSpaceSource::custom(move |_| {
        Some(DiskSpace {
            total: 1 << 40,
            available: free.load(Ordering::Relaxed),
        })
    });
}

#[test]
fn a_segment_is_refused_before_the_headroom_is_used_and_accepted_once_space_returns() {
    for mode in [FlushMode::Async, FlushMode::Sync] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::small_for_tests(dir.path());
        cfg.flush_mode = mode;
        cfg.disk_headroom_bytes = 100 << 10;
        let free = Arc::new(AtomicU64::new(1 << 30));
        fake_disk(&mut cfg, &free);
        let store = Store::open(cfg.clone()).unwrap();
        // Fill most of the first segment (64 KiB).
        let mut acked = Vec::new();
        for id in 0..50u128 {
            append_one(&store, 0, id, 1000).unwrap();
            acked.push(id);
        }
        // Less than a segment plus the headroom is free: what still fits into the active
        // segment is taken, the next segment is refused.
        free.store(cfg.segment_size + (100 << 10) - 1, Ordering::Relaxed);
        let mut id = 50;
        let err = loop {
            match append_one(&store, 0, id, 1000) {
                Ok(_) => acked.push(id),
                Err(e) => break e,
            }
            id += 1;
            assert!(id < 200, "{mode:?}: the segment never filled up");
        };
        assert!(err.is_retryable(), "{mode:?}: {err}");
        match &err {
            StoreError::DiskFull {
                cause: DiskFullCause::Headroom { needed, .. },
                ..
            } => assert_eq!(*needed, cfg.segment_size),
            other => panic!("{mode:?}: expected DiskFull(Headroom), got {other:?}"),
        }
        assert!(
            !err.to_string().contains(dir.path().to_str().unwrap()),
            "no server path in the message: {err}"
        );
        // Still refused, still retryable (not poisoned), while the disk stays full.
        let again = append_one(&store, 0, id, 1000).unwrap_err();
        assert!(again.is_retryable(), "{mode:?}: {again}");
        // Space returns: the same append goes through, and nothing was lost or doubled.
        free.store(1 << 30, Ordering::Relaxed);
        append_one(&store, 0, id, 1000).unwrap();
        acked.push(id);
        assert_eq!(ids(&store, 0), acked, "{mode:?}");
        store.close().unwrap();
        drop(store);
        let store = Store::open(cfg).unwrap();
        assert_eq!(ids(&store, 0), acked, "{mode:?}: after reopening");
    }
}

#[test]
fn consume_queue_and_index_files_may_use_the_headroom() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::small_for_tests(dir.path());
    cfg.disk_headroom_bytes = 100 << 10;
    let free = Arc::new(AtomicU64::new(1 << 30));
    fake_disk(&mut cfg, &free);
    let store = Store::open(cfg.clone()).unwrap();
    // Within the headroom: no new segment, but a new queue's file (1,280 bytes) and the
    // index files still fit.
    free.store(50 << 10, Ordering::Relaxed);
    for q in 0..5 {
        append_one(&store, q, q as u128, 10).unwrap();
        assert_eq!(ids(&store, q), vec![q as u128], "queue {q} readable");
    }
}

#[test]
fn the_watermark_reads_the_same_space_source() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::small_for_tests(dir.path());
    cfg.disk_high_watermark = 0.9;
    cfg.disk_clean_watermark = 0.9;
    let free = Arc::new(AtomicU64::new(1 << 40));
    fake_disk(&mut cfg, &free);
    let store = Store::open(cfg).unwrap();
    append_one(&store, 0, 1, 10).unwrap();
    free.store(1 << 30, Ordering::Relaxed); // 99.9% used
    store.check_disk();
    let err = append_one(&store, 0, 2, 10).unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::DiskFull {
                cause: DiskFullCause::Watermark { .. },
                ..
            }
        ),
        "{err:?}"
    );
    free.store(1 << 40, Ordering::Relaxed);
    store.check_disk();
    append_one(&store, 0, 2, 10).unwrap();
}

#[test]
fn enospc_maps_to_disk_full() {
    let e = StoreError::io("/x", std::io::Error::from_raw_os_error(libc::ENOSPC));
    assert!(e.is_retryable(), "{e}");
    assert!(matches!(
        e,
        StoreError::DiskFull {
            cause: DiskFullCause::NoSpace(_),
            ..
        }
    ));
    let e = StoreError::io("/x", std::io::Error::from_raw_os_error(libc::EIO));
    assert!(!e.is_retryable(), "{e}");
}

/// A small tmpfs mounted for the test (needs CAP_SYS_ADMIN, as root in CI); unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: u64) -> Option<SmallFs> {
        let dir = tempfile::tempdir().ok()?;
        let r = mount_tmpfs(dir.path(), size, 0);
        if let Err(e) = r {
            eprintln!("skipped: cannot mount a tmpfs here ({e}); the ENOSPC test needs root");
            return None;
        }
        Some(SmallFs { dir })
    }

    fn resize(&self, size: u64) {
        mount_tmpfs(self.dir.path(), size, libc::MS_REMOUNT).expect("remount");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let path = std::ffi::CString::new(self.dir.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: plain syscall with a NUL-terminated path.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

fn mount_tmpfs(at: &Path, size: u64, flags: libc::c_ulong) -> std::io::Result<()> {
    let c = |s: &[u8]| std::ffi::CString::new(s).unwrap();
    let target = c(at.as_os_str().as_encoded_bytes());
    let opts = c(format!("size={size}").as_bytes());
    let (src, fstype) = (c(b"tmpfs"), c(b"tmpfs"));
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            opts.as_ptr().cast(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A real `ENOSPC` (a 512 KiB tmpfs, the free-space check switched off so the filesystem is
/// the one to refuse): appends get the retryable `DiskFull`, the store is not poisoned (the
/// housekeeping checkpoint fails with `ENOSPC` meanwhile), and once the filesystem grows
/// appends go on.
#[test]
fn a_real_enospc_is_retryable_and_the_store_recovers_when_space_returns() {
    let Some(fs) = SmallFs::mount(512 << 10) else {
        return;
    };
    let mut cfg = StoreConfig::small_for_tests(fs.dir.path().join("store"));
    cfg.checkpoint_interval_ms = 10;
    cfg.disk_space = DiskSpaceSource::custom(|_| None);
    let store = Store::open(cfg.clone()).unwrap();
    let mut acked = Vec::new();
    let mut id = 0u128;
    let err = loop {
        match append_one(&store, (id % 2) as u32, id, 2000) {
            Ok(_) => acked.push(id),
            Err(e) => break e,
        }
        id += 1;
        assert!(id < 1000, "a 512 KiB filesystem never filled up");
    };
    assert!(
        matches!(
            &err,
            StoreError::DiskFull {
                cause: DiskFullCause::NoSpace(_),
                ..
            }
        ),
        "{err:?}"
    );
    // Take the last free pages too, so the housekeeping checkpoint hits ENOSPC as well; then
    // several checkpoint intervals on the full disk: nothing gets poisoned.
    let filler = fs.dir.path().join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    while std::io::Write::write_all(&mut f, &[1u8; 4096]).is_ok() {}
    drop(f);
    std::thread::sleep(Duration::from_millis(100));
    let again = append_one(&store, (id % 2) as u32, id, 2000).unwrap_err();
    assert!(again.is_retryable(), "{again:?}");
    fs.resize(4 << 20);
    append_one(&store, (id % 2) as u32, id, 2000).unwrap();
    acked.push(id);
    let mut got: Vec<u128> = ids(&store, 0).into_iter().chain(ids(&store, 1)).collect();
    got.sort();
    assert_eq!(got, acked);
    store.close().unwrap();
    drop(store);
    let store = Store::open(cfg).unwrap();
    let mut got: Vec<u128> = ids(&store, 0).into_iter().chain(ids(&store, 1)).collect();
    got.sort();
    assert_eq!(got, acked, "after reopening");
}

#[derive(Clone, Default)]
struct LogBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Under disk pressure, retention deletes segments whatever their age: each deletion and
/// each queue's count of deleted (and, where known, unconsumed) messages is a WARN.
#[test]
fn deleting_under_disk_pressure_warns_with_counts_per_queue() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::small_for_tests(dir.path());
    cfg.disk_clean_watermark = 0.5;
    let free = Arc::new(AtomicU64::new(1 << 40));
    fake_disk(&mut cfg, &free);
    let store = Store::open(cfg).unwrap();
    for id in 0..300u128 {
        append_one(&store, (id % 2) as u32, id, 1000).unwrap();
    }
    // Queue 0 consumed up to 10; nobody consumes queue 1.
    store.set_consumer_progress(Arc::new(|_t: &str, q: u32| (q == 0).then_some(10)));
    free.store(1 << 30, Ordering::Relaxed); // 99.9% used: above the clean watermark
    let buf = LogBuf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let report =
        tracing::subscriber::with_default(subscriber, || store.run_retention(false)).unwrap();
    assert!(report.deleted_segments.len() >= 3, "{report:?}");
    let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let segment_lines: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("deleted commit-log segment"))
        .collect();
    assert_eq!(segment_lines.len(), report.deleted_segments.len(), "{log}");
    assert!(segment_lines.iter().all(|l| l.contains("WARN")), "{log}");
    let (min0, _) = store.queue_bounds("T", 0);
    let (min1, _) = store.queue_bounds("T", 1);
    let queue_line = |q: u32| {
        lines
            .iter()
            .find(|l| l.contains("disk pressure deleted") && l.contains(&format!("queue={q}")))
            .unwrap_or_else(|| panic!("no line for queue {q}: {log}"))
            .to_string()
    };
    let q0 = queue_line(0);
    assert!(q0.contains("WARN"), "{q0}");
    assert!(q0.contains(&format!("deleted={min0}")), "{q0}");
    assert!(
        q0.contains(&format!("unconsumed=Some({})", min0 - 10)),
        "{q0}"
    );
    let q1 = queue_line(1);
    assert!(q1.contains("WARN"), "{q1}");
    assert!(q1.contains(&format!("deleted={min1}")), "{q1}");
    assert!(q1.contains("unconsumed=None"), "{q1}");
}
