//! `quiver admin cluster`: the controller as the connected node sees it.

use anyhow::Context;
use clap::Subcommand;
use std::collections::HashMap;

use quiver_client::{Admin, Client};
use quiver_protocol::cmd::{ClusterInfoReply, ReplicaLag};
use serde::Serialize;

use super::output::{rfc3339_ms, Out};

#[derive(Subcommand)]
pub(crate) enum ClusterCommand {
    /// The cluster id, the controller leader and term, and each controller node (like
    /// mqadmin clusterList).
    List,
    /// Add a controller voter: a node started with `cluster.controller` and `cluster.join`.
    /// It joins as a learner, catches up, then votes. Run on a controller node's machine.
    AddVoter {
        /// The new node's `cluster.node_id`.
        id: u64,
        /// Its listener address (`broker.listen`).
        addr: std::net::SocketAddr,
    },
    /// Make an in-sync slave the master of its broker set (a switch-over, like RocketMQ 5's
    /// electMaster): the set's epoch rises, the old master becomes a slave and clients follow
    /// the new route. Refused for a slave that is not in sync.
    ElectMaster {
        /// The broker set.
        set: String,
        /// The `cluster.node_id` of the slave to make master.
        node: u64,
    },
    /// Remove a controller voter.
    RemoveVoter {
        /// The node's `cluster.node_id`.
        id: u64,
    },
}

#[derive(Serialize)]
struct BrokerRow<'a> {
    cluster: &'a str,
    broker_set: &'a str,
    /// `master` or `slave` of its set.
    role: &'static str,
    /// The set's master epoch.
    epoch: u64,
    /// A slave: whether its master reports it in sync.
    #[serde(skip_serializing_if = "Option::is_none")]
    in_sync: Option<bool>,
    /// A slave: bytes of the master's log it does not hold yet (as its master counts).
    #[serde(skip_serializing_if = "Option::is_none")]
    lag_bytes: Option<u64>,
    /// A slave: messages it does not hold yet (absent when more than a million, or unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    lag_messages: Option<u64>,
    node: u64,
    addr: &'a str,
    alive: bool,
    last_seen: String,
}

#[derive(Serialize)]
struct NodeRow<'a> {
    cluster: &'a str,
    node: u64,
    addr: &'a str,
    role: &'a str,
    leader: bool,
    term: u64,
    matched: Option<u64>,
}

pub(crate) async fn run(admin: &Admin, out: &mut Out, c: ClusterCommand) -> anyhow::Result<()> {
    let info =
        match c {
            ClusterCommand::List => {
                let info = admin
                    .cluster_info()
                    .await
                    .context("asking for the cluster")?;
                let lags = slave_lags(admin, &info).await;
                return print(out, &info, &lags);
            }
            ClusterCommand::AddVoter { id, addr } => admin
                .cluster_add_voter(id, addr)
                .await
                .with_context(|| format!("adding voter {id} at {addr}"))?,
            ClusterCommand::ElectMaster { set, node } => admin
                .cluster_elect_master(&set, node)
                .await
                .with_context(|| format!("making node {node} the master of broker set {set}"))?,
            ClusterCommand::RemoveVoter { id } => admin
                .cluster_remove_voter(id)
                .await
                .with_context(|| format!("removing voter {id}"))?,
        };
    print(out, &info, &HashMap::new())
}

/// Each slave's lag as its master reports it (ClusterInfo's `replicas` section): the
/// answering node's own slaves, and each other master's, asked directly. A master that
/// does not answer leaves its slaves' lag unknown.
async fn slave_lags(admin: &Admin, info: &ClusterInfoReply) -> HashMap<u64, ReplicaLag> {
    let mut lags: HashMap<u64, ReplicaLag> = HashMap::new();
    for set in &info.sets {
        let replicas = if set.master == info.node_id {
            info.replicas.clone()
        } else {
            let Some(addr) = info
                .brokers
                .iter()
                .find(|b| b.id == set.master && b.alive)
                .and_then(|b| b.addr.parse::<std::net::SocketAddr>().ok())
            else {
                continue;
            };
            let mut cfg = admin.client().config().clone();
            cfg.addr = addr;
            match Client::connect(cfg).await {
                Ok(c) => {
                    let r = Admin::new(c.clone()).cluster_info().await;
                    c.close().await;
                    r.map(|i| i.replicas).unwrap_or_default()
                }
                Err(_) => Vec::new(),
            }
        };
        for r in replicas {
            lags.insert(r.node, r);
        }
    }
    lags
}

