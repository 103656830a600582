//! The push consumer: joins a consumer group, gets queues from the broker, pulls them with long
//! polling and hands the messages to a listener, committing offsets as they are processed
//! (RocketMQ's `DefaultMQPushConsumer`).

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet};

use quiver_protocol::Subscription;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt;
use quiver_protocol::cmd::{Heartbeat, HeartbeatReply, LeaveGroup, SendBack, SentBackReply};
use quiver_protocol::{names, GroupMode, PullStatus, QueueInfo, QueueRef, Status};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::client::Client;
use crate::consumer::{describe, PullConsumer, PullOptions};
use crate::error::ClientError;
use crate::message::{MessageId, ReceivedMessage};
use crate::reader::QueueReader;

/// Heartbeat period before the broker has told its own.
const FIRST_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Heartbeat period while the assignment is not settled.
const UNSETTLED_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// Session timeout assumed before the broker has told its own.
const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause before a failed batch is consumed again.
const RECONSUME_PAUSE: Duration = Duration::from_secs(1);
/// Pause after a failed request in a background loop.
const ERROR_PAUSE: Duration = Duration::from_secs(1);
/// Pause between polls of an empty queue when long polling is off.
const SHORT_POLL_PAUSE: Duration = Duration::from_millis(100);
/// Bytes asked for in one pull at most.
const MAX_PULL_BYTES: usize = 4 << 20;
/// Attempts at the final commit of a released queue (retryable errors only).
const FINAL_COMMIT_ATTEMPTS: u32 = 3;

/// Where a queue is consumed from when its group has no committed offset for it. A committed
/// offset always wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsumeFrom {
    /// The queue's first readable message.
    First,
    /// The queue's end when this member first gets the queue: only messages stored after that
    /// (the default).
    #[default]
    Last,
    /// The first message stored at or after this time (ms since the Unix epoch); the queue's
    /// end when every message is older.
    Timestamp(i64),
}

/// Settings of a [`PushConsumer`]. Build with [`PushConsumerOptions::new`] and adjust fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushConsumerOptions {
    /// Consumer group name (`[A-Za-z0-9_%|-]`, 1 to 127 characters).
    pub group: String,
    /// Clustering (each queue to one member; the default) or broadcasting (every member gets
    /// every message).
    pub mode: GroupMode,
    /// Where to start on queues without a committed offset; default [`ConsumeFrom::Last`].
    pub consume_from: ConsumeFrom,
    /// Listener calls running at once across the whole consumer; default 20.
    pub max_in_flight: usize,
    /// A queue's pulling pauses while this many of its messages are pulled and not yet
    /// consumed; default 1000.
    pub max_buffered_messages_per_queue: usize,
    /// A queue's pulling pauses while this many bytes of its messages are pulled and not yet
    /// consumed; default 100 MiB.
    pub max_buffered_bytes_per_queue: usize,
    /// Most messages per listener call, all consecutive messages of one queue; default 1.
    pub batch_size: usize,
    /// Most messages per pull request; default 32.
    pub pull_batch: u32,
    /// Pulls kept in flight per queue while the consumer is behind the queue's end (the
    /// buffer limits above still hold across them); default 2. With 1, a queue's next pull
    /// leaves only when the previous one answered.
    pub pulls_in_flight: usize,
    /// How long the broker holds a pull that finds nothing new; default 15 s. With zero, an
    /// empty queue is polled every 100 ms.
    pub long_poll: Duration,
    /// Broadcasting only: the local JSON file keeping this member's offsets; default
    /// `./quiver-offsets/<group>.json`. Two broadcasting members of one group must not share
    /// a file.
    pub offset_store_path: Option<PathBuf>,
    /// How long [`PushConsumer::shutdown`] (and the release of a queue that moves to another
    /// member) waits for messages being consumed; default 10 s. Messages still unfinished are
    /// not committed: they are delivered again.
    pub shutdown_timeout: Duration,
    /// How often changed offsets are committed; default 1 s.
    pub commit_interval: Duration,
    /// Orderly consumption: each queue's messages go to the listener one batch at a time, in
    /// queue order; a batch that fails is retried in place (after a 1 s pause) and never
    /// skipped. Queues still run in parallel with each other. In a clustering group a queue has
    /// one owner at a time and moves only after its owner released it (having committed) or
    /// its session expired, so order holds across a rebalance. Default false.
    pub orderly: bool,
    /// Clustering mode: a message whose listener fails (ReconsumeLater, an error, a panic or
    /// `consume_timeout`) is handed back to the broker and delivered again through the
    /// group's retry topic `%RETRY%<group>` after the broker's back-off (10 s, 30 s, 1 m, ...
    /// by default), its `reconsume_times` counting up; after this many reconsumptions it goes
    /// to the group's dead-letter topic `%DLQ%<group>` instead. Orderly consumers retry in
    /// place and dead-letter after this many attempts. Default 16.
    pub max_reconsume_times: u32,
    /// A listener call running longer than this counts as failed (its future is dropped);
    /// default 15 min.
    pub consume_timeout: Duration,
    /// Pause before an orderly consumer retries a failed batch in place; default 1 s.
    pub orderly_retry_pause: Duration,
    /// [`crate::ClusterPushConsumer`] only: which broker of each set it reads from (the
    /// master, a slave while the master is down, or a slave to offload the master); default
    /// [`crate::ReadFrom::Master`].
    pub read_from: crate::ReadFrom,
}

impl Default for PushConsumerOptions {
    /// The defaults, with an empty group name (which [`PushConsumer::start`] refuses).
    fn default() -> Self {
        Self {
            group: String::new(),
            mode: GroupMode::Clustering,
            consume_from: ConsumeFrom::Last,
            max_in_flight: 20,
            max_buffered_messages_per_queue: 1000,
            max_buffered_bytes_per_queue: 100 << 20,
            batch_size: 1,
            pull_batch: 32,
            pulls_in_flight: 2,
            long_poll: Duration::from_secs(15),
            offset_store_path: None,
            shutdown_timeout: Duration::from_secs(10),
            commit_interval: Duration::from_secs(1),
            orderly: false,
            max_reconsume_times: 16,
            consume_timeout: Duration::from_secs(15 * 60),
            orderly_retry_pause: Duration::from_secs(1),
            read_from: crate::ReadFrom::Master,
        }
    }
}

impl PushConsumerOptions {
    /// The defaults for consumer group `group`.
    pub fn new(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            ..Self::default()
        }
    }

    /// The local offset file used in broadcasting mode.
    pub fn offset_file(&self) -> PathBuf {
        self.offset_store_path
            .clone()
            .unwrap_or_else(|| Path::new("quiver-offsets").join(format!("{}.json", self.group)))
    }

    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        names::check_name("group", &self.group).map_err(ClientError::InvalidArgument)?;
        let positive = [
            ("max_in_flight", self.max_in_flight),
            (
                "max_buffered_messages_per_queue",
                self.max_buffered_messages_per_queue,
            ),
            (
                "max_buffered_bytes_per_queue",
                self.max_buffered_bytes_per_queue,
            ),
            ("batch_size", self.batch_size),
            ("pull_batch", self.pull_batch as usize),
            ("pulls_in_flight", self.pulls_in_flight),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ClientError::invalid(format!("{name} must be at least 1")));
            }
        }
        if self.max_in_flight > Semaphore::MAX_PERMITS {
            return Err(ClientError::invalid(format!(
                "max_in_flight must be at most {}",
                Semaphore::MAX_PERMITS
            )));
        }
        if self.commit_interval.is_zero() {
            return Err(ClientError::invalid("commit_interval must not be zero"));
        }
        if self.max_reconsume_times == 0 {
            return Err(ClientError::invalid(
                "max_reconsume_times must be at least 1",
            ));
        }
        if self.consume_timeout.is_zero() {
            return Err(ClientError::invalid("consume_timeout must not be zero"));
        }
        Ok(())
    }
}

