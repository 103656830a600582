//! `quiver bench`: measurements printed as figures (rates, medians and tail percentiles, never
//! pass/fail).
//! - [`store`]: the store alone, in process.
//! - [`net`]: produce, consume and end-to-end over QUIC with the real SDK.
//! - [`filter`]: pull-path scan rates for selective tag and SQL subscriptions.
//! - [`plugin`]: WebAssembly plugin cost per message and pull throughput with a plugin.
//! - [`messaging`]: scheduled-message lateness and memory; transactional send throughput.

pub mod filter;
pub mod messaging;
pub mod net;
pub mod plugin;
pub mod store;

pub use store::{disk_fdatasync_bandwidth, rss_bytes, store_bench, BenchRow, StoreBenchOptions};
