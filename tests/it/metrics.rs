//! `/metrics` on the admin HTTP listener: scraped over real HTTP from a running broker after
//! real traffic, in the Prometheus text format, with the documented names and the values the
//! traffic implies (docs/OPERATIONS.md).

use std::collections::HashSet;
use std::net::SocketAddr;

use quiver_client::{Admin, Message, Producer, ProducerOptions, PullConsumer, PullOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::TestBroker;

/// `GET path` over HTTP/1.1: (status line, content type, body).
async fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap_or_default().to_string();
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (status, ctype, body.to_string())
}

/// The value of the sample line `name{labels}` (exact match of everything before the value).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_real_traffic_in_the_prometheus_format() {
    let broker = TestBroker::start().await;
    let admin_addr = broker.server().admin_addr().expect("admin listener on");
    assert!(admin_addr.ip().is_loopback());
    let client = broker.client().await;
    Admin::new(client.clone())
        .create_topic("orders", 2)
        .await
        .unwrap();
    let producer = Producer::new(client.clone(), ProducerOptions::default());
    for i in 0..10 {
        producer
            .send(Message::new("orders", format!("order-{i}")).with_tag("t"))
            .await
            .unwrap();
    }
    // Read queue 0 and commit part of it for group billing: it lags by the rest.
    let pull = PullConsumer::new(client.clone());
    let got = pull
        .pull("orders", 0, 0, PullOptions::default())
        .await
        .unwrap();
    let n0 = got.messages.len() as u64;
    assert!(n0 > 0);
    pull.commit_offset("billing", "orders", 0, 1).await.unwrap();

    let (status, ctype, body) = get(admin_addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    assert_eq!(
        sample(&body, "quiver_messages_in_total{topic=\"orders\"}"),
        Some(10.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "quiver_messages_out_total{topic=\"orders\"}"),
        Some(n0 as f64)
    );
    assert!(sample(&body, "quiver_bytes_in_total{topic=\"orders\"}").unwrap() > 10.0 * 90.0);
    assert_eq!(
        sample(
            &body,
            "quiver_requests_total{command=\"Send\",status=\"Ok\"}"
        ),
        Some(10.0)
    );
    assert_eq!(
        sample(&body, "quiver_store_append_seconds_count"),
        Some(10.0),
        "one append per send"
    );
    assert_eq!(
        sample(
            &body,
            "quiver_consumer_lag_messages{group=\"billing\",topic=\"orders\",queue=\"0\"}"
        ),
        Some((n0 - 1) as f64)
    );
    assert!(sample(&body, "quiver_connections").unwrap() >= 1.0);
    assert_eq!(sample(&body, "quiver_long_polls_parked"), Some(0.0));
    assert_eq!(sample(&body, "quiver_transactions_unresolved"), Some(0.0));
    assert_eq!(sample(&body, "quiver_disk_writes_refused"), Some(0.0));
    assert!(sample(&body, "quiver_store_log_bytes").unwrap() > 0.0);
    // Every documented metric family that has a value here carries HELP and TYPE lines.
    let typed: HashSet<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for name in [
        "quiver_messages_in_total",
        "quiver_requests_total",
        "quiver_store_append_seconds",
        "quiver_consumer_lag_messages",
        "quiver_connections",
    ] {
        assert!(typed.contains(name), "no TYPE line for {name}");
    }
    assert!(body.contains("# HELP quiver_messages_in_total Messages stored, by topic"));

    // A refused request is counted under its status.
    let _ = Admin::new(client.clone()).describe_topic("nope").await;
    let (_, _, body) = get(admin_addr, "/metrics").await;
    assert_eq!(
        sample(
            &body,
            "quiver_requests_total{command=\"TopicDescribe\",status=\"TopicNotFound\"}"
        ),
        Some(1.0),
        "{body}"
    );
    // A plugin's counters and run time.
    let wat = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/plugins/tag_to_body.wat"),
    )
    .unwrap();
    let admin = Admin::new(client.clone());
    admin.create_topic("tagged", 1).await.unwrap();
    admin
        .load_plugin("tagger", wat, vec![], None, None)
        .await
        .unwrap();
    admin.attach_plugin("tagger", "tagged").await.unwrap();
    for i in 0..3 {
        producer
            .send(Message::new("tagged", format!("b{i}")).with_tag(format!("t{i}")))
            .await
            .unwrap();
    }
    let (_, _, body) = get(admin_addr, "/metrics").await;
    assert_eq!(
        sample(&body, "quiver_plugin_batches{plugin=\"tagger\"}"),
        Some(3.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "quiver_plugin_messages_in{plugin=\"tagger\"}"),
        Some(3.0)
    );
    assert_eq!(
        sample(&body, "quiver_plugin_failures{plugin=\"tagger\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&body, "quiver_plugin_healthy{plugin=\"tagger\"}"),
        Some(1.0)
    );
    assert!(sample(&body, "quiver_plugin_busy_seconds{plugin=\"tagger\"}").unwrap() > 0.0);

    let (status, _, _) = get(admin_addr, "/nothing-here").await;
    assert!(status.contains("404"), "{status}");
    client.close().await;
    broker.stop().await;
}
