//! Reads every queue of the topic `demo` for the consumer group `demo-group`: starts at the
//! group's committed offset (or 0), prints each message, and commits where it stopped, so a
//! second run prints only what arrived in between.
//!
//! ```text
//! cargo run --example producer        # something to read
//! cargo run --example pull_consumer
//! ```
//!
//! Environment:
//! * `QUIVER_BROKER`: broker address, `HOST:PORT` (default `127.0.0.1:10911`).
//! * `QUIVER_FINGERPRINT`: SHA-256 of the broker certificate (64 hex digits, `:` allowed) to
//!   pin; without it, `quiver-data/tls/cert.pem` (the broker's self-signed certificate) is
//!   trusted as the CA.

use quiver_client::{Client, ClientConfig, PullConsumer, PullOptions, PullStatus};

const TOPIC: &str = "demo";
const GROUP: &str = "demo-group";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(ClientConfig::from_env(None)?).await?;
    let consumer = PullConsumer::new(client.clone());
    let mut total = 0usize;

    for queue in consumer.queues(TOPIC).await? {
        let q = queue.queue_id;
        let committed = consumer.fetch_offset(GROUP, TOPIC, q).await?;
        let mut offset = committed.unwrap_or(0);
        println!(
            "queue {q}: offsets {}..{}, group {GROUP} at {}",
            queue.min_offset,
            queue.max_offset,
            committed.map_or("nothing committed".to_string(), |o| o.to_string())
        );
        loop {
            let r = consumer
                .pull(TOPIC, q, offset, PullOptions::default())
                .await?;
            match r.status {
                PullStatus::Found => {
                    for m in &r.messages {
                        println!(
                            "  {q}/{:<6} {} tag={:<8} keys={:?} {:?}",
                            m.queue_offset,
                            m.msg_id,
                            m.tag.as_deref().unwrap_or("-"),
                            m.keys,
                            String::from_utf8_lossy(&m.body)
                        );
                    }
                    total += r.messages.len();
                }
                PullStatus::NoNewMessages => break,
                PullStatus::NoMatch => {}
                PullStatus::OffsetTooSmall | PullStatus::OffsetOverflow => {
                    println!(
                        "  offset {offset} is out of range ({:?}); continuing at {}",
                        r.status, r.next_offset
                    );
                }
            }
            if r.next_offset == offset {
                break;
            }
            offset = r.next_offset;
        }
        if committed != Some(offset) {
            consumer.commit_offset(GROUP, TOPIC, q, offset).await?;
            println!("  committed {offset}");
        }
    }

    println!("{total} message(s) read");
    client.close().await;
    Ok(())
}
