//! `quiver bench filter`: how fast the pull path scans a queue for selective subscriptions.
//!
//! A store gets `messages` 1 KiB messages on one queue, each with a tag `t<i % 100>` and a
//! property `bucket = i % 100`. Each subscription then reads the whole queue the way a pull
//! does (consume-queue scan, tag-hash skip, record read + exact check), and the run prints
//! entries scanned per second and matches per second for 1%, 10% and 100% selectivity.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use quiver::filter::{Filter, FilterKind};
use quiver::store::{FlushMode, NewMessage, ReadLimits, Store, StoreConfig};

/// Runs the filter scan benchmark and prints its figures.
pub(crate) fn filter_bench(dir: &Path, messages: u64, size: usize) -> anyhow::Result<()> {
    let root = dir.join(format!("quiver-filter-bench-{}", std::process::id()));
    let result = run(&root, messages, size);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn run(root: &Path, messages: u64, size: usize) -> anyhow::Result<()> {
    let mut cfg = StoreConfig::new(root);
    cfg.flush_mode = FlushMode::Async;
    cfg.segment_size = 256 << 20;
    let store = Store::open(cfg)?;
    let body = vec![b'f'; size];
    let host: SocketAddr = "127.0.0.1:1".parse()?;
    let tags: Vec<String> = (0..100).map(|i| format!("t{i}")).collect();
    let buckets: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    println!("quiver bench filter: {messages} x {size}-byte messages on one queue");
    let start = Instant::now();
    for i in 0..messages {
        let b = (i % 100) as usize;
        let props = [("bucket", buckets[b].as_str()), ("region", "eu")];
        let m = NewMessage {
            msg_id: i as u128,
            flags: 0,
            born_timestamp: 0,
            born_host: host,
            reconsume_times: 0,
            tag: &tags[b],
            keys: &[],
            properties: &props,
            body: &body,
        };
        store.append("scan", 0, &[m])?.wait()?;
    }
    println!("  filled in {:.2}s", start.elapsed().as_secs_f64());
    let cases = [
        ("tag 1%", FilterKind::Tag, "t0"),
        (
            "tag 10%",
            FilterKind::Tag,
            "t0 || t1 || t2 || t3 || t4 || t5 || t6 || t7 || t8 || t9",
        ),
        ("tag 100%", FilterKind::Tag, "*"),
        ("sql 1%", FilterKind::Sql, "bucket < 1 AND region = 'eu'"),
        ("sql 10%", FilterKind::Sql, "bucket < 10 AND region = 'eu'"),
        (
            "sql 100%",
            FilterKind::Sql,
            "bucket < 100 AND region = 'eu'",
        ),
    ];
    for (name, kind, expr) in cases {
        let filter = Filter::parse(kind, expr)?;
        // Warm the page cache and the mapping once, then measure.
        let _ = scan(&store, &filter, messages)?;
        let t = Instant::now();
        let (scanned, matched) = scan(&store, &filter, messages)?;
        let secs = t.elapsed().as_secs_f64().max(1e-9);
        println!(
            "  {name:<9} {:>12.0} entries scanned/s {:>12.0} matches/s  ({scanned} scanned, {matched} matched in {secs:.3}s)",
            scanned as f64 / secs,
            matched as f64 / secs
        );
    }
    store.close()?;
    Ok(())
}

/// Reads the whole queue as pulls do (32 messages or 4096 entries per pull).
fn scan(store: &Store, filter: &Filter, total: u64) -> anyhow::Result<(u64, u64)> {
    let mut offset = 0;
    let mut matched = 0u64;
    while offset < total {
        let r = store.get_messages_where(
            "scan",
            0,
            offset,
            ReadLimits::new(32, 4 << 20, 4096),
            |e| filter.may_match_hash(e.tag_hash),
            |r| filter.matches(r),
        )?;
        matched += r.messages.len() as u64;
        if r.next_offset <= offset {
            break;
        }
        offset = r.next_offset;
    }
    Ok((offset, matched))
}
