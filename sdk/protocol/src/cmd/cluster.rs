//! Cluster commands: the controller's Raft messages between controller nodes, and the
//! controller's view for operators (docs/PROTOCOL.md §8.10, docs/CLUSTER.md).

use bytes::{BufMut, Bytes, BytesMut};

use super::{call, WireDecode, WireEncode};
use crate::wire::{DecodeError, Reader, WriteExt};

/// Largest Raft message body accepted (a snapshot chunk or a batch of log entries).
pub const MAX_RAFT_BODY: u32 = 8 << 20;

/// Which Raft message a [`Raft`] request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RaftKind {
    /// A vote request (leader election).
    Vote = 1,
    /// Log entries or a heartbeat from the leader.
    AppendEntries = 2,
    /// A chunk of the leader's snapshot.
    InstallSnapshot = 3,
    /// A change to the cluster metadata (a controller command as JSON) from a cluster member,
    /// applied through the leader (a follower forwards it). The answer is JSON
    /// `{"Ok": reply}` or `{"Err": "reason"}`.
    Write = 4,
    /// A voter change (a [`ClusterVoter`] as JSON) forwarded by a follower to the leader.
    /// The answer is JSON `{"Ok": null}` or `{"Err": "reason"}`.
    ChangeVoters = 5,
    /// A read of the committed cluster metadata from a node without a controller: the body
    /// is empty, the answer JSON `{"Ok": state}` or `{"Err": "reason"}` (docs/CLUSTER.md).
    Read = 6,
    /// A broker is told to bring its local topics in line with the committed routes now
    /// (after a topic was created, changed or deleted through the controller). The body is
    /// JSON `{"deleted": null}` or `{"deleted": "topic"}`; the answer `{"Ok": null}` or
    /// `{"Err": "reason"}`.
    Sync = 7,
}

impl RaftKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(RaftKind::Vote),
            2 => Some(RaftKind::AppendEntries),
            3 => Some(RaftKind::InstallSnapshot),
            4 => Some(RaftKind::Write),
            5 => Some(RaftKind::ChangeVoters),
            6 => Some(RaftKind::Read),
            7 => Some(RaftKind::Sync),
            _ => None,
        }
    }
}

/// One Raft message from one controller node to another. Only nodes that authenticated as
/// cluster members (their TLS client certificate) may send it. The body is the message as
/// JSON, in the layout of the `openraft` 0.9 crate's serde types (docs/CLUSTER.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raft {
    /// The cluster the sender belongs to; a node of another cluster is refused.
    pub cluster_id: String,
    /// Which message.
    pub kind: RaftKind,
    /// The message, JSON.
    pub body: Bytes,
}

/// The receiver's answer, JSON (`Result<Response, RaftError>` of openraft, serialized).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftReply {
    /// The answer, JSON.
    pub body: Bytes,
}

call!(Raft => RaftReply, Raft);

fn put_body(b: &mut BytesMut, body: &[u8]) {
    b.put_u32_le(body.len() as u32);
    b.put_slice(body);
}

fn get_body(r: &mut Reader, field: &'static str) -> Result<Bytes, DecodeError> {
    let n = r.u32(field)?;
    if n > MAX_RAFT_BODY {
        return Err(DecodeError::Invalid {
            field,
            reason: format!("{n} bytes is more than {MAX_RAFT_BODY}"),
        });
    }
    r.bytes(n as usize, field)
}

impl WireEncode for Raft {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.cluster_id);
        b.put_u8(self.kind as u8);
        put_body(b, &self.body);
    }
}

impl WireDecode for Raft {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let cluster_id = r.str16("cluster id")?;
        let k = r.u8("raft kind")?;
        let kind = RaftKind::from_u8(k).ok_or(DecodeError::Invalid {
            field: "raft kind",
            reason: format!("unknown kind {k}"),
        })?;
        Ok(Raft {
            cluster_id,
            kind,
            body: get_body(r, "raft body")?,
        })
    }
}

impl WireEncode for RaftReply {
    fn encode(&self, b: &mut BytesMut) {
        put_body(b, &self.body);
    }
}

impl WireDecode for RaftReply {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(RaftReply {
            body: get_body(r, "raft reply")?,
        })
    }
}

/// The controller as the answering node sees it: `quiver admin cluster list`. Any node
/// answers; a broker without a cluster configuration answers as a one-node cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {}

