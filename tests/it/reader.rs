//! `QueueReader`: several pulls in flight while behind, and still every message once, in
//! order, whatever ends a pull early (byte limits, a filter, the end of the queue).

use std::time::Duration;

use quiver_client::{
    Admin, FilterSpec, Message, Producer, ProducerOptions, PullConsumer, PullOptions, PullStatus,
    QueueReader,
};

use crate::harness::TestBroker;

/// Runs of 100-byte bodies and runs of 2.5 KB bodies, so a byte limit ends the pulls in the
/// large runs early and not those in the small runs.
fn body(i: u64) -> Vec<u8> {
    let len = if (i / 150).is_multiple_of(2) {
        100
    } else {
        2500
    };
    let mut b = vec![b'.'; len];
    b[..8].copy_from_slice(&i.to_be_bytes());
    b
}

async fn fill(broker: &TestBroker, topic: &str, n: u64) {
    let client = broker.client().await;
    Admin::new(client.clone())
        .create_topic(topic, 1)
        .await
        .unwrap();
    let producer = Producer::new(client, ProducerOptions::default());
    for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
        let batch: Vec<Message> = chunk
            .iter()
            .map(|i| {
                Message::new(topic, body(*i)).with_tag(if i.is_multiple_of(3) { "a" } else { "b" })
            })
            .collect();
        producer.send_batch(batch).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_keeps_pulls_in_flight_and_hands_out_every_message_once_in_order() {
    let broker = TestBroker::start().await;
    let n = 3000;
    fill(&broker, "reader", n).await;
    let consumer = PullConsumer::new(broker.client().await);
    let mut reader = QueueReader::new(consumer.clone(), "reader", 0, 0, 3);
    let options = PullOptions {
        max_messages: 40,
        // 40 messages of 2.5 KB are 100 KB: this limit ends the pulls in the large runs
        // early, which must drop the pulls issued behind them.
        max_bytes: 60_000,
        ..PullOptions::default()
    };
    let (mut seen, mut most_in_flight, mut short) = (Vec::new(), 0, 0);
    loop {
        let r = reader.next(options.clone()).await.unwrap();
        most_in_flight = most_in_flight.max(reader.in_flight());
        if r.status == PullStatus::Found && r.messages.len() < 40 && r.next_offset < n {
            short += 1;
        }
        seen.extend(r.messages.iter().map(|m| {
            assert_eq!(m.body, body(m.queue_offset), "body of {}", m.queue_offset);
            m.queue_offset
        }));
        assert_eq!(reader.offset(), r.next_offset);
        if r.next_offset >= n {
            break;
        }
    }
    assert_eq!(seen, (0..n).collect::<Vec<_>>());
    assert!(
        most_in_flight >= 2,
        "no pull was ever issued ahead ({short} short)"
    );
    assert!(short > 0, "the byte limit never ended a pull early");

    // At the end of the queue nothing is issued ahead, and a long poll answers empty.
    let r = reader
        .next(PullOptions {
            long_poll: Duration::from_millis(50),
            ..options.clone()
        })
        .await
        .unwrap();
    assert_eq!(r.status, PullStatus::NoNewMessages);
    assert_eq!(reader.in_flight(), 0);

    // Seeking back reads the same messages again.
    reader.seek(n - 10);
    let r = reader.next(options).await.unwrap();
    let got: Vec<u64> = r.messages.iter().map(|m| m.queue_offset).collect();
    assert_eq!(got, (n - 10..n).collect::<Vec<_>>());
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_filtered_reader_pulls_one_at_a_time_and_misses_nothing() {
    let broker = TestBroker::start().await;
    let n = 1200;
    fill(&broker, "reader-tags", n).await;
    let consumer = PullConsumer::new(broker.client().await);
    let mut reader = QueueReader::new(consumer, "reader-tags", 0, 0, 4);
    let options = PullOptions {
        max_messages: 25,
        filter: FilterSpec::Tag("a".into()),
        ..PullOptions::default()
    };
    let mut seen = Vec::new();
    loop {
        let r = reader.next(options.clone()).await.unwrap();
        assert_eq!(reader.in_flight(), 0, "a filtered pull was issued ahead");
        seen.extend(r.messages.iter().map(|m| m.queue_offset));
        if r.next_offset >= n {
            break;
        }
    }
    assert_eq!(
        seen,
        (0..n).filter(|i| i.is_multiple_of(3)).collect::<Vec<_>>()
    );
    broker.stop().await;
}
