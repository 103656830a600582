//! Pulling messages from queues and managing consumer-group offsets.

use std::time::Duration;

use quiver_protocol::cmd::{CommitOffset, FetchOffset, OffsetForTime, Pull, TopicDescribe};
use quiver_protocol::{names, FilterSpec, PluginRef, PullStatus, QueueInfo};

use crate::client::Client;
use crate::error::ClientError;
use crate::message::ReceivedMessage;

/// Limits of one pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullOptions {
    /// At most this many messages; default 32.
    pub max_messages: u32,
    /// About this many bytes at most (the first message is always returned); default 4 MiB.
    pub max_bytes: u32,
    /// When nothing is available, wait up to this long for a message to arrive before
    /// answering `NoNewMessages` (long polling); default zero (answer at once). Sent in
    /// whole milliseconds, at most `u32::MAX`.
    pub long_poll: Duration,
    /// Only messages matching this filter are returned (evaluated on the broker); offsets
    /// advance past the others. Default: every message.
    pub filter: FilterSpec,
    /// WebAssembly plugins the broker runs after the filter, in order (docs/PLUGINS.md);
    /// only what they keep, as they transformed it, is returned. Default: none.
    pub plugins: Vec<PluginRef>,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            max_messages: 32,
            max_bytes: 4 << 20,
            long_poll: Duration::ZERO,
            filter: FilterSpec::All,
            plugins: Vec::new(),
        }
    }
}

/// The outcome of one pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullResult {
    /// What happened (see [`PullStatus`]).
    pub status: PullStatus,
    /// Where the next pull should start.
    pub next_offset: u64,
    /// The queue's first readable offset.
    pub min_offset: u64,
    /// One past the queue's last offset.
    pub max_offset: u64,
    /// The messages, in queue order.
    pub messages: Vec<ReceivedMessage>,
}

/// Reads queues from explicit offsets (the application decides where to start and when to
/// commit), RocketMQ's "pull consumer". Cheap to clone.
#[derive(Debug, Clone)]
pub struct PullConsumer {
    client: Client,
}

fn check(kind: &str, name: &str) -> Result<(), ClientError> {
    names::check_name(kind, name).map_err(ClientError::InvalidArgument)
}

impl PullConsumer {
    /// A consumer reading over `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// The client this consumer reads over.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Reads messages of `topic`/`queue_id` starting at `offset`. With a non-zero
    /// `long_poll`, the broker holds the request until a message arrives or the time is up,
    /// and the request timeout is extended by that time.
    pub async fn pull(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        options: PullOptions,
    ) -> Result<PullResult, ClientError> {
        check("topic", topic)?;
        if options.plugins.len() > quiver_protocol::plugins::MAX_PLUGINS_PER_SUBSCRIPTION {
            return Err(ClientError::invalid(format!(
                "at most {} plugins per pull",
                quiver_protocol::plugins::MAX_PLUGINS_PER_SUBSCRIPTION
            )));
        }
        let long_poll_ms = u32::try_from(options.long_poll.as_millis()).unwrap_or(u32::MAX);
        let request = Pull {
            topic: topic.to_string(),
            queue_id,
            offset,
            max_messages: options.max_messages,
            max_bytes: options.max_bytes,
            long_poll_ms,
            filter: options.filter,
            plugins: options.plugins,
        };
        let reply = self.client.call(request).await?;
        Ok(PullResult {
            status: reply.status,
            next_offset: reply.next_offset,
            min_offset: reply.min_offset,
            max_offset: reply.max_offset,
            messages: reply
                .records
                .into_iter()
                .map(ReceivedMessage::parse)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Stores `offset` (the next offset to consume) for a consumer group on a queue.
    pub async fn commit_offset(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
        offset: u64,
    ) -> Result<(), ClientError> {
        check("group", group)?;
        check("topic", topic)?;
        let request = CommitOffset {
            group: group.to_string(),
            topic: topic.to_string(),
            queue_id,
            offset,
        };
        self.client.call(request).await?;
        Ok(())
    }

    /// The offset a consumer group committed on a queue, or `None` if it never committed.
    pub async fn fetch_offset(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
    ) -> Result<Option<u64>, ClientError> {
        check("group", group)?;
        check("topic", topic)?;
        let request = FetchOffset {
            group: group.to_string(),
            topic: topic.to_string(),
            queue_id,
        };
        Ok(self.client.call(request).await?.offset)
    }

    /// The first queue offset whose message was stored at or after `timestamp_ms` (ms since
    /// the Unix epoch). When the broker finds none it answers an error or an empty offset;
    /// the latter becomes a [`ClientError::Broker`] error with status `NotFound`.
    pub async fn offset_for_timestamp(
        &self,
        topic: &str,
        queue_id: u32,
        timestamp_ms: i64,
    ) -> Result<u64, ClientError> {
        check("topic", topic)?;
        let request = OffsetForTime {
            topic: topic.to_string(),
            queue_id,
            timestamp_ms,
        };
        match self.client.call(request).await?.offset {
            Some(o) => Ok(o),
            None => Err(ClientError::Broker {
                status: quiver_protocol::Status::NotFound,
                message: format!("no offset at or after {timestamp_ms} in {topic}/{queue_id}"),
            }),
        }
    }

    /// The queues of a topic with their readable ranges.
    pub async fn queues(&self, topic: &str) -> Result<Vec<QueueInfo>, ClientError> {
        describe(&self.client, topic).await
    }
}

pub(crate) async fn describe(client: &Client, topic: &str) -> Result<Vec<QueueInfo>, ClientError> {
    check("topic", topic)?;
    let request = TopicDescribe {
        topic: topic.to_string(),
    };
    Ok(client.call(request).await?.queues)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_defaults() {
        let o = PullOptions::default();
        assert_eq!(o.max_messages, 32);
        assert_eq!(o.max_bytes, 4 << 20);
        assert_eq!(o.long_poll, Duration::ZERO);
    }

    #[tokio::test]
    async fn bad_names_fail_locally() {
        let c = PullConsumer::new(Client::closed_for_tests());
        let e = c
            .pull("bad topic", 0, 0, PullOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::InvalidArgument(_)), "{e:?}");
        let e = c.commit_offset("g g", "demo", 0, 1).await.unwrap_err();
        assert!(matches!(e, ClientError::InvalidArgument(_)), "{e:?}");
        // Valid arguments reach the (closed) client.
        let e = c.fetch_offset("g", "demo", 0).await.unwrap_err();
        assert_eq!(e, ClientError::Closed);
    }
}
