//! Store behaviour as users see it: round trips, rollover, rebuild, lookups, limits. Tests of
//! one part live beside it (recovery.rs, dispatch.rs, flush.rs, retention.rs) and share the
//! helpers here.

use std::net::SocketAddr;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn host() -> SocketAddr {
    "127.0.0.1:5000".parse().unwrap()
}

pub(super) struct Msg {
    id: u128,
    tag: String,
    keys: Vec<String>,
    props: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Msg {
    pub(super) fn new(id: u128, body: &[u8]) -> Self {
        Msg {
            id,
            tag: format!("tag{}", id % 3),
            keys: vec![format!("key-{id}"), "common".into()],
            props: vec![("n".into(), id.to_string())],
            body: body.to_vec(),
        }
    }
}

pub(super) fn append(
    store: &Store,
    topic: &str,
    queue: u32,
    msgs: &[Msg],
) -> Result<Appended, StoreError> {
    let keys: Vec<Vec<&str>> = msgs
        .iter()
        .map(|m| m.keys.iter().map(|k| k.as_str()).collect())
        .collect();
    let props: Vec<Vec<(&str, &str)>> = msgs
        .iter()
        .map(|m| {
            m.props
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect()
        })
        .collect();
    let new: Vec<NewMessage<'_>> = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| NewMessage {
            msg_id: m.id,
            flags: 0,
            born_timestamp: 1,
            born_host: host(),
            reconsume_times: 0,
            tag: &m.tag,
            keys: &keys[i],
            properties: &props[i],
            body: &m.body,
        })
        .collect();
    store.append(topic, queue, &new)?.wait()
}

pub(super) fn read_all(store: &Store, topic: &str, queue: u32) -> Vec<(u64, u128, Vec<u8>)> {
    let mut out = Vec::new();
    let mut off = store.queue_bounds(topic, queue).0;
    loop {
        let r = store
            .get_messages(
                topic,
                queue,
                off,
                ReadLimits::new(32, 1 << 20, 1000),
                |_| true,
            )
            .expect("read");
        if r.messages.is_empty() {
            return out;
        }
        for m in &r.messages {
            let v = m.view();
            assert_eq!(
                v.queue_offset(),
                m.queue_offset,
                "record knows its queue offset"
            );
            out.push((m.queue_offset, v.msg_id(), v.body().to_vec()));
        }
        off = r.next_offset;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn any_sequence_of_batches_round_trips_across_rollover_and_reopen(
        batches in proptest::collection::vec(
            // Up to 11 bodies of up to 3000 bytes: batches on both sides of the 16 KiB
            // `pwrite` threshold (commitlog.rs), in 64 KiB segments.
            (0u32..3, proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..12)),
            1..25),
        sync in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::small_for_tests(dir.path());
        cfg.flush_mode = if sync { FlushMode::Sync } else { FlushMode::Async };
        let mut expected: Vec<Vec<(u64, u128, Vec<u8>)>> = vec![Vec::new(); 3];
        let mut id = 0u128;
        {
            let store = Store::open(cfg.clone()).unwrap();
            for (queue, bodies) in &batches {
                let msgs: Vec<Msg> = bodies.iter().map(|b| { id += 1; Msg::new(id, b) }).collect();
                let a = append(&store, "T", *queue, &msgs).unwrap();
                // contiguous and atomic: consecutive queue offsets, adjacent records
                for w in a.results.windows(2) {
                    prop_assert_eq!(w[1].queue_offset, w[0].queue_offset + 1);
                    prop_assert_eq!(w[1].phys_offset, w[0].phys_offset + w[0].size as u64);
                }
                for (m, r) in msgs.iter().zip(&a.results) {
                    expected[*queue as usize].push((r.queue_offset, m.id, m.body.clone()));
                }
            }
            for q in 0..3 {
                prop_assert_eq!(&read_all(&store, "T", q), &expected[q as usize]);
            }
            store.close().unwrap();
        }
        let store = Store::open(cfg).unwrap();
        for q in 0..3 {
            prop_assert_eq!(&read_all(&store, "T", q), &expected[q as usize]);
        }
    }
}

