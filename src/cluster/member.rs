//! This node's part in the cluster, controller or not: it keeps the node's broker registered
//! in its broker set (registration at start, a lease renewed every
//! `cluster.broker_heartbeat_ms`), reads the committed metadata (from the local controller,
//! or from a voter on a node without one), answers route queries, changes topic routes
//! through the controller, and brings the broker's local topics in line with the routes of
//! its set (on every heartbeat, and at once when another node says a route changed).

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use quiver_protocol::cmd::{RaftKind, RouteSet};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::network::{self, PeerTransport};
use super::state::{ClusterState, Command, Reply};
use super::{ClusterConfig, ClusterError, Controller};
use crate::clock::Clock;

/// A future answered by [`LocalTopics`].
pub type TopicFuture<T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'static>>;

/// The broker's own topic table, as the cluster agent changes it (implemented by the server
/// over the broker).
pub trait LocalTopics: Send + Sync + 'static {
    /// Creates `topic` with `queues` queues, or sets its queue count to `queues`.
    fn ensure(&self, topic: String, queues: u32) -> TopicFuture<()>;
    /// Deletes `topic` with its queues and offsets (nothing when it does not exist).
    fn delete(&self, topic: String) -> TopicFuture<()>;
    /// The local topics and their queue counts.
    fn list(&self) -> TopicFuture<Vec<(String, u32)>>;
}

/// The body of a [`RaftKind::Sync`] message.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SyncBody {
    /// A topic whose route was deleted: the receiving broker deletes it locally.
    deleted: Option<String>,
    /// A topic whose route was created or changed: the receiving broker waits (briefly)
    /// until the metadata it reads has it.
    #[serde(default)]
    changed: Option<String>,
}

/// How long a node waits for a committed route change to reach the metadata it reads.
const APPLY_WAIT: Duration = Duration::from_secs(3);

/// How long a node without a controller uses metadata it read from a voter before it reads
/// again for a route query.
const READ_CACHE: Duration = Duration::from_millis(500);

/// Where the node's reads and writes of the cluster metadata go.
pub struct Member {
    cfg: ClusterConfig,
    controller: Option<Arc<Controller>>,
    transport: Arc<dyn PeerTransport>,
    clock: Clock,
    topics: OnceLock<Arc<dyn LocalTopics>>,
    /// Metadata read from a voter (nodes without a controller), and when.
    cached: Mutex<Option<(Instant, Arc<ClusterState>)>>,
    /// Queue count of topics created through the cluster without one.
    default_queues: u32,
    /// The address this node's broker registered with.
    own: OnceLock<SocketAddr>,
}

impl Member {
    /// A member writing through `controller` when this node runs one, else through the
    /// configured voters.
    pub fn new(
        cfg: ClusterConfig,
        controller: Option<Arc<Controller>>,
        transport: Arc<dyn PeerTransport>,
        clock: Clock,
        default_queues: u32,
    ) -> Self {
        Self {
            cfg,
            controller,
            transport,
            clock,
            topics: OnceLock::new(),
            cached: Mutex::new(None),
            default_queues,
            own: OnceLock::new(),
        }
    }

    /// Connects the agent to the broker's topic table (once, before serving).
    pub fn set_local_topics(&self, topics: Arc<dyn LocalTopics>) {
        let _ = self.topics.set(topics);
    }

    /// The node's controller, when it runs one.
    pub fn controller(&self) -> Option<&Arc<Controller>> {
        self.controller.as_ref()
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> &str {
        self.cfg.cluster_id.as_deref().unwrap_or_default()
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.cfg.node_id
    }

    /// This node's broker set, if it serves in one.
    pub fn broker_set(&self) -> Option<&str> {
        self.cfg.broker_set.as_deref()
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.rpc_timeout_ms)
    }