/// A broker's role in its set, the set's epoch, and (for a slave) whether its master reports
/// it in sync, from the reply's sets section.
fn role_of(info: &ClusterInfoReply, set: &str, node: u64) -> (&'static str, u64, Option<bool>) {
    match info.sets.iter().find(|s| s.set == set) {
        Some(s) if s.master == node => ("master", s.epoch, None),
        Some(s) => ("slave", s.epoch, Some(s.in_sync.contains(&node))),
        None => ("-", 0, None),
    }
}

fn print(
    out: &mut Out,
    info: &ClusterInfoReply,
    lags: &HashMap<u64, ReplicaLag>,
) -> anyhow::Result<()> {
    if out.json {
        for n in &info.nodes {
            out.json(&NodeRow {
                cluster: &info.cluster_id,
                node: n.id,
                addr: &n.addr,
                role: if n.voter { "voter" } else { "learner" },
                leader: n.id == info.leader,
                term: info.term,
                matched: (n.matched != u64::MAX).then_some(n.matched),
            })?;
        }
        for b in &info.brokers {
            let (role, epoch, in_sync) = role_of(info, &b.set, b.id);
            let lag = lags.get(&b.id).filter(|_| role == "slave");
            out.json(&BrokerRow {
                cluster: &info.cluster_id,
                broker_set: &b.set,
                role,
                epoch,
                in_sync,
                lag_bytes: lag.map(|l| l.master_end.saturating_sub(l.acked)),
                lag_messages: lag.map(|l| l.lag_messages).filter(|n| *n != u64::MAX),
                node: b.id,
                addr: &b.addr,
                alive: b.alive,
                last_seen: rfc3339_ms(b.last_seen_ms),
            })?;
        }
        return Ok(());
    }
    let leader = if info.leader == 0 {
        "none known".to_string()
    } else {
        info.leader.to_string()
    };
    out.line(&format!(
        "cluster {}  (answered by node {}, leader {leader}, term {}, applied {})",
        info.cluster_id, info.node_id, info.term, info.applied
    ))?;
    if info.nodes.is_empty() && info.brokers.is_empty() && info.cluster_id == "standalone" {
        out.line("no controller: a standalone broker")?;
        return Ok(());
    }
    if info.nodes.is_empty() {
        out.line("this node runs no controller: ask a voter for the controller's members")?;
    } else {
        out.line(&format!(
            "{:<6} {:<24} {:<8} {:<7} {}",
            "NODE", "ADDRESS", "ROLE", "LEADER", "MATCHED"
        ))?;
    }
    for n in &info.nodes {
        out.line(&format!(
            "{:<6} {:<24} {:<8} {:<7} {}",
            n.id,
            n.addr,
            if n.voter { "voter" } else { "learner" },
            if n.id == info.leader { "*" } else { "" },
            if n.matched == u64::MAX {
                "-".to_string()
            } else {
                n.matched.to_string()
            }
        ))?;
    }
    if info.brokers.is_empty() {
        out.line("no brokers registered")?;
        return Ok(());
    }
    out.line("")?;
    out.line(&format!(
        "{:<16} {:<6} {:<7} {:<6} {:<8} {:<12} {:<10} {:<24} {:<6} {}",
        "BROKER SET",
        "NODE",
        "ROLE",
        "EPOCH",
        "IN SYNC",
        "LAG BYTES",
        "LAG MSGS",
        "ADDRESS",
        "ALIVE",
        "LAST SEEN"
    ))?;
    let mut brokers = info.brokers.clone();
    brokers.sort_by(|a, b| (&a.set, a.id).cmp(&(&b.set, b.id)));
    for b in &brokers {
        let (role, epoch, in_sync) = role_of(info, &b.set, b.id);
        let lag = lags.get(&b.id).filter(|_| role == "slave");
        let lag_bytes = lag.map_or("-".to_string(), |l| {
            l.master_end.saturating_sub(l.acked).to_string()
        });
        let lag_messages = match lag.map(|l| l.lag_messages) {
            None => "-".to_string(),
            Some(u64::MAX) => ">1000000".to_string(),
            Some(n) => n.to_string(),
        };
        out.line(&format!(
            "{:<16} {:<6} {:<7} {:<6} {:<8} {:<12} {:<10} {:<24} {:<6} {}",
            b.set,
            b.id,
            role,
            epoch,
            match in_sync {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            },
            lag_bytes,
            lag_messages,
            b.addr,
            if b.alive { "yes" } else { "NO" },
            rfc3339_ms(b.last_seen_ms)
        ))?;
    }
    Ok(())
}