/// What a listener says about the messages it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeResult {
    /// Processed: their offsets may be committed.
    Success,
    /// Not processed. Clustering: each message is handed back and delivered again through
    /// the group's retry topic after a back-off, then dead-lettered after
    /// `max_reconsume_times`. Orderly: retried in place after `orderly_retry_pause`, then
    /// dead-lettered. Broadcasting: retried in place after 1 s.
    ReconsumeLater,
    /// Not processed, and not to be handed back: the batch stays where it is and is given to
    /// the listener again after a 1 s pause (the queue's committed offset waits for it); when
    /// the queue is being released or the consumer stops, it is left uncommitted for the next
    /// owner. For listeners that cannot take a message right now (e.g. shutting down).
    Suspend,
}

/// What a listener's future may return: a [`ConsumeResult`], or a `Result` whose error (logged)
/// means [`ConsumeResult::ReconsumeLater`].
pub trait IntoConsumeResult {
    /// The verdict.
    fn into_consume_result(self) -> ConsumeResult;
}

impl IntoConsumeResult for ConsumeResult {
    fn into_consume_result(self) -> ConsumeResult {
        self
    }
}

impl<E: fmt::Display> IntoConsumeResult for Result<ConsumeResult, E> {
    fn into_consume_result(self) -> ConsumeResult {
        match self {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "push consumer listener failed");
                ConsumeResult::ReconsumeLater
            }
        }
    }
}

impl<E: fmt::Display> IntoConsumeResult for Result<(), E> {
    fn into_consume_result(self) -> ConsumeResult {
        self.map(|()| ConsumeResult::Success).into_consume_result()
    }
}

pub(crate) type ListenerFuture = Pin<Box<dyn Future<Output = ConsumeResult> + Send>>;
pub(crate) type Listener = Arc<dyn Fn(Vec<ReceivedMessage>) -> ListenerFuture + Send + Sync>;

/// A batch listener in the form the consumer keeps.
pub(crate) fn box_listener<F, Fut>(listener: F) -> Listener
where
    F: Fn(Vec<ReceivedMessage>) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoConsumeResult,
{
    Arc::new(move |batch| {
        let fut = listener(batch);
        Box::pin(async move { fut.await.into_consume_result() })
    })
}

/// A consumer-group member that pulls its queues in the background and pushes the messages
/// to a listener (RocketMQ's `DefaultMQPushConsumer`).
///
/// ```no_run
/// use quiver_client::{Client, ConsumeResult, PushConsumer, PushConsumerOptions};
///
/// # async fn demo(client: Client) -> Result<(), quiver_client::ClientError> {
/// let consumer = PushConsumer::start_single(
///     client,
///     vec!["orders".into()],
///     PushConsumerOptions::new("billing"),
///     |msg| async move {
///         println!("{} at {}/{}", msg.msg_id, msg.queue_id, msg.queue_offset);
///         ConsumeResult::Success
///     },
/// )
/// .await?;
/// // ... later:
/// consumer.shutdown().await?;
/// # Ok(()) }
/// ```
///
/// How it works:
///
/// * **Membership.** A background task sends
///   `Heartbeat { group, member_id, mode, topics, held }` every `heartbeat_interval_ms` the
///   broker asks for (1 s until the first answer; 100 ms while the answer says the assignment
///   is not `settled`). `held` lists the queues this consumer still has a queue worker for.
///   The answer's `owned` is exactly what it may work on: workers start for newly owned
///   queues; a queue no longer owned is *released*: its pulling stops, its in-flight messages
///   finish (bounded by `shutdown_timeout`), its offset is committed, and only then does it
///   leave `held`, with a prompt heartbeat so the broker can hand it over. In clustering mode,
///   when no heartbeat has been answered for the broker's session timeout, every queue is
///   released (the broker has given them to others by then).
/// * **Queue workers.** A worker starts at the committed offset (the broker's for clustering,
///   the local offset file's for broadcasting) or, when there is none, exactly where
///   [`ConsumeFrom`] says; that start offset is committed at once, so the group keeps it even
///   if the queue moves before any message arrives. Then it pulls with long polling while the
///   queue's buffered messages (waiting + being consumed) stay under
///   `max_buffered_messages_per_queue` and `max_buffered_bytes_per_queue`, and hands batches
///   of up to `batch_size` consecutive messages to the listener, at most `max_in_flight`
///   batches at once across the whole consumer. Messages of one queue may be consumed
///   concurrently (no ordering guarantee between batches).
/// * **Offsets.** Messages of a queue finish out of order. Per queue the consumer keeps the
///   set of offsets pulled but not yet consumed; the committable offset is the lowest of them,
///   or the next offset to pull when there are none. So the committed offset never passes a
///   message still in flight. It is committed every `commit_interval` when it changed, when a
///   queue is released, and at shutdown. Delivery is at least once.
/// * **Failures.** [`ConsumeResult::ReconsumeLater`], a listener error (see
///   [`IntoConsumeResult`]), a listener panic or `consume_timeout`: in clustering mode each
///   message is handed back to the broker (`SendBack`) and its offset moves on; the broker
///   delivers it again through `%RETRY%<group>` (which every member subscribes to) after its
///   back-off, with `reconsume_times` one higher and the same id, keys and properties; after
///   `max_reconsume_times` it goes to `%DLQ%<group>`. Orderly consumers retry the batch in
///   place after `orderly_retry_pause` and dead-letter it after `max_reconsume_times`
///   attempts, so a queue's order is never broken. If the hand-back itself fails, the batch is
///   retried in place. Network and broker errors in the background loops are logged (with
///   `tracing`) and retried after a short pause.
/// * **Broker restarts.** The [`Client`] notices a dead connection and reconnects by itself
///   (see its documentation). When its [`Client::generation`] changes, the consumer sends a
///   heartbeat at once, which re-joins the group on a restarted broker, and commits every
///   queue's offset again at the next commit tick (a broker killed with `kill -9` may have
///   lost the last commits). Queue workers keep their place: they go on pulling where they
///   were, which is at or after the committed offset, so nothing is skipped; what was
///   consumed but not yet committed when the broker died is delivered again only if the
///   queue moves to another member. The consumer never needs to be recreated.
///
/// Stop it with [`PushConsumer::shutdown`] (heartbeats go on while it drains, so the queues
/// move only once committed). Dropping it without that starts the same graceful shutdown in
/// the background (while the tokio runtime runs); [`PushConsumer::kill`] stops it as a crash
/// would.
pub struct PushConsumer {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: tokio::sync::Mutex<Option<JoinHandle<Result<(), ClientError>>>>,
    /// Aborts the membership task.
    abort: AbortHandle,
}

impl fmt::Debug for PushConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushConsumer")
            .field("group", &self.shared.opts.group)
            .field("member_id", &self.shared.member_id)
            .field("topics", &self.shared.topics)
            .field("owned", &self.owned_queues())
            .finish()
    }
}

