//! What every request needs: one table from protocol command to (actions, resource), the
//! same one docs/SECURITY.md §4 prints.

use quiver_protocol::cmd::actions::{
    ADMIN, CONSUME, CREATE, DELETE, DESCRIBE, PLUGIN, SEND, UPDATE,
};
use quiver_protocol::names::{DLQ_PREFIX, RETRY_PREFIX};
use quiver_protocol::Request;

/// What a permission is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// A topic. A group's retry and dead-letter topics are that group instead.
    Topic(String),
    /// A consumer group or a producer group.
    Group(String),
    /// The broker (or cluster) itself: status, plugins, users.
    Cluster,
    /// What a stored record belongs to, which only a lookup tells; resolved by the caller
    /// before the check (`net::authorize`) into the topics (and producer group) of the
    /// records the command would act on.
    Stored(Stored),
}

/// Which stored records a command acts on (see [`Resource::Stored`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Every scheduled record with this id (CancelScheduled cancels one of them): the
    /// caller needs the right on the real topic of each, so a record of the same id sent
    /// to a topic of the caller's own does not stand in for another user's.
    Scheduled(u128),
    /// The record at this commit-log offset, when its id is this one (EndTransaction's half
    /// message, SendBack's pulled message): its real topic, and for a half message its
    /// producer group too.
    At {
        /// Commit-log offset.
        handle: u64,
        /// Message id.
        id: u128,
    },
}

impl Resource {
    /// A topic, with a group's retry and DLQ topics mapped to the group: whoever may
    /// consume as the group may read its retries and dead letters.
    /// The broker's other internal topics (`%SCHEDULE%`, `%HALF%`, `%HALF_OP%`,
    /// `%TRANS_CHECK_MAX%`) hold every user's scheduled and uncommitted messages: they count
    /// as the cluster, so no topic rule (not even `topic:*`) reaches them.
    pub fn topic(name: &str) -> Resource {
        for prefix in [RETRY_PREFIX, DLQ_PREFIX] {
            if let Some(group) = name.strip_prefix(prefix) {
                return Resource::Group(group.to_string());
            }
        }
        if quiver_protocol::names::is_system_topic(name) {
            return Resource::Cluster;
        }
        Resource::Topic(name.to_string())
    }

    /// How it is written in rules and messages (`topic:orders`, `group:billing`, `cluster`).
    pub fn label(&self) -> String {
        match self {
            Resource::Topic(t) => format!("topic:{t}"),
            Resource::Group(g) => format!("group:{g}"),
            Resource::Cluster => "cluster".into(),
            Resource::Stored(Stored::Scheduled(id)) => format!("the topic of message {id:032x}"),
            Resource::Stored(Stored::At { handle, .. }) => {
                format!("the topic of the message at {handle}")
            }
        }
    }
}

/// One permission a request needs: any one of `actions` on `resource`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// Action bits; holding any one of them is enough.
    pub actions: u16,
    /// On what.
    pub resource: Resource,
}

fn need(actions: u16, resource: Resource) -> Need {
    Need { actions, resource }
}

fn topic(actions: u16, name: &str) -> Need {
    need(actions, Resource::topic(name))
}

fn group(actions: u16, name: &str) -> Need {
    need(actions, Resource::Group(name.to_string()))
}

fn stored_at(actions: u16, handle: u64, id: u128) -> Need {
    need(actions, Resource::Stored(Stored::At { handle, id }))
}

fn cluster(actions: u16) -> Need {
    need(actions, Resource::Cluster)
}

/// Whether `req` changes something an operator would want in the audit log: topics, groups'
/// offsets and dead letters, plugins, users and rules, controller voters and masters.
/// Sends, reads, lists and routes are not.
pub fn is_change(req: &Request) -> bool {
    use Request as R;
    matches!(
        req,
        R::TopicCreate(_)
            | R::TopicCreateOn(_)
            | R::TopicUpdate(_)
            | R::TopicDelete(_)
            | R::GroupResetOffset(_)
            | R::GroupDelete(_)
            | R::DlqResend(_)
            | R::PluginLoad(_)
            | R::PluginReload(_)
            | R::PluginUnload(_)
            | R::PluginAttach(_)
            | R::PluginDetach(_)
            | R::UserCreate(_)
            | R::UserPassword(_)
            | R::UserDelete(_)
            | R::AclGrant(_)
            | R::AclRevoke(_)
            | R::ClusterVoter(_)
            | R::ClusterElect(_)
    )
}

