//! Damage to files below the checkpoint (issue 12, item 2): real files of a closed store are
//! damaged, the store is opened again, and every acknowledged message must be served again
//! (or, for a damaged commit-log record, skipped visibly and reported once).

use std::io::{Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;

fn host() -> SocketAddr {
    "127.0.0.1:5000".parse().unwrap()
}

fn tag_of(id: u128) -> String {
    format!("tag{}", id % 3)
}

fn body_of(id: u128) -> Vec<u8> {
    format!("body of message {id}").into_bytes()
}

/// Appends message `id` (one record) to (topic, queue); returns its placement.
fn put(store: &Store, topic: &str, queue: u32, id: u128) -> PutResult {
    let tag = tag_of(id);
    let key = format!("key-{id}");
    let keys = [key.as_str(), "common"];
    let body = body_of(id);
    let m = NewMessage {
        msg_id: id,
        flags: 0,
        born_timestamp: 1,
        born_host: host(),
        reconsume_times: 0,
        tag: &tag,
        keys: &keys,
        properties: &[],
        body: &body,
    };
    store
        .append(topic, queue, &[m])
        .unwrap()
        .wait()
        .unwrap()
        .results[0]
}

/// Reads (topic, queue) from its min to its end like a consumer: every message as
/// (queue offset, topic, id, body), plus the skipped count. Fails if the reader stalls.
fn consume(store: &Store, topic: &str, queue: u32) -> (Vec<(u64, String, u128)>, u64) {
    let mut out = Vec::new();
    let mut skipped = 0;
    let (mut off, max) = store.queue_bounds(topic, queue);
    let mut rounds = 0;
    while off < max {
        rounds += 1;
        assert!(rounds < 10_000, "reader stuck at {off}");
        let r = store
            .get_messages(topic, queue, off, ReadLimits::new(16, 1 << 20, 64), |_| {
                true
            })
            .expect("read");
        skipped += r.skipped;
        for m in &r.messages {
            let v = m.view();
            assert_eq!(v.queue_offset(), m.queue_offset);
            assert_eq!(v.body(), body_of(v.msg_id()).as_slice());
            out.push((m.queue_offset, v.topic().to_string(), v.msg_id()));
        }
        assert!(r.next_offset > off, "no progress at {off}: {:?}", r.status);
        off = r.next_offset;
    }
    (out, skipped)
}

fn cq_file(dir: &Path, topic: &str, queue: u32, base: u64) -> PathBuf {
    dir.join("consumequeue")
        .join(topic)
        .join(queue.to_string())
        .join(mapped::file_name(base))
}

/// Writes `bytes` at `at` of `file` (a plain write, as a disk error or a stray tool would).
fn damage(file: &Path, at: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

/// Runs `f` with this thread's log events (ERROR and WARN) captured; returns them as text.
fn capture_logs(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let out = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || out.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buf.0.lock().unwrap().clone();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn garbage(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(37).wrapping_add(11) | 1)
        .collect()
}

/// Two topics interleaved: ids 0.. of "A" (queue 0) and 10_000.. of "B" (queue 0).
fn fill(dir: &Path, n: u128) -> (StoreConfig, Vec<PutResult>, Vec<PutResult>) {
    let cfg = StoreConfig::small_for_tests(dir);
    let store = Store::open(cfg.clone()).unwrap();
    let mut a = Vec::new();
    let mut b = Vec::new();
    for i in 0..n {
        a.push(put(&store, "A", 0, i));
        if i % 2 == 0 {
            b.push(put(&store, "B", 0, 10_000 + i));
        }
    }
    store.close().unwrap();
    (cfg, a, b)
}

fn expect_all_of_a(store: &Store, n: u128) {
    let (got, skipped) = consume(store, "A", 0);
    assert_eq!(skipped, 0);
    let want: Vec<(u64, String, u128)> = (0..n).map(|i| (i as u64, "A".to_string(), i)).collect();
    assert_eq!(got.len(), want.len(), "every acknowledged message of A");
    assert_eq!(got, want);
}

/// Ids of queue A/0's messages with tag hash `want`, read with a tag filter from offset 0 up
/// to `end`, 16 at a time.
fn ids_with_tag(store: &Store, want: u64, end: u64) -> Vec<u128> {
    let mut off = 0;
    let mut ids = Vec::new();
    while off < end {
        let r = store
            .get_messages("A", 0, off, ReadLimits::new(16, 1 << 20, 64), |e| {
                e.tag_hash == want
            })
            .unwrap();
        ids.extend(r.messages.iter().map(|m| m.view().msg_id()));
        off = r.next_offset;
    }
    ids
}

#[test]
fn garbage_where_recovery_looks_for_the_queue_end_is_repaired_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _, _) = fill(dir.path(), 500);
    // 64 entries per file: recovery's binary search over 0..512 looks at entry 256 first.
    damage(&cq_file(dir.path(), "A", 0, 256), 0, &garbage(100));
    let store = Store::open(cfg).unwrap();
    assert_eq!(store.queue_bounds("A", 0), (0, 500));
    assert!(
        store.damage_stats().repaired_entries >= 5,
        "{:?}",
        store.damage_stats()
    );
    expect_all_of_a(&store, 500);
    // The next message continues the queue: no queue offset is handed out twice.
    assert_eq!(put(&store, "A", 0, 500).queue_offset, 500);
    expect_all_of_a(&store, 501);
}

