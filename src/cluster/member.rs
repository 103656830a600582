//! Keeps this node's broker registered with the controller: it registers in its broker set at
//! start and renews its lease every `cluster.broker_heartbeat_ms`, through the local
//! controller (which forwards to the leader) or, on a node without one, through any voter.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quiver_protocol::cmd::RaftKind;
use tokio_util::sync::CancellationToken;

use super::network::{self, PeerTransport};
use super::state::{Command, Reply};
use super::{ClusterConfig, ClusterError, Controller};
use crate::clock::Clock;

/// Where the node's writes to the cluster metadata go.
pub struct Member {
    cfg: ClusterConfig,
    controller: Option<Arc<Controller>>,
    transport: Arc<dyn PeerTransport>,
}

impl Member {
    /// A member writing through `controller` when this node runs one, else through the
    /// configured voters.
    pub fn new(
        cfg: ClusterConfig,
        controller: Option<Arc<Controller>>,
        transport: Arc<dyn PeerTransport>,
    ) -> Self {
        Self {
            cfg,
            controller,
            transport,
        }
    }

    /// Applies `c` through the controller leader.
    pub async fn write(&self, c: Command) -> Result<Reply, ClusterError> {
        if let Some(ctl) = &self.controller {
            return ctl.propose(c).await;
        }
        let cluster_id = self.cfg.cluster_id.clone().unwrap_or_default();
        let body = serde_json::to_vec(&c).map_err(|e| ClusterError::Raft(e.to_string()))?;
        let timeout = Duration::from_millis(self.cfg.rpc_timeout_ms);
        let mut last = ClusterError::NoLeader;
        for v in &self.cfg.voters {
            match network::send(
                &self.transport,
                &cluster_id,
                v.addr,
                RaftKind::Write,
                body.clone(),
                timeout,
            )
            .await
            {
                Ok(reply) => {
                    let r: Result<Reply, String> = serde_json::from_slice(&reply)
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

    /// Registers the broker at `addr` in its set, then renews its lease until `stop`.
    /// Failures are logged and retried; they never stop the broker.
    pub async fn run(self, addr: SocketAddr, clock: Clock, stop: CancellationToken) {
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
                    at_ms: clock.now_ms(),
                }
            } else {
                Command::RegisterBroker {
                    set: set.clone(),
                    node_id,
                    addr,
                    at_ms: clock.now_ms(),
                }
            };
            let wait = match self.write(c).await {
                Ok(Reply::Ok) => {
                    if !registered {
                        tracing::info!(%set, node = node_id, %addr, "broker registered with the controller");
                    }
                    registered = true;
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
