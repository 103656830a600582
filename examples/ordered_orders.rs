//! Per-order ordered processing: every order's steps are consumed in the order they were sent.
//!
//! Eight orders each go through `created -> paid -> shipped -> done`. The steps are sent
//! interleaved across orders (every order's `created`, then every order's `paid`, ...) to the
//! topic `order-steps`, each with `Message::with_sharding_key(order id)`: all steps of one
//! order land in one queue, in send order. An orderly push consumer of the group
//! `order-steps-orderly` (`PushConsumerOptions { orderly: true, .. }`) hands each queue's
//! messages to the listener one at a time, in queue order, while different queues run in
//! parallel. The listener takes a few milliseconds per message (so that out-of-order
//! processing would show), checks that each step is the next one expected for its order and
//! prints it; at the end it prints each order's sequence and whether any step came out of
//! order. The run takes about a second.
//!
//! ```text
//! cargo run --release -- serve                   # a broker, in another shell
//! cargo run --example ordered_orders             # or: ... -- 127.0.0.1:10911
//! ```
//!
//! Arguments and environment:
//! * first argument, else `QUIVER_BROKER`: broker address, `HOST:PORT` (default
//!   `127.0.0.1:10911`; `localhost:10911` works too).
//! * `QUIVER_FINGERPRINT`: SHA-256 of the broker certificate (64 hex digits, `:` allowed) to
//!   pin; without it, `quiver-data/tls/cert.pem` (the broker's self-signed certificate) is
//!   trusted as the CA.
//!
//! Every message carries a `run` property, so steps left over from an earlier interrupted run
//! are acknowledged and ignored.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_client::{
    Client, ClientConfig, ConsumeFrom, ConsumeResult, FilterSpec, Message, MessageId, Producer,
    ProducerOptions, PushConsumer, PushConsumerOptions, ReceivedMessage, Subscription,
};
use tokio::sync::mpsc;

const TOPIC: &str = "order-steps";
const GROUP: &str = "order-steps-orderly";
const ORDERS: usize = 8;
const STEPS: [&str; 4] = ["created", "paid", "shipped", "done"];

/// What the consumer saw of one order.
#[derive(Default)]
struct Progress {
    /// Steps in arrival order.
    seen: Vec<&'static str>,
    /// Steps that arrived out of order.
    errors: usize,
    /// Queue the order's steps came from.
    queue: Option<u32>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client =
        Client::connect(ClientConfig::from_env(std::env::args().nth(1).as_deref())?).await?;
    let producer = Producer::new(client.clone(), ProducerOptions::default());
    let run = MessageId::new().to_string();
    let started = Instant::now();
    let t = move || started.elapsed().as_secs_f64();

    // Send: interleaved across orders, in order within each order.
    let orders: Vec<String> = (1..=ORDERS).map(|i| format!("order-{i:02}")).collect();
    for step in STEPS {
        for order in &orders {
            let r = producer
                .send(
                    Message::new(TOPIC, step)
                        .with_tag(step)
                        .with_key(order.as_str())
                        .with_property("order", order.as_str())
                        .with_property("run", run.as_str())
                        .with_sharding_key(order.as_str()),
                )
                .await?;
            println!(
                "[{:5.2}s] sent     {order} {step:<8} -> queue {} offset {}",
                t(),
                r.queue_id,
                r.queue_offset
            );
        }
    }

    // Consume orderly and check every order's sequence.
    let progress: Arc<Mutex<BTreeMap<String, Progress>>> = Arc::default();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let consumer = {
        let (progress, run) = (progress.clone(), run.clone());
        PushConsumer::start_single(
            client.clone(),
            vec![Subscription::new(TOPIC, FilterSpec::All)],
            PushConsumerOptions {
                orderly: true,
                consume_from: ConsumeFrom::First,
                ..PushConsumerOptions::new(GROUP)
            },
            move |m: ReceivedMessage| {
                let (progress, run, done_tx) = (progress.clone(), run.clone(), done_tx.clone());
                async move {
                    if m.property("run") != Some(run.as_str()) {
                        return ConsumeResult::Success; // left over from an earlier run
                    }
                    // Some work, of varying length: 5 to 35 ms.
                    tokio::time::sleep(Duration::from_millis(5 + m.msg_id.0 as u64 % 31)).await;
                    let order = m.property("order").unwrap_or("?").to_string();
                    let body = String::from_utf8_lossy(&m.body);
                    let Some(step) = STEPS.iter().copied().find(|s| *s == body) else {
                        println!("unknown step {body:?}");
                        return ConsumeResult::Success;
                    };
                    let mut all = progress.lock().unwrap();
                    let p = all.entry(order.clone()).or_default();
                    let expected = STEPS.get(p.seen.len()).copied();
                    let verdict = if expected == Some(step) {
                        "in order".to_string()
                    } else {
                        p.errors += 1;
                        format!("OUT OF ORDER (expected {})", expected.unwrap_or("nothing"))
                    };
                    p.seen.push(step);
                    p.queue = Some(m.queue_id);
                    println!(
                        "[{:5.2}s] consumed {order} {step:<8} <- queue {} offset {}: {verdict}",
                        t(),
                        m.queue_id,
                        m.queue_offset
                    );
                    drop(all);
                    let _ = done_tx.send(());
                    ConsumeResult::Success
                }
            },
        )
        .await?
    };

    let total = ORDERS * STEPS.len();
    let mut consumed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while consumed < total {
        tokio::select! {
            Some(()) = done_rx.recv() => consumed += 1,
            _ = tokio::time::sleep_until(deadline) => {
                println!("gave up waiting: {consumed} of {total} steps consumed");
                break;
            }
        }
    }

    println!("per order:");
    let mut errors = 0;
    for (order, p) in progress.lock().unwrap().iter() {
        errors += p.errors;
        println!(
            "  {order} (queue {}): {}{}",
            p.queue.map_or("?".to_string(), |q| q.to_string()),
            p.seen.join(" -> "),
            if p.errors == 0 {
                ""
            } else {
                "  <- out of order"
            }
        );
    }
    if errors == 0 && consumed == total {
        println!("all {ORDERS} orders were processed step by step in order ({total} messages)");
    } else {
        println!("{errors} step(s) out of order, {consumed} of {total} consumed");
    }

    consumer.shutdown().await?;
    client.close().await;
    Ok(())
}
