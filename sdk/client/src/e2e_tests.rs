//! End-to-end tests of the SDK against a small in-process QUIC mock of the broker (not the real
//! broker: that one has its own integration tests). They check the wire contract: TLS modes,
//! ALPN, Hello first, one bidi stream per request, one-way sends on uni streams, retries,
//! reconnection after a restart, and record parsing.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::Endpoint;
use quiver_protocol::cmd::{self, Call};
use quiver_protocol::record::{encode_into, NewMessage, RecordPlacement};
use quiver_protocol::{
    encode_error, split_frame, Command, GroupMode, GroupSummary, PullStatus, QueueInfo, QueueRef,
    RecordLimits, Request, ResetTarget, Response, SendReceipt, Status, TopicSummary,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::*;

const QUEUES: u32 = 4;

struct Cert {
    der: CertificateDer<'static>,
    key: Vec<u8>,
    pem: String,
}

fn cert() -> Cert {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    Cert {
        der: ck.cert.der().clone(),
        key: ck.signing_key.serialize_der(),
        pem: ck.cert.pem(),
    }
}

#[derive(Default)]
struct State {
    hellos: u32,
    before_hello: u32,
    /// Answer this many Send requests with Busy.
    busy: u32,
    oneway: u32,
    /// (topic, queue) -> records.
    queues: HashMap<(String, u32), Vec<Bytes>>,
    offsets: HashMap<(String, String, u32), u64>,
    phys: u64,
    /// Group membership: member -> last `held`; members that left; what Heartbeat grants
    /// (every queue of the topics when `None`).
    held: HashMap<String, Vec<QueueRef>>,
    left: Vec<String>,
    grant: Option<Vec<QueueRef>>,
    /// Refuse this many new connections (CONNECTION_REFUSED, as at the connection limit).
    refuse: u32,
    /// Send requests answered so far.
    sends: u32,
    /// Refuse a whole Send (as an ingress plugin would) when one of its messages has this tag.
    reject_tag: Option<String>,
}

struct Mock {
    addr: SocketAddr,
    endpoint: Endpoint,
    state: Arc<Mutex<State>>,
}

impl Mock {
    async fn start(cert: &Cert, addr: SocketAddr) -> Mock {
        Self::start_with(cert, addr, Arc::default()).await
    }

    /// A mock serving `state` (a "restarted" broker that kept its data).
    async fn start_with(cert: &Cert, addr: SocketAddr, state: Arc<Mutex<State>>) -> Mock {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key.clone()));
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der.clone()], key)
            .unwrap();
        tls.alpn_protocols = vec![quiver_protocol::ALPN.to_vec()];
        let mut sc =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
        sc.transport_config(Arc::new(transport_config()));
        // A restarted mock reuses the port; the old socket may take a moment to go away.
        let mut tries = 0;
        let endpoint = loop {
            match Endpoint::server(sc.clone(), addr) {
                Ok(e) => break e,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        };
        let (ep, st) = (endpoint.clone(), state.clone());
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let st = st.clone();
                {
                    let mut s = st.lock().unwrap();
                    if s.refuse > 0 {
                        s.refuse -= 1;
                        incoming.refuse();
                        continue;
                    }
                }
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        serve(conn, st).await;
                    }
                });
            }
        });
        Mock {
            addr: endpoint.local_addr().unwrap(),
            endpoint,
            state,
        }
    }

    async fn stop(self) {
        self.endpoint.close(0u32.into(), b"restart");
        self.endpoint.wait_idle().await;
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

async fn serve(conn: quinn::Connection, st: Arc<Mutex<State>>) {
    let hello = Arc::new(AtomicBool::new(false));
    let remote = conn.remote_address();
    loop {
        tokio::select! {
            bi = conn.accept_bi() => match bi {
                Ok((mut send, mut recv)) => {
                    let (st, hello) = (st.clone(), hello.clone());
                    tokio::spawn(async move {
                        let Ok(data) = recv.read_to_end(64 << 20).await else { return };
                        let mut chunks = respond(Bytes::from(data), &hello, &st, remote).await;
                        let _ = send.write_all_chunks(&mut chunks).await;
                        let _ = send.finish();
                    });
                }
                Err(_) => break,
            },
            uni = conn.accept_uni() => match uni {
                Ok(mut recv) => {
                    let (st, hello) = (st.clone(), hello.clone());
                    tokio::spawn(async move {
                        let Ok(data) = recv.read_to_end(64 << 20).await else { return };
                        let out = respond(Bytes::from(data), &hello, &st, remote).await;
                        if out.len() == 1 && out[0][4..6] != [0, 0] {
                            panic!("one-way send failed");
                        }
                        st.lock().unwrap().oneway += 1;
                    });
                }
                Err(_) => break,
            },
        }
    }
}

fn err(status: Status, cmd: Command, msg: &str) -> Vec<Bytes> {
    vec![encode_error(status, cmd as u16, msg)]
}

async fn respond(
    frame: Bytes,
    hello: &AtomicBool,
    st: &Mutex<State>,
    remote: SocketAddr,
) -> Vec<Bytes> {
    let (h, body) = match split_frame(&frame, DEFAULT_MAX_FRAME) {
        Ok(x) => x,
        Err(e) => return vec![encode_error(e.status(), 0, &e.to_string())],
    };
    let req = match Request::decode(&h, body) {
        Ok(r) => r,
        Err(e) => return vec![encode_error(e.status(), h.code, &e.to_string())],
    };
    let cmd = req.command();
    if cmd != Command::Hello && !hello.load(Ordering::SeqCst) {
        st.lock().unwrap().before_hello += 1;
        return err(Status::HandshakeRequired, cmd, "Hello first");
    }
    // Long poll: park when the queue has nothing at the offset.
    if let Request::Pull(cmd::Pull {
        topic,
        queue_id,
        offset,
        long_poll_ms,
        ..
    }) = &req
    {
        let have = st
            .lock()
            .unwrap()
            .queues
            .get(&(topic.clone(), *queue_id))
            .map_or(0, |q| q.len() as u64);
        if *offset >= have && *long_poll_ms > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(*long_poll_ms))).await;
        }
    }
    let mut s = st.lock().unwrap();
    let resp = match req {
        Request::Hello(cmd::Hello { version, .. }) => {
            if version != quiver_protocol::PROTOCOL_VERSION {
                return err(Status::UnsupportedVersion, cmd, "version");
            }
            hello.store(true, Ordering::SeqCst);
            s.hellos += 1;
            Response::Hello(cmd::HelloReply {
                version,
                broker: "mock".into(),
                max_message_size: 4 << 20,
                max_frame: DEFAULT_MAX_FRAME,
            })
        }
        Request::Route(cmd::Route { topic, create }) => {
            if topic == "missing" && !create {
                return err(Status::TopicNotFound, cmd, "no such topic");
            }
            Response::Route(cmd::RouteReply { queues: QUEUES })
        }
        Request::Send(cmd::Send {
            topic,
            queue_id,
            messages,
        }) => {
            if s.busy > 0 {
                s.busy -= 1;
                return err(Status::Busy, cmd, "busy");
            }
            s.sends += 1;
            if let Some(tag) = &s.reject_tag {
                if messages.iter().any(|m| &m.tag == tag) {
                    return err(Status::PluginRejected, cmd, "rejected by the mock's plugin");
                }
            }
            if queue_id >= QUEUES {
                return err(Status::QueueNotFound, cmd, "no such queue");
            }
            let mut receipts = Vec::new();
            for m in &messages {
                let keys: Vec<&str> = m.keys.iter().map(String::as_str).collect();
                let props: Vec<(&str, &str)> = m
                    .properties
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let nm = NewMessage {
                    msg_id: m.id,
                    flags: m.flags,
                    born_timestamp: m.born_timestamp,
                    born_host: remote,
                    reconsume_times: 0,
                    tag: &m.tag,
                    keys: &keys,
                    properties: &props,
                    body: &m.body,
                };
                let limits = RecordLimits {
                    max_body: 4 << 20,
                    max_properties: 32 << 10,
                };
                let len = match nm.encoded_len(&topic, &limits) {
                    Ok(l) => l,
                    Err(e) => return err(Status::InvalidMessage, cmd, &e.to_string()),
                };
                let phys = s.phys;
                s.phys += len as u64;
                let q = s.queues.entry((topic.clone(), queue_id)).or_default();
                let queue_offset = q.len() as u64;
                let mut buf = vec![0u8; len];
                encode_into(
                    &mut buf,
                    &topic,
                    &nm,
                    &RecordPlacement {
                        queue_id,
                        queue_offset,
                        phys_offset: phys,
                        store_timestamp: 1,
                        extra_flags: 0,
                    },
                );
                q.push(Bytes::from(buf));
                receipts.push(SendReceipt {
                    id: m.id,
                    queue_offset,
                    phys_offset: phys,
                });
            }
            Response::Send(cmd::SendReply { queue_id, receipts })
        }
        Request::Pull(cmd::Pull {
            topic,
            queue_id,
            offset,
            max_messages,
            ..
        }) => {
            let q = s
                .queues
                .get(&(topic, queue_id))
                .cloned()
                .unwrap_or_default();
            let end = q.len() as u64;
            let records: Vec<Bytes> = q
                .iter()
                .skip(offset as usize)
                .take(max_messages as usize)
                .cloned()
                .collect();
            Response::Pull(cmd::PullReply {
                status: if records.is_empty() {
                    PullStatus::NoNewMessages
                } else {
                    PullStatus::Found
                },
                next_offset: offset + records.len() as u64,
                min_offset: 0,
                max_offset: end,
                records,
            })
        }
        Request::CommitOffset(cmd::CommitOffset {
            group,
            topic,
            queue_id,
            offset,
        }) => {
            s.offsets.insert((group, topic, queue_id), offset);
            Response::CommitOffset(cmd::Done)
        }
        Request::FetchOffset(cmd::FetchOffset {
            group,
            topic,
            queue_id,
        }) => Response::FetchOffset(cmd::OffsetReply {
            offset: s.offsets.get(&(group, topic, queue_id)).copied(),
        }),
        Request::OffsetForTime(_) => Response::OffsetForTime(cmd::OffsetReply { offset: None }),
        Request::TopicCreate(_) => Response::TopicCreate(cmd::Done),
        Request::TopicUpdate(_) => Response::TopicUpdate(cmd::Done),
        Request::TopicDelete(_) => Response::TopicDelete(cmd::Done),
        Request::TopicList(cmd::TopicList) => Response::TopicList(cmd::TopicListReply {
            topics: vec![TopicSummary {
                name: "demo".into(),
                queues: QUEUES,
            }],
        }),
        Request::TopicDescribe(cmd::TopicDescribe { topic }) => {
            Response::TopicDescribe(cmd::TopicReply {
                queues: (0..QUEUES)
                    .map(|q| QueueInfo {
                        queue_id: q,
                        min_offset: 0,
                        max_offset: s
                            .queues
                            .get(&(topic.clone(), q))
                            .map_or(0, |v| v.len() as u64),
                    })
                    .collect(),
                name: topic,
            })
        }
        Request::MessageById(cmd::MessageById { id }) => {
            let found = s
                .queues
                .values()
                .flatten()
                .find(|r| record_msg_id(r) == id)
                .cloned();
            match found {
                Some(r) => Response::MessageById(cmd::Records(vec![r])),
                None => return err(Status::NotFound, cmd, "no such message"),
            }
        }
        Request::MessageByKey(cmd::MessageByKey {
            topic, key, max, ..
        }) => Response::MessageByKey(cmd::Records(
            s.queues
                .iter()
                .filter(|((t, _), _)| *t == topic)
                .flat_map(|(_, v)| v.iter())
                .filter(|r| {
                    quiver_protocol::RecordView::parse(r)
                        .map(|v| v.keys().any(|k| k == key))
                        .unwrap_or(false)
                })
                .take(max as usize)
                .cloned()
                .collect(),
        )),
        Request::Heartbeat(cmd::Heartbeat {
            member_id,
            subscriptions,
            held,
            ..
        }) => {
            s.held.insert(member_id, held);
            let owned = s.grant.clone().unwrap_or_else(|| {
                // The mock has no retry topics: it grants only the subscribed topics' queues.
                subscriptions
                    .iter()
                    .filter(|sub| !sub.topic.starts_with("%RETRY%"))
                    .flat_map(|sub| (0..QUEUES).map(move |q| (sub.topic.clone(), q)))
                    .collect()
            });
            Response::Heartbeat(cmd::HeartbeatReply {
                generation: 1,
                session_timeout_ms: 5_000,
                heartbeat_interval_ms: 100,
                settled: true,
                owned,
            })
        }
        Request::LeaveGroup(cmd::LeaveGroup { member_id, .. }) => {
            s.left.push(member_id);
            Response::LeaveGroup(cmd::Done)
        }
        Request::GroupList(cmd::GroupList) => Response::GroupList(cmd::GroupListReply {
            groups: vec![GroupSummary {
                name: "g".into(),
                mode: GroupMode::Broadcasting,
                members: 2,
            }],
        }),
        Request::GroupDescribe(cmd::GroupDescribe { group }) => {
            Response::GroupDescribe(cmd::GroupReply {
                name: group,
                mode: GroupMode::Clustering,
                members: Vec::new(),
                queues: Vec::new(),
            })
        }
        Request::GroupResetOffset(cmd::GroupResetOffset { group, topic, .. }) => {
            for q in 0..QUEUES {
                s.offsets.insert((group.clone(), topic.clone(), q), 0);
            }
            Response::GroupResetOffset(cmd::Done)
        }
        Request::GroupDelete(cmd::GroupDelete { group, .. }) => {
            s.offsets.retain(|(g, _, _), _| *g != group);
            Response::GroupDelete(cmd::Done)
        }
        // Plugins and messaging semantics are not part of this mock (tests/it/plugins.rs and
        // tests/it/messaging.rs cover them on a real broker).
        Request::SendSpecial(_)
        | Request::CancelScheduled(_)
        | Request::EndTransaction(_)
        | Request::PollTransactionChecks(_)
        | Request::SendBack(_)
        | Request::DlqResend(_)
        | Request::PluginLoad(_)
        | Request::PluginReload(_)
        | Request::PluginUnload(_)
        | Request::PluginList(_)
        | Request::PluginDescribe(_)
        | Request::BrokerStatus(_)
        | Request::PluginAttach(_)
        | Request::PluginDetach(_)
        | Request::Raft(_)
        | Request::ClusterInfo(_)
        | Request::ClusterVoter(_)
        | Request::TopicRoute(_)
        | Request::TopicCreateOn(_)
        | Request::ReplicaFetch(_)
        | Request::ReplicaState(_)
        | Request::ClusterElect(_)
        | Request::AuthStart(_)
        | Request::AuthFinish(_)
        | Request::UserCreate(_)
        | Request::UserPassword(_)
        | Request::UserDelete(_)
        | Request::UserList(_)
        | Request::AclGrant(_)
        | Request::AclRevoke(_)
        | Request::AclList(_) => {
            return vec![quiver_protocol::encode_error(
                quiver_protocol::Status::UnknownCommand,
                cmd as u16,
                "the mock broker has no plugins or messaging semantics",
            )]
        }
    };
    debug_assert_eq!(resp.command(), cmd);
    resp.encode_chunks()
}

