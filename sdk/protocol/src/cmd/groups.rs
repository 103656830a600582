//! Consumer groups: membership, description, offsets resets and deletion.

use bytes::{BufMut, BytesMut};

use super::{call, Done, WireDecode, WireEncode};
use crate::frame::{
    get_mode, get_queue_refs, put_queue_refs, FilterSpec, GroupMode, GroupQueue, GroupSummary,
    MemberInfo, QueueRef, ResetTarget, Subscription,
};
use crate::plugins::{get_plugin_refs, put_plugin_refs};
use crate::wire::{DecodeError, Reader, WriteExt};

/// Join or stay in a group, reporting the queues this member still works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Consumer group.
    pub group: String,
    /// This member's id (unique per consumer instance).
    pub member_id: String,
    /// Clustering or broadcasting.
    pub mode: GroupMode,
    /// What the member subscribes to (every member of a group must subscribe alike).
    pub subscriptions: Vec<Subscription>,
    /// Queues the member still holds (processing or committing).
    pub held: Vec<QueueRef>,
}

/// The queues this member owns now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatReply {
    /// Increases whenever the group's assignment changes.
    pub generation: u64,
    /// A member silent for this long is removed.
    pub session_timeout_ms: u32,
    /// How often to heartbeat.
    pub heartbeat_interval_ms: u32,
    /// False while queues are still moving (heartbeat again soon).
    pub settled: bool,
    /// Queues owned by this member: work on exactly these.
    pub owned: Vec<QueueRef>,
}

/// Leave a group now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveGroup {
    /// Consumer group.
    pub group: String,
    /// Member id.
    pub member_id: String,
}

/// List groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupList;

/// Group list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListReply {
    /// Every group the broker knows.
    pub groups: Vec<GroupSummary>,
}

/// Describe a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescribe {
    /// Consumer group.
    pub group: String,
}

/// One group in detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupReply {
    /// Group name.
    pub name: String,
    /// Mode.
    pub mode: GroupMode,
    /// Live members.
    pub members: Vec<MemberInfo>,
    /// Queues of the subscribed topics with offsets.
    pub queues: Vec<GroupQueue>,
}

/// Move a group's offsets on a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupResetOffset {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Where to.
    pub target: ResetTarget,
    /// Allowed while members are online.
    pub force: bool,
}

/// Delete a group's offsets (refused while members are online unless `force`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDelete {
    /// Consumer group.
    pub group: String,
    /// Allowed while members are online.
    pub force: bool,
}

call!(Heartbeat => HeartbeatReply, Heartbeat);
call!(LeaveGroup => Done, LeaveGroup);
call!(GroupList => GroupListReply, GroupList);
call!(GroupDescribe => GroupReply, GroupDescribe);
call!(GroupResetOffset => Done, GroupResetOffset);
call!(GroupDelete => Done, GroupDelete);

impl WireEncode for Heartbeat {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.group);
        b.put_str16(&self.member_id);
        b.put_u8(self.mode as u8);
        b.put_u16_le(self.subscriptions.len() as u16);
        for s in &self.subscriptions {
            b.put_str16(&s.topic);
            s.filter.encode(b);
            put_plugin_refs(b, &s.plugins);
        }
        put_queue_refs(b, &self.held);
    }
}

impl WireDecode for Heartbeat {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let group = r.str16("group")?;
        let member_id = r.str16("member id")?;
        let mode = get_mode(r)?;
        let n = r.u16("subscription count")? as usize;
        let mut subscriptions = Vec::with_capacity(n.min(r.remaining() / 5));
        for _ in 0..n {
            let topic = r.str16("topic")?;
            let filter = FilterSpec::decode(r)?;
            let plugins = get_plugin_refs(r)?;
            subscriptions.push(Subscription {
                topic,
                filter,
                plugins,
            });
        }
        Ok(Heartbeat {
            group,
            member_id,
            mode,
            subscriptions,
            held: get_queue_refs(r)?,
        })
    }
}

impl WireEncode for HeartbeatReply {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u64_le(self.generation);
        b.put_u32_le(self.session_timeout_ms);
        b.put_u32_le(self.heartbeat_interval_ms);
        b.put_u8(self.settled as u8);
        put_queue_refs(b, &self.owned);
    }
}

impl WireDecode for HeartbeatReply {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(HeartbeatReply {
            generation: r.u64("generation")?,
            session_timeout_ms: r.u32("session timeout")?,
            heartbeat_interval_ms: r.u32("heartbeat interval")?,
            settled: r.bool("settled")?,
            owned: get_queue_refs(r)?,
        })
    }
}

impl WireEncode for LeaveGroup {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.group);
        b.put_str16(&self.member_id);
    }
}

impl WireDecode for LeaveGroup {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(LeaveGroup {
            group: r.str16("group")?,
            member_id: r.str16("member id")?,
        })
    }
}

