//! Master/slave replication with real processes: broker set `a` has a master (node 1) and a
//! slave (node 2); node 3 is a controller only. The slave mirrors the master's commit log
//! (same offsets, same messages), serves reads, refuses writes, and catches up after
//! `kill -9`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quiver_client::{
    Client, ClientConfig, ClientError, Cluster, Message, Producer, ProducerOptions, PullConsumer,
    PullOptions, Status, Tls,
};

use super::cluster::{
    agreed_leader, free_port, info, node_config, shared_identity, tail_logs, wait_for, Node,
};

/// Sync replication settings (short lag and acknowledgement timeouts for the tests).
pub(crate) const SYNC: &str =
    "replication = \"sync\"\nmin_in_sync = 2\nreplica_lag_ms = 1000\nreplica_ack_timeout_ms = 1000\n";

/// Three nodes on free ports sharing one certificate: voters 1-3; `extra` goes into the
/// `[cluster]` section of the nodes that serve in a broker set.
pub(crate) struct Nodes {
    pub(crate) dir: tempfile::TempDir,
    identity: (std::path::PathBuf, std::path::PathBuf),
    pub(crate) cert: std::path::PathBuf,
    voters: Vec<(u64, SocketAddr)>,
    pub(crate) addrs: Vec<SocketAddr>,
    extra: &'static str,
}

impl Nodes {
    pub(crate) fn new(extra: &'static str) -> Nodes {
        let dir = tempfile::tempdir().unwrap();
        let identity = shared_identity(dir.path());
        let cert = identity.0.clone();
        let voters: Vec<(u64, SocketAddr)> = (1..=3)
            .map(|i| (i, SocketAddr::from(([127, 0, 0, 1], free_port()))))
            .collect();
        let addrs = voters.iter().map(|(_, a)| *a).collect();
        Nodes {
            dir,
            identity,
            cert,
            voters,
            addrs,
            extra,
        }
    }

    pub(crate) fn start(&self, id: u64, set: Option<&str>) -> Node {
        self.start_with(id, set, "")
    }

    /// [`Nodes::start`] with `more` added to the node's `[cluster]` section.
    pub(crate) fn start_with(&self, id: u64, set: Option<&str>, more: &str) -> Node {
        let addr = self.addrs[id as usize - 1];
        let cfg = node_config(
            self.dir.path(),
            &format!("node{id}"),
            id,
            true,
            set,
            "c1",
            &self.voters,
            addr,
            &self.identity,
        );
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        if set.is_some() {
            text += self.extra;
        }
        text += more;
        std::fs::write(&cfg, text).unwrap();
        Node::start(&cfg, &self.dir.path().join(format!("node{id}.log")), addr)
    }
}

impl Nodes {
    /// The usual layout: node 1 the master of set `a`, node 3 a controller only, node 2 the
    /// slave, started in that order and waited for until node 2 is in sync. Returns the nodes
    /// (1, 2, 3).
    pub(crate) async fn master_slave_controller(&self) -> (Node, Node, Node) {
        let n1 = self.start(1, Some("a"));
        let n3 = self.start(3, None);
        wait_for(
            &self.addrs[2],
            &self.cert,
            Duration::from_secs(20),
            self.dir.path(),
            |i| i.leader != 0 && i.brokers.iter().any(|b| b.id == 1 && b.alive),
        )
        .await;
        let n2 = self.start(2, Some("a"));
        wait_for(
            &self.addrs[2],
            &self.cert,
            Duration::from_secs(20),
            self.dir.path(),
            |i| i.sets.first().is_some_and(|s| s.in_sync == vec![2]),
        )
        .await;
        (n1, n2, n3)
    }

    /// A cluster client through node 3, with `topic` created (`queues` queues).
    pub(crate) async fn cluster_with(&self, topic: &str, queues: u32) -> Cluster {
        let template = ClientConfig::new(self.addrs[2], Tls::CaFile(self.cert.clone()));
        let cluster = Cluster::connect(&[self.addrs[2]], template).await.unwrap();
        cluster
            .create_topic(topic, queues, &[], Duration::from_secs(5))
            .await
            .unwrap();
        cluster
    }
}

