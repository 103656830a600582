//! Request handling: topics, produce, pull with long polling, offsets and admin, on top of the
//! store. Takes typed requests and returns typed responses; sockets live in `net`.
//! Client sends (plain, scheduled and transactional half messages) go through one bounded
//! queue to a dedicated append thread, and hold bytes of the append budget
//! (`broker.append_queue`, `broker.append_queue_bytes`) until they are in the log, so a broker
//! that cannot keep up answers "busy" within `busy_timeout_ms` instead of growing memory.
//!
//! System appends do not take that queue or budget: they call `Store::append` directly (which
//! serialises all writers on the store's writer lock) from the thread that makes them:
//! - on a blocking-pool thread of the client request that asked: a send-back's retry or
//!   dead-letter record, a dead-letter resend, a cancel record, a transaction's commit or
//!   rollback records and the check records written when check-backs are handed out;
//! - on the timer thread: deliveries of due scheduled messages and re-queues of those due
//!   beyond the wheel;
//! - on the housekeeping thread: discards of transactions whose check-backs ran out.
//!
//! Each writes messages read back from the log (or a small marker), never bytes a client is
//! still sending, and the request-driven ones are bounded by the client's streams; the timer
//! and housekeeping threads never wait for room behind client sends, so a full append queue
//! cannot stall scheduled delivery or transaction clean-up.

mod groups;
mod longpoll;
mod offsets;
mod special;
mod topics;

use anyhow::Context;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quiver_protocol::names::{self, check_name, check_property_name};
use quiver_protocol::plugins::MAX_PLUGINS_PER_SUBSCRIPTION;
use quiver_protocol::{
    FilterSpec, GroupMode, GroupQueue, GroupSummary, PullStatus, QueueInfo, RecordLimits,
    RecordView, Request, ResetTarget, Response, SendReceipt, Status, TopicSummary, WireMessage,
    PROTOCOL_VERSION,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Config;
use crate::filter::{Filter, FilterCache, FilterKind};
use crate::messaging::retry::Retries;
use crate::messaging::timer::{QueueCount, Timer};
use crate::messaging::tx::{Transactions, TxTiming};
use crate::plugin::{LoadSpec, PluginError, PluginHost};
use crate::store::durable::write_file;
use crate::store::{Appended, GetStatus, NewMessage, ReadLimits, Store, StoreError};

use groups::Groups;
use longpoll::LongPoll;
use offsets::OffsetTable;
use topics::TopicTable;

/// An error answered to the client: a status code and a message saying what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerError {
    status: Status,
    message: String,
}

impl BrokerError {
    /// An error with its status. The message of an `Internal` or `StoreUnavailable` error
    /// stays in the broker's log (it may name server files); the client gets an error id that
    /// matches the log line instead.
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        let message = message.into();
        if matches!(status, Status::Internal | Status::StoreUnavailable) {
            return Self::logged(status, &message);
        }
        Self { status, message }
    }

    /// Logs `detail` as an ERROR under a new error id and answers with the id only.
    fn logged(status: Status, detail: &str) -> Self {
        let id = next_error_id();
        tracing::error!(error_id = %id, status = ?status, "{detail}");
        let message = match status {
            Status::StoreUnavailable => format!(
                "the store refuses writes (a flush failed or the append thread stopped); the broker must be restarted (error id {id} in the broker's log)"
            ),
            _ => format!("internal error (error id {id} in the broker's log)"),
        };
        Self { status, message }
    }

    /// The wire status.
    pub fn status(&self) -> Status {
        self.status
    }
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BrokerError {}

/// A new error id, `<process start, hex seconds>-<counter>`: unique across restarts, and short
/// enough to quote in a support ticket.
fn next_error_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static START: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let start = *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    format!("{start:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

impl From<StoreError> for BrokerError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::MessageTooLarge { .. } | StoreError::BatchTooLarge { .. } => {
                Status::MessageTooLarge
            }
            StoreError::PropertiesTooLarge { .. } => Status::PropertiesTooLarge,
            StoreError::InvalidMessage(_) => Status::InvalidMessage,
            StoreError::DiskFull { .. } => Status::DiskFull,
            StoreError::Poisoned(_) => Status::StoreUnavailable,
            StoreError::Closed => Status::ShuttingDown,
            StoreError::OffsetOutOfRange { .. } => Status::NotFound,
            _ => Status::Internal,
        };
        if let StoreError::DiskFull { .. } = &e {
            // The store's text names the data directory: keep it in the log.
            tracing::debug!(error = %e, "write refused");
            return BrokerError::new(
                status,
                "the broker's disk is (nearly) full: writes are refused until space is freed; retry later",
            );
        }
        BrokerError::new(status, e.to_string())
    }
}

type Result<T> = std::result::Result<T, BrokerError>;

/// Limits the network layer enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request frame.
    pub max_frame_bytes: u32,
    /// Most concurrent connections.
    pub max_connections: u32,
    /// Deadline for receiving a whole request.
    pub request_read_timeout_ms: u64,
    /// Time in-flight requests get at shutdown.
    pub shutdown_grace_ms: u64,
    /// Request bytes one connection may hold buffered.
    pub connection_request_bytes: usize,
    /// Request bytes all connections may hold buffered.
    pub request_bytes: usize,
    /// How long a request waits for buffer room before `Busy`.
    pub busy_timeout_ms: u64,
}