/// One controller voter or learner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerNode {
    /// Node id (unique in the cluster, from the node's config).
    pub id: u64,
    /// The address its QUIC listener answers on.
    pub addr: String,
    /// A voter (true) or a learner.
    pub voter: bool,
    /// Last log index known to be replicated on it (only the leader knows; else `u64::MAX`).
    pub matched: u64,
}

/// A broker registered with the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterBroker {
    /// The broker's node id.
    pub id: u64,
    /// Its broker set.
    pub set: String,
    /// The address clients reach it on.
    pub addr: String,
    /// Its lease was valid when the answering node looked (by the answering node's clock).
    pub alive: bool,
    /// Its last registration or heartbeat, ms since the epoch.
    pub last_seen_ms: i64,
}

/// A broker set's roles as the committed metadata has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSet {
    /// Broker set name.
    pub set: String,
    /// Its master's node id (the other brokers of the set are its slaves).
    pub master: u64,
    /// The master's epoch (raised at every change of master).
    pub epoch: u64,
    /// The slaves the master reports in sync.
    pub in_sync: Vec<u64>,
}

/// A slave as its master sees it (the answering node's own slaves, when it is a master).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaLag {
    /// The slave's node id.
    pub node: u64,
    /// Commit-log offset up to which it holds the master's log (its last fetch's `from`).
    pub acked: u64,
    /// The master's log end now.
    pub master_end: u64,
    /// Messages (records) between `acked` and `master_end`; `u64::MAX` when more than the
    /// master counts (1,000,000).
    pub lag_messages: u64,
    /// Whether the master counts it in sync now.
    pub in_sync: bool,
    /// When it last fetched, ms since the Unix epoch.
    pub last_fetch_ms: i64,
}

/// See [`ClusterInfo`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfoReply {
    /// The cluster's id (from the config; `standalone` without one).
    pub cluster_id: String,
    /// The answering node's id.
    pub node_id: u64,
    /// The controller leader's id as this node knows it; 0 when none is known.
    pub leader: u64,
    /// The current Raft term.
    pub term: u64,
    /// Last log index applied on the answering node.
    pub applied: u64,
    /// The controller's members (voters and learners).
    pub nodes: Vec<ControllerNode>,
    /// The brokers registered in the committed cluster state.
    pub brokers: Vec<ClusterBroker>,
    /// The broker sets' masters and epochs (a trailing section: a reply that ends after
    /// `brokers` has none).
    pub sets: Vec<ClusterSet>,
    /// The answering node's slaves when it is a master of its set (a trailing section after
    /// `sets`: a reply that ends before it has none; empty on other nodes).
    pub replicas: Vec<ReplicaLag>,
}

call!(ClusterInfo => ClusterInfoReply, ClusterInfo);

impl WireEncode for ClusterInfo {
    fn encode(&self, _b: &mut BytesMut) {}
}

impl WireDecode for ClusterInfo {
    fn decode(_r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ClusterInfo {})
    }
}

impl WireEncode for ClusterInfoReply {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.cluster_id);
        b.put_u64_le(self.node_id);
        b.put_u64_le(self.leader);
        b.put_u64_le(self.term);
        b.put_u64_le(self.applied);
        b.put_u16_le(self.nodes.len() as u16);
        for n in &self.nodes {
            b.put_u64_le(n.id);
            b.put_str16(&n.addr);
            b.put_u8(n.voter as u8);
            b.put_u64_le(n.matched);
        }
        b.put_u16_le(self.brokers.len() as u16);
        for x in &self.brokers {
            b.put_u64_le(x.id);
            b.put_str16(&x.set);
            b.put_str16(&x.addr);
            b.put_u8(x.alive as u8);
            b.put_i64_le(x.last_seen_ms);
        }
        b.put_u16_le(self.sets.len() as u16);
        for x in &self.sets {
            b.put_str16(&x.set);
            b.put_u64_le(x.master);
            b.put_u64_le(x.epoch);
            b.put_u16_le(x.in_sync.len() as u16);
            for n in &x.in_sync {
                b.put_u64_le(*n);
            }
        }
        b.put_u16_le(self.replicas.len() as u16);
        for x in &self.replicas {
            b.put_u64_le(x.node);
            b.put_u64_le(x.acked);
            b.put_u64_le(x.master_end);
            b.put_u64_le(x.lag_messages);
            b.put_u8(x.in_sync as u8);
            b.put_i64_le(x.last_fetch_ms);
        }
    }
}