impl WireEncode for GroupList {
    fn encode(&self, _b: &mut BytesMut) {}
}

impl WireDecode for GroupList {
    fn decode(_r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(GroupList)
    }
}

impl WireEncode for GroupListReply {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u32_le(self.groups.len() as u32);
        for g in &self.groups {
            b.put_str16(&g.name);
            b.put_u8(g.mode as u8);
            b.put_u32_le(g.members);
        }
    }
}

impl WireDecode for GroupListReply {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let n = r.u32("group count")? as usize;
        let mut groups = Vec::with_capacity(n.min(r.remaining() / 7));
        for _ in 0..n {
            let name = r.str16("group")?;
            let mode = get_mode(r)?;
            groups.push(GroupSummary {
                name,
                mode,
                members: r.u32("members")?,
            });
        }
        Ok(GroupListReply { groups })
    }
}

impl WireEncode for GroupDescribe {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.group);
    }
}

impl WireDecode for GroupDescribe {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(GroupDescribe {
            group: r.str16("group")?,
        })
    }
}

impl WireEncode for GroupReply {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.name);
        b.put_u8(self.mode as u8);
        b.put_u32_le(self.members.len() as u32);
        for m in &self.members {
            b.put_str16(&m.member_id);
            b.put_str16(&m.client_id);
            b.put_str16(&m.remote);
            b.put_u16_le(m.topics.len() as u16);
            for t in &m.topics {
                b.put_str16(t);
            }
            put_queue_refs(b, &m.owned);
        }
        b.put_u32_le(self.queues.len() as u32);
        for q in &self.queues {
            b.put_str16(&q.topic);
            b.put_u32_le(q.queue_id);
            b.put_u8(q.committed.is_some() as u8);
            b.put_u64_le(q.committed.unwrap_or(0));
            b.put_u64_le(q.max_offset);
            b.put_str16(q.owner.as_deref().unwrap_or(""));
        }
    }
}

impl WireDecode for GroupReply {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let name = r.str16("group")?;
        let mode = get_mode(r)?;
        let n = r.u32("member count")? as usize;
        let mut members = Vec::with_capacity(n.min(r.remaining() / 10));
        for _ in 0..n {
            let member_id = r.str16("member id")?;
            let client_id = r.str16("client id")?;
            let remote = r.str16("remote")?;
            let nt = r.u16("topic count")? as usize;
            let mut topics = Vec::with_capacity(nt.min(r.remaining() / 2));
            for _ in 0..nt {
                topics.push(r.str16("topic")?);
            }
            members.push(MemberInfo {
                member_id,
                client_id,
                remote,
                topics,
                owned: get_queue_refs(r)?,
            });
        }
        let n = r.u32("queue count")? as usize;
        let mut queues = Vec::with_capacity(n.min(r.remaining() / 25));
        for _ in 0..n {
            let topic = r.str16("topic")?;
            let queue_id = r.u32("queue id")?;
            let has = r.bool("committed present")?;
            let committed = r.u64("committed")?;
            let max_offset = r.u64("max offset")?;
            let owner = r.str16("owner")?;
            queues.push(GroupQueue {
                topic,
                queue_id,
                committed: has.then_some(committed),
                max_offset,
                owner: (!owner.is_empty()).then_some(owner),
            });
        }
        Ok(GroupReply {
            name,
            mode,
            members,
            queues,
        })
    }
}

impl WireEncode for GroupResetOffset {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.group);
        b.put_str16(&self.topic);
        let (kind, value) = match self.target {
            ResetTarget::First => (0u8, 0i64),
            ResetTarget::Last => (1, 0),
            ResetTarget::Timestamp(t) => (2, t),
            ResetTarget::Offset(o) => (3, o as i64),
        };
        b.put_u8(kind);
        b.put_i64_le(value);
        b.put_u8(self.force as u8);
    }
}

impl WireDecode for GroupResetOffset {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let group = r.str16("group")?;
        let topic = r.str16("topic")?;
        let kind = r.u8("reset target")?;
        let value = r.i64("reset value")?;
        let target = match kind {
            0 => ResetTarget::First,
            1 => ResetTarget::Last,
            2 => ResetTarget::Timestamp(value),
            3 => ResetTarget::Offset(value as u64),
            k => {
                return Err(DecodeError::Invalid {
                    field: "reset target",
                    reason: format!("unknown value {k}"),
                })
            }
        };
        Ok(GroupResetOffset {
            group,
            topic,
            target,
            force: r.bool("force")?,
        })
    }
}

impl WireEncode for GroupDelete {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.group);
        b.put_u8(self.force as u8);
    }
}

impl WireDecode for GroupDelete {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(GroupDelete {
            group: r.str16("group")?,
            force: r.bool("force")?,
        })
    }
}
