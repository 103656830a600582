//! Closing unpaid orders after a timeout with scheduled (delayed) messages.
//!
//! Six orders are created; for each one a `check-payment` message is sent to the topic
//! `order-timeout` with `Message::with_delay(5 s)`: the broker keeps it out of sight until it
//! is due. Meanwhile some orders get paid (an in-memory map stands for the order database):
//!
//! * `order-2` is paid after 1 s and its check is cancelled with `Producer::cancel_scheduled`,
//!   so that check is never delivered;
//! * `order-4` is paid after 3 s without cancelling: its check arrives and finds it paid;
//! * `order-6` tries to pay after 7 s, when its order has already been closed, and is refused.
//!
//! A push consumer of the group `order-timeout-checker` gets each check when it is due, closes
//! the order if it is still unpaid, and prints how late the check arrived (now minus the
//! `DELIVER_AT` property, the due time the broker sets on scheduled messages, in ms since the
//! Unix epoch). Finally it shows that cancelling a check that was already delivered fails.
//! The whole run takes about 10 s.
//!
//! ```text
//! cargo run --release -- serve                         # a broker, in another shell
//! cargo run --example delayed_order_timeout            # or: ... -- 127.0.0.1:10911
//! ```
//!
//! Arguments and environment:
//! * first argument, else `QUIVER_BROKER`: broker address, `HOST:PORT` (default
//!   `127.0.0.1:10911`; `localhost:10911` works too).
//! * `QUIVER_FINGERPRINT`: SHA-256 of the broker certificate (64 hex digits, `:` allowed) to
//!   pin; without it, `quiver-data/tls/cert.pem` (the broker's self-signed certificate) is
//!   trusted as the CA.
//!
//! Every message carries a `run` property, so checks left over from an earlier interrupted
//! run are acknowledged and ignored.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quiver_client::{
    Client, ClientConfig, ConsumeFrom, ConsumeResult, FilterSpec, Message, MessageId, Producer,
    ProducerOptions, PushConsumer, PushConsumerOptions, ReceivedMessage, Subscription,
};
use tokio::sync::mpsc;

const TOPIC: &str = "order-timeout";
const GROUP: &str = "order-timeout-checker";
/// How long an order may stay unpaid.
const PAYMENT_TIMEOUT: Duration = Duration::from_secs(5);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OrderState {
    Unpaid,
    Paid,
    Closed,
}

/// The "order database": order id to state.
type Orders = Arc<Mutex<BTreeMap<String, OrderState>>>;

