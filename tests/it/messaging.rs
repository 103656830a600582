//! Messaging semantics over QUIC: scheduled messages (timing, restart, cancel), transactions
//! (commit, rollback, check-back by another producer, check limit, restart), retries with
//! back-off and the dead-letter queue (push and orderly consumers, resend).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use quiver::clock::ManualClock;
use quiver::config::Config;
use quiver_client::{
    Admin, ClientError, ConsumeFrom, ConsumeResult, FilterSpec, Message, MessageId, Producer,
    ProducerOptions, PullConsumer, PullOptions, PushConsumer, PushConsumerOptions, ReceivedMessage,
    ResetTarget, Status, Subscription, TransactionState,
};

use crate::harness::{eventually, eventually_some, TestBroker};

fn fast(cfg: &mut Config) {
    let m = &mut cfg.messaging;
    m.delay_levels = vec!["200ms".into(), "400ms".into(), "1s".into()];
    m.retry_delays = vec!["100ms".into(), "200ms".into()];
    m.tx_check_timeout_ms = 300;
    m.tx_check_interval_ms = 300;
    m.tx_max_checks = 3;
    m.max_delay_ms = 3_600_000;
}

/// Every message of `topic` now, pulled from the start of each of its queues (none while the
/// topic does not exist).
async fn look(c: &PullConsumer, topic: &str) -> Vec<ReceivedMessage> {
    let mut all = Vec::new();
    if let Ok(queues) = c.queues(topic).await {
        for q in queues {
            let mut offset = q.min_offset;
            loop {
                let opts = PullOptions {
                    max_messages: 256,
                    long_poll: Duration::ZERO,
                    ..Default::default()
                };
                let r = c.pull(topic, q.queue_id, offset, opts).await.unwrap();
                if r.messages.is_empty() {
                    break;
                }
                offset = r.next_offset;
                all.extend(r.messages);
            }
        }
    }
    all
}

/// Every message of `topic` now (one look).
async fn now_on(broker: &TestBroker, topic: &str) -> Vec<ReceivedMessage> {
    look(&PullConsumer::new(broker.client().await), topic).await
}

/// Waits until `topic` holds at least `want` messages; returns all of them (extras show).
async fn collect(broker: &TestBroker, topic: &str, want: usize) -> Vec<ReceivedMessage> {
    let c = PullConsumer::new(broker.client().await);
    eventually_some(&format!("{want} messages on {topic}"), async || {
        let all = look(&c, topic).await;
        (all.len() >= want).then_some(all)
    })
    .await
}

/// The broker's timer-wheel counters.
fn timer(broker: &TestBroker) -> quiver::messaging::timer::TimerStats {
    broker.server().broker().timer_stats()
}

/// Waits until the broker's timer wheel holds `n` entries: scheduled messages are placed in
/// it asynchronously, and one placed after the clock passed its slot would go out only at
/// the next slot, so tests advance a manual clock once everything is in.
async fn wheel_holds(broker: &TestBroker, n: u64) {
    eventually(&format!("{n} entries in the timer wheel"), async || {
        timer(broker).pending == n
    })
    .await;
}

/// Waits until the broker's timer wheel has nothing left (every slot fired and delivered).
async fn wheel_empty(broker: &TestBroker) {
    wheel_holds(broker, 0).await;
}

/// Waits until the broker has applied every transaction decision.
async fn all_resolved(broker: &TestBroker) {
    eventually("every transaction resolved", async || {
        broker.server().broker().unresolved_transactions() == 0
    })
    .await;
}

fn status(e: &ClientError) -> Option<Status> {
    e.status()
}

/// Moves a manual clock forward by `ms`.
fn advance(time: &ManualClock, ms: u64) {
    time.advance(Duration::from_millis(ms));
}

/// Like [`eventually_some`], moving `time` one timer slot (100 ms) forward at every look at
/// which something waits in the broker's timer wheel: a retry handed back after the last move
/// falls due at a later one, and the clock stands still while nothing waits.
async fn advancing_until<T>(
    time: &ManualClock,
    broker: &TestBroker,
    what: &str,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    eventually_some(what, async || {
        let v = f().await;
        if v.is_none() && timer(broker).pending > 0 {
            advance(time, 100);
        }
        v
    })
    .await
}

