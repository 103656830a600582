//! `quiver bench plugin`: what a WebAssembly filter costs.
//!
//! 1. In process: a filter plugin (a built-in trivial one that keeps everything, or `--wasm`)
//!    runs over stored records of `size` bytes in calls of 1, 32 and 256 messages, the way a
//!    pull runs it; the figures are messages per second per core and the cost per message
//!    (median of several rounds).
//! 2. Over QUIC: an embedded broker is filled and drained by a pull consumer twice, without and
//!    with the plugin attached to every pull; the figures are both rates and their ratio.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quiver_protocol::record::{encode_into, RecordLimits, RecordPlacement};
use quiver_protocol::{NewMessage, PluginRef};

use quiver::plugin::{LoadSpec, PluginConfig, PluginHost};
use quiver::store::FlushMode;

use super::net::{NetBench, NetBenchOptions};

/// A filter that keeps every message: the ABI's fixed cost (copy in, call, read verdicts).
pub(crate) const TRIVIAL_FILTER: &str = r#"
(module
  (memory (export "memory") 1)
  (func (export "quiver_abi_version") (result i32) (i32.const 1))
  (func (export "quiver_buffer") (param $size i32) (result i32)
    (local $need i32)
    (local.set $need
      (i32.shr_u (i32.add (i32.add (i32.const 8192) (local.get $size)) (i32.const 65535))
                 (i32.const 16)))
    (if (i32.gt_u (local.get $need) (memory.size))
      (then
        (if (i32.eq (memory.grow (i32.sub (local.get $need) (memory.size))) (i32.const -1))
          (then (return (i32.const 0))))))
    (i32.const 8192))
  (func (export "quiver_filter") (param $len i32) (result i32)
    (local $count i32)
    (local.set $count (i32.load (i32.const 8192)))
    (if (i32.gt_u (local.get $count) (i32.const 7000)) (then (return (i32.const 0))))
    (memory.fill (i32.const 1024) (i32.const 1) (local.get $count))
    (i32.const 1024)))
"#;

/// What to measure.
#[derive(Debug, Clone)]
pub(crate) struct PluginBenchOptions {
    /// A filter module to measure; `None` = [`TRIVIAL_FILTER`].
    pub(crate) module: Option<Vec<u8>>,
    /// Its configuration.
    pub(crate) config: Vec<(String, String)>,
    /// Body size in bytes.
    pub(crate) size: usize,
    /// Messages for the pull comparison.
    pub(crate) messages: u64,
    /// Where temporary data goes.
    pub(crate) dir: PathBuf,
}