enum AppendJob {
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

/// The broker's state and request handlers.
pub struct Broker {
    cfg: Config,
    store: Arc<Store>,
    topics: Arc<TopicTable>,
    offsets: Arc<OffsetTable>,
    waiters: Arc<LongPoll>,
    groups: Groups,
    /// Compiled filters by (kind, text): compiled once, shared by every pull.
    filters: FilterCache,
    /// The group snapshot last written to `groups.json` (written only when it changes).
    groups_saved: Mutex<Vec<u8>>,
    appends: mpsc::Sender<AppendJob>,
    /// Byte budget of the append queue: memory held by waiting appends stays bounded.
    append_budget: Arc<tokio::sync::Semaphore>,
    appender: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Loaded WebAssembly plugins (docs/PLUGINS.md).
    plugins: Arc<PluginHost>,
    /// Scheduled messages.
    timer: Arc<Timer>,
    /// Transactional half messages.
    tx: Arc<Transactions>,
    /// Delay levels (validated at start).
    delay_levels: Vec<Duration>,
    /// Retries and dead-letter queues (back-offs validated at start).
    retries: Arc<Retries>,
    /// The thread discarding transactions whose check-backs ran out.
    housekeeping: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Where groups, the timer and transactions read the time.
    clock: Clock,
}

impl Broker {
    /// Opens (and recovers) the store and loads topics and offsets. Blocking: call it from
    /// a blocking context.
    pub fn open(cfg: Config) -> anyhow::Result<Arc<Broker>> {
        Self::open_with_clock(cfg, Clock::system())
    }

    /// [`Broker::open`] with the clock that times group sessions, scheduled messages and
    /// transaction check-backs (tests pass a manual one). Blocking.
    pub fn open_with_clock(cfg: Config, clock: Clock) -> anyhow::Result<Arc<Broker>> {
        std::fs::create_dir_all(&cfg.broker.data_dir)?;
        let store = Arc::new(Store::open_with_clock(cfg.store.clone(), clock.clone())?);
        let topics = Arc::new(TopicTable::load(cfg.broker.data_dir.join("topics.json"))?);
        let offsets = Arc::new(OffsetTable::load(cfg.broker.data_dir.join("offsets.json"))?);
        let waiters = Arc::new(LongPoll::default());
        let t = topics.clone();
        let queue_count: Arc<QueueCount> = Arc::new(move |name: &str| {
            if let Some(n) = t.queues(name) {
                return Some(n);
            }
            // System topics users read are created on first use, with one queue.
            if special::is_broker_created(name) {
                return t.create(name, 1).ok().map(|(n, _)| n);
            }
            None
        });
        let timer = Arc::new(
            Timer::open(
                store.clone(),
                cfg.broker.data_dir.join("timer"),
                cfg.messaging.timer_slot_ms,
                cfg.messaging.timer_slots,
                queue_count.clone(),
                clock.clone(),
            )
            .context("opening the timer")?,
        );
        let tx = Arc::new(
            Transactions::open(
                store.clone(),
                TxTiming {
                    check_timeout_ms: cfg.messaging.tx_check_timeout_ms as i64,
                    check_interval_ms: cfg.messaging.tx_check_interval_ms as i64,
                    max_checks: cfg.messaging.tx_max_checks,
                },
                queue_count,
                clock.clone(),
            )
            .context("recovering transactions")?,
        );
        let w = waiters.clone();
        let tm = timer.clone();
        store.set_arrival_listener(Arc::new(move |topic, queue, _max| {
            if topic == names::SCHEDULE_TOPIC {
                tm.notify();
            }
            w.wake(topic, queue)
        }));
        let t = tx.clone();
        let housekeeping = std::thread::Builder::new()
            .name("quiver-tx-check".into())
            .spawn(move || t.run_discarder())?;
        let delay_levels = cfg.messaging.levels().map_err(anyhow::Error::msg)?;
        let retries = Arc::new(Retries::new(
            store.clone(),
            clock.clone(),
            cfg.messaging.retries().map_err(anyhow::Error::msg)?,
        ));
        let o = offsets.clone();
        store.set_consumer_progress(Arc::new(move |topic, queue| o.lowest(topic, queue)));
        let (append_tx, rx) = mpsc::channel(cfg.broker.append_queue);
        let s = store.clone();
        let appender = std::thread::Builder::new()
            .name("quiver-append".into())
            .spawn(move || append_loop(s, rx))?;
        let groups = Groups::new(
            Duration::from_millis(cfg.broker.group_session_timeout_ms),
            Duration::from_millis(cfg.broker.group_heartbeat_interval_ms),
            clock.clone(),
        );
        // Members known before a restart keep their queues until they heartbeat again or
        // their session expires, so no queue gets a second worker across the restart.
        let groups_path = cfg.broker.data_dir.join("groups.json");
        match std::fs::read(&groups_path) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(snap) => groups.restore(snap),
                Err(e) => {
                    tracing::warn!(file = %groups_path.display(), error = %e, "ignoring unreadable group snapshot")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", groups_path.display())),
        }
        let append_budget = Arc::new(tokio::sync::Semaphore::new(cfg.broker.append_queue_bytes));
        let plugins = Arc::new(
            PluginHost::open(
                cfg.plugins.clone(),
                cfg.broker.data_dir.join("plugins"),
                RecordLimits {
                    max_body: cfg.store.max_message_size,
                    max_properties: cfg.store.max_properties_size,
                },
            )
            .context("opening the plugin registry")?,
        );
        Ok(Arc::new(Broker {
            plugins,
            timer,
            tx,
            delay_levels,
            retries,
            housekeeping: Mutex::new(Some(housekeeping)),
            clock,
            groups,
            filters: FilterCache::new(1024),
            groups_saved: Mutex::new(Vec::new()),
            cfg,
            store,
            topics,
            offsets,
            waiters,
            append_budget,
            appends: append_tx,
            appender: Mutex::new(Some(appender)),
        }))
    }