impl WireDecode for ClusterInfoReply {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let cluster_id = r.str16("cluster id")?;
        let node_id = r.u64("node id")?;
        let leader = r.u64("leader")?;
        let term = r.u64("term")?;
        let applied = r.u64("applied")?;
        let n = r.u16("node count")?;
        let mut nodes = Vec::with_capacity(n.min(64) as usize);
        for _ in 0..n {
            nodes.push(ControllerNode {
                id: r.u64("node id")?,
                addr: r.str16("node address")?,
                voter: r.bool("voter")?,
                matched: r.u64("matched")?,
            });
        }
        let n = r.u16("broker count")?;
        let mut brokers = Vec::with_capacity(n.min(64) as usize);
        for _ in 0..n {
            brokers.push(ClusterBroker {
                id: r.u64("broker id")?,
                set: r.str16("broker set")?,
                addr: r.str16("broker address")?,
                alive: r.bool("alive")?,
                last_seen_ms: r.i64("last seen")?,
            });
        }
        let mut sets = Vec::new();
        if r.remaining() > 0 {
            let n = r.u16("set count")?;
            sets.reserve(n.min(64) as usize);
            for _ in 0..n {
                let set = r.str16("broker set")?;
                let master = r.u64("master")?;
                let epoch = r.u64("epoch")?;
                let k = r.u16("in-sync count")?;
                let mut in_sync = Vec::with_capacity(k.min(64) as usize);
                for _ in 0..k {
                    in_sync.push(r.u64("in-sync slave")?);
                }
                sets.push(ClusterSet {
                    set,
                    master,
                    epoch,
                    in_sync,
                });
            }
        }
        let mut replicas = Vec::new();
        if r.remaining() > 0 {
            let n = r.u16("replica count")?;
            replicas.reserve(n.min(64) as usize);
            for _ in 0..n {
                replicas.push(ReplicaLag {
                    node: r.u64("replica node")?,
                    acked: r.u64("replica acked")?,
                    master_end: r.u64("master end")?,
                    lag_messages: r.u64("lag messages")?,
                    in_sync: r.bool("replica in sync")?,
                    last_fetch_ms: r.i64("last fetch")?,
                });
            }
        }
        Ok(ClusterInfoReply {
            cluster_id,
            node_id,
            leader,
            term,
            applied,
            nodes,
            brokers,
            sets,
            replicas,
        })
    }
}

/// Adds a controller voter or removes one (`quiver admin cluster add-voter|remove-voter`).
/// Accepted from cluster members and from clients on the node's own machine (loopback);
/// any controller node takes it and forwards it to the leader. A new voter first joins as a
/// learner and becomes a voter once it has caught up with the log. The reply is the
/// controller as the answering node sees it afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterVoter {
    /// True to add, false to remove.
    pub add: bool,
    /// The node's id.
    pub id: u64,
    /// Its listener address (adding only; empty when removing).
    pub addr: String,
}

call!(ClusterVoter => ClusterInfoReply, ClusterVoter);

impl WireEncode for ClusterVoter {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u8(if self.add { 1 } else { 2 });
        b.put_u64_le(self.id);
        b.put_str16(&self.addr);
    }
}

impl WireDecode for ClusterVoter {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let op = r.u8("voter operation")?;
        let add = match op {
            1 => true,
            2 => false,
            _ => {
                return Err(DecodeError::Invalid {
                    field: "voter operation",
                    reason: format!("unknown operation {op} (1 add, 2 remove)"),
                })
            }
        };
        Ok(ClusterVoter {
            add,
            id: r.u64("node id")?,
            addr: r.str16("node address")?,
        })
    }
}

/// The route of a topic in a cluster: which broker sets hold its queues and where their
/// brokers answer (RocketMQ's route query to the NameServer). Any cluster node answers, from
/// the controller's committed state; with `create`, a topic without a route is created on
/// every broker set that has a live broker, with the broker's `default_queues` each (when
/// the answering broker allows auto-creation). A topic without a route is `TopicNotFound`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRoute {
    /// Topic.
    pub topic: String,
    /// Create the topic when it has no route.
    pub create: bool,
}