#[test]
fn garbage_in_the_middle_of_a_queue_is_repaired_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _, _) = fill(dir.path(), 500);
    // Entries 100..105 of A: not on recovery's search path, found by the reader.
    damage(
        &cq_file(dir.path(), "A", 0, 64),
        (100 - 64) * 20 + 3,
        &garbage(100),
    );
    let store = Store::open(cfg).unwrap();
    let logs = capture_logs(|| expect_all_of_a(&store, 500));
    // The ERROR names the damaged file and the byte offset of the first bad entry.
    let file = cq_file(dir.path(), "A", 0, 64);
    let line = logs
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("consume-queue entry does not match"))
        .unwrap_or_else(|| panic!("an ERROR: {logs}"));
    assert!(line.contains(&file.display().to_string()), "{line}");
    assert!(
        line.contains(&format!("offset={}", (100 - 64) * 20)),
        "{line}"
    );
    let stats = store.damage_stats();
    assert!(stats.repaired_entries >= 5, "{stats:?}");
    assert_eq!(stats.unreadable_records, 0);
    // Repaired on disk: a second store sees intact entries without repairing again.
    drop(store);
    let store = Store::open(StoreConfig::small_for_tests(dir.path())).unwrap();
    expect_all_of_a(&store, 500);
    assert_eq!(store.damage_stats().repaired_entries, 0);
}

#[test]
fn an_entry_pointing_at_another_topics_record_never_leaks_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, a, b) = fill(dir.path(), 200);
    // Entry 10 of A now points at B's record 10 (a valid record of another topic).
    let e = CqEntry {
        phys_offset: b[10].phys_offset,
        size: b[10].size,
        tag_hash: 0,
    };
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&e.phys_offset.to_le_bytes());
    bytes.extend_from_slice(&e.size.to_le_bytes());
    bytes.extend_from_slice(&e.tag_hash.to_le_bytes());
    damage(&cq_file(dir.path(), "A", 0, 0), 10 * 20, &bytes);
    assert_ne!(a[10].phys_offset, b[10].phys_offset);
    let store = Store::open(cfg).unwrap();
    expect_all_of_a(&store, 200);
    assert_eq!(store.damage_stats().repaired_entries, 1);
}