    /// The store (for diagnostics and tests).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The loaded plugins.
    pub fn plugins(&self) -> &Arc<PluginHost> {
        &self.plugins
    }

    /// Scheduled-message counters.
    pub fn timer_stats(&self) -> crate::messaging::timer::TimerStats {
        self.timer.stats()
    }

    /// Half messages not yet committed or rolled back.
    pub fn unresolved_transactions(&self) -> usize {
        self.tx.unresolved()
    }

    /// Limits for the network layer.
    pub fn limits(&self) -> Limits {
        let b = &self.cfg.broker;
        Limits {
            max_frame_bytes: b.max_frame_bytes,
            max_connections: b.max_connections,
            request_read_timeout_ms: b.request_read_timeout_ms,
            shutdown_grace_ms: b.shutdown_grace_ms,
            connection_request_bytes: b.connection_request_bytes,
            request_bytes: b.request_bytes,
            busy_timeout_ms: b.busy_timeout_ms,
        }
    }

    /// The handshake answer.
    pub fn hello(&self) -> Response {
        Response::Hello {
            version: PROTOCOL_VERSION,
            broker: self.cfg.broker.name.clone(),
            max_message_size: self.cfg.store.max_message_size as u32,
            max_frame: self.cfg.broker.max_frame_bytes,
        }
    }

    /// Handles one request (after the handshake).
    pub async fn handle(&self, req: Request, remote: SocketAddr) -> Result<Response> {
        self.handle_with_stop(req, remote, &CancellationToken::new())
            .await
    }

