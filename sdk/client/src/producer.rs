//! Sending messages: queue selection, route cache, retries, sync/async/one-way/batch sends.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quiver_protocol::cmd::{self, encode_request, CancelScheduled, SendReply, SendSpecial};
use quiver_protocol::record::{fnv1a, FNV_OFFSET};
use quiver_protocol::{names, SendMode, Status, WireMessage};
use tokio::sync::oneshot;

use crate::client::Client;
use crate::cluster::{Cluster, SetRoute};
use crate::error::ClientError;
use crate::message::{Delivery, Message, MessageId};

/// How long a topic's route is cached.
const ROUTE_TTL: Duration = Duration::from_secs(30);
/// How long a route naming a broker set whose broker is not alive is cached (to notice its
/// return soon).
const DEGRADED_ROUTE_TTL: Duration = Duration::from_secs(2);
/// First retry back-off; doubles on every further retry.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Shortest time one attempt gets when a cluster route leaves room for a retry elsewhere.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);
/// Shared requests in flight per queue (see [`ProducerOptions::coalesce`]).
const LANE_IN_FLIGHT: usize = 4;
/// Most messages in one shared request.
const LANE_MAX_MESSAGES: usize = 1024;
/// About the most body bytes in one shared request (the first message always goes).
const LANE_MAX_BYTES: usize = 4 << 20;

/// The queue a sharding key maps to: `fnv1a64(key) % queue_count` (FNV-1a, 64-bit, offset
/// basis `0xcbf29ce484222325`, prime `0x100000001b3`, over the key's UTF-8 bytes). Stable
/// across processes, platforms and SDK versions, so every producer sends a key to the same
/// queue while the topic's queue count does not change. `queue_count` 0 is treated as 1.
pub fn sharding_queue(key: &str, queue_count: u32) -> u32 {
    (fnv1a(FNV_OFFSET, key.as_bytes()) % u64::from(queue_count.max(1))) as u32
}

/// A custom queue selector: the message and the topic's queue count in, a queue id out.
pub type SelectFn = dyn Fn(&Message, u32) -> u32 + Send + Sync;

/// How a producer picks the queue of a message that has no sharding key (a message with one
/// always goes to [`sharding_queue`]).
#[derive(Clone, Default)]
pub enum QueueSelector {
    /// Rotate over the topic's queues.
    #[default]
    RoundRobin,
    /// Always this queue (an error if the topic has fewer queues).
    Fixed(u32),
    /// A function of the message and the topic's queue count; the result is taken modulo
    /// the queue count.
    Custom(Arc<SelectFn>),
}

impl fmt::Debug for QueueSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueSelector::RoundRobin => f.write_str("RoundRobin"),
            QueueSelector::Fixed(q) => f.debug_tuple("Fixed").field(q).finish(),
            QueueSelector::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    /// Extra attempts after a retryable failure ([`ClientError::is_retryable`]); default 2.
    /// Back-off starts at 50 ms and doubles; all attempts share `send_timeout`. Reconnecting
    /// after a lost connection happens inside an attempt (see [`Client`]), so two retries
    /// are enough to ride out a broker restart that fits in `send_timeout`.
    pub retries: u32,
    /// Total time allowed for one send, retries and reconnecting included; default 3 s.
    /// Never exceeded, even when the broker is down: the send then fails with the last
    /// error (for example [`ClientError::Unreachable`]).
    pub send_timeout: Duration,
    /// Queue choice for messages without a sharding key; default round-robin.
    pub selector: QueueSelector,
    /// Ask the broker to create missing topics (if its configuration allows); default true.
    pub auto_create: bool,
    /// Producer group (`[A-Za-z0-9_%|-]`, 1 to 127 characters): transactional messages
    /// belong to it, and any live producer of the group with a transaction checker answers
    /// the broker's check-backs; default `DEFAULT_PRODUCER`.
    pub group: String,
    /// Let concurrent [`Producer::send`]s to the same queue share requests; default true.
    /// A send that finds the queue idle goes at once, alone; sends that arrive while up to
    /// four requests for that queue are in flight wait for the next one and go together (up
    /// to 1024 messages or about 4 MiB), so many sends in flight cost few requests. Each
    /// send still gets its own [`SendResult`] or error: when a shared request fails, each of
    /// its messages is retried on its own (same ids, same `send_timeout`), so one bad message
    /// never fails another. Scheduled messages, batches and one-way sends never share.
    pub coalesce: bool,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        Self {
            retries: 2,
            send_timeout: Duration::from_secs(3),
            selector: QueueSelector::RoundRobin,
            auto_create: true,
            group: "DEFAULT_PRODUCER".into(),
            coalesce: true,
        }
    }
}

