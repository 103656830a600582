//! Consumer groups over QUIC with real brokers and SDK push consumers: even and sticky
//! assignment, take-over after a crash, clean leave, broadcasting with local offsets, offsets
//! across a broker restart, and the lowest-unfinished-offset rule.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_client::{
    Admin, ConsumeFrom, ConsumeResult, GroupMode, Message, MessageId, Producer, ProducerOptions,
    PullConsumer, PushConsumer, PushConsumerOptions, QueueRef, ReceivedMessage, ResetTarget,
};

use quiver::clock::ManualClock;

use crate::harness::TestBroker;

const SESSION_MS: u64 = 1500;

fn group_config(cfg: &mut quiver::config::Config) {
    cfg.broker.group_session_timeout_ms = SESSION_MS;
    cfg.broker.group_heartbeat_interval_ms = 200;
}

async fn group_broker() -> TestBroker {
    TestBroker::start_tuned(group_config).await
}

/// A group broker whose sessions age only when the test advances `time`.
async fn clocked_group_broker(time: &ManualClock) -> TestBroker {
    TestBroker::start_clocked(group_config, time.clock()).await
}

/// Live members of `group` as the broker sees them now.
async fn members(broker: &TestBroker, group: &str) -> usize {
    Admin::new(broker.client().await)
        .describe_group(group)
        .await
        .unwrap()
        .members
        .len()
}

fn options(group: &str) -> PushConsumerOptions {
    PushConsumerOptions {
        consume_from: ConsumeFrom::First,
        long_poll: Duration::from_millis(500),
        commit_interval: Duration::from_millis(100),
        ..PushConsumerOptions::new(group)
    }
}

type Seen = Arc<Mutex<Vec<(String, MessageId, u32, u64)>>>;

