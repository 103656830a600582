//! The broker over QUIC with the real SDK: produce (sync, async, one-way, batch, ordered),
//! pull with long polling, offsets across a restart, admin, and bad input.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use quiver_client::{
    Admin, ClientError, Message, Producer, ProducerOptions, PullConsumer, PullOptions, PullStatus,
    QueueSelector, Status,
};

use crate::harness::{eventually_some, TestBroker};

async fn pull_all(
    consumer: &PullConsumer,
    topic: &str,
    queues: u32,
) -> Vec<quiver_client::ReceivedMessage> {
    let mut out = Vec::new();
    for q in 0..queues {
        let mut offset = 0;
        loop {
            let r = consumer
                .pull(topic, q, offset, PullOptions::default())
                .await
                .expect("pull");
            if r.messages.is_empty() {
                break;
            }
            offset = r.next_offset;
            out.extend(r.messages);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_send_mode_stores_and_pull_returns_the_messages() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let producer = Producer::new(client.clone(), ProducerOptions::default());

    let sync = producer
        .send(
            Message::new("orders", "sync body")
                .with_tag("created")
                .with_key("order-1")
                .with_property("region", "eu"),
        )
        .await
        .expect("sync send");
    assert_eq!(sync.topic, "orders");
    let handles: Vec<_> = (0..50)
        .map(|i| producer.send_async(Message::new("orders", format!("async {i}"))))
        .collect();
    let mut async_ids = Vec::new();
    for h in handles {
        async_ids.push(h.await.expect("async send").msg_id);
    }
    producer
        .send_oneway(Message::new("orders", "oneway body"))
        .await
        .expect("oneway");
    let batch: Vec<Message> = (0..10)
        .map(|i| Message::new("orders", format!("batch {i}")))
        .collect();
    let batch_results = producer.send_batch(batch).await.expect("batch");
    assert_eq!(batch_results.len(), 10);
    for w in batch_results.windows(2) {
        assert_eq!(
            (w[1].queue_id, w[1].queue_offset),
            (w[0].queue_id, w[0].queue_offset + 1),
            "batch is contiguous in one queue"
        );
    }

    let consumer = PullConsumer::new(client.clone());
    // One-way sends are not acknowledged: wait until the broker has it.
    let all = eventually_some("the one-way send to be stored", async || {
        let all = pull_all(&consumer, "orders", 4).await;
        (all.len() >= 62).then_some(all)
    })
    .await;
    assert_eq!(all.len(), 1 + 50 + 1 + 10);
    let first = all
        .iter()
        .find(|m| m.msg_id == sync.msg_id)
        .expect("sync message pulled");
    assert_eq!(&first.body[..], b"sync body");
    assert_eq!(first.tag.as_deref(), Some("created"));
    assert_eq!(first.keys, vec!["order-1".to_string()]);
    assert_eq!(first.property("region"), Some("eu"));
    assert_eq!(
        (first.queue_id, first.queue_offset),
        (sync.queue_id, sync.queue_offset)
    );
    assert!(all.iter().any(|m| &m.body[..] == b"oneway body"));
    for id in async_ids {
        assert!(all.iter().any(|m| m.msg_id == id));
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_pull_answers_as_soon_as_a_message_arrives() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let admin = Admin::new(client.clone());
    admin.create_topic("lp", 1).await.unwrap();
    let consumer = PullConsumer::new(client.clone());
    let started = Instant::now();
    let empty = consumer
        .pull(
            "lp",
            0,
            0,
            PullOptions {
                long_poll: Duration::from_millis(300),
                ..PullOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(empty.status, PullStatus::NoNewMessages);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "parked for the long-poll time"
    );

    let c2 = consumer.clone();
    let parked = tokio::spawn(async move {
        let t = Instant::now();
        let r = c2
            .pull(
                "lp",
                0,
                0,
                PullOptions {
                    long_poll: Duration::from_secs(10),
                    ..PullOptions::default()
                },
            )
            .await
            .unwrap();
        (r, t.elapsed())
    });
    broker.parked(1).await;
    let producer = Producer::new(client.clone(), ProducerOptions::default());
    producer.send(Message::new("lp", "wake up")).await.unwrap();
    let (r, waited) = parked.await.unwrap();
    assert_eq!(r.status, PullStatus::Found);
    assert_eq!(&r.messages[0].body[..], b"wake up");
    assert!(
        waited < Duration::from_secs(5),
        "answered on arrival, not at the 10 s timeout: {waited:?}"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_with_one_sharding_key_arrive_in_send_order() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let producer = Producer::new(client.clone(), ProducerOptions::default());
    let keys = ["order-a", "order-b", "order-c", "order-d", "order-e"];
    // Five orders, each with its steps sent in order; orders interleave.
    let tasks: Vec<_> = keys
        .iter()
        .map(|k| {
            let p = producer.clone();
            let k = k.to_string();
            tokio::spawn(async move {
                for step in 0..20 {
                    p.send(
                        Message::new("sharded", format!("{k}:{step}")).with_sharding_key(k.clone()),
                    )
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let all = pull_all(&PullConsumer::new(client), "sharded", 4).await;
    let mut per_key: HashMap<String, (u32, Vec<u32>)> = HashMap::new();
    for m in &all {
        let body = std::str::from_utf8(&m.body).unwrap();
        let (k, step) = body.split_once(':').unwrap();
        let e = per_key
            .entry(k.to_string())
            .or_insert((m.queue_id, Vec::new()));
        assert_eq!(e.0, m.queue_id, "all messages of {k} land on one queue");
        e.1.push(step.parse().unwrap());
    }
    for (k, (_, steps)) in per_key {
        assert_eq!(
            steps,
            (0..20).collect::<Vec<u32>>(),
            "{k} arrives in send order"
        );
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_and_acked_messages_survive_a_broker_restart() {
    let mut broker = TestBroker::start().await;
    let client = broker.client().await;
    let producer = Producer::new(
        client.clone(),
        ProducerOptions {
            selector: QueueSelector::Fixed(1),
            ..ProducerOptions::default()
        },
    );
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(
            producer
                .send(Message::new("durable", format!("m{i}")))
                .await
                .unwrap()
                .msg_id,
        );
    }
    let consumer = PullConsumer::new(client.clone());
    consumer
        .commit_offset("billing", "durable", 1, 42)
        .await
        .unwrap();

    broker.restart().await;

    // The same client reconnects by itself.
    assert_eq!(
        consumer
            .fetch_offset("billing", "durable", 1)
            .await
            .unwrap(),
        Some(42)
    );
    assert_eq!(
        consumer
            .fetch_offset("other-group", "durable", 1)
            .await
            .unwrap(),
        None
    );
    let all = pull_all(&consumer, "durable", 4).await;
    assert_eq!(
        all.iter().map(|m| m.msg_id).collect::<Vec<_>>(),
        ids,
        "every acked message, in order"
    );
    let more = producer
        .send(Message::new("durable", "after restart"))
        .await
        .unwrap();
    assert_eq!(more.queue_offset, 100);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_manages_topics_and_finds_messages() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let admin = Admin::new(client.clone());
    admin.create_topic("inventory", 2).await.unwrap();
    let err = admin.create_topic("inventory", 2).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::TopicExists));
    admin.update_topic("inventory", 3).await.unwrap();
    assert_eq!(admin.describe_topic("inventory").await.unwrap().len(), 3);
    // The SDK checks names before sending (the broker checks too: see the raw-frame tests).
    let err = admin.create_topic("bad topic!", 1).await.unwrap_err();
    assert!(err.to_string().contains("position 3"), "{err}");

    let producer = Producer::new(client.clone(), ProducerOptions::default());
    let sent = producer
        .send(
            Message::new("inventory", "sku-1 -1")
                .with_key("sku-1")
                .with_key("warehouse-9"),
        )
        .await
        .unwrap();
    let by_id = admin
        .message_by_id(sent.msg_id)
        .await
        .unwrap()
        .expect("found by id");
    assert_eq!(&by_id.body[..], b"sku-1 -1");
    let by_key = admin
        .query_by_key("inventory", "warehouse-9", 10)
        .await
        .unwrap();
    assert_eq!(by_key.len(), 1);
    assert_eq!(by_key[0].msg_id, sent.msg_id);
    let queues = admin.describe_topic("inventory").await.unwrap();
    assert_eq!(queues.iter().map(|q| q.max_offset).sum::<u64>(), 1);
    let topics = admin.list_topics().await.unwrap();
    assert!(topics
        .iter()
        .any(|t| t.name == "inventory" && t.queues == 3));

    let consumer = PullConsumer::new(client.clone());
    let ts = consumer
        .offset_for_timestamp("inventory", sent.queue_id, 0)
        .await
        .unwrap();
    assert_eq!(ts, 0);

    admin.delete_topic("inventory").await.unwrap();
    let err = admin.describe_topic("inventory").await.unwrap_err();
    assert_eq!(err.status(), Some(Status::TopicNotFound));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_get_clear_errors_and_nothing_is_stored() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let producer = Producer::new(client.clone(), ProducerOptions::default());
    let err = producer
        .send(Message::new("t", vec![0u8; 300 << 10]))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::MessageTooLarge), "{err}");
    let err = producer
        .send(Message::new("t", "x").with_property("KEYS", "v"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
    let queues = Admin::new(client.clone()).describe_topic("t").await;
    let stored: u64 = queues
        .map(|q| q.iter().map(|q| q.max_offset).sum())
        .unwrap_or(0);
    assert_eq!(stored, 0);
    let err: ClientError = PullConsumer::new(client.clone())
        .pull("missing-topic", 0, 0, PullOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::TopicNotFound), "{err}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_creation_can_be_turned_off() {
    let temp = tempfile::tempdir().unwrap();
    let mut cfg = crate::harness::test_config(temp.path());
    cfg.broker.auto_create_topics = false;
    let broker = TestBroker::start_with(cfg).await;
    let client = broker.client().await;
    let producer = Producer::new(client.clone(), ProducerOptions::default());
    let err = producer.send(Message::new("nope", "x")).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::TopicNotFound), "{err}");
    assert!(err.to_string().contains("auto-creation is off"), "{err}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_broker_answers_busy_and_the_sdk_retries() {
    let temp = tempfile::tempdir().unwrap();
    let mut cfg = crate::harness::test_config(temp.path());
    cfg.broker.append_queue = 1;
    cfg.broker.busy_timeout_ms = 0;
    let broker = TestBroker::start_with(cfg).await;
    let client = broker.client().await;
    let body = vec![7u8; 16 << 10];

    // Without retries the producer sees the retryable "busy" status, and nothing else.
    let eager = Producer::new(
        client.clone(),
        ProducerOptions {
            retries: 0,
            ..ProducerOptions::default()
        },
    );
    let started = Instant::now();
    let handles: Vec<_> = (0..200)
        .map(|_| eager.send_async(Message::new("flood", body.clone())))
        .collect();
    let mut busy = 0;
    let mut ok = 0;
    for h in handles {
        match h.await {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.status(), Some(Status::Busy), "{e}");
                assert!(e.is_retryable());
                busy += 1;
            }
        }
    }
    assert!(
        busy > 0,
        "200 concurrent sends overflow a one-slot append queue"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "busy answers come fast"
    );

    // With retries (back-off), every message gets in eventually.
    let patient = Producer::new(
        client.clone(),
        ProducerOptions {
            retries: 50,
            send_timeout: Duration::from_secs(30),
            ..ProducerOptions::default()
        },
    );
    let handles: Vec<_> = (0..50)
        .map(|_| patient.send_async(Message::new("flood", body.clone())))
        .collect();
    for h in handles {
        h.await.expect("retried until accepted");
    }
    let stored: u64 = Admin::new(client)
        .describe_topic("flood")
        .await
        .unwrap()
        .iter()
        .map(|q| q.max_offset)
        .sum();
    assert_eq!(stored, ok + 50);
    broker.stop().await;
}