impl PushConsumer {
    /// Joins `options.group`, subscribing to `topics`, and starts consuming: `listener` gets
    /// batches of up to `options.batch_size` consecutive messages of one queue.
    ///
    /// The first heartbeat is sent before this returns: an invalid argument, an unknown topic
    /// (when the broker does not create topics), a group running in the other mode or a
    /// closed client fail here. When the broker is unreachable or busy, the consumer starts
    /// anyway and keeps trying in the background.
    pub async fn start<F, Fut>(
        client: Client,
        subscriptions: Vec<Subscription>,
        options: PushConsumerOptions,
        listener: F,
    ) -> Result<PushConsumer, ClientError>
    where
        F: Fn(Vec<ReceivedMessage>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoConsumeResult,
    {
        Self::start_boxed(client, subscriptions, options, box_listener(listener)).await
    }

    /// Like [`PushConsumer::start`] with a listener taking one message at a time
    /// (`options.batch_size` is ignored: it is 1).
    pub async fn start_single<F, Fut>(
        client: Client,
        subscriptions: Vec<Subscription>,
        mut options: PushConsumerOptions,
        listener: F,
    ) -> Result<PushConsumer, ClientError>
    where
        F: Fn(ReceivedMessage) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoConsumeResult,
    {
        options.batch_size = 1;
        let listener: Listener = Arc::new(move |mut batch: Vec<ReceivedMessage>| {
            let fut = batch.pop().map(&listener);
            Box::pin(async move {
                match fut {
                    Some(f) => f.await.into_consume_result(),
                    None => ConsumeResult::Success,
                }
            })
        });
        Self::start_boxed(client, subscriptions, options, listener).await
    }

    pub(crate) async fn start_boxed(
        client: Client,
        subscriptions: Vec<Subscription>,
        options: PushConsumerOptions,
        listener: Listener,
    ) -> Result<PushConsumer, ClientError> {
        options.validate()?;
        let mut filters: BTreeMap<String, Subscription> = BTreeMap::new();
        for s in subscriptions {
            if let Some(f) = filters.get(&s.topic) {
                if *f != s {
                    return Err(ClientError::invalid(format!(
                        "topic {:?} is subscribed twice with different filters or plugins",
                        s.topic
                    )));
                }
            }
            if s.plugins.len() > quiver_protocol::plugins::MAX_PLUGINS_PER_SUBSCRIPTION {
                return Err(ClientError::invalid(format!(
                    "topic {:?}: at most {} plugins per subscription",
                    s.topic,
                    quiver_protocol::plugins::MAX_PLUGINS_PER_SUBSCRIPTION
                )));
            }
            filters.insert(s.topic.clone(), s);
        }
        if filters.is_empty() {
            return Err(ClientError::invalid("subscribe to at least one topic"));
        }
        for t in filters.keys() {
            names::check_name("topic", t).map_err(ClientError::InvalidArgument)?;
        }
        if options.mode == GroupMode::Clustering && !options.orderly {
            // Failed messages come back through the group's retry topic. The subscribed
            // topics' filter applies to it when they share one (a retried message passed it
            // once already).
            let mut all = filters.values().map(|s| &s.filter);
            let first = all.next().cloned().unwrap_or_default();
            let filter = if all.all(|f| *f == first) {
                first
            } else {
                quiver_protocol::FilterSpec::All
            };
            let retry = names::retry_topic(&options.group);
            filters.insert(retry.clone(), Subscription::new(retry, filter));
        }
        let topics: Vec<String> = filters.keys().cloned().collect();
        let offsets = match options.mode {
            GroupMode::Clustering => OffsetStore::Broker,
            GroupMode::Broadcasting => {
                OffsetStore::Local(LocalOffsets::load(options.offset_file(), &options.group)?)
            }
        };
        let member_id = new_member_id(&client.config().client_id);
        let shared = Arc::new(Shared {
            consumer: PullConsumer::new(client.clone()),
            client,
            member_id,
            topics,
            filters,
            permits: Arc::new(Semaphore::new(options.max_in_flight)),
            opts: options,
            listener,
            offsets,
            queues: StdMutex::new(BTreeMap::new()),
            commit_task: StdMutex::new(None),
            killed: AtomicBool::new(false),
        });
        let first = match heartbeat(&shared).await {
            Ok(a) => Some(a),
            Err(e) if e.is_retryable() || matches!(e, ClientError::Connect { .. }) => {
                tracing::warn!(
                    group = %shared.opts.group,
                    error = %e,
                    "first heartbeat failed; the consumer keeps trying"
                );
                None
            }
            Err(e) => return Err(e),
        };
        tracing::info!(
            group = %shared.opts.group,
            member = %shared.member_id,
            mode = ?shared.opts.mode,
            topics = ?shared.topics,
            "push consumer started"
        );
        let (stop, stop_rx) = watch::channel(false);
        let commits = tokio::spawn(commit_loop(shared.clone(), stop_rx.clone()));
        *lock(&shared.commit_task) = Some(commits.abort_handle());
        let task = tokio::spawn(membership(shared.clone(), stop_rx, first, commits));
        Ok(PushConsumer {
            shared,
            stop,
            abort: task.abort_handle(),
            task: tokio::sync::Mutex::new(Some(task)),
        })
    }

    /// The address of the broker this consumer talks to.
    pub(crate) fn broker_addr(&self) -> std::net::SocketAddr {
        self.shared.client.config().addr
    }

    /// This member's id in its group: `<client id>-<16 random hex digits>`, unique per
    /// consumer instance.
    pub fn member_id(&self) -> &str {
        &self.shared.member_id
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.shared.opts.group
    }

    /// The subscribed topics (sorted, without duplicates).
    pub fn topics(&self) -> &[String] {
        &self.shared.topics
    }

    /// The queues this consumer works on now (granted by the broker and not being released),
    /// sorted.
    pub fn owned_queues(&self) -> Vec<QueueRef> {
        lock(&self.shared.queues)
            .iter()
            .filter(|(_, q)| !q.is_stopping())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Stops the consumer: stops pulling, waits for the messages being consumed (up to
    /// `shutdown_timeout`; the unfinished ones are not committed and will be delivered
    /// again), commits every queue's offset, and leaves the group so its queues move at once.
    /// Returns the first error among the final commits and the leave (all are attempted).
    /// Calling it again returns `Ok(())` at once.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        let mut task = self.task.lock().await;
        let Some(handle) = task.take() else {
            return Ok(());
        };
        self.stop.send_replace(true);
        match handle.await {
            Ok(r) => r,
            // After kill().
            Err(e) if e.is_cancelled() => Ok(()),
            Err(e) => Err(ClientError::Internal(format!(
                "push consumer task failed: {e}"
            ))),
        }
    }

    /// Stops at once, as a crash would: every background task is aborted, listener calls
    /// in progress are dropped, nothing is committed and the group is not told (the broker
    /// moves this member's queues after its session timeout, and the messages consumed
    /// since the last commit are delivered again). For tests and emergencies;
    /// [`PushConsumer::shutdown`] afterwards does nothing.
    pub fn kill(&self) {
        self.abort.abort();
        if let Some(t) = lock(&self.shared.commit_task).take() {
            t.abort();
        }
        let queues = {
            let mut queues = lock(&self.shared.queues);
            self.shared.killed.store(true, Ordering::SeqCst);
            std::mem::take(&mut *queues)
        };
        for q in queues.into_values() {
            q.abort();
        }
        tracing::info!(group = %self.shared.opts.group, member = %self.shared.member_id, "push consumer killed");
    }
}

/// Everything the background tasks share.
struct Shared {
    client: Client,
    consumer: PullConsumer,
    member_id: String,
    topics: Vec<String>,
    /// Each subscribed topic's filter and plugins (run by the broker at pull time).
    filters: BTreeMap<String, Subscription>,
    opts: PushConsumerOptions,
    listener: Listener,
    /// Listener calls in flight, consumer-wide.
    permits: Arc<Semaphore>,
    offsets: OffsetStore,
    /// Queues with a running worker (including those being released): what `held` reports.
    queues: StdMutex<BTreeMap<QueueRef, Arc<QueueState>>>,
    /// The periodic commit task.
    commit_task: StdMutex<Option<AbortHandle>>,
    /// [`PushConsumer::kill`] was called: start no more workers.
    killed: AtomicBool,
}

/// Where offsets are committed.
enum OffsetStore {
    /// Clustering: the broker (`CommitOffset` / `FetchOffset`).
    Broker,
    /// Broadcasting: a local file.
    Local(LocalOffsets),
}

/// One queue being worked on.
struct QueueState {
    queue: QueueRef,
    pq: StdMutex<ProcessQueue>,
    /// Signalled when messages finish (flow control waits on it).
    drained: Notify,
    /// Serialises commits of this queue so they land in order.
    commit_lock: tokio::sync::Mutex<()>,
    /// Set to true to stop (release) the queue.
    stop: watch::Sender<bool>,
    /// The worker task (for [`PushConsumer::kill`] and a shutdown that overruns).
    task: StdMutex<Option<AbortHandle>>,
}

impl QueueState {
    fn new(queue: QueueRef) -> Self {
        Self {
            queue,
            pq: StdMutex::new(ProcessQueue::default()),
            drained: Notify::new(),
            commit_lock: tokio::sync::Mutex::new(()),
            stop: watch::channel(false).0,
            task: StdMutex::new(None),
        }
    }

    fn abort(&self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
    }

    fn is_stopping(&self) -> bool {
        *self.stop.borrow()
    }

    fn request_stop(&self) {
        self.stop.send_replace(true);
    }
}

/// RocketMQ's process queue, done right: the offsets of one queue pulled and not yet consumed,
/// and where the next pull starts. The committable offset is the lowest offset in flight, or
/// the next pull offset when nothing is, so it never passes an unfinished message.
#[derive(Debug, Default)]
struct ProcessQueue {
    /// Offset -> size in bytes of every message pulled and not consumed yet.
    in_flight: BTreeMap<u64, usize>,
    bytes: usize,
    next_pull: u64,
    /// The last offset stored (broker or local table); `None` before the first commit.
    committed: Option<u64>,
    /// The start offset is known.
    started: bool,
    /// The queue was released: nothing more is committed.
    closed: bool,
}

impl ProcessQueue {
    /// Starts at `offset`; `committed` is what the store already has, if anything.
    fn start_at(&mut self, offset: u64, committed: Option<u64>) {
        self.next_pull = offset;
        self.committed = committed;
        self.started = true;
    }

    /// Records pulled messages (offset, bytes) and where the next pull starts.
    fn add(&mut self, messages: impl IntoIterator<Item = (u64, usize)>, next_offset: u64) {
        for (offset, size) in messages {
            if let Some(old) = self.in_flight.insert(offset, size) {
                self.bytes -= old;
            }
            self.bytes += size;
        }
        self.next_pull = next_offset;
    }

    /// Moves the next pull offset (the broker said the queue continues elsewhere).
    fn jump(&mut self, next_offset: u64) {
        self.next_pull = next_offset;
    }

    /// Messages are consumed.
    fn complete(&mut self, offsets: &[u64]) {
        for o in offsets {
            if let Some(size) = self.in_flight.remove(o) {
                self.bytes -= size;
            }
        }
    }

    fn buffered(&self) -> (usize, usize) {
        (self.in_flight.len(), self.bytes)
    }

    /// The offset that may be committed now.
    fn committable(&self) -> Option<u64> {
        if !self.started {
            return None;
        }
        Some(
            self.in_flight
                .keys()
                .next()
                .copied()
                .unwrap_or(self.next_pull),
        )
    }

    /// The offset to commit, when it differs from the stored one.
    fn to_commit(&self) -> Option<u64> {
        if self.closed {
            return None;
        }
        self.committable().filter(|&o| Some(o) != self.committed)
    }
}

/// Locks a std mutex, ignoring poisoning (the data stay consistent: no code panics while
/// holding these locks).
fn lock<T>(m: &StdMutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolves once `rx` says stop (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Sleeps `d`; false when stopped first.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stopped(stop) => false,
    }
}

fn new_member_id(client_id: &str) -> String {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(MessageId::new().0);
    let random = h.finish();
    // Member ids are at most 255 bytes; keep room for the suffix.
    let mut end = client_id.len().min(200);
    while !client_id.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}-{random:016x}", &client_id[..end])
}

/// The broker's answer to a heartbeat.
#[derive(Debug)]
struct Answer {
    generation: u64,
    owned: Vec<QueueRef>,
    settled: bool,
    interval: Duration,
    session_timeout: Duration,
}

impl Answer {
    fn next_heartbeat(&self) -> Duration {
        if self.settled {
            self.interval
        } else {
            UNSETTLED_HEARTBEAT_INTERVAL.min(self.interval)
        }
    }
}

async fn heartbeat(shared: &Shared) -> Result<Answer, ClientError> {
    let held: Vec<QueueRef> = lock(&shared.queues).keys().cloned().collect();
    let request = Heartbeat {
        group: shared.opts.group.clone(),
        member_id: shared.member_id.clone(),
        mode: shared.opts.mode,
        subscriptions: shared
            .topics
            .iter()
            .map(|t| {
                shared
                    .filters
                    .get(t)
                    .cloned()
                    .unwrap_or_else(|| Subscription::from(t.as_str()))
            })
            .collect(),
        held,
    };
    let HeartbeatReply {
        generation,
        session_timeout_ms,
        heartbeat_interval_ms,
        settled,
        owned,
    } = shared.client.call(request).await?;
    Ok(Answer {
        generation,
        owned,
        settled,
        interval: Duration::from_millis(u64::from(heartbeat_interval_ms.max(10))),
        session_timeout: Duration::from_millis(u64::from(session_timeout_ms.max(100))),
    })
}

/// Which workers to start and which to release for an answer.
#[derive(Debug, Default, PartialEq, Eq)]
struct Diff {
    start: Vec<QueueRef>,
    release: Vec<QueueRef>,
}

/// `owned`: what the broker says this member owns; `running`: queues with a worker that is
/// not stopping; `releasing`: queues whose worker is stopping. A queue being released is not
/// restarted before its worker has finished (the broker grants it again afterwards).
fn diff(
    owned: &BTreeSet<QueueRef>,
    running: &BTreeSet<QueueRef>,
    releasing: &BTreeSet<QueueRef>,
) -> Diff {
    Diff {
        start: owned
            .iter()
            .filter(|q| !running.contains(*q) && !releasing.contains(*q))
            .cloned()
            .collect(),
        release: running.difference(owned).cloned().collect(),
    }
}

/// The membership loop's view of the heartbeat exchange.
struct Beat {
    /// Heartbeat period the broker asked for.
    interval: Duration,
    /// The broker's session timeout.
    session_timeout: Duration,
    /// When a heartbeat was last answered.
    last_ok: Option<Instant>,
    /// The last assignment generation seen.
    generation: Option<u64>,
}

impl Beat {
    /// Applies an answer; returns when to heartbeat next.
    fn answered(
        &mut self,
        shared: &Arc<Shared>,
        a: Answer,
        done_tx: &mpsc::UnboundedSender<WorkerDone>,
    ) -> Instant {
        let now = Instant::now();
        self.last_ok = Some(now);
        self.interval = a.interval;
        self.session_timeout = a.session_timeout;
        if self.generation != Some(a.generation) {
            tracing::debug!(
                group = %shared.opts.group,
                generation = a.generation,
                owned = a.owned.len(),
                settled = a.settled,
                "group assignment"
            );
            self.generation = Some(a.generation);
        }
        let next = now + a.next_heartbeat();
        apply(shared, a.owned, done_tx);
        next
    }
}

/// A worker that ended.
struct WorkerDone {
    state: Arc<QueueState>,
    /// The final commit's outcome.
    result: Result<(), ClientError>,
}

/// The membership loop: heartbeats, starts and releases queue workers, and at the end shuts
/// everything down and leaves the group.
async fn membership(
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    first: Option<Answer>,
    commits: JoinHandle<()>,
) -> Result<(), ClientError> {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<WorkerDone>();
    let mut beat = Beat {
        interval: FIRST_HEARTBEAT_INTERVAL,
        session_timeout: DEFAULT_SESSION_TIMEOUT,
        last_ok: None,
        generation: None,
    };
    let mut next = Instant::now();
    if let Some(a) = first {
        next = beat.answered(&shared, a, &done_tx);
    }
    let mut generations = shared.client.subscribe_generation();
    generations.borrow_and_update();
    enum Event {
        Stop,
        Done(WorkerDone),
        Beat,
        Reconnected,
    }
    loop {
        let event = tokio::select! {
            biased;
            _ = stopped(&mut stop) => Event::Stop,
            Some(d) = done_rx.recv() => Event::Done(d),
            Ok(()) = generations.changed() => Event::Reconnected,
            _ = tokio::time::sleep_until(next) => Event::Beat,
        };
        match event {
            Event::Stop => break,
            Event::Done(d) => {
                finished(&shared, d);
                // Tell the broker at once that the queue is free.
                next = Instant::now();
            }
            Event::Reconnected => {
                let generation = *generations.borrow_and_update();
                tracing::info!(
                    group = %shared.opts.group,
                    member = %shared.member_id,
                    generation,
                    "client reconnected; re-joining the group"
                );
                reconnected(&shared);
                next = Instant::now();
            }
            Event::Beat => {
                let sent = Instant::now();
                let r = tokio::select! {
                    r = heartbeat(&shared) => Some(r),
                    _ = stopped(&mut stop) => None,
                };
                match r {
                    None => break,
                    Some(Ok(a)) => {
                        next = beat.answered(&shared, a, &done_tx);
                        // The broker's clock for this member started when the request left.
                        beat.last_ok = Some(sent);
                    }
                    Some(Err(ClientError::Closed)) => {
                        tracing::error!(
                            group = %shared.opts.group,
                            "the client was closed under a running push consumer; it stops"
                        );
                        break;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(group = %shared.opts.group, error = %e, "heartbeat failed");
                        next = Instant::now() + beat.interval.min(ERROR_PAUSE);
                        let silent = beat.last_ok.map(|t| t.elapsed());
                        // Let go well before the broker's session ends, so draining in-flight
                        // messages does not overlap with the next owner.
                        if shared.opts.mode == GroupMode::Clustering
                            && silent.is_some_and(|s| s >= beat.session_timeout * 2 / 3)
                            && lock(&shared.queues).values().any(|q| !q.is_stopping())
                        {
                            tracing::warn!(
                                group = %shared.opts.group,
                                "no heartbeat answered for the session timeout ({:?}): \
                                 the broker may have given this member's queues to others; releasing them",
                                beat.session_timeout
                            );
                            apply(&shared, Vec::new(), &done_tx);
                        }
                    }
                }
            }
        }
    }
    // Shutdown: stop every worker; each finishes its in-flight messages (bounded by
    // shutdown_timeout) and commits. Heartbeats go on meanwhile, so the broker does not hand
    // the queues over before they are committed.
    let mut first_error: Option<ClientError> = None;
    for q in lock(&shared.queues).values() {
        q.request_stop();
    }
    let bound = shared.opts.shutdown_timeout
        + shared.client.config().request_timeout * (FINAL_COMMIT_ATTEMPTS + 1)
        + Duration::from_secs(1);
    let deadline = Instant::now() + bound;
    enum Wait {
        Done(Option<WorkerDone>),
        Beat,
        Timeout,
    }
    while !lock(&shared.queues).is_empty() {
        let wait = tokio::select! {
            d = done_rx.recv() => Wait::Done(d),
            _ = tokio::time::sleep_until(next) => Wait::Beat,
            _ = tokio::time::sleep_until(deadline) => Wait::Timeout,
        };
        match wait {
            Wait::Done(Some(d)) => {
                if let Err(e) = &d.result {
                    first_error.get_or_insert_with(|| e.clone());
                }
                finished(&shared, d);
            }
            Wait::Done(None) => break,
            Wait::Beat => {
                // The answer's queues are not started any more.
                let wait = match heartbeat(&shared).await {
                    Ok(a) => a.interval,
                    Err(e) => {
                        tracing::debug!(group = %shared.opts.group, error = %e, "heartbeat failed");
                        beat.interval.min(ERROR_PAUSE)
                    }
                };
                next = Instant::now() + wait;
            }
            Wait::Timeout => {
                tracing::error!(
                    group = %shared.opts.group,
                    "queue workers did not finish within {bound:?}; aborting them"
                );
                for q in std::mem::take(&mut *lock(&shared.queues)).into_values() {
                    q.abort();
                }
                first_error.get_or_insert_with(|| {
                    ClientError::Internal("queue workers did not finish in time".into())
                });
                break;
            }
        }
    }
    let _ = commits.await;
    if let OffsetStore::Local(l) = &shared.offsets {
        if let Err(e) = l.flush() {
            tracing::warn!(group = %shared.opts.group, error = %e, "cannot write the offset file");
            first_error.get_or_insert(e);
        }
    }
    let leave = LeaveGroup {
        group: shared.opts.group.clone(),
        member_id: shared.member_id.clone(),
    };
    if let Err(e) = shared.client.call(leave).await {
        tracing::warn!(group = %shared.opts.group, error = %e, "cannot leave the group");
        first_error.get_or_insert(e);
    }
    tracing::info!(group = %shared.opts.group, member = %shared.member_id, "push consumer stopped");
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Starts workers for newly owned queues and releases the ones no longer owned.
fn apply(shared: &Arc<Shared>, owned: Vec<QueueRef>, done_tx: &mpsc::UnboundedSender<WorkerDone>) {
    let owned: BTreeSet<QueueRef> = owned.into_iter().collect();
    let (running, releasing): (BTreeSet<QueueRef>, BTreeSet<QueueRef>) = {
        let queues = lock(&shared.queues);
        let (r, s): (Vec<_>, Vec<_>) = queues.iter().partition(|(_, q)| !q.is_stopping());
        (
            r.into_iter().map(|(k, _)| k.clone()).collect(),
            s.into_iter().map(|(k, _)| k.clone()).collect(),
        )
    };
    let d = diff(&owned, &running, &releasing);
    for q in &d.release {
        if let Some(state) = lock(&shared.queues).get(q) {
            tracing::info!(group = %shared.opts.group, topic = %q.0, queue = q.1, "releasing queue");
            state.request_stop();
        }
    }
    for q in d.start {
        // Registered, spawned and given its abort handle under the lock, so kill() cannot
        // miss it.
        let mut queues = lock(&shared.queues);
        if shared.killed.load(Ordering::SeqCst) {
            return;
        }
        let state = Arc::new(QueueState::new(q.clone()));
        queues.insert(q.clone(), state.clone());
        let shared = shared.clone();
        let done_tx = done_tx.clone();
        let task_state = state.clone();
        let handle = tokio::spawn(async move {
            let state = task_state;
            let result = AssertUnwindSafe(run_queue(&shared, &state))
                .catch_unwind()
                .await
                .unwrap_or_else(|p| {
                    tracing::error!(
                        topic = %state.queue.0,
                        queue = state.queue.1,
                        "queue worker panicked: {}",
                        panic_message(&*p)
                    );
                    Err(ClientError::Internal("queue worker panicked".into()))
                });
            let _ = done_tx.send(WorkerDone { state, result });
        });
        *lock(&state.task) = Some(handle.abort_handle());
    }
}

/// The client has a new connection: the broker may have restarted and lost this member
/// (re-joined by the next heartbeat, sent at once) and offsets committed shortly before it
/// died. Every queue's committable offset is committed again at the next commit tick, even
/// when it did not move.
fn reconnected(shared: &Shared) {
    if !matches!(shared.offsets, OffsetStore::Broker) {
        return;
    }
    for q in lock(&shared.queues).values() {
        let mut pq = lock(&q.pq);
        if !pq.closed {
            pq.committed = None;
        }
    }
}

/// A worker ended: forget it, so `held` no longer reports its queue.
fn finished(shared: &Shared, done: WorkerDone) {
    let q = &done.state.queue;
    let mut queues = lock(&shared.queues);
    if queues.get(q).is_some_and(|s| Arc::ptr_eq(s, &done.state)) {
        queues.remove(q);
        if !done.state.is_stopping() {
            tracing::error!(topic = %q.0, queue = q.1, "queue worker ended by itself");
        } else {
            tracing::info!(group = %shared.opts.group, topic = %q.0, queue = q.1, "queue released");
        }
    }
}

/// Commits every queue's changed offset every `commit_interval`.
async fn commit_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(shared.opts.commit_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut stop) => return,
        }
        let queues: Vec<Arc<QueueState>> = lock(&shared.queues).values().cloned().collect();
        for q in queues {
            if let Err(e) = commit_queue(&shared, &q, false).await {
                tracing::warn!(topic = %q.queue.0, queue = q.queue.1, error = %e, "offset commit failed");
            }
        }
        if let OffsetStore::Local(l) = &shared.offsets {
            if let Err(e) = l.flush() {
                tracing::warn!(group = %shared.opts.group, error = %e, "cannot write the offset file");
            }
        }
    }
}