/// One broker set's part of a topic's route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSet {
    /// Broker set name.
    pub set: String,
    /// The topic's queue count on this set (its queues are `0..queues` there).
    pub queues: u32,
    /// The node id of the set's broker; 0 when the set has no registered broker.
    pub node_id: u64,
    /// The address its broker answers on (`host:port`); empty when none is registered.
    pub addr: String,
    /// The broker's lease was valid when the answering node looked.
    pub alive: bool,
}

/// See [`TopicRoute`] and [`TopicCreateOn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRouteReply {
    /// The broker sets holding the topic's queues, in route order.
    pub sets: Vec<RouteSet>,
}

/// Creates a topic in a cluster with `queues` queues on each of the named broker sets (all
/// broker sets with a live broker when `sets` is empty): `quiver admin topic create --sets`.
/// The route is committed through the controller, then every set's broker creates its
/// queues (a broker that is down creates them when it comes back). The answer is the new
/// route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicCreateOn {
    /// Topic.
    pub topic: String,
    /// Queue count on each set.
    pub queues: u32,
    /// Broker sets; empty for every set with a live broker.
    pub sets: Vec<String>,
}

call!(TopicRoute => TopicRouteReply, TopicRoute);
call!(TopicCreateOn => TopicRouteReply, TopicCreateOn);

impl WireEncode for TopicRoute {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.topic);
        b.put_u8(self.create as u8);
    }
}

impl WireDecode for TopicRoute {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(TopicRoute {
            topic: r.str16("topic")?,
            create: r.bool("create")?,
        })
    }
}

impl WireEncode for TopicRouteReply {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u16_le(self.sets.len() as u16);
        for s in &self.sets {
            b.put_str16(&s.set);
            b.put_u32_le(s.queues);
            b.put_u64_le(s.node_id);
            b.put_str16(&s.addr);
            b.put_u8(s.alive as u8);
        }
    }
}

impl WireDecode for TopicRouteReply {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let n = r.u16("set count")?;
        let mut sets = Vec::with_capacity(n.min(64) as usize);
        for _ in 0..n {
            sets.push(RouteSet {
                set: r.str16("broker set")?,
                queues: r.u32("queue count")?,
                node_id: r.u64("node id")?,
                addr: r.str16("broker address")?,
                alive: r.bool("alive")?,
            });
        }
        Ok(TopicRouteReply { sets })
    }
}

impl WireEncode for TopicCreateOn {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.topic);
        b.put_u32_le(self.queues);
        b.put_u16_le(self.sets.len() as u16);
        for s in &self.sets {
            b.put_str16(s);
        }
    }
}

impl WireDecode for TopicCreateOn {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let topic = r.str16("topic")?;
        let queues = r.u32("queue count")?;
        let n = r.u16("set count")?;
        let mut sets = Vec::with_capacity(n.min(64) as usize);
        for _ in 0..n {
            sets.push(r.str16("broker set")?);
        }
        Ok(TopicCreateOn {
            topic,
            queues,
            sets,
        })
    }
}

/// Largest replicated chunk a [`ReplicaChunk`] carries (whole batches: a single batch may be
/// as large as a request frame).
pub const MAX_REPLICA_CHUNK: u32 = 64 << 20;

/// A slave asks its set's master for the commit log from `from` (its own log end): the
/// master answers with whole records as stored, waiting up to `wait_ms` for new ones when it
/// has none (cluster members only; docs/CLUSTER.md, docs/STORAGE.md §11). `from` is also the
/// slave's acknowledgement of everything before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFetch {
    /// The cluster the slave belongs to.
    pub cluster_id: String,
    /// The broker set.
    pub set: String,
    /// The slave's node id.
    pub node_id: u64,
    /// The master epoch the slave follows; another epoch is refused with `NotMaster`.
    pub epoch: u64,
    /// Commit-log offset to read from (the slave's log end).
    pub from: u64,
    /// About how many bytes to return (whole batches; at least one).
    pub max_bytes: u32,
    /// How long to wait for new records when there are none, in ms.
    pub wait_ms: u32,
    /// The newest epoch in the slave's epoch file (0 when it has none): the master answers
    /// where that epoch's part of its own history ends ([`ReplicaChunk::history_end`]).
    pub last_epoch: u64,
}

/// Most epoch entries a [`ReplicaChunk`] carries.
pub const MAX_EPOCH_ENTRIES: u32 = 65_536;

