//! Failover under load with real processes (issue 15): broker set `a` is one master and two
//! slaves in sync replication, and every node is also a controller voter. Four producers
//! send and a consumer group consumes while the master is killed with `kill -9` ten times in
//! a row (restarted each time). Nothing acknowledged may be lost; the consumer continues
//! from the committed offsets its new master mirrored; every returning old master cuts the
//! tail the new master never had and ends up holding exactly what the others hold.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_client::quiver_protocol::cmd::ClusterInfoReply;
use quiver_client::{
    Client, ClientConfig, Cluster, ClusterPushConsumer, ConsumeFrom, ConsumeResult, Message,
    Producer, ProducerOptions, PushConsumerOptions, Status, Subscription, Tls,
};

use super::cluster::{info, tail_logs, wait_for, Node};
use super::replication::{in_step, read_all, Nodes, SYNC};

const KILLS: usize = 10;

/// The cluster as the most up-to-date live node sees it (the highest epoch of set `a`, then
/// the most log applied): a node that just restarted may still answer from old state.
async fn any_info(
    addrs: &[std::net::SocketAddr],
    cert: &std::path::Path,
    down: Option<usize>,
) -> Option<ClusterInfoReply> {
    let mut best: Option<ClusterInfoReply> = None;
    let key = |i: &ClusterInfoReply| {
        (
            i.sets.iter().find(|s| s.set == "a").map_or(0, |s| s.epoch),
            i.applied,
        )
    };
    for (i, a) in addrs.iter().enumerate() {
        if Some(i) == down {
            continue;
        }
        if let Ok(info) = info(*a, cert).await {
            if info.leader != 0 && best.as_ref().is_none_or(|b| key(b) < key(&info)) {
                best = Some(info);
            }
        }
    }
    best
}

