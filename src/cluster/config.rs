//! The `[cluster]` section: which cluster a node belongs to, its id, and the controller's
//! voters. Without `cluster_id` the broker is standalone, exactly as before.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How a broker set's master replicates to its slaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Replication {
    /// A send is answered once the master has it (slaves copy it a moment later).
    #[default]
    Async,
    /// A send is answered once `min_in_sync` copies (the master's included) have it.
    Sync,
}

/// A controller voter as the config names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoterConfig {
    /// The node's id (its `cluster.node_id`).
    pub id: u64,
    /// The address of its QUIC listener (its `broker.listen`), as the other nodes reach it.
    pub addr: SocketAddr,
}

/// Cluster membership and controller settings (docs/CLUSTER.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name; unset (the default) runs a standalone broker. Nodes refuse Raft
    /// messages from another cluster id.
    pub cluster_id: Option<String>,
    /// This node's id, unique in the cluster, at least 1.
    pub node_id: u64,
    /// Run a controller voter on this node (its id must be among `voters`).
    pub controller: bool,
    /// With `controller`: this node joins an existing controller instead of bootstrapping
    /// one. It waits, empty, until a voter adds it (`quiver admin cluster add-voter`); its
    /// `voters` are the existing voters and need not list it.
    pub join: bool,
    /// The controller's initial voters. A node whose Raft log is empty bootstraps the
    /// controller with exactly these; later changes are commands
    /// (`quiver admin cluster add-voter|remove-voter`), not config edits.
    pub voters: Vec<VoterConfig>,
    /// The CA (or shared self-signed certificate) that signs every cluster node's TLS
    /// certificate, PEM. Nodes verify each other against it both ways (mutual TLS); default:
    /// this node's own `tls.cert`, which works when every node shares one certificate.
    pub ca: Option<PathBuf>,
    /// The broker set this node's broker serves in; unset, the node registers no broker
    /// (a controller-only node).
    pub broker_set: Option<String>,
    /// The address clients and the other nodes reach this node's broker on, as registered
    /// in its broker set (RocketMQ's `brokerIP1`); default `broker.listen`. Needed when
    /// `broker.listen` is a wildcard address (`0.0.0.0`, `[::]`).
    pub advertise: Option<SocketAddr>,
    /// On a master: `async` (default) or `sync` replication to the set's slaves.
    pub replication: Replication,
    /// Sync replication: copies of a send (the master's included) needed before it is
    /// answered, and in sync before it is taken; default 2.
    pub min_in_sync: u32,
    /// A slave that has not caught up with the master for this long is out of sync, in ms;
    /// default 5000.
    pub replica_lag_ms: u64,
    /// Sync replication: how long a stored send waits for its copies before it fails
    /// (`NotEnoughReplicas`, retryable), in ms; default 3000.
    pub replica_ack_timeout_ms: u64,
    /// How often the broker renews its lease with the controller, in ms; default 1000.
    pub broker_heartbeat_ms: u64,
    /// A broker whose last heartbeat is older than this is not alive, in ms; default 3000 (a failover starts this long after a master stops).
    pub broker_lease_ms: u64,
    /// Leader heartbeat interval in ms; default 150.
    pub heartbeat_interval_ms: u64,
    /// A follower that hears nothing from a leader for a random time in
    /// `[election_timeout_ms, 2 x election_timeout_ms)` starts an election; default 600.
    pub election_timeout_ms: u64,
    /// How long one Raft message to a peer may take before it counts as lost, in ms;
    /// default 1000.
    pub rpc_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            cluster_id: None,
            node_id: 0,
            controller: false,
            join: false,
            voters: Vec::new(),
            ca: None,
            broker_set: None,
            advertise: None,
            replication: Replication::Async,
            min_in_sync: 2,
            replica_lag_ms: 5_000,
            replica_ack_timeout_ms: 3_000,
            broker_heartbeat_ms: 1000,
            broker_lease_ms: 3000,
            heartbeat_interval_ms: 150,
            election_timeout_ms: 600,
            rpc_timeout_ms: 1000,
        }
    }
}

