//! A consumer group's offsets, and offsets by time.

use bytes::{BufMut, BytesMut};

use super::{call, Done, WireDecode, WireEncode};
use crate::wire::{DecodeError, Reader, WriteExt};

/// Store a group's offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOffset {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue_id: u32,
    /// Next offset to consume.
    pub offset: u64,
}

/// Read a group's offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOffset {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue_id: u32,
}

/// First offset stored at or after a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetForTime {
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue_id: u32,
    /// ms since the epoch.
    pub timestamp_ms: i64,
}

/// An offset, if there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetReply {
    /// `None` when nothing is committed / found.
    pub offset: Option<u64>,
}

call!(CommitOffset => Done, CommitOffset);
call!(FetchOffset => OffsetReply, FetchOffset);
call!(OffsetForTime => OffsetReply, OffsetForTime);

impl WireEncode for CommitOffset {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.group);
        b.put_str16(&self.topic);
        b.put_u32_le(self.queue_id);
        b.put_u64_le(self.offset);
    }
}

impl WireDecode for CommitOffset {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(CommitOffset {
            group: r.str16("group")?,
            topic: r.str16("topic")?,
            queue_id: r.u32("queue id")?,
            offset: r.u64("offset")?,
        })
    }
}

impl WireEncode for FetchOffset {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.group);
        b.put_str16(&self.topic);
        b.put_u32_le(self.queue_id);
    }
}

impl WireDecode for FetchOffset {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(FetchOffset {
            group: r.str16("group")?,
            topic: r.str16("topic")?,
            queue_id: r.u32("queue id")?,
        })
    }
}

impl WireEncode for OffsetForTime {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.topic);
        b.put_u32_le(self.queue_id);
        b.put_i64_le(self.timestamp_ms);
    }
}

impl WireDecode for OffsetForTime {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(OffsetForTime {
            topic: r.str16("topic")?,
            queue_id: r.u32("queue id")?,
            timestamp_ms: r.i64("timestamp")?,
        })
    }
}

impl WireEncode for OffsetReply {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u8(self.offset.is_some() as u8);
        b.put_u64_le(self.offset.unwrap_or(0));
    }
}

impl WireDecode for OffsetReply {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let present = r.bool("offset present")?;
        let o = r.u64("offset")?;
        Ok(OffsetReply {
            offset: present.then_some(o),
        })
    }
}