/// Polls the cluster until `ok` holds for set `a`, at most `limit`.
async fn until_set(
    nodes: &Nodes,
    down: Option<usize>,
    limit: Duration,
    what: &str,
    ok: impl Fn(&quiver_client::quiver_protocol::cmd::ClusterSet) -> bool,
) -> quiver_client::quiver_protocol::cmd::ClusterSet {
    let got = super::harness::within(limit, Duration::from_millis(100), async || match any_info(
        &nodes.addrs,
        &nodes.cert,
        down,
    )
    .await
    {
        Some(i) => match i.sets.iter().find(|s| s.set == "a") {
            Some(s) if ok(s) => Ok(s.clone()),
            other => Err(format!("{other:?}")),
        },
        None => Err("no node answered".to_string()),
    })
    .await;
    got.unwrap_or_else(|last| {
        panic!(
            "{what}: not within {limit:?} (last seen {last})\n{}",
            tail_logs(nodes.dir.path())
        )
    })
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_master_kills_under_four_producers_lose_nothing_acknowledged() {
    let _heavy = super::harness::heavy();
    let nodes = Nodes::new(SYNC);
    let (cert, addrs) = (nodes.cert.clone(), nodes.addrs.clone());
    let mut running: Vec<Node> = (1..=3).map(|id| nodes.start(id, Some("a"))).collect();
    until_set(
        &nodes,
        None,
        Duration::from_secs(30),
        "a master and two slaves in sync",
        |s| s.in_sync.len() == 2,
    )
    .await;
    let template = ClientConfig::new(addrs[0], Tls::CaFile(cert.clone()));
    let cluster = Cluster::connect(&addrs, template).await.unwrap();
    cluster
        .create_topic("orders", 4, &[], Duration::from_secs(10))
        .await
        .unwrap();

    // One consumer group member, counting deliveries per message.
    let seen: Arc<Mutex<HashMap<u128, u32>>> = Arc::default();
    let consumer = {
        let seen = seen.clone();
        ClusterPushConsumer::start(
            &cluster,
            vec![Subscription::new("orders", Default::default())],
            PushConsumerOptions {
                consume_from: ConsumeFrom::First,
                commit_interval: Duration::from_millis(200),
                ..PushConsumerOptions::new("billing")
            },
            move |batch| {
                let seen = seen.clone();
                async move {
                    let mut s = seen.lock().unwrap();
                    for m in batch {
                        *s.entry(m.msg_id.0).or_default() += 1;
                    }
                    ConsumeResult::Success
                }
            },
        )
        .await
        .unwrap()
    };

    // Four producers, one send in flight each, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let acked: Arc<Mutex<Vec<u128>>> = Arc::default();
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let producer = Producer::with_cluster(
                cluster.clone(),
                ProducerOptions {
                    send_timeout: Duration::from_secs(3),
                    ..ProducerOptions::default()
                },
            );
            let (stop, failed, acked) = (stop.clone(), failed.clone(), acked.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    match producer
                        .send(Message::new("orders", format!("p{p}-{i}")))
                        .await
                    {
                        Ok(r) => acked.lock().unwrap().push(r.msg_id.0),
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            })
        })
        .collect();

    // Kill the master, again and again.
    let probe = Producer::with_cluster(
        cluster.clone(),
        ProducerOptions {
            send_timeout: Duration::from_secs(2),
            ..ProducerOptions::default()
        },
    );
    let mut elected = Vec::new();
    let mut first_ack = Vec::new();
    for k in 0..KILLS {
        let set = until_set(
            &nodes,
            None,
            Duration::from_secs(60),
            &format!("kill {k}: both slaves in sync"),
            |s| s.in_sync.len() == 2,
        )
        .await;
        // Sends under way on this master before it dies.
        let base = acked.lock().unwrap().len();
        super::harness::within(
            Duration::from_secs(30),
            Duration::from_millis(20),
            async || {
                let n = acked.lock().unwrap().len();
                if n >= base + 200 {
                    Ok(())
                } else {
                    Err(n)
                }
            },
        )
        .await
        .unwrap_or_else(|n| panic!("kill {k}: only {} sends acknowledged", n - base));
        let victim = set.master as usize - 1;
        running[victim].kill9();
        let killed = Instant::now();
        let after = until_set(
            &nodes,
            Some(victim),
            Duration::from_secs(30),
            &format!("kill {k}: a new master"),
            |s| s.epoch > set.epoch && s.master != set.master,
        )
        .await;
        elected.push(killed.elapsed());
        // The first send acknowledged after the kill (through the new master).
        let acked_at = super::harness::within(
            Duration::from_secs(30),
            Duration::from_millis(20),
            async || {
                probe
                    .send(Message::new("orders", format!("probe-{k}")))
                    .await
                    .map(|r| r.msg_id.0)
            },
        )
        .await
        .unwrap_or_else(|e| panic!("kill {k}: no send acknowledged: {e}"));
        first_ack.push(killed.elapsed());
        acked.lock().unwrap().push(acked_at);
        eprintln!(
            "kill {k}: node {} down, node {} master in epoch {} after {:?}, first send acknowledged after {:?}",
            set.master,
            after.master,
            after.epoch,
            elected[k],
            first_ack[k]
        );
        running[victim].spawn();
    }
    until_set(
        &nodes,
        None,
        Duration::from_secs(60),
        "every node back in sync",
        |s| s.in_sync.len() == 2,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let failed = failed.load(Ordering::Relaxed);

    // Nothing acknowledged is lost: the master holds every acknowledged message, and so
    // does each slave, with the same messages at the same offsets (no old master kept a
    // tail of its own).
    let master = until_set(&nodes, None, Duration::from_secs(10), "a master", |_| true)
        .await
        .master as usize
        - 1;
    let want = read_all(addrs[master], &cert, "orders").await;
    let held: std::collections::HashSet<u128> = want.iter().map(|m| m.2).collect();
    let lost = acked.iter().filter(|id| !held.contains(id)).count();
    assert_eq!(
        lost,
        0,
        "{lost} of {} acknowledged messages lost\n{}",
        acked.len(),
        tail_logs(nodes.dir.path())
    );
    for (i, a) in addrs.iter().enumerate() {
        if i == master {
            continue;
        }
        let same = super::harness::within(
            Duration::from_secs(30),
            Duration::from_millis(200),
            async || {
                let have = read_all(*a, &cert, "orders").await;
                if have == want {
                    Ok(())
                } else {
                    Err(have.len())
                }
            },
        )
        .await;
        if let Err(n) = same {
            panic!(
                "node {} holds {n} messages that differ from the master's {}\n{}",
                i + 1,
                want.len(),
                tail_logs(nodes.dir.path())
            );
        }
    }

    // The consumer gets every acknowledged message, continuing from the committed offsets
    // its broker set's new master mirrored (redelivering at most what was in flight).
    let all = super::harness::within(
        Duration::from_secs(60),
        Duration::from_millis(200),
        async || {
            let s = seen.lock().unwrap();
            let missing = acked.iter().filter(|id| !s.contains_key(id)).count();
            if missing == 0 {
                Ok(())
            } else {
                Err(missing)
            }
        },
    )
    .await;
    if let Err(missing) = all {
        panic!(
            "the consumer never got {missing} of {} acknowledged messages\n{}",
            acked.len(),
            tail_logs(nodes.dir.path())
        );
    }
    consumer.shutdown().await.unwrap();
    let (delivered, duplicates) = {
        let s = seen.lock().unwrap();
        (
            s.values().map(|n| u64::from(*n)).sum::<u64>(),
            s.values().map(|n| u64::from(*n - 1)).sum::<u64>(),
        )
    };
    let mut cuts = 0;
    for id in 1..=3 {
        let log = std::fs::read_to_string(nodes.dir.path().join(format!("node{id}.log")))
            .unwrap_or_default();
        cuts += log
            .lines()
            .filter(|l| l.contains("never had: cut back"))
            .count();
    }
    eprintln!(
        "{KILLS} kills: {} sends acknowledged, {failed} failed (retryable, not acknowledged), \
         0 lost; new master elected after p50 {:?} max {:?}; first send acknowledged after \
         p50 {:?} max {:?}; consumer: {delivered} deliveries, {duplicates} duplicates; {cuts} \
         old-master tails cut",
        acked.len(),
        median(&mut elected.clone()),
        elected.iter().max().unwrap(),
        median(&mut first_ack.clone()),
        first_ack.iter().max().unwrap(),
    );
    // Offsets survive failover: without them every new master would deliver the whole
    // topic again (about half of everything on average over the kills, times ten: some five
    // times the messages). With them, each kill re-delivers what was consumed since the last
    // mirrored commit (a second or two): 10-30% of the messages, depending on how fast the
    // machine runs the test.
    assert!(
        duplicates < acked.len() as u64,
        "{duplicates} duplicates for {} messages: offsets did not survive the failovers",
        acked.len()
    );
    cluster.close().await;
}