impl ClusterConfig {
    /// Checks that `data_dir` belongs to this cluster and node (recorded in
    /// `<data_dir>/cluster.json` on a node's first start in a cluster), so a node started with
    /// another cluster's or node's config is refused instead of mixing the two; records it on
    /// the first start. A data directory that was a cluster node's is refused by a
    /// standalone broker too.
    pub fn check_data_dir(&self, data_dir: &std::path::Path) -> Result<(), String> {
        #[derive(Serialize, Deserialize, PartialEq)]
        struct Owner {
            cluster_id: String,
            node_id: u64,
        }
        let path = data_dir.join("cluster.json");
        let recorded: Option<Owner> = match std::fs::read(&path) {
            Ok(b) => Some(serde_json::from_slice(&b).map_err(|e| {
                format!("{} is damaged ({e}); it records which cluster and node own this data directory", path.display())
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        match (&self.cluster_id, recorded) {
            (None, None) => Ok(()),
            (None, Some(o)) => Err(format!(
                "this data directory belongs to node {} of cluster {:?} but the config has no \
                 [cluster] section; start it with that node's config (or remove {} to use the \
                 data as a standalone broker)",
                o.node_id,
                o.cluster_id,
                path.display()
            )),
            (Some(id), Some(o)) if o.cluster_id != *id || o.node_id != self.node_id => {
                Err(format!(
                "this data directory belongs to node {} of cluster {:?}, but the config says node \
                 {} of cluster {id:?}: a node keeps its cluster id and node id for the life of \
                 its data",
                o.node_id, o.cluster_id, self.node_id
            ))
            }
            (Some(_), Some(_)) => Ok(()),
            (Some(id), None) => {
                let o = Owner {
                    cluster_id: id.clone(),
                    node_id: self.node_id,
                };
                std::fs::create_dir_all(data_dir)
                    .and_then(|_| std::fs::write(&path, serde_json::to_vec(&o).unwrap_or_default()))
                    .map_err(|e| format!("writing {}: {e}", path.display()))
            }
        }
    }

    /// True when this node is part of a cluster.
    pub fn enabled(&self) -> bool {
        self.cluster_id.is_some()
    }

    /// Checks the section; `has_cert` says whether `tls.cert` is configured (the default
    /// trust anchor).
    pub fn validate(&self, has_cert: bool) -> Result<(), String> {
        if self.replication == Replication::Sync && self.broker_set.is_none() {
            return Err(
                "cluster.replication = \"sync\" is a broker set's setting: it needs cluster.cluster_id and cluster.broker_set".into(),
            );
        }
        let Some(id) = &self.cluster_id else {
            if self.controller
                || !self.voters.is_empty()
                || self.node_id != 0
                || self.broker_set.is_some()
            {
                return Err(
                    "cluster.node_id, cluster.controller, cluster.voters and cluster.broker_set need cluster.cluster_id"
                        .into(),
                );
            }
            return Ok(());
        };
        quiver_protocol::names::check_name("cluster.cluster_id", id)?;
        if self.node_id == 0 {
            return Err("cluster.node_id must be set (at least 1) in a cluster".into());
        }
        if self.voters.is_empty() {
            return Err("cluster.voters must name the controller's voters (1, 3 or 5)".into());
        }
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        for v in &self.voters {
            if v.id == 0 {
                return Err("cluster.voters: a voter id must be at least 1".into());
            }
            if !ids.insert(v.id) {
                return Err(format!("cluster.voters: voter id {} appears twice", v.id));
            }
            if !addrs.insert(v.addr) {
                return Err(format!("cluster.voters: address {} appears twice", v.addr));
            }
        }
        if self.join && !self.controller {
            return Err("cluster.join needs cluster.controller".into());
        }
        if self.controller && !self.join && !ids.contains(&self.node_id) {
            return Err(format!(
                "cluster.controller is on but node {} is not among cluster.voters ({})",
                self.node_id,
                self.voters
                    .iter()
                    .map(|v| v.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self.ca.is_none() && !has_cert {
            return Err("a cluster needs a trust anchor for its nodes: set cluster.ca (the CA that signs every node's certificate) or give every node the same tls.cert and tls.key".into());
        }
        if self.heartbeat_interval_ms == 0
            || self.election_timeout_ms < 3 * self.heartbeat_interval_ms
        {
            return Err("cluster.election_timeout_ms must be at least 3 x cluster.heartbeat_interval_ms (and the interval above 0)".into());
        }
        if let Some(set) = &self.broker_set {
            quiver_protocol::names::check_name("cluster.broker_set", set)?;
        }
        if let Some(a) = self.advertise {
            if a.ip().is_unspecified() || a.port() == 0 {
                return Err(format!(
                    "cluster.advertise must be an address others can reach, not {a}"
                ));
            }
        }
        if self.broker_heartbeat_ms == 0 || self.broker_lease_ms < 2 * self.broker_heartbeat_ms {
            return Err("cluster.broker_lease_ms must be at least 2 x cluster.broker_heartbeat_ms (and the interval above 0)".into());
        }
        if self.replication == Replication::Sync && self.min_in_sync < 2 {
            return Err(format!(
                "cluster.replication = \"sync\" needs cluster.min_in_sync of at least 2 (the \
                 master and one slave), got {}",
                self.min_in_sync
            ));
        }
        if self.replica_lag_ms == 0 || self.replica_ack_timeout_ms == 0 {
            return Err(
                "cluster.replica_lag_ms and cluster.replica_ack_timeout_ms must be above 0".into(),
            );
        }
        if self.rpc_timeout_ms == 0 {
            return Err("cluster.rpc_timeout_ms must be above 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voter(id: u64, port: u16) -> VoterConfig {
        VoterConfig {
            id,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn three() -> ClusterConfig {
        ClusterConfig {
            cluster_id: Some("c1".into()),
            node_id: 1,
            controller: true,
            voters: vec![voter(1, 1), voter(2, 2), voter(3, 3)],
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn standalone_and_a_good_cluster_pass() {
        assert!(ClusterConfig::default().validate(false).is_ok());
        assert!(three().validate(true).is_ok());
    }

    #[test]
    fn bad_cluster_configs_are_refused_with_the_reason() {
        let mut c = three();
        c.voters.push(voter(2, 9));
        assert!(c.validate(true).unwrap_err().contains("id 2 appears twice"));
        let mut c = three();
        c.node_id = 7;
        assert!(c
            .validate(true)
            .unwrap_err()
            .contains("not among cluster.voters"));
        let mut c = three();
        c.voters[2].addr = c.voters[0].addr;
        assert!(c.validate(true).unwrap_err().contains("appears twice"));
        assert!(three()
            .validate(false)
            .unwrap_err()
            .contains("trust anchor"));
        let mut c = three();
        c.node_id = 0;
        assert!(c.validate(true).unwrap_err().contains("node_id"));
        let c = ClusterConfig {
            controller: true,
            ..ClusterConfig::default()
        };
        assert!(c
            .validate(true)
            .unwrap_err()
            .contains("need cluster.cluster_id"));
        let mut c = three();
        c.cluster_id = Some("bad id!".into());
        assert!(c.validate(true).is_err());
    }

    #[test]
    fn sync_replication_needs_a_broker_set_and_two_copies() {
        let mut c = three();
        c.replication = Replication::Sync;
        assert!(c.validate(true).unwrap_err().contains("broker_set"));
        c.broker_set = Some("a".into());
        assert!(c.validate(true).is_ok());
        c.min_in_sync = 1;
        assert!(c.validate(true).unwrap_err().contains("min_in_sync"));
        let standalone = ClusterConfig {
            replication: Replication::Sync,
            ..ClusterConfig::default()
        };
        assert!(standalone.validate(false).is_err());
    }

    #[test]
    fn a_data_directory_keeps_its_cluster_and_node() {
        let dir = tempfile::tempdir().unwrap();
        let c = three();
        c.check_data_dir(dir.path()).unwrap();
        c.check_data_dir(dir.path()).unwrap();
        let mut other = three();
        other.cluster_id = Some("c2".into());
        let e = other.check_data_dir(dir.path()).unwrap_err();
        assert!(e.contains("cluster \"c1\"") && e.contains("c2"), "{e}");
        let mut other = three();
        other.node_id = 2;
        assert!(other.check_data_dir(dir.path()).is_err());
        let e = ClusterConfig::default()
            .check_data_dir(dir.path())
            .unwrap_err();
        assert!(e.contains("no [cluster] section"), "{e}");
        let fresh = tempfile::tempdir().unwrap();
        ClusterConfig::default()
            .check_data_dir(fresh.path())
            .unwrap();
    }
}