/// Stores the queue's committable offset if it changed. Broadcasting: into the local table,
/// and to the file when `flush`.
async fn commit_queue(shared: &Shared, q: &QueueState, flush: bool) -> Result<(), ClientError> {
    let _serial = q.commit_lock.lock().await;
    let Some(offset) = lock(&q.pq).to_commit() else {
        return Ok(());
    };
    let (topic, queue_id) = (&q.queue.0, q.queue.1);
    match &shared.offsets {
        OffsetStore::Broker => {
            shared
                .consumer
                .commit_offset(&shared.opts.group, topic, queue_id, offset)
                .await?;
        }
        OffsetStore::Local(l) => l.set(&q.queue, offset),
    }
    lock(&q.pq).committed = Some(offset);
    if flush {
        if let OffsetStore::Local(l) = &shared.offsets {
            l.flush()?;
        }
    }
    Ok(())
}

/// Where a queue starts: the committed offset, or `consume_from`. Returns the offset and
/// the committed one, if any.
async fn start_offset(shared: &Shared, q: &QueueRef) -> Result<(u64, Option<u64>), ClientError> {
    let (topic, queue_id) = (&q.0, q.1);
    let committed = match &shared.offsets {
        OffsetStore::Broker => {
            shared
                .consumer
                .fetch_offset(&shared.opts.group, topic, queue_id)
                .await?
        }
        OffsetStore::Local(l) => l.get(q),
    };
    if let Some(c) = committed {
        return Ok((c, Some(c)));
    }
    let offset = match shared.opts.consume_from {
        ConsumeFrom::First => queue_info(shared, q).await?.min_offset,
        ConsumeFrom::Last => queue_info(shared, q).await?.max_offset,
        ConsumeFrom::Timestamp(ts) => {
            match shared
                .consumer
                .offset_for_timestamp(topic, queue_id, ts)
                .await
            {
                Ok(o) => o,
                // Nothing stored at or after that time: start at the end.
                Err(e) if e.status() == Some(Status::NotFound) => {
                    queue_info(shared, q).await?.max_offset
                }
                Err(e) => return Err(e),
            }
        }
    };
    Ok((offset, None))
}

