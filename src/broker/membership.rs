//! Consumer groups: membership by heartbeat, and a sticky, broker-side assignment of queues.
//!
//! Clustering mode: each topic's queues are divided evenly among the live members subscribed to
//! it; when members come or go, only the queues that must move do move. A queue is granted to
//! its new owner only once no other live member still reports holding it (the old owner
//! released it after committing) or that member's session expired, so two members do not work
//! the same queue at once in the normal case.
//!
//! Broadcasting mode: every member gets every queue of its topics; offsets are the members'.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::clock::Clock;

use quiver_protocol::{
    GroupMode, MemberInfo, PluginFailurePolicy, PluginRef, QueueRef, Subscription,
};

struct Member {
    client_id: String,
    remote: SocketAddr,
    /// Subscribed topics, sorted (derived from `subs`).
    topics: Vec<String>,
    /// Subscriptions, sorted by topic: every member of a group must have the same.
    subs: Vec<Subscription>,
    /// What the member says it still works on (it commits before it lets go).
    held: BTreeSet<QueueRef>,
    /// What the last answer gave it: it may be working on these before its next heartbeat.
    granted: BTreeSet<QueueRef>,
    last_seen: Instant,
}

struct Group {
    mode: GroupMode,
    generation: u64,
    members: BTreeMap<String, Member>,
    /// Clustering: the owner each queue should have.
    target: BTreeMap<QueueRef, String>,
    /// Queue counts the current target was computed with.
    counts: BTreeMap<String, u32>,
}

/// What a heartbeat answers.
pub(crate) struct Assignment {
    pub(crate) generation: u64,
    pub(crate) owned: Vec<QueueRef>,
    pub(crate) settled: bool,
}

pub(crate) struct Groups {
    pub(crate) session_timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
    groups: Mutex<HashMap<String, Group>>,
    /// Heartbeat times and session ages are read from it.
    clock: Clock,
}

impl Groups {
    pub(crate) fn new(
        session_timeout: Duration,
        heartbeat_interval: Duration,
        clock: Clock,
    ) -> Self {
        Self {
            session_timeout,
            heartbeat_interval,
            groups: Mutex::new(HashMap::new()),
            clock,
        }
    }

