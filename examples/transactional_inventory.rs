//! Transactional messages: an "order paid" event is published if and only if the local
//! database transaction that deducts the stock commits.
//!
//! The local database is SQLite (rusqlite, in memory) with two tables:
//! `inventory(sku, qty)` and the transaction flow table `tx_flow(msg_id PRIMARY KEY,
//! order_id, state)`. For each order, `Producer::send_in_transaction` stores a half message
//! (invisible to consumers) on the topic `order-paid`, then runs the local transaction: one
//! SQLite transaction that deducts the stock and inserts a `tx_flow` row keyed by the message
//! id. It answers `Commit` (the broker makes the message visible) or, when the stock is short,
//! `Rollback` (the broker discards it).
//!
//! Two orders simulate a producer that dies before its decision reaches the broker: the local
//! transaction answers `Unknown`, once after its SQLite commit (`order-4`) and once before it
//! (`order-5`, whose SQLite transaction is rolled back). About 6 s later (the broker's
//! `messaging.tx_check_timeout_ms`) the broker asks the producer group's checker,
//! started with `Producer::start_transaction_checker`, which looks the message id up in
//! `tx_flow`: a row means the local transaction committed (`Commit`), no row means it did not
//! (`Rollback`). A push consumer of the group `order-paid-shipping` prints every `order-paid`
//! message it gets: the committed orders (`order-1`, `order-2`, `order-4`, `order-6`) and never
//! the rolled-back ones (`order-3`, `order-5`). The run takes about 10 s.
//!
//! ```text
//! cargo run --release -- serve                           # a broker, in another shell
//! cargo run --example transactional_inventory            # or: ... -- 127.0.0.1:10911
//! ```
//!
//! Arguments and environment:
//! * first argument, else `QUIVER_BROKER`: broker address, `HOST:PORT` (default
//!   `127.0.0.1:10911`; `localhost:10911` works too).
//! * `QUIVER_FINGERPRINT`: SHA-256 of the broker certificate (64 hex digits, `:` allowed) to
//!   pin; without it, `quiver-data/tls/cert.pem` (the broker's self-signed certificate) is
//!   trusted as the CA.
//!
//! A real service keeps `tx_flow` in its durable database, so that a restarted producer of
//! the same group can answer check-backs for its predecessor. Here the database lives only as
//! long as the process: a half message left by an interrupted earlier run is found in no
//! flow table and rolled back.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_client::{
    Client, ClientConfig, ConsumeFrom, ConsumeResult, FilterSpec, Message, MessageId, Producer,
    ProducerOptions, PushConsumer, PushConsumerOptions, ReceivedMessage, Subscription,
    TransactionState,
};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::mpsc;

const TOPIC: &str = "order-paid";
const PRODUCER_GROUP: &str = "inventory-tx";
const CONSUMER_GROUP: &str = "order-paid-shipping";

/// How the producer behaves around its local transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Runs the local transaction and reports its outcome.
    Normal,
    /// Commits the local transaction, then "dies" before reporting: `Unknown`.
    DiesAfterCommit,
    /// "Dies" in the middle of the local transaction (nothing committed): `Unknown`.
    DiesBeforeCommit,
}

struct Order {
    id: &'static str,
    sku: &'static str,
    qty: i64,
    mode: Mode,
}

const fn order(id: &'static str, sku: &'static str, qty: i64, mode: Mode) -> Order {
    Order { id, sku, qty, mode }
}

/// The stock starts at 5 apples and 3 pears.
const ORDERS: &[Order] = &[
    order("order-1", "apple", 2, Mode::Normal),
    order("order-2", "apple", 2, Mode::Normal),
    order("order-3", "apple", 3, Mode::Normal), // only 1 apple left: rolled back
    order("order-4", "pear", 1, Mode::DiesAfterCommit),
    order("order-5", "pear", 1, Mode::DiesBeforeCommit),
    order("order-6", "apple", 1, Mode::Normal),
];

type Db = Arc<Mutex<Connection>>;