#[test]
fn rollover_spans_many_segments_and_lookups_find_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::small_for_tests(dir.path())).unwrap();
    let body = vec![7u8; 1000];
    for i in 0..400u128 {
        append(&store, "orders", (i % 4) as u32, &[Msg::new(i, &body)]).unwrap();
    }
    let segments = std::fs::read_dir(dir.path().join("commitlog"))
        .unwrap()
        .count();
    assert!(
        segments >= 6,
        "400 KB over 64 KiB segments rolls over, got {segments} segments"
    );
    for q in 0..4 {
        let got = read_all(&store, "orders", q);
        assert_eq!(got.len(), 100);
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, (o, id, _))| *o == i as u64 && *id % 4 == q as u128));
    }
    let found = store.message_by_id(123).unwrap().expect("found by id");
    assert_eq!(RecordView::parse(&found).unwrap().msg_id(), 123);
    assert!(store.message_by_id(100_000).unwrap().is_none());
    let by_key = store
        .query_by_key("orders", "key-77", 10, 0, i64::MAX)
        .unwrap();
    assert_eq!(by_key.len(), 1);
    assert_eq!(RecordView::parse(&by_key[0]).unwrap().msg_id(), 77);
    let common = store
        .query_by_key("orders", "common", 1000, 0, i64::MAX)
        .unwrap();
    assert_eq!(common.len(), 400, "a key shared by all messages finds all");
    assert!(store
        .query_by_key("other", "key-77", 10, 0, i64::MAX)
        .unwrap()
        .is_empty());
    let phys = RecordView::parse(&found).unwrap().phys_offset();
    assert_eq!(
        store.message_at(phys).unwrap(),
        found,
        "the commit-log offset is an id"
    );
    assert!(
        store.message_at(phys + 1).is_err(),
        "an offset inside a record is refused"
    );
}

#[test]
fn tag_hash_lets_reads_skip_entries_without_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::small_for_tests(dir.path())).unwrap();
    for i in 0..30u128 {
        append(&store, "T", 0, &[Msg::new(i, b"x")]).unwrap();
    }
    let want = tag_hash("tag1");
    let r = store
        .get_messages("T", 0, 0, ReadLimits::new(100, 1 << 20, 1000), |e| {
            e.tag_hash == want
        })
        .unwrap();
    assert_eq!(r.messages.len(), 10);
    assert!(r.messages.iter().all(|m| m.view().tag() == "tag1"));
    assert_eq!(r.next_offset, 30);
    let none = store
        .get_messages("T", 0, 0, ReadLimits::new(100, 1 << 20, 5), |_| false)
        .unwrap();
    assert_eq!(
        (none.status, none.next_offset),
        (GetStatus::NoMatch, 5),
        "a scan bound returns promptly with the next offset"
    );
    let end = store
        .get_messages("T", 0, 30, ReadLimits::new(100, 1 << 20, 100), |_| true)
        .unwrap();
    assert_eq!(end.status, GetStatus::NoNewMessages);
    let over = store
        .get_messages("T", 0, 31, ReadLimits::new(100, 1 << 20, 100), |_| true)
        .unwrap();
    assert_eq!(
        (over.status, over.next_offset),
        (GetStatus::OffsetOverflow, 30)
    );
    let limited = store
        .get_messages("T", 0, 0, ReadLimits::new(100, 1, 100), |_| true)
        .unwrap();
    assert_eq!(
        (limited.messages.len(), limited.next_offset),
        (1, 1),
        "byte budget stops after the first message"
    );
}

#[test]
fn consume_queues_and_index_rebuilt_from_the_log_equal_the_originals() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig::small_for_tests(dir.path());
    let body = vec![1u8; 500];
    let before;
    {
        let store = Store::open(cfg.clone()).unwrap();
        for i in 0..300u128 {
            let batch: Vec<Msg> = (0..(i % 3 + 1))
                .map(|j| Msg::new(i * 10 + j, &body))
                .collect();
            append(
                &store,
                if i % 2 == 0 { "A" } else { "B" },
                (i % 5) as u32,
                &batch,
            )
            .unwrap();
        }
        before = all_entries(&store);
        store.close().unwrap();
    }
    std::fs::remove_dir_all(dir.path().join("consumequeue")).unwrap();
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let store = Store::open(cfg).unwrap();
    assert_eq!(all_entries(&store), before);
    assert_eq!(
        store
            .query_by_key("A", "key-2980", 5, 0, i64::MAX)
            .unwrap()
            .len(),
        1
    );
}

type QueueEntries = (String, u32, Vec<(u64, CqEntry)>);

fn all_entries(store: &Store) -> Vec<QueueEntries> {
    store
        .queues()
        .into_iter()
        .map(|(t, q, min, max)| {
            let e = store.read_entries(&t, q, min, (max - min) as usize);
            (t, q, e)
        })
        .collect()
}