    /// Records a heartbeat and answers with the queues this member owns now.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
        client_id: &str,
        remote: SocketAddr,
        mode: GroupMode,
        subs: Vec<Subscription>,
        held: Vec<QueueRef>,
        queue_count: impl Fn(&str) -> Option<u32>,
    ) -> Result<Assignment, GroupError> {
        let now = self.clock.instant();
        let mut all = self.groups.lock().expect("groups lock");
        let g = all.entry(group.to_string()).or_insert_with(|| Group {
            mode,
            generation: 0,
            members: BTreeMap::new(),
            target: BTreeMap::new(),
            counts: BTreeMap::new(),
        });
        let mut changed = expire(g, now, self.session_timeout);
        if g.members.is_empty() {
            g.mode = mode;
        } else if g.mode != mode {
            return Err(GroupError::Mode(format!(
                "group {group:?} runs in {:?} mode; a member cannot join it in {mode:?} mode",
                g.mode
            )));
        }
        let mut subs = subs;
        subs.sort_by(|a, b| a.topic.cmp(&b.topic));
        subs.dedup();
        // Every member subscribes alike (RocketMQ silently loses messages otherwise).
        if let Some((other_id, other)) = g
            .members
            .iter()
            .find(|(id, m)| *id != member_id && m.subs != subs)
        {
            return Err(GroupError::Conflict(format!(
                "group {group:?}: member {other_id} subscribes to {}; this member to {}; every \
                 member of a group must subscribe to the same topics with the same filters \
                 (use another group for a different subscription)",
                describe_subs(&other.subs),
                describe_subs(&subs)
            )));
        }
        let topics: Vec<String> = subs.iter().map(|s| s.topic.clone()).collect();
        match g.members.get_mut(member_id) {
            Some(m) => {
                if m.subs != subs {
                    m.topics = topics;
                    m.subs = subs;
                    changed = true;
                }
                m.held = held.into_iter().collect();
                m.last_seen = now;
                m.remote = remote;
            }
            None => {
                g.members.insert(
                    member_id.to_string(),
                    Member {
                        client_id: client_id.to_string(),
                        remote,
                        topics,
                        subs,
                        held: held.into_iter().collect(),
                        granted: BTreeSet::new(),
                        last_seen: now,
                    },
                );
                changed = true;
            }
        }
        // Queue counts can change under a running group (topic update).
        let topics: BTreeSet<&String> = g.members.values().flat_map(|m| m.topics.iter()).collect();
        let counts: BTreeMap<String, u32> = topics
            .into_iter()
            .map(|t| (t.clone(), queue_count(t).unwrap_or(0)))
            .collect();
        if counts != g.counts {
            g.counts = counts;
            changed = true;
        }
        if changed {
            g.generation += 1;
            if g.mode == GroupMode::Clustering {
                g.target = rebalance(g);
            }
        }
        let a = answer(g, member_id);
        if let Some(m) = g.members.get_mut(member_id) {
            m.granted = a.owned.iter().cloned().collect();
        }
        Ok(a)
    }

    /// Removes a member at once (clean leave). Returns whether it was there.
    pub(crate) fn leave(&self, group: &str, member_id: &str) -> bool {
        let mut all = self.groups.lock().expect("groups lock");
        let Some(g) = all.get_mut(group) else {
            return false;
        };
        let was = g.members.remove(member_id).is_some();
        if was {
            g.generation += 1;
            if g.mode == GroupMode::Clustering {
                g.target = rebalance(g);
            }
        }
        was
    }

    /// Live groups: (name, mode, live members).
    pub(crate) fn list(&self) -> Vec<(String, GroupMode, u32)> {
        let now = self.clock.instant();
        let mut all = self.groups.lock().expect("groups lock");
        all.iter_mut()
            .map(|(name, g)| {
                if expire(g, now, self.session_timeout) && g.mode == GroupMode::Clustering {
                    g.generation += 1;
                    g.target = rebalance(g);
                }
                (name.clone(), g.mode, g.members.len() as u32)
            })
            .collect()
    }

    /// A group's mode, members and who owns which queue now.
    pub(crate) fn describe(
        &self,
        group: &str,
    ) -> Option<(GroupMode, Vec<MemberInfo>, BTreeMap<QueueRef, String>)> {
        let now = self.clock.instant();
        let mut all = self.groups.lock().expect("groups lock");
        let g = all.get_mut(group)?;
        if expire(g, now, self.session_timeout) && g.mode == GroupMode::Clustering {
            g.generation += 1;
            g.target = rebalance(g);
        }
        let mut owners = BTreeMap::new();
        let members = g
            .members
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .into_iter()
            .map(|id| {
                let m = &g.members[&id];
                let owned: Vec<QueueRef> = m.granted.iter().cloned().collect();
                for q in &owned {
                    owners.insert(q.clone(), id.clone());
                }
                MemberInfo {
                    member_id: id.clone(),
                    client_id: m.client_id.clone(),
                    remote: m.remote.to_string(),
                    topics: m.topics.clone(),
                    owned,
                }
            })
            .collect();
        Some((g.mode, members, owners))
    }

    /// Live members of a group.
    pub(crate) fn online(&self, group: &str) -> usize {
        let now = self.clock.instant();
        let all = self.groups.lock().expect("groups lock");
        all.get(group).map_or(0, |g| {
            g.members
                .values()
                .filter(|m| now.duration_since(m.last_seen) < self.session_timeout)
                .count()
        })
    }

    pub(crate) fn forget(&self, group: &str) {
        self.groups.lock().expect("groups lock").remove(group);
    }
}

