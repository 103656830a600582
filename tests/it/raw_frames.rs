//! Bad input straight off the wire: raw QUIC streams with hand-made frames. Each gets an error
//! status (or a clean close), and the broker keeps serving well-behaved clients.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use quiver_client::{Message, Producer, ProducerOptions};
use quiver_protocol::{cmd, decode_error, split_frame, Command, Request, Status, PROTOCOL_VERSION};

use crate::harness::TestBroker;

struct Raw {
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

impl Raw {
    async fn connect(broker: &TestBroker) -> Raw {
        let s = broker.server();
        let (endpoint, conn) = crate::harness::raw_connection(s.addr, &s.fingerprint).await;
        Raw {
            conn,
            _endpoint: endpoint,
        }
    }

    /// Sends raw bytes on a new stream and returns (status, echoed command, body).
    async fn exchange(&self, bytes: &[u8]) -> (Status, u16, Bytes) {
        let (mut send, mut recv) = self.conn.open_bi().await.unwrap();
        send.write_all(bytes).await.unwrap();
        let _ = send.finish();
        let resp = tokio::time::timeout(Duration::from_secs(15), recv.read_to_end(1 << 20))
            .await
            .expect("the broker answers")
            .expect("response readable");
        let (h, body) =
            split_frame(&Bytes::from(resp), 1 << 20).expect("a well-formed response frame");
        (Status::from_u16(h.code), h.aux, body)
    }

    async fn hello(&self) {
        let hello = Request::Hello(cmd::Hello {
            version: PROTOCOL_VERSION,
            client_id: "raw".into(),
        })
        .encode();
        let (status, _, _) = self.exchange(&hello).await;
        assert_eq!(status, Status::Ok);
    }
}

fn frame(code: u16, body: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32_le(4 + body.len() as u32);
    b.put_u16_le(code);
    b.put_u16_le(0);
    b.put_slice(body);
    b.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_error_statuses_and_the_broker_keeps_serving() {
    let broker = TestBroker::start().await;
    let raw = Raw::connect(&broker).await;

    // Requests before the handshake are refused.
    let list = Request::TopicList(cmd::TopicList).encode();
    let (status, cmd, body) = raw.exchange(&list).await;
    assert_eq!(
        (status, cmd),
        (Status::HandshakeRequired, Command::TopicList as u16)
    );
    assert!(decode_error(body).contains("Hello"));

    // A wrong protocol version is named.
    let old = Request::Hello(cmd::Hello {
        version: 99,
        client_id: "old".into(),
    })
    .encode();
    let (status, _, body) = raw.exchange(&old).await;
    assert_eq!(status, Status::UnsupportedVersion);
    assert!(decode_error(body).contains("99"));
    raw.hello().await;

    // Unknown command.
    let (status, cmd, _) = raw.exchange(&frame(999, b"")).await;
    assert_eq!((status, cmd), (Status::UnknownCommand, 999));

    // Oversized: the header announces more than the broker accepts.
    let mut huge = frame(Command::Send as u16, b"");
    huge[0..4].copy_from_slice(&(1u32 << 31).to_le_bytes());
    let (status, _, body) = raw.exchange(&huge).await;
    assert_eq!(status, Status::FrameTooLarge, "{}", decode_error(body));

    // Truncated: the header announces 100 body bytes, 10 arrive, then the stream ends.
    let mut short = frame(Command::Send as u16, &[0u8; 10]);
    short[0..4].copy_from_slice(&104u32.to_le_bytes());
    let (status, _, body) = raw.exchange(&short).await;
    assert_eq!(status, Status::BadRequest);
    assert!(decode_error(body).contains("truncated"));

    // Garbage body for a known command.
    let (status, _, _) = raw
        .exchange(&frame(Command::Send as u16, &[0xff; 40]))
        .await;
    assert_eq!(status, Status::BadRequest);

    // Below the minimum length.
    let (status, _, _) = raw.exchange(&[2, 0, 0, 0, 0, 0, 0, 0]).await;
    assert_eq!(status, Status::BadRequest);

    // Trailing bytes after a valid body.
    let mut trailing = Request::TopicList(cmd::TopicList).encode().to_vec();
    trailing.extend_from_slice(b"xx");
    let len = (trailing.len() - 4) as u32;
    trailing[0..4].copy_from_slice(&len.to_le_bytes());
    let (status, _, _) = raw.exchange(&trailing).await;
    assert_eq!(status, Status::BadRequest);

    // The broker checks names itself, whatever a client does.
    let bad_name = Request::TopicCreate(cmd::TopicCreate {
        topic: "../../etc".into(),
        queues: 1,
    })
    .encode();
    let (status, _, body) = raw.exchange(&bad_name).await;
    assert_eq!(status, Status::InvalidName, "{}", decode_error(body));
    let reserved = Request::Send(cmd::Send {
        topic: "t".into(),
        queue_id: 0,
        messages: vec![quiver_protocol::WireMessage {
            id: 1,
            born_timestamp: 0,
            flags: 0,
            tag: String::new(),
            keys: vec![],
            properties: vec![("UNIQ_KEY".into(), "x".into())],
            body: Bytes::from_static(b"x"),
        }],
    })
    .encode();
    let (status, _, _) = raw.exchange(&reserved).await;
    assert_eq!(status, Status::ReservedProperty);
    let (status, _, _) = raw
        .exchange(
            &Request::Send(cmd::Send {
                topic: "t".into(),
                queue_id: 0,
                messages: vec![],
            })
            .encode(),
        )
        .await;
    assert_eq!(status, Status::InvalidMessage);

    // Through all of that, a normal client is served.
    let producer = Producer::new(broker.client().await, ProducerOptions::default());
    producer
        .send(Message::new("still-ok", "fine"))
        .await
        .expect("broker still serves");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused_cleanly() {
    let temp = tempfile::tempdir().unwrap();
    let mut cfg = crate::harness::test_config(temp.path());
    cfg.broker.max_connections = 2;
    let broker = TestBroker::start_with(cfg).await;
    let a = broker.client().await;
    let b = broker.client().await;
    let mut third = broker.client_config();
    third.connect_timeout = Duration::from_secs(2);
    assert!(
        quiver_client::Client::connect(third).await.is_err(),
        "the third connection is refused"
    );
    for c in [&a, &b] {
        let p = Producer::new(c.clone(), ProducerOptions::default());
        p.send(Message::new("limits", "x"))
            .await
            .expect("admitted clients keep working");
    }
    broker.stop().await;
}
