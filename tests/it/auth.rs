//! Users and access rules against a real broker over QUIC (docs/SECURITY.md): what a user
//! limited to one topic may and may not do, what an admin may, failed and replayed logins,
//! rules changed at runtime, the console's login, and the refusal to listen openly
//! without users.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quiver_client::{
    Admin, Client, ClientError, ConsumeFrom, ConsumeResult, Credentials, Message, Producer,
    ProducerOptions, PullConsumer, PullOptions, PushConsumer, PushConsumerOptions, ReceivedMessage,
};
use quiver_protocol::cmd::{self, actions, AclRule, Decision, Role};
use quiver_protocol::{decode_error, split_frame, Request, Status, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::TestBroker;

const ROOT_PW: &str = "root-secret-1";
const ALICE_PW: &str = "alice-secret-1";

async fn as_user(broker: &TestBroker, user: &str, password: &str) -> Result<Client, ClientError> {
    let mut cfg = broker.client_config();
    cfg.credentials = Some(Credentials::new(user, password));
    Client::connect(cfg).await
}

fn allow(resource: &str, bits: u16) -> AclRule {
    AclRule {
        resource: resource.into(),
        actions: bits,
        decision: Decision::Allow,
        source: String::new(),
    }
}

fn status<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Status {
    match r {
        Err(e) => e
            .status()
            .unwrap_or_else(|| panic!("no broker status: {e}")),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

/// A broker with a super user `root` and a user `alice` allowed to send to and consume
/// `orders` as group `order-workers`; topics `orders` and `payments` exist.
async fn broker_with_users() -> (TestBroker, Admin) {
    broker_with_users_tuned(|_| {}).await
}

/// [`broker_with_users`] on a broker configured by `tune`.
async fn broker_with_users_tuned(
    tune: impl FnOnce(&mut quiver::config::Config),
) -> (TestBroker, Admin) {
    let broker = TestBroker::start_tuned(tune).await;
    // No user yet: this machine may do anything, including creating the first user.
    let open = Admin::new(broker.client().await);
    let e = open
        .create_user("alice", ALICE_PW, Role::Normal)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("super"), "{e}");
    open.create_user("root", ROOT_PW, Role::Super)
        .await
        .unwrap();
    let root = Admin::new(as_user(&broker, "root", ROOT_PW).await.unwrap());
    root.create_user("alice", ALICE_PW, Role::Normal)
        .await
        .unwrap();
    root.grant(
        "alice",
        allow("topic:orders", actions::SEND | actions::CONSUME),
    )
    .await
    .unwrap();
    root.grant("alice", allow("group:order-workers", actions::CONSUME))
        .await
        .unwrap();
    root.create_topic("orders", 2).await.unwrap();
    root.create_topic("payments", 2).await.unwrap();
    (broker, root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_limited_to_orders_may_use_orders_and_nothing_else() {
    let (broker, root) = broker_with_users().await;
    let alice = as_user(&broker, "alice", ALICE_PW).await.unwrap();
    let producer = Producer::new(alice.clone(), ProducerOptions::default());
    producer
        .send(Message::new("orders", "order-1"))
        .await
        .expect("alice sends to orders");

    // What she lacks is refused with AccessDenied, naming the action and the resource.
    let e = producer
        .send(Message::new("payments", "pay-1"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(Status::AccessDenied), "{e}");
    assert!(e.to_string().contains("topic:payments"), "{e}");
    let puller = PullConsumer::new(alice.clone());
    assert_eq!(
        status(puller.pull("payments", 0, 0, PullOptions::default()).await),
        Status::AccessDenied
    );
    assert_eq!(
        status(puller.commit_offset("billing", "orders", 0, 1).await),
        Status::AccessDenied,
        "a group she lacks"
    );
    puller
        .commit_offset("order-workers", "orders", 0, 0)
        .await
        .expect("her own group");
    let admin = Admin::new(alice.clone());
    assert_eq!(
        status(admin.create_topic("alice-topic", 1).await),
        Status::AccessDenied
    );
    assert_eq!(
        status(
            admin
                .load_plugin("evil", Bytes::from_static(b"\0asm"), vec![], None, None)
                .await
        ),
        Status::AccessDenied
    );
    assert_eq!(status(admin.list_users().await), Status::AccessDenied);
    assert_eq!(
        status(admin.broker_status().await),
        Status::AccessDenied,
        "the broker's status is describe on cluster"
    );
    // Lists show only what she may see.
    let topics: Vec<String> = admin
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(topics, vec!["orders".to_string()]);

    // A push consumer of her group gets her message (heartbeats, pulls of orders and of
    // the group's retry topic, offset commits: all allowed by the two rules).
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let mut opts = PushConsumerOptions::new("order-workers");
    opts.consume_from = ConsumeFrom::First;
    let consumer = PushConsumer::start_single(
        alice.clone(),
        vec!["orders".into()],
        opts,
        move |m: ReceivedMessage| {
            let s = s.clone();
            async move {
                s.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&m.body).into_owned());
                ConsumeResult::Success
            }
        },
    )
    .await
    .expect("alice consumes as order-workers");
    crate::harness::eventually("alice's consumer gets order-1", async || {
        seen.lock().unwrap().contains(&"order-1".to_string())
    })
    .await;
    consumer.shutdown().await.unwrap();

    // The admin may do what she may not.
    root.create_topic("root-topic", 1).await.unwrap();
    let wat = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/plugins/keep_tag.wat"),
    )
    .unwrap();
    root.load_plugin("keep", wat, vec![("tag".into(), "a".into())], None, None)
        .await
        .expect("the admin loads a plugin");
    Producer::new(root.client().clone(), ProducerOptions::default())
        .send(Message::new("payments", "pay-2"))
        .await
        .unwrap();
    let status_json = root.broker_status().await.unwrap();
    assert_eq!(status_json["topics"], 3);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_change_at_runtime_on_open_connections() {
    let (broker, root) = broker_with_users().await;
    let alice = as_user(&broker, "alice", ALICE_PW).await.unwrap();
    let producer = Producer::new(alice.clone(), ProducerOptions::default());
    let pay = || Message::new("payments", "p");
    assert_eq!(status(producer.send(pay()).await), Status::AccessDenied);

    root.grant("alice", allow("topic:pay*", actions::SEND))
        .await
        .unwrap();
    producer
        .send(pay())
        .await
        .expect("granted: same connection");
    // Sending to a missing topic the prefix covers does not create it without `create`:
    // neither the producer's route (its auto-creation is dropped) nor a bare Send.
    let e = producer
        .send(Message::new("pay-later", "x"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(Status::TopicNotFound), "{e}");
    let bare = alice
        .call(cmd::Send {
            topic: "pay-later".into(),
            queue_id: 0,
            messages: vec![crate::harness::wire_message(7, &[], b"x")],
        })
        .await
        .unwrap_err();
    assert_eq!(bare.status(), Some(Status::TopicNotFound), "{bare}");
    assert!(bare.to_string().contains("may not create"), "{bare}");
    let names: Vec<String> = root
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(!names.contains(&"pay-later".to_string()), "{names:?}");

    // A deny wins over the allow.
    let mut deny = allow("topic:payments", actions::SEND);
    deny.decision = Decision::Deny;
    root.grant("alice", deny.clone()).await.unwrap();
    assert_eq!(status(producer.send(pay()).await), Status::AccessDenied);
    root.revoke("alice", deny).await.unwrap();
    producer.send(pay()).await.expect("the deny is gone");

    // Her rules as the admin sees them.
    let rules = root.list_rules(Some("alice")).await.unwrap();
    let list = rules["users"][0]["rules"].as_array().unwrap().clone();
    assert!(
        list.iter()
            .any(|r| r["resource"] == "topic:pay*" && r["actions"] == "send"),
        "{rules}"
    );

    // Deleted, she is refused from the next request.
    root.delete_user("alice").await.unwrap();
    let e = producer
        .send(Message::new("orders", "x"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(Status::AccessDenied), "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");

    // Without a login nothing is allowed once users exist, even from this machine.
    let anonymous = Admin::new(broker.client().await);
    let e = anonymous.list_topics().await.unwrap_err();
    assert_eq!(e.status(), Some(Status::AccessDenied), "{e}");
    assert!(e.to_string().contains("log in"), "{e}");
    broker.stop().await;
}

/// A raw connection that has said Hello, for handshakes by hand.
async fn raw(broker: &TestBroker) -> (quinn::Endpoint, quinn::Connection) {
    let s = broker.server();
    let (endpoint, conn) = crate::harness::raw_connection(s.addr, &s.fingerprint).await;
    let hello = Request::Hello(cmd::Hello {
        version: PROTOCOL_VERSION,
        client_id: "raw-auth".into(),
    });
    assert_eq!(exchange(&conn, hello).await.0, Status::Ok);
    (endpoint, conn)
}

async fn exchange(conn: &quinn::Connection, req: Request) -> (Status, Bytes) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&req.encode()).await.unwrap();
    let _ = send.finish();
    let resp = tokio::time::timeout(Duration::from_secs(15), recv.read_to_end(1 << 20))
        .await
        .expect("answered")
        .expect("readable");
    let (h, body) = split_frame(&Bytes::from(resp), 1 << 20).unwrap();
    (Status::from_u16(h.code), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_unknown_user_and_a_replayed_handshake_are_refused_alike() {
    let (broker, _root) = broker_with_users().await;
    let failure = |r: Result<Client, ClientError>| match r {
        Err(ClientError::Broker { status, message }) => (status, message),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let wrong = failure(as_user(&broker, "alice", "not-her-password").await);
    let unknown = failure(as_user(&broker, "mallory", ALICE_PW).await);
    assert_eq!(wrong.0, Status::AuthenticationFailed);
    assert_eq!(wrong, unknown, "the answers do not tell which");

    // Record a good handshake by hand, then replay its proof on a new connection.
    let (_e1, conn) = raw(&broker).await;
    let start = cmd::AuthStart {
        user: "alice".into(),
        client_nonce: [7; 32],
    };
    let (st, body) = exchange(&conn, Request::AuthStart(start.clone())).await;
    assert_eq!(st, Status::Ok);
    let challenge: cmd::AuthStartReply = cmd::decode_body(body).unwrap();
    let params = quiver_protocol::scram::Params {
        m_kib: challenge.m_kib,
        t: challenge.t,
        p: challenge.p,
    };
    assert_eq!(params, quiver_protocol::scram::Params::DEFAULT);
    let salted =
        quiver_protocol::scram::salted_password(ALICE_PW, &challenge.salt, params).unwrap();
    let am = quiver_protocol::scram::auth_message_of(&start, &challenge);
    let finish = cmd::AuthFinish {
        proof: quiver_protocol::scram::client_proof(&salted, &am),
    };
    let (st, _) = exchange(&conn, Request::AuthFinish(finish.clone())).await;
    assert_eq!(st, Status::Ok, "the recorded handshake was good");
    let (st, _) = exchange(&conn, Request::TopicList(cmd::TopicList)).await;
    assert_eq!(st, Status::Ok, "logged in");

    let (_e2, replay) = raw(&broker).await;
    let (st, _) = exchange(&replay, Request::AuthStart(start.clone())).await;
    assert_eq!(st, Status::Ok);
    let (st, body) = exchange(&replay, Request::AuthFinish(finish.clone())).await;
    assert_eq!(
        (st, decode_error(body)),
        (wrong.0, wrong.1.clone()),
        "a replayed proof fails like a wrong password"
    );
    // A proof without any AuthStart too.
    let (_e3, bare) = raw(&broker).await;
    let (st, body) = exchange(&bare, Request::AuthFinish(finish)).await;
    assert_eq!((st, decode_error(body)), (wrong.0, wrong.1.clone()));
    let (st, _) = exchange(&bare, Request::TopicList(cmd::TopicList)).await;
    assert_eq!(st, Status::AccessDenied, "still not logged in");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_refuses_to_listen_openly_without_users_and_bootstraps_its_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::harness::test_config(dir.path());
    cfg.broker.listen = "0.0.0.0:0".parse().unwrap();
    let e = quiver::server::Server::start(cfg.clone())
        .await
        .err()
        .expect("refused");
    let text = format!("{e:#}");
    assert!(text.contains("without users"), "{text}");
    assert!(text.contains("auth.mode"), "{text}");

    // With a bootstrap password the first user is created at start (here on loopback).
    cfg.broker.listen = "127.0.0.1:0".parse().unwrap();
    cfg.auth.bootstrap_password = Some("boot-secret-1".into());
    let broker = TestBroker::start_with(cfg).await;
    let anonymous = Admin::new(broker.client().await);
    assert_eq!(status(anonymous.list_topics().await), Status::AccessDenied);
    let admin = Admin::new(as_user(&broker, "admin", "boot-secret-1").await.unwrap());
    let users = admin.list_users().await.unwrap();
    assert_eq!(users["users"][0]["name"], "admin");
    assert_eq!(users["users"][0]["role"], "super");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_speaks_https_with_the_brokers_certificate() {
    let (broker, _root) =
        broker_with_users_tuned(|c| c.admin.tls = quiver::admin_http::AdminTls::On).await;
    let addr = broker.server().admin_addr().expect("admin listener");
    let ca = broker.server().cert_path.clone();
    assert_eq!(broker.server().admin_url(), Some(format!("https://{addr}")));
    let json = ("Content-Type", "application/json");

    // Plain HTTP gets no HTTP answer: a password sent that way is never read.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), plain.read_to_end(&mut out))
        .await
        .expect("the listener drops a connection that does not speak TLS");
    assert!(
        !out.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );

    // A client that opens a connection and never starts its handshake holds up nobody.
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();

    // Over HTTPS, with the broker's own certificate as the only root: log in (well before
    // the silent one's handshake times out), ask who.
    let (code, body) = tokio::time::timeout(
        Duration::from_secs(10),
        crate::console::https(
            addr,
            &ca,
            "POST",
            "/api/login",
            &[json],
            &format!(r#"{{"user":"alice","password":"{ALICE_PW}"}}"#),
        ),
    )
    .await
    .expect("a silent connection does not hold up other handshakes");
    assert_eq!(code, 200, "{body}");
    let login: serde_json::Value = serde_json::from_str(&body).unwrap();
    let bearer = format!("Bearer {}", login["token"].as_str().unwrap());
    let (code, body) = crate::console::https(
        addr,
        &ca,
        "GET",
        "/api/whoami",
        &[("Authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""user":"alice""#), "{body}");
    let (code, body) = crate::console::https(addr, &ca, "GET", "/metrics", &[], "").await;
    assert_eq!(code, 200);
    assert!(body.contains("quiver_"), "{body}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_logs_in_with_broker_users() {
    let (broker, root) = broker_with_users().await;
    let addr = broker.server().admin_addr().expect("admin listener");
    let json = ("Content-Type", "application/json");
    let (code, body) = crate::console::http(addr, "GET", "/api/topics", &[], "").await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("AccessDenied"), "{body}");
    let (code, body) = crate::console::http(
        addr,
        "POST",
        "/api/login",
        &[json],
        r#"{"user":"alice","password":"wrong"}"#,
    )
    .await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("AuthenticationFailed"), "{body}");
    let (code, body) = crate::console::http(
        addr,
        "POST",
        "/api/login",
        &[json],
        &format!(r#"{{"user":"alice","password":"{ALICE_PW}"}}"#),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let login: serde_json::Value = serde_json::from_str(&body).unwrap();
    let bearer = format!("Bearer {}", login["token"].as_str().unwrap());
    let auth = ("Authorization", bearer.as_str());
    let (code, body) = crate::console::http(addr, "GET", "/api/whoami", &[auth], "").await;
    assert_eq!(code, 200);
    assert!(body.contains(r#""user":"alice""#), "{body}");
    // She sees only her topic, and may not create one.
    let (code, body) = crate::console::http(addr, "GET", "/api/topics", &[auth], "").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("orders") && !body.contains("payments"),
        "{body}"
    );
    let (code, body) = crate::console::http(
        addr,
        "POST",
        "/api/topics",
        &[auth, json],
        r#"{"topic":"web","queues":1}"#,
    )
    .await;
    assert_eq!(code, 403, "{body}");
    // Broker status, cluster and dead-letter pages read broker state directly: the same
    // rights as over QUIC (describe on the cluster; groups she may see).
    for page in ["/api/overview", "/api/cluster"] {
        let (code, body) = crate::console::http(addr, "GET", page, &[auth], "").await;
        assert_eq!(code, 403, "{page}: {body}");
    }
    let (code, body) = crate::console::http(addr, "GET", "/api/dlq", &[auth], "").await;
    assert_eq!((code, body.as_str()), (200, "[]"));
    // Only `POST /api/login` is open to anybody: a resource named "login" is not.
    let (code, body) = crate::console::http(addr, "GET", "/api/dlq/login", &[], "").await;
    assert_eq!(code, 403, "{body}");
    // After logout the token is dead.
    let (code, _) = crate::console::http(addr, "POST", "/api/logout", &[auth], "").await;
    assert_eq!(code, 200);
    let (code, body) = crate::console::http(addr, "GET", "/api/topics", &[auth], "").await;
    assert_eq!(code, 401, "{body}");
    // A new password ends her other console logins.
    let login_body = format!(r#"{{"user":"alice","password":"{ALICE_PW}"}}"#);
    let (code, body) = crate::console::http(addr, "POST", "/api/login", &[json], &login_body).await;
    assert_eq!(code, 200, "{body}");
    let login: serde_json::Value = serde_json::from_str(&body).unwrap();
    let bearer = format!("Bearer {}", login["token"].as_str().unwrap());
    let auth = ("Authorization", bearer.as_str());
    let (code, _) = crate::console::http(addr, "GET", "/api/whoami", &[auth], "").await;
    assert_eq!(code, 200);
    root.change_password("alice", "a-new-secret-9")
        .await
        .unwrap();
    let (code, body) = crate::console::http(addr, "GET", "/api/topics", &[auth], "").await;
    assert_eq!(code, 401, "{body}");
    broker.stop().await;
}

/// Users live in the cluster's controller: created on one node, they log in on every node,
/// and a node restarted with kill -9 still knows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_created_on_one_cluster_node_log_in_on_every_node() {
    use crate::cluster::agreed_leader;
    use quiver_client::{ClientConfig, Tls};
    use std::net::SocketAddr;
    let _heavy = crate::harness::heavy();
    let cluster = crate::replication::Nodes::new("");
    let mut nodes = vec![
        cluster.start(1, Some("a")),
        cluster.start(2, Some("b")),
        cluster.start(3, None),
    ];
    let (addrs, cert) = (cluster.addrs.clone(), cluster.cert.clone());
    agreed_leader(
        &addrs,
        &cert,
        &[],
        Duration::from_secs(20),
        cluster.dir.path(),
    )
    .await;
    let connect = |addr: SocketAddr, login: Option<(&str, &str)>| {
        let mut cfg = ClientConfig::new(addr, Tls::CaFile(cert.clone()));
        cfg.request_timeout = Duration::from_secs(2);
        cfg.credentials = login.map(|(u, p)| Credentials::new(u, p));
        Client::connect(cfg)
    };
    // The first user, from this machine, on node 1.
    let open = Admin::new(connect(addrs[0], None).await.unwrap());
    open.create_user("root", ROOT_PW, Role::Super)
        .await
        .expect("the first user is stored through the controller");
    // Every node applies it: anonymous requests are refused, root logs in.
    for addr in &addrs {
        crate::harness::eventually(
            &format!("node {addr} requires a login"),
            async || match connect(*addr, None).await {
                Ok(c) => {
                    let r = Admin::new(c.clone()).list_topics().await;
                    c.close().await;
                    r.is_err_and(|e| e.status() == Some(Status::AccessDenied))
                }
                Err(_) => false,
            },
        )
        .await;
        let root = connect(*addr, Some(("root", ROOT_PW)))
            .await
            .unwrap_or_else(|e| panic!("root logs in on {addr}: {e}"));
        root.close().await;
    }
    // A user created on the controller-only node, logging in on the broker of set b, is
    // refused what its rules do not give it.
    let root3 = Admin::new(connect(addrs[2], Some(("root", ROOT_PW))).await.unwrap());
    root3
        .create_user("alice", ALICE_PW, Role::Normal)
        .await
        .unwrap();
    root3
        .grant("alice", allow("topic:orders", actions::SEND))
        .await
        .unwrap();
    let alice = crate::harness::eventually_some("alice logs in on node 2", async || {
        connect(addrs[1], Some(("alice", ALICE_PW))).await.ok()
    })
    .await;
    let e = Admin::new(alice.clone())
        .create_topic("mine", 1)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(Status::AccessDenied), "{e}");
    alice.close().await;

    // Changes made at the same moment on two nodes are both kept: the one the controller
    // refuses is made again on the newer users, without the operator retrying.
    let root1 = Admin::new(connect(addrs[0], Some(("root", ROOT_PW))).await.unwrap());
    for round in 0..3 {
        let (one, three) = (
            format!("topic:audit-{round}"),
            format!("topic:billing-{round}"),
        );
        let (a, b) = tokio::join!(
            root1.grant("alice", allow(&one, actions::SEND)),
            root3.grant("alice", allow(&three, actions::SEND)),
        );
        a.expect("the grant on node 1");
        b.expect("the grant on node 3");
        crate::harness::eventually(&format!("round {round}'s rules on node 1"), async || {
            let rules = root1.list_rules(Some("alice")).await.unwrap().to_string();
            rules.contains(&one) && rules.contains(&three)
        })
        .await;
    }

    // Node 2 killed and restarted: it still knows alice (its auth.json, then the cluster).
    nodes[1].kill9();
    nodes[1].spawn();
    crate::harness::eventually_some("alice logs in on restarted node 2", async || {
        connect(addrs[1], Some(("alice", ALICE_PW))).await.ok()
    })
    .await
    .close()
    .await;
    drop(nodes);
}

/// The console's login in a real browser, over HTTPS as off loopback: a wrong password is
/// refused, a user logs in and sees only what her rules give her, and logs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_logs_in_to_the_console_in_a_browser() {
    // The broker's certificate is self-signed (the HTTPS test checks it by its file); this
    // browser accepts it as an operator who checked its fingerprint would.
    let Some(mut b) = crate::browser::Browser::start_with(
        "a_user_logs_in_to_the_console_in_a_browser",
        &["--ignore-certificate-errors"],
    )
    .await
    else {
        return;
    };
    let (broker, _root) =
        broker_with_users_tuned(|c| c.admin.tls = quiver::admin_http::AdminTls::On).await;
    let base = format!("{}/", broker.server().admin_url().expect("admin listener"));
    assert!(base.starts_with("https://"), "{base}");
    b.open(&format!("{base}#topics")).await;
    b.wait(
        "the login form",
        "!document.querySelector('#token-box').hidden",
    )
    .await;
    b.fill("#login-user", "alice").await;
    b.fill("#login-password", "not-her-password").await;
    b.click("#login-form button").await;
    b.wait(
        "the refusal",
        "document.querySelector('#notice').textContent.includes('authentication failed')",
    )
    .await;
    b.fill("#login-user", "alice").await;
    b.fill("#login-password", ALICE_PW).await;
    b.click("#login-form button").await;
    b.wait(
        "logged in",
        "document.querySelector('#whoami').textContent === 'as alice'",
    )
    .await;
    b.wait(
        "her topic listed",
        "!!document.querySelector('#topics-table tr[data-topic=\"orders\"]')",
    )
    .await;
    let other = b
        .eval("!!document.querySelector('#topics-table tr[data-topic=\"payments\"]')")
        .await;
    assert_eq!(
        other,
        serde_json::Value::Bool(false),
        "payments is not hers"
    );
    // A change her rules do not allow is refused, with the reason on the page.
    b.fill("#topic-create-name", "web").await;
    b.fill("#topic-create-queues", "1").await;
    b.click("#topic-create-submit").await;
    b.wait(
        "the refusal names what she lacks",
        "document.querySelector('#notice').textContent.includes('may not create')",
    )
    .await;
    b.click("#logout").await;
    b.wait(
        "logged out",
        "!document.querySelector('#token-box').hidden && document.querySelector('#whoami').textContent === ''",
    )
    .await;
    broker.stop().await;
}

/// The CLI: the first user, users and rules, logins from a credentials file, and what a
/// refusal looks like to an operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_manages_users_and_rules_with_the_cli() {
    use crate::cli::Quiver;
    let broker = TestBroker::start().await;
    let q = Quiver::new(&broker);
    let dir = tempfile::tempdir().unwrap();
    let cred = |name: &str, pw: &str| {
        let path = dir.path().join(format!("{name}.cred"));
        std::fs::write(&path, format!("user = \"{name}\"\npassword = \"{pw}\"\n")).unwrap();
        path.display().to_string()
    };
    let (root, alice) = (cred("root", ROOT_PW), cred("alice", ALICE_PW));

    let made = q
        .run_stdin(
            &[
                "admin",
                "user",
                "create",
                "root",
                "--super",
                "--password-stdin",
            ],
            format!("{ROOT_PW}\n").as_bytes(),
        )
        .await
        .expect_ok("the first user");
    assert!(made.stdout.contains("created (super)"), "{made:?}");
    let short = q
        .run_stdin(
            &[
                "admin",
                "user",
                "create",
                "bob",
                "--password-stdin",
                "--credentials",
                &root,
            ],
            b"short\n",
        )
        .await
        .expect_fail("a short password");
    assert!(short.stderr.contains("shorter than 8"), "{short:?}");
    q.run_stdin(
        &[
            "admin",
            "user",
            "create",
            "alice",
            "--password-stdin",
            "--credentials",
            &root,
        ],
        format!("{ALICE_PW}\n").as_bytes(),
    )
    .await
    .expect_ok("alice");
    let as_root = |args: &[&str]| {
        let mut v: Vec<&str> = args.to_vec();
        v.extend(["--credentials", root.as_str()]);
        v.iter().map(|s| s.to_string()).collect::<Vec<String>>()
    };
    let run = |args: Vec<String>| {
        let q = &q;
        async move {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            q.run(&a).await
        }
    };
    run(as_root(&[
        "admin",
        "acl",
        "grant",
        "alice",
        "--resource",
        "topic:orders",
        "--actions",
        "send,consume",
    ]))
    .await
    .expect_ok("grant");
    let bad = run(as_root(&[
        "admin",
        "acl",
        "grant",
        "alice",
        "--resource",
        "orders",
        "--actions",
        "send",
    ]))
    .await
    .expect_fail("a resource without its kind");
    assert!(bad.stderr.contains("topic:NAME"), "{bad:?}");
    let listed = run(as_root(&["admin", "acl", "list", "alice", "--json"]))
        .await
        .expect_ok("acl list")
        .json();
    assert_eq!(
        listed[0]["users"][0]["rules"][0]["actions"], "send,consume",
        "{listed:?}"
    );
    let users = run(as_root(&["admin", "user", "list", "--json"]))
        .await
        .expect_ok("user list")
        .json();
    assert_eq!(users[0]["users"].as_array().unwrap().len(), 2, "{users:?}");
    run(as_root(&["admin", "topic", "create", "orders"]))
        .await
        .expect_ok("root creates orders");

    // Alice from her credentials file: orders yes, payments no, with the reason.
    q.run(&[
        "produce",
        "--topic",
        "orders",
        "--credentials",
        &alice,
        "hello",
    ])
    .await
    .expect_ok("alice sends to orders");
    let refused = q
        .run(&[
            "produce",
            "--topic",
            "payments",
            "--credentials",
            &alice,
            "hello",
        ])
        .await
        .expect_fail("alice sends to payments");
    assert!(
        refused.stderr.contains(r#"user "alice" may not"#),
        "{refused:?}"
    );
    // Without a login nothing works, and the message says what to do.
    let anonymous = q
        .run(&["admin", "topic", "list"])
        .await
        .expect_fail("no login");
    assert!(anonymous.stderr.contains("log in"), "{anonymous:?}");
    // A wrong password.
    let wrong = q
        .run(&[
            "admin",
            "topic",
            "list",
            "--credentials",
            &cred("alice", "nope-nope"),
        ])
        .await
        .expect_fail("a wrong password");
    assert!(
        wrong.stderr.contains("unknown user or wrong password"),
        "{wrong:?}"
    );
    broker.stop().await;
}

/// Applications log in with TLS client certificates from `auth.client_ca`: the certificate's
/// common name is the user, its rules apply; a certificate from another authority does not
/// get through the handshake, nor does one `auth.client_crl` revokes; a name without a user
/// gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_logs_in_as_the_user_it_names() {
    use quiver_client::{ClientCertificate, ClientConfig};
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        std::fs::write(pki.join(format!("{name}.pem")), cert.pem()).unwrap();
        Issuer::new(p, key)
    };
    let (apps, rogue) = (ca("apps-ca"), ca("rogue-ca"));
    let leaf = |issuer: &Issuer<'_, KeyPair>, user: &str, serial: u64| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, user);
        p.serial_number = Some(serial.into());
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, issuer).unwrap();
        let (c, k) = (
            pki.join(format!("{user}-{serial}.crt")),
            pki.join(format!("{user}-{serial}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        ClientCertificate { cert: c, key: k }
    };
    let alice_cert = leaf(&apps, "alice", 1);
    let ghost_cert = leaf(&apps, "ghost", 2);
    let rogue_cert = leaf(&rogue, "root", 3);
    // Alice's lost laptop's certificate, revoked.
    let lost_cert = leaf(&apps, "alice", 4);
    let revoke = |number: u64, serials: &[u64]| {
        let crl = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: number.into(),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: (*s).into(),
                    revocation_time: rcgen::date_time_ymd(2024, 6, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&apps)
        .unwrap();
        std::fs::write(pki.join("apps.crl.pem"), crl.pem().unwrap()).unwrap();
    };
    revoke(1, &[4]);

    let mut cfg = crate::harness::test_config(dir.path());
    cfg.auth.client_ca = Some(pki.join("apps-ca.pem"));
    cfg.auth.client_crl = Some(pki.join("apps.crl.pem"));
    cfg.auth.client_crl_check_ms = 100;
    let broker = TestBroker::start_with(cfg).await;
    let open = Admin::new(broker.client().await);
    open.create_user("root", ROOT_PW, Role::Super)
        .await
        .unwrap();
    let root = Admin::new(as_user(&broker, "root", ROOT_PW).await.unwrap());
    root.create_user("alice", ALICE_PW, Role::Normal)
        .await
        .unwrap();
    root.grant("alice", allow("topic:orders", actions::SEND))
        .await
        .unwrap();
    root.create_topic("orders", 1).await.unwrap();
    root.create_topic("payments", 1).await.unwrap();

    let with_cert = |c: &ClientCertificate| {
        let mut cfg: ClientConfig = broker.client_config();
        cfg.certificate = Some(c.clone());
        cfg.connect_timeout = Duration::from_secs(2);
        Client::connect(cfg)
    };
    let alice = with_cert(&alice_cert).await.expect("alice's certificate");
    let producer = Producer::new(alice.clone(), ProducerOptions::default());
    producer
        .send(Message::new("orders", "by certificate"))
        .await
        .expect("alice may send to orders");
    assert_eq!(
        status(producer.send(Message::new("payments", "x")).await),
        Status::AccessDenied
    );
    let ghost = with_cert(&ghost_cert).await.expect("a good certificate");
    let e = Admin::new(ghost).list_topics().await.unwrap_err();
    assert_eq!(e.status(), Some(Status::AccessDenied), "{e}");
    assert!(e.to_string().contains("\"ghost\" does not exist"), "{e}");
    let rogue = with_cert(&rogue_cert).await;
    assert!(
        rogue.is_err(),
        "a certificate of another authority fails the handshake"
    );
    let lost = with_cert(&lost_cert).await;
    assert!(lost.is_err(), "a revoked certificate fails the handshake");
    // The CLI presents one too.
    let q = crate::cli::Quiver::new(&broker);
    let out = q
        .run(&[
            "produce",
            "--topic",
            "orders",
            "--client-cert",
            &alice_cert.cert.display().to_string(),
            "--client-key",
            &alice_cert.key.display().to_string(),
            "from the cli",
        ])
        .await;
    assert!(out.ok, "{out:?}");

    // A new list, written while the broker runs, applies to new connections without a
    // restart; certificates it does not name still get in.
    revoke(2, &[4, 1]);
    crate::harness::eventually(
        "alice's certificate refused after the new list",
        async || with_cert(&alice_cert).await.is_err(),
    )
    .await;
    let ghost = with_cert(&ghost_cert).await.expect("not revoked");
    ghost.close().await;
    // A damaged list is not applied: the last good one stays in force.
    std::fs::write(
        pki.join("apps.crl.pem"),
        "-----BEGIN X509 CRL-----\nbroken\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(with_cert(&alice_cert).await.is_err(), "still revoked");
    let ghost = with_cert(&ghost_cert).await.expect("still not revoked");
    ghost.close().await;
    broker.stop().await;
}

/// Commands that act on stored records by id or commit-log offset are checked against the
/// records they act on, not against a record of the same id the caller sent to a topic of
/// its own: alice (orders only) cannot cancel root's scheduled payment, decide its half
/// message, copy it into her group's dead letters, or read internal topics by key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_checked_by_what_they_are_not_by_their_id() {
    use quiver_protocol::{SendMode, TransactionState, WireMessage};
    let (broker, root_admin) = broker_with_users().await;
    root_admin
        .grant("alice", allow("group:alice-tx", actions::SEND))
        .await
        .unwrap();
    root_admin
        .grant("alice", allow("topic:*", actions::DESCRIBE))
        .await
        .unwrap();
    let root = as_user(&broker, "root", ROOT_PW).await.unwrap();
    let alice = as_user(&broker, "alice", ALICE_PW).await.unwrap();
    let message = |id: u128, key: &str| crate::harness::wire_message(id, &[key], b"salary");
    let special = |topic: &str, mode: SendMode, m: WireMessage| cmd::SendSpecial {
        topic: topic.into(),
        queue_id: 0,
        mode,
        messages: vec![m],
    };
    let in_an_hour = SendMode::DelayMs(3_600_000);
    let (scheduled, half) = (0x0005_c4ed_01ed_u128, 0x4a1f_u128);

    // Root's scheduled payment and half message; alice's decoys with the same ids, in
    // orders, which she may send to.
    root.call(special(
        "payments",
        in_an_hour.clone(),
        message(scheduled, "pay-1"),
    ))
    .await
    .unwrap();
    let half_receipt = root
        .call(special(
            "payments",
            SendMode::Half {
                group: "pay-tx".into(),
            },
            message(half, "pay-2"),
        ))
        .await
        .unwrap()
        .receipts[0];
    alice
        .call(special("orders", in_an_hour, message(scheduled, "decoy")))
        .await
        .unwrap();
    alice
        .call(cmd::Send {
            topic: "orders".into(),
            queue_id: 0,
            messages: vec![message(half, "decoy")],
        })
        .await
        .unwrap();

    let cancel = cmd::CancelScheduled { id: scheduled };
    let e = status(alice.call(cancel).await);
    assert_eq!(
        e,
        Status::AccessDenied,
        "her decoy does not stand for root's payment"
    );
    let decide = cmd::EndTransaction {
        group: "alice-tx".into(),
        id: half,
        handle: half_receipt.phys_offset,
        state: TransactionState::Commit,
        from_check: false,
    };
    assert_eq!(
        status(alice.call(decide.clone()).await),
        Status::AccessDenied
    );
    // A half message of a producer group she lacks, even to her own topic, is refused.
    let e = alice
        .call(special(
            "orders",
            SendMode::Half {
                group: "pay-tx".into(),
            },
            message(0x77, "x"),
        ))
        .await;
    assert_eq!(status(e), Status::AccessDenied);
    // Sending root's half message back into her group's dead letters would let her read it.
    let back = cmd::SendBack {
        group: "order-workers".into(),
        id: half,
        handle: half_receipt.phys_offset,
        delay_level: 0,
        max_reconsume: 16,
        to_dlq: true,
    };
    assert_eq!(status(alice.call(back).await), Status::AccessDenied);
    // Internal topics hold everyone's scheduled and half messages: not hers to search, even
    // with describe on every topic.
    for internal in ["%SCHEDULE%", "%HALF%"] {
        let by_key = cmd::MessageByKey {
            topic: internal.into(),
            key: "pay-1".into(),
            max: 16,
            begin_ms: 0,
            end_ms: i64::MAX,
        };
        assert_eq!(status(alice.call(by_key).await), Status::AccessDenied);
    }

    // A handle where no such message is (here, at the end of the offset range) is
    // `NotFound` before anything is decided.
    let nowhere = cmd::EndTransaction {
        handle: u64::MAX - 3,
        ..decide.clone()
    };
    assert_eq!(status(alice.call(nowhere).await), Status::NotFound);

    // Root may do all of it: the checks look at the right records.
    root.call(cancel).await.expect("root cancels his payment");
    root.call(cmd::EndTransaction {
        group: "pay-tx".into(),
        ..decide
    })
    .await
    .expect("root commits his half message");
    broker.stop().await;
}
