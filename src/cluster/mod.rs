//! The cluster controller: a Raft group (openraft) of 1, 3 or 5 voters, each inside a
//! `quiver serve` process with `cluster.controller` on, holding the cluster metadata
//! ([`state::ClusterState`]: broker sets, leases, topic routes). Its log and snapshots live in
//! `<data_dir>/controller/` and survive restarts; Raft messages travel as `Raft` commands over
//! the brokers' QUIC listeners ([`PeerTransport`], implemented by `net`), between nodes that
//! authenticated each other with TLS certificates. docs/CLUSTER.md has the design.
//!
//! The room's door: [`ClusterConfig`], [`Controller`], [`PeerTransport`] and the state types.

mod config;
mod log_store;
mod member;
mod network;
mod sm;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::{BasicNode, Raft};
use quiver_protocol::cmd::{self, ClusterBroker, ClusterInfoReply, ControllerNode, RaftKind};

use crate::clock::Clock;

pub use config::{ClusterConfig, Replication, VoterConfig};
pub use member::{BrokerRole, InSyncSlaves, LocalTopics, Member, RouteError, TopicFuture};
pub use network::{PeerError, PeerTransport};

openraft::declare_raft_types!(
    /// The controller's Raft types: commands and replies of [`state`], node ids `u64`,
    /// nodes known by their address.
    pub TypeConfig:
        D = state::Command,
        R = state::Reply,
);

/// Why a controller request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The controller's files could not be read or written.
    #[error("controller storage: {0}")]
    Storage(String),
    /// openraft refused to start or to take the request.
    #[error("controller: {0}")]
    Raft(String),
    /// The message came from another cluster.
    #[error("this node belongs to cluster {ours}, the message to {theirs}")]
    OtherCluster {
        /// This node's cluster id.
        ours: String,
        /// The sender's.
        theirs: String,
    },
    /// No leader is known right now (an election is under way); retry shortly.
    #[error("the controller has no leader right now")]
    NoLeader,
    /// The leader did not take a forwarded write.
    #[error("forwarding to the controller leader: {0}")]
    Forward(String),
    /// A controller-only message reached a node that runs no controller.
    #[error("this node runs no controller")]
    NotController,
    /// A Raft message body that does not decode.
    #[error("malformed raft message: {0}")]
    Malformed(String),
}

/// A running controller node.
pub struct Controller {
    raft: Raft<TypeConfig>,
    sm: sm::StateMachine,
    cluster_id: String,
    node_id: u64,
    transport: Arc<dyn PeerTransport>,
    rpc_timeout: Duration,
    clock: Clock,
    lease_ms: i64,
    /// Stops the failover watch.
    stop: tokio_util::sync::CancellationToken,
}

/// How often the controller leader looks for sets whose master lost its lease.
const FAILOVER_CHECK: Duration = Duration::from_millis(250);