async fn queue_info(shared: &Shared, q: &QueueRef) -> Result<QueueInfo, ClientError> {
    describe(&shared.client, &q.0)
        .await?
        .into_iter()
        .find(|i| i.queue_id == q.1)
        .ok_or_else(|| ClientError::Broker {
            status: Status::QueueNotFound,
            message: format!("topic {} has no queue {}", q.0, q.1),
        })
}

/// One queue's worker: find the start offset, then pull and dispatch until stopped, then
/// wait for the in-flight messages (bounded) and commit.
async fn run_queue(shared: &Arc<Shared>, q: &Arc<QueueState>) -> Result<(), ClientError> {
    let mut stop = q.stop.subscribe();
    let (topic, queue_id) = (&q.queue.0, q.queue.1);
    let (start, committed) = loop {
        let r = tokio::select! {
            r = start_offset(shared, &q.queue) => r,
            _ = stopped(&mut stop) => return Ok(()),
        };
        match r {
            Ok(x) => break x,
            Err(e) => {
                tracing::warn!(%topic, queue = queue_id, error = %e, "cannot find where to start the queue");
                if !pause(ERROR_PAUSE, &mut stop).await {
                    return Ok(());
                }
            }
        }
    };
    lock(&q.pq).start_at(start, committed);
    if committed.is_none() {
        // Pin the start chosen by consume_from, so the group keeps it if the queue moves.
        if let Err(e) = commit_queue(shared, q, true).await {
            tracing::warn!(%topic, queue = queue_id, error = %e, "cannot commit the start offset");
        }
    }
    tracing::info!(
        group = %shared.opts.group,
        %topic,
        queue = queue_id,
        offset = start,
        from = if committed.is_some() { "committed" } else { "consume_from" },
        "consuming queue"
    );
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::join!(
        pull_loop(shared, q, stop.clone(), tx),
        dispatch_loop(shared, q, stop.clone(), rx)
    );
    // Final commit, retried briefly: the next owner starts from it.
    let mut attempt = 1;
    let result = loop {
        match commit_queue(shared, q, true).await {
            Ok(()) => break Ok(()),
            Err(e) if e.is_retryable() && attempt < FINAL_COMMIT_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                tracing::warn!(%topic, queue = queue_id, error = %e, "final offset commit failed");
                break Err(e);
            }
        }
    };
    lock(&q.pq).closed = true;
    result
}