/// Everything `req` needs; all of them must hold. Hello and the handshake need nothing;
/// lists and id lookups need nothing either, and are filtered instead.
pub fn needs(req: &Request) -> Vec<Need> {
    use Request as R;
    let any_on_topic = SEND | CONSUME | DESCRIBE | CREATE;
    match req {
        R::Hello(_) | R::AuthStart(_) | R::AuthFinish(_) => vec![],
        // A route is what producers and consumers ask first: any right on the topic. Its
        // auto-creation needs `create` on top (without it the flag is dropped).
        R::Route(r) => vec![topic(any_on_topic, &r.topic)],
        R::TopicRoute(r) => vec![topic(any_on_topic, &r.topic)],
        R::Send(s) => vec![topic(SEND, &s.topic)],
        R::SendSpecial(s) => match &s.mode {
            // A transactional producer also answers for its producer group's check-backs.
            quiver_protocol::SendMode::Half { group: g } => {
                vec![topic(SEND, &s.topic), group(SEND, g)]
            }
            _ => vec![topic(SEND, &s.topic)],
        },
        R::CancelScheduled(c) => vec![need(SEND, Resource::Stored(Stored::Scheduled(c.id)))],
        R::EndTransaction(e) => vec![group(SEND, &e.group), stored_at(SEND, e.handle, e.id)],
        R::PollTransactionChecks(p) => vec![group(SEND, &p.group)],
        R::Pull(p) => vec![topic(CONSUME, &p.topic)],
        R::CommitOffset(c) => vec![group(CONSUME, &c.group), topic(CONSUME, &c.topic)],
        R::FetchOffset(f) => vec![
            group(CONSUME | DESCRIBE, &f.group),
            topic(CONSUME | DESCRIBE, &f.topic),
        ],
        R::OffsetForTime(o) => vec![topic(CONSUME | DESCRIBE, &o.topic)],
        // The message sent back must be one the caller may consume: SendBack copies it into
        // the group's retry or dead-letter topic, which the group may read.
        R::SendBack(s) => vec![group(CONSUME, &s.group), stored_at(CONSUME, s.handle, s.id)],
        R::DlqResend(d) => vec![group(UPDATE, &d.group)],
        R::TopicCreate(t) => vec![topic(CREATE, &t.topic)],
        R::TopicCreateOn(t) => vec![topic(CREATE, &t.topic)],
        R::TopicUpdate(t) => vec![topic(UPDATE, &t.topic)],
        R::TopicDelete(t) => vec![topic(DELETE, &t.topic)],
        // Lists are filtered to what the user may describe.
        R::TopicList(_) | R::GroupList(_) => vec![],
        R::TopicDescribe(t) => vec![topic(DESCRIBE, &t.topic)],
        // Records of topics the user may not describe are left out of the answer.
        R::MessageById(_) => vec![],
        // Also filtered: keys of internal topics' records are indexed under those topics.
        R::MessageByKey(m) => vec![topic(DESCRIBE, &m.topic)],
        R::Heartbeat(h) => {
            let mut v = vec![group(CONSUME, &h.group)];
            v.extend(h.subscriptions.iter().map(|s| topic(CONSUME, &s.topic)));
            v
        }
        R::LeaveGroup(l) => vec![group(CONSUME, &l.group)],
        R::GroupDescribe(g) => vec![group(DESCRIBE, &g.group)],
        R::GroupResetOffset(g) => vec![group(UPDATE, &g.group), topic(DESCRIBE, &g.topic)],
        R::GroupDelete(g) => vec![group(DELETE, &g.group)],
        R::PluginLoad(_) | R::PluginReload(_) | R::PluginUnload(_) => vec![cluster(PLUGIN)],
        R::PluginList(_) | R::PluginDescribe(_) => vec![cluster(PLUGIN | DESCRIBE)],
        R::PluginAttach(a) => vec![cluster(PLUGIN), topic(UPDATE, &a.topic)],
        R::PluginDetach(d) => vec![cluster(PLUGIN), topic(UPDATE, &d.topic)],
        R::BrokerStatus(_) | R::ClusterInfo(_) => vec![cluster(DESCRIBE)],
        R::UserCreate(_)
        | R::UserPassword(_)
        | R::UserDelete(_)
        | R::UserList(_)
        | R::AclGrant(_)
        | R::AclRevoke(_)
        | R::AclList(_) => vec![cluster(ADMIN)],
        R::ClusterVoter(_) | R::ClusterElect(_) => vec![cluster(ADMIN)],
        // Between cluster nodes only: refused to anyone without a cluster certificate where
        // they are handled.
        R::Raft(_) | R::ReplicaFetch(_) | R::ReplicaState(_) => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_protocol::cmd;

    #[test]
    fn a_groups_retry_and_dead_letter_topics_belong_to_the_group() {
        assert_eq!(
            Resource::topic("%RETRY%billing"),
            Resource::Group("billing".into())
        );
        assert_eq!(
            Resource::topic("%DLQ%billing"),
            Resource::Group("billing".into())
        );
        assert_eq!(Resource::topic("orders"), Resource::Topic("orders".into()));
        // Other internal topics hold everyone's messages: the cluster's.
        assert_eq!(Resource::topic("%SCHEDULE%"), Resource::Cluster);
        assert_eq!(Resource::topic("%HALF%"), Resource::Cluster);
        // A user's own topic that merely starts with '%' stays a topic.
        assert_eq!(
            Resource::topic("%orders"),
            Resource::Topic("%orders".into())
        );
    }

    #[test]
    fn committing_an_offset_needs_the_group_and_the_topic() {
        let n = needs(&Request::CommitOffset(cmd::CommitOffset {
            group: "g".into(),
            topic: "t".into(),
            queue_id: 0,
            offset: 1,
        }));
        assert_eq!(n, vec![group(CONSUME, "g"), topic(CONSUME, "t")]);
    }
}
