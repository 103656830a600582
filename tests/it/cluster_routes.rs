//! Many masters with real processes: three controller voters, two of them also the brokers of
//! broker sets `a` and `b`, the third a controller only. A topic spread over both sets; a
//! cluster producer and a two-member consumer group running through `kill -9` of the
//! controller leader and of one set's broker, and the broker's return. Every acknowledged
//! message is consumed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_client::{
    Admin, Client, ClientConfig, Cluster, ClusterPushConsumer, ConsumeFrom, ConsumeResult, Message,
    Producer, ProducerOptions, PushConsumerOptions, Status, Subscription, Tls, TransactionState,
};

use super::cluster::{
    agreed_leader, free_port, info, node_config, shared_identity, tail_logs, wait_for, Node,
};

type Seen = Arc<Mutex<BTreeMap<u128, u32>>>;

async fn consumer(cluster: &Cluster, seen: &Seen) -> ClusterPushConsumer {
    let seen = seen.clone();
    ClusterPushConsumer::start(
        cluster,
        vec![Subscription::new("orders", Default::default())],
        PushConsumerOptions {
            consume_from: ConsumeFrom::First,
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
    .expect("the consumer joins the group on every set")
}

/// Sends `n` messages; every send must succeed (retries inside the producer only). Returns
/// the ids with the set that stored each.
async fn send_all(producer: &Producer, n: usize, tag: &str) -> Vec<(u128, String)> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let r = producer
            .send(Message::new("orders", format!("{tag}-{i}")))
            .await
            .unwrap_or_else(|e| panic!("send {tag}-{i} failed: {e}"));
        out.push((r.msg_id.0, r.broker_set));
    }
    out
}

async fn wait_consumed(
    seen: &Seen,
    ids: &[(u128, String)],
    limit: Duration,
    logs: &std::path::Path,
) {
    let waited = super::harness::within(limit, Duration::from_millis(100), async || {
        let s = seen.lock().unwrap();
        let missing = ids.iter().filter(|(id, _)| !s.contains_key(id)).count();
        if missing == 0 {
            Ok(())
        } else {
            Err(missing)
        }
    })
    .await;
    if let Err(missing) = waited {
        panic!(
            "{missing} of {} acknowledged messages not consumed within {limit:?}\n{}",
            ids.len(),
            tail_logs(logs)
        );
    }
}

