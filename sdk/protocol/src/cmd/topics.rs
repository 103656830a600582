//! Topic administration.

use bytes::{BufMut, BytesMut};

use super::{call, Done, WireDecode, WireEncode};
use crate::frame::{QueueInfo, TopicSummary};
use crate::wire::{DecodeError, Reader, WriteExt};

/// Create a topic with `queues` queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicCreate {
    /// Topic.
    pub topic: String,
    /// Queue count.
    pub queues: u32,
}

/// Change the queue count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicUpdate {
    /// Topic.
    pub topic: String,
    /// New queue count.
    pub queues: u32,
}

/// Delete a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDelete {
    /// Topic.
    pub topic: String,
}

/// List topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicList;

/// Describe one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescribe {
    /// Topic.
    pub topic: String,
}

/// Topic list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicListReply {
    /// Every topic with its queue count.
    pub topics: Vec<TopicSummary>,
}

/// One topic's queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicReply {
    /// Topic.
    pub name: String,
    /// Its queues.
    pub queues: Vec<QueueInfo>,
}

call!(TopicCreate => Done, TopicCreate);
call!(TopicUpdate => Done, TopicUpdate);
call!(TopicDelete => Done, TopicDelete);
call!(TopicList => TopicListReply, TopicList);
call!(TopicDescribe => TopicReply, TopicDescribe);

impl WireEncode for TopicCreate {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.topic);
        b.put_u32_le(self.queues);
    }
}

impl WireDecode for TopicCreate {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(TopicCreate {
            topic: r.str16("topic")?,
            queues: r.u32("queues")?,
        })
    }
}

impl WireEncode for TopicUpdate {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.topic);
        b.put_u32_le(self.queues);
    }
}

impl WireDecode for TopicUpdate {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(TopicUpdate {
            topic: r.str16("topic")?,
            queues: r.u32("queues")?,
        })
    }
}

impl WireEncode for TopicDelete {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.topic);
    }
}

impl WireDecode for TopicDelete {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(TopicDelete {
            topic: r.str16("topic")?,
        })
    }
}

impl WireEncode for TopicList {
    fn encode(&self, _b: &mut BytesMut) {}
}

impl WireDecode for TopicList {
    fn decode(_r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(TopicList)
    }
}

impl WireEncode for TopicDescribe {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.topic);
    }
}

impl WireDecode for TopicDescribe {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(TopicDescribe {
            topic: r.str16("topic")?,
        })
    }
}

impl WireEncode for TopicListReply {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u32_le(self.topics.len() as u32);
        for t in &self.topics {
            b.put_str16(&t.name);
            b.put_u32_le(t.queues);
        }
    }
}

impl WireDecode for TopicListReply {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let n = r.u32("topic count")? as usize;
        let mut topics = Vec::with_capacity(n.min(r.remaining() / 6));
        for _ in 0..n {
            topics.push(TopicSummary {
                name: r.str16("topic")?,
                queues: r.u32("queues")?,
            });
        }
        Ok(TopicListReply { topics })
    }
}

impl WireEncode for TopicReply {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.name);
        b.put_u32_le(self.queues.len() as u32);
        for q in &self.queues {
            b.put_u32_le(q.queue_id);
            b.put_u64_le(q.min_offset);
            b.put_u64_le(q.max_offset);
        }
    }
}

impl WireDecode for TopicReply {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let name = r.str16("topic")?;
        let n = r.u32("queue count")? as usize;
        let mut queues = Vec::with_capacity(n.min(r.remaining() / 20));
        for _ in 0..n {
            queues.push(QueueInfo {
                queue_id: r.u32("queue id")?,
                min_offset: r.u64("min offset")?,
                max_offset: r.u64("max offset")?,
            });
        }
        Ok(TopicReply { name, queues })
    }
}
