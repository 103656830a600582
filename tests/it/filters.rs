//! Broker-side filtering over QUIC: tag and SQL92 subscriptions get exactly the matching
//! messages (the others never cross the network), offsets advance past filtered-out messages,
//! bad expressions are refused when subscribing, and a group's members must subscribe alike.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use quiver_client::{
    Admin, ConsumeFrom, ConsumeResult, FilterSpec, Message, Producer, ProducerOptions,
    PullConsumer, PullOptions, PullStatus, PushConsumer, PushConsumerOptions, ReceivedMessage,
    Status, Subscription,
};

use crate::harness::{eventually, TestBroker};

/// 60 messages over one queue: tags A/B/C in turn, a region property, an amount, and a `vip`
/// property on every fourth.
async fn mixed_stream(broker: &TestBroker) {
    let client = broker.client().await;
    Admin::new(client.clone())
        .create_topic("mixed", 1)
        .await
        .unwrap();
    let producer = Producer::new(client, ProducerOptions::default());
    for i in 0..60u32 {
        let tag = ["A", "B", "C"][i as usize % 3];
        let region = ["eu", "us", "apac"][(i / 3) as usize % 3];
        let mut m = Message::new("mixed", format!("m{i}"))
            .with_tag(tag)
            .with_property("region", region)
            .with_property("amount", format!("{}.5", i * 10));
        if i % 4 == 0 {
            m = m.with_property("vip", "yes");
        }
        producer.send(m).await.unwrap();
    }
}

fn expected(pred: impl Fn(u32) -> bool) -> Vec<String> {
    (0..60u32)
        .filter(|i| pred(*i))
        .map(|i| format!("m{i}"))
        .collect()
}