/// Where a sent message was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    /// The message's id.
    pub msg_id: MessageId,
    /// Topic.
    pub topic: String,
    /// Queue it was appended to (its number on its broker set).
    pub queue_id: u32,
    /// The broker set that stored it (a producer over a [`Cluster`]); empty for a producer
    /// over one [`Client`].
    pub broker_set: String,
    /// Its offset in that queue.
    pub queue_offset: u64,
    /// Its offset in the broker's commit log.
    pub commit_log_offset: u64,
}

/// A topic's queues: over one client, or over the broker sets of a cluster route, whose
/// queues are numbered one after another in route order (global queue ids).
#[derive(Debug)]
struct Route {
    /// Total queue count.
    queues: u32,
    /// The sets with the first global queue id of each.
    sets: Vec<(u32, SetRoute)>,
    fetched: Instant,
}

impl Route {
    /// The set holding global queue `q` and the queue's number there.
    fn locate(&self, q: u32) -> Option<(&SetRoute, u32)> {
        self.sets
            .iter()
            .rev()
            .find(|(first, _)| *first <= q)
            .filter(|(first, s)| q - first < s.queues)
            .map(|(first, s)| (s, q - first))
    }
}

struct Inner {
    client: Client,
    cluster: Option<Cluster>,
    opts: ProducerOptions,
    routes: Mutex<HashMap<String, Arc<Route>>>,
    round_robin: AtomicU32,
    /// Sends waiting to share a request, by (topic, queue).
    lanes: Mutex<HashMap<(String, u32), Lane>>,
}

/// Sends to one queue waiting for a shared request, and the requests in flight for it.
#[derive(Default)]
struct Lane {
    pending: VecDeque<Pending>,
    in_flight: usize,
}

/// One send waiting in a [`Lane`].
struct Pending {
    message: Message,
    wire: WireMessage,
    target: Target,
    deadline: Instant,
    reply: oneshot::Sender<Result<SendResult, ClientError>>,
}

/// Sends messages. Cheap to clone (an `Arc`); clones share the route cache.
///
/// Every send validates the message, looks up the topic's queue count (cached for 30 s,
/// refreshed early on `QueueNotFound`), picks a queue (sharding key first, then the
/// [`QueueSelector`]) and retries retryable failures within `send_timeout`.
///
/// **Duplicates.** A retried send keeps its message ids, and delivery is at least once: a
/// send (or batch) is stored twice, with the same id(s), when an attempt reached the broker
/// and was stored but its answer never came back: the attempt failed with
/// [`ClientError::ConnectionLost`] (for example the broker was killed right after storing it,
/// or the client declared the connection dead) or [`ClientError::Timeout`], and a retry then
/// succeeded. Retries after [`ClientError::Unreachable`] (nothing was sent) or an error status
/// from the broker (`Busy`, `DiskFull`, `ShuttingDown`, `QueueNotFound`: nothing was stored)
/// never duplicate. A send that finally fails may still have been stored. Consumers that must
/// not process a message twice deduplicate by [`SendResult::msg_id`] (the same id comes back
/// in [`crate::ReceivedMessage::msg_id`]). One-way sends are never retried (at most once).
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("client", &self.inner.client)
            .field("opts", &self.inner.opts)
            .finish()
    }
}

/// How the queue of a send is chosen.
#[derive(Clone, Copy)]
pub(crate) enum Target {
    /// By sharding key or selector.
    Select,
    /// Exactly this queue.
    Queue(u32),
}

impl Producer {
    /// A producer sending over `client`.
    pub fn new(client: Client, options: ProducerOptions) -> Self {
        Self::build(client, None, options)
    }

    /// A producer sending to the brokers of a cluster: each topic's route (its broker sets
    /// and their queues) comes from the cluster and is cached for 30 s (refreshed at once
    /// after a failure). Queue ids run over the route's sets in order (a topic with 4 queues
    /// on each of two sets has global queues 0..8; [`Producer::send_to_queue`] takes such
    /// an id), and [`SendResult`] names the set and its own queue number. A set that failed
    /// a send is avoided for 10 s by the round-robin selector and by sharding keys whose
    /// queue is on it (their order then holds only while their set is up: docs/SEMANTICS.md).
    pub fn with_cluster(cluster: Cluster, options: ProducerOptions) -> Self {
        let client = cluster.bootstrap()[0].clone();
        Self::build(client, Some(cluster), options)
    }

