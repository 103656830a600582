//! `quiver bench replication`: what replication costs and how fast failover is, on local
//! `quiver serve` processes (the layouts of `quiver dev-cluster`).
//!
//! 1. Throughput: the same producers (batches) against a one-node cluster (a single broker),
//!    then against a set of a master and one slave in `sync` and in `async` replication;
//!    msgs/s, p99 per request, and the ratio to the single broker.
//! 2. Failover: a set of a master and two slaves in `sync` replication under producers; the
//!    master is killed with SIGKILL `kills` times (restarted each time): the time until the
//!    controller names a new master and until the first send is acknowledged, p50 and max;
//!    and every acknowledged message is looked for on the final master.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::ProgressBar;
use quiver_client::{
    Client, ClientConfig, Cluster, Message, Producer, ProducerOptions, PullConsumer, PullOptions,
    Tls,
};

use super::net::{NetBenchOptions, NetReport};
use crate::cli::dev_cluster::LocalNodes;

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct ReplicationBenchOptions {
    /// Where the nodes' directories go (each layout in its own subdirectory).
    pub(crate) dir: PathBuf,
    /// Seconds of each throughput run (0 skips the throughput part).
    pub(crate) seconds: u64,
    /// Producers (each with its own connection).
    pub(crate) producers: usize,
    /// Requests in flight per producer.
    pub(crate) inflight: usize,
    /// Messages per request.
    pub(crate) batch: usize,
    /// Body size in bytes.
    pub(crate) size: usize,
    /// Master kills of the failover part (0 skips it).
    pub(crate) kills: usize,
}

const TOPIC: &str = "bench-replication";

/// Runs both parts and prints their figures.
pub(crate) fn run(o: &ReplicationBenchOptions) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-replication")
        .enable_all()
        .build()?;
    rt.block_on(async {
        std::fs::create_dir_all(&o.dir).with_context(|| format!("creating {}", o.dir.display()))?;
        let base = o.dir.join(format!(
            "replication-{}-{}",
            std::process::id(),
            quiver_protocol::text::epoch_ms()
        ));
        if o.seconds > 0 {
            throughput(o, &base).await?;
        }
        if o.kills > 0 {
            failover(o, &base.join("failover")).await?;
        }
        // Kept when a part failed (the nodes' logs say why).
        let _ = std::fs::remove_dir_all(&base);
        Ok(())
    })
}

/// Starts a layout and waits until it is ready; for a set with slaves, until they are in
/// sync.
async fn start(
    dir: &std::path::Path,
    nodes: u32,
    slaves: u32,
    replication: &str,
) -> anyhow::Result<LocalNodes> {
    let n = LocalNodes::start(dir, nodes, slaves, replication)?;
    n.ready(Duration::from_secs(60)).await?;
    if slaves > 0 {
        in_sync(&n, slaves as usize, None, Duration::from_secs(60)).await?;
    }
    Ok(n)
}

