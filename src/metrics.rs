//! The broker's metrics, in the Prometheus text format (docs/OPERATIONS.md lists each one).
//!
//! One recorder per broker (the `metrics` crate's recorder trait used directly, never the
//! process-wide one, so several brokers in one process keep their own figures), rendered by
//! `metrics-exporter-prometheus`. Counters and histograms are updated where things happen
//! (handles cached, so the hot path is an atomic add); gauges are read from the broker's
//! state when `/metrics` is scraped ([`Gauges`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use metrics::{Counter, Histogram, Key, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

const META: Metadata<'static> = Metadata::new("quiver", Level::INFO, None);

/// Latency buckets in seconds: 50 µs to 10 s.
const SECONDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];
/// Group-commit sizes: appends acknowledged by one fsync.
const GROUP: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// A topic's traffic counters.
#[derive(Clone)]
struct TopicCounters {
    msgs_in: Counter,
    bytes_in: Counter,
    msgs_out: Counter,
    bytes_out: Counter,
}

/// Counters, histograms and the registry of one broker.
pub struct BrokerMetrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    topics: RwLock<HashMap<String, TopicCounters>>,
    requests: RwLock<HashMap<(u16, u16), Counter>>,
    append_seconds: Histogram,
    fsync_seconds: Histogram,
    group_commit: Histogram,
    connections: AtomicI64,
    parked_pulls: AtomicI64,
    /// Messages in, bytes in, messages out, bytes out over every topic (the console's rates).
    totals: [AtomicU64; 4],
}

/// Messages and bytes stored and delivered since the broker started, over every topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Messages stored.
    pub messages_in: u64,
    /// Bytes of stored messages.
    pub bytes_in: u64,
    /// Messages delivered to consumers.
    pub messages_out: u64,
    /// Bytes of delivered messages.
    pub bytes_out: u64,
}

impl std::fmt::Debug for BrokerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerMetrics").finish_non_exhaustive()
    }
}

fn key(name: &'static str, labels: Vec<Label>) -> Key {
    Key::from_parts(name, labels)
}

fn label(k: &'static str, v: impl Into<SharedString>) -> Label {
    Label::new(k, v.into())
}

