//! `quiver bench produce|consume|e2e`: the real SDK against a broker, over QUIC on loopback.
//! Without `--addr`, an embedded broker is started on its own runtime (its own threads) with a
//! temporary data directory and the chosen flush mode.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use quiver_client::{
    Admin, Client, ClientConfig, Cluster, Message, Producer, ProducerOptions, PullConsumer,
    PullOptions, PullStatus, QueueReader, QueueSelector, Tls,
};

use quiver::config::Config;
use quiver::server::Server;
use quiver::store::FlushMode;

/// What to run and how hard.
#[derive(Debug, Clone)]
pub(crate) struct NetBenchOptions {
    /// A running broker; `None` starts an embedded one.
    pub(crate) addr: Option<SocketAddr>,
    /// TLS for `addr` (ignored for the embedded broker, which is pinned by fingerprint).
    pub(crate) tls: Option<Tls>,
    /// Embedded broker: flush mode.
    pub(crate) flush: FlushMode,
    /// Embedded broker: where its temporary data directory goes.
    pub(crate) dir: PathBuf,
    /// Topic to use (created with `queues` queues when missing).
    pub(crate) topic: String,
    /// Queues of the topic.
    pub(crate) queues: u32,
    /// Body size in bytes.
    pub(crate) size: usize,
    /// Messages to produce (or consume).
    pub(crate) messages: u64,
    /// Stop after this long even if `messages` is not reached.
    pub(crate) duration: Duration,
    /// Concurrent producers (each with its own connection).
    pub(crate) producers: usize,
    /// Requests in flight per producer.
    pub(crate) inflight: usize,
    /// Messages per send request (1 = single sends).
    pub(crate) batch: usize,
    /// Concurrent consumers (queues are spread over them).
    pub(crate) consumers: usize,
    /// Consume as push consumers in this group (the broker spreads the queues), while
    /// producing, measuring end-to-end latency.
    pub(crate) group: Option<String>,
    /// A plugin module and its configuration, loaded as `bench-plugin` and run on every pull
    /// of the consumers.
    pub(crate) plugin: Option<BenchPlugin>,
    /// Bytes each way of the raw-QUIC baseline run first (0 skips it).
    pub(crate) baseline_bytes: u64,
    /// Nodes of a running cluster: producers route through it (produce only).
    pub(crate) cluster: Vec<SocketAddr>,
}

/// A plugin module (binary or WAT) and its configuration.
pub(crate) type BenchPlugin = (Vec<u8>, Vec<(String, String)>);

/// Name the benchmark loads its plugin under.
pub(crate) const BENCH_PLUGIN: &str = "bench-plugin";

/// Figures of one run.
#[derive(Debug, Clone)]
pub(crate) struct NetReport {
    /// What was measured.
    pub(crate) name: String,
    /// Messages moved.
    pub(crate) messages: u64,
    /// Wall time.
    pub(crate) elapsed: Duration,
    /// Latency in microseconds (per request for produce/consume, per message end to end).
    pub(crate) latency: Histogram<u64>,
    /// Errors seen.
    pub(crate) errors: u64,
}

