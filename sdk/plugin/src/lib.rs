//! Guest SDK for Quiver WebAssembly plugins.
//!
//! A plugin is a `cdylib` crate built for `wasm32-unknown-unknown` that the broker runs on a
//! topic's messages: a **filter** keeps or drops messages, a **transform** edits, drops or
//! rejects them. This crate implements the plugin ABI of docs/PLUGINS.md ("The ABI
//! (version 1)"): one call per batch, zero-copy access to the input, reused buffers. Write
//! plain functions and mark them:
//!
//! - `#[quiver_plugin::filter]` on `fn(&Message) -> bool` (`true` keeps the message);
//! - `#[quiver_plugin::transform]` on `fn(Message<'_>) -> R` where `R` is a
//!   [`TransformResult`], e.g. `Option<Message<'_>>` (`None` drops) or
//!   `Result<Option<Message<'_>>, Reject>`;
//! - optionally `#[quiver_plugin::init]` on `fn(&Config) -> Result<(), String>`, called once
//!   per instance with the plugin's configuration (an `Err` refuses it and fails the load).
//!
//! A plugin has one filter or one transform, not both.
//!
//! ```
//! use std::sync::OnceLock;
//! use quiver_plugin::{Config, Message};
//!
//! static MIN_PRIORITY: OnceLock<u32> = OnceLock::new();
//!
//! #[quiver_plugin::init]
//! fn init(config: &Config) -> Result<(), String> {
//!     let min = config.get_parsed("min_priority")?.unwrap_or(5);
//!     quiver_plugin::info!("keeping priority >= {min}");
//!     MIN_PRIORITY.set(min).map_err(|_| "initialised twice".to_string())
//! }
//!
//! #[quiver_plugin::filter]
//! fn urgent(msg: &Message) -> bool {
//!     let min = *MIN_PRIORITY.get().unwrap_or(&5);
//!     msg.property("priority").and_then(|p| p.parse::<u32>().ok()).is_some_and(|p| p >= min)
//! }
//! # fn main() {}
//! ```
//!
//! A transform changes fields copy-on-write; what it leaves alone is handed back to the broker
//! without a copy:
//!
//! ```
//! use quiver_plugin::{Message, Reject};
//!
//! #[quiver_plugin::transform]
//! fn stamp(mut msg: Message<'_>) -> Result<Option<Message<'_>>, Reject> {
//!     if msg.body().is_empty() {
//!         return Err(Reject::new("empty body"));
//!     }
//!     if msg.tag() == "debug" {
//!         return Ok(None); // drop it
//!     }
//!     msg.set_property("checked", "yes");
//!     Ok(Some(msg))
//! }
//! # fn main() {}
//! ```
//!
//! Build with `cargo build --release --target wasm32-unknown-unknown`; the module then exports
//! `memory`, `quiver_abi_version`, `quiver_buffer`, `quiver_filter` or `quiver_transform`, and
//! `quiver_init` when there is an init function, and imports only `quiver.log` (see [`log`]).
//! Per-instance state (counters, caches, settings) can live in statics: each instance has its
//! own memory and runs single-threaded. A panic aborts the call (a trap; the broker counts a
//! failure and discards the instance) after its message is written to the broker's log.
//!
//! On native targets the exports are ordinary hidden functions, so a plugin crate also builds
//! and runs its unit tests natively; [`Message::new`] and [`Config::from_pairs`] make inputs for
//! such tests.

#![deny(missing_docs)]

mod batch;
mod config;
pub mod log;
mod message;
mod sections;

#[doc(hidden)]
pub mod __rt {
    //! Runtime entry points used by the code the attribute macros generate.
    pub use crate::rt::*;
}
mod rt;

#[cfg(test)]
mod tests;

pub use config::Config;
pub use message::{is_reserved_property, Message, Outcome, Reject, TransformResult};
pub use quiver_plugin_macros::{filter, init, transform};
pub use sections::{Keys, Properties};