    /// Handles one request; parked pulls answer early when `stop` fires.
    pub async fn handle_with_stop(
        &self,
        req: Request,
        remote: SocketAddr,
        stop: &CancellationToken,
    ) -> Result<Response> {
        match req {
            Request::Hello { .. } => Ok(self.hello()),
            Request::Route { topic, create } => {
                // Clients never create system topics: the broker does, when it first needs
                // one (a refused send to `%DLQ%x` must not leave a topic behind).
                if create && names::is_system_topic(&topic) && self.topics.queues(&topic).is_none()
                {
                    return Err(BrokerError::new(
                        Status::InvalidName,
                        format!("topic {topic:?} is a system topic: only the broker creates and writes it"),
                    ));
                }
                let queues = self
                    .route(&topic, create && !names::is_system_topic(&topic))
                    .await?;
                Ok(Response::Route { queues })
            }
            Request::Send {
                topic,
                queue_id,
                messages,
            } => self.send(topic, queue_id, messages, remote).await,
            Request::SendSpecial {
                topic,
                queue_id,
                mode,
                messages,
            } => {
                self.send_special(topic, queue_id, mode, messages, remote)
                    .await
            }
            Request::CancelScheduled { id } => self.cancel_scheduled(id).await,
            Request::EndTransaction {
                group,
                id,
                handle,
                state,
                from_check,
            } => {
                self.end_transaction(group, id, handle, state, from_check)
                    .await
            }
            Request::PollTransactionChecks {
                group,
                producer_id,
                max,
                wait_ms,
            } => {
                self.poll_checks(group, producer_id, max, wait_ms, stop)
                    .await
            }
            Request::SendBack {
                group,
                id,
                handle,
                delay_level,
                max_reconsume,
                to_dlq,
            } => {
                self.send_back(group, id, handle, delay_level, max_reconsume, to_dlq)
                    .await
            }
            Request::DlqResend {
                group,
                id,
                from_offset,
                max,
            } => self.dlq_resend(group, id, from_offset, max).await,
            req @ Request::Pull { .. } => self.pull(req, stop).await,
            Request::CommitOffset {
                group,
                topic,
                queue_id,
                offset,
            } => {
                name("group", &group)?;
                self.existing_queue(&topic, queue_id)?;
                self.offsets.commit(&group, &topic, queue_id, offset);
                Ok(Response::Done)
            }
            Request::FetchOffset {
                group,
                topic,
                queue_id,
            } => {
                name("group", &group)?;
                self.existing_queue(&topic, queue_id)?;
                Ok(Response::Offset {
                    offset: self.offsets.fetch(&group, &topic, queue_id),
                })
            }
            Request::OffsetForTime {
                topic,
                queue_id,
                timestamp_ms,
            } => {
                self.existing_queue(&topic, queue_id)?;
                let store = self.store.clone();
                let offset =
                    blocking(move || store.offset_for_timestamp(&topic, queue_id, timestamp_ms))
                        .await??;
                Ok(Response::Offset {
                    offset: Some(offset),
                })
            }
            Request::TopicCreate { topic, queues } => {
                name("topic", &topic)?;
                client_writable_topic(&topic, "created")?;
                self.check_queue_count(queues)?;
                let (topics, t) = (self.topics.clone(), topic.clone());
                let (_, created) = blocking(move || topics.create(&t, queues))
                    .await?
                    .map_err(internal)?;
                if !created {
                    return Err(BrokerError::new(
                        Status::TopicExists,
                        format!(
                            "topic {topic:?} already exists; use update to change its queue count"
                        ),
                    ));
                }
                tracing::info!(%topic, queues, "topic created");
                Ok(Response::Done)
            }
            Request::TopicUpdate { topic, queues } => {
                name("topic", &topic)?;
                client_writable_topic(&topic, "changed")?;
                self.check_queue_count(queues)?;
                let (topics, t) = (self.topics.clone(), topic.clone());
                if !blocking(move || topics.update(&t, queues))
                    .await?
                    .map_err(internal)?
                {
                    return Err(not_found(&topic));
                }
                tracing::info!(%topic, queues, "topic updated");
                Ok(Response::Done)
            }
            Request::TopicDelete { topic } => {
                name("topic", &topic)?;
                // Dead letters are the operator's to clear; every other system topic holds
                // the broker's own state (pending retries, transaction outcomes).
                if !topic.starts_with(names::DLQ_PREFIX) {
                    client_writable_topic(&topic, "deleted")?;
                }
                // While the store drops the queues, sends must not re-create the topic (their
                // acknowledged messages would be dropped with it).
                let _deleting = self.topics.begin_delete(&topic);
                let (topics, t) = (self.topics.clone(), topic.clone());
                if !blocking(move || topics.delete(&t))
                    .await?
                    .map_err(internal)?
                {
                    return Err(not_found(&topic));
                }
                self.offsets.forget_topic(&topic);
                let store = self.store.clone();
                let t = topic.clone();
                let dropped = blocking(move || store.delete_topic(&t)).await??;
                tracing::info!(%topic, messages = dropped, "topic deleted");
                Ok(Response::Done)
            }
            Request::TopicList => Ok(Response::Topics(
                self.topics
                    .list()
                    .into_iter()
                    .map(|(name, queues)| TopicSummary { name, queues })
                    .collect(),
            )),
            Request::TopicDescribe { topic } => {
                name("topic", &topic)?;
                let n = self
                    .topics
                    .queues(&topic)
                    .ok_or_else(|| not_found(&topic))?;
                let queues = (0..n)
                    .map(|q| {
                        let (min_offset, max_offset) = self.store.queue_bounds(&topic, q);
                        QueueInfo {
                            queue_id: q,
                            min_offset,
                            max_offset,
                        }
                    })
                    .collect();
                Ok(Response::Topic {
                    name: topic,
                    queues,
                })
            }
            Request::MessageById { id } => {
                let store = self.store.clone();
                let found = blocking(move || store.message_by_id(id)).await??;
                Ok(Response::Messages(found.into_iter().collect()))
            }
            Request::Heartbeat {
                group,
                member_id,
                mode,
                subscriptions,
                held,
            } => {
                name("group", &group)?;
                if member_id.is_empty() || member_id.len() > 255 {
                    return Err(BrokerError::new(
                        Status::BadRequest,
                        "member id must be 1..=255 bytes",
                    ));
                }
                // Validate everything before a topic may be auto-created. A bad expression is
                // refused when the member subscribes, never at the first message; equivalent
                // filters (`*` and none, `A||B` and `A || B`) compare equal by canonical form.
                if subscriptions.len() > 256 {
                    return Err(BrokerError::new(
                        Status::BadRequest,
                        format!(
                            "{} subscriptions; a member may subscribe to at most 256 topics",
                            subscriptions.len()
                        ),
                    ));
                }
                let mut subscriptions = subscriptions;
                let mut seen = std::collections::BTreeSet::new();
                for s in &mut subscriptions {
                    name("topic", &s.topic)?;
                    if !seen.insert(s.topic.clone()) {
                        return Err(BrokerError::new(
                            Status::BadRequest,
                            format!("topic {:?} is subscribed more than once", s.topic),
                        ));
                    }
                    s.filter = match self.compile_filter(&s.filter)? {
                        None => FilterSpec::All,
                        Some(f) => match f.kind() {
                            FilterKind::Tag => FilterSpec::Tag(f.canonical()),
                            FilterKind::Sql => FilterSpec::Sql(f.canonical()),
                        },
                    };
                }
                for s in &subscriptions {
                    // A member may cause its own group's retry and dead-letter topics to be
                    // created; no other system topic is created for a client.
                    let own = s.topic == names::retry_topic(&group)
                        || s.topic == names::dlq_topic(&group);
                    self.route(&s.topic, own || !names::is_system_topic(&s.topic))
                        .await?;
                }
                // Only real queues of subscribed topics count as held (bounded memory).
                let mut held = held;
                held.retain(|(t, q)| {
                    seen.contains(t) && self.topics.queues(t).is_some_and(|n| *q < n)
                });
                let a = self
                    .groups
                    .heartbeat(
                        &group,
                        &member_id,
                        &member_id,
                        remote,
                        mode,
                        subscriptions,
                        held,
                        |t| self.topics.queues(t),
                    )
                    .map_err(|e| match e {
                        groups::GroupError::Mode(m) => BrokerError::new(Status::BadRequest, m),
                        groups::GroupError::Conflict(m) => {
                            BrokerError::new(Status::SubscriptionConflict, m)
                        }
                    })?;
                Ok(Response::Heartbeat {
                    generation: a.generation,
                    session_timeout_ms: self.groups.session_timeout.as_millis() as u32,
                    heartbeat_interval_ms: self.groups.heartbeat_interval.as_millis() as u32,
                    settled: a.settled,
                    owned: a.owned,
                })
            }
            Request::LeaveGroup { group, member_id } => {
                name("group", &group)?;
                if self.groups.leave(&group, &member_id) {
                    tracing::info!(%group, member = %member_id, "consumer left its group");
                }
                Ok(Response::Done)
            }
            Request::GroupList => {
                let mut list: BTreeMap<String, GroupSummary> = self
                    .offsets
                    .groups()
                    .into_iter()
                    .map(|name| {
                        let g = GroupSummary {
                            name: name.clone(),
                            mode: GroupMode::Clustering,
                            members: 0,
                        };
                        (name, g)
                    })
                    .collect();
                for (name, mode, members) in self.groups.list() {
                    if members > 0 || list.contains_key(&name) {
                        list.insert(
                            name.clone(),
                            GroupSummary {
                                name,
                                mode,
                                members,
                            },
                        );
                    }
                }
                Ok(Response::Groups(list.into_values().collect()))
            }
            Request::GroupDescribe { group } => self.describe_group(group),
            Request::GroupResetOffset {
                group,
                topic,
                target,
                force,
            } => {
                name("group", &group)?;
                let n = self
                    .topics
                    .queues(&topic)
                    .ok_or_else(|| not_found(&topic))?;
                // A misspelled name must not create a group.
                if self.offsets.of_group(&group).is_empty()
                    && !self.groups.list().iter().any(|(g, _, _)| *g == group)
                {
                    return Err(BrokerError::new(
                        Status::GroupNotFound,
                        format!("group {group:?} has no members and no committed offsets; check the name (a group exists once a member joined or committed an offset)"),
                    ));
                }
                self.refuse_if_online(&group, force, "reset its offsets")?;
                for q in 0..n {
                    let (min, max) = self.store.queue_bounds(&topic, q);
                    let offset = match target {
                        ResetTarget::First => min,
                        ResetTarget::Last => max,
                        ResetTarget::Offset(o) => o.clamp(min, max),
                        ResetTarget::Timestamp(ts) => {
                            let store = self.store.clone();
                            let t = topic.clone();
                            blocking(move || store.offset_for_timestamp(&t, q, ts)).await??
                        }
                    };
                    self.offsets.commit(&group, &topic, q, offset);
                }
                tracing::info!(%group, %topic, ?target, "group offsets reset");
                Ok(Response::Done)
            }
            Request::GroupDelete { group, force } => {
                name("group", &group)?;
                self.refuse_if_online(&group, force, "delete it")?;
                let had = self.offsets.delete_group(&group);
                let live = self.groups.online(&group) > 0;
                self.groups.forget(&group);
                if !had && !live {
                    return Err(BrokerError::new(
                        Status::GroupNotFound,
                        format!("group {group:?} has no members and no committed offsets"),
                    ));
                }
                tracing::info!(%group, "group deleted");
                Ok(Response::Done)
            }
            Request::PluginLoad {
                name,
                wasm,
                config,
                memory_limit_bytes,
                time_limit_ms,
            } => {
                let host = self.plugins.clone();
                let spec = LoadSpec {
                    wasm,
                    config: Some(config),
                    memory_limit_bytes,
                    time_limit_ms,
                };
                let info = blocking(move || host.load(&name, spec)).await??;
                Ok(Response::Plugins(vec![info]))
            }
            Request::PluginReload {
                name,
                wasm,
                config,
                memory_limit_bytes,
                time_limit_ms,
            } => {
                let host = self.plugins.clone();
                let spec = LoadSpec {
                    wasm,
                    config,
                    memory_limit_bytes,
                    time_limit_ms,
                };
                let info = blocking(move || host.reload(&name, spec)).await??;
                Ok(Response::Plugins(vec![info]))
            }
            Request::PluginUnload { name, force } => {
                let host = self.plugins.clone();
                blocking(move || host.unload(&name, force)).await??;
                Ok(Response::Done)
            }
            Request::PluginList => Ok(Response::Plugins(self.plugins.list())),
            Request::PluginDescribe { name } => {
                Ok(Response::Plugins(vec![self.plugins.describe(&name)?]))
            }
            Request::PluginAttach { name, topic } => {
                let host = self.plugins.clone();
                blocking(move || host.attach(&name, &topic)).await??;
                Ok(Response::Done)
            }
            Request::PluginDetach { name, topic } => {
                let host = self.plugins.clone();
                blocking(move || host.detach(&name, &topic)).await??;
                Ok(Response::Done)
            }
            Request::MessageByKey {
                topic,
                key,
                max,
                begin_ms,
                end_ms,
            } => {
                name("topic", &topic)?;
                let store = self.store.clone();
                let max = max.clamp(1, 64) as usize;
                let mut found =
                    blocking(move || store.query_by_key(&topic, &key, max, begin_ms, end_ms))
                        .await??;
                // The answer must fit one frame: keep the newest records that do.
                let room = (self.cfg.broker.max_frame_bytes as usize).saturating_sub(64 << 10);
                let mut used = 0;
                found.retain(|r| {
                    used += r.len();
                    used <= room
                });
                Ok(Response::Messages(found))
            }
        }
    }