impl Default for BrokerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl BrokerMetrics {
    /// A fresh registry with every metric described.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                SECONDS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "quiver_store_group_commit_appends".into(),
                    ),
                    GROUP,
                )
            })
            .expect("non-empty buckets")
            .build_recorder();
        let handle = recorder.handle();
        for (name, unit, help) in DESCRIPTIONS {
            match name {
                n if n.ends_with("_total") => {
                    recorder.describe_counter((*n).into(), *unit, (*help).into())
                }
                n if HISTOGRAMS.contains(n) => {
                    recorder.describe_histogram((*n).into(), *unit, (*help).into())
                }
                n => recorder.describe_gauge((*n).into(), *unit, (*help).into()),
            }
        }
        let append_seconds =
            recorder.register_histogram(&key("quiver_store_append_seconds", vec![]), &META);
        let fsync_seconds =
            recorder.register_histogram(&key("quiver_store_fsync_seconds", vec![]), &META);
        let group_commit =
            recorder.register_histogram(&key("quiver_store_group_commit_appends", vec![]), &META);
        Self {
            recorder,
            handle,
            topics: RwLock::new(HashMap::new()),
            requests: RwLock::new(HashMap::new()),
            append_seconds,
            fsync_seconds,
            group_commit,
            connections: AtomicI64::new(0),
            parked_pulls: AtomicI64::new(0),
            totals: Default::default(),
        }
    }

    fn topic(&self, topic: &str) -> TopicCounters {
        if let Some(c) = self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
        {
            return c.clone();
        }
        let mut map = self.topics.write().unwrap_or_else(|e| e.into_inner());
        map.entry(topic.to_string())
            .or_insert_with(|| {
                let t = || vec![label("topic", topic.to_string())];
                let r = &self.recorder;
                TopicCounters {
                    msgs_in: r.register_counter(&key("quiver_messages_in_total", t()), &META),
                    bytes_in: r.register_counter(&key("quiver_bytes_in_total", t()), &META),
                    msgs_out: r.register_counter(&key("quiver_messages_out_total", t()), &META),
                    bytes_out: r.register_counter(&key("quiver_bytes_out_total", t()), &META),
                }
            })
            .clone()
    }

    /// Messages stored on `topic` (sends, scheduled deliveries and retries included).
    pub fn stored(&self, topic: &str, messages: u64, bytes: u64) {
        let c = self.topic(topic);
        c.msgs_in.increment(messages);
        c.bytes_in.increment(bytes);
        self.totals[0].fetch_add(messages, Ordering::Relaxed);
        self.totals[1].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Messages sent to consumers from `topic`.
    pub fn delivered(&self, topic: &str, messages: u64, bytes: u64) {
        let c = self.topic(topic);
        c.msgs_out.increment(messages);
        c.bytes_out.increment(bytes);
        self.totals[2].fetch_add(messages, Ordering::Relaxed);
        self.totals[3].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Messages and bytes in and out since the start, over every topic.
    pub fn totals(&self) -> Totals {
        let t = |i: usize| self.totals[i].load(Ordering::Relaxed);
        Totals {
            messages_in: t(0),
            bytes_in: t(1),
            messages_out: t(2),
            bytes_out: t(3),
        }
    }

    /// Open client connections now.
    pub fn open_connections(&self) -> i64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Pulls parked waiting for messages now.
    pub fn parked_pulls(&self) -> i64 {
        self.parked_pulls.load(Ordering::Relaxed)
    }

    /// One request answered: its command (`None`: a frame that did not decode) and status.
    pub fn request(
        &self,
        command: Option<quiver_protocol::Command>,
        status: quiver_protocol::Status,
    ) {
        let k = (command.map_or(0, |c| c as u16), status as u16);
        let found = self
            .requests
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&k)
            .cloned();
        let c = match found {
            Some(c) => c,
            None => self
                .requests
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(k)
                .or_insert_with(|| {
                    let command = command.map_or("Invalid".to_string(), |c| format!("{c:?}"));
                    self.recorder.register_counter(
                        &key(
                            "quiver_requests_total",
                            vec![
                                label("command", command),
                                label("status", format!("{status:?}")),
                            ],
                        ),
                        &META,
                    )
                })
                .clone(),
        };
        c.increment(1);
    }

    /// An append (one send or batch) took this long from arrival at the store to its
    /// durability (sync flush) or to being in the log (async).
    pub fn append(&self, took: Duration) {
        self.append_seconds.record(took.as_secs_f64());
    }

    /// One fsync of the commit log: its duration and how many appends it acknowledged.
    pub fn fsync(&self, took: Duration, appends: usize) {
        self.fsync_seconds.record(took.as_secs_f64());
        if appends > 0 {
            self.group_commit.record(appends as f64);
        }
    }

    /// A client connection opened (`+1`) or closed (`-1`).
    pub fn connections(&self, delta: i64) {
        self.connections.fetch_add(delta, Ordering::Relaxed);
    }

    /// A pull parked waiting for messages (`+1`) or done waiting (`-1`).
    pub fn parked(&self, delta: i64) {
        self.parked_pulls.fetch_add(delta, Ordering::Relaxed);
    }

    /// The text for `/metrics`: the gauges set from `g` first.
    pub fn render(&self, g: &Gauges) -> String {
        let r = &self.recorder;
        let set = |name: &'static str, labels: Vec<Label>, v: f64| {
            r.register_gauge(&key(name, labels), &META).set(v);
        };
        set(
            "quiver_connections",
            vec![],
            self.connections.load(Ordering::Relaxed) as f64,
        );
        set(
            "quiver_long_polls_parked",
            vec![],
            self.parked_pulls.load(Ordering::Relaxed) as f64,
        );
        for l in &g.lag {
            set(
                "quiver_consumer_lag_messages",
                vec![
                    label("group", l.group.clone()),
                    label("topic", l.topic.clone()),
                    label("queue", l.queue.to_string()),
                ],
                l.lag as f64,
            );
        }
        for (group, n) in &g.dlq {
            set(
                "quiver_dlq_messages",
                vec![label("group", group.clone())],
                *n as f64,
            );
        }
        for p in &g.plugins {
            let l = || vec![label("plugin", p.name.clone())];
            set("quiver_plugin_batches", l(), p.batches as f64);
            set("quiver_plugin_failures", l(), p.failures as f64);
            set("quiver_plugin_messages_in", l(), p.messages_in as f64);
            set("quiver_plugin_messages_out", l(), p.messages_out as f64);
            set("quiver_plugin_healthy", l(), f64::from(u8::from(p.healthy)));
            set("quiver_plugin_busy_seconds", l(), p.run_seconds);
        }
        set(
            "quiver_scheduled_pending",
            vec![],
            g.scheduled_pending as f64,
        );
        set(
            "quiver_transactions_unresolved",
            vec![],
            g.unresolved_transactions as f64,
        );
        if let Some(u) = g.disk_used_ratio {
            set("quiver_disk_used_ratio", vec![], u);
        }
        set(
            "quiver_disk_writes_refused",
            vec![],
            f64::from(u8::from(g.disk_full)),
        );
        set("quiver_store_log_bytes", vec![], g.log_bytes as f64);
        for s in &g.slaves {
            let l = || vec![label("slave", s.node.to_string())];
            set("quiver_replication_lag_bytes", l(), s.lag_bytes as f64);
            set(
                "quiver_replication_lag_messages",
                l(),
                s.lag_messages as f64,
            );
            set(
                "quiver_replication_in_sync",
                l(),
                f64::from(u8::from(s.in_sync)),
            );
        }
        if let Some(c) = &g.controller {
            set("quiver_controller_term", vec![], c.term as f64);
            set("quiver_controller_leader", vec![], c.leader as f64);
            set(
                "quiver_controller_is_leader",
                vec![],
                f64::from(u8::from(c.is_leader)),
            );
        }
        self.handle.render()
    }
}