/// Pulls the queue while its buffer has room, until stopped.
async fn pull_loop(
    shared: &Shared,
    q: &QueueState,
    mut stop: watch::Receiver<bool>,
    tx: mpsc::UnboundedSender<Vec<ReceivedMessage>>,
) {
    let o = &shared.opts;
    let (topic, queue_id) = (&q.queue.0, q.queue.1);
    let depth = o.pulls_in_flight.max(1);
    let start = lock(&q.pq).next_pull;
    let mut reader = QueueReader::new(
        shared.consumer.clone(),
        topic.clone(),
        queue_id,
        start,
        depth,
    );
    loop {
        if *stop.borrow() {
            return;
        }
        let (count, bytes, offset) = {
            let pq = lock(&q.pq);
            let (c, b) = pq.buffered();
            (c, b, pq.next_pull)
        };
        if count >= o.max_buffered_messages_per_queue || bytes >= o.max_buffered_bytes_per_queue {
            // Flow control: wait until some messages are consumed.
            tokio::select! {
                _ = q.drained.notified() => {}
                _ = stopped(&mut stop) => return,
            }
            continue;
        }
        if reader.offset() != offset {
            reader.seek(offset);
        }
        // Each of the `depth` pulls that may be in flight gets its share of the room, so the
        // buffer limits hold across them.
        let room_msgs = (o.max_buffered_messages_per_queue - count).min(u32::MAX as usize) as u32;
        let room_bytes = (o.max_buffered_bytes_per_queue - bytes).min(MAX_PULL_BYTES);
        let sub = shared.filters.get(topic);
        let options = PullOptions {
            max_messages: o.pull_batch.min(room_msgs / depth as u32).max(1),
            max_bytes: (room_bytes / depth).max(1) as u32,
            long_poll: o.long_poll,
            filter: sub.map(|s| s.filter.clone()).unwrap_or_default(),
            plugins: sub.map(|s| s.plugins.clone()).unwrap_or_default(),
        };
        let r = tokio::select! {
            r = reader.next(options) => r,
            _ = stopped(&mut stop) => return,
        };
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%topic, queue = queue_id, offset, error = %e, "pull failed");
                if !pause(ERROR_PAUSE, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        match r.status {
            PullStatus::Found => {
                lock(&q.pq).add(
                    r.messages.iter().map(|m| (m.queue_offset, m.raw().len())),
                    r.next_offset,
                );
                let mut messages = r.messages.into_iter().peekable();
                while messages.peek().is_some() {
                    let batch: Vec<ReceivedMessage> =
                        messages.by_ref().take(o.batch_size).collect();
                    if tx.send(batch).is_err() {
                        return;
                    }
                }
            }
            PullStatus::NoNewMessages => {
                // With a filter the broker may have scanned past non-matching messages:
                // continue (and commit) from there, never re-scan them.
                if r.next_offset > offset {
                    lock(&q.pq).jump(r.next_offset);
                }
                if o.long_poll.is_zero() && !pause(SHORT_POLL_PAUSE, &mut stop).await {
                    return;
                }
            }
            PullStatus::NoMatch => lock(&q.pq).jump(r.next_offset),
            PullStatus::OffsetTooSmall | PullStatus::OffsetOverflow => {
                tracing::warn!(
                    %topic,
                    queue = queue_id,
                    offset,
                    next = r.next_offset,
                    min = r.min_offset,
                    max = r.max_offset,
                    status = ?r.status,
                    "offset out of the queue's range; continuing at the broker's next offset"
                );
                lock(&q.pq).jump(r.next_offset);
            }
        }
    }
}

/// Hands batches to the listener (one task each, within the consumer-wide permits) until
/// stopped, then waits up to `shutdown_timeout` for the running ones and aborts the rest
/// (their offsets stay uncommitted).
async fn dispatch_loop(
    shared: &Arc<Shared>,
    q: &Arc<QueueState>,
    mut stop: watch::Receiver<bool>,
    mut rx: mpsc::UnboundedReceiver<Vec<ReceivedMessage>>,
) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            // Orderly: the next batch of this queue waits until the previous one is consumed.
            batch = rx.recv(), if !shared.opts.orderly || tasks.is_empty() => {
                let Some(batch) = batch else { break };
                let permit = tokio::select! {
                    p = shared.permits.clone().acquire_owned() => p,
                    _ = stopped(&mut stop) => break,
                };
                let Ok(permit) = permit else { break };
                tasks.spawn(consume(shared.clone(), q.clone(), batch, permit, stop.clone()));
            }
        }
    }
    drop(rx);
    if tasks.is_empty() {
        return;
    }
    let deadline = Instant::now() + shared.opts.shutdown_timeout;
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(_) => {
                tracing::warn!(
                    topic = %q.queue.0,
                    queue = q.queue.1,
                    unfinished = tasks.len(),
                    "messages still being consumed after {:?}; they will be delivered again",
                    shared.opts.shutdown_timeout
                );
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                return;
            }
        }
    }
}

