//! Consumer groups over QUIC with real brokers and SDK push consumers: even and sticky
//! assignment, take-over after a crash, clean leave, broadcasting with local offsets, offsets
//! across a broker restart, and the lowest-unfinished-offset rule.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quiver_client::{
    Admin, Client, ConsumeFrom, ConsumeResult, GroupMode, Message, MessageId, Producer,
    ProducerOptions, PullConsumer, PushConsumer, PushConsumerOptions, QueueRef, ReceivedMessage,
    ResetTarget,
};

use quiver::clock::ManualClock;

use crate::harness::{eventually, eventually_some, TestBroker};

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
    member_on(broker.client().await, name, opts, seen).await
}

/// A member consuming "orders" over `client` (the test may keep a clone to watch it).
async fn member_on(
    client: Client,
    name: &str,
    opts: PushConsumerOptions,
    seen: Seen,
) -> PushConsumer {
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

/// The queues of the subscribed topics a member owns (its group's retry topic aside).
fn owned(c: &PushConsumer) -> BTreeSet<QueueRef> {
    c.owned_queues()
        .into_iter()
        .filter(|(t, _)| !t.starts_with("%RETRY%"))
        .collect()
}

/// Whether `members` own `queues` queues between them, each once, evenly.
fn is_settled(members: &[&PushConsumer], queues: usize) -> bool {
    let sets: Vec<_> = members.iter().map(|m| owned(m)).collect();
    let total: usize = sets.iter().map(|s| s.len()).sum();
    let union: BTreeSet<_> = sets.iter().flatten().cloned().collect();
    let (min, max) = (
        sets.iter().map(|s| s.len()).min().unwrap_or(0),
        sets.iter().map(|s| s.len()).max().unwrap_or(0),
    );
    total == queues && union.len() == queues && max - min <= 1
}

async fn settled(members: &[&PushConsumer], queues: usize) {
    eventually("the group to settle", async || is_settled(members, queues)).await;
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
    eventually("every message consumed", async || {
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
    eventually("a to own every queue", async || owned(&a).len() == 4).await;
    assert_eq!(members(&broker, "g2").await, 1, "b timed out");
    eventually("every message consumed at least once", async || {
        let got: HashSet<MessageId> = seen.lock().unwrap().iter().map(|s| s.1).collect();
        first.iter().chain(&second).all(|id| got.contains(id))
    })
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
    eventually("a to own every queue", async || owned(&a).len() == 4).await;
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
    eventually("both to see all", async || {
        let (sx, sy) = (count("x", &seen), count("y", &seen));
        ids.iter().all(|id| sx.contains(id) && sy.contains(id))
    })
    .await;
    y.shutdown().await.unwrap();

    // y restarts and must not see the first 50 again, only the new ones.
    let more = produce(&broker, 20).await;
    let seen2: Seen = Arc::default();
    let y2 = member(&broker, "y", opts("y"), seen2.clone()).await;
    eventually("restarted y to see the new messages", async || {
        let s = count("y", &seen2);
        more.iter().all(|id| s.contains(id))
    })
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
    eventually("40 messages consumed", async || {
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
    eventually("the new messages", async || {
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
    let admin = Admin::new(broker.client().await);
    admin.create_topic("orders", 1).await.unwrap();
    // A second topic of the same consumer shows when a commit round has run (see below).
    admin.create_topic("tick", 1).await.unwrap();
    let ids = produce(&broker, 10).await;
    let release = Arc::new(tokio::sync::Notify::new());
    let done: Arc<Mutex<HashMap<u64, bool>>> = Arc::default();
    let (r, d) = (release.clone(), done.clone());
    let client = broker.client().await;
    let consumer = PushConsumer::start_single(
        client.clone(),
        vec!["orders".into(), "tick".into()],
        options("g6"),
        move |m: ReceivedMessage| {
            let (r, d) = (r.clone(), d.clone());
            async move {
                if m.topic == "orders" {
                    if m.queue_offset == 3 {
                        r.notified().await; // offset 3 is slow
                    }
                    d.lock().unwrap().insert(m.queue_offset, true);
                }
                ConsumeResult::Success
            }
        },
    )
    .await
    .unwrap();
    eventually("all but offset 3 done", async || {
        done.lock().unwrap().len() == 9
    })
    .await;
    // The consumer commits every commit interval, one queue after the other. A message on
    // "tick" consumed and committed shows a commit round ran after that; waiting for a
    // second one makes sure a whole round (offsets included) began after the nine finished.
    let pull = PullConsumer::new(client.clone());
    let ticker = Producer::new(client.clone(), ProducerOptions::default());
    for n in 1..=2 {
        ticker.send(Message::new("tick", "tick")).await.unwrap();
        eventually("a commit round after the others finished", async || {
            pull.fetch_offset("g6", "tick", 0).await.unwrap() == Some(n)
        })
        .await;
    }
    assert_eq!(
        pull.fetch_offset("g6", "orders", 0).await.unwrap(),
        Some(3),
        "committed offset stops at the message in flight"
    );
    release.notify_one();
    eventually("offset 3 done", async || done.lock().unwrap().len() == 10).await;
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
    eventually("c to own the queue", async || owned(&c).len() == 1).await;
    // A queue worker commits its start offset at once: once the group has one, c has
    // placed itself, and messages stored from now on come after it.
    let pull = PullConsumer::new(broker.client().await);
    let start = eventually_some("c to commit its start offset", async || {
        pull.fetch_offset("g7", "orders", 0).await.unwrap()
    })
    .await;
    assert_eq!(
        start,
        old.len() as u64,
        "\"last\" starts at the queue's end"
    );
    let new = produce(&broker, 3).await;
    eventually("the new messages", async || seen.lock().unwrap().len() >= 3).await;
    let got: Vec<MessageId> = seen.lock().unwrap().iter().map(|s| s.1).collect();
    assert!(
        got.iter().all(|id| new.contains(id) && !old.contains(id)),
        "\"last\" means last"
    );
    c.shutdown().await.unwrap();
    broker.stop().await;
}

/// Watches `members` (more may be added) from a task of its own, looking every millisecond
/// until stopped: returns what two members owned at once, if that ever happened.
fn watch_for_doubles(
    members: Arc<Mutex<Vec<Arc<PushConsumer>>>>,
    stop: Arc<tokio::sync::Notify>,
) -> tokio::task::JoinHandle<Option<String>> {
    tokio::spawn(async move {
        let stopped = stop.notified();
        tokio::pin!(stopped);
        loop {
            let sets: Vec<_> = members.lock().unwrap().iter().map(|m| owned(m)).collect();
            for (i, x) in sets.iter().enumerate() {
                if sets[i + 1..].iter().any(|y| !x.is_disjoint(y)) {
                    return Some(format!("{sets:?}"));
                }
            }
            tokio::select! {
                _ = &mut stopped => return None,
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_queue_gets_two_workers_across_a_broker_restart() {
    // The broker's clock moves only when the test says: sessions expire only when the test
    // lets them, so queues move only because of the restart and the heartbeats after it.
    let time = ManualClock::starting_now();
    let mut broker = clocked_group_broker(&time).await;
    Admin::new(broker.client().await)
        .create_topic("orders", 8)
        .await
        .unwrap();
    let seen: Seen = Arc::default();
    let (client_a, client_b) = (broker.client().await, broker.client().await);
    let a = Arc::new(member_on(client_a.clone(), "a", options("g8"), seen.clone()).await);
    let b = Arc::new(member_on(client_b.clone(), "b", options("g8"), seen.clone()).await);
    settled(&[&a, &b], 8).await;
    let before = (owned(&a), owned(&b));
    let watched = Arc::new(Mutex::new(vec![a.clone(), b.clone()]));
    let stop = Arc::new(tokio::sync::Notify::new());
    let watcher = watch_for_doubles(watched.clone(), stop.clone());

    // Down for two sessions: the restored sessions must start afresh, not expire at once.
    broker
        .restart_with(|| time.advance(Duration::from_millis(2 * SESSION_MS)))
        .await;
    // Both members keep running and reconnect by themselves. (A double owner ends the
    // waits at once.)
    eventually(
        "both members reconnected, each with its queues",
        async || {
            watcher.is_finished()
                || client_a.generation() > 1
                    && client_b.generation() > 1
                    && (owned(&a), owned(&b)) == before
        },
    )
    .await;
    // A newcomer gets its share only once a and b have heartbeated the restarted broker (to
    // learn what to give up, then to report it released): watching until then covers the
    // first heartbeats after the restart.
    let c = Arc::new(member(&broker, "c", options("g8"), seen.clone()).await);
    watched.lock().unwrap().push(c.clone());
    eventually("the group to settle with the newcomer", async || {
        watcher.is_finished() || is_settled(&[&a, &b, &c], 8)
    })
    .await;
    stop.notify_one();
    if let Some(sets) = watcher.await.unwrap() {
        panic!("a queue owned by two members at once: {sets}");
    }
    assert!(
        owned(&a).is_subset(&before.0) && owned(&b).is_subset(&before.1),
        "each member kept its queues across the restart (only the newcomer's share moved): \
         {before:?} -> {:?} / {:?}",
        owned(&a),
        owned(&b)
    );
    for m in [a, b, c] {
        m.shutdown().await.unwrap();
    }
    broker.stop().await;
}