/// Marks an order paid, unless the timeout already closed it.
fn pay(orders: &Orders, order: &str, started: Instant) -> bool {
    let mut orders = orders.lock().unwrap();
    let state = orders.get_mut(order).expect("known order");
    let t = started.elapsed().as_secs_f64();
    match *state {
        OrderState::Unpaid => {
            *state = OrderState::Paid;
            println!("[{t:5.2}s] {order}: paid");
            true
        }
        other => {
            println!("[{t:5.2}s] {order}: payment refused, the order is {other:?}");
            false
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client =
        Client::connect(ClientConfig::from_env(std::env::args().nth(1).as_deref())?).await?;
    let producer = Producer::new(client.clone(), ProducerOptions::default());
    let run = MessageId::new().to_string();
    let started = Instant::now();

    // 1. Create the orders and schedule one payment check per order.
    let orders: Orders = Arc::default();
    let mut checks: HashMap<String, MessageId> = HashMap::new();
    for i in 1..=6 {
        let order = format!("order-{i}");
        orders
            .lock()
            .unwrap()
            .insert(order.clone(), OrderState::Unpaid);
        let sent = producer
            .send(
                Message::new(TOPIC, order.clone())
                    .with_tag("check-payment")
                    .with_key(order.as_str())
                    .with_property("run", run.as_str())
                    .with_delay(PAYMENT_TIMEOUT),
            )
            .await?;
        println!(
            "[{:5.2}s] {order}: created; payment check {} due in {PAYMENT_TIMEOUT:?}",
            started.elapsed().as_secs_f64(),
            sent.msg_id
        );
        checks.insert(order, sent.msg_id);
    }

    // 2. The timeout checker: closes orders still unpaid when their check comes due.
    let (delivered_tx, mut delivered_rx) = mpsc::unbounded_channel::<String>();
    let consumer = {
        let orders = orders.clone();
        let run = run.clone();
        let options = PushConsumerOptions {
            consume_from: ConsumeFrom::First,
            ..PushConsumerOptions::new(GROUP)
        };
        PushConsumer::start_single(
            client.clone(),
            vec![Subscription::new(TOPIC, FilterSpec::All)],
            options,
            move |m: ReceivedMessage| {
                let (orders, run, delivered_tx) = (orders.clone(), run.clone(), delivered_tx.clone());
                async move {
                    if m.property("run") != Some(run.as_str()) {
                        return ConsumeResult::Success; // left over from an earlier run
                    }
                    let order = String::from_utf8_lossy(&m.body).into_owned();
                    let due: i64 = m
                        .property("DELIVER_AT")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(m.store_timestamp);
                    let late = now_ms() - due;
                    let t = started.elapsed().as_secs_f64();
                    let mut orders = orders.lock().unwrap();
                    match orders.get_mut(&order) {
                        Some(state @ OrderState::Unpaid) => {
                            *state = OrderState::Closed;
                            println!("[{t:5.2}s] {order}: check arrived {late} ms after its due time; still unpaid -> closed");
                        }
                        Some(state) => println!(
                            "[{t:5.2}s] {order}: check arrived {late} ms after its due time; {state:?}, nothing to do"
                        ),
                        None => println!("[{t:5.2}s] {order}: unknown order"),
                    }
                    drop(orders);
                    let _ = delivered_tx.send(order);
                    ConsumeResult::Success
                }
            },
        )
        .await?
    };
    println!(
        "[{:5.2}s] checker {} joined group {GROUP}",
        started.elapsed().as_secs_f64(),
        consumer.member_id()
    );

    // 3. Payments while the checks are pending.
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(started.elapsed())).await;
    if pay(&orders, "order-2", started) {
        // Paid early: the check is useless, take it back.
        producer.cancel_scheduled(checks["order-2"]).await?;
        println!(
            "[{:5.2}s] order-2: payment check {} cancelled",
            started.elapsed().as_secs_f64(),
            checks["order-2"]
        );
    }
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    pay(&orders, "order-4", started); // the check is left to find it paid

    // 4. Wait for the five checks that were not cancelled.
    let mut arrived: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + PAYMENT_TIMEOUT + Duration::from_secs(30);
    let late_payment_at = tokio::time::Instant::from_std(started) + Duration::from_secs(7);
    let mut late_payment_done = false;
    while arrived.len() < 5 || !late_payment_done {
        tokio::select! {
            order = delivered_rx.recv() => match order {
                Some(o) => arrived.push(o),
                None => break,
            },
            _ = tokio::time::sleep_until(late_payment_at), if !late_payment_done => {
                pay(&orders, "order-6", started); // too late: closed by its check
                late_payment_done = true;
            }
            _ = tokio::time::sleep_until(deadline) => {
                println!("gave up waiting: {} of 5 checks arrived", arrived.len());
                break;
            }
        }
    }
    // The cancelled check was due with the others: give it a moment to (not) show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while let Ok(o) = delivered_rx.try_recv() {
        arrived.push(o);
    }
    let cancelled_arrived = arrived.iter().any(|o| o == "order-2");
    println!(
        "[{:5.2}s] {} checks delivered; the cancelled check of order-2 was {}",
        started.elapsed().as_secs_f64(),
        arrived.len(),
        if cancelled_arrived {
            "DELIVERED (unexpected)"
        } else {
            "never delivered"
        }
    );

    // 5. A check that was already delivered can no longer be cancelled.
    match producer.cancel_scheduled(checks["order-1"]).await {
        Ok(()) => println!("cancelling order-1's delivered check succeeded (unexpected)"),
        Err(e) => println!("cancelling order-1's delivered check fails as it should: {e}"),
    }

    println!("final order states:");
    for (order, state) in orders.lock().unwrap().iter() {
        println!("  {order}: {state:?}");
    }

    consumer.shutdown().await?;
    client.close().await;
    Ok(())
}
