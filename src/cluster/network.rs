//! openraft's network over Quiver's QUIC transport: each Raft message is one `Raft` command
//! (docs/PROTOCOL.md §8.10) to the peer's listener. The sockets live in `net` (the
//! [`PeerTransport`] it implements); this file only turns Raft messages into commands and
//! answers back.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use quiver_protocol::cmd::{Raft, RaftKind};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::TypeConfig;

type NodeId = u64;

/// Why a message to a peer got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// The peer could not be reached or the connection broke (retry later).
    #[error("peer {addr} unreachable: {reason}")]
    Unreachable {
        /// The peer.
        addr: SocketAddr,
        /// What happened.
        reason: String,
    },
    /// The peer answered with an error status (for example: not a member of its cluster).
    #[error("peer {addr} refused: {reason}")]
    Refused {
        /// The peer.
        addr: SocketAddr,
        /// Its answer.
        reason: String,
    },
}

/// Sends one Raft command to a peer and returns the body of its reply; implemented by `net`
/// over QUIC with mutual TLS.
pub trait PeerTransport: Send + Sync + 'static {
    /// One request/response exchange within `timeout`.
    fn raft(
        self: Arc<Self>,
        addr: SocketAddr,
        request: Raft,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<Bytes, PeerError>> + Send + 'static>>;

    /// Any request frame of command `command` (replication); the body of the successful
    /// reply, within `timeout`.
    fn request(
        self: Arc<Self>,
        addr: SocketAddr,
        frame: Bytes,
        command: u16,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<Bytes, PeerError>> + Send + 'static>>;
}

/// Sends a Raft command of `kind` with `body` to `addr` (for forwarding writes).
pub(crate) async fn send(
    transport: &Arc<dyn PeerTransport>,
    cluster_id: &str,
    addr: SocketAddr,
    kind: RaftKind,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Bytes, PeerError> {
    let request = Raft {
        cluster_id: cluster_id.to_string(),
        kind,
        body: Bytes::from(body),
    };
    transport.clone().raft(addr, request, timeout).await
}

/// Makes a [`Peer`] per target node.
pub(crate) struct Network {
    pub(crate) cluster_id: String,
    pub(crate) transport: Arc<dyn PeerTransport>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        Peer {
            target,
            addr: node.addr.parse().ok(),
            raw_addr: node.addr.clone(),
            cluster_id: self.cluster_id.clone(),
            transport: self.transport.clone(),
        }
    }
}

/// The way to one peer.
pub(crate) struct Peer {
    target: NodeId,
    addr: Option<SocketAddr>,
    raw_addr: String,
    cluster_id: String,
    transport: Arc<dyn PeerTransport>,
}

fn io(reason: String) -> std::io::Error {
    std::io::Error::other(reason)
}

impl Peer {
    async fn call_raft<Req, Resp, E>(
        &self,
        kind: RaftKind,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error,
        RaftError<NodeId, E>: DeserializeOwned,
    {
        let addr = self.addr.ok_or_else(|| {
            RPCError::Unreachable(Unreachable::new(&io(format!(
                "node {} has an unparsable address {:?}",
                self.target, self.raw_addr
            ))))
        })?;
        let body = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let request = Raft {
            cluster_id: self.cluster_id.clone(),
            kind,
            body: Bytes::from(body),
        };
        let reply = self
            .transport
            .clone()
            .raft(addr, request, option.hard_ttl())
            .await
            .map_err(|e| match e {
                PeerError::Unreachable { .. } => {
                    RPCError::Unreachable(Unreachable::new(&io(e.to_string())))
                }
                PeerError::Refused { .. } => {
                    RPCError::Network(NetworkError::new(&io(e.to_string())))
                }
            })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call_raft(RaftKind::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call_raft(RaftKind::InstallSnapshot, &rpc, &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call_raft(RaftKind::Vote, &rpc, &option).await
    }
}