async fn member(
    broker: &TestBroker,
    name: &str,
    opts: PushConsumerOptions,
    seen: Seen,
) -> PushConsumer {
    let client = broker.client().await;
    let name = name.to_string();
    PushConsumer::start_single(
        client,
        vec!["orders".into()],
        opts,
        move |m: ReceivedMessage| {
            let seen = seen.clone();
            let name = name.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push((name, m.msg_id, m.queue_id, m.queue_offset));
                ConsumeResult::Success
            }
        },
    )
    .await
    .expect("consumer starts")
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The queues of the subscribed topics a member owns (its group's retry topic aside).
fn owned(c: &PushConsumer) -> BTreeSet<QueueRef> {
    c.owned_queues()
        .into_iter()
        .filter(|(t, _)| !t.starts_with("%RETRY%"))
        .collect()
}

async fn settled(members: &[&PushConsumer], queues: usize) {
    wait_until("the group to settle", Duration::from_secs(10), || {
        let sets: Vec<_> = members.iter().map(|m| owned(m)).collect();
        let total: usize = sets.iter().map(|s| s.len()).sum();
        let union: BTreeSet<_> = sets.iter().flatten().cloned().collect();
        let (min, max) = (
            sets.iter().map(|s| s.len()).min().unwrap_or(0),
            sets.iter().map(|s| s.len()).max().unwrap_or(0),
        );
        total == queues && union.len() == queues && max - min <= 1
    })
    .await;
}

async fn produce(broker: &TestBroker, n: usize) -> Vec<MessageId> {
    let producer = Producer::new(broker.client().await, ProducerOptions::default());
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            producer
                .send(Message::new("orders", format!("order {i}")))
                .await
                .unwrap()
                .msg_id,
        );
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_are_shared_evenly_and_a_joining_member_moves_only_what_it_takes() {
    let broker = group_broker().await;
    Admin::new(broker.client().await)
        .create_topic("orders", 8)
        .await
        .unwrap();
    let seen: Seen = Arc::default();
    let a = member(&broker, "a", options("g1"), seen.clone()).await;
    let b = member(&broker, "b", options("g1"), seen.clone()).await;
    let c = member(&broker, "c", options("g1"), seen.clone()).await;
    settled(&[&a, &b, &c], 8).await;
    let before: Vec<_> = [&a, &b, &c].iter().map(|m| owned(m)).collect();

    let d = member(&broker, "d", options("g1"), seen.clone()).await;
    settled(&[&a, &b, &c, &d], 8).await;
    let after: Vec<_> = [&a, &b, &c].iter().map(|m| owned(m)).collect();
    let moved: usize = before
        .iter()
        .zip(&after)
        .map(|(b, a)| b.difference(a).count())
        .sum();
    assert_eq!(owned(&d).len(), 2, "8 queues over 4 members");
    assert_eq!(
        moved, 2,
        "only the two queues d took moved (RocketMQ's averaging moves most)"
    );
    for (b, a) in before.iter().zip(&after) {
        assert!(a.is_subset(b), "no queue moved between the old members");
    }

    let ids = produce(&broker, 200).await;
    wait_until("every message consumed", Duration::from_secs(10), || {
        let got: HashSet<MessageId> = seen.lock().unwrap().iter().map(|s| s.1).collect();
        ids.iter().all(|id| got.contains(id))
    })
    .await;
    for m in [a, b, c, d] {
        m.shutdown().await.unwrap();
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_member_is_replaced_within_the_session_timeout_and_nothing_is_lost() {
    let time = ManualClock::starting_now();
    let broker = clocked_group_broker(&time).await;
    Admin::new(broker.client().await)
        .create_topic("orders", 4)
        .await
        .unwrap();
    let seen: Seen = Arc::default();
    let a = member(&broker, "a", options("g2"), seen.clone()).await;
    let b = member(&broker, "b", options("g2"), seen.clone()).await;
    settled(&[&a, &b], 4).await;
    let first = produce(&broker, 100).await;

    // b dies without leaving: no commit, no goodbye.
    b.kill();
    let second = produce(&broker, 100).await;
    // The broker's clock decides when b's session ends: not 1 ms early...
    time.advance(Duration::from_millis(SESSION_MS - 1));
    assert_eq!(members(&broker, "g2").await, 2, "b's session lasts");
    assert_eq!(owned(&a).len(), 2, "b's queues stay with it meanwhile");
    // ... and then a takes over (at its next heartbeat).
    time.advance(Duration::from_millis(1));
    wait_until("a to own every queue", Duration::from_secs(10), || {
        owned(&a).len() == 4
    })
    .await;
    assert_eq!(members(&broker, "g2").await, 1, "b timed out");
    wait_until(
        "every message consumed at least once",
        Duration::from_secs(10),
        || {
            let got: HashSet<MessageId> = seen.lock().unwrap().iter().map(|s| s.1).collect();
            first.iter().chain(&second).all(|id| got.contains(id))
        },
    )
    .await;
    a.shutdown().await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_leave_moves_queues_at_once() {
    // The broker's clock stands still: no session can expire, so only the leave moves queues.
    let time = ManualClock::starting_now();
    let broker = clocked_group_broker(&time).await;
    Admin::new(broker.client().await)
        .create_topic("orders", 4)
        .await
        .unwrap();
    let seen: Seen = Arc::default();
    let a = member(&broker, "a", options("g3"), seen.clone()).await;
    let b = member(&broker, "b", options("g3"), seen.clone()).await;
    settled(&[&a, &b], 4).await;
    // While members are online, offsets move only with force.
    let admin = Admin::new(broker.client().await);
    let err = admin
        .reset_group_offset("g3", "orders", ResetTarget::First, false)
        .await
        .unwrap_err();
    assert_eq!(
        err.status(),
        Some(quiver_client::Status::GroupOnline),
        "{err}"
    );
    admin
        .reset_group_offset("g3", "orders", ResetTarget::First, true)
        .await
        .expect("forced reset");
    let d = admin.describe_group("g3").await.unwrap();
    assert_eq!(d.members.len(), 2);
    assert_eq!(
        d.queues
            .iter()
            .filter(|q| q.topic == "orders" && q.owner.is_some())
            .count(),
        4,
        "describe shows each queue's owner"
    );
    assert!(
        d.queues.iter().any(|q| q.topic == "%RETRY%g3"),
        "members subscribe to their retry topic"
    );
    b.shutdown().await.unwrap();
    wait_until("a to own every queue", Duration::from_secs(5), || {
        owned(&a).len() == 4
    })
    .await;
    assert_eq!(members(&broker, "g3").await, 1, "b left");
    a.shutdown().await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasting_members_each_see_everything_and_resume_from_local_offsets() {
    let broker = group_broker().await;
    Admin::new(broker.client().await)
        .create_topic("orders", 2)
        .await
        .unwrap();
    let store = tempfile::tempdir().unwrap();
    let opts = |who: &str| PushConsumerOptions {
        mode: GroupMode::Broadcasting,
        offset_store_path: Some(store.path().join(format!("{who}.json"))),
        ..options("cache")
    };
    let seen: Seen = Arc::default();
    let x = member(&broker, "x", opts("x"), seen.clone()).await;
    let y = member(&broker, "y", opts("y"), seen.clone()).await;
    let ids = produce(&broker, 50).await;
    let count = |who: &str, seen: &Seen| -> HashSet<MessageId> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|s| s.0 == who)
            .map(|s| s.1)
            .collect()
    };
    wait_until("both see all", Duration::from_secs(10), || {
        let (sx, sy) = (count("x", &seen), count("y", &seen));
        ids.iter().all(|id| sx.contains(id) && sy.contains(id))
    })
    .await;
    y.shutdown().await.unwrap();

    // y restarts and must not see the first 50 again, only the new ones.
    let more = produce(&broker, 20).await;
    let seen2: Seen = Arc::default();
    let y2 = member(&broker, "y", opts("y"), seen2.clone()).await;
    wait_until(
        "restarted y sees the new messages",
        Duration::from_secs(10),
        || {
            let s = count("y", &seen2);
            more.iter().all(|id| s.contains(id))
        },
    )
    .await;
    let again = count("y", &seen2);
    assert!(
        ids.iter().all(|id| !again.contains(id)),
        "resumed from its local offsets"
    );
    x.shutdown().await.unwrap();
    y2.shutdown().await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_offsets_survive_a_broker_restart() {
    let mut broker = group_broker().await;
    Admin::new(broker.client().await)
        .create_topic("orders", 2)
        .await
        .unwrap();
    let seen: Seen = Arc::default();
    let a = member(&broker, "a", options("g5"), seen.clone()).await;
    let ids = produce(&broker, 40).await;
    wait_until("consumed", Duration::from_secs(10), || {
        seen.lock().unwrap().len() >= 40
    })
    .await;
    a.shutdown().await.unwrap();
    broker.restart().await;
    let client = broker.client().await;
    let consumer = PullConsumer::new(client.clone());
    let mut committed = 0;
    for q in 0..2 {
        committed += consumer
            .fetch_offset("g5", "orders", q)
            .await
            .unwrap()
            .unwrap_or(0);
    }
    assert_eq!(
        committed,
        ids.len() as u64,
        "both queues committed to their ends"
    );
    let seen2: Seen = Arc::default();
    let a2 = member(&broker, "a", options("g5"), seen2.clone()).await;
    let more = produce(&broker, 5).await;
    wait_until("new messages", Duration::from_secs(10), || {
        seen2.lock().unwrap().len() >= 5
    })
    .await;
    let got: Vec<MessageId> = seen2.lock().unwrap().iter().map(|s| s.1).collect();
    assert!(
        got.iter().all(|id| more.contains(id)),
        "nothing consumed before the restart came back"
    );
    a2.shutdown().await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_message_holds_the_committed_offset_back() {
    let broker = group_broker().await;
    Admin::new(broker.client().await)
        .create_topic("orders", 1)
        .await
        .unwrap();
    let ids = produce(&broker, 10).await;
    let release = Arc::new(tokio::sync::Notify::new());
    let done: Arc<Mutex<HashMap<u64, bool>>> = Arc::default();
    let (r, d) = (release.clone(), done.clone());
    let client = broker.client().await;
    let consumer = PushConsumer::start_single(
        client.clone(),
        vec!["orders".into()],
        options("g6"),
        move |m: ReceivedMessage| {
            let (r, d) = (r.clone(), d.clone());
            async move {
                if m.queue_offset == 3 {
                    r.notified().await; // offset 3 is slow
                }
                d.lock().unwrap().insert(m.queue_offset, true);
                ConsumeResult::Success
            }
        },
    )
    .await
    .unwrap();
    wait_until("all but offset 3 done", Duration::from_secs(10), || {
        done.lock().unwrap().len() == 9
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await; // several commit intervals
    let pull = PullConsumer::new(client.clone());
    assert_eq!(
        pull.fetch_offset("g6", "orders", 0).await.unwrap(),
        Some(3),
        "committed offset stops at the message in flight"
    );
    release.notify_one();
    wait_until("offset 3 done", Duration::from_secs(5), || {
        done.lock().unwrap().len() == 10
    })
    .await;
    consumer.shutdown().await.unwrap();
    assert_eq!(
        pull.fetch_offset("g6", "orders", 0).await.unwrap(),
        Some(ids.len() as u64)
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_from_last_starts_at_the_end_even_for_a_young_queue() {
    let broker = group_broker().await;
    Admin::new(broker.client().await)
        .create_topic("orders", 1)
        .await
        .unwrap();
    let old = produce(&broker, 5).await;
    let seen: Seen = Arc::default();
    let opts = PushConsumerOptions {
        consume_from: ConsumeFrom::Last,
        ..options("g7")
    };
    let c = member(&broker, "c", opts, seen.clone()).await;
    wait_until("owns the queue", Duration::from_secs(5), || {
        owned(&c).len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new = produce(&broker, 3).await;
    wait_until("new messages", Duration::from_secs(10), || {
        seen.lock().unwrap().len() >= 3
    })
    .await;
    let got: Vec<MessageId> = seen.lock().unwrap().iter().map(|s| s.1).collect();
    assert!(
        got.iter().all(|id| new.contains(id) && !old.contains(id)),
        "\"last\" means last"
    );
    c.shutdown().await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_queue_gets_two_workers_across_a_broker_restart() {
    let mut broker = group_broker().await;
    Admin::new(broker.client().await)
        .create_topic("orders", 8)
        .await
        .unwrap();
    let seen: Seen = Arc::default();
    let a = member(&broker, "a", options("g8"), seen.clone()).await;
    let b = member(&broker, "b", options("g8"), seen.clone()).await;
    settled(&[&a, &b], 8).await;
    let before = (owned(&a), owned(&b));

    broker.restart().await;
    // Both members keep running and reconnect by themselves; sample who owns what.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2 * SESSION_MS) {
        let (oa, ob) = (owned(&a), owned(&b));
        assert!(
            oa.is_disjoint(&ob),
            "a queue owned by both members: {oa:?} / {ob:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    settled(&[&a, &b], 8).await;
    assert_eq!(
        (owned(&a), owned(&b)),
        before,
        "each member kept its queues across the restart"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    broker.stop().await;
}