impl NetReport {
    /// Messages per second.
    pub(crate) fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Prints one block of figures; with a raw-QUIC rate (bytes/s, same direction, same run),
    /// also the ratio to it.
    pub(crate) fn print(&self, size: usize, raw: Option<f64>) {
        let l = &self.latency;
        let bytes_per_sec = self.rate() * size as f64;
        if super::json() {
            let ms = |q: f64| l.value_at_quantile(q) as f64 / 1000.0;
            let v = serde_json::json!({
                "name": self.name.trim(),
                "messages": self.messages,
                "seconds": self.elapsed.as_secs_f64(),
                "messages_per_second": self.rate(),
                "megabytes_per_second": bytes_per_sec / 1e6,
                "errors": self.errors,
                "vs_raw_quic": raw.filter(|r| *r > 0.0).map(|r| bytes_per_sec / r),
                "latency_ms": if l.is_empty() { serde_json::Value::Null } else {
                    serde_json::json!({
                        "p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999),
                        "max": l.max() as f64 / 1000.0,
                    })
                },
            });
            println!("{v}");
            return;
        }
        let ratio = raw
            .filter(|r| *r > 0.0)
            .map(|r| format!("  = {:.2} x raw QUIC", bytes_per_sec / r))
            .unwrap_or_default();
        println!(
            "{:<28} {:>10.0} msgs/s {:>8.1} MB/s{ratio}  ({} msgs in {:.2}s, {} errors)",
            self.name,
            self.rate(),
            bytes_per_sec / 1e6,
            self.messages,
            self.elapsed.as_secs_f64(),
            self.errors
        );
        if !l.is_empty() {
            println!(
                "{:<28} p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
                "  latency",
                l.value_at_quantile(0.5) as f64 / 1000.0,
                l.value_at_quantile(0.99) as f64 / 1000.0,
                l.value_at_quantile(0.999) as f64 / 1000.0,
                l.max() as f64 / 1000.0
            );
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn progress(total: u64, label: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(4));
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>9} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(label.to_string());
    pb
}

/// A broker to talk to: embedded (stopped at the end) or external.
struct Target {
    config: ClientConfig,
    embedded: Option<(
        std::thread::JoinHandle<anyhow::Result<()>>,
        tokio_util::sync::CancellationToken,
        PathBuf,
    )>,
}

impl Target {
    fn open(opts: &NetBenchOptions) -> anyhow::Result<Target> {
        if let Some(addr) = opts.addr.or(opts.cluster.first().copied()) {
            let tls = opts
                .tls
                .clone()
                .context("--addr and --cluster need --fingerprint, --ca or --insecure")?;
            return Ok(Target {
                config: ClientConfig::new(addr, tls),
                embedded: None,
            });
        }
        let dir = opts
            .dir
            .join(format!("quiver-bench-broker-{}", std::process::id()));
        let mut cfg = Config::default();
        cfg.admin.enabled = false;
        cfg.broker.listen = "127.0.0.1:0".parse().expect("literal address");
        cfg.broker.data_dir = dir.clone();
        cfg.store.dir = dir.join("store");
        cfg.store.flush_mode = opts.flush;
        cfg.store.segment_size = 256 << 20;
        // The benchmark measures the broker, not how full this machine's disk is.
        cfg.store.disk_high_watermark = 1.0;
        cfg.store.disk_clean_watermark = 1.0;
        cfg.store.disk_headroom_bytes = 0;
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bench-broker".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("broker-worker")
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let server = Server::start(cfg).await?;
                    let token = server.shutdown_token();
                    let _ = tx.send((server.addr, server.fingerprint.clone(), token));
                    server.wait().await
                })
            })?;
        let (addr, fp, token) = rx.recv().context("embedded broker failed to start")?;
        let mut config = ClientConfig::new(addr, Tls::fingerprint_from_hex(&fp)?);
        config.request_timeout = Duration::from_secs(30);
        Ok(Target {
            config,
            embedded: Some((thread, token, dir)),
        })
    }

    fn close(self) -> anyhow::Result<()> {
        if let Some((thread, token, dir)) = self.embedded {
            token.cancel();
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("embedded broker panicked"))??;
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(())
    }
}

