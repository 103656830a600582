//! Reading one queue in order with several pulls in flight when the reader is behind.
//!
//! One pull at a time leaves the connection idle for a round trip between pulls; a reader that
//! is far behind the queue's end wants the next pull already on its way. The next pull's
//! offset is only known once the previous one answered (a byte limit or a filter can end a
//! pull early), so the extra pulls are speculative: one is issued at `offset + max_messages`
//! only while the queue is known to hold that range, and its answer is used only when the
//! pull before it ended exactly there. Otherwise it is dropped and the reader pulls again from
//! where the previous answer said: every message is handed out once, in queue order.

use std::collections::VecDeque;

use quiver_protocol::{FilterSpec, PullStatus};
use tokio::task::JoinHandle;

use crate::consumer::{PullConsumer, PullOptions, PullResult};
use crate::error::ClientError;

/// A pull on its way: the offset it starts at, how many messages it asked for, and the task.
struct InFlight {
    offset: u64,
    max_messages: u32,
    task: JoinHandle<Result<PullResult, ClientError>>,
}

/// Reads one queue in order, keeping up to `depth` pulls in flight while the queue holds more
/// than the reader has asked for. Dropping the reader cancels the pulls still on their way.
///
/// ```no_run
/// # async fn demo(consumer: quiver_client::PullConsumer) -> Result<(), quiver_client::ClientError> {
/// use quiver_client::{PullOptions, QueueReader};
/// let mut reader = QueueReader::new(consumer, "orders", 0, 0, 3);
/// loop {
///     let r = reader.next(PullOptions { max_messages: 256, ..PullOptions::default() }).await?;
///     for m in &r.messages {
///         println!("{} {}", m.queue_offset, m.body.len());
///     }
///     if r.next_offset >= r.max_offset {
///         break;
///     }
/// }
/// # Ok(()) }
/// ```
pub struct QueueReader {
    consumer: PullConsumer,
    topic: String,
    queue_id: u32,
    depth: usize,
    /// Where the next answer handed out starts.
    next: u64,
    /// The queue's end as last reported by the broker.
    known_max: u64,
    /// Oldest first; `inflight[0]` starts at `next` when it exists.
    inflight: VecDeque<InFlight>,
}

impl std::fmt::Debug for QueueReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueReader")
            .field("topic", &self.topic)
            .field("queue_id", &self.queue_id)
            .field("depth", &self.depth)
            .field("next", &self.next)
            .field("known_max", &self.known_max)
            .field("in_flight", &self.inflight.len())
            .finish()
    }
}

impl QueueReader {
    /// A reader of `topic`/`queue_id` starting at `offset`, with at most `depth` pulls in
    /// flight (at least 1; 1 is one pull at a time).
    pub fn new(
        consumer: PullConsumer,
        topic: impl Into<String>,
        queue_id: u32,
        offset: u64,
        depth: usize,
    ) -> Self {
        Self {
            consumer,
            topic: topic.into(),
            queue_id,
            depth: depth.max(1),
            next: offset,
            known_max: 0,
            inflight: VecDeque::new(),
        }
    }

    /// Where the next answer starts.
    pub fn offset(&self) -> u64 {
        self.next
    }

    /// Pulls pending right now (for tests and diagnostics).
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Moves the reader to `offset`, dropping the pulls on their way.
    pub fn seek(&mut self, offset: u64) {
        self.cancel();
        self.next = offset;
    }

    /// The next answer, in queue order, from `offset()`. `options` apply to the pulls issued
    /// by this call; extra pulls are issued only without a filter or plugins, without a long
    /// poll for messages that are not there yet, and only for ranges the queue holds. After an
    /// error nothing is in flight and `offset()` is unchanged: calling again retries.
    pub async fn next(&mut self, options: PullOptions) -> Result<PullResult, ClientError> {
        if self.inflight.is_empty() {
            self.issue(self.next, options.clone());
        }
        self.speculate(&options);
        let Some(first) = self.inflight.pop_front() else {
            return Err(ClientError::Internal("no pull in flight".into()));
        };
        let result = match first.task.await {
            Ok(r) => r,
            Err(e) => Err(ClientError::Internal(format!("pull task failed: {e}"))),
        };
        let r = match result {
            Ok(r) => r,
            Err(e) => {
                self.cancel();
                return Err(e);
            }
        };
        let full_end = first.offset + u64::from(first.max_messages);
        if !(r.status == PullStatus::Found && r.next_offset == full_end) {
            // The answer ended early (byte limit, filter, end of queue, offset out of range):
            // the pulls issued after it started in the wrong place.
            self.cancel();
        }
        self.next = r.next_offset;
        self.known_max = r.max_offset;
        Ok(r)
    }

    /// Issues extra pulls behind the ones in flight while the queue holds their whole range.
    fn speculate(&mut self, options: &PullOptions) {
        if !matches!(options.filter, FilterSpec::All) || !options.plugins.is_empty() {
            return;
        }
        let m = u64::from(options.max_messages.max(1));
        while self.inflight.len() < self.depth {
            let Some(last) = self.inflight.back() else {
                return;
            };
            let at = last.offset + u64::from(last.max_messages);
            if at + m > self.known_max {
                return;
            }
            let spec = PullOptions {
                long_poll: std::time::Duration::ZERO,
                ..options.clone()
            };
            self.issue(at, spec);
        }
    }

    fn issue(&mut self, offset: u64, options: PullOptions) {
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let queue_id = self.queue_id;
        let max_messages = options.max_messages.max(1);
        let task =
            tokio::spawn(async move { consumer.pull(&topic, queue_id, offset, options).await });
        self.inflight.push_back(InFlight {
            offset,
            max_messages,
            task,
        });
    }

    fn cancel(&mut self) {
        for p in self.inflight.drain(..) {
            p.task.abort();
        }
    }
}

impl Drop for QueueReader {
    fn drop(&mut self) {
        self.cancel();
    }
}