/// Waits until set-1 has `want` slaves in sync; returns its (master, epoch).
async fn in_sync(
    n: &LocalNodes,
    want: usize,
    down: Option<usize>,
    limit: Duration,
) -> anyhow::Result<(u64, u64)> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = set_state(n, down).await {
            if s.in_sync.len() >= want {
                return Ok((s.master, s.epoch));
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "set-1 does not have {want} slaves in sync after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// set-1 as the most up-to-date node that answers (other than `down`) sees it: the highest
/// epoch, then the most log applied (a node that just restarted may answer from old state).
async fn set_state(
    n: &LocalNodes,
    down: Option<usize>,
) -> Option<quiver_protocol::cmd::ClusterSet> {
    let mut best: Option<(u64, u64, quiver_protocol::cmd::ClusterSet)> = None;
    for (i, addr) in n.addrs().into_iter().enumerate() {
        if Some(i) == down {
            continue;
        }
        let mut cfg = ClientConfig::new(addr, Tls::CaFile(n.cert.clone()));
        cfg.connect_timeout = Duration::from_millis(500);
        cfg.request_timeout = Duration::from_millis(500);
        let Ok(c) = Client::connect(cfg).await else {
            continue;
        };
        let info = quiver_client::Admin::new(c.clone()).cluster_info().await;
        c.close().await;
        if let Ok(i) = info {
            if i.leader != 0 {
                if let Some(s) = i.sets.into_iter().find(|s| s.set == "set-1") {
                    let key = (s.epoch, i.applied);
                    if best.as_ref().is_none_or(|b| (b.0, b.1) < key) {
                        best = Some((key.0, key.1, s));
                    }
                }
            }
        }
    }
    best.map(|b| b.2)
}

/// The producers of `quiver bench produce --cluster` against `n`'s nodes.
async fn produce(o: &ReplicationBenchOptions, n: &LocalNodes) -> anyhow::Result<NetReport> {
    let cfg = ClientConfig::new(n.addrs()[0], Tls::CaFile(n.cert.clone()));
    let cluster = Cluster::connect(&n.addrs(), cfg.clone()).await?;
    cluster
        .create_topic(TOPIC, 8, &[], Duration::from_secs(10))
        .await
        .context("creating the benchmark topic")?;
    cluster.close().await;
    let opts = NetBenchOptions {
        addr: Some(n.addrs()[0]),
        tls: Some(Tls::CaFile(n.cert.clone())),
        flush: quiver::store::FlushMode::Async,
        dir: PathBuf::new(),
        topic: TOPIC.into(),
        queues: 8,
        size: o.size,
        messages: u64::MAX,
        duration: Duration::from_secs(o.seconds),
        producers: o.producers,
        inflight: o.inflight,
        batch: o.batch,
        consumers: 0,
        group: None,
        plugin: None,
        baseline_bytes: 0,
        cluster: n.addrs(),
    };
    super::net::run_producers(&cfg, &opts, &ProgressBar::hidden()).await
}

async fn throughput(o: &ReplicationBenchOptions, dir: &std::path::Path) -> anyhow::Result<()> {
    println!(
        "quiver bench replication: {} producers x {} in flight, batches of {} x {}-byte \
         messages, {} s per layout (nodes: local `quiver serve` processes)",
        o.producers, o.inflight, o.batch, o.size, o.seconds
    );
    let mut single_rate = None;
    for (name, nodes, slaves, mode) in [
        ("single broker", 1, 0, "async"),
        ("master + slave, sync", 2, 1, "sync"),
        ("master + slave, async", 2, 1, "async"),
    ] {
        let n = start(
            &dir.join(name.replace([' ', ',', '+'], "-")),
            nodes,
            slaves,
            mode,
        )
        .await?;
        let mut r = produce(o, &n).await?;
        r.name = name.to_string();
        r.print(o.size, None);
        match single_rate {
            None => single_rate = Some(r.rate()),
            Some(s) => println!(
                "{:<28} {:.2} x the single broker's throughput",
                "",
                r.rate() / s
            ),
        }
        drop(n);
    }
    Ok(())
}

/// Medians and maxima of durations.
fn p50_max(v: &[Duration]) -> (Duration, Duration) {
    let mut s = v.to_vec();
    s.sort();
    (s[s.len() / 2], s[s.len() - 1])
}

async fn failover(o: &ReplicationBenchOptions, dir: &std::path::Path) -> anyhow::Result<()> {
    println!(
        "\nfailover: a master and two slaves (sync replication, min_in_sync 2), {} producers \
         sending; the master gets SIGKILL {} times, restarted each time",
        o.producers, o.kills
    );
    let mut n = start(dir, 3, 2, "sync").await?;
    let cfg = ClientConfig::new(n.addrs()[0], Tls::CaFile(n.cert.clone()));
    let cluster = Cluster::connect(&n.addrs(), cfg.clone()).await?;
    cluster
        .create_topic(TOPIC, 4, &[], Duration::from_secs(10))
        .await
        .context("creating the benchmark topic")?;
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let acked: Arc<Mutex<Vec<u128>>> = Arc::default();
    let body = vec![b'x'; o.size];
    let producers: Vec<_> = (0..o.producers)
        .map(|_| {
            let p = Producer::with_cluster(
                cluster.clone(),
                ProducerOptions {
                    send_timeout: Duration::from_secs(3),
                    ..ProducerOptions::default()
                },
            );
            let (stop, failed, acked, body) =
                (stop.clone(), failed.clone(), acked.clone(), body.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match p.send(Message::new(TOPIC, body.clone())).await {
                        Ok(r) => acked.lock().expect("acked").push(r.msg_id.0),
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
        })
        .collect();
    let probe = Producer::with_cluster(
        cluster.clone(),
        ProducerOptions {
            send_timeout: Duration::from_secs(2),
            ..ProducerOptions::default()
        },
    );
    let (mut elected, mut first_ack) = (Vec::new(), Vec::new());
    for k in 0..o.kills {
        let (master, epoch) = in_sync(&n, 2, None, Duration::from_secs(60)).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let victim = master as usize - 1;
        n.kill9(victim).await;
        let killed = Instant::now();
        let mut named = None;
        let mut acked_at = None;
        while named.is_none() || acked_at.is_none() {
            anyhow::ensure!(
                killed.elapsed() < Duration::from_secs(60),
                "kill {k}: no new master or no acknowledged send within 60 s\n{}",
                n.tail(victim, 10)
            );
            if named.is_none() {
                if let Some(s) = set_state(&n, Some(victim)).await {
                    if s.epoch > epoch && s.master != master {
                        named = Some(killed.elapsed());
                    }
                }
            }
            if acked_at.is_none() {
                if let Ok(r) = probe.send(Message::new(TOPIC, body.clone())).await {
                    acked_at = Some(killed.elapsed());
                    acked.lock().expect("acked").push(r.msg_id.0);
                }
            }
        }
        let (e, a) = (named.unwrap_or_default(), acked_at.unwrap_or_default());
        println!(
            "kill {:>2}: node {master} down; new master named after {:>7.3} s, first send \
             acknowledged after {:>7.3} s",
            k + 1,
            e.as_secs_f64(),
            a.as_secs_f64()
        );
        elected.push(e);
        first_ack.push(a);
        n.spawn(victim)?;
    }
    let (master, _) = in_sync(&n, 2, None, Duration::from_secs(60)).await?;
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        let _ = p.await;
    }
    let acked = acked.lock().expect("acked").clone();
    // Every acknowledged message, looked for on the final master.
    let held = read_ids(n.addrs()[master as usize - 1], &n.cert).await?;
    let lost = acked.iter().filter(|id| !held.contains(id)).count();
    let (ep50, emax) = p50_max(&elected);
    let (ap50, amax) = p50_max(&first_ack);
    println!(
        "new master named:           p50 {:.3} s  max {:.3} s",
        ep50.as_secs_f64(),
        emax.as_secs_f64()
    );
    println!(
        "first send acknowledged:    p50 {:.3} s  max {:.3} s  (target p50 <= 5 s)",
        ap50.as_secs_f64(),
        amax.as_secs_f64()
    );
    println!(
        "acknowledged {} messages, {} sends failed (not acknowledged), {lost} acknowledged \
         messages lost",
        acked.len(),
        failed.load(Ordering::Relaxed)
    );
    cluster.close().await;
    anyhow::ensure!(lost == 0, "{lost} acknowledged messages lost");
    Ok(())
}

/// Every message id of the benchmark topic on the broker at `addr`.
async fn read_ids(
    addr: std::net::SocketAddr,
    cert: &std::path::Path,
) -> anyhow::Result<HashSet<u128>> {
    let client = Client::connect(ClientConfig::new(addr, Tls::CaFile(cert.to_path_buf()))).await?;
    let pull = PullConsumer::new(client.clone());
    let mut ids = HashSet::new();
    for q in 0..4 {
        let mut offset = 0;
        loop {
            let r = pull
                .pull(
                    TOPIC,
                    q,
                    offset,
                    PullOptions {
                        max_messages: 1024,
                        ..PullOptions::default()
                    },
                )
                .await?;
            if r.messages.is_empty() {
                break;
            }
            ids.extend(r.messages.iter().map(|m| m.msg_id.0));
            offset = r.next_offset;
        }
    }
    client.close().await;
    Ok(ids)
}
