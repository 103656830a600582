//! WebAssembly plugins over QUIC: the example plugins (plugins/, built here with the guest SDK
//! for wasm32-unknown-unknown) attached to subscriptions and to topic ingress, misbehaving
//! fixtures (tests/fixtures/plugins) failing only their own subscription, reload under load,
//! and plugins surviving a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use quiver_client::{
    Admin, ConsumeFrom, ConsumeResult, FilterSpec, Message, PluginFailurePolicy, PluginRef,
    Producer, ProducerOptions, PullConsumer, PullOptions, PullStatus, PushConsumer,
    PushConsumerOptions, ReceivedMessage, Status, Subscription,
};

use crate::harness::TestBroker;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the example plugins once per test run (release, wasm32-unknown-unknown) and returns
/// the directory holding the .wasm files.
fn example_plugins() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            ensure_wasm_target()?;
            let target = repo().join("target").join("wasm-plugins");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let out = std::process::Command::new(cargo)
                .current_dir(repo().join("plugins"))
                .args([
                    "build",
                    "--release",
                    "--target",
                    "wasm32-unknown-unknown",
                    "--manifest-path",
                ])
                .arg(repo().join("plugins").join("Cargo.toml"))
                .env("CARGO_TARGET_DIR", &target)
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .output()
                .map_err(|e| format!("running cargo: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "building plugins failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(target.join("wasm32-unknown-unknown").join("release"))
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// rustup installs the targets of rust-toolchain.toml only with the toolchain itself: on a
/// machine where the pinned toolchain was already installed without them, add the one the
/// example plugins need (and say so), instead of failing with "can't find crate for std".
fn ensure_wasm_target() -> Result<(), String> {
    const TARGET: &str = "wasm32-unknown-unknown";
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = std::process::Command::new(&rustc)
        .current_dir(repo())
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("running {rustc} --print sysroot: {e}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib")
        .is_dir()
    {
        return Ok(());
    }
    eprintln!("the Rust target {TARGET} is missing: running `rustup target add {TARGET}`");
    let out = std::process::Command::new("rustup")
        .current_dir(repo())
        .args(["target", "add", TARGET])
        .output()
        .map_err(|e| {
            format!("the Rust target {TARGET} is missing and rustup cannot be run ({e}); install the target")
        })?;
    if !out.status.success() {
        return Err(format!(
            "`rustup target add {TARGET}` failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn plugin_wasm(name: &str) -> Vec<u8> {
    let path = example_plugins().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture(name: &str) -> Vec<u8> {
    let path = repo()
        .join("tests/fixtures/plugins")
        .join(format!("{name}.wat"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn cfg(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn pull_all(
    consumer: &PullConsumer,
    topic: &str,
    plugins: Vec<PluginRef>,
) -> Result<Vec<ReceivedMessage>, quiver_client::ClientError> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let r = consumer
            .pull(
                topic,
                0,
                offset,
                PullOptions {
                    max_messages: 64,
                    plugins: plugins.clone(),
                    ..PullOptions::default()
                },
            )
            .await?;
        out.extend(r.messages);
        if r.next_offset == offset || r.status == PullStatus::NoNewMessages {
            return Ok(out);
        }
        offset = r.next_offset;
    }
}

fn bodies(ms: &[ReceivedMessage]) -> Vec<String> {
    ms.iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_plugins_on_a_subscription() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let admin = Admin::new(client.clone());
    admin.create_topic("orders", 1).await.unwrap();
    let info = admin
        .load_plugin(
            "big-orders",
            plugin_wasm("json_filter"),
            cfg(&[("field", "order.amount"), ("op", "gt"), ("value", "100")]),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(info.kind, quiver_client::PluginKind::Filter);
    admin
        .load_plugin("redact", plugin_wasm("redact"), vec![], None, None)
        .await
        .unwrap();
    admin
        .load_plugin(
            "enrich",
            plugin_wasm("enrich"),
            cfg(&[("set.source", "quiver"), ("size_property", "size")]),
            None,
            None,
        )
        .await
        .unwrap();
    let producer = Producer::new(client.clone(), ProducerOptions::default());
    for i in 0..40u32 {
        let body = format!(
            r#"{{"order":{{"id":{i},"amount":{}}},"email":"user{i}@example.com","card":"4111 1111 1111 1111"}}"#,
            i * 10,
        );
        producer
            .send(Message::new("orders", body).with_tag(if i % 2 == 0 { "even" } else { "odd" }))
            .await
            .unwrap();
    }
    let consumer = PullConsumer::new(client.clone());
    // The JSON filter alone: amounts above 100 are i = 11..39.
    let got = pull_all(&consumer, "orders", vec![PluginRef::new("big-orders")])
        .await
        .unwrap();
    let ids: Vec<u64> = got.iter().map(|m| m.queue_offset).collect();
    assert_eq!(ids, (11..40).collect::<Vec<u64>>());
    // A chain after a tag filter: even tags, amount > 100, redacted, enriched.
    let mut offset = 0;
    let mut got = Vec::new();
    loop {
        let r = consumer
            .pull(
                "orders",
                0,
                offset,
                PullOptions {
                    filter: FilterSpec::Tag("even".into()),
                    plugins: vec![
                        PluginRef::new("big-orders"),
                        PluginRef::new("redact"),
                        PluginRef::new("enrich"),
                    ],
                    ..PullOptions::default()
                },
            )
            .await
            .unwrap();
        got.extend(r.messages);
        if r.next_offset >= r.max_offset {
            break;
        }
        offset = r.next_offset;
    }
    let offsets: Vec<u64> = got.iter().map(|m| m.queue_offset).collect();
    assert_eq!(offsets, (12..40).step_by(2).collect::<Vec<u64>>());
    for m in &got {
        let body = String::from_utf8_lossy(&m.body);
        assert!(
            body.contains(r#""email":"u***@example.com""#),
            "email not masked: {body}"
        );
        assert!(
            body.contains(r#""card":"**** **** **** 1111""#),
            "card not masked: {body}"
        );
        assert_eq!(m.property("redacted"), Some("true"));
        assert_eq!(m.property("source"), Some("quiver"));
        assert_eq!(
            m.property("size"),
            Some(m.body.len().to_string().as_str()),
            "size of the body as the plugin saw it (after redaction)"
        );
        assert_eq!(m.tag.as_deref(), Some("even"));
    }
    // The stored messages are untouched.
    let plain = pull_all(&consumer, "orders", vec![]).await.unwrap();
    assert_eq!(plain.len(), 40);
    assert!(bodies(&plain)[12].contains("user12@example.com"));
    let list = admin.list_plugins().await.unwrap();
    assert_eq!(list.len(), 3);
    assert!(list.iter().all(|p| p.healthy && p.batches > 0));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_chain_validates_enriches_and_redacts() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let admin = Admin::new(client.clone());
    admin.create_topic("payments", 1).await.unwrap();
    admin
        .load_plugin(
            "has-amount",
            plugin_wasm("json_filter"),
            cfg(&[("field", "amount"), ("op", "exists")]),
            None,
            None,
        )
        .await
        .unwrap();
    admin
        .load_plugin("redact", plugin_wasm("redact"), vec![], None, None)
        .await
        .unwrap();
    admin
        .load_plugin(
            "stamp",
            plugin_wasm("enrich"),
            cfg(&[("set.validated", "yes")]),
            None,
            None,
        )
        .await
        .unwrap();
    for p in ["has-amount", "redact", "stamp"] {
        admin.attach_plugin(p, "payments").await.unwrap();
    }
    let producer = Producer::new(client.clone(), ProducerOptions::default());
    let ok = producer
        .send(Message::new(
            "payments",
            r#"{"amount":5,"card":"5500-0000-0000-0004","note":"pay bob@example.org"}"#,
        ))
        .await
        .unwrap();
    // A batch with one invalid message is refused whole, naming the message.
    let batch = vec![
        Message::new("payments", r#"{"amount":1}"#),
        Message::new("payments", r#"{"no_amount":true}"#),
    ];
    let err = producer.send_batch(batch).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::PluginRejected), "{err}");
    assert!(err.to_string().contains("has-amount"), "{err}");
    assert!(err.to_string().contains("message 1"), "{err}");
    let err = producer
        .send(Message::new("payments", "not json"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::PluginRejected), "{err}");
    // Only the valid message was stored, redacted and stamped.
    let consumer = PullConsumer::new(client.clone());
    let stored = pull_all(&consumer, "payments", vec![]).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].msg_id, ok.msg_id);
    let body = String::from_utf8_lossy(&stored[0].body).into_owned();
    assert!(!body.contains("5500-0000-0000"), "{body}");
    assert!(body.contains("0004"), "{body}");
    assert!(!body.contains("bob@example.org"), "{body}");
    assert_eq!(stored[0].property("validated"), Some("yes"));
    // Detached: the topic accepts anything again.
    admin.detach_plugin("has-amount", "payments").await.unwrap();
    producer
        .send(Message::new("payments", "not json"))
        .await
        .unwrap();
    // Unloading an attached plugin needs force.
    let err = admin.unload_plugin("stamp", false).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::PluginInUse), "{err}");
    admin.unload_plugin("stamp", true).await.unwrap();
    assert_eq!(
        admin.describe_plugin("redact").await.unwrap().topics,
        vec!["payments".to_string()]
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_plugins_fail_only_their_own_subscription() {
    let broker = TestBroker::start_tuned(|c| c.plugins.max_consecutive_failures = 3).await;
    let client = broker.client().await;
    let admin = Admin::new(client.clone());
    admin.create_topic("events", 1).await.unwrap();
    // Refused at load time with a clear error.
    for (name, want) in [
        ("wrong_exports", "quiver_filter"),
        ("wasi_import", "wasi_snapshot_preview1"),
        ("init_refuses", "threshold"),
    ] {
        let err = admin
            .load_plugin(name, fixture(name), vec![], None, None)
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(Status::InvalidPlugin), "{name}: {err}");
        assert!(err.to_string().contains(want), "{name}: {err}");
    }
    let err = admin
        .load_plugin("garbage", b"\0asm garbage".to_vec(), vec![], None, None)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::InvalidPlugin), "{err}");
    admin
        .load_plugin("loop", fixture("infinite_loop"), vec![], None, Some(50))
        .await
        .unwrap();
    admin
        .load_plugin("bomb", fixture("memory_bomb"), vec![], Some(4 << 20), None)
        .await
        .unwrap();
    admin
        .load_plugin("trap", fixture("trap"), vec![], None, None)
        .await
        .unwrap();
    admin
        .load_plugin("pointer", fixture("bad_pointer"), vec![], None, None)
        .await
        .unwrap();
    admin
        .load_plugin(
            "keep",
            fixture("keep_tag"),
            cfg(&[("tag", "a")]),
            None,
            None,
        )
        .await
        .unwrap();
    let producer = Producer::new(client.clone(), ProducerOptions::default());
    for i in 0..10 {
        producer
            .send(Message::new("events", format!("e{i}")).with_tag(if i < 5 { "a" } else { "b" }))
            .await
            .unwrap();
    }
    let consumer = PullConsumer::new(client.clone());
    for (name, want) in [
        ("loop", "time limit of 50 ms"),
        ("bomb", "memory limit of 4194304 bytes"),
        ("trap", "trapped"),
        ("pointer", "outside the plugin's memory"),
    ] {
        let err = pull_all(&consumer, "events", vec![PluginRef::new(name)])
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(Status::PluginFailed), "{name}: {err}");
        assert!(err.to_string().contains(want), "{name}: {err}");
        // Others keep being served while (and after) it fails.
        let kept = pull_all(&consumer, "events", vec![PluginRef::new("keep")])
            .await
            .unwrap();
        assert_eq!(kept.len(), 5);
        // The per-attachment policies.
        let skipped = pull_all(
            &consumer,
            "events",
            vec![PluginRef::new(name).on_error(PluginFailurePolicy::Skip)],
        )
        .await
        .unwrap();
        assert!(skipped.is_empty(), "{name}");
        let delivered = pull_all(
            &consumer,
            "events",
            vec![PluginRef::new(name).on_error(PluginFailurePolicy::Deliver)],
        )
        .await
        .unwrap();
        assert_eq!(delivered.len(), 10, "{name}");
    }
    // Three failures in a row: unhealthy, visible in the list, until reloaded.
    let list = admin.list_plugins().await.unwrap();
    let health: HashMap<String, bool> = list.iter().map(|p| (p.name.clone(), p.healthy)).collect();
    assert!(!health["trap"]);
    assert!(health["keep"]);
    let err = pull_all(&consumer, "events", vec![PluginRef::new("trap")])
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::PluginUnhealthy), "{err}");
    let info = admin
        .reload_plugin(
            "trap",
            Some(fixture("keep_tag").into()),
            Some(cfg(&[("tag", "b")])),
            None,
            None,
        )
        .await
        .unwrap();
    assert!(info.healthy);
    assert_eq!(info.version, 2);
    let kept = pull_all(&consumer, "events", vec![PluginRef::new("trap")])
        .await
        .unwrap();
    assert_eq!(kept.len(), 5);
    // Unknown plugins fail the pull at once.
    let err = pull_all(&consumer, "events", vec![PluginRef::new("nope")])
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::PluginNotFound), "{err}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_and_duplicates_nothing() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let admin = Admin::new(client.clone());
    admin.create_topic("stream", 4).await.unwrap();
    let version_cfg = |v: &str| cfg(&[("set.a", v), ("set.b", v), ("set.c", v)]);
    admin
        .load_plugin("ver", plugin_wasm("enrich"), version_cfg("0"), None, None)
        .await
        .unwrap();
    let seen: Arc<Mutex<Vec<ReceivedMessage>>> = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let sub = Subscription::new("stream", FilterSpec::All).plugin(PluginRef::new("ver"));
    let opts = PushConsumerOptions {
        consume_from: ConsumeFrom::First,
        ..PushConsumerOptions::new("reloaders")
    };
    let consumer = PushConsumer::start_single(client.clone(), vec![sub], opts, move |m| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(m);
            ConsumeResult::Success
        }
    })
    .await
    .unwrap();
    // Sends batches until the reloads are over, then a few more.
    let producer = Producer::new(client.clone(), ProducerOptions::default());
    let reloading = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let r = reloading.clone();
    let send = tokio::spawn(async move {
        let mut ids = Vec::new();
        let mut after = 0;
        while after < 5 {
            if !r.load(std::sync::atomic::Ordering::Acquire) {
                after += 1;
            }
            let batch: Vec<Message> = (0..20)
                .map(|i| Message::new("stream", format!("m{}-{i}", ids.len())))
                .collect();
            for r in producer.send_batch(batch).await.unwrap() {
                ids.push(r.msg_id);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        ids
    });
    for v in 1..=6 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let info = admin
            .reload_plugin("ver", None, Some(version_cfg(&v.to_string())), None, None)
            .await
            .unwrap();
        assert_eq!(info.version, v + 1);
    }
    reloading.store(false, std::sync::atomic::Ordering::Release);
    let ids = send.await.unwrap();
    let n = ids.len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumer.shutdown().await.unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let mut count: HashMap<_, usize> = HashMap::new();
    for m in seen.iter() {
        *count.entry(m.msg_id).or_default() += 1;
        // Every message went through exactly one whole version of the plugin.
        let a = m.property("a").expect("enriched");
        assert_eq!(m.property("b"), Some(a));
        assert_eq!(m.property("c"), Some(a));
    }
    assert_eq!(seen.len(), n, "each message delivered once");
    for id in &ids {
        assert_eq!(count.get(id), Some(&1), "message {id} delivered once");
    }
    let versions: std::collections::BTreeSet<&str> =
        seen.iter().filter_map(|m| m.property("a")).collect();
    assert!(
        versions.contains("6"),
        "the last version is in use: {versions:?}"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_survive_a_restart() {
    let mut broker = TestBroker::start().await;
    let client = broker.client().await;
    let admin = Admin::new(client.clone());
    admin.create_topic("audit", 1).await.unwrap();
    admin
        .load_plugin(
            "keep",
            fixture("keep_tag"),
            cfg(&[("tag", "ok")]),
            None,
            Some(200),
        )
        .await
        .unwrap();
    admin
        .load_plugin(
            "stamp",
            plugin_wasm("enrich"),
            cfg(&[("set.seen", "1")]),
            None,
            None,
        )
        .await
        .unwrap();
    admin.attach_plugin("keep", "audit").await.unwrap();
    client.close().await;
    broker.restart().await;

    let client = broker.client().await;
    let admin = Admin::new(client.clone());
    let list = admin.list_plugins().await.unwrap();
    let names: Vec<&str> = list.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["keep", "stamp"]);
    let keep = admin.describe_plugin("keep").await.unwrap();
    assert_eq!(keep.time_limit_ms, 200);
    assert_eq!(keep.topics, vec!["audit".to_string()]);
    let producer = Producer::new(client.clone(), ProducerOptions::default());
    let err = producer
        .send(Message::new("audit", "x").with_tag("nope"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::PluginRejected), "{err}");
    producer
        .send(Message::new("audit", "y").with_tag("ok"))
        .await
        .unwrap();
    let consumer = PullConsumer::new(client.clone());
    let got = pull_all(&consumer, "audit", vec![PluginRef::new("stamp")])
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].property("seen"), Some("1"));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transform_that_enlarges_messages_keeps_the_pull_within_its_byte_budget() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let admin = Admin::new(client.clone());
    admin.create_topic("grow", 1).await.unwrap();
    let pad = "p".repeat(10_000);
    admin
        .load_plugin(
            "pad",
            plugin_wasm("enrich"),
            cfg(&[("set.pad", &pad)]),
            None,
            None,
        )
        .await
        .unwrap();
    let producer = Producer::new(client.clone(), ProducerOptions::default());
    for i in 0..10 {
        producer
            .send(Message::new("grow", format!("m{i}")))
            .await
            .unwrap();
    }
    let consumer = PullConsumer::new(client.clone());
    let mut offset = 0;
    let mut got = Vec::new();
    let mut pulls = 0;
    while offset < 10 {
        let r = consumer
            .pull(
                "grow",
                0,
                offset,
                PullOptions {
                    max_bytes: 25_000,
                    plugins: vec![PluginRef::new("pad")],
                    ..PullOptions::default()
                },
            )
            .await
            .unwrap();
        let bytes: usize = r.messages.iter().map(|m| m.body.len() + 10_100).sum();
        assert!(
            r.messages.len() <= 2,
            "{} messages, ~{bytes} bytes",
            r.messages.len()
        );
        assert_eq!(r.next_offset, offset + r.messages.len() as u64);
        got.extend(r.messages);
        offset = r.next_offset;
        pulls += 1;
        assert!(pulls < 20);
    }
    assert_eq!(
        bodies(&got),
        (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    assert!(got.iter().all(|m| m.property("pad") == Some(pad.as_str())));
    broker.stop().await;
}
