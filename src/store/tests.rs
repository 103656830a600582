//! Store behaviour as users see it: round trips, rollover, rebuild, lookups, recovery,
//! retention, limits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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

fn read_all(store: &Store, topic: &str, queue: u32) -> Vec<(u64, u128, Vec<u8>)> {
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
            (0u32..3, proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..6)),
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

fn last_segment(dir: &std::path::Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(dir.join("commitlog"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

#[test]
fn torn_tail_is_truncated_and_reported_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig::small_for_tests(dir.path());
    let (end, last_len);
    {
        let store = Store::open(cfg.clone()).unwrap();
        let mut last = None;
        for i in 0..10u128 {
            last = Some(
                append(&store, "T", 0, &[Msg::new(i, &[9u8; 100])])
                    .unwrap()
                    .results[0],
            );
        }
        end = store.log_offsets().1;
        last_len = last.unwrap().size as usize;
        store.simulate_crash();
    }
    // A half-written record after the valid end: the start of a real record (plausible
    // header), cut short by the crash.
    let seg = last_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = (end % cfg.segment_size) as usize;
    let copy: Vec<u8> = bytes[at - last_len..at - last_len + 150].to_vec();
    bytes[at..at + 150].copy_from_slice(&copy);
    std::fs::write(&seg, bytes).unwrap();

    let store = Store::open(cfg).unwrap();
    let rep = store.recovery_report();
    assert!(rep.unclean);
    let (cut, reason) = rep.truncated_at.clone().expect("torn tail reported");
    assert_eq!(cut, end, "{reason}");
    assert_eq!(read_all(&store, "T", 0).len(), 10);
    let a = append(&store, "T", 0, &[Msg::new(99, b"after")]).unwrap();
    assert_eq!(a.results[0].queue_offset, 10);
    assert_eq!(
        a.results[0].phys_offset, end,
        "the torn bytes were overwritten"
    );
    assert_eq!(read_all(&store, "T", 0)[10].2, b"after");
}

#[test]
fn a_batch_cut_by_a_crash_disappears_entirely() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig::small_for_tests(dir.path());
    let batch_end;
    {
        let store = Store::open(cfg.clone()).unwrap();
        append(&store, "T", 0, &[Msg::new(1, b"single")]).unwrap();
        store.close().unwrap();
        let store = Store::open(cfg.clone()).unwrap();
        let batch: Vec<Msg> = (10..14).map(|i| Msg::new(i, &[3u8; 200])).collect();
        batch_end = append(&store, "T", 0, &batch).unwrap().end;
        store.simulate_crash();
    }
    // Damage the last record of the batch: the three before it are valid but must go too.
    let seg = last_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = (batch_end % cfg.segment_size) as usize - 5;
    bytes[at] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    let store = Store::open(cfg).unwrap();
    assert_eq!(
        store
            .recovery_report()
            .truncated_at
            .as_ref()
            .map(|t| t.1.as_str()),
        Some("incomplete batch")
    );
    let got = read_all(&store, "T", 0);
    assert_eq!(got.len(), 1, "only the single message survives");
    assert_eq!(
        append(&store, "T", 0, &[Msg::new(2, b"x")])
            .unwrap()
            .results[0]
            .queue_offset,
        1
    );
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
fn sync_mode_group_commit_acks_concurrent_writers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::small_for_tests(dir.path());
    cfg.flush_mode = FlushMode::Sync;
    let store = Arc::new(Store::open(cfg).unwrap());
    let threads: Vec<_> = (0..8u128)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..50u128 {
                    let a = append(&store, "T", 0, &[Msg::new(t * 1000 + i, b"durable")]).unwrap();
                    let (_, _, flushed) = store.log_offsets();
                    assert!(flushed >= a.end, "acked only once flushed");
                    let (_, max) = store.queue_bounds("T", 0);
                    assert!(max > a.results[0].queue_offset, "readable once acked");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let got = read_all(&store, "T", 0);
    assert_eq!(got.len(), 400);
    assert!(got.iter().enumerate().all(|(i, (o, _, _))| *o == i as u64));
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
fn disk_above_the_watermark_refuses_writes_with_a_retryable_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::small_for_tests(dir.path());
    cfg.disk_high_watermark = 0.0;
    cfg.disk_clean_watermark = 0.0;
    let store = Store::open(cfg).unwrap();
    let err = append(&store, "T", 0, &[Msg::new(1, b"x")]).unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("watermark"), "{err}");
}

#[test]
fn retention_deletes_old_segments_and_reports_unconsumed_losses() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::small_for_tests(dir.path());
    cfg.retention_hours = 1;
    cfg.disk_clean_watermark = 1.0;
    cfg.disk_high_watermark = 1.0;
    let store = Store::open(cfg).unwrap();
    let body = vec![0u8; 1000];
    for i in 0..300u128 {
        append(&store, "T", (i % 2) as u32, &[Msg::new(i, &body)]).unwrap();
    }
    // Queue 0 consumed up to 20, queue 1 fully consumed.
    store.set_consumer_progress(Arc::new(|_t: &str, q: u32| {
        Some(if q == 0 { 20 } else { 150 })
    }));
    let old = SystemTime::now() - Duration::from_secs(2 * 3600);
    let mut segs: Vec<_> = std::fs::read_dir(dir.path().join("commitlog"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    for seg in &segs[..2] {
        std::fs::File::options()
            .write(true)
            .open(seg)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let report = store.run_retention(true).unwrap();
    assert_eq!(
        report.deleted_segments.len(),
        2,
        "only the two old segments go"
    );
    let (min0, _) = store.queue_bounds("T", 0);
    assert!(min0 > 20);
    assert_eq!(
        report.lost,
        vec![LostMessages {
            topic: "T".into(),
            queue_id: 0,
            count: min0 - 20
        }]
    );
    assert_eq!(store.lost_messages(), report.lost);
    let r = store
        .get_messages("T", 0, 0, ReadLimits::new(10, 1 << 20, 100), |_| true)
        .unwrap();
    assert_eq!((r.status, r.next_offset), (GetStatus::OffsetTooSmall, min0));
    assert_eq!(read_all(&store, "T", 0).first().map(|m| m.0), Some(min0));
    assert!(
        store.message_by_id(0).unwrap().is_none(),
        "deleted messages are gone from lookups"
    );
    assert!(store.message_by_id(299).unwrap().is_some());
}

#[test]
fn reopen_after_crash_keeps_everything_acked_in_sync_mode() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::small_for_tests(dir.path());
    cfg.flush_mode = FlushMode::Sync;
    {
        let store = Store::open(cfg.clone()).unwrap();
        for i in 0..100u128 {
            append(&store, "T", (i % 3) as u32, &[Msg::new(i, &[1u8; 700])]).unwrap();
        }
        store.simulate_crash();
    }
    let store = Store::open(cfg).unwrap();
    assert!(store.recovery_report().unclean);
    let total: usize = (0..3).map(|q| read_all(&store, "T", q).len()).sum();
    assert_eq!(total, 100);
    for i in 0..100u128 {
        assert!(
            store.message_by_id(i).unwrap().is_some(),
            "id {i} findable after recovery"
        );
    }
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
