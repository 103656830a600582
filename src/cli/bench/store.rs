//! `quiver bench`: measurements printed as figures (medians and ratios, never pass/fail).
//!
//! `quiver bench store` measures the store alone, in process: the disk's sequential
//! write + fdatasync bandwidth (the `dd ... conv=fdatasync` baseline), append throughput in
//! async and sync mode with 1, 8 and 64 writers, read throughput through the consume queue, and
//! resident memory before and after a large backlog.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use quiver::store::{FlushMode, NewMessage, ReadLimits, Store, StoreConfig, StoreError};

/// Options of `quiver bench store`.
#[derive(Debug, Clone)]
pub(crate) struct StoreBenchOptions {
    /// Directory for the benchmark's data (a fresh sub-directory is used and removed).
    pub(crate) dir: PathBuf,
    /// Message body size in bytes.
    pub(crate) message_size: usize,
    /// Messages per throughput run (each run also stops after `max_seconds`).
    pub(crate) messages: u64,
    /// Upper bound on one run's duration.
    pub(crate) max_seconds: u64,
    /// Messages appended for the resident-memory measurement (0 skips it).
    pub(crate) backlog: u64,
    /// In-flight appends per writer in the pipelined sync run.
    pub(crate) window: usize,
}

/// One printed row.
#[derive(Debug, Clone)]
pub(crate) struct BenchRow {
    /// What was measured.
    pub(crate) name: String,
    /// Messages per second.
    pub(crate) msgs_per_sec: f64,
    /// Megabytes (10^6 bytes) of message bodies per second.
    pub(crate) mb_per_sec: f64,
}

fn row(name: String, msgs: u64, size: usize, took: Duration) -> BenchRow {
    let secs = took.as_secs_f64().max(1e-9);
    let r = BenchRow {
        name,
        msgs_per_sec: msgs as f64 / secs,
        mb_per_sec: (msgs as f64 * size as f64) / secs / 1e6,
    };
    println!(
        "{:<44} {:>12.0} msgs/s {:>9.1} MB/s  ({msgs} msgs in {:.2}s)",
        r.name, r.msgs_per_sec, r.mb_per_sec, secs
    );
    r
}

/// Resident set size of this process in bytes (from /proc/self/statm).
pub(crate) fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Sequential write of `mib` MiB in 1 MiB blocks followed by one fdatasync: what
/// `dd if=/dev/zero of=F bs=1M count=N conv=fdatasync` measures. Returns MB/s.
pub(crate) fn disk_fdatasync_bandwidth(dir: &Path, mib: usize) -> std::io::Result<f64> {
    use std::io::Write;
    let path = dir.join("dd-baseline");
    let block = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    for _ in 0..mib {
        f.write_all(&block)?;
    }
    f.sync_data()?;
    let took = start.elapsed();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(mib as f64 * (1 << 20) as f64 / took.as_secs_f64() / 1e6)
}

fn bench_config(dir: &Path, mode: FlushMode) -> StoreConfig {
    let mut cfg = StoreConfig::new(dir);
    cfg.flush_mode = mode;
    cfg.segment_size = 256 << 20;
    cfg
}

struct Writers {
    next_id: AtomicU64,
    done: AtomicU64,
}