impl Controller {
    /// Opens the controller's storage in `<data_dir>/controller/`, starts Raft and, when the
    /// log is empty, bootstraps it with the configured voters (every voter does the same with
    /// the same list, which openraft accepts).
    pub async fn start(
        cfg: &ClusterConfig,
        data_dir: &Path,
        transport: Arc<dyn PeerTransport>,
        clock: Clock,
    ) -> Result<Arc<Self>, ClusterError> {
        let cluster_id = cfg
            .cluster_id
            .clone()
            .ok_or_else(|| ClusterError::Raft("no cluster.cluster_id".into()))?;
        let dir = data_dir.join("controller");
        let log =
            log_store::LogStore::open(&dir).map_err(|e| ClusterError::Storage(e.to_string()))?;
        let sm = sm::StateMachine::open(&dir).map_err(|e| ClusterError::Storage(e.to_string()))?;
        let raft_cfg = openraft::Config {
            cluster_name: cluster_id.clone(),
            heartbeat_interval: cfg.heartbeat_interval_ms,
            election_timeout_min: cfg.election_timeout_ms,
            election_timeout_max: cfg.election_timeout_ms * 2,
            install_snapshot_timeout: cfg.rpc_timeout_ms.max(200),
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let network = network::Network {
            cluster_id: cluster_id.clone(),
            transport: transport.clone(),
        };
        let raft = Raft::new(
            cfg.node_id,
            Arc::new(raft_cfg),
            network,
            log.clone(),
            sm.clone(),
        )
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let pristine = {
            let mut log = log;
            use openraft::storage::RaftLogStorage;
            let state = log
                .get_log_state()
                .await
                .map_err(|e| ClusterError::Storage(e.to_string()))?;
            let vote = log
                .read_vote()
                .await
                .map_err(|e| ClusterError::Storage(e.to_string()))?;
            state.last_log_id.is_none() && vote.is_none()
        };
        if pristine && !cfg.join {
            let members: BTreeMap<u64, BasicNode> = cfg
                .voters
                .iter()
                .map(|v| (v.id, BasicNode::new(v.addr.to_string())))
                .collect();
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(
                    node = cfg.node_id,
                    "controller bootstrapped with the configured voters"
                ),
                // Another voter's bootstrap reached this node first: nothing to do.
                Err(e) => tracing::debug!(error = %e, "controller already initialized"),
            }
        }
        tracing::info!(cluster = %cluster_id, node = cfg.node_id, "controller started");
        let controller = Arc::new(Self {
            raft,
            sm,
            cluster_id,
            node_id: cfg.node_id,
            transport,
            rpc_timeout: Duration::from_millis(cfg.rpc_timeout_ms),
            clock,
            lease_ms: cfg.broker_lease_ms as i64,
            stop: tokio_util::sync::CancellationToken::new(),
        });
        tokio::spawn(controller.clone().watch_masters());
        Ok(controller)
    }