/// What the broker remembers of a group across a restart: its members and the queues each
/// was working on, so that after a restart a queue is not handed to a new owner while its old
/// owner (still running) has not heartbeated yet.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Snapshot {
    groups: BTreeMap<String, GroupSnapshot>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct GroupSnapshot {
    broadcasting: bool,
    members: BTreeMap<String, MemberSnapshot>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct MemberSnapshot {
    client_id: String,
    remote: String,
    /// (topic, kind 0 all / 1 tag / 2 sql, expression)
    subs: Vec<(String, u8, String)>,
    /// Plugins per subscription, in the order of `subs`: (name, failure policy code).
    #[serde(default)]
    plugins: Vec<Vec<(String, u8)>>,
    working: Vec<QueueRef>,
}

impl Groups {
    /// The members of every group and what they work on, for `groups.json`.
    pub(crate) fn snapshot(&self) -> Snapshot {
        use quiver_protocol::FilterSpec;
        let all = self.groups.lock().expect("groups lock");
        let groups = all
            .iter()
            .filter(|(_, g)| !g.members.is_empty())
            .map(|(name, g)| {
                let members = g
                    .members
                    .iter()
                    .map(|(id, m)| {
                        let subs = m
                            .subs
                            .iter()
                            .map(|s| match &s.filter {
                                FilterSpec::All => (s.topic.clone(), 0, String::new()),
                                FilterSpec::Tag(e) => (s.topic.clone(), 1, e.clone()),
                                FilterSpec::Sql(e) => (s.topic.clone(), 2, e.clone()),
                            })
                            .collect();
                        let plugins = m
                            .subs
                            .iter()
                            .map(|s| {
                                s.plugins
                                    .iter()
                                    .map(|p| (p.name.clone(), p.on_error as u8))
                                    .collect()
                            })
                            .collect();
                        let working = m.held.union(&m.granted).cloned().collect();
                        let snap = MemberSnapshot {
                            client_id: m.client_id.clone(),
                            remote: m.remote.to_string(),
                            subs,
                            plugins,
                            working,
                        };
                        (id.clone(), snap)
                    })
                    .collect();
                let snap = GroupSnapshot {
                    broadcasting: g.mode == GroupMode::Broadcasting,
                    members,
                };
                (name.clone(), snap)
            })
            .collect();
        Snapshot { groups }
    }

    /// Restores members from a snapshot as if they had just heartbeated: each keeps its
    /// queues until it heartbeats again or its session expires.
    pub(crate) fn restore(&self, snap: Snapshot) {
        use quiver_protocol::FilterSpec;
        let now = self.clock.instant();
        let mut all = self.groups.lock().expect("groups lock");
        for (name, gs) in snap.groups {
            let mut members = BTreeMap::new();
            let mut target = BTreeMap::new();
            for (id, ms) in gs.members {
                let mut plugins = ms.plugins.into_iter();
                let subs: Vec<Subscription> = ms
                    .subs
                    .into_iter()
                    .map(|(topic, kind, expr)| Subscription {
                        topic,
                        filter: match kind {
                            1 => FilterSpec::Tag(expr),
                            2 => FilterSpec::Sql(expr),
                            _ => FilterSpec::All,
                        },
                        plugins: plugins
                            .next()
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(name, policy)| PluginRef {
                                name,
                                on_error: PluginFailurePolicy::from_u8(policy).unwrap_or_default(),
                            })
                            .collect(),
                    })
                    .collect();
                for q in &ms.working {
                    target.insert(q.clone(), id.clone());
                }
                let working: BTreeSet<QueueRef> = ms.working.into_iter().collect();
                members.insert(
                    id,
                    Member {
                        client_id: ms.client_id,
                        remote: ms
                            .remote
                            .parse()
                            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
                        topics: subs.iter().map(|s| s.topic.clone()).collect(),
                        subs,
                        held: working.clone(),
                        granted: working,
                        last_seen: now,
                    },
                );
            }
            let mode = if gs.broadcasting {
                GroupMode::Broadcasting
            } else {
                GroupMode::Clustering
            };
            all.insert(
                name,
                Group {
                    mode,
                    generation: 1,
                    members,
                    target: if mode == GroupMode::Clustering {
                        target
                    } else {
                        BTreeMap::new()
                    },
                    counts: BTreeMap::new(),
                },
            );
        }
    }
}

