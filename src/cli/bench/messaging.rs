//! `quiver bench schedule` and `quiver bench tx`: the messaging semantics under load, against
//! an embedded broker over QUIC with the real SDK.
//!
//! * schedule: `messages` scheduled messages due uniformly within `window` (starting 5 s
//!   after the sends begin) are consumed by pull consumers; lateness is the time a message
//!   became visible (its store time in its real topic) minus its due time, and the time the
//!   consumer received it minus its due time: p50 / p99 / max. Then `pending` messages due
//!   in one to two hours are scheduled and the broker's anonymous memory (RssAnon: heap, not
//!   the memory-mapped files) is compared before and after.
//! * tx: sync sends against `send_in_transaction` (half message + commit) with the same
//!   concurrency: both rates and their ratio.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::Context;
use quiver_client::{
    Client, ClientConfig, Message, Producer, ProducerOptions, PullConsumer, PullOptions, Tls,
    TransactionState,
};
use quiver_protocol::names::props;

use quiver::config::Config;
use quiver::server::Server;

/// Options of both benchmarks.
#[derive(Debug, Clone)]
pub(crate) struct MessagingBenchOptions {
    /// Where the embedded broker keeps its data (removed afterwards).
    pub(crate) dir: PathBuf,
    /// Scheduled messages for the lateness measurement / sends for the tx comparison.
    pub(crate) messages: u64,
    /// Window the scheduled messages are due in.
    pub(crate) window: Duration,
    /// Pending scheduled messages for the memory measurement (0: skip).
    pub(crate) pending: u64,
    /// Message body size.
    pub(crate) size: usize,
    /// Sends in flight.
    pub(crate) inflight: usize,
}

use quiver_protocol::text::epoch_ms as now_ms;