/// A group's lag on one queue.
#[derive(Debug, Clone)]
pub struct QueueLag {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue: u32,
    /// Messages between the committed offset and the queue's end.
    pub lag: u64,
}

/// A plugin's counters.
#[derive(Debug, Clone)]
pub struct PluginGauge {
    /// Plugin name.
    pub name: String,
    /// Batches run.
    pub batches: u64,
    /// Failed batches.
    pub failures: u64,
    /// Messages given to it.
    pub messages_in: u64,
    /// Messages it kept.
    pub messages_out: u64,
    /// Not marked unhealthy.
    pub healthy: bool,
    /// Time spent running batches, seconds.
    pub run_seconds: f64,
}

/// A slave as its master sees it.
#[derive(Debug, Clone)]
pub struct SlaveGauge {
    /// Node id.
    pub node: u64,
    /// Bytes of the master's log it lacks.
    pub lag_bytes: u64,
    /// Messages it lacks (capped by the master's count).
    pub lag_messages: u64,
    /// Counted in sync.
    pub in_sync: bool,
}

/// The controller as this node sees it.
#[derive(Debug, Clone)]
pub struct ControllerGauge {
    /// Raft term.
    pub term: u64,
    /// Leader's node id (0: none known).
    pub leader: u64,
    /// This node is the leader.
    pub is_leader: bool,
}

/// What the gauges show, read from the broker at a scrape.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Consumer lag per group, topic and queue.
    pub lag: Vec<QueueLag>,
    /// Messages in each group's dead-letter topic.
    pub dlq: Vec<(String, u64)>,
    /// Plugins.
    pub plugins: Vec<PluginGauge>,
    /// Scheduled messages waiting.
    pub scheduled_pending: u64,
    /// Half messages not yet committed or rolled back.
    pub unresolved_transactions: u64,
    /// Used fraction of the store's disk, when known.
    pub disk_used_ratio: Option<f64>,
    /// Writes refused: the disk is above its high watermark.
    pub disk_full: bool,
    /// Bytes in the commit log (from its first retained offset to its end).
    pub log_bytes: u64,
    /// This broker's slaves, when it is a master.
    pub slaves: Vec<SlaveGauge>,
    /// The controller, on a cluster node.
    pub controller: Option<ControllerGauge>,
}

