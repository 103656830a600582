//! Sends messages to the topic `demo` of a local broker in every way the SDK offers:
//! synchronously, asynchronously (many in flight on one connection), one-way, as an atomic
//! batch, and ordered by sharding key (all messages of one order land in one queue, in order).
//!
//! ```text
//! cargo run --example producer
//! ```
//!
//! Environment:
//! * `QUIVER_BROKER`: broker address, `HOST:PORT` (default `127.0.0.1:10911`).
//! * `QUIVER_FINGERPRINT`: SHA-256 of the broker certificate (64 hex digits, `:` allowed) to
//!   pin; without it, `quiver-data/tls/cert.pem` (the broker's self-signed certificate) is
//!   trusted as the CA.

use quiver_client::{Client, ClientConfig, Message, Producer, ProducerOptions};

const TOPIC: &str = "demo";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(ClientConfig::from_env(None)?).await?;
    if let Some(info) = client.broker_info() {
        println!(
            "connected to broker {:?} (protocol {}, max message {} bytes)",
            info.broker, info.version, info.max_message_size
        );
    }
    let producer = Producer::new(client.clone(), ProducerOptions::default());

    // 1. Synchronous: wait for the broker to store the message.
    let r = producer
        .send(
            Message::new(TOPIC, "hello, sync")
                .with_tag("sync")
                .with_key("greeting-1")
                .with_property("source", "producer-example"),
        )
        .await?;
    println!(
        "sync     {} -> queue {} offset {}",
        r.msg_id, r.queue_id, r.queue_offset
    );

    // 2. Asynchronous: start many sends, then collect the results.
    let handles: Vec<_> = (0..10)
        .map(|i| {
            producer.send_async(Message::new(TOPIC, format!("hello, async {i}")).with_tag("async"))
        })
        .collect();
    for h in handles {
        let r = h.await?;
        println!(
            "async    {} -> queue {} offset {}",
            r.msg_id, r.queue_id, r.queue_offset
        );
    }

    // 3. One-way: returns once written; no result.
    producer
        .send_oneway(Message::new(TOPIC, "hello, one-way").with_tag("oneway"))
        .await?;
    println!("one-way  sent");

    // 4. Batch: one request, one queue, stored atomically.
    let batch = (0..5)
        .map(|i| Message::new(TOPIC, format!("batch item {i}")).with_tag("batch"))
        .collect();
    for r in producer.send_batch(batch).await? {
        println!(
            "batch    {} -> queue {} offset {}",
            r.msg_id, r.queue_id, r.queue_offset
        );
    }

    // 5. Ordered: the sharding key picks the queue, so each order's steps stay in order.
    for order in ["order-A", "order-B", "order-C"] {
        for step in ["created", "paid", "shipped"] {
            let r = producer
                .send(
                    Message::new(TOPIC, format!("{order} {step}"))
                        .with_tag("ordered")
                        .with_key(order)
                        .with_sharding_key(order),
                )
                .await?;
            println!(
                "ordered  {order} {step:<8} -> queue {} offset {}",
                r.queue_id, r.queue_offset
            );
        }
    }

    client.close().await;
    Ok(())
}