fn record_msg_id(r: &[u8]) -> u128 {
    quiver_protocol::RecordView::parse(r)
        .map(|v| v.msg_id())
        .unwrap_or(0)
}

fn local() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

fn config(addr: SocketAddr, cert: &Cert) -> ClientConfig {
    ClientConfig::new(addr, Tls::Fingerprint(fingerprint(&cert.der)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes() {
    let c = cert();
    let mock = Mock::start(&c, local()).await;

    // Pin: right and wrong.
    let client = Client::connect(config(mock.addr, &c)).await.unwrap();
    assert_eq!(client.broker_info().unwrap().broker, "mock");
    client.close().await;
    let wrong = ClientConfig::new(mock.addr, Tls::Fingerprint([0; 32]));
    let e = Client::connect(wrong).await.unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
    let hex = fingerprint_hex(&c.der);
    let client = Client::connect(ClientConfig::new(
        mock.addr,
        Tls::fingerprint_from_hex(&hex).unwrap(),
    ))
    .await
    .unwrap();
    client.close().await;

    // The self-signed certificate as its own CA, as DER and as a PEM file.
    Client::connect(ClientConfig::new(mock.addr, Tls::CaDer(c.der.to_vec())))
        .await
        .unwrap()
        .close()
        .await;
    let path = std::env::temp_dir().join(format!("quiver-client-test-{}.pem", MessageId::new()));
    std::fs::write(&path, &c.pem).unwrap();
    Client::connect(ClientConfig::new(mock.addr, Tls::CaFile(path.clone())))
        .await
        .unwrap()
        .close()
        .await;
    let der_path = path.with_extension("der");
    std::fs::write(&der_path, c.der.as_ref()).unwrap();
    Client::connect(ClientConfig::new(mock.addr, Tls::CaFile(der_path.clone())))
        .await
        .unwrap()
        .close()
        .await;
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&der_path);

    // Wrong name for the CA mode; another CA.
    let mut cfg = ClientConfig::new(mock.addr, Tls::CaDer(c.der.to_vec()));
    cfg.server_name = "broker.example".into();
    assert!(matches!(
        Client::connect(cfg).await,
        Err(ClientError::Connect { .. })
    ));
    let other = cert();
    assert!(matches!(
        Client::connect(ClientConfig::new(mock.addr, Tls::CaDer(other.der.to_vec()))).await,
        Err(ClientError::Connect { .. })
    ));

    // Insecure accepts anything.
    Client::connect(ClientConfig::new(mock.addr, Tls::Insecure))
        .await
        .unwrap()
        .close()
        .await;
    assert_eq!(mock.state().before_hello, 0);
    assert_eq!(mock.state().hellos, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume() {
    let c = cert();
    let mock = Mock::start(&c, local()).await;
    let client = Client::connect(config(mock.addr, &c)).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerOptions::default());

    let r = producer
        .send(
            Message::new("demo", "first")
                .with_tag("t1")
                .with_key("k1")
                .with_property("region", "eu"),
        )
        .await
        .unwrap();
    assert_eq!(r.topic, "demo");
    assert!(r.queue_id < QUEUES);
    assert_eq!(r.queue_offset, 0);

    // Many async sends in flight on one connection.
    let handles: Vec<SendHandle> = (0..200)
        .map(|i| producer.send_async(Message::new("demo", format!("m{i}"))))
        .collect();
    let mut ids = std::collections::HashSet::new();
    for h in handles {
        assert!(ids.insert(h.await.unwrap().msg_id));
    }

    // Sharding key: always the same queue, whatever the selector.
    for i in 0..5 {
        let r = producer
            .send(Message::new("orders", format!("o{i}")).with_sharding_key("customer-9"))
            .await
            .unwrap();
        assert_eq!(r.queue_id, sharding_queue("customer-9", QUEUES));
        assert_eq!(r.queue_offset, i);
    }

    // Batch: one queue, consecutive offsets, results in order.
    let batch: Vec<Message> = (0..10)
        .map(|i| Message::new("batch", format!("b{i}")).with_key(format!("bk{i}")))
        .collect();
    let results = producer.send_batch(batch).await.unwrap();
    assert_eq!(results.len(), 10);
    let q = results[0].queue_id;
    for (i, r) in results.iter().enumerate() {
        assert_eq!((r.queue_id, r.queue_offset), (q, i as u64));
    }

    // Explicit queue, and a queue that does not exist.
    let r = producer
        .send_to_queue(Message::new("demo", "q3"), 3)
        .await
        .unwrap();
    assert_eq!(r.queue_id, 3);
    let e = producer
        .send_to_queue(Message::new("demo", "q9"), 9)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(Status::QueueNotFound));

    // One-way: arrives eventually on a uni stream.
    producer
        .send_oneway(Message::new("oneway", "fire"))
        .await
        .unwrap();
    for _ in 0..100 {
        if mock.state().oneway == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(mock.state().oneway, 1);

    // Pull everything back.
    let consumer = PullConsumer::new(client.clone());
    let queues = consumer.queues("demo").await.unwrap();
    assert_eq!(queues.len(), QUEUES as usize);
    let total: u64 = queues.iter().map(|q| q.max_offset).sum();
    assert_eq!(total, 202);
    let mut bodies = Vec::new();
    for q in &queues {
        let mut offset = consumer
            .fetch_offset("g1", "demo", q.queue_id)
            .await
            .unwrap()
            .unwrap_or(0);
        loop {
            let r = consumer
                .pull("demo", q.queue_id, offset, PullOptions::default())
                .await
                .unwrap();
            if r.status != PullStatus::Found {
                break;
            }
            for m in &r.messages {
                assert_eq!(m.topic, "demo");
                assert_eq!(m.queue_id, q.queue_id);
                bodies.push(String::from_utf8(m.body.to_vec()).unwrap());
                if m.body == "first" {
                    assert_eq!(m.tag.as_deref(), Some("t1"));
                    assert_eq!(m.keys, ["k1"]);
                    assert_eq!(m.property("region"), Some("eu"));
                    assert_eq!(m.born_host.ip(), Ipv4Addr::LOCALHOST);
                }
            }
            offset = r.next_offset;
        }
        consumer
            .commit_offset("g1", "demo", q.queue_id, offset)
            .await
            .unwrap();
        assert_eq!(
            consumer
                .fetch_offset("g1", "demo", q.queue_id)
                .await
                .unwrap(),
            Some(offset)
        );
    }
    assert_eq!(bodies.len(), 202);
    assert!(bodies.contains(&"m199".to_string()));

    // Admin lookups.
    let admin = Admin::new(client.clone());
    let by_id = admin
        .message_by_id(results[3].msg_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&by_id.body[..], b"b3");
    assert_eq!(by_id.msg_id, results[3].msg_id);
    assert!(admin.message_by_id(MessageId(7)).await.unwrap().is_none());
    let by_key = admin.query_by_key("batch", "bk5", 10).await.unwrap();
    assert_eq!(by_key.len(), 1);
    assert_eq!(&by_key[0].body[..], b"b5");
    assert_eq!(admin.list_topics().await.unwrap()[0].name, "demo");
    admin.create_topic("new", 2).await.unwrap();
    assert!(matches!(
        admin.create_topic("new", 0).await,
        Err(ClientError::InvalidArgument(_))
    ));
    let e = consumer
        .offset_for_timestamp("demo", 0, 0)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(Status::NotFound));

    assert_eq!(mock.state().before_hello, 0);
    assert_eq!(mock.state().hellos, 1);
    client.close().await;
    assert_eq!(
        producer.send(Message::new("demo", "late")).await,
        Err(ClientError::Closed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_timeouts() {
    let c = cert();
    let mock = Mock::start(&c, local()).await;
    let client = Client::connect(config(mock.addr, &c)).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerOptions::default());

    mock.state().busy = 2;
    producer.send(Message::new("demo", "x")).await.unwrap();
    mock.state().busy = 3;
    let e = producer.send(Message::new("demo", "x")).await.unwrap_err();
    assert_eq!(e.status(), Some(Status::Busy));
    assert!(e.is_retryable());
    assert_eq!(mock.state().busy, 0);

    // A long poll longer than the request timeout is fine: the timeout is extended.
    let mut cfg = config(mock.addr, &c);
    cfg.request_timeout = Duration::from_millis(300);
    let short = Client::connect(cfg).await.unwrap();
    let consumer = PullConsumer::new(short.clone());
    let opts = PullOptions {
        long_poll: Duration::from_millis(600),
        ..PullOptions::default()
    };
    let r = consumer.pull("empty", 0, 0, opts).await.unwrap();
    assert_eq!(r.status, PullStatus::NoNewMessages);
    assert!(r.messages.is_empty());
    let parked = cmd::Pull {
        topic: "empty".into(),
        queue_id: 0,
        offset: 0,
        max_messages: 1,
        max_bytes: 1,
        long_poll_ms: 600,
        filter: quiver_protocol::FilterSpec::All,
        plugins: Vec::new(),
    };
    assert_eq!(parked.wait_ms(), 600);
    // The generic and the typed call extend their timeout alike.
    let r = short.request(parked.clone().into()).await.unwrap();
    assert!(
        matches!(
            r,
            Response::Pull(cmd::PullReply {
                status: PullStatus::NoNewMessages,
                ..
            })
        ),
        "{r:?}"
    );
    let r = short.call(parked.clone()).await.unwrap();
    assert_eq!(r.status, PullStatus::NoNewMessages);
    // An explicit timeout is not extended: a parked pull times out (the mock sleeps, the
    // client does not wait).
    let e = short
        .request_with_timeout(parked.clone().into(), Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Timeout(_)), "{e:?}");
    let e = short
        .call_with_timeout(parked, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Timeout(_)), "{e:?}");
    // The connection is still good (short window: no dead-broker verdict).
    short
        .request(Request::TopicList(cmd::TopicList))
        .await
        .unwrap();
    let topics = short.call(cmd::TopicList).await.unwrap().topics;
    assert_eq!(topics[0].name, "demo");
    assert_eq!(mock.state().hellos, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_share_requests_and_keep_their_own_results() {
    let c = cert();
    let mock = Mock::start(&c, local()).await;
    let client = Client::connect(config(mock.addr, &c)).await.unwrap();
    let options = |coalesce| ProducerOptions {
        selector: QueueSelector::Fixed(0),
        coalesce,
        ..ProducerOptions::default()
    };
    let producer = Producer::new(client.clone(), options(true));
    producer
        .send(Message::new("demo", "warm-up"))
        .await
        .unwrap();
    let before = mock.state().sends;

    // 200 sends at once: every one gets its own receipt, in fewer requests.
    let handles: Vec<_> = (0..200)
        .map(|i| producer.send_async(Message::new("demo", format!("m{i}"))))
        .collect();
    let mut offsets = Vec::new();
    for h in handles {
        offsets.push(h.await.unwrap().queue_offset);
    }
    offsets.sort_unstable();
    assert_eq!(
        offsets,
        (1..201).collect::<Vec<u64>>(),
        "one offset per message"
    );
    let shared = mock.state().sends - before;
    assert!(shared < 200, "200 concurrent sends took {shared} requests");

    // One message the broker refuses fails alone; the others sharing its request are stored.
    mock.state().reject_tag = Some("bad".into());
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let m = Message::new("demo", format!("n{i}"));
            producer.send_async(if i == 25 { m.with_tag("bad") } else { m })
        })
        .collect();
    let mut failed = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        if let Err(e) = h.await {
            assert_eq!(e.status(), Some(Status::PluginRejected), "{e}");
            failed.push(i);
        }
    }
    assert_eq!(failed, vec![25]);
    assert_eq!(queue_lens(&mock, "demo")[0], 1 + 200 + 49);

    // Without sharing, every send is its own request.
    mock.state().reject_tag = None;
    let lone = Producer::new(client.clone(), options(false));
    let before = mock.state().sends;
    let handles: Vec<_> = (0..20)
        .map(|i| lone.send_async(Message::new("demo", format!("o{i}"))))
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(mock.state().sends - before, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_graceful_restart() {
    let c = cert();
    let mock = Mock::start(&c, local()).await;
    let addr = mock.addr;
    let mut cfg = config(addr, &c);
    cfg.connect_timeout = Duration::from_millis(500);
    cfg.request_timeout = Duration::from_secs(1);
    let client = Client::connect(cfg).await.unwrap();
    assert_eq!(client.generation(), 1);
    let producer = Producer::new(client.clone(), ProducerOptions::default());
    producer.send(Message::new("demo", "before")).await.unwrap();

    mock.stop().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Broker down: requests keep reconnecting (one attempt at a time for all of them, with
    // back-off) until their own timeout, then fail with Unreachable, not one connect
    // timeout after the other.
    let started = std::time::Instant::now();
    let waiting: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.request(Request::TopicList(cmd::TopicList)).await })
        })
        .collect();
    for w in waiting {
        let e = w.await.unwrap().unwrap_err();
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e:?}");
        assert!(e.is_retryable());
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1800),
        "{took:?}"
    );

    // A send started while the broker is down succeeds once it is back within the send
    // timeout, on the same producer and client.
    let send = tokio::spawn({
        let producer = producer.clone();
        async move { producer.send(Message::new("demo", "after")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mock = Mock::start(&c, addr).await;
    let r = send.await.unwrap().unwrap();
    assert_eq!(r.queue_offset, 0, "a fresh mock");
    assert_eq!(mock.state().hellos, 1);
    assert_eq!(mock.state().before_hello, 0);
    assert_eq!(client.generation(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_retried_with_back_off() {
    let c = cert();
    let mock = Mock::start(&c, local()).await;
    let client = Client::connect(config(mock.addr, &c)).await.unwrap();
    // The broker restarts and refuses the first two connections (at its limit while many
    // clients reconnect): the request still gets through, after back-off.
    let (addr, state) = (mock.addr, mock.state.clone());
    mock.stop().await;
    state.lock().unwrap().refuse = 2;
    let mock = Mock::start_with(&c, addr, state).await;
    let started = std::time::Instant::now();
    client
        .request(Request::TopicList(cmd::TopicList))
        .await
        .unwrap();
    // Two failed attempts: waits of 50 to 100 ms, then 100 to 200 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(mock.state().refuse, 0);
    assert_eq!(client.generation(), 2);
    // A refused first connection is a clear, retryable error.
    mock.state().refuse = u32::MAX;
    let e = Client::connect(config(addr, &c)).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Unreachable { reason, .. } if reason.contains("refused")),
        "{e:?}"
    );
    assert!(e.is_retryable());
}

/// A UDP relay whose target can be switched, to make a broker vanish without closing.
struct Relay {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let front = Arc::new(tokio::net::UdpSocket::bind(local()).await.unwrap());
        let back = Arc::new(tokio::net::UdpSocket::bind(local()).await.unwrap());
        let target = Arc::new(Mutex::new(target));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (f, b, t, cl) = (front.clone(), back.clone(), target.clone(), client.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = f.recv_from(&mut buf).await {
                *cl.lock().unwrap() = Some(from);
                let to = *t.lock().unwrap();
                let _ = b.send_to(&buf[..n], to).await;
            }
        });
        let (f, b, t) = (front.clone(), back, target.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = b.recv_from(&mut buf).await {
                let to = *client.lock().unwrap();
                let current = *t.lock().unwrap();
                if let (Some(to), true) = (to, from == current) {
                    let _ = f.send_to(&buf[..n], to).await;
                }
            }
        });
        Relay {
            addr: front.local_addr().unwrap(),
            target,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_silent_broker_death() {
    let c = cert();
    let old = Mock::start(&c, local()).await;
    let relay = Relay::start(old.addr).await;
    // A 5 s request timeout and a 3 s send timeout (the defaults), a 1 s liveness timeout.
    // The mock brokers do not share a stateless-reset key (a real broker restarted on its
    // data directory does), so only the liveness check can notice the switch.
    let mut cfg = config(relay.addr, &c);
    cfg.liveness_timeout = Duration::from_secs(1);
    let client = Client::connect(cfg).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerOptions::default());
    producer.send(Message::new("demo", "first")).await.unwrap();

    // The broker "restarts" without a word (kill -9): packets of the old connection now
    // reach a new process that cannot read them. A request in flight fails quickly with
    // ConnectionLost, not after its 5 s timeout.
    let new = Mock::start(&c, local()).await;
    *relay.target.lock().unwrap() = new.addr;
    let started = std::time::Instant::now();
    let e = client
        .request(Request::TopicList(cmd::TopicList))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::ConnectionLost(m) if m.contains("acknowledged nothing")),
        "{e:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    // The next request reconnects.
    client
        .request(Request::TopicList(cmd::TopicList))
        .await
        .unwrap();
    assert_eq!(new.state().hellos, 1);
    assert_eq!(client.generation(), 2);

    // Again, under a send: the producer notices, reconnects and retries within its 3 s.
    let third = Mock::start(&c, local()).await;
    *relay.target.lock().unwrap() = third.addr;
    let started = std::time::Instant::now();
    let r = producer.send(Message::new("demo", "second")).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!((r.queue_offset, third.state().hellos), (0, 1));
    assert_eq!(client.generation(), 3);
    drop((old, new));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_consumer_rejoins_and_recommits_after_a_restart() {
    let c = cert();
    let mock = Mock::start(&c, local()).await;
    let addr = mock.addr;
    let client = Client::connect(config(addr, &c)).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerOptions::default());
    for i in 0..12 {
        producer
            .send(Message::new("demo", format!("a{i}")))
            .await
            .unwrap();
    }
    let seen: Seen = Arc::default();
    let mut opts = PushConsumerOptions::new("r");
    opts.consume_from = ConsumeFrom::First;
    opts.long_poll = Duration::from_millis(100);
    opts.commit_interval = Duration::from_millis(50);
    let consumer = PushConsumer::start(
        client.clone(),
        vec!["demo".into()],
        opts,
        recording_listener(seen.clone(), Arc::default()),
    )
    .await
    .unwrap();
    let ends: Vec<Option<u64>> = queue_lens(&mock, "demo").into_iter().map(Some).collect();
    wait_until("12 consumed and committed", || {
        seen.lock().unwrap().len() == 12 && committed(&mock, "r", "demo") == ends
    })
    .await;

    // The broker restarts with its messages but without the group: membership and the last
    // commits are lost (as after a kill -9 before they were flushed).
    let state = mock.state.clone();
    mock.stop().await;
    {
        let mut s = state.lock().unwrap();
        s.offsets.clear();
        s.held.clear();
    }
    let mock = Mock::start_with(&c, addr, state).await;
    let member = consumer.member_id().to_string();
    wait_until("re-joined and offsets committed again", || {
        mock.state().held.contains_key(&member) && committed(&mock, "r", "demo") == ends
    })
    .await;
    assert!(client.generation() >= 2);
    // The same consumer goes on with new messages; nothing is consumed twice.
    for i in 0..8 {
        producer
            .send(Message::new("demo", format!("b{i}")))
            .await
            .unwrap();
    }
    wait_until("20 consumed", || seen.lock().unwrap().len() >= 20).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 20, "{got:?}");
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 20);
    consumer.shutdown().await.unwrap();
    client.close().await;
}