/// The histograms among [`DESCRIPTIONS`] (the names ending in `_total` are counters, the
/// rest gauges).
const HISTOGRAMS: &[&str] = &[
    "quiver_store_append_seconds",
    "quiver_store_fsync_seconds",
    "quiver_store_group_commit_appends",
];

/// Every metric: name, unit, help (the HELP line; docs/OPERATIONS.md repeats them).
pub const DESCRIPTIONS: &[(&str, Option<Unit>, &str)] = &[
    ("quiver_messages_in_total", Some(Unit::Count), "Messages stored, by topic"),
    ("quiver_bytes_in_total", Some(Unit::Bytes), "Bytes of records stored, by topic"),
    ("quiver_messages_out_total", Some(Unit::Count), "Messages sent to consumers, by topic"),
    ("quiver_bytes_out_total", Some(Unit::Bytes), "Bytes of records sent to consumers, by topic"),
    ("quiver_requests_total", Some(Unit::Count), "Requests answered, by command and status"),
    ("quiver_store_append_seconds", Some(Unit::Seconds), "Time from a send reaching the store to its acknowledgement point (durable in sync flush mode)"),
    ("quiver_store_fsync_seconds", Some(Unit::Seconds), "Duration of each commit-log fsync"),
    ("quiver_store_group_commit_appends", Some(Unit::Count), "Appends acknowledged by one fsync (sync flush mode)"),
    ("quiver_connections", Some(Unit::Count), "Open client connections"),
    ("quiver_long_polls_parked", Some(Unit::Count), "Pulls parked waiting for messages"),
    ("quiver_consumer_lag_messages", Some(Unit::Count), "Messages between a group's committed offset and the queue's end"),
    ("quiver_dlq_messages", Some(Unit::Count), "Messages in a group's dead-letter topic"),
    ("quiver_plugin_batches", Some(Unit::Count), "Batches a plugin ran since it was loaded"),
    ("quiver_plugin_failures", Some(Unit::Count), "Batches a plugin failed since it was loaded"),
    ("quiver_plugin_messages_in", Some(Unit::Count), "Messages given to a plugin since it was loaded"),
    ("quiver_plugin_messages_out", Some(Unit::Count), "Messages a plugin kept since it was loaded"),
    ("quiver_plugin_healthy", None, "1 while a plugin is healthy, 0 once marked unhealthy"),
    ("quiver_plugin_busy_seconds", Some(Unit::Seconds), "Time a plugin spent running batches since it was loaded"),
    ("quiver_scheduled_pending", Some(Unit::Count), "Scheduled messages (and cancels) waiting in the timer wheel"),
    ("quiver_transactions_unresolved", Some(Unit::Count), "Half messages not yet committed or rolled back"),
    ("quiver_disk_used_ratio", None, "Used fraction of the filesystem holding the store"),
    ("quiver_disk_writes_refused", None, "1 while writes are refused because the disk is above its high watermark"),
    ("quiver_store_log_bytes", Some(Unit::Bytes), "Bytes in the commit log, from its first retained offset to its end"),
    ("quiver_replication_lag_bytes", Some(Unit::Bytes), "Bytes of this master's log a slave does not hold"),
    ("quiver_replication_lag_messages", Some(Unit::Count), "Messages of this master's log a slave does not hold"),
    ("quiver_replication_in_sync", None, "1 while this master counts the slave in sync"),
    ("quiver_controller_term", Some(Unit::Count), "The controller's Raft term as this node sees it"),
    ("quiver_controller_leader", None, "The controller leader's node id (0: none known)"),
    ("quiver_controller_is_leader", None, "1 on the controller's leader"),
];
