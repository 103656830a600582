//! Request handling: topics, produce, pull with long polling, offsets and admin, on top of the
//! store. Takes decoded commands (`quiver_protocol::cmd`) and returns their typed replies;
//! sockets live in `net`. [`Broker::handle_with_stop`] is the dispatch table: one line per
//! command, calling its handler in the room of its family: `produce` (sends, the append
//! thread), `pull` (reads, filters, long polling), `groups` (membership, offsets, group admin;
//! the state machine is `membership`), `admin` (routes, topics, lookups, plugins) and
//! `special` (scheduled, transactional, retry and dead-letter commands).
//!
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

mod admin;
mod groups;
mod longpoll;
mod membership;
mod offsets;
mod produce;
mod pull;
mod replicas;
mod special;
mod topics;

pub use replicas::{Replicas, ReplicationPolicy, SlaveView};

use anyhow::Context;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_protocol::cmd::HelloReply;
use quiver_protocol::names::{self, InvalidName};
use quiver_protocol::{RecordLimits, Request, Response, Status, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Config;
use crate::filter::FilterCache;
use crate::messaging::retry::Retries;
use crate::messaging::timer::{QueueCount, Timer};
use crate::messaging::tx::{Transactions, TxTiming};
use crate::plugin::{PluginError, PluginHost};
use crate::store::durable::write_file;
use crate::store::{Store, StoreError};

use longpoll::LongPoll;
use membership::Groups;
use offsets::OffsetTable;
use produce::{append_loop, AppendJob};
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

impl From<crate::auth::Refused> for BrokerError {
    fn from(e: crate::auth::Refused) -> Self {
        BrokerError::new(e.status, e.message)
    }
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
            StoreError::Replica => Status::NotMaster,
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
    /// The slaves of this broker's set when it is their master (sync replication's gate).
    replicas: Arc<Replicas>,
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
    /// Counters and histograms for `/metrics` (src/metrics.rs).
    metrics: Arc<crate::metrics::BrokerMetrics>,
    /// When the broker opened, ms since the Unix epoch (its clock).
    started_ms: i64,
    /// The QUIC address it listens on, once bound (port 0 resolved).
    listen_addr: std::sync::OnceLock<SocketAddr>,
    /// Users and access rules (src/auth).
    auth: Arc<crate::auth::Auth>,
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
        std::fs::create_dir_all(&cfg.broker.data_dir).with_context(|| {
            format!(
                "creating the data directory {} (broker.data_dir, --data-dir)",
                cfg.broker.data_dir.display()
            )
        })?;
        let auth = Arc::new(
            crate::auth::Auth::open(&cfg.auth, &cfg.broker.data_dir, clock.clone())
                .context("opening users and access rules")?,
        );
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
        let replicas = Arc::new(Replicas::new(
            ReplicationPolicy {
                sync: cfg.cluster.replication == crate::cluster::Replication::Sync,
                min_in_sync: cfg.cluster.min_in_sync as usize,
                lag_ms: cfg.cluster.replica_lag_ms as i64,
                ack_timeout: Duration::from_millis(cfg.cluster.replica_ack_timeout_ms),
            },
            clock.clone(),
        ));
        let r = replicas.clone();
        store.set_arrival_listener(Arc::new(move |topic, queue, _max| {
            if topic == names::SCHEDULE_TOPIC {
                tm.notify();
            }
            r.notify_data();
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
        let metrics = Arc::new(crate::metrics::BrokerMetrics::new());
        {
            let m = metrics.clone();
            store.set_flush_observer(Arc::new(move |took, appends| m.fsync(took, appends)));
        }
        Ok(Arc::new(Broker {
            metrics,
            started_ms: clock.now_ms(),
            listen_addr: std::sync::OnceLock::new(),
            auth,
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
            replicas,
        }))
    }

    /// Whole records of the commit log from `from` for slave `node` (docs/STORAGE.md §11),
    /// waiting up to `wait` for new ones when there are none yet. `from` is the slave's
    /// acknowledgement of everything before it.
    pub async fn replica_chunk(
        &self,
        node: u64,
        from: u64,
        max_bytes: usize,
        wait: std::time::Duration,
    ) -> Result<crate::store::LogChunk> {
        let end = self.store.log_end();
        if from > end {
            return Err(BrokerError::new(
                Status::NotFound,
                format!("offset {from} is past this master's log end {end}: the replica's log does not continue it"),
            ));
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut recorded = false;
        loop {
            // Created before reading, so records arriving meanwhile wake it.
            let arrived = self.replicas.data_notified();
            let store = self.store.clone();
            let chunk = blocking(move || store.read_log(from, max_bytes)).await??;
            if !recorded {
                // `from` is a position of this log: the slave holds everything before it.
                self.replicas.record_fetch(node, from, end);
                recorded = true;
            }
            if !chunk.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(chunk);
            }
            let _ = tokio::time::timeout_at(deadline, arrived).await;
        }
    }

    /// This broker's slaves as their master sees them (empty on a slave or a standalone
    /// broker).
    pub fn replicas(&self) -> &Replicas {
        &self.replicas
    }

    /// When the broker opened, ms since the Unix epoch (its clock).
    pub fn started_ms(&self) -> i64 {
        self.started_ms
    }

    /// Records the address the QUIC listener bound (called once by the server).
    pub fn set_listen_addr(&self, addr: SocketAddr) {
        let _ = self.listen_addr.set(addr);
    }

    /// The QUIC address it listens on: the bound one, else the configured one.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
            .get()
            .copied()
            .unwrap_or(self.cfg.broker.listen)
    }

    /// Whether this broker holds the topic now.
    pub fn has_topic(&self, name: &str) -> bool {
        self.topics.queues(name).is_some()
    }

    /// Users and access rules.
    pub fn auth(&self) -> &Arc<crate::auth::Auth> {
        &self.auth
    }

    /// The broker's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The broker's metrics (src/metrics.rs).
    pub fn metrics(&self) -> &Arc<crate::metrics::BrokerMetrics> {
        &self.metrics
    }

    /// What `/metrics` gauges show now: consumer lag, dead-letter sizes, plugins, scheduled
    /// and transactional counts, disk, log size and slaves (docs/OPERATIONS.md).
    pub async fn gauges(&self) -> crate::metrics::Gauges {
        use crate::metrics::{PluginGauge, QueueLag, SlaveGauge};
        let mut lag = Vec::new();
        let mut dlq = Vec::new();
        for group in self.offsets.groups() {
            for (topic, queue, committed) in self.offsets.of_group(&group) {
                let (_, max) = self.store.queue_bounds(&topic, queue);
                lag.push(QueueLag {
                    group: group.clone(),
                    topic,
                    queue,
                    lag: max.saturating_sub(committed),
                });
            }
        }
        for (name, queues) in self.topics.list() {
            if let Some(group) = name.strip_prefix(quiver_protocol::names::DLQ_PREFIX) {
                let n: u64 = (0..queues)
                    .map(|q| {
                        let (min, max) = self.store.queue_bounds(&name, q);
                        max - min
                    })
                    .sum();
                dlq.push((group.to_string(), n));
            }
        }
        let times: std::collections::HashMap<String, Duration> =
            self.plugins.run_times().into_iter().collect();
        let plugins = self
            .plugins
            .list()
            .into_iter()
            .map(|p| PluginGauge {
                run_seconds: times.get(&p.name).map_or(0.0, Duration::as_secs_f64),
                name: p.name,
                batches: p.batches,
                failures: p.failures,
                messages_in: p.messages_in,
                messages_out: p.messages_out,
                healthy: p.healthy,
            })
            .collect();
        let (min, written, _) = self.store.log_offsets();
        let slaves = self
            .replica_lags()
            .await
            .into_iter()
            .map(|r| SlaveGauge {
                node: r.node,
                lag_bytes: r.master_end.saturating_sub(r.acked),
                lag_messages: r.lag_messages,
                in_sync: r.in_sync,
            })
            .collect();
        crate::metrics::Gauges {
            lag,
            dlq,
            plugins,
            scheduled_pending: self.timer.stats().pending,
            unresolved_transactions: self.tx.unresolved() as u64,
            disk_used_ratio: self.store.disk_used_ratio(),
            disk_full: self.store.disk_full(),
            log_bytes: written.saturating_sub(min),
            slaves,
            controller: None,
        }
    }

    /// This broker's slaves and how far each lags, when it is a master (empty otherwise):
    /// the `replicas` section of ClusterInfo. Counting the messages walks the log between
    /// each slave's position and the end (at most a million records; blocking reads of
    /// mapped memory).
    pub async fn replica_lags(&self) -> Vec<quiver_protocol::cmd::ReplicaLag> {
        if self.store.is_replica() {
            return Vec::new();
        }
        let end = self.store.log_end();
        let slaves: Vec<(SlaveView, bool)> = self
            .replicas
            .slaves()
            .into_iter()
            .map(|v| (v, self.replicas.in_sync(&v)))
            .collect();
        let store = self.store.clone();
        let counted = blocking(move || {
            slaves
                .into_iter()
                .map(|(v, in_sync)| quiver_protocol::cmd::ReplicaLag {
                    node: v.node,
                    acked: v.acked,
                    master_end: end,
                    lag_messages: store.records_after(v.acked, 1_000_000).unwrap_or(u64::MAX),
                    in_sync,
                    last_fetch_ms: v.last_fetch_ms,
                })
                .collect()
        })
        .await;
        counted.unwrap_or_default()
    }

    /// What a master gives its slaves besides the log (docs/PROTOCOL.md §6.32): the
    /// committed consumer offsets, as JSON.
    pub fn replica_state(&self) -> anyhow::Result<Vec<u8>> {
        Ok(serde_json::to_vec(&serde_json::json!({
            "offsets": self.offsets.to_json(),
            "plugins": self.plugins.replica_view(),
        }))?)
    }

    /// A slave takes its master's state ([`Broker::replica_state`]): its committed offsets
    /// become the master's (saved by the once-a-second persist), and its plugins and their
    /// attachments the master's (modules from `modules` or its own store). Returns the
    /// hashes of modules it still lacks. Blocking (compiles plugins).
    pub fn apply_replica_state(
        &self,
        json: &[u8],
        modules: &std::collections::HashMap<String, bytes::Bytes>,
    ) -> anyhow::Result<Vec<String>> {
        let mut v: serde_json::Value =
            serde_json::from_slice(json).context("the master's state is not JSON")?;
        if let Some(offsets) = v.get_mut("offsets").map(serde_json::Value::take) {
            anyhow::ensure!(
                self.offsets.replace_from_json(offsets),
                "the master's offsets are not an offset table"
            );
        }
        match v.get_mut("plugins").map(serde_json::Value::take) {
            Some(view) => Ok(self
                .plugins
                .mirror(view, modules)
                .context("mirroring the master's plugins")?),
            None => Ok(Vec::new()),
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The store.
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
    pub fn hello(&self) -> HelloReply {
        HelloReply {
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

    /// Handles one request; parked pulls answer early when `stop` fires. The dispatch table:
    /// one handler per command, in the room of its family (produce, pull, groups, admin,
    /// special).
    pub async fn handle_with_stop(
        &self,
        req: Request,
        remote: SocketAddr,
        stop: &CancellationToken,
    ) -> Result<Response> {
        use Request as Q;
        use Response as A;
        Ok(match req {
            Q::Hello(_) => A::Hello(self.hello()),
            Q::Route(c) => A::Route(self.route_cmd(c).await?),
            // produce
            Q::Send(c) => A::Send(self.send(c, remote).await?),
            // pull
            Q::Pull(c) => A::Pull(self.pull(c, stop).await?),
            // groups and their offsets
            Q::Heartbeat(c) => A::Heartbeat(self.heartbeat(c, remote).await?),
            Q::LeaveGroup(c) => A::LeaveGroup(self.leave_group(c)?),
            Q::CommitOffset(c) => A::CommitOffset(self.commit_offset(c)?),
            Q::FetchOffset(c) => A::FetchOffset(self.fetch_offset(c)?),
            Q::GroupList(_) => A::GroupList(self.group_list()),
            Q::GroupDescribe(c) => A::GroupDescribe(self.describe_group(c)?),
            Q::GroupResetOffset(c) => A::GroupResetOffset(self.reset_offsets(c).await?),
            Q::GroupDelete(c) => A::GroupDelete(self.delete_group(c)?),
            // scheduled, transactional, retry and dead-letter (special)
            Q::SendSpecial(c) => A::SendSpecial(self.send_special(c, remote).await?),
            Q::CancelScheduled(c) => A::CancelScheduled(self.cancel_scheduled(c).await?),
            Q::EndTransaction(c) => A::EndTransaction(self.end_transaction(c).await?),
            Q::PollTransactionChecks(c) => {
                A::PollTransactionChecks(self.poll_checks(c, stop).await?)
            }
            Q::SendBack(c) => A::SendBack(self.send_back(c).await?),
            Q::DlqResend(c) => A::DlqResend(self.dlq_resend(c).await?),
            // topics, lookups and plugins (admin)
            Q::TopicCreate(c) => A::TopicCreate(self.create_topic(c).await?),
            Q::TopicUpdate(c) => A::TopicUpdate(self.update_topic(c).await?),
            Q::TopicDelete(c) => A::TopicDelete(self.delete_topic(c).await?),
            Q::TopicList(_) => A::TopicList(self.list_topics()),
            Q::TopicDescribe(c) => A::TopicDescribe(self.describe_topic(c)?),
            Q::OffsetForTime(c) => A::OffsetForTime(self.offset_for_time(c).await?),
            Q::MessageById(c) => A::MessageById(self.message_by_id(c).await?),
            Q::MessageByKey(c) => A::MessageByKey(self.message_by_key(c).await?),
            Q::PluginLoad(c) => A::PluginLoad(self.load_plugin(c).await?),
            Q::PluginReload(c) => A::PluginReload(self.reload_plugin(c).await?),
            Q::PluginUnload(c) => A::PluginUnload(self.unload_plugin(c).await?),
            Q::PluginList(_) => A::PluginList(self.list_plugins()),
            Q::PluginDescribe(c) => A::PluginDescribe(self.describe_plugin(c)?),
            // Normally answered by `net::answer`, which knows the node's cluster role.
            Q::BrokerStatus(_) => A::BrokerStatus(quiver_protocol::cmd::BrokerStatusReply {
                json: Box::pin(crate::console::status(self, None))
                    .await?
                    .to_string(),
            }),
            Q::PluginAttach(c) => A::PluginAttach(self.attach_plugin(c).await?),
            Q::PluginDetach(c) => A::PluginDetach(self.detach_plugin(c).await?),
            // Cluster commands need the connection's peer identity and the controller: `net`
            // answers them before a request reaches the broker.
            // Outside a cluster (a cluster node's `net` answers these itself): the broker is
            // a cluster of one broker set, named after the broker, answering on the address
            // the client already uses (an empty address).
            Q::TopicRoute(c) => A::TopicRoute(self.standalone_route(c).await?),
            Q::TopicCreateOn(c) => A::TopicCreateOn(self.standalone_create_on(c).await?),
            // Users and rules; the connection's front door checked the caller.
            q @ (Q::UserCreate(_)
            | Q::UserPassword(_)
            | Q::UserDelete(_)
            | Q::UserList(_)
            | Q::AclGrant(_)
            | Q::AclRevoke(_)
            | Q::AclList(_)) => return Ok(self.auth.manage(q).await?),
            Q::AuthStart(_) | Q::AuthFinish(_) => {
                return Err(BrokerError::new(
                    Status::BadRequest,
                    "the password handshake belongs to a connection",
                ))
            }
            Q::Raft(_)
            | Q::ClusterInfo(_)
            | Q::ClusterVoter(_)
            | Q::ReplicaFetch(_)
            | Q::ReplicaState(_)
            | Q::ClusterElect(_) => {
                return Err(BrokerError::new(
                    Status::NoController,
                    "cluster commands are answered by the node's controller",
                ))
            }
        })
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

/// A name that breaks the naming rules: `InvalidName`, saying what is wrong.
impl From<InvalidName> for BrokerError {
    fn from(e: InvalidName) -> Self {
        BrokerError::new(Status::InvalidName, e.0)
    }
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

/// The cluster's replication loop drives the broker's role through this.
impl crate::cluster::BrokerRole for Broker {
    fn in_sync_now(&self) -> Vec<u64> {
        self.replicas.in_sync_now()
    }

    fn committed_in_sync(&self, nodes: &[u64]) {
        self.replicas.committed_in_sync(nodes)
    }

    fn reporting(&self, nodes: &[u64]) {
        self.replicas.reporting(nodes)
    }

    /// The transactions' unresolved set is rebuilt from the log (a slave's memory never saw
    /// the half messages it replicated), and the scheduler checks every message due before
    /// now against the log before delivering it (the old master may have delivered it).
    fn became_master(&self, log_end: u64) -> std::result::Result<(), String> {
        self.replicas.became_master(log_end);
        self.timer.trust_from(self.clock.now_ms());
        self.tx
            .reload()
            .map_err(|e| format!("rebuilding the transactions from the log: {e}"))
    }

    fn apply_master_state(
        &self,
        json: &[u8],
        modules: &std::collections::HashMap<String, bytes::Bytes>,
    ) -> std::result::Result<Vec<String>, String> {
        self.apply_replica_state(json, modules)
            .map_err(|e| format!("{e:#}"))
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