/// Every message of `topic` on the broker at `addr`: (queue, offset, id, body) per queue.
pub(crate) async fn read_all(
    addr: SocketAddr,
    cert: &std::path::Path,
    topic: &str,
) -> Vec<(u32, u64, u128, Vec<u8>)> {
    let client = Client::connect(ClientConfig::new(addr, Tls::CaFile(cert.to_path_buf())))
        .await
        .unwrap();
    let pull = PullConsumer::new(client.clone());
    let mut out = Vec::new();
    for q in 0..4 {
        let mut offset = 0;
        loop {
            let r = match pull
                .pull(
                    topic,
                    q,
                    offset,
                    PullOptions {
                        max_messages: 256,
                        ..PullOptions::default()
                    },
                )
                .await
            {
                Ok(r) => r,
                // Not replicated yet: the slave does not have the topic's queues.
                Err(_) => break,
            };
            if r.messages.is_empty() {
                break;
            }
            for m in &r.messages {
                out.push((q, m.queue_offset, m.msg_id.0, m.body.to_vec()));
            }
            offset = r.next_offset;
        }
    }
    client.close().await;
    out
}

async fn send(producer: &Producer, n: usize, tag: &str) {
    for i in 0..n {
        if i % 5 == 0 {
            let batch = (0..7)
                .map(|j| Message::new("orders", format!("{tag}-{i}-{j}")))
                .collect();
            producer.send_batch(batch).await.unwrap();
        } else {
            let r = producer
                .send(Message::new("orders", format!("{tag}-{i}")))
                .await
                .unwrap();
            assert_eq!(r.broker_set, "a");
        }
    }
}

