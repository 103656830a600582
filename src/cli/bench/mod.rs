//! `quiver bench`: measurements printed as figures (rates, medians and tail percentiles, never
//! pass/fail).
//! - [`store`]: the store alone, in process.
//! - [`net`]: produce, consume and end-to-end over QUIC with the real SDK.
//! - [`filter`]: pull-path scan rates for selective tag and SQL subscriptions.
//! - [`plugin`]: WebAssembly plugin cost per message and pull throughput with a plugin.
//! - [`messaging`]: scheduled-message lateness and memory; transactional send throughput.

pub(crate) mod connections;
pub(crate) mod filter;
pub(crate) mod messaging;
pub(crate) mod net;
pub(crate) mod plugin;
pub(crate) mod quic;
pub(crate) mod replication;
pub(crate) mod store;

pub(crate) use store::{store_bench, StoreBenchOptions};

static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--json`: figures go to stdout as one JSON object per line, and the lines for people to
/// stderr.
pub(crate) fn set_json(on: bool) {
    JSON.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether figures are printed as JSON.
pub(crate) fn json() -> bool {
    JSON.load(std::sync::atomic::Ordering::Relaxed)
}

/// A line for people: stdout, or stderr when stdout carries JSON.
pub(crate) fn say(line: &str) {
    if json() {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}
