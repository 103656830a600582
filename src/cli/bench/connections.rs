//! `quiver bench connections`: what many client connections cost a broker, measured on a
//! `quiver serve` process of its own (so its memory is the broker's alone):
//!
//! 1. Connect: `count` clients connect (TLS handshake and Hello), `concurrency` at a time;
//!    the time until all are connected and the per-connection p50/p99.
//! 2. Memory: the broker's RSS idle, with every connection open, and after they all closed.
//! 3. Burst: every connection sends one message at the same moment (the seckill shape).
//! 4. Sustained: every connection keeps one send in flight for `seconds` (against a
//!    sync-flush broker by default): msgs/s, p50/p99/max, failed sends, and the appends each
//!    fsync acknowledged (the broker's group commit, read from its `/metrics`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use quiver_client::{Admin, Client, ClientConfig, Message, Producer, ProducerOptions, Tls};

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionsBenchOptions {
    /// Where the broker keeps its data (a subdirectory, removed afterwards).
    pub(crate) dir: PathBuf,
    /// Client connections.
    pub(crate) count: usize,
    /// Connections being established at once.
    pub(crate) concurrency: usize,
    /// Seconds of the sustained part (0 skips it).
    pub(crate) seconds: u64,
    /// Message body size in bytes.
    pub(crate) size: usize,
    /// The broker's flush mode (`sync` or `async`).
    pub(crate) flush: String,
    /// Also measure raw QUIC with the sustained part's shape (no broker): the ceiling.
    pub(crate) baseline: bool,
    /// Producers per connection in the sustained part, each with one send in flight (they
    /// share the connection's `Client`, as producers in one application process do).
    pub(crate) senders: usize,
}

const TOPIC: &str = "bench-connections";

/// A `quiver serve` child process.
struct Broker {
    child: Child,
    addr: std::net::SocketAddr,
    fingerprint: String,
    metrics: Option<std::net::SocketAddr>,
    dir: PathBuf,
}

impl Broker {
    fn start(dir: PathBuf, flush: &str) -> anyhow::Result<Broker> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let exe = std::env::current_exe().context("finding the quiver binary")?;
        let mut child = Command::new(exe)
            .arg("serve")
            .env("QUIVER_BROKER__DATA_DIR", &dir)
            .env("QUIVER_BROKER__LISTEN", "127.0.0.1:0")
            .env("QUIVER_ADMIN__LISTEN", "127.0.0.1:0")
            .env("QUIVER_STORE__FLUSH_MODE", flush)
            // A benchmark measures connections, not how full this machine's disk is.
            .env("QUIVER_STORE__DISK_HIGH_WATERMARK", "1.0")
            .env("QUIVER_STORE__DISK_CLEAN_WATERMARK", "1.0")
            .env("QUIVER_STORE__DISK_HEADROOM_BYTES", "0")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting quiver serve")?;
        let stdout = child.stdout.take().context("broker stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut addr, mut fingerprint, mut metrics) = (None, None, None);
        for line in lines.by_ref() {
            let line = line.context("reading the broker's banner")?;
            if let Some(rest) = line.strip_prefix("quiver broker listening on ") {
                addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            } else if let Some(rest) = line.trim().strip_prefix("sha256 fingerprint:") {
                fingerprint = Some(rest.trim().to_string());
            } else if let Some(rest) = line.trim().strip_prefix("metrics:") {
                metrics = rest
                    .trim()
                    .strip_prefix("http://")
                    .and_then(|r| r.strip_suffix("/metrics"))
                    .and_then(|a| a.parse().ok());
                break; // the banner's last line of interest
            }
        }
        // Keep reading so the broker never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let (Some(addr), Some(fingerprint)) = (addr, fingerprint) else {
            let _ = child.kill();
            anyhow::bail!("the broker did not print its address and fingerprint");
        };
        Ok(Broker {
            child,
            addr,
            fingerprint,
            metrics,
            dir,
        })
    }

    fn config(&self) -> anyhow::Result<ClientConfig> {
        Ok(ClientConfig::new(
            self.addr,
            Tls::fingerprint_from_hex(&self.fingerprint)?,
        ))
    }

    /// Resident memory of the broker process, bytes.
    fn rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    /// `(sum, count)` of the group-commit histogram (appends per fsync) from `/metrics`.
    async fn group_commit(&self) -> Option<(f64, f64)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.metrics?;
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).await.ok()?;
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        Some((
            value("quiver_store_group_commit_appends_sum")?,
            value("quiver_store_group_commit_appends_count")?,
        ))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn mib(b: Option<u64>) -> String {
    b.map_or("?".to_string(), |b| {
        format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
    })
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Runs the parts and prints their figures.
pub(crate) fn run(o: &ConnectionsBenchOptions) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-connections")
        .enable_all()
        .build()?;
    rt.block_on(run_async(o))
}

