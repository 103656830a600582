//! The controller's state machine: cluster metadata changed only by commands from the Raft
//! log, applied in log order on every controller node. Pure and deterministic: time enters
//! only as values inside commands (the leader's clock when it proposed them), so every node
//! computes the same state from the same log.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A change to the cluster metadata: one Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A broker announces itself as a member of a broker set (first start, or a restart with
    /// a new address). `at_ms` starts its lease.
    RegisterBroker {
        /// Broker set name.
        set: String,
        /// The broker's node id.
        node_id: u64,
        /// The address clients reach it on.
        addr: SocketAddr,
        /// The proposer's clock, ms since the epoch.
        at_ms: i64,
    },
    /// A broker renews its lease.
    Heartbeat {
        /// The broker's node id.
        node_id: u64,
        /// The proposer's clock, ms since the epoch.
        at_ms: i64,
    },
    /// A topic's queues on broker sets: `(set, queue count)` in order; the topic's global
    /// queue ids run over them in that order.
    SetTopicRoute {
        /// Topic.
        topic: String,
        /// Broker sets and their queue counts.
        sets: Vec<(String, u32)>,
        /// Refused when the topic already has a route (a create, not an update).
        #[serde(default)]
        only_new: bool,
    },
    /// A set's master reports which of its slaves are in sync (for the master's epoch only).
    SetInSync {
        /// Broker set.
        set: String,
        /// The reporting master's epoch; a report from an older epoch is refused.
        epoch: u64,
        /// The reporting master.
        master: u64,
        /// Slaves in sync.
        in_sync: Vec<u64>,
    },
    /// A set gets a new master (failover, or a switch-over): `node`, a registered broker of
    /// the set, replaces the master of `epoch`; the epoch goes up by one.
    ElectMaster {
        /// Broker set.
        set: String,
        /// The epoch being replaced; a stale election is refused.
        epoch: u64,
        /// The new master.
        node: u64,
    },
    /// A topic is removed from routing.
    DeleteTopic {
        /// Topic.
        topic: String,
    },
    /// Users and access rules change (src/auth's whole document, JSON): refused unless the
    /// stored document is still at version `expect`, so two nodes' concurrent changes do not
    /// overwrite each other.
    SetAuth {
        /// The version the change was made on.
        expect: u64,
        /// The new document.
        json: String,
    },
}

/// Users and access rules as the cluster stores them: every node applies the newest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthDoc {
    /// Raised by one at every change; 0 before the first.
    pub version: u64,
    /// The document (src/auth's `auth.json` layout).
    pub json: String,
}

/// What applying a command answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Applied.
    Ok,
    /// Refused, with the reason (the state did not change).
    Refused(String),
}

/// A broker as the controller knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerEntry {
    /// Broker set name.
    pub set: String,
    /// Address clients reach it on.
    pub addr: SocketAddr,
    /// Last registration or heartbeat, ms since the epoch (the proposer's clock).
    pub last_seen_ms: i64,
}

/// A broker set's roles: which of its brokers is the master, since which epoch. The other
/// brokers of the set are slaves that replicate the master's commit log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetState {
    /// The master's node id.
    pub master: u64,
    /// Raised every time the set gets a new master; a master of an older epoch is fenced.
    pub epoch: u64,
    /// The slaves the master reports in sync (candidates for a failover).
    #[serde(default)]
    pub in_sync: std::collections::BTreeSet<u64>,
}

/// The cluster metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Brokers by node id.
    pub brokers: BTreeMap<u64, BrokerEntry>,
    /// Topic routes: topic -> (broker set, queue count), in global queue order.
    pub routes: BTreeMap<String, Vec<(String, u32)>>,
    /// Broker sets: their master and its epoch.
    #[serde(default)]
    pub sets: BTreeMap<String, SetState>,
    /// Topics whose route was deleted (and not created again since): a broker that missed
    /// the deletion (it was down) deletes its copy when it next applies the routes.
    #[serde(default)]
    pub deleted: std::collections::BTreeSet<String>,
    /// Users and access rules, shared by every node.
    #[serde(default)]
    pub auth: AuthDoc,
}

