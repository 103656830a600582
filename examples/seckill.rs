//! Peak shaving for a seckill (flash sale): a burst of buyers' orders lands in a topic at
//! once, and the order service works through them at its own fixed pace.
//!
//! - **The burst**: `SECKILL_BUYERS` buyers (default 2000) each send one order at the same
//!   moment, over `SECKILL_CONNECTIONS` client connections (default 100, as if from that
//!   many web servers), to the topic `seckill-orders` (8 queues). Each order is keyed by its
//!   order id and carries the buyer and the run id as properties.
//! - **The order service**: one consumer group, `seckill-order-service`, that handles at most
//!   `SECKILL_CAPACITY` orders per second (default 500), whatever arrives, against a SQLite
//!   database (rusqlite, in memory): `stock(sku, qty)` starts at `SECKILL_STOCK` (default 200)
//!   and `orders(order_id PRIMARY KEY, buyer, result)`. Each order is one SQLite transaction:
//!   an order id already in `orders` is a redelivery and changes nothing; otherwise the stock
//!   is decremented only while it is above zero (`accepted`), else the order is `sold-out`.
//! - **The backlog**: while the service drains, the example prints the group's lag (the
//!   broker's `GroupDescribe`), which rises during the burst and falls at the service's pace.
//!
//! At the end it checks, and fails (exit 1) otherwise, that every order the broker
//! acknowledged was processed exactly once (one `orders` row per acknowledged order, none
//! missing), that the stock never went below zero, and that exactly `min(stock, orders)`
//! orders were accepted. Messages of earlier runs are skipped on the broker by a SQL filter
//! on the run id. About 5 s with the defaults.
//!
//! ```text
//! cargo run --release -- serve                       # a broker, in another shell
//! cargo run --example seckill                        # or: ... -- 127.0.0.1:10911
//! SECKILL_BUYERS=5000 SECKILL_CAPACITY=1000 cargo run --example seckill
//! ```
//!
//! The broker address and certificate are found as in the other examples: the first
//! argument, else `QUIVER_BROKER`, else `127.0.0.1:10911`; `QUIVER_FINGERPRINT`, else
//! `QUIVER_CA`, else `quiver-data/tls/cert.pem`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_client::{
    Admin, Client, ClientConfig, ConsumeFrom, ConsumeResult, FilterSpec, Message, MessageId,
    Producer, ProducerOptions, PushConsumer, PushConsumerOptions, ReceivedMessage, Subscription,
};
use rusqlite::{params, Connection};

const TOPIC: &str = "seckill-orders";
const GROUP: &str = "seckill-order-service";
const SKU: &str = "phone-x";

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The run's sizes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Buyers, one order each, all at once.
    pub buyers: usize,
    /// Client connections the buyers share.
    pub connections: usize,
    /// Items in stock.
    pub stock: i64,
    /// Orders the service handles per second.
    pub capacity: u32,
}

impl Settings {
    /// From `SECKILL_BUYERS`, `SECKILL_CONNECTIONS`, `SECKILL_STOCK` and `SECKILL_CAPACITY`.
    pub fn from_env() -> Result<Settings, Error> {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> Result<T, Error> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .map_err(|_| format!("{name}={v:?} is not a number").into()),
                Err(_) => Ok(default),
            }
        }
        let s = Settings {
            buyers: var("SECKILL_BUYERS", 2000)?,
            connections: var("SECKILL_CONNECTIONS", 100)?,
            stock: var("SECKILL_STOCK", 200)?,
            capacity: var("SECKILL_CAPACITY", 500)?,
        };
        if s.buyers == 0 || s.connections == 0 || s.capacity == 0 || s.stock < 0 {
            return Err(
                "buyers, connections and capacity must be positive, stock not negative".into(),
            );
        }
        Ok(s)
    }
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Orders the broker acknowledged.
    pub acknowledged: u64,
    /// Sends that failed (the buyer would retry or see an error page).
    pub failed: u64,
    /// Orders processed (one `orders` row each).
    pub processed: u64,
    /// Orders that got an item.
    pub accepted: u64,
    /// Orders that came too late.
    pub sold_out: u64,
    /// Deliveries of an order already processed (ignored).
    pub redeliveries: u64,
    /// Stock left at the end.
    pub stock_left: i64,
    /// The largest backlog (group lag) seen.
    pub peak_backlog: u64,
}

fn open_db(stock: i64) -> rusqlite::Result<Connection> {
    let db = Connection::open_in_memory()?;
    db.execute_batch(
        "CREATE TABLE stock (sku TEXT PRIMARY KEY, qty INTEGER NOT NULL CHECK (qty >= 0));
         CREATE TABLE orders (order_id TEXT PRIMARY KEY, buyer TEXT NOT NULL, result TEXT NOT NULL);",
    )?;
    db.execute("INSERT INTO stock VALUES (?1, ?2)", params![SKU, stock])?;
    Ok(db)
}