async fn run_async(o: &ConnectionsBenchOptions) -> anyhow::Result<()> {
    let dir = o.dir.join(format!(
        "connections-{}-{}",
        std::process::id(),
        quiver_protocol::text::epoch_ms()
    ));
    let broker = Broker::start(dir, &o.flush)?;
    let cfg = broker.config()?;
    let admin_client = Client::connect(cfg.clone()).await?;
    if let Err(e) = Admin::new(admin_client.clone())
        .create_topic(TOPIC, 8)
        .await
    {
        if e.status() != Some(quiver_client::Status::TopicExists) {
            return Err(e).context("creating the benchmark topic");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = broker.rss();
    super::say(&format!(
        "quiver bench connections: {} connections ({} at a time) to a {}-flush broker at {}",
        o.count, o.concurrency, o.flush, broker.addr
    ));

    // 1. Connect.
    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(o.concurrency.max(1)));
    let mut tasks = Vec::with_capacity(o.count);
    for _ in 0..o.count {
        let (cfg, gate) = (cfg.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            let t = Instant::now();
            let c = Client::connect(cfg).await;
            (c, t.elapsed())
        }));
    }
    let mut clients = Vec::with_capacity(o.count);
    let mut connect = Histogram::<u64>::new(3)?;
    let mut connect_errors = 0u64;
    for t in tasks {
        let (c, took) = t.await?;
        let _ = connect.record(took.as_micros().max(1) as u64);
        match c {
            Ok(c) => clients.push(c),
            Err(e) => {
                if connect_errors == 0 {
                    eprintln!("  a connect failed: {e}");
                }
                connect_errors += 1;
            }
        }
    }
    let connect_took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let open = broker.rss();
    let per_conn = match (idle, open) {
        (Some(i), Some(b)) if !clients.is_empty() => {
            Some(b.saturating_sub(i) / clients.len() as u64)
        }
        _ => None,
    };
    let producers: Vec<Producer> = clients
        .iter()
        .map(|c| Producer::new(c.clone(), ProducerOptions::default()))
        .collect();
    let body = bytes::Bytes::from(vec![b'x'; o.size]);

    // 3. Burst: one send per connection, all at once.
    let gate = Arc::new(tokio::sync::Barrier::new(producers.len() + 1));
    let mut tasks = Vec::new();
    for p in &producers {
        let (p, gate, body) = (p.clone(), gate.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            let t = Instant::now();
            let ok = p.send(Message::new(TOPIC, body)).await.is_ok();
            (ok, t.elapsed())
        }));
    }
    gate.wait().await;
    let burst_started = Instant::now();
    let mut burst = Histogram::<u64>::new(3)?;
    let mut burst_errors = 0u64;
    for t in tasks {
        let (ok, took) = t.await?;
        let _ = burst.record(took.as_micros().max(1) as u64);
        if !ok {
            burst_errors += 1;
        }
    }
    let burst_took = burst_started.elapsed();

    // 4. Sustained: one send in flight per connection.
    let mut sustained = None;
    if o.seconds > 0 {
        let before = broker.group_commit().await;
        let sent = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
        let deadline = Instant::now() + Duration::from_secs(o.seconds);
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        let senders = producers
            .iter()
            .flat_map(|p| std::iter::repeat_n(p, o.senders.max(1)));
        for p in senders {
            let (p, sent, errors, hist, body) = (
                p.clone(),
                sent.clone(),
                errors.clone(),
                hist.clone(),
                body.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut local = Histogram::<u64>::new(3).expect("histogram");
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match p.send(Message::new(TOPIC, body.clone())).await {
                        Ok(_) => {
                            let _ = local.record(t.elapsed().as_micros().max(1) as u64);
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if let Ok(mut h) = hist.lock() {
                    let _ = h.add(&local);
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        let took = t0.elapsed();
        let after = broker.group_commit().await;
        let per_fsync = match (before, after) {
            (Some((s0, c0)), Some((s1, c1))) if c1 > c0 => Some((s1 - s0) / (c1 - c0)),
            _ => None,
        };
        let h = hist.lock().map(|h| h.clone()).unwrap_or(Histogram::new(3)?);
        sustained = Some((
            sent.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
            took,
            h,
            per_fsync,
        ));
    }

    // 2. Memory after every connection closed.
    futures::future::join_all(clients.iter().map(|c| c.close())).await;
    drop(producers);
    let n = clients.len();
    drop(clients);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let closed = broker.rss();

    // 5. The ceiling: raw QUIC with the sustained part's shape, no broker.
    let baseline = if o.baseline && o.seconds > 0 && o.senders <= 1 {
        Some(super::quic::request_rate(&o.dir, n, o.seconds, o.size + 60).await?)
    } else {
        None
    };

    admin_client.close().await;

    if super::json() {
        let mut v = serde_json::json!({
            "name": "connections",
            "connections": n,
            "connect_errors": connect_errors,
            "connect_seconds": connect_took.as_secs_f64(),
            "connect_ms": { "p50": ms(connect.value_at_quantile(0.5)), "p99": ms(connect.value_at_quantile(0.99)) },
            "rss_bytes": { "idle": idle, "open": open, "closed": closed },
            "rss_bytes_per_connection": per_conn,
            "burst": {
                "messages": producers_len(n, burst_errors),
                "errors": burst_errors,
                "seconds": burst_took.as_secs_f64(),
                "ms": { "p50": ms(burst.value_at_quantile(0.5)), "p99": ms(burst.value_at_quantile(0.99)), "max": ms(burst.max()) },
            },
        });
        if let Some((sent, errors, took, h, per_fsync)) = &sustained {
            v["sustained"] = serde_json::json!({
                "producers_per_connection": o.senders.max(1),
                "messages": sent, "errors": errors, "seconds": took.as_secs_f64(),
                "messages_per_second": *sent as f64 / took.as_secs_f64(),
                "ms": { "p50": ms(h.value_at_quantile(0.5)), "p99": ms(h.value_at_quantile(0.99)), "max": ms(h.max()) },
                "appends_per_fsync": per_fsync,
            });
        }
        if let Some((rate, p50, p99)) = baseline {
            v["raw_quic"] = serde_json::json!({
                "requests_per_second": rate,
                "ms": { "p50": ms(p50), "p99": ms(p99) },
            });
        }
        println!("{v}");
        return Ok(());
    }
    println!(
        "{:<28} {n} in {:.2}s ({:.0}/s), p50 {:.1} ms p99 {:.1} ms, {connect_errors} failed",
        "connect",
        connect_took.as_secs_f64(),
        n as f64 / connect_took.as_secs_f64().max(1e-9),
        ms(connect.value_at_quantile(0.5)),
        ms(connect.value_at_quantile(0.99)),
    );
    println!(
        "{:<28} idle {}, {n} open {} ({} each), 3 s after all closed {}",
        "broker memory (RSS)",
        mib(idle),
        mib(open),
        per_conn.map_or("?".to_string(), |b| format!("{:.0} KiB", b as f64 / 1024.0)),
        mib(closed)
    );
    println!(
        "{:<28} {n} sends at once in {:.2}s, p50 {:.1} ms p99 {:.1} ms max {:.1} ms, {burst_errors} failed",
        "burst (one send each)",
        burst_took.as_secs_f64(),
        ms(burst.value_at_quantile(0.5)),
        ms(burst.value_at_quantile(0.99)),
        ms(burst.max()),
    );
    if let Some((sent, errors, took, h, per_fsync)) = sustained {
        println!(
            "{:<28} {:.0} msgs/s, p50 {:.1} ms p99 {:.1} ms max {:.1} ms, {errors} failed, {} appends per fsync",
            format!("sustained ({n} x {} in flight)", o.senders.max(1)),
            sent as f64 / took.as_secs_f64().max(1e-9),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
            per_fsync.map_or("?".to_string(), |a| format!("{a:.1}")),
        );
    }
    if let Some((rate, p50, p99)) = baseline {
        println!(
            "{:<28} {rate:.0} requests/s, p50 {:.1} ms p99 {:.1} ms ({n} connections x 1 in flight, {} B up, 8 B back, a stream each, no broker)",
            "raw QUIC, same shape",
            ms(p50),
            ms(p99),
            o.size + 60,
        );
    }
    Ok(())
}

fn producers_len(n: usize, errors: u64) -> u64 {
    (n as u64).saturating_sub(errors)
}
