//! Finding stored messages by id or key.

use bytes::{BufMut, BytesMut};

use super::{call, Records, WireDecode, WireEncode};
use crate::wire::{DecodeError, Reader, WriteExt};

/// Find a message by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageById {
    /// Producer-assigned id.
    pub id: u128,
}

/// Find messages by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageByKey {
    /// Topic.
    pub topic: String,
    /// Key.
    pub key: String,
    /// At most this many.
    pub max: u32,
    /// Stored at or after (ms).
    pub begin_ms: i64,
    /// Stored at or before (ms).
    pub end_ms: i64,
}

call!(MessageById => Records, MessageById);
call!(MessageByKey => Records, MessageByKey);

impl WireEncode for MessageById {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u128_le(self.id);
    }
}

impl WireDecode for MessageById {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(MessageById {
            id: r.u128("message id")?,
        })
    }
}

impl WireEncode for MessageByKey {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.topic);
        b.put_str16(&self.key);
        b.put_u32_le(self.max);
        b.put_i64_le(self.begin_ms);
        b.put_i64_le(self.end_ms);
    }
}

impl WireDecode for MessageByKey {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(MessageByKey {
            topic: r.str16("topic")?,
            key: r.str16("key")?,
            max: r.u32("max")?,
            begin_ms: r.i64("begin")?,
            end_ms: r.i64("end")?,
        })
    }
}
