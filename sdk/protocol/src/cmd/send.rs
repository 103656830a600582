//! Sending messages.

use bytes::{BufMut, BytesMut};

use super::{call, WireDecode, WireEncode};
use crate::frame::{decode_messages, SendReceipt, WireMessage};
use crate::wire::{DecodeError, Reader, WriteExt};

/// Append messages to one queue; more than one message is an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue_id: u32,
    /// The messages (at least one).
    pub messages: Vec<WireMessage>,
}

/// Where the messages landed, in order (also the reply to
/// [`SendSpecial`](super::SendSpecial)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReply {
    /// Queue id.
    pub queue_id: u32,
    /// One receipt per message.
    pub receipts: Vec<SendReceipt>,
}

call!(Send => SendReply, Send);

impl WireEncode for Send {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.topic);
        b.put_u32_le(self.queue_id);
        put_messages(b, &self.messages);
    }
}

impl WireDecode for Send {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Send {
            topic: r.str16("topic")?,
            queue_id: r.u32("queue id")?,
            messages: decode_messages(r)?,
        })
    }
}

/// A message count and the messages.
pub(super) fn put_messages(b: &mut BytesMut, messages: &[WireMessage]) {
    b.put_u32_le(messages.len() as u32);
    for m in messages {
        m.encode(b);
    }
}

impl WireEncode for SendReply {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u32_le(self.queue_id);
        b.put_u32_le(self.receipts.len() as u32);
        for r in &self.receipts {
            b.put_u128_le(r.id);
            b.put_u64_le(r.queue_offset);
            b.put_u64_le(r.phys_offset);
        }
    }
}

impl WireDecode for SendReply {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let queue_id = r.u32("queue id")?;
        let n = r.u32("receipt count")? as usize;
        if n > r.remaining() / 32 {
            return Err(DecodeError::Invalid {
                field: "receipt count",
                reason: format!("{n} receipts cannot fit"),
            });
        }
        let mut receipts = Vec::with_capacity(n);
        for _ in 0..n {
            receipts.push(SendReceipt {
                id: r.u128("id")?,
                queue_offset: r.u64("queue offset")?,
                phys_offset: r.u64("phys offset")?,
            });
        }
        Ok(SendReply { queue_id, receipts })
    }
}