fn open_db() -> rusqlite::Result<Connection> {
    let conn = Connection::open_in_memory()?;
    conn.execute_batch(
        "CREATE TABLE inventory (sku TEXT PRIMARY KEY, qty INTEGER NOT NULL CHECK (qty >= 0));
         CREATE TABLE tx_flow (msg_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, state TEXT NOT NULL);
         INSERT INTO inventory (sku, qty) VALUES ('apple', 5), ('pear', 3);",
    )?;
    Ok(conn)
}

/// The local transaction: deduct the stock and record the message id, atomically.
fn deduct_stock(
    conn: &mut Connection,
    msg_id: MessageId,
    order: &Order,
) -> rusqlite::Result<TransactionState> {
    let tx = conn.transaction()?;
    let updated = tx.execute(
        "UPDATE inventory SET qty = qty - ?1 WHERE sku = ?2 AND qty >= ?1",
        params![order.qty, order.sku],
    )?;
    if updated == 0 {
        // Out of stock: dropping `tx` rolls the SQLite transaction back.
        return Ok(TransactionState::Rollback);
    }
    tx.execute(
        "INSERT INTO tx_flow (msg_id, order_id, state) VALUES (?1, ?2, 'deducted')",
        params![msg_id.to_string(), order.id],
    )?;
    match order.mode {
        Mode::Normal => {
            tx.commit()?;
            Ok(TransactionState::Commit)
        }
        Mode::DiesAfterCommit => {
            tx.commit()?;
            Ok(TransactionState::Unknown)
        }
        Mode::DiesBeforeCommit => {
            drop(tx); // never committed
            Ok(TransactionState::Unknown)
        }
    }
}

/// What the checker answers: committed locally if and only if the flow row exists.
fn check_flow(db: &Db, msg_id: MessageId) -> TransactionState {
    let row: rusqlite::Result<Option<String>> = db
        .lock()
        .unwrap()
        .query_row(
            "SELECT order_id FROM tx_flow WHERE msg_id = ?1",
            [msg_id.to_string()],
            |r| r.get(0),
        )
        .optional();
    match row {
        Ok(Some(_)) => TransactionState::Commit,
        Ok(None) => TransactionState::Rollback,
        Err(e) => {
            println!("  checker: database error {e}; asking to be checked again later");
            TransactionState::Unknown
        }
    }
}