    fn refuse_if_online(&self, group: &str, force: bool, what: &str) -> Result<()> {
        let online = self.groups.online(group);
        if online > 0 && !force {
            return Err(BrokerError::new(
                Status::GroupOnline,
                format!(
                    "group {group:?} has {online} live member(s); stop them first, or use --force \
                     to {what} anyway (live members may then overwrite offsets with their next commit)"
                ),
            ));
        }
        Ok(())
    }

    fn describe_group(&self, group: String) -> Result<Response> {
        name("group", &group)?;
        let live = self.groups.describe(&group);
        let committed = self.offsets.of_group(&group);
        if live.is_none() && committed.is_empty() {
            return Err(BrokerError::new(
                Status::GroupNotFound,
                format!("group {group:?} has no members and no committed offsets"),
            ));
        }
        let (mode, members, owners) =
            live.unwrap_or((GroupMode::Clustering, Vec::new(), BTreeMap::new()));
        let mut topics: std::collections::BTreeSet<String> =
            committed.iter().map(|(t, _, _)| t.clone()).collect();
        topics.extend(members.iter().flat_map(|m| m.topics.iter().cloned()));
        let mut queues = Vec::new();
        for topic in topics {
            let n = self.topics.queues(&topic).unwrap_or(0);
            for q in 0..n {
                let committed_offset = committed
                    .iter()
                    .find(|(t, qq, _)| *t == topic && *qq == q)
                    .map(|(_, _, o)| *o);
                queues.push(GroupQueue {
                    topic: topic.clone(),
                    queue_id: q,
                    committed: committed_offset,
                    max_offset: self.store.queue_bounds(&topic, q).1,
                    owner: owners.get(&(topic.clone(), q)).cloned(),
                });
            }
        }
        Ok(Response::Group {
            name: group,
            mode,
            members,
            queues,
        })
    }