    /// On the leader: a set whose master's lease ran out gets a new master, its in-sync
    /// slave with a live lease (the lowest node id), in the next epoch. Checked every
    /// `FAILOVER_CHECK`; a set without such a slave keeps its master (and stays unavailable
    /// until it returns).
    async fn watch_masters(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(FAILOVER_CHECK) => {}
            }
            if self.raft.metrics().borrow().current_leader != Some(self.node_id) {
                continue;
            }
            let state = self.sm.state();
            let now = self.clock.now_ms();
            for (set, st) in &state.sets {
                if state.alive(st.master, now, self.lease_ms) {
                    continue;
                }
                let Some(next) = st
                    .in_sync
                    .iter()
                    .copied()
                    .find(|n| state.alive(*n, now, self.lease_ms))
                else {
                    continue;
                };
                let elect = state::Command::ElectMaster {
                    set: set.clone(),
                    epoch: st.epoch,
                    node: next,
                };
                match self.write_local(elect).await {
                    Ok(state::Reply::Ok) => tracing::warn!(
                        %set,
                        old = st.master,
                        new = next,
                        epoch = st.epoch + 1,
                        "a broker set's master lost its lease: its in-sync slave is the new master"
                    ),
                    Ok(state::Reply::Refused(why)) => {
                        tracing::debug!(%set, %why, "election refused")
                    }
                    Err(e) => tracing::debug!(%set, error = %e, "election not committed"),
                }
            }
        }
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Answers one Raft message from a peer (already authenticated by `net`).
    pub async fn handle_raft(&self, req: cmd::Raft) -> Result<Bytes, ClusterError> {
        if req.cluster_id != self.cluster_id {
            return Err(ClusterError::OtherCluster {
                ours: self.cluster_id.clone(),
                theirs: req.cluster_id,
            });
        }
        fn parse<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, ClusterError> {
            serde_json::from_slice(b).map_err(|e| ClusterError::Malformed(e.to_string()))
        }
        let out = match req.kind {
            RaftKind::Vote => serde_json::to_vec(&self.raft.vote(parse(&req.body)?).await),
            RaftKind::AppendEntries => {
                serde_json::to_vec(&self.raft.append_entries(parse(&req.body)?).await)
            }
            RaftKind::InstallSnapshot => {
                serde_json::to_vec(&self.raft.install_snapshot(parse(&req.body)?).await)
            }
            RaftKind::ChangeVoters => {
                let c: cmd::ClusterVoter = parse_voter(&req.body)?;
                let r = self.change_voters_local(c).await.map_err(|e| e.to_string());
                serde_json::to_vec(&r)
            }
            RaftKind::Read | RaftKind::Sync => {
                return Err(ClusterError::Malformed(
                    "read and sync messages are the member's".into(),
                ))
            }
            RaftKind::Write => {
                let c: state::Command = parse(&req.body)?;
                // A forwarded write is not forwarded again: only the leader applies it.
                let r = self.write_local(c).await.map_err(|e| e.to_string());
                serde_json::to_vec(&r)
            }
        };
        out.map(Bytes::from)
            .map_err(|e| ClusterError::Raft(e.to_string()))
    }

    /// Applies a command through the Raft log and returns its reply once committed and
    /// applied: on the leader directly, from a follower by forwarding it to the leader.
    pub async fn propose(&self, c: state::Command) -> Result<state::Reply, ClusterError> {
        match self.raft.client_write(c.clone()).await {
            Ok(r) => Ok(r.data),
            Err(openraft::error::RaftError::APIError(
                openraft::error::ClientWriteError::ForwardToLeader(f),
            )) => {
                let addr = f
                    .leader_node
                    .and_then(|n| n.addr.parse().ok())
                    .ok_or(ClusterError::NoLeader)?;
                let body = serde_json::to_vec(&c).map_err(|e| ClusterError::Raft(e.to_string()))?;
                let reply = network::send(
                    &self.transport,
                    &self.cluster_id,
                    addr,
                    RaftKind::Write,
                    body,
                    self.rpc_timeout,
                )
                .await
                .map_err(|e| ClusterError::Forward(e.to_string()))?;
                let r: Result<state::Reply, String> = serde_json::from_slice(&reply)
                    .map_err(|e| ClusterError::Forward(e.to_string()))?;
                r.map_err(ClusterError::Forward)
            }
            Err(e) => Err(ClusterError::Raft(e.to_string())),
        }
    }

    /// Adds or removes a controller voter through the leader (forwarded from a follower).
    pub async fn change_voters(&self, c: cmd::ClusterVoter) -> Result<(), ClusterError> {
        let leader = self.raft.metrics().borrow().current_leader;
        match leader {
            Some(l) if l == self.node_id => self.change_voters_local(c).await,
            Some(l) => {
                let addr = self
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .get_node(&l)
                    .and_then(|n| n.addr.parse().ok())
                    .ok_or(ClusterError::NoLeader)?;
                let body = serde_json::to_vec(&VoterJson::from(&c))
                    .map_err(|e| ClusterError::Raft(e.to_string()))?;
                let reply = network::send(
                    &self.transport,
                    &self.cluster_id,
                    addr,
                    RaftKind::ChangeVoters,
                    body,
                    // A new voter catches up before it is promoted: allow for it.
                    self.rpc_timeout * 10,
                )
                .await
                .map_err(|e| ClusterError::Forward(e.to_string()))?;
                let r: Result<(), String> = serde_json::from_slice(&reply)
                    .map_err(|e| ClusterError::Forward(e.to_string()))?;
                r.map_err(ClusterError::Forward)
            }
            None => Err(ClusterError::NoLeader),
        }
    }

    async fn change_voters_local(&self, c: cmd::ClusterVoter) -> Result<(), ClusterError> {
        use openraft::ChangeMembers;
        let err = |e: openraft::error::RaftError<u64, _>| ClusterError::Raft(e.to_string());
        if c.add {
            let addr: std::net::SocketAddr = c
                .addr
                .parse()
                .map_err(|e| ClusterError::Malformed(format!("voter address {:?}: {e}", c.addr)))?;
            self.raft
                .add_learner(c.id, BasicNode::new(addr.to_string()), true)
                .await
                .map_err(err)?;
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([c.id])), false)
                .await
                .map_err(err)?;
        } else {
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([c.id])), false)
                .await
                .map_err(err)?;
        }
        Ok(())
    }

    /// Applies a command only if this node is the leader.
    async fn write_local(&self, c: state::Command) -> Result<state::Reply, ClusterError> {
        self.raft
            .client_write(c)
            .await
            .map(|r| r.data)
            .map_err(|e| ClusterError::Raft(e.to_string()))
    }

    /// The committed cluster metadata as applied on this node.
    pub fn state(&self) -> state::ClusterState {
        self.sm.state()
    }

    /// The controller as this node sees it.
    pub fn info(&self) -> ClusterInfoReply {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let matched = m.replication.clone().unwrap_or_default();
        let nodes = membership
            .nodes()
            .map(|(id, node)| ControllerNode {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched: matched
                    .get(id)
                    .and_then(|l| l.map(|l| l.index))
                    .unwrap_or(u64::MAX),
            })
            .collect();
        let state = self.sm.state();
        let now = self.clock.now_ms();
        let brokers = state
            .brokers
            .iter()
            .map(|(id, b)| ClusterBroker {
                id: *id,
                set: b.set.clone(),
                addr: b.addr.to_string(),
                alive: state.alive(*id, now, self.lease_ms),
                last_seen_ms: b.last_seen_ms,
            })
            .collect();
        ClusterInfoReply {
            cluster_id: self.cluster_id.clone(),
            node_id: self.node_id,
            leader: m.current_leader.unwrap_or(0),
            term: m.current_term,
            applied: m.last_applied.map_or(0, |l| l.index),
            nodes,
            brokers,
            sets: sets_of(&state),
            replicas: Vec::new(),
        }
    }

    /// Waits until this node knows a leader, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<u64> {
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .ok()
            .and_then(|m| m.current_leader)
    }

    /// Stops Raft (on broker shutdown).
    pub async fn shutdown(&self) {
        self.stop.cancel();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "controller shutdown");
        }
    }
}