fn records(n: usize, size: usize) -> anyhow::Result<Vec<Bytes>> {
    let host: SocketAddr = "127.0.0.1:1".parse()?;
    let body = vec![b'x'; size];
    let limits = RecordLimits {
        max_body: usize::MAX >> 1,
        max_properties: usize::MAX >> 1,
    };
    (0..n)
        .map(|i| {
            let props = [("region", "eu"), ("amount", "42")];
            let m = NewMessage {
                msg_id: i as u128,
                flags: 0,
                born_timestamp: 0,
                born_host: host,
                reconsume_times: 0,
                tag: "t",
                keys: &["order-1"],
                properties: &props,
                body: &body,
            };
            let mut buf = vec![0u8; m.encoded_len("bench", &limits)?];
            let at = RecordPlacement {
                queue_id: 0,
                queue_offset: i as u64,
                phys_offset: 0,
                store_timestamp: 0,
                extra_flags: 0,
            };
            encode_into(&mut buf, "bench", &m, &at);
            Ok(Bytes::from(buf))
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs both parts and prints the figures.
pub(crate) fn plugin_bench(opts: &PluginBenchOptions) -> anyhow::Result<()> {
    let module = opts
        .module
        .clone()
        .unwrap_or_else(|| TRIVIAL_FILTER.as_bytes().to_vec());
    let what = if opts.module.is_some() {
        "the given plugin"
    } else {
        "a trivial filter (keeps everything)"
    };
    println!("quiver bench plugin: {what}, {}-byte messages", opts.size);
    let root = opts
        .dir
        .join(format!("quiver-plugin-bench-{}", std::process::id()));
    let result = in_process(&root, &module, opts);
    let _ = std::fs::remove_dir_all(&root);
    result?;
    pull_comparison(&module, opts)
}

fn in_process(
    root: &std::path::Path,
    module: &[u8],
    opts: &PluginBenchOptions,
) -> anyhow::Result<()> {
    let cfg = PluginConfig {
        max_batch_bytes: 256 << 20,
        ..PluginConfig::default()
    };
    let limits = RecordLimits {
        max_body: 4 << 20,
        max_properties: 32 << 10,
    };
    let host = PluginHost::open(cfg, root.join("plugins"), limits)?;
    let info = host.load(
        "bench",
        LoadSpec {
            wasm: Bytes::copy_from_slice(module),
            config: Some(opts.config.clone()),
            memory_limit_bytes: 0,
            time_limit_ms: 0,
        },
    )?;
    anyhow::ensure!(
        info.kind == quiver_protocol::PluginKind::Filter,
        "the benchmark measures filter plugins"
    );
    let chain = host.resolve(&[PluginRef::new("bench")])?;
    let all = records(256, opts.size)?;
    println!("  in process, one core (median of 7 rounds of ~300 ms):");
    for batch in [1usize, 32, 256] {
        let part = &all[..batch];
        // Warm up (instance, caches).
        for _ in 0..50 {
            host.apply_to_records(&chain, "bench", 0, part.to_vec())?;
        }
        let mut rates = Vec::new();
        let mut kept = 0usize;
        for _ in 0..7 {
            let start = Instant::now();
            let mut n = 0usize;
            while start.elapsed() < Duration::from_millis(300) {
                for _ in 0..16 {
                    kept += host
                        .apply_to_records(&chain, "bench", 0, part.to_vec())?
                        .len();
                    n += batch;
                }
            }
            rates.push(n as f64 / start.elapsed().as_secs_f64());
        }
        let rate = median(rates);
        println!(
            "    batch {batch:>3}: {:>10.0} msgs/s  {:>7.0} ns/msg  {:>9.0} calls/s  ({} kept)",
            rate,
            1e9 / rate,
            rate / batch as f64,
            kept
        );
    }
    Ok(())
}

fn pull_comparison(module: &[u8], opts: &PluginBenchOptions) -> anyhow::Result<()> {
    let base = NetBenchOptions {
        addr: None,
        cluster: Vec::new(),
        tls: None,
        flush: FlushMode::Async,
        dir: opts.dir.clone(),
        topic: "bench".into(),
        queues: 4,
        size: opts.size,
        messages: opts.messages,
        duration: Duration::from_secs(60),
        producers: 1,
        inflight: 4,
        batch: 64,
        consumers: 1,
        group: None,
        plugin: None,
        // The comparison is plugin against no plugin, not against the transport.
        baseline_bytes: 0,
    };
    println!("  pull over QUIC, without a plugin:");
    let without = super::net::run(NetBench::Consume, &base)?;
    println!("  pull over QUIC, with the plugin on every pull:");
    let with = super::net::run(
        NetBench::Consume,
        &NetBenchOptions {
            plugin: Some((module.to_vec(), opts.config.clone())),
            ..base
        },
    )?;
    let rate = |r: &[super::net::NetReport]| r.last().map_or(0.0, |r| r.rate());
    let (a, b) = (rate(&without), rate(&with));
    println!(
        "  pull throughput with the plugin / without: {:.0} / {:.0} msgs/s = {:.2}",
        b,
        a,
        if a > 0.0 { b / a } else { 0.0 }
    );
    Ok(())
}