#[test]
fn zeroed_entries_are_rebuilt_even_for_a_filtered_reader() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _, _) = fill(dir.path(), 300);
    // Entries 20..40 of A read as empty slots (tag hash 0).
    damage(&cq_file(dir.path(), "A", 0, 0), 20 * 20, &[0u8; 20 * 20]);
    let store = Store::open(cfg).unwrap();
    // A tag filter first: the zeroed entries' tag hashes must not hide the messages.
    let want = tag_hash("tag1");
    let ids = ids_with_tag(&store, want, 300);
    let expected: Vec<u128> = (0..300).filter(|i| i % 3 == 1).collect();
    assert_eq!(ids, expected);
    expect_all_of_a(&store, 300);
    assert!(store.damage_stats().repaired_entries >= 20);
}

#[test]
fn a_corrupt_index_header_makes_the_index_rebuilt_not_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _, _) = fill(dir.path(), 300);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path().join("index"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "several index files: {files:?}");
    // The first file's magic and a middle file's slot count.
    damage(&files[0], 0, b"XXXX");
    damage(&files[1], 8, &[0xff; 4]);
    let store = Store::open(cfg).unwrap();
    assert_eq!(store.damage_stats().rebuilt_index_files, 2);
    for id in 0..300u128 {
        let b = store.message_by_id(id).unwrap();
        let b = b.unwrap_or_else(|| panic!("message {id} found by id"));
        assert_eq!(RecordView::parse(&b).unwrap().msg_id(), id);
        let by_key = store
            .query_by_key("A", &format!("key-{id}"), 4, 0, i64::MAX)
            .unwrap();
        assert_eq!(by_key.len(), 1, "message {id} found by key");
    }
    // B's messages are indexed too.
    assert!(store.message_by_id(10_000).unwrap().is_some());
    drop(store);
    // The rebuilt files are valid files: nothing to rebuild the next time.
    let store = Store::open(StoreConfig::small_for_tests(dir.path())).unwrap();
    assert_eq!(store.damage_stats().rebuilt_index_files, 0);
    assert!(store.message_by_id(0).unwrap().is_some());
}

#[test]
fn a_damaged_record_below_the_checkpoint_is_skipped_once_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, a, _) = fill(dir.path(), 200);
    let seg = dir.path().join("commitlog").join(mapped::file_name(0));
    // One byte of the body of A's record 7.
    let at = a[7].phys_offset + a[7].size as u64 - 3;
    let mut f = std::fs::read(&seg).unwrap();
    f[at as usize] ^= 0x10;
    std::fs::write(&seg, f).unwrap();
    let store = Store::open(cfg).unwrap();
    let logs = capture_logs(|| {
        consume(&store, "A", 0);
    });
    let reports: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("message cannot be read"))
        .collect();
    assert_eq!(reports.len(), 1, "{logs}");
    assert!(
        reports[0].contains(&seg.display().to_string()),
        "{}",
        reports[0]
    );
    assert!(reports[0].contains("queue_offset=7"), "{}", reports[0]);
    for round in 0..2 {
        let (got, skipped) = consume(&store, "A", 0);
        assert_eq!(
            skipped, 1,
            "round {round}: the reader passes the damaged record"
        );
        let want: Vec<u64> = (0..200).filter(|o| *o != 7).collect();
        assert_eq!(got.iter().map(|m| m.0).collect::<Vec<_>>(), want);
        // Reported once, however often it is read.
        assert_eq!(store.damage_stats().unreadable_records, 1);
    }
    // A read that starts on it moves past it (no message, next offset beyond).
    let r = store
        .get_messages("A", 0, 7, ReadLimits::new(1, 1 << 20, 1), |_| true)
        .unwrap();
    assert_eq!(
        (r.status, r.next_offset, r.skipped),
        (GetStatus::NoMatch, 8, 1)
    );
}

#[test]
fn a_record_with_a_broken_header_is_skipped_and_repairs_walk_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, a, _) = fill(dir.path(), 200);
    let seg = dir.path().join("commitlog").join(mapped::file_name(0));
    // A's record 50 loses its length and magic: a walk through the log cannot step over it.
    damage(&seg, a[50].phys_offset, &[0xee; 8]);
    // And the entries 45..60 of A are gone, so a repair must walk across record 50.
    damage(&cq_file(dir.path(), "A", 0, 0), 45 * 20, &[0u8; 15 * 20]);
    let store = Store::open(cfg).unwrap();
    let (got, skipped) = consume(&store, "A", 0);
    let want: Vec<u64> = (0..200).filter(|o| *o != 50).collect();
    assert_eq!(got.iter().map(|m| m.0).collect::<Vec<_>>(), want);
    assert_eq!(skipped, 1);
    let stats = store.damage_stats();
    assert_eq!(stats.unreadable_records, 1);
    assert!(stats.damaged_log_spans >= 1, "{stats:?}");
}