#[test]
fn offset_for_timestamp_finds_first_message_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::small_for_tests(dir.path())).unwrap();
    let mut stamps = Vec::new();
    for i in 0..5u128 {
        let a = append(&store, "T", 0, &[Msg::new(i, b"x")]).unwrap();
        stamps.push(a.store_timestamp);
        std::thread::sleep(Duration::from_millis(3));
    }
    assert_eq!(store.offset_for_timestamp("T", 0, 0).unwrap(), 0);
    assert_eq!(store.offset_for_timestamp("T", 0, stamps[2]).unwrap(), 2);
    assert_eq!(
        store.offset_for_timestamp("T", 0, stamps[2] + 1).unwrap(),
        3
    );
    assert_eq!(store.offset_for_timestamp("T", 0, i64::MAX).unwrap(), 5);
}

#[test]
fn a_corrupt_byte_in_a_sealed_segment_is_skipped_and_counted_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig::small_for_tests(dir.path());
    {
        let store = Store::open(cfg.clone()).unwrap();
        for i in 0..200u128 {
            append(&store, "T", 0, &[Msg::new(i, &[5u8; 1000])]).unwrap();
        }
        store.close().unwrap();
    }
    let first = dir.path().join("commitlog").join("00000000000000000000");
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[3000] ^= 0x10;
    std::fs::write(&first, bytes).unwrap();
    let store = Store::open(cfg).unwrap();
    // The damaged record (the third, at about 2 × 1,100 bytes) is passed over, visibly.
    let mut off = 0;
    let mut skipped = 0;
    let mut ids = Vec::new();
    while off < 200 {
        let r = store
            .get_messages("T", 0, off, ReadLimits::new(32, 1 << 20, 1000), |_| true)
            .expect("reads never fail on a damaged record");
        skipped += r.skipped;
        ids.extend(r.messages.iter().map(|m| m.view().msg_id()));
        off = r.next_offset;
    }
    assert_eq!(skipped, 1);
    assert_eq!(ids, (0..200u128).filter(|i| *i != 2).collect::<Vec<_>>());
    assert_eq!(store.damage_stats().unreadable_records, 1);
}

#[test]
fn limits_and_bad_input_give_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::small_for_tests(dir.path());
    cfg.max_message_size = 1000;
    let store = Store::open(cfg).unwrap();
    let err = append(&store, "T", 0, &[Msg::new(1, &[0u8; 1001])]).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::MessageTooLarge {
                size: 1001,
                max: 1000
            }
        ),
        "{err}"
    );
    assert!(matches!(
        store.append("T", 0, &[]),
        Err(StoreError::InvalidMessage(_))
    ));
    let batch: Vec<Msg> = (0..80).map(|i| Msg::new(i, &[0u8; 1000])).collect();
    let err = append(&store, "T", 0, &batch).unwrap_err();
    assert!(matches!(err, StoreError::BatchTooLarge { .. }), "{err}");
    assert_eq!(
        store.queue_bounds("T", 0),
        (0, 0),
        "nothing of a refused batch is stored"
    );
    assert!(matches!(
        Store::open(StoreConfig::small_for_tests(dir.path())),
        Err(StoreError::Locked(_))
    ));
}

#[test]
fn a_deleted_topic_is_unreadable_and_a_recreated_one_continues_its_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig::small_for_tests(dir.path());
    let store = Store::open(cfg.clone()).unwrap();
    for i in 0..10u128 {
        append(&store, "T", 0, &[Msg::new(i, b"old")]).unwrap();
    }
    assert_eq!(store.delete_topic("T").unwrap(), 10);
    assert_eq!(store.queue_bounds("T", 0), (0, 0));
    assert!(read_all(&store, "T", 0).is_empty());
    let a = append(&store, "T", 0, &[Msg::new(100, b"new")]).unwrap();
    assert_eq!(a.results[0].queue_offset, 10, "offsets are not reused");
    assert_eq!(store.queue_bounds("T", 0), (10, 11));
    assert_eq!(read_all(&store, "T", 0), vec![(10, 100, b"new".to_vec())]);
    store.close().unwrap();
    drop(store);
    let store = Store::open(cfg).unwrap();
    assert_eq!(
        store.queue_bounds("T", 0),
        (10, 11),
        "the minimum survives a restart"
    );
    assert_eq!(read_all(&store, "T", 0), vec![(10, 100, b"new".to_vec())]);
}