    /// Compiles (or finds in the cache) a subscription's filter; `None` means every message.
    fn compile_filter(&self, spec: &FilterSpec) -> Result<Option<Arc<Filter>>> {
        let (kind, expr) = match spec {
            FilterSpec::All => return Ok(None),
            FilterSpec::Tag(e) => (FilterKind::Tag, e),
            FilterSpec::Sql(e) => (FilterKind::Sql, e),
        };
        match self.filters.get_or_compile(kind, expr) {
            Ok(f) if f.is_all() => Ok(None),
            Ok(f) => Ok(Some(f)),
            Err(e) => Err(BrokerError::new(
                Status::InvalidFilter,
                format!("invalid {} filter {expr:?}: {e}", kind.name()),
            )),
        }
    }

    fn check_queue_count(&self, queues: u32) -> Result<()> {
        let max = self.cfg.broker.max_queues;
        if queues == 0 || queues > max {
            return Err(BrokerError::new(
                Status::BadRequest,
                format!("queue count must be 1..={max}, got {queues}"),
            ));
        }
        Ok(())
    }

    /// Queue count of a topic, auto-creating it when asked and allowed.
    async fn route(&self, topic: &str, create: bool) -> Result<u32> {
        name("topic", topic)?;
        internal_topic(topic)?;
        if let Some(q) = self.topics.queues(topic) {
            return Ok(q);
        }
        if create && special::is_broker_created(topic) {
            let (topics, t) = (self.topics.clone(), topic.to_string());
            let (q, _) = blocking(move || topics.create(&t, 1))
                .await?
                .map_err(internal)?;
            return Ok(q);
        }
        if !create || !self.cfg.broker.auto_create_topics {
            return Err(BrokerError::new(
                Status::TopicNotFound,
                format!(
                    "topic {topic:?} does not exist{}",
                    if self.cfg.broker.auto_create_topics {
                        ""
                    } else {
                        " and auto-creation is off; create it with `quiver admin topic create`"
                    }
                ),
            ));
        }
        if self.topics.is_deleting(topic) {
            return Err(BrokerError::new(
                Status::Busy,
                format!("topic {topic:?} is being deleted; retry in a moment"),
            ));
        }
        let max_topics = self.cfg.broker.max_topics;
        if self.topics.len() >= max_topics {
            return Err(BrokerError::new(
                Status::InvalidName,
                format!(
                    "the broker holds {max_topics} topics (broker.max_topics); topic {topic:?} \
                     is not created automatically; delete unused topics or raise the limit"
                ),
            ));
        }
        // Creating writes and fsyncs topics.json: off the async workers.
        let (topics, t, queues) = (
            self.topics.clone(),
            topic.to_string(),
            self.cfg.broker.default_queues,
        );
        let (q, created) = blocking(move || topics.create(&t, queues))
            .await?
            .map_err(internal)?;
        if created {
            tracing::info!(%topic, queues = q, "topic auto-created");
        }
        Ok(q)
    }

    fn existing_queue(&self, topic: &str, queue_id: u32) -> Result<u32> {
        name("topic", topic)?;
        let n = self.topics.queues(topic).ok_or_else(|| not_found(topic))?;
        if queue_id >= n {
            return Err(BrokerError::new(
                Status::QueueNotFound,
                format!("topic {topic:?} has {n} queues; queue {queue_id} does not exist"),
            ));
        }
        Ok(n)
    }

    async fn send(
        &self,
        topic: String,
        queue_id: u32,
        messages: Vec<WireMessage>,
        born: SocketAddr,
    ) -> Result<Response> {
        let messages = self.accept(&topic, queue_id, messages).await?;
        let appended = self.store_messages(topic, queue_id, messages, born).await?;
        Ok(receipts(queue_id, &appended))
    }