    fn build(client: Client, cluster: Option<Cluster>, options: ProducerOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                cluster,
                opts: options,
                routes: Mutex::new(HashMap::new()),
                round_robin: AtomicU32::new(0),
                lanes: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The client this producer sends over (over a cluster: the first bootstrap broker's).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The connection to the broker of broker set `set` (a [`SendResult::broker_set`]),
    /// from the routes this producer has read; the producer's own client outside a cluster
    /// or for a set it has not seen.
    pub fn client_of(&self, set: &str) -> Client {
        if self.inner.cluster.is_none() || set.is_empty() {
            return self.inner.client.clone();
        }
        let routes = lock(&self.inner.routes);
        routes
            .values()
            .flat_map(|r| r.sets.iter())
            .find(|(_, s)| s.name == set)
            .map_or_else(|| self.inner.client.clone(), |(_, s)| s.client.clone())
    }

    /// The cluster this producer routes through, if any.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.inner.cluster.as_ref()
    }

    /// The options.
    pub fn options(&self) -> &ProducerOptions {
        &self.inner.opts
    }

    /// Sends one message and waits until the broker has stored it (concurrent sends to one
    /// queue may share a request: [`ProducerOptions::coalesce`]).
    pub async fn send(&self, message: Message) -> Result<SendResult, ClientError> {
        self.send_one(message, Target::Select).await
    }

    /// Sends one message to a given queue (no selector, no sharding key routing).
    pub async fn send_to_queue(
        &self,
        message: Message,
        queue_id: u32,
    ) -> Result<SendResult, ClientError> {
        self.send_one(message, Target::Queue(queue_id)).await
    }

    /// One plain send: through the queue's lane when sends may share requests.
    async fn send_one(&self, message: Message, target: Target) -> Result<SendResult, ClientError> {
        if !self.inner.opts.coalesce || message.delivery().is_some() {
            let mut results = self.send_many(vec![message], target, None).await?;
            return results
                .pop()
                .ok_or_else(|| ClientError::Protocol("no receipt for the message".into()));
        }
        message.validate()?;
        let deadline = Instant::now() + self.inner.opts.send_timeout;
        let queue_id = match self.pick_queue(&message, target, deadline).await {
            Ok((_, q)) => q,
            // Routing failed (e.g. the broker is restarting): that was the first attempt; the
            // plain path makes the others.
            Err(e) => {
                let Some(backoff) = self.next_backoff(message.topic(), &e, target, 0, deadline)
                else {
                    return Err(e);
                };
                tokio::time::sleep(backoff).await;
                let wire = vec![message.to_wire(MessageId::new())];
                let mut results = self
                    .send_prepared(&[message], &wire, target, None, deadline, 1)
                    .await?;
                return results
                    .pop()
                    .ok_or_else(|| ClientError::Protocol("no receipt for the message".into()));
            }
        };
        let wire = message.to_wire(MessageId::new());
        let key = (message.topic().to_string(), queue_id);
        let (reply, result) = oneshot::channel();
        let drive = {
            let mut lanes = lock(&self.inner.lanes);
            let lane = lanes.entry(key.clone()).or_default();
            lane.pending.push_back(Pending {
                message,
                wire,
                target,
                deadline,
                reply,
            });
            let drive = lane.in_flight < LANE_IN_FLIGHT;
            if drive {
                lane.in_flight += 1;
            }
            drive
        };
        if drive {
            // A task of its own: the shared request must go on even if this caller gives up.
            tokio::spawn(self.clone().drive_lane(key));
        }
        result
            .await
            .map_err(|_| ClientError::Internal("the send was dropped before it finished".into()))?
    }

    /// Sends what waits in a lane, one shared request at a time, until the lane is empty.
    async fn drive_lane(self, key: (String, u32)) {
        // A shared request stays well inside the broker's frame limit.
        let max_bytes = self.inner.client.broker_info().map_or(LANE_MAX_BYTES, |b| {
            LANE_MAX_BYTES.min(b.max_frame as usize / 2)
        });
        loop {
            let batch: Vec<Pending> = {
                let mut lanes = lock(&self.inner.lanes);
                let Some(lane) = lanes.get_mut(&key) else {
                    return;
                };
                let mut bytes = 0usize;
                let mut batch = Vec::new();
                while let Some(p) = lane.pending.front() {
                    let size = p.wire.body.len() + 64;
                    if !batch.is_empty()
                        && (batch.len() >= LANE_MAX_MESSAGES || bytes + size > max_bytes)
                    {
                        break;
                    }
                    bytes += size;
                    batch.extend(lane.pending.pop_front());
                }
                if batch.is_empty() {
                    lane.in_flight -= 1;
                    if lane.in_flight == 0 {
                        lanes.remove(&key);
                    }
                    return;
                }
                batch
            };
            self.send_shared(&key, batch).await;
        }
    }

    /// One shared request; on failure each message is retried on its own.
    async fn send_shared(&self, key: &(String, u32), batch: Vec<Pending>) {
        let deadline = batch.iter().map(|p| p.deadline).min();
        let wire: Vec<WireMessage> = batch.iter().map(|p| p.wire.clone()).collect();
        let result = match deadline {
            Some(deadline) => match self.route(&key.0, deadline).await {
                Ok(route) => {
                    self.send_to(&route, &key.0, key.1, wire, None, deadline)
                        .await
                }
                Err(e) => Err(e),
            },
            None => return,
        };
        match result {
            Ok(results) => {
                for (p, r) in batch.into_iter().zip(results) {
                    let _ = p.reply.send(Ok(r));
                }
            }
            // A lone message's own error is final, except a stale route, which the plain
            // path refreshes and retries once.
            Err(e)
                if batch.len() == 1
                    && !e.is_retryable()
                    && !matches!(
                        e.status(),
                        Some(Status::QueueNotFound | Status::TopicNotFound)
                    ) =>
            {
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                tracing::debug!(topic = %key.0, queue = key.1, messages = batch.len(), error = %e,
                    "shared send failed; retrying its messages one by one");
                if matches!(
                    e.status(),
                    Some(Status::QueueNotFound | Status::TopicNotFound)
                ) {
                    self.forget_route(&key.0);
                }
                // A retryable failure counts as each message's first attempt and backs off
                // first, as a lone send would; another message's error does not count.
                let retryable = e.is_retryable();
                let backoff = if retryable {
                    FIRST_BACKOFF
                } else {
                    Duration::ZERO
                };
                for p in batch {
                    let me = self.clone();
                    let e = e.clone();
                    tokio::spawn(async move {
                        let out_of_attempts = retryable && me.inner.opts.retries == 0;
                        if out_of_attempts || Instant::now() + backoff >= p.deadline {
                            let _ = p.reply.send(Err(e));
                            return;
                        }
                        tokio::time::sleep(backoff).await;
                        let r = me
                            .send_prepared(
                                std::slice::from_ref(&p.message),
                                std::slice::from_ref(&p.wire),
                                p.target,
                                None,
                                p.deadline,
                                u32::from(retryable),
                            )
                            .await
                            .and_then(|mut r| {
                                r.pop().ok_or_else(|| {
                                    ClientError::Protocol("no receipt for the message".into())
                                })
                            });
                        let _ = p.reply.send(r);
                    });
                }
            }
        }
    }

    /// Starts sending one message in a background tokio task and returns a handle to await
    /// its result; many sends can be in flight at once on one connection. Dropping the handle
    /// does not cancel the send. Must be called inside a tokio runtime.
    pub fn send_async(&self, message: Message) -> SendHandle {
        let me = self.clone();
        SendHandle {
            task: tokio::spawn(async move { me.send(message).await }),
        }
    }

    /// Sends an atomic batch: all messages must have the same topic; they go in one request
    /// to one queue (chosen by the first message's sharding key or the selector) and are
    /// stored all together or not at all. Results are in message order.
    pub async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<SendResult>, ClientError> {
        let Some(first) = messages.first() else {
            return Err(ClientError::invalid("a batch needs at least one message"));
        };
        if let Some(m) = messages.iter().find(|m| m.topic() != first.topic()) {
            return Err(ClientError::invalid(format!(
                "all messages of a batch must have the same topic: {:?} and {:?}",
                first.topic(),
                m.topic()
            )));
        }
        if let Some(m) = messages.iter().find(|m| m.delivery() != first.delivery()) {
            return Err(ClientError::invalid(format!(
                "all messages of a batch must have the same delivery time: {:?} and {:?}",
                first.delivery(),
                m.delivery()
            )));
        }
        self.send_many(messages, Target::Select, None).await
    }

    /// Cancels a scheduled message that is not yet due (by the id its send returned).
    /// Fails with [`Status::AlreadyDue`] once it is due or delivered and
    /// [`Status::NotFound`] for an unknown id.
    /// Over a cluster, every broker this producer has reached is asked until one holds it.
    pub async fn cancel_scheduled(&self, id: MessageId) -> Result<(), ClientError> {
        let Some(cluster) = &self.inner.cluster else {
            self.inner.client.call(CancelScheduled { id: id.0 }).await?;
            return Ok(());
        };
        let mut last = None;
        for c in cluster.clients() {
            match c.call(CancelScheduled { id: id.0 }).await {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClientError::Broker {
            status: Status::NotFound,
            message: format!("no scheduled message {id}"),
        }))
    }

    /// Sends one message without waiting for the broker: returns once the request is written
    /// to the connection. No result, no retries, and errors on the broker side are lost.
    pub async fn send_oneway(&self, message: Message) -> Result<(), ClientError> {
        message.validate()?;
        let deadline = Instant::now() + self.inner.opts.send_timeout;
        let route = self.route(message.topic(), deadline).await?;
        let queue_id = self.select(&message, &route)?;
        let (set, local) = route
            .locate(queue_id)
            .ok_or_else(|| ClientError::invalid(format!("no queue {queue_id}")))?;
        let request = SendRequest::new(
            message.topic().to_string(),
            local,
            vec![message.to_wire(MessageId::new())],
            special_mode(&message, None),
        );
        set.client.send_oneway_frame(request.frame()).await
    }

    pub(crate) async fn send_many(
        &self,
        messages: Vec<Message>,
        target: Target,
        half_group: Option<&str>,
    ) -> Result<Vec<SendResult>, ClientError> {
        for m in &messages {
            m.validate()?;
        }
        let deadline = Instant::now() + self.inner.opts.send_timeout;
        // Ids are fixed once, so a retried send carries the same ids.
        let wire: Vec<WireMessage> = messages
            .iter()
            .map(|m| m.to_wire(MessageId::new()))
            .collect();
        self.send_prepared(&messages, &wire, target, half_group, deadline, 0)
            .await
    }

    /// Sends validated messages with their ids fixed, retrying retryable failures until
    /// `deadline`; `attempt` attempts were already made.
    async fn send_prepared(
        &self,
        messages: &[Message],
        wire: &[WireMessage],
        target: Target,
        half_group: Option<&str>,
        deadline: Instant,
        mut attempt: u32,
    ) -> Result<Vec<SendResult>, ClientError> {
        let topic = messages[0].topic().to_string();
        loop {
            let result = self
                .attempt(&topic, &messages[0], wire, target, deadline, half_group)
                .await;
            let err = match result {
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            let Some(backoff) = self.next_backoff(&topic, &err, target, attempt, deadline) else {
                return Err(err);
            };
            tracing::debug!(topic = %topic, attempt, error = %err, "send failed; retrying");
            tokio::time::sleep(backoff).await;
            attempt += 1;
        }
    }

    /// Whether attempt number `attempt` (0 for the first) that failed with `err` is worth
    /// another, and after which back-off; forgets a stale route.
    fn next_backoff(
        &self,
        topic: &str,
        err: &ClientError,
        target: Target,
        attempt: u32,
        deadline: Instant,
    ) -> Option<Duration> {
        let status = err.status();
        if matches!(status, Some(Status::QueueNotFound | Status::TopicNotFound)) {
            self.forget_route(topic);
        }
        // A stale route can pick a queue that no longer exists: worth one more try with a
        // fresh route when the queue was ours to choose.
        let retryable = err.is_retryable()
            || (status == Some(Status::QueueNotFound) && matches!(target, Target::Select));
        if !retryable || attempt >= self.inner.opts.retries {
            return None;
        }
        let backoff = FIRST_BACKOFF * 2u32.saturating_pow(attempt);
        (Instant::now() + backoff < deadline).then_some(backoff)
    }

    async fn attempt(
        &self,
        topic: &str,
        first: &Message,
        wire: &[WireMessage],
        target: Target,
        deadline: Instant,
        half_group: Option<&str>,
    ) -> Result<Vec<SendResult>, ClientError> {
        let (route, queue_id) = self.pick_queue(first, target, deadline).await?;
        let mode = special_mode(first, half_group);
        self.send_to(&route, topic, queue_id, wire.to_vec(), mode, deadline)
            .await
    }

    /// The topic's route (read even for a given queue: it creates the topic when
    /// auto-creation is on) and the queue for a send: the given one, or by sharding key or
    /// selector.
    async fn pick_queue(
        &self,
        first: &Message,
        target: Target,
        deadline: Instant,
    ) -> Result<(Arc<Route>, u32), ClientError> {
        let route = self.route(first.topic(), deadline).await?;
        let queue = match target {
            Target::Queue(q) => q,
            Target::Select => self.select(first, &route)?,
        };
        Ok((route, queue))
    }

    /// One request for one (global) queue of `route`, answered with a result per message.
    async fn send_to(
        &self,
        route: &Route,
        topic: &str,
        queue_id: u32,
        wire: Vec<WireMessage>,
        mode: Option<SendMode>,
        deadline: Instant,
    ) -> Result<Vec<SendResult>, ClientError> {
        let located = match route.locate(queue_id) {
            Some(l) => Some(l),
            // One broker: it judges the queue id itself (its queue count may have grown).
            None if self.inner.cluster.is_none() => route.sets.first().map(|(_, s)| (s, queue_id)),
            None => None,
        };
        let Some((set, local)) = located else {
            return Err(ClientError::Broker {
                status: Status::QueueNotFound,
                message: format!("topic {topic:?} has {} queues", route.queues),
            });
        };
        let sent = wire.len();
        let request = SendRequest::new(topic.to_string(), local, wire, mode);
        let mut timeout = self.timeout_until(deadline)?;
        if self.inner.cluster.is_some() && route.sets.len() > 1 {
            // Leave time for a retry on another set if this one's broker is dead (a killed
            // QUIC peer is only noticed by silence).
            timeout = timeout.min((timeout / 2).max(MIN_ATTEMPT));
        }
        let reply = request.call(&set.client, timeout).await;
        let SendReply { queue_id, receipts } = match reply {
            Ok(r) => r,
            Err(e) => {
                if let Some(cluster) = &self.inner.cluster {
                    if e.is_retryable() {
                        // Avoid the set for a while and read the route again (its broker may
                        // be down, or gone).
                        cluster.mark_failed(&set.name);
                        self.forget_route(topic);
                    }
                }
                return Err(e);
            }
        };
        if receipts.len() != sent {
            return Err(ClientError::Protocol(format!(
                "{} receipts for {} messages",
                receipts.len(),
                sent
            )));
        }
        let broker_set = if self.inner.cluster.is_some() {
            set.name.clone()
        } else {
            String::new()
        };
        Ok(receipts
            .iter()
            .map(|r| SendResult {
                msg_id: MessageId(r.id),
                topic: topic.to_string(),
                queue_id,
                broker_set: broker_set.clone(),
                queue_offset: r.queue_offset,
                commit_log_offset: r.phys_offset,
            })
            .collect())
    }

    /// Time left for one request: the smaller of the request timeout and the deadline.
    fn timeout_until(&self, deadline: Instant) -> Result<Duration, ClientError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout(self.inner.opts.send_timeout));
        }
        Ok(left.min(self.inner.client.config().request_timeout))
    }

    /// The (global) queue for a message, given the topic's route.
    fn select(&self, message: &Message, route: &Route) -> Result<u32, ClientError> {
        let queues = route.queues;
        if queues == 0 {
            return Err(ClientError::Protocol(format!(
                "topic {:?} has no queues",
                message.topic()
            )));
        }
        let usable = |q: u32| match (&self.inner.cluster, route.locate(q)) {
            (Some(c), Some((s, _))) => s.alive && c.available(&s.name),
            _ => true,
        };
        if let Some(key) = message.sharding_key() {
            let q = sharding_queue(key, queues);
            if usable(q) {
                return Ok(q);
            }
            // Its set is down: the key moves to the queues that are up (its order holds
            // only while its set is up).
            let up: Vec<u32> = (0..queues).filter(|q| usable(*q)).collect();
            return Ok(if up.is_empty() {
                q
            } else {
                up[sharding_queue(key, up.len() as u32) as usize]
            });
        }
        Ok(match &self.inner.opts.selector {
            QueueSelector::RoundRobin => {
                let mut q = self.inner.round_robin.fetch_add(1, Ordering::Relaxed) % queues;
                for _ in 0..queues {
                    if usable(q) {
                        break;
                    }
                    q = self.inner.round_robin.fetch_add(1, Ordering::Relaxed) % queues;
                }
                q
            }
            QueueSelector::Fixed(q) if *q < queues => *q,
            QueueSelector::Fixed(q) => {
                return Err(ClientError::invalid(format!(
                    "fixed queue {q} but topic {:?} has {queues} queues",
                    message.topic()
                )))
            }
            QueueSelector::Custom(f) => f(message, queues) % queues,
        })
    }

    /// The route of a topic, from the cache or the broker(s).
    async fn route(&self, topic: &str, deadline: Instant) -> Result<Arc<Route>, ClientError> {
        if let Some(r) = self.cached_route(topic) {
            return Ok(r);
        }
        names::check_name("topic", topic).map_err(ClientError::InvalidArgument)?;
        let timeout = self.timeout_until(deadline)?;
        let sets: Vec<SetRoute> = match &self.inner.cluster {
            Some(cluster) => {
                cluster
                    .route(topic, self.inner.opts.auto_create, timeout)
                    .await?
            }
            None => {
                let request = cmd::Route {
                    topic: topic.to_string(),
                    create: self.inner.opts.auto_create,
                };
                let cmd::RouteReply { queues } = self
                    .inner
                    .client
                    .call_with_timeout(request, timeout)
                    .await?;
                vec![SetRoute {
                    name: String::new(),
                    queues,
                    alive: true,
                    client: self.inner.client.clone(),
                }]
            }
        };
        let mut first = 0u32;
        let mut numbered = Vec::with_capacity(sets.len());
        for s in sets {
            let next = first.saturating_add(s.queues);
            numbered.push((first, s));
            first = next;
        }
        if first == 0 {
            return Err(ClientError::Protocol(format!(
                "broker reports 0 queues for topic {topic:?}"
            )));
        }
        let route = Arc::new(Route {
            queues: first,
            sets: numbered,
            fetched: Instant::now(),
        });
        if let Ok(mut routes) = self.inner.routes.lock() {
            routes.insert(topic.to_string(), route.clone());
        }
        Ok(route)
    }

    fn cached_route(&self, topic: &str) -> Option<Arc<Route>> {
        let routes = self.inner.routes.lock().ok()?;
        routes
            .get(topic)
            .filter(|r| {
                let ttl = if r.sets.iter().all(|(_, s)| s.alive) {
                    ROUTE_TTL
                } else {
                    DEGRADED_ROUTE_TTL
                };
                r.fetched.elapsed() < ttl
            })
            .cloned()
    }

    fn forget_route(&self, topic: &str) {
        if let Ok(mut routes) = self.inner.routes.lock() {
            routes.remove(topic);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The system mode of a send: scheduled (from the message), half (transactions) or none.
fn special_mode(message: &Message, half_group: Option<&str>) -> Option<SendMode> {
    if let Some(group) = half_group {
        return Some(SendMode::Half {
            group: group.to_string(),
        });
    }
    message.delivery().map(|d| match d {
        Delivery::At(ms) => SendMode::DeliverAt(ms),
        Delivery::After(d) => SendMode::DelayMs(d.as_millis().min(i64::MAX as u128) as i64),
        Delivery::Level(l) => SendMode::DelayLevel(l),
    })
}

/// Messages for one queue: a plain [`cmd::Send`], or a [`SendSpecial`] when they have a
/// mode; both are answered with a [`SendReply`].
enum SendRequest {
    Plain(cmd::Send),
    Special(SendSpecial),
}

impl SendRequest {
    fn new(
        topic: String,
        queue_id: u32,
        messages: Vec<WireMessage>,
        mode: Option<SendMode>,
    ) -> Self {
        match mode {
            None => SendRequest::Plain(cmd::Send {
                topic,
                queue_id,
                messages,
            }),
            Some(mode) => SendRequest::Special(SendSpecial {
                topic,
                queue_id,
                mode,
                messages,
            }),
        }
    }

    /// The whole request frame (for one-way sends).
    fn frame(&self) -> Bytes {
        match self {
            SendRequest::Plain(c) => encode_request(c),
            SendRequest::Special(c) => encode_request(c),
        }
    }

    /// Sends it and waits for the receipts, within `timeout`.
    async fn call(self, client: &Client, timeout: Duration) -> Result<SendReply, ClientError> {
        match self {
            SendRequest::Plain(c) => client.call_with_timeout(c, timeout).await,
            SendRequest::Special(c) => client.call_with_timeout(c, timeout).await,
        }
    }
}

/// The pending result of [`Producer::send_async`]; await it for the [`SendResult`].
#[derive(Debug)]
pub struct SendHandle {
    task: tokio::task::JoinHandle<Result<SendResult, ClientError>>,
}

impl Future for SendHandle {
    type Output = Result<SendResult, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.task).poll(cx).map(|r| match r {
            Ok(result) => result,
            Err(e) => Err(ClientError::Internal(format!("send task failed: {e}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharding_queue_is_stable() {
        // FNV-1a 64 reference values: these must never change.
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(
            sharding_queue("foobar", 16),
            (0x8594_4171_f739_67e8u64 % 16) as u32
        );
        for key in ["order-1", "order-2", "customer-42", ""] {
            let q = sharding_queue(key, 8);
            assert!(q < 8);
            for _ in 0..10 {
                assert_eq!(sharding_queue(key, 8), q);
            }
        }
        assert_eq!(sharding_queue("x", 0), 0);
        assert_eq!(sharding_queue("x", 1), 0);
        // Keys spread over the queues.
        let used: std::collections::HashSet<u32> = (0..200)
            .map(|i| sharding_queue(&format!("k{i}"), 8))
            .collect();
        assert_eq!(used.len(), 8);
    }

    fn route(queues: u32) -> Route {
        Route {
            queues,
            sets: vec![(
                0,
                SetRoute {
                    name: String::new(),
                    queues,
                    alive: true,
                    client: Client::closed_for_tests(),
                },
            )],
            fetched: Instant::now(),
        }
    }

    fn producer(selector: QueueSelector) -> Producer {
        // select() and validation need no network: a closed client is enough.
        Producer::new(
            Client::closed_for_tests(),
            ProducerOptions {
                selector,
                ..ProducerOptions::default()
            },
        )
    }

    #[tokio::test]
    async fn sharding_key_beats_selector() {
        let m = Message::new("demo", "x").with_sharding_key("order-7");
        let want = sharding_queue("order-7", 8);
        for sel in [
            QueueSelector::RoundRobin,
            QueueSelector::Fixed((want + 1) % 8),
            QueueSelector::Custom(Arc::new(|_, n| n - 1)),
        ] {
            let p = producer(sel);
            for _ in 0..5 {
                assert_eq!(p.select(&m, &route(8)).unwrap(), want);
            }
        }
    }

    #[tokio::test]
    async fn selectors() {
        let m = Message::new("demo", "x");
        let p = producer(QueueSelector::RoundRobin);
        let picks: Vec<u32> = (0..8).map(|_| p.select(&m, &route(4)).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 3, 0, 1, 2, 3]);
        let p = producer(QueueSelector::Fixed(2));
        assert_eq!(p.select(&m, &route(4)).unwrap(), 2);
        assert!(matches!(
            p.select(&m, &route(2)),
            Err(ClientError::InvalidArgument(_))
        ));
        let p = producer(QueueSelector::Custom(Arc::new(|m, n| {
            m.body().len() as u32 + n
        })));
        assert_eq!(p.select(&m, &route(4)).unwrap(), 1); // (1 + 4) % 4
        assert!(matches!(
            p.select(&m, &route(0)),
            Err(ClientError::Protocol(_))
        ));
    }

    #[tokio::test]
    async fn invalid_messages_fail_before_sending() {
        let p = producer(QueueSelector::RoundRobin);
        let e = p.send(Message::new("bad topic", "x")).await.unwrap_err();
        assert!(matches!(e, ClientError::InvalidArgument(_)), "{e:?}");
        let e = p
            .send(Message::new("demo", "x").with_property("KEYS", "v"))
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::InvalidArgument(_)), "{e:?}");
        let e = p.send_batch(vec![]).await.unwrap_err();
        assert!(matches!(e, ClientError::InvalidArgument(_)), "{e:?}");
        let e = p
            .send_batch(vec![Message::new("a", "x"), Message::new("b", "y")])
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::InvalidArgument(_)), "{e:?}");
    }
}