#[test]
fn a_repair_keeps_entries_appended_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig::small_for_tests(dir.path());
    let store = Arc::new(Store::open(cfg).unwrap());
    for i in 0..300 {
        put(&store, "A", 0, i);
    }
    // Damage the live store's files (the mapping shares the page cache).
    damage(&cq_file(dir.path(), "A", 0, 64), 5 * 20, &garbage(400));
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 300..900 {
                put(&store, "A", 0, i);
            }
        })
    };
    // Readers repair the damage while the writer appends behind them.
    let mut reads = 0;
    while !writer.is_finished() || reads == 0 {
        let (got, skipped) = consume(&store, "A", 0);
        assert_eq!(skipped, 0);
        for (i, (o, _, id)) in got.iter().enumerate() {
            assert_eq!((*o, *id), (i as u64, i as u128));
        }
        reads += 1;
    }
    writer.join().unwrap();
    expect_all_of_a(&store, 900);
    assert!(store.damage_stats().repaired_entries >= 20);
}

#[test]
fn a_full_rebuild_passes_over_damaged_records_instead_of_refusing_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, a, _) = fill(dir.path(), 200);
    let seg = dir.path().join("commitlog").join(mapped::file_name(0));
    // A's record 30 loses its magic; record 60's topic length points past its end.
    damage(&seg, a[30].phys_offset + 4, &[0xee; 4]);
    damage(&seg, a[60].phys_offset + HEADER_SIZE as u64, &[0xff]);
    // Deleting consumequeue/ asks for everything to be re-dispatched from the log.
    std::fs::remove_dir_all(dir.path().join("consumequeue")).unwrap();
    let store = Store::open(cfg).unwrap();
    let (got, skipped) = consume(&store, "A", 0);
    let want: Vec<u64> = (0..200).filter(|o| *o != 30 && *o != 60).collect();
    assert_eq!(got.iter().map(|m| m.0).collect::<Vec<_>>(), want);
    assert_eq!(skipped, 2);
    let stats = store.damage_stats();
    assert_eq!(stats.unreadable_records, 2);
    assert!(stats.damaged_log_spans >= 2, "{stats:?}");
    // B's queue, interleaved with A's in the log, is whole.
    let (b, skipped) = consume(&store, "B", 0);
    assert_eq!((b.len(), skipped), (100, 0));
}

#[test]
fn a_queue_whose_records_retention_deleted_keeps_its_end_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::small_for_tests(dir.path());
    cfg.retention_hours = 1;
    {
        let store = Store::open(cfg.clone()).unwrap();
        for i in 0..40 {
            put(&store, "A", 0, i);
        }
        // Enough of B to fill more segments, so A's are sealed and can go.
        let big = vec![1u8; 8000];
        for i in 0..40u128 {
            let m = NewMessage {
                msg_id: 50_000 + i,
                flags: 0,
                born_timestamp: 1,
                born_host: host(),
                reconsume_times: 0,
                tag: "",
                keys: &[],
                properties: &[],
                body: &big,
            };
            store.append("B", 0, &[m]).unwrap().wait().unwrap();
        }
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        let first = dir.path().join("commitlog").join(mapped::file_name(0));
        std::fs::File::options()
            .write(true)
            .open(&first)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let report = store.run_retention(true).unwrap();
        assert_eq!(report.deleted_segments.len(), 1);
        assert_eq!(store.queue_bounds("A", 0), (40, 40));
        store.close().unwrap();
    }
    let store = Store::open(cfg).unwrap();
    assert_eq!(store.queue_bounds("A", 0), (40, 40));
    assert_eq!(store.damage_stats(), DamageStats::default());
    assert_eq!(put(&store, "A", 0, 40).queue_offset, 40);
}