/// Polls `cond` every 20 ms for up to 10 s.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

type Seen = Arc<Mutex<Vec<String>>>;

/// A batch listener recording bodies; `m7` fails once and `m11` panics once.
fn recording_listener(
    seen: Seen,
    attempts: Arc<Mutex<HashMap<String, u32>>>,
) -> impl Fn(
    Vec<ReceivedMessage>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ConsumeResult> + Send>>
       + Send
       + Sync
       + 'static {
    move |batch| {
        let (seen, attempts) = (seen.clone(), attempts.clone());
        Box::pin(async move {
            for m in &batch {
                let body = String::from_utf8(m.body.to_vec()).unwrap();
                let n = {
                    let mut a = attempts.lock().unwrap();
                    let e = a.entry(body.clone()).or_insert(0);
                    *e += 1;
                    *e
                };
                if body == "m7" && n == 1 {
                    return ConsumeResult::ReconsumeLater;
                }
                if body == "m11" && n == 1 {
                    panic!("listener panic expected by the test");
                }
            }
            seen.lock().unwrap().extend(
                batch
                    .iter()
                    .map(|m| String::from_utf8(m.body.to_vec()).unwrap()),
            );
            ConsumeResult::Success
        })
    }
}

fn queue_lens(mock: &Mock, topic: &str) -> Vec<u64> {
    let s = mock.state();
    (0..QUEUES)
        .map(|q| {
            s.queues
                .get(&(topic.to_string(), q))
                .map_or(0, |v| v.len() as u64)
        })
        .collect()
}

