//! Orderly push consumers: one message at a time per queue, in queue order, failures retried
//! in place and never skipped, and order kept when a second member joins (the queue moves only
//! after its old owner released it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_client::{
    Admin, ConsumeFrom, ConsumeResult, Message, Producer, ProducerOptions, PushConsumer,
    PushConsumerOptions, ReceivedMessage,
};

use crate::harness::TestBroker;

/// Per queue: whether a message is being processed now, and the offsets processed
/// successfully, in the order they finished.
#[derive(Default)]
struct Track {
    busy: HashMap<u32, bool>,
    done: HashMap<u32, Vec<u64>>,
    attempts: HashMap<(u32, u64), u32>,
}

type Shared = Arc<Mutex<Track>>;

async fn orderly_member(
    broker: &TestBroker,
    track: Shared,
    fail_twice: Option<(u32, u64)>,
    delay_ms: u64,
) -> PushConsumer {
    let opts = PushConsumerOptions {
        consume_from: ConsumeFrom::First,
        orderly: true,
        long_poll: Duration::from_millis(300),
        commit_interval: Duration::from_millis(50),
        ..PushConsumerOptions::new("orderly")
    };
    PushConsumer::start_single(
        broker.client().await,
        vec!["steps".into()],
        opts,
        move |m: ReceivedMessage| {
            let track = track.clone();
            async move {
                let q = m.queue_id;
                {
                    let mut t = track.lock().unwrap();
                    let was = t.busy.insert(q, true).unwrap_or(false);
                    assert!(!was, "two messages of queue {q} processed at once");
                    *t.attempts.entry((q, m.queue_offset)).or_default() += 1;
                }
                tokio::time::sleep(Duration::from_millis(delay_ms + m.queue_offset % 3)).await;
                let mut t = track.lock().unwrap();
                t.busy.insert(q, false);
                let attempt = t.attempts[&(q, m.queue_offset)];
                if fail_twice == Some((q, m.queue_offset)) && attempt <= 2 {
                    return ConsumeResult::ReconsumeLater;
                }
                t.done.entry(q).or_default().push(m.queue_offset);
                ConsumeResult::Success
            }
        },
    )
    .await
    .expect("orderly consumer starts")
}

async fn produce(broker: &TestBroker, n: u32) {
    let producer = Producer::new(broker.client().await, ProducerOptions::default());
    for i in 0..n {
        let key = format!("order-{}", i % 7);
        producer
            .send(Message::new("steps", format!("{i}")).with_sharding_key(key))
            .await
            .unwrap();
    }
}

async fn wait_done(track: &Shared, total: usize) {
    let start = Instant::now();
    loop {
        let n: usize = track.lock().unwrap().done.values().map(|v| v.len()).sum();
        if n >= total {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "only {n} of {total} consumed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_in_order(track: &Shared) {
    for (q, offsets) in &track.lock().unwrap().done {
        assert!(
            offsets.windows(2).all(|w| w[1] == w[0] + 1),
            "queue {q} out of order or skipping: {offsets:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_queue_is_consumed_one_message_at_a_time_in_order_and_failures_do_not_skip() {
    let broker = TestBroker::start().await;
    Admin::new(broker.client().await)
        .create_topic("steps", 4)
        .await
        .unwrap();
    produce(&broker, 120).await;
    let track: Shared = Arc::default();
    let c = orderly_member(&broker, track.clone(), Some((0, 5)), 0).await;
    wait_done(&track, 120).await;
    assert_in_order(&track);
    {
        let t = track.lock().unwrap();
        assert_eq!(
            t.attempts[&(0, 5)],
            3,
            "the failing message was retried in place"
        );
        assert!(
            t.done[&0].starts_with(&[0, 1, 2, 3, 4, 5, 6]),
            "nothing after it ran first"
        );
    }
    c.shutdown().await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orderly_members_never_share_a_queue_and_keep_order_across_a_rebalance() {
    let broker = TestBroker::start_tuned(|cfg| {
        cfg.broker.group_session_timeout_ms = 1500;
        cfg.broker.group_heartbeat_interval_ms = 200;
    })
    .await;
    Admin::new(broker.client().await)
        .create_topic("steps", 4)
        .await
        .unwrap();
    produce(&broker, 100).await;
    let track: Shared = Arc::default();
    let a = orderly_member(&broker, track.clone(), None, 20).await;
    let done = || -> usize { track.lock().unwrap().done.values().map(|v| v.len()).sum() };
    crate::harness::eventually("a is at work", async || done() >= 5).await;
    // b joins while a is busy: two queues move to b once a has released them (committed).
    let b = orderly_member(&broker, track.clone(), None, 20).await;
    let start = Instant::now();
    while b.owned_queues().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "b never got its share"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let moved_mid_backlog: usize = track.lock().unwrap().done.values().map(|v| v.len()).sum();
    assert!(
        moved_mid_backlog < 100,
        "the queues moved while a still had a backlog"
    );
    produce(&broker, 100).await;
    wait_done(&track, 200).await;
    assert_in_order(&track);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    broker.stop().await;
}