    /// Sends `body` as a Raft message of `kind` to the voters in turn until one answers
    /// `Ok`; the answer's payload.
    async fn to_voters<T: serde::de::DeserializeOwned>(
        &self,
        kind: RaftKind,
        body: Vec<u8>,
    ) -> Result<T, ClusterError> {
        let mut last = ClusterError::NoLeader;
        for v in &self.cfg.voters {
            match network::send(
                &self.transport,
                self.cluster_id(),
                v.addr,
                kind,
                body.clone(),
                self.timeout(),
            )
            .await
            {
                Ok(reply) => {
                    let r: Result<T, String> = serde_json::from_slice(&reply)
                        .map_err(|e| ClusterError::Forward(e.to_string()))?;
                    match r {
                        Ok(r) => return Ok(r),
                        Err(e) => last = ClusterError::Forward(e),
                    }
                }
                Err(e) => last = ClusterError::Forward(e.to_string()),
            }
        }
        Err(last)
    }

    /// Applies `c` through the controller leader.
    pub async fn write(&self, c: Command) -> Result<Reply, ClusterError> {
        if let Some(ctl) = &self.controller {
            return ctl.propose(c).await;
        }
        let body = serde_json::to_vec(&c).map_err(|e| ClusterError::Raft(e.to_string()))?;
        self.to_voters(RaftKind::Write, body).await
    }