fn committed(mock: &Mock, group: &str, topic: &str) -> Vec<Option<u64>> {
    let s = mock.state();
    (0..QUEUES)
        .map(|q| {
            s.offsets
                .get(&(group.to_string(), topic.to_string(), q))
                .copied()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_consumer_consumes_commits_releases_and_leaves() {
    let c = cert();
    let mock = Mock::start(&c, local()).await;
    let client = Client::connect(config(mock.addr, &c)).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerOptions::default());
    for i in 0..40 {
        producer
            .send(Message::new("demo", format!("m{i}")))
            .await
            .unwrap();
    }

    // Clustering, from the first message, batches of 3, one failure and one panic.
    let seen: Seen = Arc::default();
    let attempts = Arc::new(Mutex::new(HashMap::new()));
    let mut opts = PushConsumerOptions::new("g");
    opts.consume_from = ConsumeFrom::First;
    opts.batch_size = 3;
    opts.long_poll = Duration::from_millis(100);
    opts.commit_interval = Duration::from_millis(50);
    let consumer = PushConsumer::start(
        client.clone(),
        vec!["demo".into()],
        opts,
        recording_listener(seen.clone(), attempts.clone()),
    )
    .await
    .unwrap();
    assert!(consumer
        .member_id()
        .starts_with(&format!("{}-", client.config().client_id)));
    wait_until("all 40 messages", || seen.lock().unwrap().len() >= 40).await;
    {
        let mut got = seen.lock().unwrap().clone();
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 40, "each message succeeded exactly once");
        let a = attempts.lock().unwrap();
        assert!(a["m7"] >= 2 && a["m11"] >= 2, "{a:?}");
    }
    assert_eq!(consumer.owned_queues().len(), QUEUES as usize);
    let lens = queue_lens(&mock, "demo");
    wait_until("offsets committed to the queue ends", || {
        committed(&mock, "g", "demo") == lens.iter().map(|l| Some(*l)).collect::<Vec<_>>()
    })
    .await;

    // The broker takes queues 1..3 away: they are released and no longer held.
    mock.state().grant = Some(vec![("demo".to_string(), 0)]);
    let member = consumer.member_id().to_string();
    wait_until("queues released", || {
        consumer.owned_queues() == [("demo".to_string(), 0)]
            && mock.state().held.get(&member).map(Vec::as_slice)
                == Some(&[("demo".to_string(), 0)][..])
    })
    .await;
    producer
        .send_to_queue(Message::new("demo", "n0"), 0)
        .await
        .unwrap();
    producer
        .send_to_queue(Message::new("demo", "n1"), 1)
        .await
        .unwrap();
    wait_until("n0", || seen.lock().unwrap().contains(&"n0".to_string())).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!seen.lock().unwrap().contains(&"n1".to_string()));

    consumer.shutdown().await.unwrap();
    consumer.shutdown().await.unwrap();
    assert_eq!(mock.state().left, std::slice::from_ref(&member));
    assert_eq!(committed(&mock, "g", "demo")[0], Some(lens[0] + 1));
    mock.state().grant = None;

    // A new group starting from Last pins the queue ends and sees only later messages.
    let seen2: Seen = Arc::default();
    let s2 = seen2.clone();
    let mut opts = PushConsumerOptions::new("g2");
    opts.long_poll = Duration::from_millis(100);
    let last = PushConsumer::start_single(client.clone(), vec!["demo".into()], opts, move |m| {
        let s2 = s2.clone();
        async move {
            s2.lock()
                .unwrap()
                .push(String::from_utf8(m.body.to_vec()).unwrap());
            Ok::<(), String>(())
        }
    })
    .await
    .unwrap();
    let ends: Vec<Option<u64>> = queue_lens(&mock, "demo").into_iter().map(Some).collect();
    wait_until("start offsets pinned", || {
        committed(&mock, "g2", "demo") == ends
    })
    .await;
    producer
        .send_to_queue(Message::new("demo", "late"), 2)
        .await
        .unwrap();
    wait_until("late", || !seen2.lock().unwrap().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(*seen2.lock().unwrap(), ["late"]);
    last.shutdown().await.unwrap();

    // Broadcasting keeps its offsets in a local file and resumes from it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.json");
    let seen3: Seen = Arc::default();
    let mut opts = PushConsumerOptions::new("b");
    opts.mode = GroupMode::Broadcasting;
    opts.consume_from = ConsumeFrom::First;
    opts.long_poll = Duration::from_millis(100);
    opts.offset_store_path = Some(path.clone());
    let total: u64 = queue_lens(&mock, "demo").iter().sum();
    let bc = PushConsumer::start(
        client.clone(),
        vec!["demo".into()],
        opts.clone(),
        recording_listener(seen3.clone(), Arc::default()),
    )
    .await
    .unwrap();
    wait_until("broadcast consumption", || {
        seen3.lock().unwrap().len() as u64 >= total
    })
    .await;
    bc.shutdown().await.unwrap();
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(file["group"], "b");
    let stored: u64 = file["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .sum();
    assert_eq!(stored, total);
    assert!(committed(&mock, "b", "demo").iter().all(Option::is_none));
    let seen4: Seen = Arc::default();
    let again = PushConsumer::start(
        client.clone(),
        vec!["demo".into()],
        opts,
        recording_listener(seen4.clone(), Arc::default()),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(again.owned_queues().len(), QUEUES as usize);
    assert!(
        seen4.lock().unwrap().is_empty(),
        "resumed after the stored offsets"
    );
    again.shutdown().await.unwrap();

    // kill: no commit, no leave; shutdown afterwards does nothing.
    let killed = PushConsumer::start(
        client.clone(),
        vec!["demo".into()],
        PushConsumerOptions::new("k"),
        |_batch| async { ConsumeResult::Success },
    )
    .await
    .unwrap();
    wait_until("k owns its queues", || {
        killed.owned_queues().len() == QUEUES as usize
    })
    .await;
    killed.kill();
    assert!(killed.owned_queues().is_empty());
    killed.shutdown().await.unwrap();
    assert!(!mock.state().left.contains(&killed.member_id().to_string()));

    // Admin group calls.
    let admin = Admin::new(client.clone());
    let groups = admin.list_groups().await.unwrap();
    assert_eq!(groups[0].mode, GroupMode::Broadcasting);
    let d = admin.describe_group("g").await.unwrap();
    assert_eq!((d.name.as_str(), d.mode), ("g", GroupMode::Clustering));
    admin
        .reset_group_offset("g", "demo", ResetTarget::First, true)
        .await
        .unwrap();
    assert_eq!(
        committed(&mock, "g", "demo"),
        vec![Some(0); QUEUES as usize]
    );
    admin.delete_group("g", false).await.unwrap();
    assert_eq!(committed(&mock, "g", "demo"), vec![None; QUEUES as usize]);
    assert!(matches!(
        admin.delete_group("bad group", false).await,
        Err(ClientError::InvalidArgument(_))
    ));
    client.close().await;
}