/// Waits until the slave holds exactly what the master holds.
pub(crate) async fn in_step(
    master: SocketAddr,
    slave: SocketAddr,
    cert: &std::path::Path,
    logs: &std::path::Path,
) -> usize {
    let want = read_all(master, cert, "orders").await;
    let same = super::harness::within(
        Duration::from_secs(20),
        Duration::from_millis(100),
        async || {
            let have = read_all(slave, cert, "orders").await;
            if have == want {
                Ok(want.len())
            } else {
                Err(have.len())
            }
        },
    )
    .await;
    same.unwrap_or_else(|have| {
        panic!(
            "the slave has {have} of the master's {} messages\n{}",
            want.len(),
            tail_logs(logs)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_mirrors_its_master_serves_reads_refuses_writes_and_catches_up() {
    let _heavy = super::harness::heavy();
    let nodes = Nodes::new("");
    let (dir, cert, addrs) = (&nodes.dir, nodes.cert.clone(), nodes.addrs.clone());
    let start = |id: u64, set: Option<&str>| nodes.start(id, set);
    // The first broker of set a registers first: it is the master.
    let _n1 = start(1, Some("a"));
    let _n3 = start(3, None);
    agreed_leader(
        &[addrs[0], addrs[2]],
        &cert,
        &[],
        Duration::from_secs(20),
        dir.path(),
    )
    .await;
    wait_for(&addrs[2], &cert, Duration::from_secs(10), dir.path(), |i| {
        i.brokers.iter().any(|b| b.id == 1 && b.alive)
    })
    .await;
    let mut n2 = start(2, Some("a"));
    wait_for(&addrs[2], &cert, Duration::from_secs(10), dir.path(), |i| {
        i.brokers.len() == 2 && i.brokers.iter().all(|b| b.alive)
    })
    .await;

    // Every node reports node 1 as the master of set a, in epoch 1.
    for a in &addrs {
        let i = info(*a, &cert).await.unwrap();
        assert_eq!(
            i.sets,
            vec![quiver_client::quiver_protocol::cmd::ClusterSet {
                set: "a".into(),
                master: 1,
                epoch: 1,
                in_sync: i
                    .sets
                    .first()
                    .map(|s| s.in_sync.clone())
                    .unwrap_or_default(),
            }],
            "{i:?}"
        );
    }
    let template = ClientConfig::new(addrs[2], Tls::CaFile(cert.clone()));
    let cluster = Cluster::connect(&[addrs[2]], template).await.unwrap();
    let route = cluster
        .create_topic("orders", 4, &[], Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(route.len(), 1);
    assert_eq!(
        (route[0].set.as_str(), route[0].node_id),
        ("a", 1),
        "{route:?}"
    );
    let producer = Producer::with_cluster(cluster.clone(), ProducerOptions::default());
    send(&producer, 200, "first").await;
    let n = in_step(addrs[0], addrs[1], &cert, dir.path()).await;
    assert!(n >= 200, "{n}");
    // The master reports its caught-up slave in sync; the controller records it.
    wait_for(&addrs[2], &cert, Duration::from_secs(10), dir.path(), |i| {
        i.sets.first().is_some_and(|s| s.in_sync == vec![2])
    })
    .await;

    // The slave refuses writes (the client is told to go to the master).
    let direct = Client::connect(ClientConfig::new(addrs[1], Tls::CaFile(cert.clone())))
        .await
        .unwrap();
    let to_slave = Producer::new(
        direct.clone(),
        ProducerOptions {
            retries: 0,
            ..ProducerOptions::default()
        },
    );
    match to_slave.send(Message::new("orders", "nope")).await {
        Err(ClientError::Broker { status, .. }) => assert_eq!(status, Status::NotMaster),
        other => panic!("a slave took a write: {other:?}"),
    }
    direct.close().await;

    // kill -9 the slave, go on writing, bring it back: it catches up.
    n2.kill9();
    send(&producer, 150, "slave-down").await;
    n2.spawn();
    let n = in_step(addrs[0], addrs[1], &cert, dir.path()).await;
    assert!(n >= 350, "{n}");
    // And it keeps up with what follows.
    send(&producer, 50, "after").await;
    in_step(addrs[0], addrs[1], &cert, dir.path()).await;
    cluster.close().await;
    if std::env::var_os("QUIVER_TEST_KEEP_LOGS").is_some() {
        let _ = std::fs::copy(dir.path().join("node2.log"), "/tmp/replication-node2.log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_replication_answers_only_what_a_slave_holds_and_refuses_without_one() {
    let _heavy = super::harness::heavy();
    let nodes = Nodes::new(SYNC);
    let (dir, cert, addrs) = (&nodes.dir, nodes.cert.clone(), nodes.addrs.clone());
    let start = |id: u64, set: Option<&str>| nodes.start(id, set);
    let _n1 = start(1, Some("a"));
    let _n3 = start(3, None);
    agreed_leader(
        &[addrs[0], addrs[2]],
        &cert,
        &[],
        Duration::from_secs(20),
        dir.path(),
    )
    .await;
    wait_for(&addrs[2], &cert, Duration::from_secs(10), dir.path(), |i| {
        i.brokers.iter().any(|b| b.id == 1 && b.alive)
    })
    .await;
    let template = ClientConfig::new(addrs[2], Tls::CaFile(cert.clone()));
    let cluster = Cluster::connect(&[addrs[2]], template).await.unwrap();
    cluster
        .create_topic("orders", 1, &[], Duration::from_secs(5))
        .await
        .unwrap();
    let producer = Producer::with_cluster(
        cluster.clone(),
        ProducerOptions {
            send_timeout: Duration::from_secs(2),
            ..ProducerOptions::default()
        },
    );
    // No slave: the master stores nothing and says why (retryable).
    match producer.send(Message::new("orders", "alone")).await {
        Err(e) => assert_eq!(e.status(), Some(Status::NotEnoughReplicas), "{e}"),
        Ok(r) => panic!("a sync send was acknowledged without a slave: {r:?}"),
    }
    // A slave joins and catches up: sends succeed, and each acknowledged message is already
    // readable on the slave when its send returns.
    let mut n2 = start(2, Some("a"));
    let slave = Client::connect(ClientConfig::new(addrs[1], Tls::CaFile(cert.clone())))
        .await
        .unwrap();
    let on_slave = PullConsumer::new(slave.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    while sent < 50 {
        match producer
            .send(Message::new("orders", format!("m{sent}")))
            .await
        {
            Ok(r) => {
                let got = on_slave
                    .pull("orders", 0, r.queue_offset, PullOptions::default())
                    .await
                    .unwrap();
                assert_eq!(
                    got.messages.first().map(|m| m.msg_id),
                    Some(r.msg_id),
                    "an acknowledged sync send is not on the slave"
                );
                sent += 1;
            }
            Err(e) if e.status() == Some(Status::NotEnoughReplicas) => {
                assert!(
                    Instant::now() < deadline,
                    "the slave never got in sync\n{}",
                    tail_logs(dir.path())
                );
                assert_eq!(sent, 0, "refused after the slave was in sync: {e}");
            }
            Err(e) => panic!("send failed: {e}\n{}", tail_logs(dir.path())),
        }
    }
    // The slave dies: sends are refused again (after the lag), never acknowledged alone.
    n2.kill9();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match producer.send(Message::new("orders", "after")).await {
            Err(e) if e.status() == Some(Status::NotEnoughReplicas) => break,
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => assert!(
                Instant::now() < deadline,
                "sends still acknowledged 10 s after the only slave died"
            ),
        }
    }
    slave.close().await;
    cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_is_replaced_by_its_in_sync_slave_and_nothing_acknowledged_is_lost() {
    let _heavy = super::harness::heavy();
    let nodes = Nodes::new(SYNC);
    let (dir, cert, addrs) = (&nodes.dir, nodes.cert.clone(), nodes.addrs.clone());
    let start = |id: u64, set: Option<&str>| nodes.start(id, set);
    let mut n1 = start(1, Some("a"));
    let _n3 = start(3, None);
    agreed_leader(
        &[addrs[0], addrs[2]],
        &cert,
        &[],
        Duration::from_secs(20),
        dir.path(),
    )
    .await;
    wait_for(&addrs[2], &cert, Duration::from_secs(10), dir.path(), |i| {
        i.brokers.iter().any(|b| b.id == 1 && b.alive)
    })
    .await;
    let _n2 = start(2, Some("a"));
    let template = ClientConfig::new(addrs[2], Tls::CaFile(cert.clone()));
    let cluster = Cluster::connect(&[addrs[2]], template).await.unwrap();
    cluster
        .create_topic("orders", 2, &[], Duration::from_secs(5))
        .await
        .unwrap();
    let producer = Producer::with_cluster(
        cluster.clone(),
        ProducerOptions {
            send_timeout: Duration::from_secs(2),
            ..ProducerOptions::default()
        },
    );
    // Every send acknowledged (sync: the slave holds it too), once the slave is in sync.
    let send_acked = |n: usize, tag: &'static str| {
        let producer = producer.clone();
        let logs = dir.path().to_path_buf();
        async move {
            let mut ids = Vec::new();
            while ids.len() < n {
                // A retryable refusal (no copy in sync yet) is waited out, up to 30 s.
                let m = format!("{tag}-{}", ids.len());
                let sent = super::harness::within(
                    Duration::from_secs(30),
                    Duration::from_millis(100),
                    async || match producer.send(Message::new("orders", m.clone())).await {
                        Err(e) if e.is_retryable() => Err(e),
                        other => Ok(other),
                    },
                )
                .await;
                match sent {
                    Ok(Ok(r)) => ids.push(r.msg_id.0),
                    Ok(Err(e)) | Err(e) => panic!("send failed: {e}\n{}", tail_logs(&logs)),
                }
            }
            ids
        }
    };
    let mut acked = send_acked(100, "before").await;
    wait_for(&addrs[2], &cert, Duration::from_secs(10), dir.path(), |i| {
        i.sets.first().is_some_and(|s| s.in_sync == vec![2])
    })
    .await;

    // kill -9 the master: the controller makes its in-sync slave the master, epoch 2.
    n1.kill9();
    let killed = Instant::now();
    wait_for(&addrs[2], &cert, Duration::from_secs(10), dir.path(), |i| {
        i.sets
            .first()
            .is_some_and(|s| s.master == 2 && s.epoch == 2)
    })
    .await;
    eprintln!("failover after {:?}", killed.elapsed());
    // Nothing acknowledged is lost: the new master has every message.
    let have: std::collections::BTreeSet<u128> = read_all(addrs[1], &cert, "orders")
        .await
        .into_iter()
        .map(|(_, _, id, _)| id)
        .collect();
    let lost: Vec<&u128> = acked.iter().filter(|id| !have.contains(id)).collect();
    assert!(lost.is_empty(), "{} acknowledged messages lost", lost.len());

    // The old master comes back as the new master's slave; sends are acknowledged again
    // (two copies in sync), and it mirrors the new master.
    n1.spawn();
    acked.extend(send_acked(50, "after").await);
    let i = info(addrs[2], &cert).await.unwrap();
    assert_eq!(i.sets[0].master, 2, "{i:?}");
    in_step(addrs[1], addrs[0], &cert, dir.path()).await;
    let have: std::collections::BTreeSet<u128> = read_all(addrs[0], &cert, "orders")
        .await
        .into_iter()
        .map(|(_, _, id, _)| id)
        .collect();
    assert!(acked.iter().all(|id| have.contains(id)));
    cluster.close().await;
}

/// `quiver admin cluster …` against the running nodes at `addr`: (success, stdout, stderr).
fn admin_cli(addr: SocketAddr, cert: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quiver"))
        .arg("admin")
        .arg("--broker")
        .arg(addr.to_string())
        .arg("--ca")
        .arg(cert)
        .args(args)
        .env_remove("QUIVER_BROKER")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("quiver runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The operator's view and switch-over: `cluster list` shows each slave's lag (bytes and
/// messages, from its master) and whether it is in sync; `cluster elect-master` makes an
/// in-sync slave the master (the old master follows it as a slave, sends go on without a
/// restart of the producer) and refuses a node that cannot take over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sees_slave_lag_and_switches_the_master_over() {
    let _heavy = super::harness::heavy();
    let nodes = Nodes::new(SYNC);
    let (dir, cert, addrs) = (&nodes.dir, nodes.cert.clone(), nodes.addrs.clone());
    let _nodes = nodes.master_slave_controller().await;
    let cluster = nodes.cluster_with("orders", 2).await;
    let producer = Producer::with_cluster(
        cluster.clone(),
        ProducerOptions {
            send_timeout: Duration::from_secs(3),
            ..ProducerOptions::default()
        },
    );
    send(&producer, 30, "before").await;

    // The slave's lag as JSON rows, asked of the controller-only node (which asks the
    // master): caught up, it lags by nothing.
    let lag = super::harness::within(
        Duration::from_secs(10),
        Duration::from_millis(200),
        async || {
            let (ok, out, err) = admin_cli(addrs[2], &cert, &["--json", "cluster", "list"]);
            assert!(ok, "{err}");
            let row = out
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["node"] == 2 && v["role"] == "slave")
                .ok_or_else(|| out.clone())?;
            if row["in_sync"] == true && row["lag_bytes"] == 0 && row["lag_messages"] == 0 {
                Ok(row)
            } else {
                Err(row.to_string())
            }
        },
    )
    .await
    .unwrap_or_else(|last| panic!("no caught-up slave row: {last}"));
    eprintln!("slave row: {lag}");
    let (ok, text, _) = admin_cli(addrs[2], &cert, &["cluster", "list"]);
    assert!(ok);
    assert!(
        text.contains("LAG BYTES") && text.contains("LAG MSGS"),
        "{text}"
    );

    // Each broker's status report (BrokerStatus, the console's overview) names its role,
    // and the master's lists its in-sync slave.
    let status = |addr: SocketAddr| {
        let (ok, out, err) = admin_cli(
            addr,
            &cert,
            &["--json", "broker", "status", "--sample", "0"],
        );
        assert!(ok, "broker status: {err}");
        serde_json::from_str::<serde_json::Value>(out.trim()).expect("one JSON object")
    };
    let master = status(addrs[0]);
    assert_eq!(master["role"], "master", "{master}");
    assert_eq!(master["slaves"][0]["node"], 2, "{master}");
    assert_eq!(master["slaves"][0]["in_sync"], true, "{master}");
    assert_eq!(status(addrs[1])["role"], "slave");

    // Refusals: a node that is not a broker of the set, and the master itself.
    let (ok, _, err) = admin_cli(addrs[2], &cert, &["cluster", "elect-master", "a", "3"]);
    assert!(!ok && err.contains("not a registered broker"), "{err}");
    let (ok, _, err) = admin_cli(addrs[2], &cert, &["cluster", "elect-master", "a", "1"]);
    assert!(!ok && err.contains("already the master"), "{err}");

    // The switch-over: node 2 takes over in epoch 2; node 1 follows it.
    let (ok, out, err) = admin_cli(addrs[2], &cert, &["cluster", "elect-master", "a", "2"]);
    assert!(ok, "elect-master failed: {err}");
    assert!(out.contains("master"), "{out}");
    wait_for(&addrs[2], &cert, Duration::from_secs(10), dir.path(), |i| {
        i.sets
            .first()
            .is_some_and(|s| s.master == 2 && s.epoch == 2 && s.in_sync == vec![1])
    })
    .await;
    // The same producer goes on (it follows the route); node 1 mirrors node 2.
    send(&producer, 30, "after").await;
    let n = in_step(addrs[1], addrs[0], &cert, dir.path()).await;
    assert!(n >= 2 * (24 + 6 * 7), "{n}");
    cluster.close().await;
}

/// Reads from a slave (`ReadFrom::Slave`, to offload the master): a cluster consumer group
/// member joins the group on the slave and consumes everything from it; its commits reach
/// the master too (the slave forwards them), so the master's committed offsets, which the
/// slaves mirror, never fall behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_reads_from_a_slave_and_its_commits_reach_the_master() {
    use quiver_client::{
        ClusterPushConsumer, ConsumeFrom, ConsumeResult, PushConsumerOptions, ReadFrom,
        Subscription,
    };
    let _heavy = super::harness::heavy();
    let nodes = Nodes::new("");
    let (dir, cert, addrs) = (&nodes.dir, nodes.cert.clone(), nodes.addrs.clone());
    let _nodes = nodes.master_slave_controller().await;
    let cluster = nodes.cluster_with("orders", 2).await;
    let producer = Producer::with_cluster(cluster.clone(), ProducerOptions::default());
    send(&producer, 50, "m").await;
    let total = in_step(addrs[0], addrs[1], &cert, dir.path()).await;

    let seen: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<u128>>> =
        Default::default();
    let s2 = seen.clone();
    let consumer = ClusterPushConsumer::start(
        &cluster,
        vec![Subscription::new("orders", Default::default())],
        PushConsumerOptions {
            consume_from: ConsumeFrom::First,
            commit_interval: Duration::from_millis(200),
            read_from: ReadFrom::Slave,
            ..PushConsumerOptions::new("billing")
        },
        move |batch| {
            let seen = s2.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .extend(batch.iter().map(|m| m.msg_id.0));
                ConsumeResult::Success
            }
        },
    )
    .await
    .unwrap();
    super::harness::within(
        Duration::from_secs(20),
        Duration::from_millis(100),
        async || {
            let n = seen.lock().unwrap().len();
            if n == total {
                Ok(())
            } else {
                Err(n)
            }
        },
    )
    .await
    .unwrap_or_else(|n| panic!("consumed {n} of {total}\n{}", tail_logs(dir.path())));
    // The member is on the slave, not on the master.
    let admin_of = |a: SocketAddr| {
        let cert = cert.clone();
        async move {
            let c = Client::connect(ClientConfig::new(a, Tls::CaFile(cert)))
                .await
                .unwrap();
            (quiver_client::Admin::new(c.clone()), c)
        }
    };
    let (on_slave, c2) = admin_of(addrs[1]).await;
    let (on_master, c1) = admin_of(addrs[0]).await;
    assert_eq!(
        on_slave
            .describe_group("billing")
            .await
            .unwrap()
            .members
            .len(),
        1
    );
    assert!(on_master
        .describe_group("billing")
        .await
        .unwrap()
        .members
        .is_empty());
    // Its commits reached the master: every queue committed at its end there.
    super::harness::within(
        Duration::from_secs(10),
        Duration::from_millis(200),
        async || {
            let d = on_master.describe_group("billing").await.unwrap();
            let behind: Vec<_> = d
                .queues
                .iter()
                .filter(|q| q.committed != Some(q.max_offset))
                .map(|q| format!("{q:?}"))
                .collect();
            if d.queues.len() == 2 && behind.is_empty() {
                Ok(())
            } else {
                Err(behind)
            }
        },
    )
    .await
    .unwrap_or_else(|b| panic!("the master's committed offsets lag: {b:?}"));
    consumer.shutdown().await.unwrap();
    c1.close().await;
    c2.close().await;
    cluster.close().await;
}

/// Plugins and their attachments survive failover: a transform loaded on the master and
/// attached to a topic's ingress is mirrored to the slave (refused there directly), and
/// after the master's `kill -9` the new master runs it on every send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_and_their_attachments_survive_failover() {
    let _heavy = super::harness::heavy();
    let nodes = Nodes::new("");
    let (dir, cert, addrs) = (&nodes.dir, nodes.cert.clone(), nodes.addrs.clone());
    let (mut n1, _n2, _n3) = nodes.master_slave_controller().await;
    let cluster = nodes.cluster_with("orders", 1).await;
    let connect = |a: SocketAddr| {
        let cert = cert.clone();
        async move {
            Client::connect(ClientConfig::new(a, Tls::CaFile(cert)))
                .await
                .unwrap()
        }
    };
    let wat = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/plugins/tag_to_body.wat"),
    )
    .unwrap();
    let master = quiver_client::Admin::new(connect(addrs[0]).await);
    let loaded = master
        .load_plugin("tagger", wat.clone(), vec![], None, None)
        .await
        .unwrap();
    master.attach_plugin("tagger", "orders").await.unwrap();
    // The slave refuses plugin changes of its own, and mirrors the master's.
    let slave = quiver_client::Admin::new(connect(addrs[1]).await);
    match slave.load_plugin("mine", wat, vec![], None, None).await {
        Err(e) => assert_eq!(e.status(), Some(Status::NotMaster), "{e}"),
        Ok(_) => panic!("a slave loaded a plugin of its own"),
    }
    super::harness::within(
        Duration::from_secs(10),
        Duration::from_millis(200),
        async || {
            let list = slave.list_plugins().await.unwrap();
            match list.iter().find(|p| p.name == "tagger") {
                Some(p) if p.sha256 == loaded.sha256 && p.topics == vec!["orders".to_string()] => {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "the slave never mirrored the plugin: {e}\n{}",
            tail_logs(dir.path())
        )
    });

    // Failover: the new master runs the mirrored transform (the body becomes the tag).
    n1.kill9();
    wait_for(&addrs[2], &cert, Duration::from_secs(20), dir.path(), |i| {
        i.sets
            .first()
            .is_some_and(|s| s.master == 2 && s.epoch == 2)
    })
    .await;
    let producer = Producer::with_cluster(
        cluster.clone(),
        ProducerOptions {
            send_timeout: Duration::from_secs(3),
            ..ProducerOptions::default()
        },
    );
    let sent = super::harness::within(
        Duration::from_secs(15),
        Duration::from_millis(100),
        async || {
            producer
                .send(Message::new("orders", "the body").with_tag("from-the-tag"))
                .await
        },
    )
    .await
    .unwrap();
    let got = read_all(addrs[1], &cert, "orders").await;
    let stored = got
        .iter()
        .find(|m| m.2 == sent.msg_id.0)
        .expect("stored on the new master");
    assert_eq!(stored.3, b"from-the-tag".to_vec());
    master.client().close().await;
    slave.client().close().await;
    cluster.close().await;
}