    /// Validates a send, routes it (auto-creating the topic) and runs the topic's ingress
    /// plugins: what comes out is ready to store.
    async fn accept(
        &self,
        topic: &str,
        queue_id: u32,
        messages: Vec<WireMessage>,
    ) -> Result<Vec<WireMessage>> {
        // Validate everything before the topic may be auto-created.
        name("topic", topic)?;
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
    async fn store_messages(
        &self,
        topic: String,
        queue_id: u32,
        messages: Vec<WireMessage>,
        born: SocketAddr,
    ) -> Result<Appended> {
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
        Ok(rx
            .await
            .map_err(|_| BrokerError::new(Status::ShuttingDown, "broker is shutting down"))??)
    }

    async fn pull(&self, req: Request, stop: &CancellationToken) -> Result<Response> {
        let Request::Pull {
            topic,
            queue_id,
            offset,
            max_messages,
            max_bytes,
            long_poll_ms,
            filter,
            plugins,
        } = req
        else {
            return Err(BrokerError::new(
                Status::Internal,
                "pull called with another request",
            ));
        };
        let filter = self.compile_filter(&filter)?;
        self.existing_queue(&topic, queue_id)?;
        if plugins.len() > MAX_PLUGINS_PER_SUBSCRIPTION {
            return Err(BrokerError::new(
                Status::BadRequest,
                format!("at most {MAX_PLUGINS_PER_SUBSCRIPTION} plugins per subscription"),
            ));
        }
        // Unknown plugins fail the pull at once, whatever the failure policy.
        self.plugins.resolve(&plugins)?;
        let first_offset = offset;
        let mut offset = offset;
        let max_count = if max_messages == 0 {
            32
        } else {
            max_messages.min(4096)
        } as usize;
        // The response must fit the client's frame limit with room for its header.
        let frame_room = (self.cfg.broker.max_frame_bytes as usize).saturating_sub(64 << 10);
        let max_bytes = if max_bytes == 0 {
            4 << 20
        } else {
            max_bytes as usize
        }
        .min(frame_room);
        let limits = ReadLimits::new(max_count, max_bytes, max_count.max(4096));
        let park = Duration::from_millis(long_poll_ms.min(self.cfg.broker.long_poll_max_ms) as u64);
        let parked_at = tokio::time::Instant::now();
        let deadline = parked_at + park;
        let topic: Arc<str> = topic.into();
        loop {
            // Subscribe before reading, so an arrival between the read and the wait wakes us.
            let notify = self.waiters.subscribe(&topic, queue_id);
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let store = self.store.clone();
            let t = topic.clone();
            let f = filter.clone();
            // The current version of each plugin: a reload applies from the next batch on.
            let chain = self.plugins.resolve(&plugins)?;
            let host = self.plugins.clone();
            let (r, records, next_offset) = blocking(move || -> Result<_> {
                let mut r = match f {
                    None => store.get_messages(&t, queue_id, offset, limits, |_| true),
                    // Tag hashes in the consume queue skip most non-matching entries without a
                    // commit-log read; the record check is exact (no hash collision gets
                    // through).
                    Some(f) => store.get_messages_where(
                        &t,
                        queue_id,
                        offset,
                        limits,
                        |e| f.may_match_hash(e.tag_hash),
                        |r| f.matches(r),
                    ),
                }?;
                let records: Vec<Bytes> = std::mem::take(&mut r.messages)
                    .into_iter()
                    .map(|m| m.bytes)
                    .collect();
                // Plugins run after the tag/SQL filter, on what it kept.
                let (records, next_offset) = if chain.is_empty() || records.is_empty() {
                    (records, r.next_offset)
                } else {
                    let mut records = host.apply_to_records(&chain, &t, queue_id, records)?;
                    // A transform may enlarge messages: the answer still keeps to the byte
                    // budget (and the frame), continuing at the first message left out.
                    let mut used = 0usize;
                    let cut = records.iter().position(|rec| {
                        used += rec.len();
                        used > max_bytes
                    });
                    match cut {
                        Some(i) if i > 0 => {
                            let next = RecordView::parse_unchecked_crc(&records[i])
                                .map(|v| v.queue_offset())
                                .unwrap_or(r.next_offset);
                            records.truncate(i);
                            (records, next)
                        }
                        _ => (records, r.next_offset),
                    }
                };
                Ok((r, records, next_offset))
            })
            .await??;
            // Plugins that dropped every message leave the pull where a filter would.
            let status = if r.status == GetStatus::Found && records.is_empty() {
                GetStatus::NoMatch
            } else {
                r.status
            };
            let now = tokio::time::Instant::now();
            // A filtered pull that has skipped non-matching arrivals for a while answers, so
            // the consumer's offset (and its lag) follows within about a second.
            let progress_due = parked_at + Duration::from_secs(1);
            let report_progress = r.next_offset > first_offset && now >= progress_due;
            let parked_out = now >= deadline || stop.is_cancelled() || report_progress;
            // Everything up to the end was scanned and nothing matched: for this subscriber that
            // is "nothing new": park from the new position.
            if status == GetStatus::NoMatch && r.next_offset >= r.max_offset && !parked_out {
                offset = r.next_offset;
            } else if status != GetStatus::NoNewMessages || parked_out {
                let status = match status {
                    GetStatus::Found => PullStatus::Found,
                    GetStatus::NoMatch if r.next_offset >= r.max_offset => {
                        PullStatus::NoNewMessages
                    }
                    GetStatus::NoMatch => PullStatus::NoMatch,
                    GetStatus::NoNewMessages => PullStatus::NoNewMessages,
                    GetStatus::OffsetTooSmall => PullStatus::OffsetTooSmall,
                    GetStatus::OffsetOverflow => PullStatus::OffsetOverflow,
                };
                return Ok(Response::Pull {
                    status,
                    next_offset,
                    min_offset: r.min_offset,
                    max_offset: r.max_offset,
                    records,
                });
            }
            // Skipped entries are reported within a second even if nothing else arrives.
            let wake = if offset > first_offset {
                deadline.min(progress_due)
            } else {
                deadline
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake) => {}
                _ = stop.cancelled() => {}
            }
        }
    }