fn print_tables(db: &Db) -> rusqlite::Result<()> {
    let conn = db.lock().unwrap();
    println!("inventory:");
    let mut st = conn.prepare("SELECT sku, qty FROM inventory ORDER BY sku")?;
    for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (sku, qty) = row?;
        println!("  {sku:<6} {qty}");
    }
    println!("tx_flow:");
    let mut st = conn.prepare("SELECT msg_id, order_id, state FROM tx_flow ORDER BY order_id")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    for row in rows {
        let (id, order, state) = row?;
        println!("  {id} {order} {state}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client =
        Client::connect(ClientConfig::from_env(std::env::args().nth(1).as_deref())?).await?;
    let db: Db = Arc::new(Mutex::new(open_db()?));
    let run = MessageId::new().to_string();
    let started = Instant::now();
    let t = move || started.elapsed().as_secs_f64();

    let producer = Producer::new(
        client.clone(),
        ProducerOptions {
            group: PRODUCER_GROUP.into(),
            ..Default::default()
        },
    );

    // The check-back answerer of the producer group; it runs while `checker` is alive.
    let (checked_tx, mut checked_rx) = mpsc::unbounded_channel::<MessageId>();
    let checker = {
        let db = db.clone();
        producer.start_transaction_checker(move |msg: ReceivedMessage| {
            let (db, checked_tx) = (db.clone(), checked_tx.clone());
            async move {
                let state = check_flow(&db, msg.msg_id);
                println!(
                    "[{:5.2}s] check-back for {} ({}): {}",
                    t(),
                    msg.msg_id,
                    msg.keys.first().map_or("?", String::as_str),
                    match state {
                        TransactionState::Commit => "flow row found -> Commit",
                        TransactionState::Rollback => "no flow row -> Rollback",
                        TransactionState::Unknown => "not sure -> Unknown",
                    }
                );
                let _ = checked_tx.send(msg.msg_id);
                state
            }
        })
    };

    // Downstream: whoever ships paid orders. Sees only committed messages.
    let (paid_tx, mut paid_rx) = mpsc::unbounded_channel::<String>();
    let consumer = {
        let run = run.clone();
        PushConsumer::start_single(
            client.clone(),
            vec![Subscription::new(TOPIC, FilterSpec::All)],
            PushConsumerOptions {
                consume_from: ConsumeFrom::First,
                ..PushConsumerOptions::new(CONSUMER_GROUP)
            },
            move |m: ReceivedMessage| {
                let (run, paid_tx) = (run.clone(), paid_tx.clone());
                async move {
                    if m.property("run") == Some(run.as_str()) {
                        let order = m.keys.first().cloned().unwrap_or_default();
                        println!(
                            "[{:5.2}s] consumer got order-paid {}: {}",
                            t(),
                            m.msg_id,
                            String::from_utf8_lossy(&m.body)
                        );
                        let _ = paid_tx.send(order);
                    }
                    ConsumeResult::Success
                }
            },
        )
        .await?
    };

    // Send every order in a transaction.
    let mut expected: BTreeSet<&str> = BTreeSet::new();
    let mut rolled_back: BTreeSet<&str> = BTreeSet::new();
    let mut awaiting_check: HashSet<MessageId> = HashSet::new();
    for order in ORDERS {
        let message = Message::new(
            TOPIC,
            format!(
                r#"{{"order":"{}","sku":"{}","qty":{}}}"#,
                order.id, order.sku, order.qty
            ),
        )
        .with_tag("paid")
        .with_key(order.id)
        .with_property("run", run.as_str());
        let db = db.clone();
        let r = producer
            .send_in_transaction(message, |_msg: &Message, id: MessageId| {
                let mut conn = db.lock().unwrap();
                deduct_stock(&mut conn, id, order).unwrap_or_else(|e| {
                    println!("  local transaction failed: {e}");
                    TransactionState::Rollback
                })
            })
            .await?;
        println!(
            "[{:5.2}s] {} {} x{}: half message {}, local transaction -> {:?}{}",
            t(),
            order.id,
            order.sku,
            order.qty,
            r.send.msg_id,
            r.state,
            match order.mode {
                Mode::Normal => "",
                Mode::DiesAfterCommit => " (committed in SQLite, then 'died')",
                Mode::DiesBeforeCommit => " ('died' before the SQLite commit)",
            }
        );
        match r.state {
            TransactionState::Commit => {
                expected.insert(order.id);
            }
            TransactionState::Rollback => {
                rolled_back.insert(order.id);
            }
            TransactionState::Unknown => {
                awaiting_check.insert(r.send.msg_id);
                if order.mode == Mode::DiesAfterCommit {
                    expected.insert(order.id);
                } else {
                    rolled_back.insert(order.id);
                }
            }
        }
    }
    println!(
        "[{:5.2}s] waiting for the broker to check back {} unknown transaction(s)...",
        t(),
        awaiting_check.len()
    );

    // Wait for the committed messages and the check-backs.
    let mut delivered: BTreeSet<String> = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !awaiting_check.is_empty() || expected.iter().any(|o| !delivered.contains(*o)) {
        tokio::select! {
            Some(order) = paid_rx.recv() => { delivered.insert(order); }
            Some(id) = checked_rx.recv() => { awaiting_check.remove(&id); }
            _ = tokio::time::sleep_until(deadline) => {
                println!("gave up waiting after 60 s");
                break;
            }
        }
    }
    // A rolled-back message would show up right after the decision: give it a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while let Ok(order) = paid_rx.try_recv() {
        delivered.insert(order);
    }

    println!("delivered:   {delivered:?}");
    println!("rolled back: {rolled_back:?}");
    let leaked: Vec<_> = rolled_back
        .iter()
        .filter(|o| delivered.contains(**o))
        .collect();
    let missing: Vec<_> = expected
        .iter()
        .filter(|o| !delivered.contains(**o))
        .collect();
    if leaked.is_empty() && missing.is_empty() {
        println!("every committed order was delivered; no rolled-back order was");
    } else {
        println!(
            "UNEXPECTED: rolled back but delivered {leaked:?}, committed but missing {missing:?}"
        );
    }
    print_tables(&db)?;

    checker.stop();
    consumer.shutdown().await?;
    client.close().await;
    Ok(())
}
