//! Handing consumed messages back, and the dead-letter queue.

use bytes::{BufMut, BytesMut};

use super::{call, CountReply, WireDecode, WireEncode};
use crate::wire::{DecodeError, Reader, WriteExt};

/// Hand a consumed message back (consume failed): it comes back to `group` after a
/// back-off, or goes to the group's dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendBack {
    /// Consumer group.
    pub group: String,
    /// The message id.
    pub id: u128,
    /// The record's commit-log offset (as pulled).
    pub handle: u64,
    /// Delay level to use; 0 means the group's back-off for its reconsume count.
    pub delay_level: u8,
    /// The group's maximum reconsume count: beyond it the message goes to the DLQ.
    pub max_reconsume: u32,
    /// Straight to the dead-letter queue (orderly consumers after their attempts).
    pub to_dlq: bool,
}

/// Where a handed-back message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentBackReply {
    /// True when it went to the dead-letter queue (no more automatic deliveries).
    pub to_dlq: bool,
    /// Its reconsume count from now on.
    pub reconsume_times: u32,
}

/// Resend dead-lettered messages of `group` to its retry topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqResend {
    /// Consumer group.
    pub group: String,
    /// Only this message id; `None` resends every message from `from_offset` on.
    pub id: Option<u128>,
    /// First DLQ offset to resend (all-messages form).
    pub from_offset: u64,
    /// Most messages to resend.
    pub max: u32,
}

call!(SendBack => SentBackReply, SendBack);
call!(DlqResend => CountReply, DlqResend);

impl WireEncode for SendBack {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.group);
        b.put_u128_le(self.id);
        b.put_u64_le(self.handle);
        b.put_u8(self.delay_level);
        b.put_u32_le(self.max_reconsume);
        b.put_u8(self.to_dlq as u8);
    }
}

impl WireDecode for SendBack {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(SendBack {
            group: r.str16("group")?,
            id: r.u128("id")?,
            handle: r.u64("handle")?,
            delay_level: r.u8("delay level")?,
            max_reconsume: r.u32("max reconsume")?,
            to_dlq: r.bool("to dlq")?,
        })
    }
}

impl WireEncode for SentBackReply {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u8(self.to_dlq as u8);
        b.put_u32_le(self.reconsume_times);
    }
}

impl WireDecode for SentBackReply {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(SentBackReply {
            to_dlq: r.bool("to dlq")?,
            reconsume_times: r.u32("reconsume times")?,
        })
    }
}

impl WireEncode for DlqResend {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.group);
        b.put_u8(self.id.is_some() as u8);
        b.put_u128_le(self.id.unwrap_or(0));
        b.put_u64_le(self.from_offset);
        b.put_u32_le(self.max);
    }
}

impl WireDecode for DlqResend {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let group = r.str16("group")?;
        let has_id = r.bool("has id")?;
        let id = r.u128("id")?;
        Ok(DlqResend {
            group,
            id: has_id.then_some(id),
            from_offset: r.u64("from offset")?,
            max: r.u32("max")?,
        })
    }
}