fn sets_of(ids: &[(u128, String)]) -> BTreeSet<String> {
    ids.iter().map(|(_, s)| s.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_broker_sets_route_produce_consume_and_survive_kills() {
    let _heavy = super::harness::heavy();
    let dir = tempfile::tempdir().unwrap();
    let identity = shared_identity(dir.path());
    let cert = identity.0.clone();
    let voters: Vec<(u64, SocketAddr)> = (1..=3)
        .map(|i| (i, SocketAddr::from(([127, 0, 0, 1], free_port()))))
        .collect();
    let sets = [Some("a"), Some("b"), None];
    let mut nodes: Vec<Node> = voters
        .iter()
        .map(|(id, addr)| {
            let cfg = node_config(
                dir.path(),
                &format!("node{id}"),
                *id,
                true,
                sets[*id as usize - 1],
                "c1",
                &voters,
                *addr,
                &identity,
            );
            Node::start(&cfg, &dir.path().join(format!("node{id}.log")), *addr)
        })
        .collect();
    let addrs: Vec<SocketAddr> = voters.iter().map(|(_, a)| *a).collect();
    agreed_leader(&addrs, &cert, &[], Duration::from_secs(20), dir.path()).await;
    wait_for(&addrs[2], &cert, Duration::from_secs(10), dir.path(), |i| {
        i.brokers.len() == 2 && i.brokers.iter().all(|b| b.alive)
    })
    .await;

    // Clients know only the controller-only node and node 1.
    let mut template = ClientConfig::new(addrs[2], Tls::CaFile(cert.clone()));
    template.liveness_timeout = Duration::from_secs(1);
    template.request_timeout = Duration::from_secs(2);
    let cluster = Cluster::connect(&[addrs[2], addrs[0]], template.clone())
        .await
        .unwrap();

    // A topic across both sets: 4 queues on each; each set's broker has them.
    let route = cluster
        .create_topic("orders", 4, &[], Duration::from_secs(5))
        .await
        .unwrap();
    let mut names: Vec<(String, u32, bool)> = route
        .iter()
        .map(|s| (s.set.clone(), s.queues, s.alive))
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![("a".into(), 4, true), ("b".into(), 4, true)],
        "{route:?}"
    );
    for addr in &addrs[..2] {
        let c = Client::connect(ClientConfig::new(*addr, Tls::CaFile(cert.clone())))
            .await
            .unwrap();
        let t = Admin::new(c.clone())
            .describe_topic("orders")
            .await
            .unwrap();
        assert_eq!(t.len(), 4, "the broker at {addr} holds its 4 queues");
        c.close().await;
    }
    // Creating it again is refused; a set that does not exist is a clear error.
    let again = cluster
        .create_topic("orders", 4, &[], Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(again.status(), Some(Status::TopicExists), "{again}");
    let bad = cluster
        .create_topic("other", 4, &["zz".to_string()], Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(bad.status(), Some(Status::BadRequest), "{bad}");
    // Every node answers the same route, the controller-only node included.
    for a in &addrs {
        let c = Cluster::connect(&[*a], template.clone()).await.unwrap();
        let r = c
            .route("orders", false, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(r.len(), 2);
        c.close().await;
    }

    let seen: Seen = Arc::default();
    let c1 = consumer(&cluster, &seen).await;
    let c2 = consumer(&cluster, &seen).await;
    assert_eq!(c1.sets().await, vec!["a".to_string(), "b".to_string()]);
    let producer = Producer::with_cluster(
        cluster.clone(),
        ProducerOptions {
            send_timeout: Duration::from_secs(8),
            retries: 4,
            ..ProducerOptions::default()
        },
    );
    let mut acked = send_all(&producer, 200, "first").await;
    assert_eq!(
        sets_of(&acked),
        BTreeSet::from(["a".to_string(), "b".to_string()]),
        "sends go to both sets"
    );
    wait_consumed(&seen, &acked, Duration::from_secs(20), dir.path()).await;
    // Both members own queues on both sets (each set rebalances its own 4 queues).
    let orders = |o: &[(String, (String, u32))]| {
        o.iter()
            .filter(|(_, (t, _))| t == "orders")
            .map(|(s, _)| s.clone())
            .collect::<Vec<String>>()
    };
    let balanced = super::harness::within(
        Duration::from_secs(15),
        Duration::from_millis(100),
        async || {
            let (o1, o2) = (
                orders(&c1.owned_queues().await),
                orders(&c2.owned_queues().await),
            );
            let on_both = |o: &[String]| o.iter().collect::<BTreeSet<_>>().len() == 2;
            if on_both(&o1) && on_both(&o2) && o1.len() + o2.len() == 8 {
                Ok(())
            } else {
                Err((o1, o2))
            }
        },
    )
    .await;
    if let Err((o1, o2)) = balanced {
        panic!("no balanced assignment: {o1:?} {o2:?}");
    }

    // kill -9 the controller leader: a new one within 5 s; routes are still served and
    // sends go on.
    let (leader, _) = agreed_leader(&addrs, &cert, &[], Duration::from_secs(5), dir.path()).await;
    let li = (leader - 1) as usize;
    nodes[li].kill9();
    let rest: Vec<SocketAddr> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != li)
        .map(|(_, a)| *a)
        .collect();
    let killed = Instant::now();
    agreed_leader(&rest, &cert, &[leader], Duration::from_secs(5), dir.path()).await;
    eprintln!("new controller leader after {:?}", killed.elapsed());
    acked.extend(send_all(&producer, 100, "leader-killed").await);
    let c = Cluster::connect(&[rest[0]], template.clone())
        .await
        .unwrap();
    assert_eq!(
        c.route("orders", false, Duration::from_secs(2))
            .await
            .unwrap()
            .len(),
        2
    );
    c.close().await;
    nodes[li].spawn();
    agreed_leader(&addrs, &cert, &[], Duration::from_secs(20), dir.path()).await;
    wait_for(&addrs[2], &cert, Duration::from_secs(10), dir.path(), |i| {
        i.brokers.iter().all(|b| b.alive)
    })
    .await;

    // kill -9 set b's broker: sends keep succeeding (on set a), the group keeps consuming.
    nodes[1].kill9();
    let during = send_all(&producer, 150, "b-down").await;
    let later: BTreeSet<String> = sets_of(&during[50..]);
    assert_eq!(
        later,
        BTreeSet::from(["a".to_string()]),
        "once set b failed, sends avoid it"
    );
    acked.extend(during);
    // Set b comes back with its data: everything acknowledged on it is consumed too.
    nodes[1].spawn();
    wait_for(&addrs[2], &cert, Duration::from_secs(15), dir.path(), |i| {
        i.brokers.iter().all(|b| b.alive)
    })
    .await;
    acked.extend(send_all(&producer, 50, "b-back").await);
    // Once its pause (FAULT_PAUSE) is over, sends go to set b again.
    let returned = super::harness::within(
        quiver_client::FAULT_PAUSE + Duration::from_secs(10),
        Duration::from_millis(200),
        async || {
            let batch = send_all(&producer, 10, "b-return").await;
            let back = batch.iter().any(|(_, s)| s == "b");
            acked.extend(batch);
            if back {
                Ok(())
            } else {
                Err(())
            }
        },
    )
    .await;
    assert!(returned.is_ok(), "sends never returned to set b");
    // Transactions: each decision goes to the set that stored the half message.
    let mut tx_sets = BTreeSet::new();
    for i in 0..8 {
        let r = producer
            .send_in_transaction(Message::new("orders", format!("tx-{i}")), |_, _| {
                TransactionState::Commit
            })
            .await
            .unwrap();
        assert!(r.reported);
        tx_sets.insert(r.send.broker_set.clone());
        acked.push((r.send.msg_id.0, r.send.broker_set));
    }
    assert_eq!(tx_sets.len(), 2, "transactions on both sets");
    wait_consumed(&seen, &acked, Duration::from_secs(40), dir.path()).await;

    // Through any node: a queue count change reaches every set's broker, and a topic deleted
    // while one set's broker is down is deleted there when it returns.
    let admin_client = Client::connect(ClientConfig::new(addrs[2], Tls::CaFile(cert.clone())))
        .await
        .unwrap();
    let admin = Admin::new(admin_client.clone());
    admin.update_topic("orders", 6).await.unwrap();
    admin.create_topic("scratch", 2).await.unwrap();
    let local_queues = |addr: SocketAddr, topic: &'static str| {
        let cert = cert.clone();
        async move {
            let c = Client::connect(ClientConfig::new(addr, Tls::CaFile(cert)))
                .await
                .ok()?;
            let r = Admin::new(c.clone()).describe_topic(topic).await.ok();
            c.close().await;
            r.map(|q| q.len())
        }
    };
    let applied = super::harness::within(
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || {
            let now = (
                local_queues(addrs[0], "orders").await,
                local_queues(addrs[1], "orders").await,
                local_queues(addrs[1], "scratch").await,
            );
            if now == (Some(6), Some(6), Some(2)) {
                Ok(())
            } else {
                Err(now)
            }
        },
    )
    .await;
    if let Err(now) = applied {
        panic!("route changes not applied: {now:?}");
    }
    nodes[1].kill9();
    admin.delete_topic("scratch").await.unwrap();
    assert_eq!(local_queues(addrs[0], "scratch").await, None);
    let gone = admin.topic_route("scratch").await.unwrap_err();
    assert_eq!(gone.status(), Some(Status::TopicNotFound), "{gone}");
    nodes[1].spawn();
    let deleted = super::harness::within(
        Duration::from_secs(15),
        Duration::from_millis(100),
        async || match local_queues(addrs[1], "scratch").await {
            None => Ok(()),
            Some(n) => Err(n),
        },
    )
    .await;
    if deleted.is_err() {
        panic!(
            "the returning broker kept a deleted topic\n{}",
            tail_logs(dir.path())
        );
    }
    admin_client.close().await;

    for c in [&c1, &c2] {
        if let Err(e) = c.shutdown().await {
            panic!("consumer shutdown: {e:?}\n{}", tail_logs(dir.path()));
        }
    }
    cluster.close().await;
    let _ = info(addrs[0], &cert).await;
}