/// Why a heartbeat is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GroupError {
    /// The group runs in the other mode.
    #[error("{0}")]
    Mode(String),
    /// The member subscribes differently from the others.
    #[error("{0}")]
    Conflict(String),
}

fn describe_subs(subs: &[Subscription]) -> String {
    use quiver_protocol::FilterSpec;
    let parts: Vec<String> = subs
        .iter()
        .map(|s| {
            let filter = match &s.filter {
                FilterSpec::All => format!("{} (all)", s.topic),
                FilterSpec::Tag(e) => format!("{} (tag {e:?})", s.topic),
                FilterSpec::Sql(e) => format!("{} (sql {e:?})", s.topic),
            };
            if s.plugins.is_empty() {
                return filter;
            }
            let plugins: Vec<String> = s
                .plugins
                .iter()
                .map(|p| format!("{}:{}", p.name, p.on_error.name()))
                .collect();
            format!("{filter} plugins [{}]", plugins.join(", "))
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Drops members silent for longer than the session timeout; true when any went.
fn expire(g: &mut Group, now: Instant, timeout: Duration) -> bool {
    let before = g.members.len();
    g.members.retain(|id, m| {
        let alive = now.duration_since(m.last_seen) < timeout;
        if !alive {
            tracing::info!(member = %id, client = %m.client_id, "consumer group member timed out");
        }
        alive
    });
    g.members.len() != before
}

/// The queues `member` owns now: in clustering, its target queues that no other live member
/// still holds; in broadcasting, every queue of its topics.
fn answer(g: &Group, member: &str) -> Assignment {
    let Some(me) = g.members.get(member) else {
        return Assignment {
            generation: g.generation,
            owned: Vec::new(),
            settled: true,
        };
    };
    if g.mode == GroupMode::Broadcasting {
        let owned = me
            .topics
            .iter()
            .flat_map(|t| (0..g.counts.get(t).copied().unwrap_or(0)).map(move |q| (t.clone(), q)))
            .collect();
        return Assignment {
            generation: g.generation,
            owned,
            settled: true,
        };
    }
    let mut owned = Vec::new();
    let mut settled = true;
    for (q, owner) in &g.target {
        if owner != member {
            continue;
        }
        let busy_elsewhere = g
            .members
            .iter()
            .any(|(id, m)| id != member && (m.held.contains(q) || m.granted.contains(q)));
        if busy_elsewhere {
            settled = false;
        } else {
            owned.push(q.clone());
        }
    }
    // Queues it still holds but no longer owns: it must release them.
    if me
        .held
        .iter()
        .any(|q| g.target.get(q).map(String::as_str) != Some(member))
    {
        settled = false;
    }
    Assignment {
        generation: g.generation,
        owned,
        settled,
    }
}

/// Sticky, even assignment per topic: members keep what they have up to their quota; only
/// the surplus and the unowned queues move.
fn rebalance(g: &Group) -> BTreeMap<QueueRef, String> {
    let mut target = BTreeMap::new();
    for (topic, &n) in &g.counts {
        let members: Vec<&String> = g
            .members
            .iter()
            .filter(|(_, m)| m.topics.contains(topic))
            .map(|(id, _)| id)
            .collect();
        if members.is_empty() || n == 0 {
            continue;
        }
        let mut holdings: BTreeMap<&String, Vec<u32>> =
            members.iter().map(|m| (*m, Vec::new())).collect();
        for ((t, q), owner) in &g.target {
            if t == topic && *q < n {
                if let Some(h) = holdings.get_mut(owner) {
                    h.push(*q);
                }
            }
        }
        // Queues nobody is targeted for but a member still works on (e.g. after a broker
        // restart) count as that member's.
        for (id, m) in &g.members {
            for (t, q) in &m.held {
                if t == topic && *q < n && !g.target.contains_key(&(t.clone(), *q)) {
                    if let Some(h) = holdings.get_mut(id) {
                        if !h.contains(q) {
                            h.push(*q);
                        }
                    }
                }
            }
        }
        // When a member must give some up, it keeps the ones it is working on.
        for (id, h) in holdings.iter_mut() {
            let held = &g.members[*id].held;
            h.sort_by_key(|q| (!held.contains(&(topic.clone(), *q)), *q));
        }
        let base = n as usize / members.len();
        let extra = n as usize % members.len();
        // Members holding the most get the larger quotas, so fewer queues move.
        let mut order: Vec<&String> = members.clone();
        order.sort_by(|a, b| holdings[b].len().cmp(&holdings[a].len()).then(a.cmp(b)));
        let quota: HashMap<&String, usize> = order
            .iter()
            .enumerate()
            .map(|(i, m)| (*m, base + usize::from(i < extra)))
            .collect();
        let mut taken = BTreeSet::new();
        let mut counts: HashMap<&String, usize> = HashMap::new();
        for m in &order {
            for q in holdings[m].iter().take(quota[m]) {
                target.insert((topic.clone(), *q), (*m).clone());
                taken.insert(*q);
                *counts.entry(m).or_default() += 1;
            }
        }
        let mut free = (0..n).filter(|q| !taken.contains(q));
        for m in &order {
            while counts.get(m).copied().unwrap_or(0) < quota[m] {
                let Some(q) = free.next() else { break };
                target.insert((topic.clone(), q), (*m).clone());
                *counts.entry(m).or_default() += 1;
            }
        }
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn hb(g: &Groups, member: &str, held: &[u32]) -> Assignment {
        g.heartbeat(
            "G",
            member,
            member,
            "127.0.0.1:1".parse().unwrap(),
            GroupMode::Clustering,
            vec![Subscription::from("T")],
            held.iter().map(|q| ("T".to_string(), *q)).collect(),
            |_| Some(8),
        )
        .unwrap()
    }

    fn qs(a: &Assignment) -> Vec<u32> {
        a.owned.iter().map(|(_, q)| *q).collect()
    }

    #[test]
    fn queues_spread_evenly_and_only_the_necessary_ones_move() {
        let g = Groups::new(
            Duration::from_secs(30),
            Duration::from_secs(3),
            ManualClock::at(0).clock(),
        );
        let a = qs(&hb(&g, "a", &[]));
        assert_eq!(a.len(), 8, "a lone member owns everything");
        let b = hb(&g, "b", &[]);
        assert!(qs(&b).is_empty(), "b waits until a lets go");
        assert!(!b.settled);
        let a2 = qs(&hb(&g, "a", &a));
        assert_eq!(a2.len(), 4, "a keeps four");
        let a3 = hb(&g, "a", &a2);
        assert!(a3.settled);
        let b = qs(&hb(&g, "b", &[]));
        assert_eq!(b.len(), 4);
        assert!(a2.iter().all(|q| !b.contains(q)));
        // A third member: each of a and b gives up only what it must.
        let _ = hb(&g, "c", &[]);
        let a4 = qs(&hb(&g, "a", &a2));
        let b4 = qs(&hb(&g, "b", &b));
        assert!(
            a4.iter().all(|q| a2.contains(q)) && b4.iter().all(|q| b.contains(q)),
            "nothing moves between a and b"
        );
        // a and b report that they let go of the surplus; then c gets it.
        let _ = hb(&g, "a", &a4);
        let _ = hb(&g, "b", &b4);
        let c = qs(&hb(&g, "c", &[]));
        assert_eq!(a4.len() + b4.len() + c.len(), 8);
        assert_eq!(c.len(), 2, "8 queues over 3 members: 3, 3, 2");
        // Clean leave: c's queues go to the others at once.
        assert!(g.leave("G", "c"));
        let a5 = qs(&hb(&g, "a", &a4));
        let b5 = qs(&hb(&g, "b", &b4));
        assert_eq!(a5.len() + b5.len(), 8);
        assert!(a4.iter().all(|q| a5.contains(q)) && b4.iter().all(|q| b5.contains(q)));
    }

    #[test]
    fn a_silent_member_expires_and_its_queues_move() {
        let time = ManualClock::at(0);
        let g = Groups::new(
            Duration::from_millis(50),
            Duration::from_millis(10),
            time.clock(),
        );
        let a = qs(&hb(&g, "a", &[]));
        let _ = hb(&g, "b", &[]);
        let a = qs(&hb(&g, "a", &a));
        assert_eq!(a.len(), 4);
        time.advance(Duration::from_millis(30));
        let _ = hb(&g, "b", &[]);
        time.advance(Duration::from_millis(19));
        assert_eq!(g.online("G"), 2, "a's session (50 ms) has not expired yet");
        assert!(
            qs(&hb(&g, "b", &[])).len() < 8,
            "a's queues stay with it while its session lasts"
        );
        time.advance(Duration::from_millis(1));
        let b = qs(&hb(&g, "b", &[]));
        assert_eq!(
            b.len(),
            8,
            "a's queues (held until its session expired) now go to b"
        );
        assert_eq!(g.online("G"), 1);
    }

    #[test]
    fn broadcasting_members_each_get_every_queue_and_modes_do_not_mix() {
        let g = Groups::new(
            Duration::from_secs(30),
            Duration::from_secs(3),
            ManualClock::at(0).clock(),
        );
        let bc = |m: &str| {
            g.heartbeat(
                "B",
                m,
                m,
                "127.0.0.1:1".parse().unwrap(),
                GroupMode::Broadcasting,
                vec!["T".into()],
                vec![],
                |_| Some(3),
            )
        };
        assert_eq!(bc("x").unwrap().owned.len(), 3);
        assert_eq!(bc("y").unwrap().owned.len(), 3);
        let err = g
            .heartbeat(
                "B",
                "z",
                "z",
                "127.0.0.1:1".parse().unwrap(),
                GroupMode::Clustering,
                vec!["T".into()],
                vec![],
                |_| Some(3),
            )
            .err()
            .unwrap();
        assert!(
            matches!(&err, GroupError::Mode(m) if m.contains("Broadcasting")),
            "{err:?}"
        );
    }
}

#[cfg(test)]
mod restart_tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn after_a_restart_queues_stay_with_the_members_working_on_them() {
        let g = Groups::new(
            Duration::from_secs(30),
            Duration::from_secs(3),
            ManualClock::at(0).clock(),
        );
        let hb = |g: &Groups, m: &str, held: &[u32]| -> Vec<u32> {
            g.heartbeat(
                "G",
                m,
                m,
                "127.0.0.1:1".parse().unwrap(),
                GroupMode::Clustering,
                vec![Subscription::from("T")],
                held.iter().map(|q| ("T".to_string(), *q)).collect(),
                |_| Some(8),
            )
            .unwrap()
            .owned
            .iter()
            .map(|(_, q)| *q)
            .collect()
        };
        let a = hb(&g, "a", &[]);
        let _ = hb(&g, "b", &[]);
        let a = hb(&g, "a", &a);
        let a = hb(&g, "a", &a);
        let b = hb(&g, "b", &[]);
        assert_eq!((a.len(), b.len()), (4, 4));
        let json = serde_json::to_vec(&g.snapshot()).unwrap();

        // The broker restarts; b heartbeats first. a (restored) keeps its queues.
        let g2 = Groups::new(
            Duration::from_secs(30),
            Duration::from_secs(3),
            ManualClock::at(0).clock(),
        );
        g2.restore(serde_json::from_slice(&json).unwrap());
        let b2 = hb(&g2, "b", &b);
        assert_eq!(
            b2, b,
            "b keeps what it works on and gets nothing a still holds"
        );
        let a2 = hb(&g2, "a", &a);
        assert_eq!(a2, a);
    }
}