/// Pulls the whole queue with `filter`, returning the bodies received.
async fn pull_filtered(consumer: &PullConsumer, filter: FilterSpec) -> Vec<String> {
    let mut offset = 0;
    let mut got = Vec::new();
    loop {
        let opts = PullOptions {
            filter: filter.clone(),
            max_messages: 7,
            ..PullOptions::default()
        };
        let r = consumer.pull("mixed", 0, offset, opts).await.unwrap();
        got.extend(
            r.messages
                .iter()
                .map(|m| String::from_utf8_lossy(&m.body).into_owned()),
        );
        assert!(r.next_offset >= offset, "offsets only move forward");
        if r.status == PullStatus::NoNewMessages {
            assert_eq!(
                r.next_offset, 60,
                "filtered-out messages are skipped, not re-read"
            );
            return got;
        }
        offset = r.next_offset;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_and_sql_subscriptions_receive_exactly_the_matching_messages() {
    let broker = TestBroker::start().await;
    mixed_stream(&broker).await;
    let consumer = PullConsumer::new(broker.client().await);

    let tags = pull_filtered(&consumer, FilterSpec::Tag("A || C".into())).await;
    assert_eq!(tags, expected(|i| i % 3 != 1));

    let sql = pull_filtered(
        &consumer,
        FilterSpec::Sql("region IN ('eu','us') AND amount > 100.5 AND vip IS NOT NULL".into()),
    )
    .await;
    assert_eq!(
        sql,
        expected(|i| (i / 3) % 3 != 2 && i * 10 > 100 && i % 4 == 0)
    );

    let numeric = pull_filtered(
        &consumer,
        FilterSpec::Sql("amount BETWEEN 100 AND 200.5".into()),
    )
    .await;
    assert_eq!(
        numeric,
        expected(|i| (10..=20).contains(&i)),
        "property strings compare as numbers"
    );

    let system = pull_filtered(
        &consumer,
        FilterSpec::Sql("TAGS = 'B' AND NOT region = 'us'".into()),
    )
    .await;
    assert_eq!(system, expected(|i| i % 3 == 1 && (i / 3) % 3 != 1));

    // RocketMQ's general forms (docs/FILTERS.md §3.1): a property alone as a condition
    // (`vip` is 'yes', neither true nor false: UNKNOWN), two properties compared, chains.
    let general = pull_filtered(
        &consumer,
        FilterSpec::Sql("(amount > 300 = TRUE) AND region <> TAGS AND NOT vip IS NULL".into()),
    )
    .await;
    assert_eq!(general, expected(|i| i * 10 > 300 && i % 4 == 0));
    let bare = pull_filtered(&consumer, FilterSpec::Sql("vip OR TAGS = 'A'".into())).await;
    assert_eq!(
        bare,
        expected(|i| i % 3 == 0),
        "'yes' is not a boolean: UNKNOWN"
    );

    let all = pull_filtered(&consumer, FilterSpec::Tag("*".into())).await;
    assert_eq!(all.len(), 60);
    let none = pull_filtered(&consumer, FilterSpec::Tag("Z".into())).await;
    assert!(none.is_empty());
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_long_poll_wakes_for_a_matching_arrival() {
    let broker = TestBroker::start().await;
    mixed_stream(&broker).await;
    let client = broker.client().await;
    let consumer = PullConsumer::new(client.clone());
    let c = consumer.clone();
    let parked = tokio::spawn(async move {
        c.pull(
            "mixed",
            0,
            0,
            PullOptions {
                filter: FilterSpec::Tag("LATE".into()),
                long_poll: Duration::from_secs(10),
                ..PullOptions::default()
            },
        )
        .await
        .unwrap()
    });
    broker.parked(1).await;
    let producer = Producer::new(client, ProducerOptions::default());
    producer
        .send(Message::new("mixed", "not this").with_tag("EARLY"))
        .await
        .unwrap();
    producer
        .send(Message::new("mixed", "this one").with_tag("LATE"))
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), parked)
        .await
        .expect("woken")
        .unwrap();
    assert_eq!(r.status, PullStatus::Found);
    assert_eq!(r.messages.len(), 1);
    assert_eq!(&r.messages[0].body[..], b"this one");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expressions_are_refused_at_subscribe_time_with_a_column() {
    let broker = TestBroker::start().await;
    mixed_stream(&broker).await;
    let client = broker.client().await;
    let err = PullConsumer::new(client.clone())
        .pull(
            "mixed",
            0,
            0,
            PullOptions {
                filter: FilterSpec::Sql("a = 1 b".into()),
                ..PullOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::InvalidFilter), "{err}");
    assert!(err.to_string().contains("column"), "{err}");

    let sub = Subscription::new("mixed", FilterSpec::Sql("a == 1".into()));
    let err = PushConsumer::start_single(
        client.clone(),
        vec![sub],
        PushConsumerOptions::new("bad"),
        |_m: ReceivedMessage| async { ConsumeResult::Success },
    )
    .await
    .expect_err("refused when subscribing");
    assert_eq!(err.status(), Some(Status::InvalidFilter), "{err}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_group_must_subscribe_alike() {
    let broker = TestBroker::start().await;
    mixed_stream(&broker).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let start = |filter: FilterSpec| {
        let seen = seen.clone();
        let broker = &broker;
        async move {
            let client = broker.client().await;
            let sub = Subscription::new("mixed", filter);
            let opts = PushConsumerOptions {
                consume_from: ConsumeFrom::First,
                ..PushConsumerOptions::new("alike")
            };
            PushConsumer::start_single(client, vec![sub], opts, move |m: ReceivedMessage| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(m.tag.clone().unwrap_or_default());
                    ConsumeResult::Success
                }
            })
            .await
        }
    };
    let first = start(FilterSpec::Tag("A".into()))
        .await
        .expect("first member");
    let err = start(FilterSpec::Tag("B".into()))
        .await
        .expect_err("a different filter is refused");
    assert_eq!(err.status(), Some(Status::SubscriptionConflict), "{err}");
    assert!(
        err.to_string().contains("\"A\"") && err.to_string().contains("\"B\""),
        "names both: {err}"
    );
    // Equivalent spelling, same canonical form: accepted.
    let second = start(FilterSpec::Tag("  A ".into()))
        .await
        .expect("an equivalent filter joins");
    let pull = PullConsumer::new(broker.client().await);
    // The committed offset moves past filtered-out messages.
    eventually("the committed offset to reach 60", async || {
        pull.fetch_offset("alike", "mixed", 0).await.unwrap() == Some(60)
    })
    .await;
    // Non-matching arrivals after catching up: skipped by the parked pulls, committed past.
    let producer = Producer::new(broker.client().await, ProducerOptions::default());
    for _ in 0..2 {
        producer
            .send(Message::new("mixed", "late").with_tag("B"))
            .await
            .unwrap();
    }
    // No lag left behind by filtered-out arrivals.
    eventually("the committed offset to reach 62", async || {
        pull.fetch_offset("alike", "mixed", 0).await.unwrap() == Some(62)
    })
    .await;
    let seen_tags = seen.lock().unwrap().clone();
    assert_eq!(seen_tags.len(), 20);
    assert!(
        seen_tags.iter().all(|t| t == "A"),
        "the group receives only its filter's messages"
    );
    second.shutdown().await.unwrap();
    first.shutdown().await.unwrap();
    broker.stop().await;
}
