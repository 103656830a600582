//! Retries and the dead-letter queue: a message that keeps failing is retried with back-off,
//! then parked in the group's dead-letter topic.
//!
//! Three messages go to the topic `notifications`; the one with the key `poison` can never be
//! processed. A push consumer of the group `notify-retry-demo`, with
//! `max_reconsume_times: 2`, succeeds for the others and returns
//! `ConsumeResult::ReconsumeLater` for it. Each failure hands the message back to the broker,
//! which delivers it again through the group's retry topic `%RETRY%notify-retry-demo` after a
//! back-off, with `reconsume_times` one higher (the example prints every attempt and the time
//! since the first one). After the third attempt (`reconsume_times` 0, 1, 2) fails, the message
//! goes to the dead-letter topic `%DLQ%notify-retry-demo`, which the example then reads with a
//! `PullConsumer` and prints.
//!
//! The broker's default back-off is 10 s, 30 s, 1 m, ... (`[messaging] retry_delays`), so the
//! run takes about 45 s. Start the broker with a shorter schedule to see it in 5 s:
//!
//! ```text
//! QUIVER_MESSAGING__RETRY_DELAYS='["1s","2s"]' cargo run --release -- serve   # another shell
//! cargo run --example retry_dlq                  # or: ... -- 127.0.0.1:10911
//! ```
//!
//! (or `retry_delays = ["1s", "2s"]` under `[messaging]` in the broker's TOML file; the last
//! delay repeats for later retries).
//!
//! Arguments and environment:
//! * first argument, else `QUIVER_BROKER`: broker address, `HOST:PORT` (default
//!   `127.0.0.1:10911`; `localhost:10911` works too).
//! * `QUIVER_FINGERPRINT`: SHA-256 of the broker certificate (64 hex digits, `:` allowed) to
//!   pin; without it, `quiver-data/tls/cert.pem` (the broker's self-signed certificate) is
//!   trusted as the CA.
//!
//! The dead-letter queue can also be listed, and its messages resent to the group (with a fresh
//! reconsume count), from the command line:
//!
//! ```text
//! quiver admin dlq list notify-retry-demo
//! quiver admin dlq resend notify-retry-demo --id <message id>
//! ```
//!
//! Every message carries a `run` property: messages of earlier runs (in the topic or in the
//! dead-letter queue) are ignored.

use std::time::{Duration, Instant};

use quiver_client::quiver_protocol::names;
use quiver_client::{
    Client, ClientConfig, ClientError, ConsumeFrom, ConsumeResult, FilterSpec, Message, MessageId,
    Producer, ProducerOptions, PullConsumer, PullOptions, PullStatus, PushConsumer,
    PushConsumerOptions, ReceivedMessage, Status, Subscription,
};
use tokio::sync::mpsc;

const TOPIC: &str = "notifications";
const GROUP: &str = "notify-retry-demo";
const POISON_KEY: &str = "poison";
const MAX_RECONSUME_TIMES: u32 = 2;