/// One line of a client connection's QUIC statistics, when `QUIVER_BENCH_QUIC_STATS` is set:
/// what to look at when a p99 is far above its p50 (losses, congestion, blocked flow control).
fn print_transport_stats(who: &str, client: &Client) {
    if std::env::var_os("QUIVER_BENCH_QUIC_STATS").is_none() {
        return;
    }
    if let Some(s) = client.transport_stats() {
        eprintln!(
            "  {who} quic: rtt {:?} cwnd {} sent {} pkts lost {} pkts ({} B) congestion events {} | \
             tx acks {} ack_freq {} max_data {} max_stream_data {} blocked (data {} stream {} \
             streams {}) | rx acks {} ack_freq {} | udp tx {} rx {} dgrams",
            s.path.rtt,
            s.path.cwnd,
            s.path.sent_packets,
            s.path.lost_packets,
            s.path.lost_bytes,
            s.path.congestion_events,
            s.frame_tx.acks,
            s.frame_tx.ack_frequency,
            s.frame_tx.max_data,
            s.frame_tx.max_stream_data,
            s.frame_tx.data_blocked,
            s.frame_tx.stream_data_blocked,
            s.frame_tx.streams_blocked_bidi,
            s.frame_rx.acks,
            s.frame_rx.ack_frequency,
            s.udp_tx.datagrams,
            s.udp_rx.datagrams,
        );
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn body(size: usize) -> Vec<u8> {
    let mut b = vec![b'q'; size.max(16)];
    b.truncate(size.max(16));
    b
}

/// Waits for the worker tasks and returns their merged latency histogram.
async fn join_all(
    tasks: Vec<tokio::task::JoinHandle<()>>,
    hist: &Mutex<Histogram<u64>>,
) -> anyhow::Result<Histogram<u64>> {
    for t in tasks {
        t.await?;
    }
    Ok(hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| histogram()))
}

/// Microseconds since the send time stamped in the body's first 16 bytes.
fn stamp_latency_us(body: &[u8], now_ns: u128) -> Option<u64> {
    let stamp: [u8; 16] = body.get(..16)?.try_into().ok()?;
    Some((now_ns.saturating_sub(u128::from_le_bytes(stamp)) / 1000).max(1) as u64)
}

/// Body with the send time (ns since the epoch) in its first 16 bytes, for end-to-end latency.
fn stamped(template: &[u8]) -> Bytes {
    let mut b = template.to_vec();
    b[..16].copy_from_slice(&now_nanos().to_le_bytes());
    Bytes::from(b)
}

/// What a route refresh costs: sequential route queries to each node of the cluster.
async fn route_lookups(cfg: &ClientConfig, opts: &NetBenchOptions) -> anyhow::Result<()> {
    const LOOKUPS: u32 = 2000;
    for addr in &opts.cluster {
        let cluster = Cluster::connect(&[*addr], cfg.clone()).await?;
        let mut h = histogram();
        let start = Instant::now();
        for _ in 0..LOOKUPS {
            let t = Instant::now();
            cluster
                .route(&opts.topic, false, cfg.request_timeout)
                .await?;
            let _ = h.record(t.elapsed().as_micros().max(1) as u64);
        }
        let elapsed = start.elapsed();
        super::say(&format!(
            "route lookups via {addr}: {:.0}/s, p50 {} us, p99 {} us",
            f64::from(LOOKUPS) / elapsed.as_secs_f64(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99)
        ));
        cluster.close().await;
    }
    Ok(())
}

async fn ensure_topic(client: &Client, topic: &str, queues: u32) -> anyhow::Result<()> {
    let admin = Admin::new(client.clone());
    if admin.describe_topic(topic).await.is_err() {
        admin.create_topic(topic, queues).await?;
    }
    Ok(())
}

pub(crate) async fn run_producers(
    cfg: &ClientConfig,
    opts: &NetBenchOptions,
    pb: &ProgressBar,
) -> anyhow::Result<NetReport> {
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(histogram()));
    let template = Arc::new(body(opts.size));
    let start = Instant::now();
    let deadline = start + opts.duration;
    let claimed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..opts.producers {
        let options = ProducerOptions {
            selector: QueueSelector::RoundRobin,
            ..ProducerOptions::default()
        };
        let producer = if opts.cluster.is_empty() {
            let client = Client::connect(cfg.clone()).await?;
            clients.push(client.clone());
            Producer::new(client, options)
        } else {
            let cluster = Cluster::connect(&opts.cluster, cfg.clone()).await?;
            Producer::with_cluster(cluster, options)
        };
        for _ in 0..opts.inflight.max(1) {
            let (producer, sent, errors, hist, template, claimed, pb) = (
                producer.clone(),
                sent.clone(),
                errors.clone(),
                hist.clone(),
                template.clone(),
                claimed.clone(),
                pb.clone(),
            );
            let (topic, batch, total) =
                (opts.topic.clone(), opts.batch.max(1) as u64, opts.messages);
            tasks.push(tokio::spawn(async move {
                let mut local = histogram();
                loop {
                    let first = claimed.fetch_add(batch, Ordering::Relaxed);
                    if first >= total || Instant::now() > deadline {
                        break;
                    }
                    let n = batch.min(total - first);
                    let t = Instant::now();
                    let ok = if n == 1 {
                        producer
                            .send(Message::new(topic.as_str(), stamped(&template)))
                            .await
                            .map(|_| 1)
                    } else {
                        let msgs = (0..n)
                            .map(|_| Message::new(topic.as_str(), stamped(&template)))
                            .collect();
                        producer.send_batch(msgs).await.map(|r| r.len() as u64)
                    };
                    match ok {
                        Ok(k) => {
                            let _ = local.record(t.elapsed().as_micros().max(1) as u64);
                            sent.fetch_add(k, Ordering::Relaxed);
                            pb.inc(k);
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
    }
    let latency = join_all(tasks, &hist).await?;
    for c in &clients {
        print_transport_stats("producer", c);
    }
    Ok(NetReport {
        name: format!(
            "produce ({}x{} in flight, batch {})",
            opts.producers, opts.inflight, opts.batch
        ),
        messages: sent.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        latency,
        errors: errors.load(Ordering::Relaxed),
    })
}

/// Consumes `total` messages from all queues; with `e2e`, records per-message latency from the
/// stamp in the body, else per-pull latency.
async fn run_consumers(
    cfg: &ClientConfig,
    opts: &NetBenchOptions,
    total: u64,
    e2e: bool,
    pb: &ProgressBar,
) -> anyhow::Result<NetReport> {
    let got = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(histogram()));
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let deadline = start + opts.duration + Duration::from_secs(5);
    let mut tasks = Vec::new();
    let consumers = opts.consumers.max(1).min(opts.queues as usize);
    for c in 0..consumers {
        let client = Client::connect(cfg.clone()).await?;
        let consumer = PullConsumer::new(client);
        let queues: Vec<u32> = (0..opts.queues)
            .filter(|q| *q as usize % consumers == c)
            .collect();
        for q in queues {
            let (consumer, got, errors, hist, done, pb) = (
                consumer.clone(),
                got.clone(),
                errors.clone(),
                hist.clone(),
                done.clone(),
                pb.clone(),
            );
            let topic = opts.topic.clone();
            let plugins = if opts.plugin.is_some() {
                vec![quiver_client::PluginRef::new(BENCH_PLUGIN)]
            } else {
                Vec::new()
            };
            let depth = opts.inflight;
            tasks.push(tokio::spawn(async move {
                let mut local = histogram();
                let mut reader = QueueReader::new(consumer, topic, q, 0, depth);
                while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let t = Instant::now();
                    let offset = reader.offset();
                    let r = reader
                        .next(PullOptions {
                            max_messages: 256,
                            long_poll: Duration::from_millis(200),
                            plugins: plugins.clone(),
                            ..PullOptions::default()
                        })
                        .await;
                    match r {
                        Ok(r) => {
                            // Messages processed: with a plugin that drops messages, the
                            // offset still moves past them. A jump over messages that are gone
                            // (retention under disk pressure) is not a read: an error.
                            let n = if e2e {
                                r.messages.len() as u64
                            } else if matches!(
                                r.status,
                                PullStatus::OffsetTooSmall | PullStatus::OffsetOverflow
                            ) {
                                errors.fetch_add(1, Ordering::Relaxed);
                                0
                            } else {
                                r.next_offset.saturating_sub(offset)
                            };
                            if e2e {
                                let now = now_nanos();
                                for m in &r.messages {
                                    if let Some(us) = stamp_latency_us(&m.body, now) {
                                        let _ = local.record(us);
                                    }
                                }
                            } else if n > 0 {
                                let _ = local.record(t.elapsed().as_micros().max(1) as u64);
                            }
                            pb.inc(n);
                            if got.fetch_add(n, Ordering::Relaxed) + n >= total {
                                done.store(true, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                if let Ok(mut h) = hist.lock() {
                    let _ = h.add(&local);
                }
            }));
        }
    }
    let latency = join_all(tasks, &hist).await?;
    Ok(NetReport {
        name: format!(
            "{} ({} consumers{})",
            if e2e { "end-to-end" } else { "consume" },
            consumers,
            if opts.plugin.is_some() {
                ", plugin on every pull"
            } else {
                ""
            }
        ),
        messages: got.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        latency,
        errors: errors.load(Ordering::Relaxed),
    })
}

/// `consumers` push consumers in `group` receive `total` messages while producers send them;
/// latency is send-to-listener per message.
async fn run_group_consumers(
    cfg: &ClientConfig,
    opts: &NetBenchOptions,
    group: &str,
    total: u64,
    pb: &ProgressBar,
) -> anyhow::Result<(NetReport, Vec<quiver_client::PushConsumer>)> {
    use quiver_client::{ConsumeFrom, ConsumeResult, PushConsumer, PushConsumerOptions};
    let got = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(histogram()));
    let start = Instant::now();
    let mut members = Vec::new();
    for _ in 0..opts.consumers.max(1) {
        let client = Client::connect(cfg.clone()).await?;
        let (got, hist, pb) = (got.clone(), hist.clone(), pb.clone());
        let options = PushConsumerOptions {
            consume_from: ConsumeFrom::First,
            batch_size: 32,
            ..PushConsumerOptions::new(group)
        };
        let member = PushConsumer::start(
            client,
            vec![opts.topic.clone().into()],
            options,
            move |batch: Vec<quiver_client::ReceivedMessage>| {
                let (got, hist, pb) = (got.clone(), hist.clone(), pb.clone());
                async move {
                    let now = now_nanos();
                    if let Ok(mut h) = hist.lock() {
                        for m in &batch {
                            if let Some(us) = stamp_latency_us(&m.body, now) {
                                let _ = h.record(us);
                            }
                        }
                    }
                    got.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    pb.inc(batch.len() as u64);
                    ConsumeResult::Success
                }
            },
        )
        .await?;
        members.push(member);
    }
    let deadline = start + opts.duration + Duration::from_secs(5);
    while got.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let latency = hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| histogram());
    Ok((
        NetReport {
            name: format!("group consume ({} members)", members.len()),
            messages: got.load(Ordering::Relaxed),
            elapsed: start.elapsed(),
            latency,
            errors: 0,
        },
        members,
    ))
}

/// Which measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NetBench {
    /// Producers only.
    Produce,
    /// Produce first (not timed), then consume everything.
    Consume,
    /// Producers and consumers at once; latency from send to receive.
    EndToEnd,
}

/// Runs a network benchmark and prints its figures.
pub(crate) fn run(kind: NetBench, opts: &NetBenchOptions) -> anyhow::Result<Vec<NetReport>> {
    let target = Target::open(opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()?;
    let cfg = target.config.clone();
    let result = rt.block_on(async {
        let client = Client::connect(cfg.clone()).await?;
        if opts.cluster.is_empty() {
            ensure_topic(&client, &opts.topic, opts.queues).await?;
        } else {
            let cluster = Cluster::connect(&opts.cluster, cfg.clone()).await?;
            match cluster
                .create_topic(&opts.topic, opts.queues, &[], cfg.request_timeout)
                .await
            {
                Ok(_) => {}
                Err(e) if e.status() == Some(quiver_client::Status::TopicExists) => {}
                Err(e) => return Err(e).context("creating the benchmark topic in the cluster"),
            }
            let route = cluster
                .route(&opts.topic, false, cfg.request_timeout)
                .await?;
            super::say(&format!(
                "cluster: topic {} on {} broker sets ({})",
                opts.topic,
                route.len(),
                route
                    .iter()
                    .map(|s| format!("{} x{}", s.name, s.queues))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            cluster.close().await;
        }
        if let Some((module, config)) = &opts.plugin {
            let admin = quiver_client::Admin::new(client.clone());
            let loaded = admin
                .load_plugin(BENCH_PLUGIN, module.clone(), config.clone(), None, None)
                .await;
            match loaded {
                Ok(_) => {}
                Err(e) if e.status() == Some(quiver_client::Status::PluginExists) => {
                    admin
                        .reload_plugin(
                            BENCH_PLUGIN,
                            Some(module.clone().into()),
                            Some(config.clone()),
                            None,
                            None,
                        )
                        .await?;
                }
                Err(e) => return Err(e).context("loading the benchmark plugin"),
            }
        }
        super::say(&format!(
            "quiver bench {}: {} x {}-byte messages, broker {}{}",
            match kind {
                NetBench::Produce => "produce",
                NetBench::Consume => "consume",
                NetBench::EndToEnd => "e2e",
            },
            opts.messages,
            opts.size,
            cfg.addr,
            if target.embedded.is_some() {
                format!(
                    " (embedded, {} flush)",
                    match opts.flush {
                        FlushMode::Sync => "sync",
                        FlushMode::Async => "async",
                    }
                )
            } else {
                String::new()
            }
        ));
        // The transport's own capacity on this machine, in the same run (before the load).
        let (up, down) = if opts.baseline_bytes > 0 {
            let raw = super::quic::measure(&opts.dir, opts.baseline_bytes)
                .await
                .context("measuring the raw-QUIC baseline")?;
            raw.print(opts.baseline_bytes);
            (Some(raw.upload), Some(raw.download))
        } else {
            (None, None)
        };
        let mut reports = Vec::new();
        match kind {
            NetBench::Produce => {
                let pb = progress(opts.messages, "produce");
                let r = run_producers(&cfg, opts, &pb).await?;
                pb.finish_and_clear();
                r.print(opts.size, up);
                reports.push(r);
                if !opts.cluster.is_empty() {
                    route_lookups(&cfg, opts).await?;
                }
            }
            NetBench::Consume if opts.group.is_some() => {
                let group = opts.group.clone().unwrap_or_default();
                let pb = progress(opts.messages, "consume");
                let hidden = ProgressBar::hidden();
                let (p, c) = tokio::join!(
                    run_producers(&cfg, opts, &hidden),
                    run_group_consumers(&cfg, opts, &group, opts.messages, &pb)
                );
                pb.finish_and_clear();
                let (p, (c, members)) = (p?, c?);
                for m in members {
                    m.shutdown().await?;
                }
                p.print(opts.size, up);
                c.print(opts.size, down);
                reports.push(p);
                reports.push(c);
            }
            NetBench::Consume => {
                let pb = progress(opts.messages, "fill");
                let fill = NetBenchOptions {
                    batch: opts.batch.max(64),
                    ..opts.clone()
                };
                let r = run_producers(&cfg, &fill, &pb).await?;
                pb.finish_and_clear();
                r.print(opts.size, up);
                let pb = progress(r.messages, "consume");
                let c = run_consumers(&cfg, opts, r.messages, false, &pb).await?;
                pb.finish_and_clear();
                c.print(opts.size, down);
                reports.push(r);
                reports.push(c);
            }
            NetBench::EndToEnd => {
                let pb = progress(opts.messages, "e2e");
                let hidden = ProgressBar::hidden();
                let (p, c) = tokio::join!(
                    run_producers(&cfg, opts, &hidden),
                    run_consumers(&cfg, opts, opts.messages, true, &pb)
                );
                pb.finish_and_clear();
                let (p, c) = (p?, c?);
                p.print(opts.size, up);
                c.print(opts.size, down);
                reports.push(p);
                reports.push(c);
            }
        }
        client.close().await;
        anyhow::Ok(reports)
    });
    drop(rt);
    target.close()?;
    result
}