/// Runs the listener on one batch until it succeeds or the batch is handed back (clustering:
/// retry topic or dead-letter queue; orderly: dead-letter queue after its attempts), pausing
/// between attempts without holding a permit, then marks the batch consumed. Stops retrying
/// when the queue stops.
async fn consume(
    shared: Arc<Shared>,
    q: Arc<QueueState>,
    batch: Vec<ReceivedMessage>,
    permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let offsets: Vec<u64> = batch.iter().map(|m| m.queue_offset).collect();
    let o = &shared.opts;
    let mut batch = batch;
    let mut permit = Some(permit);
    let mut attempts: u32 = 0;
    loop {
        attempts += 1;
        let listener = shared.listener.clone();
        let input = batch.clone();
        let timeout = o.consume_timeout;
        let result = AssertUnwindSafe(async move {
            match tokio::time::timeout(timeout, listener(input)).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("push consumer listener exceeded consume_timeout ({timeout:?})");
                    ConsumeResult::ReconsumeLater
                }
            }
        })
        .catch_unwind()
        .await
        .unwrap_or_else(|p| {
            tracing::error!(
                topic = %q.queue.0,
                queue = q.queue.1,
                "push consumer listener panicked: {}",
                panic_message(&*p)
            );
            ConsumeResult::ReconsumeLater
        });
        if result == ConsumeResult::Success {
            break;
        }
        if *stop.borrow() {
            // Stopping (queue released or shutdown): the messages stay uncommitted for the
            // next owner; nothing to retry here.
            return;
        }
        let pause_for = if result == ConsumeResult::Suspend {
            RECONSUME_PAUSE
        } else if o.orderly {
            if attempts >= o.max_reconsume_times {
                // The queue moves on: the batch goes to the dead-letter queue.
                batch = send_back(&shared, batch, true).await;
                if batch.is_empty() {
                    break;
                }
            }
            o.orderly_retry_pause
        } else if o.mode == GroupMode::Clustering {
            batch = send_back(&shared, batch, false).await;
            if batch.is_empty() {
                break;
            }
            RECONSUME_PAUSE
        } else {
            RECONSUME_PAUSE
        };
        for m in &mut batch {
            on_failed(m);
            if o.orderly {
                m.reconsume_times = attempts;
            }
        }
        tracing::warn!(
            topic = %q.queue.0,
            queue = q.queue.1,
            first_offset = batch.first().map(|m| m.queue_offset),
            messages = batch.len(),
            attempts,
            "messages not consumed; consuming them again in {pause_for:?}"
        );
        drop(permit.take());
        if !pause(pause_for, &mut stop).await {
            return;
        }
        permit = tokio::select! {
            p = shared.permits.clone().acquire_owned() => match p {
                Ok(p) => Some(p),
                Err(_) => return,
            },
            _ = stopped(&mut stop) => return,
        };
    }
    drop(permit);
    lock(&q.pq).complete(&offsets);
    q.drained.notify_one();
}

/// Hands failed messages back to the broker (retry topic, or the dead-letter queue when
/// `to_dlq` or out of reconsumptions). Returns the messages that could not be handed back:
/// they are retried in place.
async fn send_back(
    shared: &Shared,
    batch: Vec<ReceivedMessage>,
    to_dlq: bool,
) -> Vec<ReceivedMessage> {
    let mut left = Vec::new();
    for m in batch {
        let req = SendBack {
            group: shared.opts.group.clone(),
            id: m.msg_id.0,
            handle: m.commit_log_offset,
            delay_level: 0,
            max_reconsume: shared.opts.max_reconsume_times,
            to_dlq,
        };
        match shared.client.call(req).await {
            Ok(SentBackReply {
                to_dlq,
                reconsume_times,
            }) => {
                if to_dlq {
                    tracing::warn!(
                        group = %shared.opts.group,
                        msg_id = %m.msg_id,
                        reconsume_times,
                        "message moved to the dead-letter queue"
                    );
                } else {
                    tracing::debug!(msg_id = %m.msg_id, reconsume_times, "message handed back for a retry");
                }
            }
            Err(e) => {
                tracing::warn!(msg_id = %m.msg_id, error = %e, "send-back failed; retrying in place");
                left.push(m);
            }
        }
    }
    left
}

/// Called for every message of a batch that is retried in place (orderly, broadcasting, or a
/// send-back that failed).
fn on_failed(msg: &ReceivedMessage) {
    tracing::debug!(
        msg_id = %msg.msg_id,
        topic = %msg.topic,
        queue = msg.queue_id,
        offset = msg.queue_offset,
        "message will be consumed again"
    );
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".into()
    }
}

/// The local offset file of a broadcasting member.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct OffsetFile {
    group: String,
    offsets: Vec<OffsetEntry>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct OffsetEntry {
    topic: String,
    queue_id: u32,
    offset: u64,
}

/// Offsets kept by a broadcasting member in a JSON file, written atomically (temp file,
/// fsync, rename).
#[derive(Debug)]
struct LocalOffsets {
    path: PathBuf,
    group: String,
    /// The table and whether it changed since the last write.
    table: StdMutex<(BTreeMap<QueueRef, u64>, bool)>,
    /// Serialises file writes.
    write: StdMutex<()>,
}

impl LocalOffsets {
    /// Reads the file; a missing file is an empty table. A file that cannot be read or
    /// parsed, or that belongs to another group, is an error (offsets are never reset
    /// silently).
    fn load(path: PathBuf, group: &str) -> Result<Self, ClientError> {
        let table = match std::fs::read(&path) {
            Ok(data) => {
                let file: OffsetFile = serde_json::from_slice(&data).map_err(|e| {
                    ClientError::invalid(format!("offset file {} is damaged: {e}", path.display()))
                })?;
                if file.group != group {
                    return Err(ClientError::invalid(format!(
                        "offset file {} belongs to group {:?}, not {group:?}",
                        path.display(),
                        file.group
                    )));
                }
                file.offsets
                    .into_iter()
                    .map(|e| ((e.topic, e.queue_id), e.offset))
                    .collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(ClientError::invalid(format!(
                    "cannot read offset file {}: {e}",
                    path.display()
                )))
            }
        };
        Ok(Self {
            path,
            group: group.to_string(),
            table: StdMutex::new((table, false)),
            write: StdMutex::new(()),
        })
    }

    fn get(&self, q: &QueueRef) -> Option<u64> {
        lock(&self.table).0.get(q).copied()
    }

    fn set(&self, q: &QueueRef, offset: u64) {
        let mut t = lock(&self.table);
        if t.0.insert(q.clone(), offset) != Some(offset) {
            t.1 = true;
        }
    }

    /// Writes the table if it changed since the last successful write.
    fn flush(&self) -> Result<(), ClientError> {
        let _w = lock(&self.write);
        let file = {
            let mut t = lock(&self.table);
            if !t.1 {
                return Ok(());
            }
            t.1 = false;
            OffsetFile {
                group: self.group.clone(),
                offsets: t
                    .0
                    .iter()
                    .map(|((topic, queue_id), offset)| OffsetEntry {
                        topic: topic.clone(),
                        queue_id: *queue_id,
                        offset: *offset,
                    })
                    .collect(),
            }
        };
        self.write_file(&file)
            .inspect_err(|_| lock(&self.table).1 = true)
    }