/// One entry of a master's epoch file: from commit-log offset `start` on, the records were
/// written by the master of `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochStart {
    /// The master epoch.
    pub epoch: u64,
    /// Commit-log offset of its first record.
    pub start: u64,
}

/// See [`ReplicaFetch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaChunk {
    /// The master's epoch.
    pub epoch: u64,
    /// Offset of the first byte (the request's `from`).
    pub start: u64,
    /// Where the log continues: `start + len`, or the next segment's base when the
    /// master's segment ended there.
    pub next: u64,
    /// The master's log end when it answered (what the slave lags by).
    pub end: u64,
    /// The records (none when the slave's history parts from the master's: see
    /// `history_end`).
    pub bytes: Bytes,
    /// The largest epoch of the master's epoch file at or below the request's `last_epoch`
    /// (0: none is).
    pub history_epoch: u64,
    /// Where that epoch's part of the master's log ends: the next entry's start, or the
    /// master's log end. A slave whose newest epoch is not `history_epoch`, or whose log is
    /// longer than `history_end`, cuts its log back before it fetches again.
    pub history_end: u64,
    /// The master's epoch file, oldest first.
    pub epochs: Vec<EpochStart>,
}

impl super::Call for ReplicaFetch {
    const COMMAND: crate::codes::Command = crate::codes::Command::ReplicaFetch;
    type Reply = ReplicaChunk;

    fn wait_ms(&self) -> u32 {
        self.wait_ms
    }
}

impl WireEncode for ReplicaFetch {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.cluster_id);
        b.put_str16(&self.set);
        b.put_u64_le(self.node_id);
        b.put_u64_le(self.epoch);
        b.put_u64_le(self.from);
        b.put_u32_le(self.max_bytes);
        b.put_u32_le(self.wait_ms);
        b.put_u64_le(self.last_epoch);
    }
}

impl WireDecode for ReplicaFetch {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ReplicaFetch {
            cluster_id: r.str16("cluster id")?,
            set: r.str16("broker set")?,
            node_id: r.u64("node id")?,
            epoch: r.u64("epoch")?,
            from: r.u64("from")?,
            max_bytes: r.u32("max bytes")?,
            wait_ms: r.u32("wait")?,
            last_epoch: r.u64("last epoch")?,
        })
    }
}

impl WireEncode for ReplicaChunk {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u64_le(self.epoch);
        b.put_u64_le(self.start);
        b.put_u64_le(self.next);
        b.put_u64_le(self.end);
        b.put_u32_le(self.bytes.len() as u32);
        b.put_slice(&self.bytes);
        b.put_u64_le(self.history_epoch);
        b.put_u64_le(self.history_end);
        b.put_u32_le(self.epochs.len() as u32);
        for e in &self.epochs {
            b.put_u64_le(e.epoch);
            b.put_u64_le(e.start);
        }
    }
}

impl WireDecode for ReplicaChunk {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let epoch = r.u64("epoch")?;
        let start = r.u64("start")?;
        let next = r.u64("next")?;
        let end = r.u64("end")?;
        let n = r.u32("chunk length")?;
        if n > MAX_REPLICA_CHUNK {
            return Err(DecodeError::Invalid {
                field: "chunk length",
                reason: format!("{n} bytes is more than {MAX_REPLICA_CHUNK}"),
            });
        }
        let bytes = r.bytes(n as usize, "chunk")?;
        let history_epoch = r.u64("history epoch")?;
        let history_end = r.u64("history end")?;
        let count = r.u32("epoch count")?;
        if count > MAX_EPOCH_ENTRIES {
            return Err(DecodeError::Invalid {
                field: "epoch count",
                reason: format!("{count} entries is more than {MAX_EPOCH_ENTRIES}"),
            });
        }
        let mut epochs = Vec::new();
        for _ in 0..count {
            epochs.push(EpochStart {
                epoch: r.u64("epoch")?,
                start: r.u64("epoch start")?,
            });
        }
        Ok(ReplicaChunk {
            epoch,
            start,
            next,
            end,
            bytes,
            history_epoch,
            history_end,
            epochs,
        })
    }
}

/// Largest [`ReplicaStateReply`] body.
pub const MAX_REPLICA_STATE: u32 = 16 << 20;

