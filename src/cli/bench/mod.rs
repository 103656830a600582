//! `quiver bench`: measurements printed as figures (rates, medians and tail percentiles, never
//! pass/fail).
//! - [`store`]: the store alone, in process.
//! - [`net`]: produce, consume and end-to-end over QUIC with the real SDK.
//! - [`filter`]: pull-path scan rates for selective tag and SQL subscriptions.
//! - [`plugin`]: WebAssembly plugin cost per message and pull throughput with a plugin.
//! - [`messaging`]: scheduled-message lateness and memory; transactional send throughput.

pub(crate) mod filter;
pub(crate) mod messaging;
pub(crate) mod net;
pub(crate) mod plugin;
pub(crate) mod quic;
pub(crate) mod replication;
pub(crate) mod store;

pub(crate) use store::{store_bench, StoreBenchOptions};