/// Looks for the message `id` in every queue of the dead-letter topic.
async fn find_in_dlq(
    consumer: &PullConsumer,
    dlq: &str,
    id: MessageId,
) -> Result<Option<ReceivedMessage>, ClientError> {
    let queues = match consumer.queues(dlq).await {
        Ok(q) => q,
        Err(e) if e.status() == Some(Status::TopicNotFound) => return Ok(None),
        Err(e) => return Err(e),
    };
    for q in queues {
        let mut offset = q.min_offset;
        loop {
            let r = consumer
                .pull(dlq, q.queue_id, offset, PullOptions::default())
                .await?;
            if r.status == PullStatus::Found {
                if let Some(m) = r.messages.into_iter().find(|m| m.msg_id == id) {
                    return Ok(Some(m));
                }
            }
            if r.status == PullStatus::NoNewMessages || r.next_offset == offset {
                break;
            }
            offset = r.next_offset;
        }
    }
    Ok(None)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client =
        Client::connect(ClientConfig::from_env(std::env::args().nth(1).as_deref())?).await?;
    let producer = Producer::new(client.clone(), ProducerOptions::default());
    let run = MessageId::new().to_string();
    let started = Instant::now();
    let t = move || started.elapsed().as_secs_f64();

    let mut poison = None;
    for key in ["welcome-1", POISON_KEY, "welcome-2"] {
        let r = producer
            .send(
                Message::new(TOPIC, format!("notification {key}"))
                    .with_key(key)
                    .with_property("run", run.as_str()),
            )
            .await?;
        println!("[{:6.2}s] sent {key:<9} {}", t(), r.msg_id);
        if key == POISON_KEY {
            poison = Some(r.msg_id);
        }
    }
    let poison = poison.expect("the poison message was sent");

    // The consumer: fails every attempt at the poison message.
    let (attempt_tx, mut attempt_rx) = mpsc::unbounded_channel::<u32>();
    let consumer = {
        let run = run.clone();
        PushConsumer::start_single(
            client.clone(),
            vec![Subscription::new(TOPIC, FilterSpec::All)],
            PushConsumerOptions {
                max_reconsume_times: MAX_RECONSUME_TIMES,
                consume_from: ConsumeFrom::First,
                ..PushConsumerOptions::new(GROUP)
            },
            move |m: ReceivedMessage| {
                let (run, attempt_tx) = (run.clone(), attempt_tx.clone());
                async move {
                    if m.property("run") != Some(run.as_str()) {
                        return ConsumeResult::Success; // left over from an earlier run
                    }
                    let key = m.keys.first().map_or("-", String::as_str);
                    if key != POISON_KEY {
                        println!(
                            "[{:6.2}s] {key:<9} reconsume_times={} -> processed",
                            t(),
                            m.reconsume_times
                        );
                        return ConsumeResult::Success;
                    }
                    let via = if m.reconsume_times == 0 {
                        m.topic.clone()
                    } else {
                        names::retry_topic(GROUP)
                    };
                    println!(
                        "[{:6.2}s] {key:<9} reconsume_times={} (attempt {} of {}, via {via}) -> fails, ReconsumeLater",
                        t(),
                        m.reconsume_times,
                        m.reconsume_times + 1,
                        MAX_RECONSUME_TIMES + 1,
                    );
                    let _ = attempt_tx.send(m.reconsume_times);
                    ConsumeResult::ReconsumeLater
                }
            },
        )
        .await?
    };

    // Wait for the last attempt: default back-off 10 s + 30 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(100);
    loop {
        tokio::select! {
            Some(n) = attempt_rx.recv() => if n >= MAX_RECONSUME_TIMES { break },
            _ = tokio::time::sleep_until(deadline) => {
                println!("gave up waiting for the retries (is the broker's back-off longer than the default?)");
                break;
            }
        }
    }

    // The last failure sends it to the dead-letter topic.
    let dlq = names::dlq_topic(GROUP);
    let reader = PullConsumer::new(client.clone());
    let deadline = Instant::now() + Duration::from_secs(15);
    let found = loop {
        if let Some(m) = find_in_dlq(&reader, &dlq, poison).await? {
            break Some(m);
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    match found {
        Some(m) => {
            println!("[{:6.2}s] found in {dlq}:", t());
            println!("  id              {}", m.msg_id);
            println!("  queue/offset    {}/{}", m.queue_id, m.queue_offset);
            println!("  keys            {:?}", m.keys);
            println!("  reconsume_times {}", m.reconsume_times);
            println!(
                "  first sent to   {}",
                m.property("RETRY_TOPIC").unwrap_or("?")
            );
            println!("  body            {:?}", String::from_utf8_lossy(&m.body));
            println!("list it with `quiver admin dlq list {GROUP}`, send it back with `quiver admin dlq resend {GROUP} --id {}`", m.msg_id);
        }
        None => println!("the poison message did not reach {dlq}"),
    }

    // No further attempts: the message stays parked until someone resends it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let Ok(n) = attempt_rx.try_recv() {
        println!("unexpected: another attempt (reconsume_times={n}) after the dead-letter move");
    }

    consumer.shutdown().await?;
    client.close().await;
    Ok(())
}
