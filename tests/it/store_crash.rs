//! Kill -9 a process that appends in SYNC mode, at random moments, several times; every
//! message it acknowledged must be there, intact, and appends must continue after recovery.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use quiver::store::{FlushMode, ReadLimits, RecordView, Store, StoreConfig};

fn crash_body(id: u64) -> Vec<u8> {
    let len = 50 + (id % 700) as usize;
    (0..len)
        .map(|i| (id as usize).wrapping_mul(31).wrapping_add(i) as u8)
        .collect()
}

fn config(dir: &std::path::Path) -> StoreConfig {
    let mut cfg = StoreConfig::new(dir);
    cfg.flush_mode = FlushMode::Sync;
    cfg.segment_size = 256 << 10;
    cfg.cq_entries_per_file = 1000;
    cfg.index_slots = 1024;
    cfg.index_entries = 4096;
    cfg.max_message_size = 64 << 10;
    cfg.max_properties_size = 4 << 10;
    cfg.disk_high_watermark = 1.0;
    cfg.disk_clean_watermark = 1.0;
    cfg.disk_headroom_bytes = 0;
    cfg
}

#[test]
fn every_acked_message_survives_sigkill_and_appends_continue() {
    let _heavy = super::harness::heavy();
    let dir = tempfile::tempdir().unwrap();
    // (queue, offset) -> (id, body length) for every ack printed by a killed writer.
    let mut acked: HashMap<(u32, u64), (u64, usize)> = HashMap::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_id = 0u64;
    for round in 0..5 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_quiver"))
            .args(["debug", "store-writer", "--threads", "4", "--dir"])
            .arg(dir.path())
            .args(["--first-id", &next_id.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the writer");
        let stdout = child.stdout.take().unwrap();
        // Kill after a pseudo-random delay once the writer has acked something.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(50 + seed % 400);
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => lines.push(l),
                    Err(_) => break,
                }
            }
            lines
        });
        let started = Instant::now();
        std::thread::sleep(delay);
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let mut this_round = 0;
        for line in lines {
            let f: Vec<&str> = line.split_whitespace().collect();
            // A line cut by the kill is not an ack the writer finished printing.
            if f.len() != 5 || f[0] != "ack" {
                continue;
            }
            let (q, off, id, len) = (
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
            );
            assert!(
                acked.insert((q, off), (id, len)).is_none(),
                "offset ({q},{off}) acked twice"
            );
            next_id = next_id.max(id + 1);
            this_round += 1;
        }
        eprintln!(
            "round {round}: killed after {:?}, {this_round} acks",
            started.elapsed()
        );

        let store = Store::open(config(dir.path())).expect("recovers");
        assert!(
            store.recovery_report().unclean,
            "the kill left the unclean marker"
        );
        for (&(q, off), &(id, len)) in &acked {
            let r = store
                .get_messages("crash", q, off, ReadLimits::new(1, 1 << 20, 1), |_| true)
                .unwrap_or_else(|e| panic!("reading acked ({q},{off}) failed: {e}"));
            let m = r.messages.first().unwrap_or_else(|| {
                panic!("acked message ({q},{off}) id {id} lost after round {round}")
            });
            let v = RecordView::parse(&m.bytes).expect("intact record");
            assert_eq!((m.queue_offset, v.msg_id()), (off, id as u128));
            assert_eq!(v.body(), &crash_body(id)[..], "body of id {id} intact");
            assert_eq!(v.body().len(), len);
        }
        // Queues are contiguous: offsets 0..max all readable, nothing skipped.
        for q in 0..3 {
            let (min, max) = store.queue_bounds("crash", q);
            assert_eq!(min, 0);
            let all = store.read_entries("crash", q, 0, max as usize);
            assert_eq!(all.len() as u64, max);
            assert!(all
                .windows(2)
                .all(|w| w[0].1.phys_offset < w[1].1.phys_offset));
        }
        store.close().unwrap();
    }
    assert!(
        acked.len() > 50,
        "the writers acked enough to make the test meaningful: {}",
        acked.len()
    );
}

#[test]
fn hand_written_torn_tail_is_truncated_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let end;
    {
        let store = Store::open(config(dir.path())).unwrap();
        let host = "127.0.0.1:1".parse().unwrap();
        for i in 0..20u128 {
            let m = quiver::store::NewMessage {
                msg_id: i,
                flags: 0,
                born_timestamp: 0,
                born_host: host,
                reconsume_times: 0,
                tag: "",
                keys: &[],
                properties: &[],
                body: b"0123456789",
            };
            store.append("T", 0, &[m]).unwrap().wait().unwrap();
        }
        end = store.log_offsets().1;
        store.close().unwrap();
    }
    // Garbage after the end, as a power loss mid-write leaves it, then an unclean marker.
    let seg = dir.path().join("commitlog").join("00000000000000000000");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[end as usize..end as usize + 64].copy_from_slice(&[0xAB; 64]);
    std::fs::write(&seg, bytes).unwrap();
    std::fs::write(dir.path().join("abort"), b"").unwrap();

    let store = Store::open(config(dir.path())).unwrap();
    let (at, reason) = store
        .recovery_report()
        .truncated_at
        .clone()
        .expect("reported");
    assert_eq!(at, end);
    assert_eq!(reason, "bad magic");
    assert_eq!(store.queue_bounds("T", 0), (0, 20));
    let bytes = std::fs::read(&seg).unwrap();
    assert!(
        bytes[end as usize..end as usize + 64]
            .iter()
            .all(|b| *b == 0),
        "torn bytes zeroed"
    );
}