/// Appends `total` messages from `writers` threads; each writer keeps `window` appends in
/// flight (1 = blocking append + wait). Returns (messages acked, time taken).
fn run_appends(
    store: &Arc<Store>,
    writers: usize,
    window: usize,
    total: u64,
    size: usize,
    deadline: Duration,
) -> Result<(u64, Duration), StoreError> {
    let shared = Arc::new(Writers {
        next_id: AtomicU64::new(0),
        done: AtomicU64::new(0),
    });
    let start = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            let shared = shared.clone();
            std::thread::spawn(move || -> Result<(), StoreError> {
                let body = vec![b'q'; size];
                let host: SocketAddr = "127.0.0.1:1".parse().expect("literal address");
                let inflight = Arc::new((Mutex::new(0usize), Condvar::new()));
                loop {
                    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                    if id >= total || start.elapsed() > deadline {
                        break;
                    }
                    let msg = NewMessage {
                        msg_id: id as u128,
                        flags: 0,
                        born_timestamp: 0,
                        born_host: host,
                        reconsume_times: 0,
                        tag: "bench",
                        keys: &[],
                        properties: &[],
                        body: &body,
                    };
                    let pending = store.append("bench", (w % 8) as u32, &[msg])?;
                    if window <= 1 {
                        pending.wait()?;
                        shared.done.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    {
                        let (lock, cv) = &*inflight;
                        let mut n = lock.lock().expect("window lock");
                        while *n >= window {
                            n = cv.wait(n).expect("window lock");
                        }
                        *n += 1;
                    }
                    let (inflight2, shared2) = (inflight.clone(), shared.clone());
                    pending.on_durable(move |r| {
                        if r.is_ok() {
                            shared2.done.fetch_add(1, Ordering::Relaxed);
                        }
                        let (lock, cv) = &*inflight2;
                        *lock.lock().expect("window lock") -= 1;
                        cv.notify_one();
                    });
                }
                let (lock, cv) = &*inflight;
                let mut n = lock.lock().expect("window lock");
                while *n > 0 {
                    n = cv.wait(n).expect("window lock");
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| StoreError::Closed)??;
    }
    Ok((shared.done.load(Ordering::Relaxed), start.elapsed()))
}

/// Runs `quiver bench store` and prints its figures.
pub(crate) fn store_bench(opts: &StoreBenchOptions) -> anyhow::Result<Vec<BenchRow>> {
    let root = opts
        .dir
        .join(format!("quiver-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let result = store_bench_in(&root, opts);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn store_bench_in(root: &Path, opts: &StoreBenchOptions) -> anyhow::Result<Vec<BenchRow>> {
    let size = opts.message_size;
    let deadline = Duration::from_secs(opts.max_seconds);
    let mut rows = Vec::new();
    println!(
        "quiver bench store: {size}-byte bodies, data in {}",
        root.display()
    );
    let dd = disk_fdatasync_bandwidth(root, 512)?;
    println!(
        "{:<44} {:>29.1} MB/s",
        "disk: sequential write + fdatasync (dd)", dd
    );

    for (mode, name) in [(FlushMode::Async, "async"), (FlushMode::Sync, "sync")] {
        for writers in [1usize, 8, 64] {
            let dir = root.join(format!("{name}-{writers}"));
            let store = Arc::new(Store::open(bench_config(&dir, mode))?);
            let total = if mode == FlushMode::Sync && writers == 1 {
                opts.messages.min(20_000)
            } else {
                opts.messages
            };
            let (n, took) = run_appends(&store, writers, 1, total, size, deadline)?;
            rows.push(row(
                format!("append {name}, {writers} writers"),
                n,
                size,
                took,
            ));
            if mode == FlushMode::Sync {
                print_flush_stats(&store);
            }
            if mode == FlushMode::Async && writers == 1 {
                rows.push(read_back(&store, size)?);
            }
            store.close()?;
            drop(store);
            std::fs::remove_dir_all(&dir)?;
        }
    }
    let dir = root.join("sync-pipelined");
    let store = Arc::new(Store::open(bench_config(&dir, FlushMode::Sync))?);
    let (n, took) = run_appends(&store, 64, opts.window, opts.messages, size, deadline)?;
    let r = row(
        format!("append sync, 64 writers x {} in flight", opts.window),
        n,
        size,
        took,
    );
    print_flush_stats(&store);
    println!(
        "{:<44} {:>29.0}%",
        "  sync pipelined / disk fdatasync bandwidth",
        r.mb_per_sec / dd * 100.0
    );
    rows.push(r);
    if let Some(sync64) = rows.iter().find(|r| r.name == "append sync, 64 writers") {
        println!(
            "{:<44} {:>29.0}%",
            "  sync 64 writers / disk fdatasync bandwidth",
            sync64.mb_per_sec / dd * 100.0
        );
    }
    store.close()?;
    drop(store);
    std::fs::remove_dir_all(&dir)?;

    if opts.backlog > 0 {
        backlog_rss(root, opts)?;
    }
    Ok(rows)
}

fn print_flush_stats(store: &Store) {
    let (flushes, acked, time) = store.flush_stats();
    if flushes > 0 {
        println!(
            "  group commit: {flushes} fsyncs, {:.1} appends per fsync, {:.0} us per fsync",
            acked as f64 / flushes as f64,
            time.as_secs_f64() * 1e6 / flushes as f64
        );
    }
}

fn read_back(store: &Store, size: usize) -> anyhow::Result<BenchRow> {
    let start = Instant::now();
    let mut n = 0u64;
    for q in 0..8u32 {
        let (mut off, max) = store.queue_bounds("bench", q);
        while off < max {
            let r =
                store.get_messages("bench", q, off, ReadLimits::new(64, 4 << 20, 64), |_| true)?;
            for m in &r.messages {
                std::hint::black_box(m.view().body().len());
            }
            n += r.messages.len() as u64;
            off = r.next_offset;
            if r.messages.is_empty() {
                break;
            }
        }
    }
    Ok(row(
        "read through consume queue (CRC checked)".into(),
        n,
        size,
        start.elapsed(),
    ))
}

fn backlog_rss(root: &Path, opts: &StoreBenchOptions) -> anyhow::Result<()> {
    let dir = root.join("backlog");
    let store = Arc::new(Store::open(bench_config(&dir, FlushMode::Async))?);
    let before = rss_bytes();
    let mut peak = before;
    let chunk = 500_000u64;
    let start = Instant::now();
    let mut done = 0u64;
    while done < opts.backlog {
        let n = chunk.min(opts.backlog - done);
        let (acked, _) = run_appends(
            &store,
            2,
            1,
            n,
            opts.message_size,
            Duration::from_secs(3600),
        )?;
        done += acked;
        peak = peak.max(rss_bytes());
    }
    let took = start.elapsed();
    // Give the flush and release passes a moment to catch up with the tail.
    std::thread::sleep(Duration::from_millis(1500));
    let after = rss_bytes();
    row(
        format!("backlog append async, {} msgs", done),
        done,
        opts.message_size,
        took,
    );
    println!(
        "rss: before backlog {:.1} MiB, after {} msgs {:.1} MiB (delta {:+.1} MiB), peak {:.1} MiB",
        before as f64 / 1048576.0,
        done,
        after as f64 / 1048576.0,
        (after as f64 - before as f64) / 1048576.0,
        peak as f64 / 1048576.0
    );
    store.close()?;
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