impl ClusterState {
    /// Applies one command.
    pub fn apply(&mut self, cmd: &Command) -> Reply {
        match cmd {
            Command::RegisterBroker {
                set,
                node_id,
                addr,
                at_ms,
            } => {
                if let Some(b) = self.brokers.get(node_id) {
                    if &b.set != set {
                        return Reply::Refused(format!(
                            "node {node_id} is a member of broker set {}; it cannot join {set}",
                            b.set
                        ));
                    }
                }
                // The first broker of a set is its master (epoch 1); the next ones are slaves.
                if self.sets.get(set).is_none_or(|st| st.master == 0) {
                    self.sets.insert(
                        set.clone(),
                        SetState {
                            master: *node_id,
                            epoch: self.sets.get(set).map_or(0, |st| st.epoch) + 1,
                            in_sync: Default::default(),
                        },
                    );
                }
                let last_seen_ms = self
                    .brokers
                    .get(node_id)
                    .map_or(*at_ms, |b| b.last_seen_ms.max(*at_ms));
                self.brokers.insert(
                    *node_id,
                    BrokerEntry {
                        set: set.clone(),
                        addr: *addr,
                        last_seen_ms,
                    },
                );
                Reply::Ok
            }
            Command::Heartbeat { node_id, at_ms } => match self.brokers.get_mut(node_id) {
                Some(b) => {
                    // A heartbeat proposed with an older clock never moves a lease back.
                    b.last_seen_ms = b.last_seen_ms.max(*at_ms);
                    // A set registered before sets had masters gets its heartbeating broker.
                    let set = b.set.clone();
                    if self.sets.get(&set).is_none_or(|st| st.master == 0) {
                        let epoch = self.sets.get(&set).map_or(0, |st| st.epoch) + 1;
                        self.sets.insert(
                            set,
                            SetState {
                                master: *node_id,
                                epoch,
                                in_sync: Default::default(),
                            },
                        );
                    }
                    Reply::Ok
                }
                None => Reply::Refused(format!("node {node_id} is not registered")),
            },
            Command::SetTopicRoute {
                topic,
                sets,
                only_new,
            } => {
                if *only_new && self.routes.contains_key(topic) {
                    return Reply::Refused(format!("topic {topic} already has a route"));
                }
                if sets.is_empty() || sets.iter().any(|(_, n)| *n == 0) {
                    return Reply::Refused(format!(
                        "topic {topic}: every broker set in a route needs at least one queue"
                    ));
                }
                self.routes.insert(topic.clone(), sets.clone());
                self.deleted.remove(topic);
                Reply::Ok
            }
            Command::SetInSync {
                set,
                epoch,
                master,
                in_sync,
            } => match self.sets.get_mut(set) {
                Some(st) if st.epoch == *epoch && st.master == *master => {
                    // Only registered brokers of the set, never the master itself.
                    let members: std::collections::BTreeSet<u64> = in_sync
                        .iter()
                        .copied()
                        .filter(|n| {
                            *n != *master && self.brokers.get(n).is_some_and(|b| &b.set == set)
                        })
                        .collect();
                    st.in_sync = members;
                    Reply::Ok
                }
                _ => Reply::Refused(format!(
                    "node {master} is not the master of broker set {set} in epoch {epoch}"
                )),
            },
            Command::ElectMaster { set, epoch, node } => {
                let member = self.brokers.get(node).is_some_and(|b| &b.set == set);
                match self.sets.get_mut(set) {
                    // Only an in-sync slave holds everything the master acknowledged.
                    Some(st)
                        if st.epoch == *epoch
                            && st.master != *node
                            && member
                            && st.in_sync.contains(node) =>
                    {
                        st.master = *node;
                        st.epoch += 1;
                        st.in_sync.clear();
                        Reply::Ok
                    }
                    _ => Reply::Refused(format!(
                        "node {node} cannot replace the master of broker set {set} in epoch \
                         {epoch}: it is not an in-sync slave of that set in that epoch"
                    )),
                }
            }
            Command::DeleteTopic { topic } => match self.routes.remove(topic) {
                Some(_) => {
                    self.deleted.insert(topic.clone());
                    Reply::Ok
                }
                None => Reply::Refused(format!("topic {topic} has no route")),
            },
            Command::SetAuth { expect, json } => {
                if self.auth.version != *expect {
                    return Reply::Refused(format!(
                        "users and rules changed meanwhile (version {} now, {expect} expected); \
                         retry",
                        self.auth.version
                    ));
                }
                self.auth = AuthDoc {
                    version: expect + 1,
                    json: json.clone(),
                };
                Reply::Ok
            }
        }
    }