/// The bodies in `got`, sorted.
fn bodies(got: &[ReceivedMessage]) -> Vec<String> {
    let mut b: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).to_string())
        .collect();
    b.sort();
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_messages_become_visible_at_their_time() {
    // The broker's time is a manual clock: a message becomes visible when the clock reaches
    // its due time, and cannot before.
    let time = ManualClock::starting_now();
    let broker = TestBroker::start_clocked(fast, time.clock()).await;
    let producer = Producer::new(broker.client().await, ProducerOptions::default());
    let sent_at = time.now_ms();
    let mut due = HashMap::new();
    let r = producer
        .send(Message::new("sched", "a").with_delay(Duration::from_millis(700)))
        .await
        .unwrap();
    due.insert(r.msg_id, sent_at + 700);
    let r = producer
        .send(Message::new("sched", "b").with_delay_level(2)) // 400ms
        .await
        .unwrap();
    due.insert(r.msg_id, sent_at + 400);
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(sent_at as u64 + 1000);
    let r = producer
        .send(
            Message::new("sched", "c")
                .with_deliver_at(at)
                .with_key("k1"),
        )
        .await
        .unwrap();
    due.insert(r.msg_id, sent_at + 1000);
    wheel_holds(&broker, 3).await;
    // Nothing is visible right away.
    assert!(now_on(&broker, "sched").await.is_empty());
    // Each step brings exactly the messages due by then: the clock stands still while
    // the test waits, so a later one cannot slip in.
    advance(&time, 400);
    let got = collect(&broker, "sched", 1).await;
    assert_eq!(bodies(&got), vec!["b"], "due at +400 ms");
    advance(&time, 299);
    assert_eq!(bodies(&now_on(&broker, "sched").await), vec!["b"]);
    advance(&time, 1);
    let got = collect(&broker, "sched", 2).await;
    assert_eq!(bodies(&got), vec!["a", "b"], "due at +700 ms");
    advance(&time, 300);
    let got = collect(&broker, "sched", 3).await;
    assert_eq!(got.len(), 3, "{got:?}");
    for m in &got {
        let due_at: i64 = m.property("DELIVER_AT").unwrap().parse().unwrap();
        assert_eq!(
            due_at, due[&m.msg_id],
            "DELIVER_AT is the broker's clock + delay"
        );
        assert!(
            m.property("REAL_TOPIC").is_none(),
            "staging properties removed"
        );
    }
    let c = got.iter().find(|m| m.body.as_ref() == b"c").unwrap();
    assert_eq!(c.keys, vec!["k1".to_string()]);
    // Arrival order follows due time.
    let mut got = got;
    got.sort_by_key(|m| m.store_timestamp);
    let order: Vec<&[u8]> = got.iter().map(|m| m.body.as_ref()).collect();
    assert_eq!(order, vec![&b"b"[..], b"a", b"c"]);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_delays_and_system_topics_are_refused() {
    let broker = TestBroker::start_tuned(fast).await;
    let producer = Producer::new(broker.client().await, ProducerOptions::default());
    let e = producer
        .send(Message::new("sched2", "x").with_delay_level(9))
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(Status::InvalidDelay), "{e}");
    let e = producer
        .send(Message::new("sched2", "x").with_delay(Duration::from_secs(7200)))
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(Status::InvalidDelay), "{e}");
    assert!(e.to_string().contains("max_delay_ms"), "{e}");
    assert!(producer
        .send(Message::new("sched2", "x").with_delay_level(0))
        .await
        .is_err());
    let e = producer
        .send(Message::new("%SCHEDULE%", "x"))
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(Status::InvalidName), "{e}");
    for system in ["%DLQ%g", "%RETRY%g", "%TRANS_CHECK_MAX%"] {
        let e = producer.send(Message::new(system, "x")).await.unwrap_err();
        assert_eq!(status(&e), Some(Status::InvalidName), "{system}: {e}");
    }
    // A refused send leaves no topic behind, and admin requests cannot make system topics.
    let admin = Admin::new(broker.client().await);
    let topics = admin.list_topics().await.unwrap();
    assert!(
        topics.iter().all(|t| !t.name.starts_with('%')),
        "{topics:?}"
    );
    for system in [
        "%DLQ%g",
        "%RETRY%g",
        "%TRANS_CHECK_MAX%",
        "%SCHEDULE%",
        "%HALF%",
    ] {
        let e = admin.create_topic(system, 1).await.unwrap_err();
        assert_eq!(status(&e), Some(Status::InvalidName), "{system}: {e}");
        let e = admin.delete_topic(system).await.unwrap_err();
        assert!(
            matches!(
                status(&e),
                Some(Status::InvalidName | Status::TopicNotFound)
            ),
            "{system}: {e}"
        );
    }
    assert!(admin
        .list_topics()
        .await
        .unwrap()
        .iter()
        .all(|t| !t.name.starts_with('%')));
    // Resetting the offsets of a group nobody knows (a typo) creates nothing.
    let e = admin
        .reset_group_offset("no-such-grup", "sched2", ResetTarget::First, false)
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(Status::GroupNotFound), "{e}");
    assert!(admin
        .list_groups()
        .await
        .unwrap()
        .iter()
        .all(|g| g.name != "no-such-grup"));
    // A past deliver-at time is delivered at once.
    producer
        .send(
            Message::new("sched2", "late")
                .with_deliver_at(SystemTime::now() - Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert_eq!(collect(&broker, "sched2", 1).await.len(), 1);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_messages_survive_a_restart_once_each() {
    let time = ManualClock::starting_now();
    let mut broker = TestBroker::start_clocked(fast, time.clock()).await;
    let producer = Producer::new(broker.client().await, ProducerOptions::default());
    let (mut ids, mut early_ids) = (Vec::new(), Vec::new());
    for i in 0..40u64 {
        // Half due before the restart (+200..+390 ms), half after it (+1510..+1890 ms); some
        // of those while the broker is down.
        let delay = if i % 2 == 0 {
            200 + i * 5
        } else {
            1500 + i * 10
        };
        let r = producer
            .send(Message::new("sched3", format!("m{i}")).with_delay(Duration::from_millis(delay)))
            .await
            .unwrap();
        ids.push(r.msg_id);
        if i % 2 == 0 {
            early_ids.push(r.msg_id);
        }
    }
    wheel_holds(&broker, 40).await;
    // The early half is delivered before the restart.
    advance(&time, 400);
    let early = collect(&broker, "sched3", 20).await;
    let mut got_early: Vec<MessageId> = early.iter().map(|m| m.msg_id).collect();
    got_early.sort();
    early_ids.sort();
    assert_eq!(got_early, early_ids, "the early half, and only it");
    // Down until +1600 ms: five of the late half fall due meanwhile.
    broker.restart_with(|| advance(&time, 1200)).await;
    advance(&time, 300);
    let got = collect(&broker, "sched3", 40).await;
    // Every slot delivered (a duplicate would come from the wheel): then look again.
    wheel_empty(&broker).await;
    let got2 = now_on(&broker, "sched3").await;
    assert_eq!(got.len(), 40);
    assert_eq!(got2.len(), 40, "a scheduled message was delivered twice");
    let mut seen: Vec<MessageId> = got2.iter().map(|m| m.msg_id).collect();
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_message_can_be_cancelled_before_it_is_due() {
    let time = ManualClock::starting_now();
    let broker = TestBroker::start_clocked(fast, time.clock()).await;
    let producer = Producer::new(broker.client().await, ProducerOptions::default());
    let keep = producer
        .send(Message::new("sched4", "keep").with_delay(Duration::from_millis(1200)))
        .await
        .unwrap();
    let drop_it = producer
        .send(Message::new("sched4", "drop").with_delay(Duration::from_millis(1200)))
        .await
        .unwrap();
    producer.cancel_scheduled(drop_it.msg_id).await.unwrap();
    // Cancelling twice is fine; an unknown id is not found.
    producer.cancel_scheduled(drop_it.msg_id).await.unwrap();
    let e = producer
        .cancel_scheduled(MessageId::new())
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(Status::NotFound), "{e}");
    advance(&time, 1200);
    wheel_empty(&broker).await;
    let got = now_on(&broker, "sched4").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].msg_id, keep.msg_id);
    // Once delivered it can no longer be cancelled.
    let e = producer.cancel_scheduled(keep.msg_id).await.unwrap_err();
    assert_eq!(status(&e), Some(Status::AlreadyDue), "{e}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn committed_transactions_are_visible_and_rolled_back_ones_never() {
    let time = ManualClock::starting_now();
    let broker = TestBroker::start_clocked(fast, time.clock()).await;
    let opts = ProducerOptions {
        group: "tx-shop".into(),
        ..Default::default()
    };
    let producer = Producer::new(broker.client().await, opts);
    let c = producer
        .send_in_transaction(Message::new("tx1", "commit-me"), |_, _| {
            TransactionState::Commit
        })
        .await
        .unwrap();
    assert!(c.reported);
    let r = producer
        .send_in_transaction(Message::new("tx1", "roll-me"), |_, _| {
            TransactionState::Rollback
        })
        .await
        .unwrap();
    assert!(r.reported);
    // The decisions travel one-way: wait until the broker has applied both.
    all_resolved(&broker).await;
    // A second decision the other way is refused; the same one is fine.
    producer
        .end_transaction(&c.send, TransactionState::Commit)
        .await
        .unwrap();
    let e = producer
        .end_transaction(&r.send, TransactionState::Commit)
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(Status::TransactionResolved), "{e}");
    // Past a few check intervals the rolled back one still does not show up.
    advance(&time, 1500);
    let got = now_on(&broker, "tx1").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].body.as_ref(), b"commit-me");
    assert_eq!(got[0].msg_id, c.send.msg_id);
    assert!(got[0].property("TRAN_MSG").is_none());
    assert_eq!(broker.server().broker().unresolved_transactions(), 0);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_producer_of_the_group_answers_the_check_of_a_crashed_one() {
    let time = ManualClock::starting_now();
    let broker = TestBroker::start_clocked(fast, time.clock()).await;
    let opts = ProducerOptions {
        group: "tx-inventory".into(),
        ..Default::default()
    };
    // The first producer stores a half message and dies before deciding.
    let crashed_client = broker.client().await;
    let crashed = Producer::new(crashed_client.clone(), opts.clone());
    let half = crashed
        .send_half(Message::new("tx2", "deduct").with_key("order-1"))
        .await
        .unwrap();
    crashed_client.close().await;
    drop(crashed);
    // The half message was stored before send_half returned, and the broker's clock stands
    // still: no check-back can make it visible meanwhile.
    assert!(
        now_on(&broker, "tx2").await.is_empty(),
        "a half message is invisible"
    );
    // A new producer of the same group answers the check-back.
    let checks = Arc::new(Mutex::new(Vec::new()));
    let producer = Producer::new(broker.client().await, opts);
    let seen = checks.clone();
    let checker = producer.start_transaction_checker(move |m: ReceivedMessage| {
        let seen = seen.clone();
        async move {
            seen.lock()
                .unwrap()
                .push((m.msg_id, m.topic.clone(), m.keys.clone()));
            TransactionState::Commit
        }
    });
    // The check falls due after tx_check_timeout_ms (300) of the broker's clock.
    advance(&time, 300);
    let got = collect(&broker, "tx2", 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].msg_id, half.msg_id);
    // Checks stop as soon as the outcome is known: past more check intervals, no other.
    all_resolved(&broker).await;
    advance(&time, 1000);
    let checks = checks.lock().unwrap().clone();
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert_eq!(checks[0].1, "tx2", "the check shows the real topic");
    assert_eq!(checks[0].2, vec!["order-1".to_string()]);
    checker.stop();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_outcomes_are_checked_at_most_max_times_then_discarded() {
    let time = ManualClock::starting_now();
    let broker = TestBroker::start_clocked(fast, time.clock()).await;
    let opts = ProducerOptions {
        group: "tx-unsure".into(),
        ..Default::default()
    };
    let producer = Producer::new(broker.client().await, opts);
    let r = producer
        .send_in_transaction(Message::new("tx3", "maybe"), |_, _| {
            TransactionState::Unknown
        })
        .await
        .unwrap();
    // With no producer answering, nothing is counted: let the timeout and several check
    // intervals pass, then start a checker.
    advance(&time, 1200);
    let count = Arc::new(Mutex::new(0u32));
    let n = count.clone();
    let _checker = producer.start_transaction_checker(move |_m| {
        let n = n.clone();
        async move {
            *n.lock().unwrap() += 1;
            TransactionState::Unknown
        }
    });
    // One check now (overdue), then one per interval (300) of the broker's clock.
    for want in 1..=3u32 {
        eventually(&format!("check {want}"), async || {
            *count.lock().unwrap() >= want
        })
        .await;
        advance(&time, 300);
    }
    let dead = collect(&broker, "%TRANS_CHECK_MAX%", 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].msg_id, r.send.msg_id);
    // Discarded: nothing is left to check, however long the clock runs.
    all_resolved(&broker).await;
    advance(&time, 900);
    assert_eq!(
        *count.lock().unwrap(),
        3,
        "exactly tx_max_checks real checks"
    );
    assert!(now_on(&broker, "tx3").await.is_empty());
    let e = producer
        .end_transaction(&r.send, TransactionState::Commit)
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(Status::TransactionResolved), "{e}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_messages_and_decisions_survive_a_restart() {
    let mut broker = TestBroker::start_tuned(|c| {
        fast(c);
        c.messaging.tx_check_timeout_ms = 60_000;
    })
    .await;
    let opts = ProducerOptions {
        group: "tx-restart".into(),
        ..Default::default()
    };
    let producer = Producer::new(broker.client().await, opts.clone());
    let a = producer.send_half(Message::new("tx4", "a")).await.unwrap();
    let b = producer.send_half(Message::new("tx4", "b")).await.unwrap();
    producer
        .end_transaction(&b, TransactionState::Rollback)
        .await
        .unwrap();
    broker.restart().await;
    assert_eq!(broker.server().broker().unresolved_transactions(), 1);
    let producer = Producer::new(broker.client().await, opts);
    producer
        .end_transaction(&a, TransactionState::Commit)
        .await
        .unwrap();
    let e = producer
        .end_transaction(&b, TransactionState::Commit)
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(Status::TransactionResolved), "{e}");
    let got = collect(&broker, "tx4", 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].msg_id, a.msg_id);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_listener_reaches_the_dlq_after_exactly_max_attempts() {
    // Back-offs run on the broker's clock, which the test moves.
    let time = ManualClock::starting_now();
    let broker = TestBroker::start_clocked(fast, time.clock()).await;
    let producer = Producer::new(broker.client().await, ProducerOptions::default());
    // Tag filter on the subscription: it applies to the retry topic too.
    let attempts: Arc<Mutex<BTreeMap<String, Vec<u32>>>> = Arc::default();
    let seen = attempts.clone();
    let opts = PushConsumerOptions {
        consume_from: ConsumeFrom::First,
        long_poll: Duration::from_millis(200),
        max_reconsume_times: 3,
        ..PushConsumerOptions::new("billing")
    };
    let consumer = PushConsumer::start_single(
        broker.client().await,
        vec![Subscription::new("pay", FilterSpec::Tag("card".into()))],
        opts,
        move |m: ReceivedMessage| {
            let seen = seen.clone();
            async move {
                assert_eq!(m.topic, "pay", "retries show the original topic");
                assert_eq!(m.tag.as_deref(), Some("card"));
                let key = m.keys.first().cloned().unwrap_or_default();
                seen.lock()
                    .unwrap()
                    .entry(key.clone())
                    .or_default()
                    .push(m.reconsume_times);
                if key == "bad" {
                    if m.reconsume_times == 1 {
                        panic!("listener panic counts as a failure");
                    }
                    return Err("payment service down");
                }
                if key == "flaky" && m.reconsume_times == 0 {
                    return Ok(ConsumeResult::ReconsumeLater);
                }
                Ok(ConsumeResult::Success)
            }
        },
    )
    .await
    .unwrap();
    let bad = producer
        .send(
            Message::new("pay", "b")
                .with_tag("card")
                .with_key("bad")
                .with_property("amount", "42"),
        )
        .await
        .unwrap();
    producer
        .send(Message::new("pay", "f").with_tag("card").with_key("flaky"))
        .await
        .unwrap();
    producer
        .send(Message::new("pay", "c").with_tag("cash").with_key("cash"))
        .await
        .unwrap();
    let admin = Admin::new(broker.client().await);
    let dlq = advancing_until(&time, &broker, "a message dead-lettered", async || {
        let d = admin.dlq_list("billing", 0, 10).await.unwrap();
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].msg_id, bad.msg_id, "same id through retries");
    assert_eq!(dlq[0].keys, vec!["bad".to_string()]);
    assert_eq!(dlq[0].property("amount"), Some("42"));
    assert_eq!(dlq[0].property("RETRY_TOPIC"), Some("pay"));
    assert_eq!(dlq[0].reconsume_times, 4);
    // Never delivered again by itself: nothing is left in the timer wheel, and with the
    // clock past every back-off the consumer has consumed and committed all there is.
    wheel_empty(&broker).await;
    advance(&time, 1000);
    eventually("the consumer to commit everything", async || {
        let d = admin.describe_group("billing").await.unwrap();
        d.queues
            .iter()
            .filter(|q| q.topic == "pay" || q.topic == "%RETRY%billing")
            .all(|q| q.committed == Some(q.max_offset))
    })
    .await;
    {
        let a = attempts.lock().unwrap();
        assert_eq!(a["bad"], vec![0, 1, 2, 3], "1 delivery + 3 reconsumptions");
        assert_eq!(a["flaky"], vec![0, 1]);
        assert!(!a.contains_key("cash"), "the filter applies");
    }
    // Resent from the DLQ: delivered once more, with a fresh count.
    let n = admin
        .dlq_resend("billing", Some(bad.msg_id), 0, 1)
        .await
        .unwrap();
    assert_eq!(n, 1);
    eventually("the resent message delivered", async || {
        attempts.lock().unwrap()["bad"].len() >= 5
    })
    .await;
    assert_eq!(attempts.lock().unwrap()["bad"][4], 0);
    consumer.shutdown().await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_orderly_consumer_dead_letters_after_its_attempts_and_moves_on() {
    let broker = TestBroker::start_tuned(fast).await;
    let admin = Admin::new(broker.client().await);
    admin.create_topic("steps2", 1).await.unwrap();
    let producer = Producer::new(broker.client().await, ProducerOptions::default());
    for i in 0..5 {
        producer
            .send(Message::new("steps2", format!("{i}")).with_sharding_key("order-9"))
            .await
            .unwrap();
    }
    let log: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let seen = log.clone();
    let opts = PushConsumerOptions {
        consume_from: ConsumeFrom::First,
        orderly: true,
        long_poll: Duration::from_millis(200),
        max_reconsume_times: 3,
        orderly_retry_pause: Duration::from_millis(50),
        ..PushConsumerOptions::new("orderly-dlq")
    };
    let consumer = PushConsumer::start_single(
        broker.client().await,
        vec!["steps2".into()],
        opts,
        move |m: ReceivedMessage| {
            let seen = seen.clone();
            async move {
                let body = String::from_utf8_lossy(&m.body).to_string();
                seen.lock().unwrap().push((body.clone(), m.reconsume_times));
                if body == "2" {
                    ConsumeResult::ReconsumeLater
                } else {
                    ConsumeResult::Success
                }
            }
        },
    )
    .await
    .unwrap();
    eventually("7 listener calls", async || log.lock().unwrap().len() >= 7).await;
    // Once the queue's end is committed every message has been dealt with: nothing more
    // comes, so the log is complete.
    let pull = PullConsumer::new(broker.client().await);
    eventually("the queue's end committed", async || {
        pull.fetch_offset("orderly-dlq", "steps2", 0).await.unwrap() == Some(5)
    })
    .await;
    let order: Vec<(String, u32)> = log.lock().unwrap().clone();
    let want: Vec<(String, u32)> = [
        ("0", 0),
        ("1", 0),
        ("2", 0),
        ("2", 1),
        ("2", 2),
        ("3", 0),
        ("4", 0),
    ]
    .iter()
    .map(|(b, r)| (b.to_string(), *r))
    .collect();
    assert_eq!(order, want);
    let dlq = admin.dlq_list("orderly-dlq", 0, 10).await.unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].body.as_ref(), b"2");
    consumer.shutdown().await.unwrap();
    broker.stop().await;
}
