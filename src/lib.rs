//! Quiver: a RocketMQ-class message broker over QUIC.
//!
//! Crate map:
//! - [`config`]: typed configuration (defaults <- quiver.toml <- `QUIVER_*` env <- flags).
//! - [`net`]: QUIC endpoint, TLS identity, connections and streams; frames in, frames out.
//! - [`clock`]: time as an input: the system clock, and a manual clock tests advance.
//! - [`broker`]: request handling: topics, produce, pull with long polling, offsets, admin.
//! - [`server`]: a running broker (store + handlers + listener) with graceful shutdown.
//! - [`store`]: commit log, consume queues, index, flush and crash recovery (sync I/O only).
//! - [`bench`]: the `quiver bench` measurements.
//! - [`filter`]: tag and SQL92 subscription filters, compiled once and evaluated per message.
//! - [`plugin`]: WebAssembly filter and transform plugins (wasmtime), per batch.

pub mod bench;
pub mod broker;
pub mod clock;
pub mod config;
pub mod filter;
pub mod messaging;
pub mod net;
pub mod plugin;
pub mod server;
pub mod store;
pub mod units;