    /// The master of `set`, if it has a broker.
    pub fn broker_of(&self, set: &str) -> Option<(u64, &BrokerEntry)> {
        let master = self.sets.get(set)?.master;
        self.brokers.get(&master).map(|b| (master, b))
    }

    /// `node`'s role: `Some((master id, master address, epoch))` of its set.
    pub fn master_for(&self, node: u64) -> Option<(u64, SocketAddr, u64)> {
        let set = &self.brokers.get(&node)?.set;
        let st = self.sets.get(set)?;
        let m = self.brokers.get(&st.master)?;
        Some((st.master, m.addr, st.epoch))
    }

    /// Whether a broker's lease is still valid at `now_ms`.
    pub fn alive(&self, node_id: u64, now_ms: i64, lease_ms: i64) -> bool {
        self.brokers
            .get(&node_id)
            .is_some_and(|b| now_ms < b.last_seen_ms.saturating_add(lease_ms))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn leases_follow_heartbeats_and_never_move_back() {
        let mut s = ClusterState::default();
        let reg = Command::RegisterBroker {
            set: "a".into(),
            node_id: 1,
            addr: addr(1),
            at_ms: 1_000,
        };
        assert_eq!(s.apply(&reg), Reply::Ok);
        assert!(s.alive(1, 30_999, 30_000));
        assert!(!s.alive(1, 31_000, 30_000));
        s.apply(&Command::Heartbeat {
            node_id: 1,
            at_ms: 20_000,
        });
        s.apply(&Command::Heartbeat {
            node_id: 1,
            at_ms: 5_000,
        });
        assert!(s.alive(1, 49_999, 30_000));
        assert!(!s.alive(2, 0, 30_000));
        assert!(matches!(
            s.apply(&Command::Heartbeat {
                node_id: 2,
                at_ms: 1
            }),
            Reply::Refused(_)
        ));
        // A node cannot move to another broker set.
        let other = Command::RegisterBroker {
            set: "b".into(),
            node_id: 1,
            addr: addr(1),
            at_ms: 2,
        };
        let before = s.clone();
        assert!(matches!(s.apply(&other), Reply::Refused(_)));
        assert_eq!(s, before);
        // A second broker of a set is its slave; the first stays master, also when it
        // registers again.
        let second = Command::RegisterBroker {
            set: "a".into(),
            node_id: 2,
            addr: addr(2),
            at_ms: 3,
        };
        assert_eq!(s.apply(&second), Reply::Ok);
        assert_eq!(s.apply(&reg), Reply::Ok);
        assert_eq!(s.broker_of("a").map(|(id, _)| id), Some(1));
        assert_eq!(s.master_for(2), Some((1, addr(1), 1)));
        assert_eq!(s.master_for(1), Some((1, addr(1), 1)));
        // The master reports its in-sync slaves; others and stale epochs cannot.
        let report = |master, epoch, in_sync: Vec<u64>| Command::SetInSync {
            set: "a".into(),
            epoch,
            master,
            in_sync,
        };
        assert_eq!(s.apply(&report(1, 1, vec![2, 1, 9])), Reply::Ok);
        assert_eq!(s.sets["a"].in_sync, std::collections::BTreeSet::from([2]));
        assert!(matches!(s.apply(&report(2, 1, vec![])), Reply::Refused(_)));
        assert!(matches!(s.apply(&report(1, 0, vec![])), Reply::Refused(_)));
        assert_eq!(s.sets["a"].in_sync, std::collections::BTreeSet::from([2]));
        // An election replaces the master of its epoch once; the old master's reports are
        // refused from then on.
        let elect = |epoch, node| Command::ElectMaster {
            set: "a".into(),
            epoch,
            node,
        };
        assert!(
            matches!(s.apply(&elect(1, 9)), Reply::Refused(_)),
            "not a broker of a"
        );
        assert_eq!(s.apply(&elect(1, 2)), Reply::Ok);
        assert_eq!(s.master_for(1), Some((2, addr(2), 2)));
        assert!(s.sets["a"].in_sync.is_empty());
        assert!(
            matches!(s.apply(&elect(1, 1)), Reply::Refused(_)),
            "stale epoch"
        );
        assert!(matches!(s.apply(&report(1, 1, vec![2])), Reply::Refused(_)));
        assert!(
            s.alive(1, 49_999, 30_000),
            "a re-registration never moves a lease back"
        );
    }

    #[test]
    fn routes_need_queues_and_deleting_a_missing_route_is_refused() {
        let mut s = ClusterState::default();
        let bad = Command::SetTopicRoute {
            topic: "t".into(),
            sets: vec![("a".into(), 0)],
            only_new: false,
        };
        assert!(matches!(s.apply(&bad), Reply::Refused(_)));
        let good = Command::SetTopicRoute {
            topic: "t".into(),
            sets: vec![("a".into(), 4), ("b".into(), 4)],
            only_new: true,
        };
        assert_eq!(s.apply(&good), Reply::Ok);
        assert_eq!(s.routes["t"].len(), 2);
        // A create does not replace a route; an update does.
        assert!(matches!(s.apply(&good), Reply::Refused(_)));
        let update = Command::SetTopicRoute {
            topic: "t".into(),
            sets: vec![("a".into(), 8), ("b".into(), 8)],
            only_new: false,
        };
        assert_eq!(s.apply(&update), Reply::Ok);
        assert_eq!(s.routes["t"][1], ("b".to_string(), 8));
        assert_eq!(
            s.apply(&Command::DeleteTopic { topic: "t".into() }),
            Reply::Ok
        );
        // Users: a change made on an older version is refused.
        let set = |expect: u64, json: &str| Command::SetAuth {
            expect,
            json: json.into(),
        };
        assert_eq!(s.apply(&set(0, "a")), Reply::Ok);
        assert!(matches!(s.apply(&set(0, "b")), Reply::Refused(_)));
        assert_eq!(s.apply(&set(1, "c")), Reply::Ok);
        assert_eq!((s.auth.version, s.auth.json.as_str()), (2, "c"));
        assert!(
            s.deleted.contains("t"),
            "a deleted route leaves a tombstone"
        );
        assert!(matches!(
            s.apply(&Command::DeleteTopic { topic: "t".into() }),
            Reply::Refused(_)
        ));
    }

    fn arb_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (
                0u64..4,
                0u16..3,
                0i64..100,
                prop_oneof![Just("a"), Just("b")]
            )
                .prop_map(|(node_id, p, at_ms, set)| Command::RegisterBroker {
                    set: set.into(),
                    node_id,
                    addr: addr(p),
                    at_ms
                }),
            (0u64..4, 0i64..100).prop_map(|(node_id, at_ms)| Command::Heartbeat { node_id, at_ms }),
            (
                prop_oneof![Just("t"), Just("u")],
                proptest::collection::vec((prop_oneof![Just("a"), Just("b")], 0u32..3), 0..3),
                any::<bool>()
            )
                .prop_map(|(topic, sets, only_new)| Command::SetTopicRoute {
                    topic: topic.into(),
                    sets: sets.into_iter().map(|(s, n)| (s.to_string(), n)).collect(),
                    only_new
                }),
            prop_oneof![Just("t"), Just("u")]
                .prop_map(|t| Command::DeleteTopic { topic: t.into() }),
            (0u64..3, 0u64..4).prop_map(|(epoch, node)| Command::ElectMaster {
                set: "a".into(),
                epoch,
                node
            }),
            (0u64..4, 0u64..3, proptest::collection::vec(0u64..4, 0..3)).prop_map(
                |(master, epoch, in_sync)| Command::SetInSync {
                    set: "a".into(),
                    epoch,
                    master,
                    in_sync
                }
            ),
        ]
    }

    proptest! {
        /// Replicas agree: the same log gives the same state and the same replies, also
        /// after a round trip of the state through its snapshot encoding midway.
        #[test]
        fn the_same_log_gives_the_same_state(log in proptest::collection::vec(arb_command(), 0..40), cut in 0usize..40) {
            let (mut a, mut b) = (ClusterState::default(), ClusterState::default());
            for (i, c) in log.iter().enumerate() {
                if i == cut {
                    b = serde_json::from_slice(&serde_json::to_vec(&b).unwrap()).unwrap();
                }
                prop_assert_eq!(a.apply(c), b.apply(c));
            }
            prop_assert_eq!(a, b);
        }
    }
}
