//! Quiver: a RocketMQ-class message broker over QUIC.
//!
//! Rooms of the library, top to bottom; a room uses only the rooms below it:
//! - [`server`]: a running broker (store + handlers + listener) with graceful shutdown.
//! - [`net`]: QUIC endpoint, TLS identity, connections and streams; frames in, frames out.
//! - [`broker`]: request handling: topics, produce, pull with long polling, offsets, groups,
//!   admin. Each handler checks a request, calls the rooms below and builds the response.
//! - [`auth`]: users, access rules, the broker's side of the password handshake, and the
//!   check of what a request needs against who sends it.
//! - [`messaging`]: scheduled messages (timer wheel), transactions with check-back, retries
//!   and dead-letter queues.
//! - [`plugin`]: WebAssembly filter and transform plugins (wasmtime), per batch.
//! - [`filter`]: tag and SQL92 subscription filters, compiled once and evaluated per message.
//! - [`store`]: commit log, consume queues, index, flush and crash recovery (sync I/O only).
//! - [`clock`]: time as an input: the system clock, and a manual clock tests advance.
//! - [`config`]: typed configuration (defaults <- quiver.toml <- `QUIVER_*` env <- flags); it
//!   gathers the sections the rooms define.
//!
//! All of them may use `quiver-protocol` (wire format, names, system property names). The
//! client SDK (`quiver-client`) is used only by the binary (`src/main.rs`, `src/cli/`: the
//! client commands and `quiver bench`), never by this library.

pub mod admin_http;
pub mod auth;
pub mod broker;
pub mod clock;
pub mod cluster;
pub mod config;
mod console;
pub mod filter;
pub mod memory;
pub mod messaging;
pub mod metrics;
pub mod net;
pub mod plugin;
pub mod server;
pub mod store;
pub mod units;
