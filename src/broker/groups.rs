//! Consumer groups: membership (heartbeat, leave), committed offsets, and the admin commands
//! that list, describe, reset and delete groups. The membership state machine itself is in
//! `membership`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use quiver_protocol::cmd::{self, Done, GroupListReply, GroupReply, HeartbeatReply, OffsetReply};
use quiver_protocol::names::{self, GroupName, TopicName};
use quiver_protocol::{FilterSpec, GroupMode, GroupQueue, GroupSummary, ResetTarget, Status};

use super::membership::GroupError;
use super::{blocking, not_found, Broker, BrokerError, Result};
use crate::filter::FilterKind;

impl Broker {
    /// `CommitOffset`.
    pub(super) fn commit_offset(&self, c: cmd::CommitOffset) -> Result<Done> {
        let group = GroupName::parse(c.group)?;
        let topic = TopicName::parse(c.topic)?;
        self.existing_queue(&topic, c.queue_id)?;
        self.offsets.commit(&group, &topic, c.queue_id, c.offset);
        Ok(Done)
    }

    /// `FetchOffset`.
    pub(super) fn fetch_offset(&self, c: cmd::FetchOffset) -> Result<OffsetReply> {
        let group = GroupName::parse(c.group)?;
        let topic = TopicName::parse(c.topic)?;
        self.existing_queue(&topic, c.queue_id)?;
        Ok(OffsetReply {
            offset: self.offsets.fetch(&group, &topic, c.queue_id),
        })
    }