/// A slave asks its set's master for the broker state that is not in the commit log (the
/// consumer groups' committed offsets), to hold it when a failover makes it the master
/// (cluster members only; docs/CLUSTER.md). Checked like a [`ReplicaFetch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaState {
    /// The cluster the slave belongs to.
    pub cluster_id: String,
    /// The broker set.
    pub set: String,
    /// The slave's node id.
    pub node_id: u64,
    /// The master epoch the slave follows; another epoch is refused with `NotMaster`.
    pub epoch: u64,
    /// Plugin modules the slave lacks, by SHA-256 (lowercase hex), at most
    /// [`MAX_WANTED_MODULES`]: the master sends them in the reply.
    pub want: Vec<String>,
}

/// Most modules a [`ReplicaState`] asks for at once.
pub const MAX_WANTED_MODULES: u16 = 16;

/// See [`ReplicaState`]: the state as JSON, and the plugin modules asked for
/// (docs/PROTOCOL.md §6.32).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStateReply {
    /// JSON object: `{"offsets": {group: {topic: {queue: offset}}}, "plugins": registry}`.
    pub json: Bytes,
    /// The wanted modules the master has: (SHA-256 hex, module bytes).
    pub modules: Vec<(String, Bytes)>,
}

call!(ReplicaState => ReplicaStateReply, ReplicaState);

impl WireEncode for ReplicaState {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.cluster_id);
        b.put_str16(&self.set);
        b.put_u64_le(self.node_id);
        b.put_u64_le(self.epoch);
        b.put_u16_le(self.want.len() as u16);
        for w in &self.want {
            b.put_str16(w);
        }
    }
}

impl WireDecode for ReplicaState {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let cluster_id = r.str16("cluster id")?;
        let set = r.str16("broker set")?;
        let node_id = r.u64("node id")?;
        let epoch = r.u64("epoch")?;
        let n = r.u16("wanted modules")?;
        if n > MAX_WANTED_MODULES {
            return Err(DecodeError::Invalid {
                field: "wanted modules",
                reason: format!("{n} is more than {MAX_WANTED_MODULES}"),
            });
        }
        let mut want = Vec::with_capacity(n as usize);
        for _ in 0..n {
            want.push(r.str16("module hash")?);
        }
        Ok(ReplicaState {
            cluster_id,
            set,
            node_id,
            epoch,
            want,
        })
    }
}

impl WireEncode for ReplicaStateReply {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u32_le(self.json.len() as u32);
        b.put_slice(&self.json);
        b.put_u16_le(self.modules.len() as u16);
        for (sha, m) in &self.modules {
            b.put_str16(sha);
            b.put_u32_le(m.len() as u32);
            b.put_slice(m);
        }
    }
}

impl WireDecode for ReplicaStateReply {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let n = r.u32("state length")?;
        if n > MAX_REPLICA_STATE {
            return Err(DecodeError::Invalid {
                field: "state length",
                reason: format!("{n} bytes is more than {MAX_REPLICA_STATE}"),
            });
        }
        let json = r.bytes(n as usize, "state")?;
        let k = r.u16("module count")?;
        if k > MAX_WANTED_MODULES {
            return Err(DecodeError::Invalid {
                field: "module count",
                reason: format!("{k} is more than {MAX_WANTED_MODULES}"),
            });
        }
        let mut modules = Vec::with_capacity(k as usize);
        for _ in 0..k {
            let sha = r.str16("module hash")?;
            let len = r.u32("module length")?;
            if len > MAX_REPLICA_CHUNK {
                return Err(DecodeError::Invalid {
                    field: "module length",
                    reason: format!("{len} bytes is more than {MAX_REPLICA_CHUNK}"),
                });
            }
            modules.push((sha, r.bytes(len as usize, "module")?));
        }
        Ok(ReplicaStateReply { json, modules })
    }
}

/// Makes `node` the master of broker set `set` (a switch-over: `quiver admin cluster
/// elect-master`). The node must be a live broker of the set that the controller has in the
/// set's in-sync set; the set's epoch rises by one. Accepted from cluster members and from
/// clients on the node's own machine. The answer is the cluster's state afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterElect {
    /// The broker set.
    pub set: String,
    /// The node to make its master.
    pub node_id: u64,
}

call!(ClusterElect => ClusterInfoReply, ClusterElect);

impl WireEncode for ClusterElect {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.set);
        b.put_u64_le(self.node_id);
    }
}

impl WireDecode for ClusterElect {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ClusterElect {
            set: r.str16("broker set")?,
            node_id: r.u64("node id")?,
        })
    }
}
