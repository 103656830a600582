//! Produce: plain sends are validated, routed (auto-creating the topic), run through the
//! topic's ingress plugins and handed to the append thread through one bounded queue and
//! byte budget; the answer waits until they are durable.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quiver_protocol::cmd::{self, SendReply};
use quiver_protocol::names::{self, check_property_name, TopicName};
use quiver_protocol::{SendReceipt, Status, WireMessage};
use tokio::sync::{mpsc, oneshot};

use super::{blocking, Broker, BrokerError, Result};
use crate::store::{Appended, NewMessage, Store, StoreError};

/// One client send on its way to the append thread.
pub(super) enum AppendJob {
    Append {
        topic: String,
        queue_id: u32,
        messages: Vec<WireMessage>,
        born: SocketAddr,
        reply: oneshot::Sender<std::result::Result<Appended, StoreError>>,
        /// Bytes of the append-queue budget this job holds until it is in the log.
        _budget: tokio::sync::OwnedSemaphorePermit,
    },
    Stop,
}

impl Broker {
    /// `Send`: one message or an atomic batch to one queue.
    pub(super) async fn send(&self, c: cmd::Send, born: SocketAddr) -> Result<SendReply> {
        let topic = TopicName::parse(c.topic)?;
        let messages = self.accept(&topic, c.queue_id, c.messages).await?;
        let appended = self
            .store_messages(topic.into_string(), c.queue_id, messages, born)
            .await?;
        Ok(receipts(c.queue_id, &appended))
    }

    /// Validates a send, routes it (auto-creating the topic) and runs the topic's ingress
    /// plugins: what comes out is ready to store.
    pub(super) async fn accept(
        &self,
        topic: &TopicName,
        queue_id: u32,
        messages: Vec<WireMessage>,
    ) -> Result<Vec<WireMessage>> {
        // Validate everything before the topic may be auto-created.
        if names::is_system_topic(topic) {
            return Err(BrokerError::new(
                Status::InvalidName,
                format!("topic {topic:?} is a system topic; only the broker writes to it"),
            ));
        }
        if messages.is_empty() {
            return Err(BrokerError::new(
                Status::InvalidMessage,
                "a send carries at least one message",
            ));
        }
        let max_body = self.cfg.store.max_message_size;
        for m in &messages {
            if m.body.len() > max_body {
                return Err(BrokerError::new(
                    Status::MessageTooLarge,
                    format!(
                        "message body of {} bytes exceeds the maximum of {max_body} bytes",
                        m.body.len()
                    ),
                ));
            }
            for (k, _) in &m.properties {
                check_property_name(k)
                    .map_err(|e| BrokerError::new(Status::ReservedProperty, e))?;
            }
            if m.keys.iter().any(String::is_empty) {
                return Err(BrokerError::new(
                    Status::InvalidMessage,
                    "message keys must not be empty",
                ));
            }
        }
        let queues = self.route(topic, true).await?;
        if queue_id >= queues {
            return Err(BrokerError::new(
                Status::QueueNotFound,
                format!("topic {topic:?} has {queues} queues; queue {queue_id} does not exist"),
            ));
        }
        // The topic's ingress plugins validate, enrich or redact before anything is stored.
        let chain = self.plugins.ingress_chain(topic)?;
        if chain.is_empty() {
            return Ok(messages);
        }
        let (host, t) = (self.plugins.clone(), topic.to_string());
        Ok(blocking(move || host.apply_to_send(&chain, &t, queue_id, messages)).await??)
    }

    /// Appends through the append thread (bounded queue) and waits until durable.
    pub(super) async fn store_messages(
        &self,
        topic: String,
        queue_id: u32,
        messages: Vec<WireMessage>,
        born: SocketAddr,
    ) -> Result<Appended> {
        // Sync replication: nothing is stored while too few copies are in sync.
        self.replicas.check()?;
        let wait = Duration::from_millis(self.cfg.broker.busy_timeout_ms);
        let busy = || {
            BrokerError::new(
                Status::Busy,
                "broker is busy: the store's append queue is full; retry after a back-off",
            )
        };
        let bytes: usize = messages
            .iter()
            .map(|m| {
                64 + m.body.len()
                    + m.tag.len()
                    + m.keys.iter().map(|k| k.len() + 8).sum::<usize>()
                    + m.properties
                        .iter()
                        .map(|(k, v)| k.len() + v.len() + 16)
                        .sum::<usize>()
            })
            .sum();
        let permits =
            u32::try_from(bytes.min(self.cfg.broker.append_queue_bytes)).unwrap_or(u32::MAX);
        let budget = match tokio::time::timeout(
            wait,
            self.append_budget.clone().acquire_many_owned(permits),
        )
        .await
        {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => {
                return Err(BrokerError::new(
                    Status::ShuttingDown,
                    "broker is shutting down",
                ))
            }
            Err(_) => return Err(busy()),
        };
        let (reply, rx) = oneshot::channel();
        let started = std::time::Instant::now();
        let name = topic.clone();
        let job = AppendJob::Append {
            topic,
            queue_id,
            messages,
            born,
            reply,
            _budget: budget,
        };
        match self.appends.send_timeout(job, wait).await {
            Ok(()) => {}
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => return Err(busy()),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => {
                return Err(BrokerError::new(
                    Status::StoreUnavailable,
                    "the broker's append thread has stopped; the broker needs a restart",
                ))
            }
        }
        let appended = rx
            .await
            .map_err(|_| BrokerError::new(Status::ShuttingDown, "broker is shutting down"))??;
        self.metrics.append(started.elapsed());
        self.metrics.stored(
            &name,
            appended.results.len() as u64,
            appended.results.iter().map(|r| u64::from(r.size)).sum(),
        );
        // Sync replication: answered once enough slaves hold it.
        self.replicas.wait_acked(appended.end).await?;
        Ok(appended)
    }
}

pub(super) fn append_loop(store: Arc<Store>, mut rx: mpsc::Receiver<AppendJob>) {
    while let Some(job) = rx.blocking_recv() {
        let AppendJob::Append {
            topic,
            queue_id,
            messages,
            born,
            reply,
            _budget,
        } = job
        else {
            break;
        };
        let keys: Vec<Vec<&str>> = messages
            .iter()
            .map(|m| m.keys.iter().map(String::as_str).collect())
            .collect();
        let props: Vec<Vec<(&str, &str)>> = messages
            .iter()
            .map(|m| {
                m.properties
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect()
            })
            .collect();
        let msgs: Vec<NewMessage<'_>> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| NewMessage {
                msg_id: m.id,
                flags: m.flags,
                born_timestamp: m.born_timestamp,
                born_host: born,
                reconsume_times: 0,
                tag: &m.tag,
                keys: &keys[i],
                properties: &props[i],
                body: &m.body,
            })
            .collect();
        match store.append(&topic, queue_id, &msgs) {
            Ok(pending) => pending.on_durable(move |r| {
                let _ = reply.send(r);
            }),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

/// The answer to a send.
pub(super) fn receipts(queue_id: u32, appended: &Appended) -> SendReply {
    SendReply {
        queue_id,
        receipts: appended
            .results
            .iter()
            .map(|r| SendReceipt {
                id: r.msg_id,
                queue_offset: r.queue_offset,
                phys_offset: r.phys_offset,
            })
            .collect(),
    }
}
