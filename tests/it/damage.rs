//! Damage below the checkpoint, through a real broker: files of a stopped broker are damaged
//! (consume queue, commit-log record, index), the broker starts again over them, and a
//! consumer over QUIC gets every acknowledged message back (a damaged commit-log record is
//! passed over visibly, never a stuck consumer); lookups by id and key work again.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use quiver_client::{
    Admin, Message, Producer, ProducerOptions, PullConsumer, PullOptions, PullStatus,
};

use crate::harness::{test_config, TestBroker};

fn damage(file: &Path, at: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

/// Every message of queue 0 from offset 0, as (queue offset, body).
async fn pull_queue(consumer: &PullConsumer, topic: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut offset = 0;
    for _ in 0..1000 {
        let r = consumer
            .pull(topic, 0, offset, PullOptions::default())
            .await
            .expect("pull never fails on damage");
        for m in &r.messages {
            out.push((
                m.queue_offset,
                String::from_utf8_lossy(&m.body).into_owned(),
            ));
        }
        if r.next_offset >= r.max_offset {
            return out;
        }
        assert!(
            r.next_offset > offset,
            "consumer stuck at {offset}: {:?}",
            r.status
        );
        offset = r.next_offset;
    }
    panic!("too many pulls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_over_damaged_files_serves_every_acknowledged_message() {
    let temp = tempfile::tempdir().unwrap();
    let cfg = test_config(temp.path());
    let broker = TestBroker::start_with(cfg.clone()).await;
    let client = broker.client().await;
    Admin::new(client.clone())
        .create_topic("dmg", 1)
        .await
        .unwrap();
    let producer = Producer::new(client.clone(), ProducerOptions::default());
    let mut sent = Vec::new();
    for i in 0..500 {
        sent.push(
            producer
                .send(Message::new("dmg", format!("message {i}")).with_key(format!("k{i}")))
                .await
                .unwrap(),
        );
    }
    let victim = &sent[123];
    assert_eq!(victim.queue_offset, 123);
    client.close().await;
    broker.server.expect("running").stop().await.unwrap();

    let store = temp.path().join("store");
    // (a) 100 garbage bytes at entry 250 of the consume queue: where recovery's search for
    // the queue's end looks (1000 entries per file).
    let cq = store.join("consumequeue/dmg/0/00000000000000000000");
    let junk: Vec<u8> = (0..100u32).map(|i| (i * 37 + 11) as u8 | 1).collect();
    damage(&cq, 250 * 20, &junk);
    // (e) One byte of message 123's record in the commit log (in its msg_id: the header still
    // names its queue and offset, the CRC fails).
    let seg_size = cfg.store.segment_size;
    let seg = store.join("commitlog").join(format!(
        "{:020}",
        victim.commit_log_offset - victim.commit_log_offset % seg_size
    ));
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[(victim.commit_log_offset % seg_size) as usize + 80] ^= 0x40;
    std::fs::write(&seg, bytes).unwrap();

    // (d) Every index file's header loses its magic.
    for f in std::fs::read_dir(store.join("index")).unwrap() {
        damage(&f.unwrap().path(), 0, b"JUNK");
    }

    let broker = TestBroker::start_with(cfg).await;
    let client = broker.client().await;
    let consumer = PullConsumer::new(client.clone());
    let got = tokio::time::timeout(Duration::from_secs(30), pull_queue(&consumer, "dmg"))
        .await
        .expect("the consumer finishes");
    let want: Vec<(u64, String)> = (0..500u64)
        .filter(|o| *o != 123)
        .map(|o| (o, format!("message {o}")))
        .collect();
    assert_eq!(got.len(), 499, "every message but the damaged one");
    assert_eq!(got, want);
    // A pull that starts on the damaged record gets the next message.
    let r = consumer
        .pull(
            "dmg",
            0,
            123,
            PullOptions {
                max_messages: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // The gap between the offset asked for and the first record's is how it shows.
    let offsets: Vec<u64> = r.messages.iter().map(|m| m.queue_offset).collect();
    assert_eq!(
        (r.status, offsets, r.next_offset),
        (PullStatus::Found, vec![124], 125)
    );
    // Producing continues the queue: no queue offset is used twice.
    let producer = Producer::new(client.clone(), ProducerOptions::default());
    let next = producer.send(Message::new("dmg", "after")).await.unwrap();
    assert_eq!(next.queue_offset, 500);
    // The index was rebuilt: lookups by id and by key find the messages.
    let admin = Admin::new(client.clone());
    for i in [0usize, 250, 499] {
        let m = admin.message_by_id(sent[i].msg_id).await.unwrap();
        assert_eq!(
            m.map(|m| m.queue_offset),
            Some(i as u64),
            "message {i} by id"
        );
        let by_key = admin
            .query_by_key("dmg", &format!("k{i}"), 4)
            .await
            .unwrap();
        assert_eq!(by_key.len(), 1, "message {i} by key");
    }
    let stats = broker.server().broker().store().damage_stats();
    assert_eq!(stats.unreadable_records, 1);
    assert!(stats.repaired_entries >= 5, "{stats:?}");
    assert!(stats.rebuilt_index_files >= 1, "{stats:?}");
    client.close().await;
    broker.stop().await;
}