/// What one order did.
enum Handled {
    Accepted,
    SoldOut,
    Redelivery,
}

/// One order, in one SQLite transaction: idempotent by order id.
fn handle_order(db: &Mutex<Connection>, order: &str, buyer: &str) -> rusqlite::Result<Handled> {
    let mut conn = db.lock().unwrap_or_else(|e| e.into_inner());
    let tx = conn.transaction()?;
    let seen: i64 = tx.query_row(
        "SELECT COUNT(*) FROM orders WHERE order_id = ?1",
        params![order],
        |r| r.get(0),
    )?;
    if seen > 0 {
        return Ok(Handled::Redelivery);
    }
    let took = tx.execute(
        "UPDATE stock SET qty = qty - 1 WHERE sku = ?1 AND qty > 0",
        params![SKU],
    )?;
    let result = if took == 1 { "accepted" } else { "sold-out" };
    tx.execute(
        "INSERT INTO orders (order_id, buyer, result) VALUES (?1, ?2, ?3)",
        params![order, buyer, result],
    )?;
    tx.commit()?;
    Ok(if took == 1 {
        Handled::Accepted
    } else {
        Handled::SoldOut
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs the sale against the broker `cfg` points at.
pub async fn run(cfg: ClientConfig, s: Settings) -> Result<Outcome, Error> {
    let started = Instant::now();
    let t = move || started.elapsed().as_secs_f64();
    let run = MessageId::new().to_string();
    let client = Client::connect(cfg.clone()).await?;
    let admin = Admin::new(client.clone());
    if let Err(e) = admin.create_topic(TOPIC, 8).await {
        if e.status() != Some(quiver_client::Status::TopicExists) {
            return Err(e.into());
        }
    }
    let db = Arc::new(Mutex::new(open_db(s.stock)?));
    let counts = Arc::new([
        AtomicU64::new(0), // accepted
        AtomicU64::new(0), // sold out
        AtomicU64::new(0), // redeliveries
    ]);

    // The order service: a fixed pace, whatever the burst.
    let pace = Duration::from_secs_f64(1.0 / f64::from(s.capacity));
    let next_slot = Arc::new(tokio::sync::Mutex::new(tokio::time::Instant::now()));
    let consumer = {
        let (db, counts, next_slot) = (db.clone(), counts.clone(), next_slot.clone());
        PushConsumer::start_single(
            client.clone(),
            vec![Subscription::new(
                TOPIC,
                FilterSpec::Sql(format!("run = '{run}'")),
            )],
            PushConsumerOptions {
                consume_from: ConsumeFrom::Timestamp(now_ms() - 1000),
                max_in_flight: 8,
                // Commit often, so the group's lag shows the backlog as it drains.
                commit_interval: Duration::from_millis(200),
                ..PushConsumerOptions::new(GROUP)
            },
            move |m: ReceivedMessage| {
                let (db, counts, next_slot) = (db.clone(), counts.clone(), next_slot.clone());
                async move {
                    // Wait for this order's slot: `capacity` orders per second at most.
                    let slot = {
                        let mut next = next_slot.lock().await;
                        let slot = (*next).max(tokio::time::Instant::now());
                        *next = slot + pace;
                        slot
                    };
                    tokio::time::sleep_until(slot).await;
                    let order = m.keys.first().cloned().unwrap_or_default();
                    let buyer = m.property("buyer").unwrap_or("?").to_string();
                    let done =
                        tokio::task::spawn_blocking(move || handle_order(&db, &order, &buyer))
                            .await;
                    match done {
                        Ok(Ok(h)) => {
                            let i = match h {
                                Handled::Accepted => 0,
                                Handled::SoldOut => 1,
                                Handled::Redelivery => 2,
                            };
                            counts[i].fetch_add(1, Ordering::Relaxed);
                            ConsumeResult::Success
                        }
                        // The database failed: the broker delivers it again later.
                        _ => ConsumeResult::ReconsumeLater,
                    }
                }
            },
        )
        .await?
    };

    // The burst: every buyer at once, over `connections` connections.
    println!(
        "[{:5.2}s] {} buyers rush for {} items over {} connections; the order service handles {} orders/s",
        t(),
        s.buyers,
        s.stock,
        s.connections,
        s.capacity
    );
    let mut producers = Vec::with_capacity(s.connections);
    for _ in 0..s.connections {
        let c = Client::connect(cfg.clone()).await?;
        producers.push((c.clone(), Producer::new(c, ProducerOptions::default())));
    }
    let gate = Arc::new(tokio::sync::Barrier::new(s.buyers + 1));
    let mut buyers = Vec::with_capacity(s.buyers);
    for b in 0..s.buyers {
        let producer = producers[b % producers.len()].1.clone();
        let (gate, run) = (gate.clone(), run.clone());
        buyers.push(tokio::spawn(async move {
            let order = format!("{run}-o{b}");
            let m = Message::new(
                TOPIC,
                format!(r#"{{"order":"{order}","buyer":"u{b}","sku":"{SKU}","qty":1}}"#),
            )
            .with_key(order)
            .with_property("buyer", format!("u{b}"))
            .with_property("run", run);
            gate.wait().await;
            let sent = Instant::now();
            let r = producer.send(m).await;
            (r.is_ok(), sent.elapsed())
        }));
    }
    gate.wait().await;
    let burst = Instant::now();
    let mut acknowledged = 0u64;
    let mut failed = 0u64;
    let mut latencies = Vec::with_capacity(s.buyers);
    for b in buyers {
        let (ok, took) = b.await?;
        latencies.push(took);
        if ok {
            acknowledged += 1;
        } else {
            failed += 1;
        }
    }
    let burst_took = burst.elapsed();
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    println!(
        "[{:5.2}s] burst done in {:.2}s: {acknowledged} orders acknowledged ({:.0}/s), {failed} failed, send p99 {:.1} ms",
        t(),
        burst_took.as_secs_f64(),
        acknowledged as f64 / burst_took.as_secs_f64().max(1e-3),
        p99.as_secs_f64() * 1000.0
    );

    // The service drains the backlog at its pace.
    let processed =
        |c: &[AtomicU64; 3]| c[0].load(Ordering::Relaxed) + c[1].load(Ordering::Relaxed);
    let deadline = Instant::now()
        + Duration::from_secs(30)
        + pace * u32::try_from(acknowledged).unwrap_or(u32::MAX);
    let mut peak_backlog = 0u64;
    loop {
        let backlog: u64 = admin
            .describe_group(GROUP)
            .await
            .map(|d| {
                d.queues
                    .iter()
                    .filter(|q| q.topic == TOPIC)
                    .map(|q| q.max_offset.saturating_sub(q.committed.unwrap_or(0)))
                    .sum()
            })
            .unwrap_or(0);
        peak_backlog = peak_backlog.max(backlog);
        let done = processed(&counts);
        let stock_left: i64 = db.lock().unwrap_or_else(|e| e.into_inner()).query_row(
            "SELECT qty FROM stock WHERE sku = ?1",
            params![SKU],
            |r| r.get(0),
        )?;
        println!(
            "[{:5.2}s] backlog {backlog:>6} orders | processed {done:>6} | stock left {stock_left}",
            t()
        );
        if (done >= acknowledged && backlog == 0) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    consumer.shutdown().await?;
    futures::future::join_all(producers.iter().map(|(c, _)| c.close())).await;

    let (rows, stock_left): (u64, i64) = {
        let conn = db.lock().unwrap_or_else(|e| e.into_inner());
        (
            conn.query_row("SELECT COUNT(*) FROM orders", [], |r| r.get(0))?,
            conn.query_row("SELECT qty FROM stock WHERE sku = ?1", params![SKU], |r| {
                r.get(0)
            })?,
        )
    };
    client.close().await;
    let out = Outcome {
        acknowledged,
        failed,
        processed: rows,
        accepted: counts[0].load(Ordering::Relaxed),
        sold_out: counts[1].load(Ordering::Relaxed),
        redeliveries: counts[2].load(Ordering::Relaxed),
        stock_left,
        peak_backlog,
    };
    println!(
        "[{:5.2}s] {} acknowledged, {} processed once each ({} accepted, {} sold out), {} redeliveries ignored, stock left {}, peak backlog {}",
        t(),
        out.acknowledged,
        out.processed,
        out.accepted,
        out.sold_out,
        out.redeliveries,
        out.stock_left,
        out.peak_backlog
    );
    let mut wrong = Vec::new();
    if out.processed != out.acknowledged {
        wrong.push(format!(
            "{} acknowledged orders but {} processed",
            out.acknowledged, out.processed
        ));
    }
    if out.stock_left < 0 {
        wrong.push(format!("stock below zero: {}", out.stock_left));
    }
    let expect_accepted = (s.stock as u64).min(out.acknowledged);
    if out.accepted != expect_accepted {
        wrong.push(format!(
            "{} orders accepted, expected {expect_accepted}",
            out.accepted
        ));
    }
    if out.accepted + out.sold_out != out.processed {
        wrong.push("accepted + sold out differs from processed".to_string());
    }
    if !wrong.is_empty() {
        return Err(format!("seckill went wrong: {}", wrong.join("; ")).into());
    }
    println!("every acknowledged order was processed exactly once; the stock never went below zero; nothing was lost");
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let cfg = ClientConfig::from_env(std::env::args().nth(1).as_deref())?;
    run(cfg, Settings::from_env()?).await?;
    Ok(())
}