/// A voter change as JSON (forwarded between controller nodes).
#[derive(serde::Serialize, serde::Deserialize)]
struct VoterJson {
    add: bool,
    id: u64,
    addr: String,
}

impl From<&cmd::ClusterVoter> for VoterJson {
    fn from(c: &cmd::ClusterVoter) -> Self {
        VoterJson {
            add: c.add,
            id: c.id,
            addr: c.addr.clone(),
        }
    }
}

fn parse_voter(b: &[u8]) -> Result<cmd::ClusterVoter, ClusterError> {
    let v: VoterJson =
        serde_json::from_slice(b).map_err(|e| ClusterError::Malformed(e.to_string()))?;
    Ok(cmd::ClusterVoter {
        add: v.add,
        id: v.id,
        addr: v.addr,
    })
}

/// The answer of a node without a controller: a one-node "standalone" view.
pub fn standalone_info() -> ClusterInfoReply {
    ClusterInfoReply {
        cluster_id: "standalone".into(),
        node_id: 0,
        leader: 0,
        term: 0,
        applied: 0,
        nodes: Vec::new(),
        brokers: Vec::new(),
        sets: Vec::new(),
        replicas: Vec::new(),
    }
}

/// The sets' masters and epochs of `state`, for ClusterInfo.
pub(crate) fn sets_of(state: &state::ClusterState) -> Vec<cmd::ClusterSet> {
    state
        .sets
        .iter()
        .map(|(set, st)| cmd::ClusterSet {
            set: set.clone(),
            master: st.master,
            epoch: st.epoch,
            in_sync: st.in_sync.iter().copied().collect(),
        })
        .collect()
}