    /// `Heartbeat`: join or stay in a group; the answer says which queues the member owns.
    pub(super) async fn heartbeat(
        &self,
        c: cmd::Heartbeat,
        remote: SocketAddr,
    ) -> Result<HeartbeatReply> {
        let cmd::Heartbeat {
            group,
            member_id,
            mode,
            mut subscriptions,
            mut held,
        } = c;
        let group = GroupName::parse(group)?;
        if member_id.is_empty() || member_id.len() > 255 {
            return Err(BrokerError::new(
                Status::BadRequest,
                "member id must be 1..=255 bytes",
            ));
        }
        // Validate everything before a topic may be auto-created. A bad expression is
        // refused when the member subscribes, never at the first message; equivalent
        // filters (`*` and none, `A||B` and `A || B`) compare equal by canonical form.
        if subscriptions.len() > 256 {
            return Err(BrokerError::new(
                Status::BadRequest,
                format!(
                    "{} subscriptions; a member may subscribe to at most 256 topics",
                    subscriptions.len()
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        let mut topics = Vec::with_capacity(subscriptions.len());
        for s in &mut subscriptions {
            let topic = TopicName::parse(s.topic.as_str())?;
            if !seen.insert(s.topic.clone()) {
                return Err(BrokerError::new(
                    Status::BadRequest,
                    format!("topic {:?} is subscribed more than once", s.topic),
                ));
            }
            s.filter = match self.compile_filter(&s.filter)? {
                None => FilterSpec::All,
                Some(f) => match f.kind() {
                    FilterKind::Tag => FilterSpec::Tag(f.canonical()),
                    FilterKind::Sql => FilterSpec::Sql(f.canonical()),
                },
            };
            topics.push(topic);
        }
        for topic in &topics {
            // A member may cause its own group's retry and dead-letter topics to be
            // created; no other system topic is created for a client.
            let own = **topic == names::retry_topic(&group) || **topic == names::dlq_topic(&group);
            self.route(topic, own || !names::is_system_topic(topic))
                .await?;
        }
        // Only real queues of subscribed topics count as held (bounded memory).
        held.retain(|(t, q)| seen.contains(t) && self.topics.queues(t).is_some_and(|n| *q < n));
        let a = self
            .groups
            .heartbeat(
                &group,
                &member_id,
                &member_id,
                remote,
                mode,
                subscriptions,
                held,
                |t| self.topics.queues(t),
            )
            .map_err(|e| match e {
                GroupError::Mode(m) => BrokerError::new(Status::BadRequest, m),
                GroupError::Conflict(m) => BrokerError::new(Status::SubscriptionConflict, m),
            })?;
        Ok(HeartbeatReply {
            generation: a.generation,
            session_timeout_ms: self.groups.session_timeout.as_millis() as u32,
            heartbeat_interval_ms: self.groups.heartbeat_interval.as_millis() as u32,
            settled: a.settled,
            owned: a.owned,
        })
    }

    /// `LeaveGroup`: the member's queues move to the others at once.
    pub(super) fn leave_group(&self, c: cmd::LeaveGroup) -> Result<Done> {
        let group = GroupName::parse(c.group)?;
        if self.groups.leave(&group, &c.member_id) {
            tracing::info!(%group, member = %c.member_id, "consumer left its group");
        }
        Ok(Done)
    }

    /// `GroupList`: groups with committed offsets or live members.
    pub(super) fn group_list(&self) -> GroupListReply {
        let mut list: BTreeMap<String, GroupSummary> = self
            .offsets
            .groups()
            .into_iter()
            .map(|name| {
                let g = GroupSummary {
                    name: name.clone(),
                    mode: GroupMode::Clustering,
                    members: 0,
                };
                (name, g)
            })
            .collect();
        for (name, mode, members) in self.groups.list() {
            if members > 0 || list.contains_key(&name) {
                list.insert(
                    name.clone(),
                    GroupSummary {
                        name,
                        mode,
                        members,
                    },
                );
            }
        }
        GroupListReply {
            groups: list.into_values().collect(),
        }
    }

    /// `GroupDescribe`: members, owners, offsets and queue ends.
    pub(super) fn describe_group(&self, c: cmd::GroupDescribe) -> Result<GroupReply> {
        let group = GroupName::parse(c.group)?;
        let live = self.groups.describe(&group);
        let committed = self.offsets.of_group(&group);
        if live.is_none() && committed.is_empty() {
            return Err(BrokerError::new(
                Status::GroupNotFound,
                format!("group {group:?} has no members and no committed offsets"),
            ));
        }
        let (mode, members, owners) =
            live.unwrap_or((GroupMode::Clustering, Vec::new(), BTreeMap::new()));
        let mut topics: BTreeSet<String> = committed.iter().map(|(t, _, _)| t.clone()).collect();
        topics.extend(members.iter().flat_map(|m| m.topics.iter().cloned()));
        let mut queues = Vec::new();
        for topic in topics {
            let n = self.topics.queues(&topic).unwrap_or(0);
            for q in 0..n {
                let committed_offset = committed
                    .iter()
                    .find(|(t, qq, _)| *t == topic && *qq == q)
                    .map(|(_, _, o)| *o);
                queues.push(GroupQueue {
                    topic: topic.clone(),
                    queue_id: q,
                    committed: committed_offset,
                    max_offset: self.store.queue_bounds(&topic, q).1,
                    owner: owners.get(&(topic.clone(), q)).cloned(),
                });
            }
        }
        Ok(GroupReply {
            name: group.into_string(),
            mode,
            members,
            queues,
        })
    }

    /// `GroupResetOffset`: moves a group's offsets on one topic.
    pub(super) async fn reset_offsets(&self, c: cmd::GroupResetOffset) -> Result<Done> {
        let cmd::GroupResetOffset {
            group,
            topic,
            target,
            force,
        } = c;
        let group = GroupName::parse(group)?;
        let topic = TopicName::parse(topic)?;
        let n = self
            .topics
            .queues(&topic)
            .ok_or_else(|| not_found(&topic))?;
        // A misspelled name must not create a group.
        if self.offsets.of_group(&group).is_empty()
            && !self
                .groups
                .list()
                .iter()
                .any(|(g, _, _)| g == group.as_str())
        {
            return Err(BrokerError::new(
                Status::GroupNotFound,
                format!("group {group:?} has no members and no committed offsets; check the name (a group exists once a member joined or committed an offset)"),
            ));
        }
        self.refuse_if_online(&group, force, "reset its offsets")?;
        for q in 0..n {
            let (min, max) = self.store.queue_bounds(&topic, q);
            let offset = match target {
                ResetTarget::First => min,
                ResetTarget::Last => max,
                ResetTarget::Offset(o) => o.clamp(min, max),
                ResetTarget::Timestamp(ts) => {
                    let store = self.store.clone();
                    let t = topic.clone();
                    blocking(move || store.offset_for_timestamp(&t, q, ts)).await??
                }
            };
            self.offsets.commit(&group, &topic, q, offset);
        }
        tracing::info!(%group, %topic, ?target, "group offsets reset");
        Ok(Done)
    }

    /// `GroupDelete`: forgets a group's offsets and members.
    pub(super) fn delete_group(&self, c: cmd::GroupDelete) -> Result<Done> {
        let group = GroupName::parse(c.group)?;
        self.refuse_if_online(&group, c.force, "delete it")?;
        let had = self.offsets.delete_group(&group);
        let live = self.groups.online(&group) > 0;
        self.groups.forget(&group);
        if !had && !live {
            return Err(BrokerError::new(
                Status::GroupNotFound,
                format!("group {group:?} has no members and no committed offsets"),
            ));
        }
        tracing::info!(%group, "group deleted");
        Ok(Done)
    }

    fn refuse_if_online(&self, group: &str, force: bool, what: &str) -> Result<()> {
        let online = self.groups.online(group);
        if online > 0 && !force {
            return Err(BrokerError::new(
                Status::GroupOnline,
                format!(
                    "group {group:?} has {online} live member(s); stop them first, or use --force \
                     to {what} anyway (live members may then overwrite offsets with their next commit)"
                ),
            ));
        }
        Ok(())
    }
}