/// A slave cut off from its master (a UDP relay in front of the master drops everything)
/// leaves the in-sync set, so sync sends are refused instead of acknowledged with one copy;
/// when the network heals it catches up, rejoins, and sends are acknowledged again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_slave_leaves_the_in_sync_set_and_rejoins() {
    let _heavy = super::harness::heavy();
    let nodes = Nodes::new(SYNC);
    let (cert, addrs) = (nodes.cert.clone(), nodes.addrs.clone());
    let logs = nodes.dir.path().to_path_buf();
    // The master advertises the relay: its slave reaches it only through it.
    let relay = super::harness::UdpRelay::start(addrs[0]).await;
    let _n1 = nodes.start_with(1, Some("a"), &format!("advertise = \"{}\"\n", relay.addr));
    let _n3 = nodes.start(3, None);
    wait_for(&addrs[2], &cert, Duration::from_secs(20), &logs, |i| {
        i.leader != 0 && i.brokers.iter().any(|b| b.id == 1 && b.alive)
    })
    .await;
    let _n2 = nodes.start(2, Some("a"));
    wait_for(&addrs[2], &cert, Duration::from_secs(20), &logs, |i| {
        i.sets.first().is_some_and(|s| s.in_sync == vec![2])
    })
    .await;
    let template = ClientConfig::new(addrs[2], Tls::CaFile(cert.clone()));
    let cluster = Cluster::connect(&[addrs[2]], template).await.unwrap();
    cluster
        .create_topic("orders", 1, &[], Duration::from_secs(5))
        .await
        .unwrap();
    // The producer talks to the master directly, not through the relay.
    let direct = Client::connect(ClientConfig::new(addrs[0], Tls::CaFile(cert.clone())))
        .await
        .unwrap();
    let producer = Producer::new(
        direct.clone(),
        ProducerOptions {
            retries: 0,
            send_timeout: Duration::from_secs(3),
            ..ProducerOptions::default()
        },
    );
    for i in 0..20 {
        producer
            .send(Message::new("orders", format!("before-{i}")))
            .await
            .unwrap();
    }

    relay.cut(true);
    let cut = Instant::now();
    wait_for(&addrs[2], &cert, Duration::from_secs(20), &logs, |i| {
        i.sets.first().is_some_and(|s| s.in_sync.is_empty())
    })
    .await;
    eprintln!(
        "the cut-off slave left the in-sync set after {:?}",
        cut.elapsed()
    );
    // With one copy in sync, a send is refused, never acknowledged alone.
    let refused = super::harness::within(
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || match producer.send(Message::new("orders", "alone")).await {
            Err(e) if e.status() == Some(Status::NotEnoughReplicas) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    refused.unwrap_or_else(|last| panic!("a send while cut off: {last}\n{}", tail_logs(&logs)));

    relay.cut(false);
    let healed = Instant::now();
    wait_for(&addrs[2], &cert, Duration::from_secs(30), &logs, |i| {
        i.sets.first().is_some_and(|s| s.in_sync == vec![2])
    })
    .await;
    eprintln!(
        "the slave rejoined {:?} after the network healed",
        healed.elapsed()
    );
    let sent = super::harness::within(
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || producer.send(Message::new("orders", "healed")).await,
    )
    .await;
    sent.unwrap_or_else(|e| panic!("no send acknowledged after healing: {e}"));
    // The slave holds what the master holds (what was stored while it was cut off too).
    in_step(addrs[0], addrs[1], &cert, &logs).await;
    direct.close().await;
    cluster.close().await;
}

/// Asynchronous replication: the master answers at once, so a `kill -9` loses what its
/// in-sync slave had not fetched yet. Measured and printed; bounded by what the master
/// acknowledged within `replica_lag_ms` (+ the 1 s a report takes to reach the controller)
/// before it died (docs/CLUSTER.md). The old master returns as a slave and cuts the tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_replication_loses_at_most_the_documented_window() {
    let _heavy = super::harness::heavy();
    const LAG_MS: u64 = 1000;
    let nodes = Nodes::new("replication = \"async\"\nreplica_lag_ms = 1000\n");
    let (cert, addrs) = (nodes.cert.clone(), nodes.addrs.clone());
    let logs = nodes.dir.path().to_path_buf();
    let (mut n1, _n2, _n3) = nodes.master_slave_controller().await;
    let cluster = nodes.cluster_with("orders", 4).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(u128, Instant)>>> = Arc::default();
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let producer = Producer::with_cluster(
                cluster.clone(),
                ProducerOptions {
                    send_timeout: Duration::from_secs(2),
                    ..ProducerOptions::default()
                },
            );
            let (stop, acked) = (stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let m = Message::new("orders", format!("p{p}-{i}"));
                    if let Ok(r) = producer.send(m).await {
                        acked.lock().unwrap().push((r.msg_id.0, Instant::now()));
                    }
                }
            })
        })
        .collect();
    // Long enough that the bound covers only part of what was acknowledged.
    let started = Instant::now();
    super::harness::within(
        Duration::from_secs(60),
        Duration::from_millis(50),
        async || {
            let n = acked.lock().unwrap().len();
            if n >= 3000 && started.elapsed() >= Duration::from_secs(3) {
                Ok(())
            } else {
                Err(n)
            }
        },
    )
    .await
    .unwrap_or_else(|n| panic!("only {n} sends acknowledged"));
    // Before the kill: an answer the dying master sent may arrive after it.
    let killed = Instant::now();
    n1.kill9();
    wait_for(&addrs[2], &cert, Duration::from_secs(20), &logs, |i| {
        i.sets
            .first()
            .is_some_and(|s| s.master == 2 && s.epoch == 2)
    })
    .await;
    // Sends go on through the new master before the producers stop.
    let base = acked.lock().unwrap().len();
    super::harness::within(
        Duration::from_secs(30),
        Duration::from_millis(20),
        async || {
            let n = acked.lock().unwrap().len();
            if n >= base + 100 {
                Ok(())
            } else {
                Err(n)
            }
        },
    )
    .await
    .unwrap_or_else(|n| {
        panic!(
            "no sends acknowledged by the new master ({} more)",
            n - base
        )
    });
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let held: std::collections::HashSet<u128> = read_all(addrs[1], &cert, "orders")
        .await
        .into_iter()
        .map(|m| m.2)
        .collect();
    let lost: Vec<&(u128, Instant)> = acked.iter().filter(|(id, _)| !held.contains(id)).collect();
    // The window: acknowledged from `replica_lag_ms` + 1 s before the kill on (answers of the
    // old master still in flight when it died arrive after the kill; answers of the new
    // master are never lost, so counting them too only widens the bound).
    let window = Duration::from_millis(LAG_MS + 1000);
    let in_window = |at: &Instant| killed.saturating_duration_since(*at) <= window;
    let bound = acked.iter().filter(|(_, at)| in_window(at)).count();
    eprintln!(
        "async replication, kill -9 of the master: {} of {} acknowledged messages lost; the \
         documented bound (acknowledged in the last {window:?} before the kill or after it) \
         was {bound}",
        lost.len(),
        acked.len()
    );
    assert!(
        lost.iter().all(|(_, at)| in_window(at)),
        "a message acknowledged before the window was lost"
    );
    assert!(lost.len() <= bound);
    // The old master returns as a slave: it cuts what the new master never had and holds
    // exactly what the new master holds.
    n1.spawn();
    in_step(addrs[1], addrs[0], &cert, &logs).await;
    cluster.close().await;
}