    fn write_file(&self, file: &OffsetFile) -> Result<(), ClientError> {
        use std::io::Write;
        let fail = |what: &str, e: std::io::Error| {
            ClientError::Internal(format!(
                "cannot {what} offset file {}: {e}",
                self.path.display()
            ))
        };
        let data = serde_json::to_vec_pretty(file)
            .map_err(|e| ClientError::Internal(format!("cannot encode offsets: {e}")))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail("create the directory of the", e))?;
        }
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = std::fs::File::create(&tmp).map_err(|e| fail("create the temporary", e))?;
        f.write_all(&data)
            .and_then(|()| f.sync_all())
            .map_err(|e| fail("write the temporary", e))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(|e| fail("replace the", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(t: &str, id: u32) -> QueueRef {
        (t.to_string(), id)
    }

    fn set(items: &[QueueRef]) -> BTreeSet<QueueRef> {
        items.iter().cloned().collect()
    }

    #[test]
    fn committable_offset_never_passes_a_message_in_flight() {
        let mut pq = ProcessQueue::default();
        assert_eq!(pq.committable(), None, "nothing before the start is known");
        pq.start_at(10, Some(10));
        assert_eq!(pq.committable(), Some(10));
        assert_eq!(pq.to_commit(), None, "already committed");
        pq.add((10..15).map(|o| (o, 100)), 15);
        assert_eq!(pq.buffered(), (5, 500));
        assert_eq!(pq.committable(), Some(10));
        // Out-of-order completions: 12, 14, 11 finish; 10 and 13 are still in flight.
        pq.complete(&[12, 14, 11]);
        assert_eq!(pq.committable(), Some(10));
        assert_eq!(pq.to_commit(), None);
        pq.complete(&[10]);
        assert_eq!(pq.committable(), Some(13), "stops at the unfinished 13");
        assert_eq!(pq.to_commit(), Some(13));
        pq.committed = Some(13);
        assert_eq!(pq.to_commit(), None);
        // More pulled while 13 is stuck: still 13.
        pq.add((15..20).map(|o| (o, 10)), 20);
        pq.complete(&[15, 16, 17, 18, 19]);
        assert_eq!(pq.committable(), Some(13));
        pq.complete(&[13]);
        assert_eq!(
            pq.committable(),
            Some(20),
            "nothing in flight: the next pull offset"
        );
        assert_eq!(pq.buffered(), (0, 0));
        // Completing unknown offsets is harmless.
        pq.complete(&[3, 99]);
        assert_eq!(pq.buffered(), (0, 0));
        // A jump (offset out of range) moves the committable offset when nothing is in flight.
        pq.jump(50);
        assert_eq!(pq.committable(), Some(50));
        pq.closed = true;
        assert_eq!(
            pq.to_commit(),
            None,
            "a released queue commits nothing more"
        );
    }

    #[test]
    fn jump_does_not_pass_messages_in_flight() {
        let mut pq = ProcessQueue::default();
        pq.start_at(0, None);
        assert_eq!(
            pq.to_commit(),
            Some(0),
            "the consume_from start gets pinned"
        );
        pq.add([(0, 1), (1, 1)], 2);
        pq.jump(100);
        assert_eq!(pq.committable(), Some(0));
        pq.complete(&[0, 1]);
        assert_eq!(pq.committable(), Some(100));
    }

    #[test]
    fn diff_starts_new_queues_and_releases_lost_ones() {
        let owned = set(&[q("a", 0), q("a", 1), q("b", 0)]);
        let running = set(&[q("a", 1), q("a", 2)]);
        let releasing = set(&[q("b", 0)]);
        let d = diff(&owned, &running, &releasing);
        assert_eq!(
            d.start,
            vec![q("a", 0)],
            "b/0 waits until its release finishes"
        );
        assert_eq!(d.release, vec![q("a", 2)]);
        // Nothing owned: release everything running, start nothing.
        let d = diff(&BTreeSet::new(), &running, &releasing);
        assert!(d.start.is_empty());
        assert_eq!(d.release, vec![q("a", 1), q("a", 2)]);
        // Steady state: nothing to do.
        let d = diff(&running, &running, &BTreeSet::new());
        assert_eq!(d, Diff::default());
    }

    #[test]
    fn local_offsets_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("g1.json");
        let l = LocalOffsets::load(path.clone(), "g1").unwrap();
        assert_eq!(l.get(&q("t", 0)), None);
        l.flush().unwrap();
        assert!(!path.exists(), "nothing written while unchanged");
        l.set(&q("t", 0), 42);
        l.set(&q("t", 3), 7);
        l.set(&q("u-x", 1), u64::MAX);
        l.flush().unwrap();
        let again = LocalOffsets::load(path.clone(), "g1").unwrap();
        assert_eq!(again.get(&q("t", 0)), Some(42));
        assert_eq!(again.get(&q("t", 3)), Some(7));
        assert_eq!(again.get(&q("u-x", 1)), Some(u64::MAX));
        assert_eq!(again.get(&q("t", 1)), None);
        again.set(&q("t", 0), 43);
        again.flush().unwrap();
        assert_eq!(
            LocalOffsets::load(path.clone(), "g1")
                .unwrap()
                .get(&q("t", 0)),
            Some(43)
        );
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        assert!(
            !PathBuf::from(tmp).exists(),
            "the temporary file was renamed"
        );
        // Another group's file and a damaged file are refused.
        let e = LocalOffsets::load(path.clone(), "g2").unwrap_err();
        assert!(matches!(e, ClientError::InvalidArgument(_)), "{e:?}");
        std::fs::write(&path, b"{not json").unwrap();
        let e = LocalOffsets::load(path, "g1").unwrap_err();
        assert!(matches!(e, ClientError::InvalidArgument(_)), "{e:?}");
    }

    #[test]
    fn options_defaults_and_validation() {
        let o = PushConsumerOptions::new("g");
        assert_eq!(o.mode, GroupMode::Clustering);
        assert_eq!(o.consume_from, ConsumeFrom::Last);
        assert_eq!(o.max_in_flight, 20);
        assert_eq!(o.max_buffered_messages_per_queue, 1000);
        assert_eq!(o.max_buffered_bytes_per_queue, 100 << 20);
        assert_eq!(o.batch_size, 1);
        assert_eq!(o.pull_batch, 32);
        assert_eq!(o.long_poll, Duration::from_secs(15));
        assert_eq!(o.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(o.commit_interval, Duration::from_secs(1));
        assert_eq!(o.offset_file(), Path::new("quiver-offsets/g.json"));
        o.validate().unwrap();
        assert!(PushConsumerOptions::default().validate().is_err());
        let bad = PushConsumerOptions {
            batch_size: 0,
            ..PushConsumerOptions::new("g")
        };
        assert!(matches!(
            bad.validate(),
            Err(ClientError::InvalidArgument(_))
        ));
    }

    #[test]
    fn consumer_is_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<PushConsumer>();
        check::<PushConsumerOptions>();
    }

    #[test]
    fn member_ids_are_unique_and_bounded() {
        let a = new_member_id("client-1");
        let b = new_member_id("client-1");
        assert_ne!(a, b);
        assert!(a.starts_with("client-1-") && a.len() == "client-1-".len() + 16);
        let long = "é".repeat(300);
        assert!(new_member_id(&long).len() <= 255);
    }

    #[test]
    fn listener_outputs() {
        assert_eq!(
            ConsumeResult::Success.into_consume_result(),
            ConsumeResult::Success
        );
        assert_eq!(
            Ok::<_, String>(ConsumeResult::ReconsumeLater).into_consume_result(),
            ConsumeResult::ReconsumeLater
        );
        assert_eq!(
            Err::<ConsumeResult, _>("boom").into_consume_result(),
            ConsumeResult::ReconsumeLater
        );
        assert_eq!(
            Ok::<(), String>(()).into_consume_result(),
            ConsumeResult::Success
        );
        assert_eq!(
            Err::<(), _>("boom").into_consume_result(),
            ConsumeResult::ReconsumeLater
        );
    }

    #[tokio::test]
    async fn start_checks_arguments_locally() {
        let client = Client::closed_for_tests();
        let listener = |_m: Vec<ReceivedMessage>| async { ConsumeResult::Success };
        let e = PushConsumer::start(
            client.clone(),
            vec!["t".into()],
            PushConsumerOptions::new("bad group"),
            listener,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ClientError::InvalidArgument(_)), "{e:?}");
        let e = PushConsumer::start(
            client.clone(),
            vec![],
            PushConsumerOptions::new("g"),
            listener,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ClientError::InvalidArgument(_)), "{e:?}");
        // Valid arguments reach the (closed) client: not retryable, so start fails.
        let e = PushConsumer::start_single(
            client,
            vec!["t".into()],
            PushConsumerOptions::new("g"),
            |_m| async { Ok::<(), String>(()) },
        )
        .await
        .unwrap_err();
        assert_eq!(e, ClientError::Closed);
    }
}
