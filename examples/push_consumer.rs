//! A member of the consumer group `demo-push`: the broker gives it its share of the queues of
//! `demo` (all of them when it runs alone; start a second one in another shell and watch the
//! queues split), the listener runs for each message with bounded concurrency, and offsets are
//! committed for messages that succeeded. Ctrl-C leaves the group cleanly.
//!
//! ```text
//! cargo run --example push_consumer      # in one or more shells
//! cargo run --example producer           # in another
//! ```
//!
//! Environment: `QUIVER_BROKER` (default `127.0.0.1:10911`) and `QUIVER_FINGERPRINT` (else
//! `quiver-data/tls/cert.pem` is trusted as the CA).

use quiver_client::{
    Client, ClientConfig, ConsumeFrom, ConsumeResult, PushConsumer, PushConsumerOptions,
    ReceivedMessage,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(ClientConfig::from_env(None)?).await?;
    let options = PushConsumerOptions {
        consume_from: ConsumeFrom::First,
        ..PushConsumerOptions::new("demo-push")
    };
    let consumer = PushConsumer::start_single(
        client,
        vec!["demo".into()],
        options,
        |m: ReceivedMessage| async move {
            println!(
                "{}/{} {} {}",
                m.queue_id,
                m.queue_offset,
                m.msg_id,
                String::from_utf8_lossy(&m.body)
            );
            ConsumeResult::Success
        },
    )
    .await?;
    println!("member {} joined; Ctrl-C to leave", consumer.member_id());
    let mut last = Vec::new();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {
                let owned = consumer.owned_queues();
                if owned != last {
                    println!("owns {owned:?}");
                    last = owned;
                }
            }
        }
    }
    consumer.shutdown().await?;
    println!("left the group");
    Ok(())
}