#[test]
fn recovery_of_an_undamaged_store_after_a_crash_repairs_nothing() {
    for mode in [FlushMode::Async, FlushMode::Sync] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::small_for_tests(dir.path());
        cfg.flush_mode = mode;
        cfg.checkpoint_interval_ms = 10;
        let store = Store::open(cfg.clone()).unwrap();
        for i in 0..600u128 {
            put(&store, "A", (i % 3) as u32, i);
            if i == 300 {
                // Let a checkpoint land in the middle.
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        store.simulate_crash();
        let store = Store::open(cfg).unwrap();
        for q in 0..3 {
            let (got, skipped) = consume(&store, "A", q);
            assert_eq!((got.len(), skipped), (200, 0), "{mode:?} queue {q}");
        }
        assert_eq!(store.damage_stats(), DamageStats::default(), "{mode:?}");
    }
}

#[test]
fn a_time_search_over_damaged_entries_repairs_them_and_finds_the_right_offset() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig::small_for_tests(dir.path());
    let mut firsts = Vec::new();
    {
        let store = Store::open(cfg.clone()).unwrap();
        for batch in 0..10u128 {
            std::thread::sleep(std::time::Duration::from_millis(3));
            let body = body_of(batch);
            let m = NewMessage {
                msg_id: batch,
                flags: 0,
                born_timestamp: 1,
                born_host: host(),
                reconsume_times: 0,
                tag: "",
                keys: &[],
                properties: &[],
                body: &body,
            };
            let msgs = vec![m; 20];
            let a = store.append("A", 0, &msgs).unwrap().wait().unwrap();
            firsts.push((a.results[0].queue_offset, a.store_timestamp));
        }
        store.close().unwrap();
    }
    // Entries 95..105: where the search looks first.
    damage(
        &cq_file(dir.path(), "A", 0, 64),
        (95 - 64) * 20,
        &garbage(200),
    );
    let store = Store::open(cfg).unwrap();
    for (offset, ts) in firsts {
        assert_eq!(store.offset_for_timestamp("A", 0, ts).unwrap(), offset);
    }
    assert!(store.damage_stats().repaired_entries >= 10);
}

#[test]
fn a_damaged_last_record_keeps_its_queue_offset_through_a_full_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, a, _) = fill(dir.path(), 200);
    let seg = dir.path().join("commitlog").join(mapped::file_name(0));
    // A's last record: its body length now runs past the record (the header is intact).
    let last = a[199];
    let body_len_at = last.phys_offset + last.size as u64 - body_of(199).len() as u64 - 4;
    damage(&seg, body_len_at, &[0xff; 4]);
    std::fs::remove_dir_all(dir.path().join("consumequeue")).unwrap();
    let store = Store::open(cfg).unwrap();
    assert_eq!(store.queue_bounds("A", 0), (0, 200));
    let (got, skipped) = consume(&store, "A", 0);
    assert_eq!((got.len(), skipped), (199, 1));
    assert_eq!(store.damage_stats().unreadable_records, 1);
    // The damaged record keeps offset 199: the next message gets 200.
    assert_eq!(put(&store, "A", 0, 200).queue_offset, 200);
}

#[test]
fn garbage_entries_do_not_hide_messages_from_a_tag_filter() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _, _) = fill(dir.path(), 300);
    // Entries 100..110 of A: garbage, tag hashes included.
    damage(
        &cq_file(dir.path(), "A", 0, 64),
        (100 - 64) * 20,
        &garbage(200),
    );
    let store = Store::open(cfg).unwrap();
    let want = tag_hash("tag2");
    let ids = ids_with_tag(&store, want, 300);
    assert_eq!(ids, (0..300).filter(|i| i % 3 == 2).collect::<Vec<u128>>());
    assert!(store.damage_stats().repaired_entries >= 10);
}
