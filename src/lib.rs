//! Quiver: a RocketMQ-class message broker over QUIC.
//!
//! Crate map:
//! - [`store`]: commit log, consume queues, index, flush and crash recovery (sync I/O only).
//! - [`bench`]: the `quiver bench` measurements.

pub mod bench;
pub mod store;