/// Anonymous resident memory of this process (heap and stacks, not mapped files).
pub(crate) fn rss_anon_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn pct(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Embedded {
    server: Server,
    config: ClientConfig,
    dir: PathBuf,
}

async fn start(opts: &MessagingBenchOptions, name: &str) -> anyhow::Result<Embedded> {
    let dir = opts
        .dir
        .join(format!("quiver-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = Config::default();
    cfg.admin.enabled = false;
    cfg.broker.listen = "127.0.0.1:0".parse().expect("literal address");
    cfg.broker.data_dir = dir.clone();
    cfg.store.dir = dir.join("store");
    cfg.store.segment_size = 256 << 20;
    cfg.store.disk_high_watermark = 1.0;
    cfg.store.disk_clean_watermark = 1.0;
    cfg.store.disk_headroom_bytes = 0;
    let server = Server::start(cfg).await?;
    let mut config =
        ClientConfig::new(server.addr, Tls::fingerprint_from_hex(&server.fingerprint)?);
    config.request_timeout = Duration::from_secs(30);
    Ok(Embedded {
        server,
        config,
        dir,
    })
}

impl Embedded {
    async fn stop(self) -> anyhow::Result<()> {
        self.server.stop().await?;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// Sends `n` messages built by `make(i)` with `inflight` sends at once.
async fn send_all(
    producer: &Producer,
    n: u64,
    inflight: usize,
    make: impl Fn(u64) -> Message,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(inflight));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let p = producer.clone();
        let m = make(i);
        tasks.spawn(async move {
            let r = p.send(m).await;
            drop(permit);
            r
        });
        while let Some(r) = tasks.try_join_next() {
            r??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(start.elapsed())
}

/// `quiver bench schedule`.
pub(crate) fn schedule_bench(opts: &MessagingBenchOptions) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(schedule(opts))
}

async fn schedule(opts: &MessagingBenchOptions) -> anyhow::Result<()> {
    let b = start(opts, "schedule").await?;
    let client = Client::connect(b.config.clone()).await?;
    let producer = Producer::new(client.clone(), ProducerOptions::default());
    let topic = "bench-scheduled";
    let queues = 4u32;
    quiver_client::Admin::new(client.clone())
        .create_topic(topic, queues)
        .await
        .context("creating the topic")?;
    let n = opts.messages;
    let body = vec![b's'; opts.size];
    let base = now_ms() + 5_000;
    let window = opts.window.as_millis().max(1) as i64;
    println!(
        "scheduling {n} messages of {} B due uniformly within {:?} (from 5 s after start)",
        opts.size, opts.window
    );
    let took = send_all(&producer, n, opts.inflight, |i| {
        let due = base + (i as i64 * 7919) % window;
        Message::new(topic, body.clone())
            .with_deliver_at(UNIX_EPOCH + Duration::from_millis(due as u64))
    })
    .await?;
    println!(
        "  sent in {:.2}s ({:.0} msgs/s)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    // Consume every queue until all arrived.
    let mut tasks = Vec::new();
    for q in 0..queues {
        let consumer = PullConsumer::new(client.clone());
        tasks.push(tokio::spawn(async move {
            let mut visible = Vec::new();
            let mut received = Vec::new();
            let mut offset = 0;
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                let o = PullOptions {
                    max_messages: 512,
                    long_poll: Duration::from_millis(500),
                    ..Default::default()
                };
                let r = consumer.pull(topic, q, offset, o).await?;
                let now = now_ms();
                for m in &r.messages {
                    let due: i64 = m
                        .property(props::DELIVER_AT)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(now);
                    visible.push(m.store_timestamp - due);
                    received.push(now - due);
                }
                offset = r.next_offset;
                if Instant::now() > deadline || r.messages.is_empty() && now > base + window + 3_000
                {
                    return anyhow::Ok((visible, received));
                }
            }
        }));
    }
    let mut visible = Vec::new();
    let mut received = Vec::new();
    for t in tasks {
        let (v, r) = t.await??;
        visible.extend(v);
        received.extend(r);
    }
    visible.sort_unstable();
    received.sort_unstable();
    let stats = b.server.broker().timer_stats();
    println!(
        "  delivered {} of {n} (timer: delivered {}, pending {})",
        visible.len(),
        stats.delivered,
        stats.pending
    );
    for (name, v) in [
        ("visible (store time - due)", &visible),
        ("received (consumer - due)", &received),
    ] {
        println!(
            "  lateness {name:<28} p50 {:>4} ms  p99 {:>4} ms  max {:>5} ms  min {:>4} ms",
            pct(v, 0.5),
            pct(v, 0.99),
            v.last().copied().unwrap_or(0),
            v.first().copied().unwrap_or(0)
        );
    }
    if opts.pending > 0 {
        let before = rss_anon_bytes();
        let n = opts.pending;
        let small = vec![b'p'; 64];
        let start_ms = now_ms();
        let took = send_all(&producer, n, opts.inflight, |i| {
            let due = start_ms + 3_600_000 + (i as i64 * 7919) % 3_600_000;
            Message::new(topic, small.clone())
                .with_deliver_at(UNIX_EPOCH + Duration::from_millis(due as u64))
        })
        .await?;
        // Let the dispatcher place them all.
        let deadline = Instant::now() + Duration::from_secs(60);
        while b.server.broker().timer_stats().pending < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = rss_anon_bytes();
        let s = b.server.broker().timer_stats();
        println!(
            "memory: {} pending scheduled messages (sent in {:.1}s): anonymous RSS {:.1} MiB -> {:.1} MiB ({:+.1} MiB, {:.1} bytes per pending message); wheel reserves {:.1} MiB, touched on use",
            s.pending,
            took.as_secs_f64(),
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            (after as f64 - before as f64) / 1048576.0,
            (after as f64 - before as f64) / s.pending.max(1) as f64,
            s.wheel_bytes as f64 / 1048576.0
        );
    }
    client.close().await;
    b.stop().await
}

/// `quiver bench tx`.
pub(crate) fn tx_bench(opts: &MessagingBenchOptions) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(tx(opts))
}

async fn tx(opts: &MessagingBenchOptions) -> anyhow::Result<()> {
    let b = start(opts, "tx").await?;
    let client = Client::connect(b.config.clone()).await?;
    let producer = Producer::new(
        client.clone(),
        ProducerOptions {
            group: "bench-tx".into(),
            ..Default::default()
        },
    );
    let n = opts.messages;
    let body = vec![b't'; opts.size];
    quiver_client::Admin::new(client.clone())
        .create_topic("bench-tx", 4)
        .await?;
    // Warm-up.
    send_all(&producer, 2_000.min(n), opts.inflight, |_| {
        Message::new("bench-tx", body.clone())
    })
    .await?;
    let mut rows = Vec::new();
    for round in 0..3 {
        let plain = send_all(&producer, n, opts.inflight, |_| {
            Message::new("bench-tx", body.clone())
        })
        .await?;
        let start = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(opts.inflight));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let permit = sem.clone().acquire_owned().await?;
            let p = producer.clone();
            let m = Message::new("bench-tx", body.clone());
            tasks.spawn(async move {
                let r = p
                    .send_in_transaction(m, |_, _| TransactionState::Commit)
                    .await;
                drop(permit);
                r
            });
            while let Some(r) = tasks.try_join_next() {
                r??;
            }
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        let txd = start.elapsed();
        let (pr, tr) = (n as f64 / plain.as_secs_f64(), n as f64 / txd.as_secs_f64());
        println!(
            "round {round}: sync send {pr:>9.0} msgs/s   send_in_transaction {tr:>9.0} msgs/s   ratio {:.2}",
            tr / pr
        );
        rows.push(tr / pr);
    }
    rows.sort_by(f64::total_cmp);
    println!(
        "transactional / plain sync send, median of 3: {:.2} ({n} messages of {} B, {} in flight)",
        rows[1], opts.size, opts.inflight
    );
    println!(
        "unresolved half messages left: {}",
        b.server.broker().unresolved_transactions()
    );
    client.close().await;
    b.stop().await
}
