//! The Quiver client SDK: connect to a broker over QUIC (TLS 1.3, ALPN `quiver/1`), send
//! messages with a [`Producer`], consume as a member of a consumer group with a
//! [`PushConsumer`], read queues at explicit offsets with a [`PullConsumer`], and manage topics
//! and groups with [`Admin`].
//!
//! ```no_run
//! use quiver_client::{Client, ClientConfig, Message, Producer, ProducerOptions, Tls};
//!
//! # async fn demo() -> Result<(), quiver_client::ClientError> {
//! let tls = Tls::CaFile("quiver-data/tls/cert.pem".into());
//! let client = Client::connect(ClientConfig::new("127.0.0.1:10911".parse().unwrap(), tls)).await?;
//! let producer = Producer::new(client.clone(), ProducerOptions::default());
//! let sent = producer.send(Message::new("demo", "hello").with_tag("greeting")).await?;
//! println!("{} stored at {}/{}", sent.msg_id, sent.queue_id, sent.queue_offset);
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! Each request travels on its own bidirectional QUIC stream, so one [`Client`] carries any
//! number of concurrent requests. It survives broker restarts (`kill -9` included): a dead
//! connection is noticed within [`ClientConfig::liveness_timeout`], the next request reconnects
//! (with back-off and the Hello handshake), producers retry within their send timeout and push
//! consumers re-join their group; see [`Client`].

#![warn(missing_docs)]

mod admin;
mod auth;
mod client;
mod cluster;
mod consumer;
mod error;
mod message;
mod producer;
mod push;
mod reader;
mod tls;
mod transaction;

pub use admin::{Admin, GroupDescription};
pub use auth::Credentials;
pub use client::{
    resolve_broker, BrokerInfo, Client, ClientConfig, DEFAULT_MAX_FRAME, DEFAULT_PORT,
};
pub use cluster::{Cluster, ClusterPushConsumer, ReadFrom, SetRoute, FAULT_PAUSE};
pub use consumer::{PullConsumer, PullOptions, PullResult};
pub use error::ClientError;
pub use message::{Delivery, Message, MessageId, ReceivedMessage};
pub use producer::{
    sharding_queue, Producer, ProducerOptions, QueueSelector, SelectFn, SendHandle, SendResult,
};
pub use push::{ConsumeFrom, ConsumeResult, IntoConsumeResult, PushConsumer, PushConsumerOptions};
pub use reader::QueueReader;
pub use tls::{
    fingerprint, fingerprint_hex, quinn_client_config, quinn_client_config_with, transport_config,
    ClientCertificate, Tls,
};
pub use transaction::{TransactionChecker, TransactionSendResult, TransactionState};

pub use quiver_protocol;
pub use quiver_protocol::{
    FilterSpec, GroupMode, GroupQueue, GroupSummary, MemberInfo, PluginFailurePolicy, PluginInfo,
    PluginKind, PluginRef, PullStatus, QueueInfo, QueueRef, Request, ResetTarget, Response, Status,
    Subscription, TopicSummary,
};

#[cfg(test)]
mod e2e_tests;