    /// The committed metadata: this node's controller's, or a voter's (`fresh` skips the
    /// short cache a node without a controller keeps).
    pub async fn state(&self, fresh: bool) -> Result<Arc<ClusterState>, ClusterError> {
        if let Some(ctl) = &self.controller {
            return Ok(Arc::new(ctl.state()));
        }
        if !fresh {
            let cached = self
                .cached
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some((at, s)) = cached {
                if at.elapsed() < READ_CACHE {
                    return Ok(s);
                }
            }
        }
        let s: ClusterState = self.to_voters(RaftKind::Read, Vec::new()).await?;
        let s = Arc::new(s);
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), s.clone()));
        Ok(s)
    }

    /// ClusterInfo as a node without a controller answers it: its cluster and node id, and
    /// the brokers of the metadata it reads from a voter (leader, term and controller
    /// members are the voters' to tell: 0 and empty).
    pub async fn info_without_controller(
        &self,
    ) -> Result<quiver_protocol::cmd::ClusterInfoReply, ClusterError> {
        let state = self.state(false).await?;
        let now = self.clock.now_ms();
        let lease = self.cfg.broker_lease_ms as i64;
        Ok(quiver_protocol::cmd::ClusterInfoReply {
            cluster_id: self.cluster_id().to_string(),
            node_id: self.cfg.node_id,
            leader: 0,
            term: 0,
            applied: 0,
            nodes: Vec::new(),
            brokers: state
                .brokers
                .iter()
                .map(|(id, b)| quiver_protocol::cmd::ClusterBroker {
                    id: *id,
                    set: b.set.clone(),
                    addr: b.addr.to_string(),
                    alive: state.alive(*id, now, lease),
                    last_seen_ms: b.last_seen_ms,
                })
                .collect(),
            sets: super::sets_of(&state),
            replicas: Vec::new(),
        })
    }

    /// The committed metadata once `topic`'s route is present (or absent): a write applied
    /// through the leader reaches this node's controller, or the voter it reads, a moment
    /// later. Gives up after [`APPLY_WAIT`] and returns what it has.
    async fn state_with(
        &self,
        topic: &str,
        present: bool,
    ) -> Result<Arc<ClusterState>, ClusterError> {
        let deadline = Instant::now() + APPLY_WAIT;
        loop {
            let s = self.state(true).await?;
            if s.routes.contains_key(topic) == present || Instant::now() >= deadline {
                return Ok(s);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Answers a [`RaftKind::Read`] or [`RaftKind::Sync`] message from a peer; other kinds
    /// go to the controller.
    pub async fn handle_peer(
        &self,
        req: quiver_protocol::cmd::Raft,
    ) -> Result<bytes::Bytes, ClusterError> {
        if req.cluster_id != self.cluster_id() {
            return Err(ClusterError::OtherCluster {
                ours: self.cluster_id().to_string(),
                theirs: req.cluster_id,
            });
        }
        let out = match req.kind {
            RaftKind::Sync => {
                let b: SyncBody = serde_json::from_slice(&req.body)
                    .map_err(|e| ClusterError::Malformed(e.to_string()))?;
                let r = self
                    .sync(b.deleted, b.changed)
                    .await
                    .map_err(|e| e.to_string());
                serde_json::to_vec(&r)
            }
            RaftKind::Read => {
                let Some(ctl) = &self.controller else {
                    return Err(ClusterError::NotController);
                };
                serde_json::to_vec(&Ok::<_, String>(ctl.state()))
            }
            _ => {
                let Some(ctl) = &self.controller else {
                    return Err(ClusterError::NotController);
                };
                return ctl.handle_raft(req).await;
            }
        };
        out.map(bytes::Bytes::from)
            .map_err(|e| ClusterError::Raft(e.to_string()))
    }

    /// A topic's route as clients see it: per broker set, its queue count and its broker.
    pub fn route_of(&self, state: &ClusterState, topic: &str) -> Option<Vec<RouteSet>> {
        let now = self.clock.now_ms();
        let lease = self.cfg.broker_lease_ms as i64;
        let sets = state.routes.get(topic)?;
        Some(
            sets.iter()
                .map(|(set, queues)| {
                    let broker = state.broker_of(set);
                    RouteSet {
                        set: set.clone(),
                        queues: *queues,
                        node_id: broker.map_or(0, |(id, _)| id),
                        addr: broker.map_or(String::new(), |(_, b)| b.addr.to_string()),
                        alive: broker.is_some_and(|(id, _)| state.alive(id, now, lease)),
                    }
                })
                .collect(),
        )
    }

    /// The route of `topic`; with `create`, a topic without one is created on every set with
    /// a live broker.
    pub async fn route(&self, topic: &str, create: bool) -> Result<Vec<RouteSet>, RouteError> {
        let state = self.state(false).await?;
        if let Some(r) = self.route_of(&state, topic) {
            return Ok(r);
        }
        // A node reading through a voter may be a moment behind: look again before saying no.
        let state = self.state(true).await?;
        if let Some(r) = self.route_of(&state, topic) {
            return Ok(r);
        }
        if !create {
            return Err(RouteError::NoRoute(topic.to_string()));
        }
        match self
            .create_topic(topic, self.default_queues, Vec::new())
            .await
        {
            // Another client created it at the same moment: its route stands.
            Err(RouteError::Exists(_)) => {
                let state = self.state_with(topic, true).await?;
                self.route_of(&state, topic)
                    .ok_or_else(|| RouteError::NoRoute(topic.to_string()))
            }
            r => r,
        }
    }

    /// Creates `topic` with `queues` queues on each of `sets` (every set with a live broker
    /// when empty): the route is committed, then each set's broker is told to create its
    /// queues (one that does not answer creates them on its next heartbeat).
    pub async fn create_topic(
        &self,
        topic: &str,
        queues: u32,
        sets: Vec<String>,
    ) -> Result<Vec<RouteSet>, RouteError> {
        let state = self.state(true).await?;
        if state.routes.contains_key(topic) {
            return Err(RouteError::Exists(topic.to_string()));
        }
        let known: BTreeSet<&str> = state.brokers.values().map(|b| b.set.as_str()).collect();
        let chosen: Vec<String> = if sets.is_empty() {
            let now = self.clock.now_ms();
            let lease = self.cfg.broker_lease_ms as i64;
            known
                .iter()
                .filter(|s| {
                    state
                        .broker_of(s)
                        .is_some_and(|(id, _)| state.alive(id, now, lease))
                })
                .map(|s| s.to_string())
                .collect()
        } else {
            let mut seen = BTreeSet::new();
            for s in &sets {
                if !known.contains(s.as_str()) {
                    return Err(RouteError::Invalid(format!(
                        "no broker set {s:?} in this cluster (known: {})",
                        known.iter().copied().collect::<Vec<_>>().join(", ")
                    )));
                }
                if !seen.insert(s.as_str()) {
                    return Err(RouteError::Invalid(format!("broker set {s:?} named twice")));
                }
            }
            sets
        };
        if chosen.is_empty() {
            return Err(RouteError::Unavailable(
                "no broker set has a live broker to hold the topic".into(),
            ));
        }
        let route: Vec<(String, u32)> = chosen.into_iter().map(|s| (s, queues)).collect();
        match self
            .write(Command::SetTopicRoute {
                topic: topic.to_string(),
                sets: route,
                only_new: true,
            })
            .await?
        {
            Reply::Ok => {}
            // Another node created it first.
            Reply::Refused(_)
                if self
                    .state_with(topic, true)
                    .await?
                    .routes
                    .contains_key(topic) =>
            {
                return Err(RouteError::Exists(topic.to_string()))
            }
            Reply::Refused(why) => return Err(RouteError::Invalid(why)),
        }
        tracing::info!(%topic, queues, "topic route committed");
        self.tell_sets(topic).await
    }

    /// Gives every set of `topic`'s route `queues` queues.
    pub async fn update_topic(&self, topic: &str, queues: u32) -> Result<(), RouteError> {
        let state = self.state(true).await?;
        let Some(sets) = state.routes.get(topic) else {
            return Err(RouteError::NoRoute(topic.to_string()));
        };
        let route = sets.iter().map(|(s, _)| (s.clone(), queues)).collect();
        if let Reply::Refused(why) = self
            .write(Command::SetTopicRoute {
                topic: topic.to_string(),
                sets: route,
                only_new: false,
            })
            .await?
        {
            return Err(RouteError::Invalid(why));
        }
        self.tell_sets(topic).await.map(|_| ())
    }

    /// Removes `topic`'s route and deletes it on the brokers of its sets.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), RouteError> {
        let state = self.state(true).await?;
        let Some(sets) = state.routes.get(topic).cloned() else {
            return Err(RouteError::NoRoute(topic.to_string()));
        };
        if let Reply::Refused(why) = self
            .write(Command::DeleteTopic {
                topic: topic.to_string(),
            })
            .await?
        {
            return Err(RouteError::Invalid(why));
        }
        let addrs: Vec<SocketAddr> = sets
            .iter()
            .filter_map(|(s, _)| state.broker_of(s).map(|(_, b)| b.addr))
            .collect();
        self.tell(&addrs, Some(topic.to_string()), None).await;
        Ok(())
    }

    /// Tells the brokers of `topic`'s sets to apply its (new) route now; the route.
    async fn tell_sets(&self, topic: &str) -> Result<Vec<RouteSet>, RouteError> {
        let state = self.state_with(topic, true).await?;
        let route = self
            .route_of(&state, topic)
            .ok_or_else(|| RouteError::NoRoute(topic.to_string()))?;
        let addrs: Vec<SocketAddr> = route.iter().filter_map(|s| s.addr.parse().ok()).collect();
        self.tell(&addrs, None, Some(topic.to_string())).await;
        Ok(route)
    }

    /// Sends a [`RaftKind::Sync`] to each broker (this node's own is synced directly).
    async fn tell(&self, addrs: &[SocketAddr], deleted: Option<String>, changed: Option<String>) {
        let body = serde_json::to_vec(&SyncBody {
            deleted: deleted.clone(),
            changed: changed.clone(),
        })
        .unwrap_or_default();
        let mine = self.own_addr();
        let calls = addrs.iter().map(|addr| {
            let (body, deleted, changed) = (body.clone(), deleted.clone(), changed.clone());
            async move {
                let r = if Some(*addr) == mine {
                    self.sync(deleted, changed).await.map_err(|e| e.to_string())
                } else {
                    match network::send(
                        &self.transport,
                        self.cluster_id(),
                        *addr,
                        RaftKind::Sync,
                        body,
                        self.timeout(),
                    )
                    .await
                    {
                        Ok(reply) => serde_json::from_slice::<Result<(), String>>(&reply)
                            .unwrap_or_else(|e| Err(e.to_string())),
                        Err(e) => Err(e.to_string()),
                    }
                };
                if let Err(e) = r {
                    tracing::warn!(broker = %addr, error = %e,
                        "a broker did not apply a route change now; it will on its next heartbeat");
                }
            }
        });
        futures::future::join_all(calls).await;
    }

    /// This node's broker address, once it runs.
    fn own_addr(&self) -> Option<SocketAddr> {
        self.own.get().copied()
    }

    /// Brings the local topics in line with the routes of this node's set: creates the
    /// missing ones, sets queue counts to the route's, and deletes `deleted` when its route
    /// is gone (`changed`: wait briefly until the metadata read has that topic's route).
    pub async fn sync(
        &self,
        deleted: Option<String>,
        changed: Option<String>,
    ) -> Result<(), ClusterError> {
        let (Some(set), Some(topics)) = (self.cfg.broker_set.as_deref(), self.topics.get()) else {
            return Ok(());
        };
        let state = match (&deleted, &changed) {
            (Some(t), _) => self.state_with(t, false).await?,
            (None, Some(t)) => self.state_with(t, true).await?,
            (None, None) => self.state(true).await?,
        };
        if let Some(t) = deleted {
            if !state.routes.contains_key(&t) {
                topics
                    .delete(t.clone())
                    .await
                    .map_err(ClusterError::Storage)?;
                tracing::info!(topic = %t, "topic deleted (its route was removed)");
            }
        }
        let local: std::collections::HashMap<String, u32> = topics
            .list()
            .await
            .map_err(ClusterError::Storage)?
            .into_iter()
            .collect();
        // Deletions this broker missed (it was down, or told before its metadata had them).
        for topic in local.keys() {
            if state.deleted.contains(topic) && !state.routes.contains_key(topic) {
                topics
                    .delete(topic.clone())
                    .await
                    .map_err(ClusterError::Storage)?;
                tracing::info!(%topic, "topic deleted (its route was removed while this broker was away)");
            }
        }
        for (topic, sets) in &state.routes {
            let Some((_, want)) = sets.iter().find(|(s, _)| s == set) else {
                continue;
            };
            if local.get(topic) == Some(want) {
                continue;
            }
            topics
                .ensure(topic.clone(), *want)
                .await
                .map_err(ClusterError::Storage)?;
            tracing::info!(%topic, queues = want, "topic created from its cluster route");
        }
        Ok(())
    }

    /// Registers the broker at `addr` in its set, then renews its lease and applies its
    /// set's routes until `stop`. Failures are logged and retried; they never stop the
    /// broker.
    pub async fn run(self: Arc<Self>, addr: SocketAddr, stop: CancellationToken) {
        let _ = self.own.set(addr);
        let Some(set) = self.cfg.broker_set.clone() else {
            return;
        };
        let node_id = self.cfg.node_id;
        let every = Duration::from_millis(self.cfg.broker_heartbeat_ms);
        let mut registered = false;
        loop {
            let c = if registered {
                Command::Heartbeat {
                    node_id,
                    at_ms: self.clock.now_ms(),
                }
            } else {
                Command::RegisterBroker {
                    set: set.clone(),
                    node_id,
                    addr,
                    at_ms: self.clock.now_ms(),
                }
            };
            let wait = match self.write(c).await {
                Ok(Reply::Ok) => {
                    if !registered {
                        tracing::info!(%set, node = node_id, %addr, "broker registered with the controller");
                    }
                    registered = true;
                    if let Err(e) = self.sync(None, None).await {
                        tracing::warn!(error = %e, "applying the cluster's topic routes failed; retrying");
                    }
                    every
                }
                Ok(Reply::Refused(reason)) => {
                    tracing::warn!(%set, node = node_id, %reason, "the controller refused this broker");
                    registered = false;
                    every
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot reach the controller; retrying");
                    Duration::from_millis(300).min(every)
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// What the replication loop needs from its broker, as master or as slave.
pub trait BrokerRole: Send + Sync {
    /// The slaves the master counts in sync now (node ids, any order).
    fn in_sync_now(&self) -> Vec<u64>;
    /// The set's in-sync slaves as the controller has committed them (the failover
    /// candidates): a sync send waits for every one of them.
    fn committed_in_sync(&self, nodes: &[u64]);
    /// These slaves are about to be reported in sync to the controller.
    fn reporting(&self, nodes: &[u64]);
    /// This broker became its set's master with its log ending at `log_end`: its state
    /// outside the log becomes a master's. Blocking (reads the log).
    fn became_master(&self, log_end: u64) -> Result<(), String>;
    /// A slave takes its master's state outside the log (ReplicaState's JSON and the plugin
    /// modules it carries); returns the module hashes it still lacks. Blocking.
    fn apply_master_state(
        &self,
        json: &[u8],
        modules: &std::collections::HashMap<String, bytes::Bytes>,
    ) -> Result<Vec<String>, String>;
}

/// See [`BrokerRole`].
pub type InSyncSlaves = Arc<dyn BrokerRole>;

/// Bytes a slave asks for per fetch.
const FETCH_BYTES: u32 = 4 << 20;
/// How long a fetch waits at the master for new records.
const FETCH_WAIT_MS: u32 = 500;

impl Member {
    /// Keeps this node's store in its role: a slave of its set fetches the master's commit
    /// log and appends it at the same offsets (its store refuses every other write); the
    /// master takes writes. Runs until `stop`; errors are logged and retried.
    pub async fn replicate(
        self: Arc<Self>,
        store: Arc<crate::store::Store>,
        in_sync: InSyncSlaves,
        stop: CancellationToken,
    ) {
        let Some(set) = self.cfg.broker_set.clone() else {
            return;
        };
        let me = self.cfg.node_id;
        let pause = |d: u64| {
            let stop = stop.clone();
            async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(d)) => {}
                }
            }
        };
        let mut following: Option<(u64, u64)> = None;
        while !stop.is_cancelled() {
            let state = match self.state(false).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "replication: no cluster metadata yet");
                    pause(300).await;
                    continue;
                }
            };
            let Some((master, addr, epoch)) = state.master_for(me) else {
                pause(200).await;
                continue;
            };
            if master == me {
                if store.is_replica() || following.is_some() {
                    // The epoch file first: its records from here on are this epoch's.
                    let s = store.clone();
                    let role = in_sync.clone();
                    let begun = tokio::task::spawn_blocking(move || {
                        s.begin_epoch(epoch).map_err(|e| e.to_string())?;
                        // Its state before its first write as master.
                        role.became_master(s.log_end())?;
                        s.set_replica(false);
                        Ok::<_, String>(())
                    })
                    .await;
                    match begun {
                        Ok(Ok(())) => {
                            tracing::info!(%set, epoch, from = store.log_end(),
                                "this broker is the master of its set");
                            following = None;
                        }
                        Ok(Err(e)) => {
                            tracing::error!(%set, epoch, error = %e,
                                "cannot take over as master (epoch file or broker state): not \
                                 taking writes; retrying");
                            pause(1000).await;
                            continue;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "epoch task failed");
                            pause(1000).await;
                            continue;
                        }
                    }
                }
                // Report the in-sync slaves when they changed (the failover candidates).
                let mut now: Vec<u64> = in_sync.in_sync_now();
                now.sort_unstable();
                let known: Vec<u64> = state
                    .sets
                    .get(&set)
                    .filter(|st| st.epoch == epoch)
                    .map(|st| st.in_sync.iter().copied().collect())
                    .unwrap_or_default();
                in_sync.committed_in_sync(&known);
                if now != known {
                    in_sync.reporting(&now);
                    let report = Command::SetInSync {
                        set: set.clone(),
                        epoch,
                        master: me,
                        in_sync: now.clone(),
                    };
                    match self.write(report).await {
                        Ok(Reply::Ok) => {
                            tracing::info!(%set, epoch, in_sync = ?now, "in-sync slaves reported")
                        }
                        Ok(Reply::Refused(why)) => {
                            tracing::warn!(%set, %why, "the controller refused the in-sync report")
                        }
                        Err(e) => tracing::debug!(error = %e, "in-sync report not delivered"),
                    }
                }
                pause(200).await;
                continue;
            }
            if following != Some((master, epoch)) {
                let s = store.clone();
                let _ = tokio::task::spawn_blocking(move || s.set_replica(true)).await;
                tracing::info!(%set, master, %addr, epoch, from = store.log_end(),
                    "this broker is a slave: replicating the master's commit log");
                following = Some((master, epoch));
            }
            let from = store.log_end();
            let fetch = quiver_protocol::cmd::ReplicaFetch {
                cluster_id: self.cluster_id().to_string(),
                set: set.clone(),
                node_id: me,
                epoch,
                from,
                max_bytes: FETCH_BYTES,
                wait_ms: FETCH_WAIT_MS,
                last_epoch: store.last_epoch(),
            };
            let frame = quiver_protocol::cmd::encode_request(&fetch);
            let timeout = self.timeout() + Duration::from_millis(u64::from(FETCH_WAIT_MS));
            let body = match self
                .transport
                .clone()
                .request(
                    addr,
                    frame,
                    quiver_protocol::Command::ReplicaFetch as u16,
                    timeout,
                )
                .await
            {
                Ok(b) => b,
                // The master answered no: this log does not continue the master's (it holds
                // records the master does not: an old master's unacknowledged tail).
                Err(e @ super::PeerError::Refused { .. }) => {
                    tracing::warn!(master, epoch, from, error = %e,
                        "the master refuses this slave's fetch");
                    pause(5000).await;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(master, error = %e, "replication fetch failed; retrying");
                    pause(300).await;
                    continue;
                }
            };
            let chunk: quiver_protocol::cmd::ReplicaChunk =
                match quiver_protocol::cmd::decode_body(body) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(master, error = %e, "malformed replication chunk");
                        pause(1000).await;
                        continue;
                    }
                };
            // Its history first: a log that holds records the master never had (an old
            // master's unacknowledged tail) is cut back to where the histories part.
            if chunk.history_epoch != fetch.last_epoch || from > chunk.history_end {
                let s = store.clone();
                let (he, hend) = (chunk.history_epoch, chunk.history_end);
                match tokio::task::spawn_blocking(move || s.follow_history(he, hend)).await {
                    Ok(Ok(cut)) => tracing::warn!(%set, master, epoch, from,
                        to = store.log_end(), cut_bytes = ?cut, history_epoch = he,
                        "this log held records its master never had: cut back to where their \
                         histories part"),
                    Ok(Err(e)) => {
                        tracing::error!(%set, master, error = %e,
                            "cannot cut this log back to the master's history; retrying");
                        pause(5000).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cut task failed");
                        pause(1000).await;
                    }
                }
                continue;
            }
            let epochs: Vec<crate::store::EpochEntry> = chunk
                .epochs
                .iter()
                .map(|e| crate::store::EpochEntry {
                    epoch: e.epoch,
                    start: e.start,
                })
                .collect();
            let lc = crate::store::LogChunk {
                start: chunk.start,
                bytes: chunk.bytes,
                next: chunk.next,
            };
            let s = store.clone();
            let appended = tokio::task::spawn_blocking(move || {
                if !lc.is_empty() {
                    s.append_replica(&lc).and_then(|p| p.wait().map(|_| ()))?;
                }
                // The master's epoch entries that lie within this log now.
                s.adopt_epochs(&epochs)
            })
            .await;
            match appended {
                Ok(Ok(())) => {}
                Ok(Err(e @ crate::store::StoreError::Diverged(_))) => {
                    tracing::error!(master, error = %e,
                        "this slave's log does not continue its master's: replication stopped for this epoch");
                    pause(5000).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(master, error = %e, "appending replicated records failed; retrying");
                    pause(500).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "replication task failed");
                    pause(1000).await;
                }
            }
        }
    }
}

