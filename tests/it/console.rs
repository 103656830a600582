//! The web console in a real headless Chromium (tests/it/browser.rs): an operator creates a
//! topic, sends a message, finds it by key, resets a group's offsets and deletes the topic
//! through the page, and what the page shows is checked against the CLI. Plus the API's
//! access rules over plain HTTP.

use quiver_protocol::cmd::CommitOffset;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::browser::Browser;
use crate::cli::Quiver;
use crate::harness::TestBroker;

/// The numbers in the table cells of the row `row` (a selector), thousands separators gone.
fn cells_js(row: &str) -> String {
    format!(
        "(() => {{ const r = document.querySelector({}); return r ? [...r.children].map(c => c.textContent.replace(/,/g, '')) : null; }})()",
        serde_json::json!(row)
    )
}

async fn cells(b: &mut Browser, row: &str) -> Vec<String> {
    let v = b.eval(&cells_js(row)).await;
    v.as_array()
        .unwrap_or_else(|| panic!("no row {row}"))
        .iter()
        .map(|c| c.as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_uses_the_console_and_the_cli_agrees() {
    let Some(mut b) = Browser::start("an_operator_uses_the_console_and_the_cli_agrees").await
    else {
        return;
    };
    let broker = TestBroker::start().await;
    let q = Quiver::new(&broker);
    let base = format!(
        "http://{}/",
        broker.server().admin_addr().expect("admin listener")
    );

    // Overview first: the broker's name and role.
    b.open(&format!("{base}#overview")).await;
    b.wait("overview", "document.body.dataset.page === 'overview'")
        .await;
    assert_eq!(b.text("#ov-role").await, "standalone");
    assert_eq!(b.text("#ov-topics").await, "0");

    // Create a topic through the form.
    b.open(&format!("{base}#topics")).await;
    b.wait("topics page", "document.body.dataset.page === 'topics'")
        .await;
    b.fill("#topic-create-name", "web-orders").await;
    b.fill("#topic-create-queues", "3").await;
    b.click("#topic-create-submit").await;
    b.wait(
        "the new topic listed",
        "!!document.querySelector('#topics-table tr[data-topic=\"web-orders\"]')",
    )
    .await;
    let row = cells(&mut b, "#topics-table tr[data-topic=\"web-orders\"]").await;
    assert_eq!(row, ["web-orders", "3", "0"]);
    let described = q
        .run(&["admin", "topic", "describe", "web-orders", "--json"])
        .await
        .expect_ok("topic describe")
        .json();
    assert_eq!(
        described.len(),
        3,
        "the CLI sees three queues: {described:?}"
    );

    // Its page: send a test message with a tag, a key and properties.
    b.click("#topics-table tr[data-topic=\"web-orders\"]").await;
    b.wait("topic page", "document.body.dataset.page === 'topic'")
        .await;
    b.fill("#send-body", r#"{"order":42,"amount":99}"#).await;
    b.fill("#send-tag", "paid").await;
    b.fill("#send-keys", "order-42").await;
    b.fill("#send-props", "amount=99\nregion=eu").await;
    b.click("#send-submit").await;
    let id = b
        .wait(
            "the sent message's id",
            "(() => { const t = document.querySelector('#send-result')?.textContent || '-'; return t === '-' ? '' : t; })()",
        )
        .await
        .as_str()
        .unwrap()
        .to_string();
    let got = q
        .run(&["admin", "message", "get", "--id", &id, "--json"])
        .await
        .expect_ok("message get")
        .json();
    let m = &got[0];
    assert_eq!(m["tag"], "paid");
    assert_eq!(m["keys"], serde_json::json!(["order-42"]));
    assert_eq!(m["properties"]["amount"], "99");
    assert_eq!(m["properties"]["region"], "eu");
    assert_eq!(m["body"], r#"{"order":42,"amount":99}"#);
    let queue = m["queue"].as_u64().unwrap() as u32;
    // The page's queue table shows it where the CLI does.
    let sel = format!("#queues-table tr[data-queue=\"{queue}\"]");
    b.wait(
        "the queue table counts the message",
        &format!(
            "(() => {{ const c = {}; return c && c[2] === '1'; }})()",
            cells_js(&sel)
        ),
    )
    .await;
    let cli_queue = described
        .iter()
        .find(|r| r["queue"] == queue)
        .expect("queue in describe");
    assert_eq!(cli_queue["min_offset"], 0);

    // Find it by key on the messages page.
    b.click("nav a[data-page=\"messages\"]").await;
    b.wait("messages page", "document.body.dataset.page === 'messages'")
        .await;
    b.fill("#search-topic", "web-orders").await;
    b.fill("#search-key", "order-42").await;
    b.click("#search-submit").await;
    b.wait(
        "the message's details",
        &format!("document.querySelector('#detail-id')?.textContent === {id:?}"),
    )
    .await;
    assert_eq!(b.text("#detail-tag").await, "paid");
    assert_eq!(b.text("#detail-keys").await, "order-42");
    let props = b
        .eval("[...document.querySelectorAll('#detail-props tbody tr')].map(r => r.children[0].textContent + '=' + r.children[1].textContent)")
        .await;
    assert_eq!(props, serde_json::json!(["amount=99", "region=eu"]));
    // A JSON body is shown as JSON, and as hex on request.
    assert!(b.text("#body-preview").await.contains("\"amount\": 99"));
    b.click("#body-hex").await;
    b.wait(
        "hex view",
        "document.querySelector('#body-preview').textContent.startsWith('00000000  7b 22 6f')",
    )
    .await;
    // A search that matches nothing says so.
    b.fill("#search-key", "no-such-key").await;
    b.click("#search-submit").await;
    b.wait(
        "an empty result",
        "document.querySelector('#search-results')?.textContent.includes('no message matched')",
    )
    .await;

    // A consumer group with a committed offset: its lag, then a reset through the page.
    let client = broker.client().await;
    client
        .call(CommitOffset {
            group: "billing".into(),
            topic: "web-orders".into(),
            queue_id: queue,
            offset: 1,
        })
        .await
        .unwrap();
    b.click("nav a[data-page=\"groups\"]").await;
    b.wait(
        "the group listed",
        "!!document.querySelector('#groups-table tr[data-group=\"billing\"]')",
    )
    .await;
    assert_eq!(
        cells(&mut b, "#groups-table tr[data-group=\"billing\"]").await,
        ["billing", "clustering", "0", "0"]
    );
    b.click("#groups-table tr[data-group=\"billing\"]").await;
    b.wait("group page", "document.body.dataset.page === 'group'")
        .await;
    let qsel = format!("#group-queues tr[data-topic=\"web-orders\"][data-queue=\"{queue}\"]");
    let before = cells(&mut b, &qsel).await;
    assert_eq!(
        before[2..5],
        ["1", "1", "0"],
        "committed, max, lag: {before:?}"
    );
    b.fill("#reset-to", "first").await;
    b.click("#reset-submit").await;
    b.wait(
        "the committed offset back at 0",
        &format!(
            "(() => {{ const c = {}; return c && c[2] === '0'; }})()",
            cells_js(&qsel)
        ),
    )
    .await;
    let page = cells(&mut b, &qsel).await;
    let cli = q
        .run(&["admin", "group", "describe", "billing", "--json"])
        .await
        .expect_ok("group describe")
        .json();
    let cli_row = cli
        .iter()
        .find(|r| r["topic"] == "web-orders" && r["queue"] == queue)
        .expect("the queue in the CLI's describe");
    assert_eq!(page[2], cli_row["committed"].to_string());
    assert_eq!(page[3], cli_row["max_offset"].to_string());
    assert_eq!(page[4], cli_row["lag"].to_string());
    assert_eq!(cli_row["lag"], 1);

    // The overview counts what happened, as the CLI lists it.
    b.click("nav a[data-page=\"overview\"]").await;
    b.wait(
        "overview again",
        "document.body.dataset.page === 'overview'",
    )
    .await;
    let listed = q
        .run(&["admin", "topic", "list", "--json"])
        .await
        .expect_ok("topic list")
        .json();
    let user_topics = listed
        .iter()
        .filter(|t| !t["topic"].as_str().unwrap_or("").starts_with('%'))
        .count();
    assert_eq!(b.text("#ov-topics").await, user_topics.to_string());
    assert_eq!(b.text("#ov-in").await, "1");

    // Deleting asks for the name first.
    b.open(&format!("{base}#topic/web-orders")).await;
    b.wait("topic page", "document.body.dataset.page === 'topic'")
        .await;
    assert_eq!(
        b.eval("document.querySelector('#delete-submit').disabled")
            .await,
        Value::Bool(true)
    );
    b.click("#delete-submit").await;
    b.fill("#delete-confirm", "web-orders").await;
    b.click("#delete-submit").await;
    b.wait(
        "back on the topic list",
        "document.body.dataset.page === 'topics'",
    )
    .await;
    b.wait(
        "the topic gone",
        "!document.querySelector('#topics-table tr[data-topic=\"web-orders\"]')",
    )
    .await;
    let listed = q
        .run(&["admin", "topic", "list", "--json"])
        .await
        .expect_ok("topic list")
        .json();
    assert!(
        listed.iter().all(|t| t["topic"] != "web-orders"),
        "{listed:?}"
    );
    broker.stop().await;
}

/// One HTTP/1.1 request over a fresh connection: status and body.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (status, body, read) = request(s, addr, method, path, headers, body).await;
    read.unwrap();
    (status, body)
}

/// The same over HTTPS, trusting only the certificate in `ca` (the broker's) for the name
/// `localhost`.
pub async fn https(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the admin listener");
    // A peer that closes without close_notify ends the read with UnexpectedEof after the
    // whole response: what was read counts.
    let (status, body, _) = request(tls, addr, method, path, headers, body).await;
    (status, body)
}

/// Writes one request on `s` and reads the response to the end: status, body, and how the
/// read ended.
async fn request<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, std::io::Result<usize>) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body, read)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_other_sites_and_explains_errors() {
    let broker = TestBroker::start().await;
    let addr = broker.server().admin_addr().expect("admin listener");
    let json = ("Content-Type", "application/json");

    // The page and its assets are served.
    let (status, page) = http(addr, "GET", "/", &[], "").await;
    assert_eq!(status, 200);
    assert!(page.contains("/console.js"));
    let (status, _) = http(addr, "GET", "/console.js", &[], "").await;
    assert_eq!(status, 200);

    // A change from this console's own page works.
    let origin = format!("http://{addr}");
    let (status, body) = http(
        addr,
        "POST",
        "/api/topics",
        &[json, ("Origin", &origin)],
        r#"{"topic":"api-made","queues":2}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A change a page from another site makes is refused, and so is a host name that is
    // not loopback's (DNS rebinding).
    let (status, body) = http(
        addr,
        "POST",
        "/api/topics",
        &[json, ("Origin", "http://evil.example")],
        r#"{"topic":"evil"}"#,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = http(
        addr,
        "GET",
        "/api/topics",
        &[("Host", "evil.example:80")],
        "",
    )
    .await;
    assert_eq!(status, 403, "{body}");

    // Errors are JSON with the protocol status.
    let (status, body) = http(
        addr,
        "POST",
        "/api/topics",
        &[json],
        r#"{"topic":"api-made","queues":2}"#,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "TopicExists");
    let (status, body) = http(addr, "GET", "/api/topics/nothing-here", &[], "").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = http(
        addr,
        "PUT",
        "/api/topics/api-made",
        &[json],
        r#"{"queues":1}"#,
    )
    .await;
    assert_eq!(status, 409, "shrinking needs force: {body}");
    let (status, body) = http(addr, "GET", "/api/messages?id=xyz", &[], "").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("32 hex digits"), "{body}");
    let (status, body) = http(addr, "GET", "/api/no-such-route", &[], "").await;
    assert_eq!(status, 404, "{body}");

    // Resend a message to a group: it reaches the group's retry topic about a second later.
    let (status, body) = http(
        addr,
        "POST",
        "/api/topics/api-made/messages",
        &[json],
        r#"{"body":"again","keys":["k-1"]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent: Value = serde_json::from_str(&body).unwrap();
    let id = sent["id"].as_str().unwrap();
    let (status, body) = http(
        addr,
        "POST",
        &format!("/api/messages/{id}/resend"),
        &[json],
        r#"{"group":"resend-g"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["retry_topic"], "%RETRY%resend-g");
    assert_eq!(r["reconsume_times"], 1);
    crate::harness::eventually("the copy in %RETRY%resend-g", async || {
        let (_, body) = http(addr, "GET", "/api/topics/%25RETRY%25resend-g", &[], "").await;
        serde_json::from_str::<Value>(&body).is_ok_and(|v| {
            v["queues"].as_array().is_some_and(|q| {
                q.iter()
                    .map(|q| q["messages"].as_u64().unwrap_or(0))
                    .sum::<u64>()
                    == 1
            })
        })
    })
    .await;

    // Every /api reply is JSON, even for a body that is not.
    let (status, body) = http(addr, "POST", "/api/topics", &[json], "{not json").await;
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).expect("a JSON error");
    assert!(v["error"].as_str().is_some(), "{body}");
    broker.stop().await;
}