    /// Writes committed offsets if they changed, and the group membership snapshot (called
    /// once a second and at shutdown).
    pub fn persist_offsets(&self) -> anyhow::Result<()> {
        let offsets = self.offsets.save_if_dirty();
        let snap = serde_json::to_vec(&self.groups.snapshot())?;
        let mut last = self.groups_saved.lock().expect("groups snapshot lock");
        if *last != snap {
            write_file(&self.cfg.broker.data_dir.join("groups.json"), &snap)?;
            *last = snap;
        }
        offsets
    }

    /// Stops the append thread, persists offsets, and closes the store cleanly. Blocking.
    pub fn close(&self) -> anyhow::Result<()> {
        let _ = self.appends.try_send(AppendJob::Stop);
        if let Some(t) = self.appender.lock().expect("appender lock").take() {
            // The Stop job may not fit a full queue: closing the store fails pending appends.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !t.is_finished() && Instant::now() < deadline {
                let _ = self.appends.try_send(AppendJob::Stop);
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        self.tx.stop();
        if let Some(t) = self.housekeeping.lock().expect("housekeeping lock").take() {
            let _ = t.join();
        }
        self.timer.close();
        // Close the store whatever happens to the small files: a clean store is what matters.
        let saved = self.persist_offsets();
        self.store.close()?;
        saved
    }
}

fn append_loop(store: Arc<Store>, mut rx: mpsc::Receiver<AppendJob>) {
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
fn receipts(queue_id: u32, appended: &Appended) -> Response {
    Response::Send {
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

/// Refuses the broker's internal topics (scheduled, half and op records) as user topics:
/// they are read only by the timer and the transaction checker.
/// Refuses admin changes to system topics (§9.5 of docs/PROTOCOL.md): the broker creates them
/// and owns their queues.
fn client_writable_topic(topic: &str, what: &str) -> Result<()> {
    internal_topic(topic)?;
    if names::is_system_topic(topic) {
        return Err(BrokerError::new(
            Status::InvalidName,
            format!("topic {topic:?} is a system topic: the broker creates it when needed, and it cannot be {what} by a client"),
        ));
    }
    Ok(())
}

fn internal_topic(topic: &str) -> Result<()> {
    if [
        names::SCHEDULE_TOPIC,
        names::HALF_TOPIC,
        names::HALF_OP_TOPIC,
    ]
    .contains(&topic)
    {
        return Err(BrokerError::new(
            Status::InvalidName,
            format!("topic {topic:?} is internal to the broker"),
        ));
    }
    Ok(())
}

fn name(kind: &str, value: &str) -> Result<()> {
    check_name(kind, value).map_err(|e| BrokerError::new(Status::InvalidName, e))
}

fn not_found(topic: &str) -> BrokerError {
    BrokerError::new(
        Status::TopicNotFound,
        format!("topic {topic:?} does not exist"),
    )
}

fn internal(e: anyhow::Error) -> BrokerError {
    BrokerError::new(Status::Internal, format!("{e:#}"))
}

/// Runs store work off the async workers (disk reads can fault pages in from disk).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BrokerError::new(Status::Internal, format!("store task failed: {e}")))
}

impl From<PluginError> for BrokerError {
    fn from(e: PluginError) -> Self {
        let status = match &e {
            PluginError::NotFound(_) | PluginError::MissingFromChain { .. } => {
                Status::PluginNotFound
            }
            PluginError::Exists(_) => Status::PluginExists,
            PluginError::Invalid { .. } => Status::InvalidPlugin,
            PluginError::Failed { .. } => Status::PluginFailed,
            PluginError::Unhealthy { .. } => Status::PluginUnhealthy,
            PluginError::Rejected { .. } => Status::PluginRejected,
            PluginError::InUse { .. } => Status::PluginInUse,
            PluginError::BadRequest(_) => Status::BadRequest,
            PluginError::Internal(_) => Status::Internal,
        };
        BrokerError::new(status, e.to_string())
    }
}

impl From<BrokerError> for std::io::Error {
    fn from(e: BrokerError) -> Self {
        std::io::Error::other(e.message)
    }
}

#[cfg(test)]
mod error_tests {
    use super::*;

    /// What the store knows about its files stays in the broker's log: clients get an error id.
    #[test]
    fn errors_sent_to_clients_name_no_server_paths() {
        let dir = std::path::PathBuf::from("/srv/quiver-data/store");
        let errors = [
            StoreError::Corrupt {
                file: dir.join("commitlog/00000000000000000000"),
                offset: 42,
                reason: "bad crc".into(),
            },
            StoreError::io(
                dir.join("commitlog/00000000001073741824.tmp"),
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ),
            StoreError::DiskFull {
                path: dir.clone(),
                cause: crate::store::DiskFullCause::Watermark {
                    used_percent: 97.0,
                    limit_percent: 90.0,
                },
            },
            StoreError::Poisoned(format!("msync of {} failed", dir.display())),
            StoreError::Locked(dir.clone()),
        ];
        for e in errors {
            let detail = e.to_string();
            // A full disk is not an internal error: its text names no file anyway.
            if !e.is_retryable() {
                assert!(
                    detail.contains("/srv/"),
                    "the log keeps the detail: {detail}"
                );
            }
            let sent = BrokerError::from(e);
            assert!(
                !sent.to_string().contains('/'),
                "{:?}: {sent}",
                sent.status()
            );
            if matches!(sent.status(), Status::Internal | Status::StoreUnavailable) {
                assert!(sent.to_string().contains("error id"), "{sent}");
            }
        }
        let plain = BrokerError::new(Status::Internal, "open /srv/x: denied");
        assert!(!plain.to_string().contains("/srv"), "{plain}");
    }
}