impl Member {
    /// Now by this member's clock, ms since the Unix epoch.
    pub fn clock_now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// How long a broker's registration lives without a heartbeat (`broker_lease_ms`).
    pub fn lease_ms(&self) -> i64 {
        self.cfg.broker_lease_ms as i64
    }

    /// Sends a request frame (`code`: its command) to this node's set's master over the
    /// node-to-node connection and returns the answer's body; an error when this node has
    /// no set, no known master, or is the master itself.
    pub async fn forward_to_master(
        &self,
        frame: bytes::Bytes,
        code: u16,
    ) -> Result<bytes::Bytes, String> {
        let state = self.state(false).await.map_err(|e| e.to_string())?;
        let me = self.cfg.node_id;
        match state.master_for(me) {
            Some((master, addr, _)) if master != me => self
                .transport
                .clone()
                .request(addr, frame, code, self.timeout())
                .await
                .map_err(|e| e.to_string()),
            Some(_) => Err("this node is its set's master".into()),
            None => Err("no master known for this node's set".into()),
        }
    }
}

/// How often a slave copies its master's state outside the log (consumer offsets).
const STATE_EVERY: Duration = Duration::from_secs(1);

impl Member {
    /// A slave copies its master's state outside the commit log (the committed consumer
    /// offsets) once a second, so consumers continue where they were after a failover
    /// (redelivering at most about a second of commits). Runs until `stop`.
    pub async fn mirror_state(self: Arc<Self>, role: InSyncSlaves, stop: CancellationToken) {
        let Some(set) = self.cfg.broker_set.clone() else {
            return;
        };
        let me = self.cfg.node_id;
        let mut warned = false;
        // Plugin modules to ask for (the previous round found them missing).
        let mut want: Vec<String> = Vec::new();
        while !stop.is_cancelled() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(STATE_EVERY) => {}
            }
            let Ok(state) = self.state(false).await else {
                continue;
            };
            let Some((master, addr, epoch)) = state.master_for(me) else {
                continue;
            };
            if master == me {
                continue;
            }
            let req = quiver_protocol::cmd::ReplicaState {
                cluster_id: self.cluster_id().to_string(),
                set: set.clone(),
                node_id: me,
                epoch,
                want: want
                    .iter()
                    .take(quiver_protocol::cmd::MAX_WANTED_MODULES as usize)
                    .cloned()
                    .collect(),
            };
            let frame = quiver_protocol::cmd::encode_request(&req);
            let got = self
                .transport
                .clone()
                .request(
                    addr,
                    frame,
                    quiver_protocol::Command::ReplicaState as u16,
                    self.timeout(),
                )
                .await;
            let applied = match got {
                Ok(body) => {
                    match quiver_protocol::cmd::decode_body::<quiver_protocol::cmd::ReplicaStateReply>(
                        body,
                    ) {
                        Ok(r) => {
                            let role = role.clone();
                            tokio::task::spawn_blocking(move || {
                                let modules = r.modules.into_iter().collect();
                                role.apply_master_state(&r.json, &modules)
                            })
                            .await
                            .unwrap_or_else(|e| Err(format!("state task failed: {e}")))
                        }
                        Err(e) => Err(format!("malformed state: {e}")),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            match applied {
                Ok(missing) => {
                    warned = false;
                    want = missing;
                }
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(master, error = %e, "cannot copy the master's consumer offsets and plugins; retrying");
                }
                Err(e) => {
                    tracing::debug!(master, error = %e, "cannot copy the master's consumer offsets and plugins")
                }
            }
        }
    }
}

/// Why a route query or change failed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The topic has no route.
    #[error("topic {0:?} does not exist in this cluster")]
    NoRoute(String),
    /// The topic already has a route.
    #[error("topic {0:?} already exists; use update to change its queue count")]
    Exists(String),
    /// The request names something the cluster does not have.
    #[error("{0}")]
    Invalid(String),
    /// Nothing can hold the topic right now.
    #[error("{0}")]
    Unavailable(String),
    /// The controller could not be reached or has no leader.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}
