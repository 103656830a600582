//! Scheduled and transactional messages.

use bytes::{BufMut, BytesMut};

use super::send::put_messages;
use super::{call, Call, Done, Records, SendReply, WireDecode, WireEncode};
use crate::codes::Command;
use crate::frame::{decode_messages, SendMode, TransactionState, WireMessage};
use crate::wire::{DecodeError, Reader, WriteExt};

/// Send scheduled messages or a half message (answered like [`Send`](super::Send); the
/// receipts' offsets are those of the system topic holding them until they are due or
/// committed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendSpecial {
    /// The topic the messages are for.
    pub topic: String,
    /// Queue id in that topic.
    pub queue_id: u32,
    /// Schedule or transaction.
    pub mode: SendMode,
    /// The messages (a half message is sent alone).
    pub messages: Vec<WireMessage>,
}

/// Cancel a scheduled message by id; refused once it is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelScheduled {
    /// The message id.
    pub id: u128,
}

/// Decide a half message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndTransaction {
    /// Producer group.
    pub group: String,
    /// The message id.
    pub id: u128,
    /// The half message's commit-log offset (from its send receipt or check record).
    pub handle: u64,
    /// The outcome.
    pub state: TransactionState,
    /// True when answering a check-back.
    pub from_check: bool,
}

/// Wait (up to `wait_ms`) for check-back requests for `group`; answered with the half
/// messages to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollTransactionChecks {
    /// Producer group.
    pub group: String,
    /// This producer's id (for logs and `describe`).
    pub producer_id: String,
    /// Most checks to return.
    pub max: u32,
    /// Longest wait when nothing is to be checked.
    pub wait_ms: u32,
}

call!(SendSpecial => SendReply, SendSpecial);
call!(CancelScheduled => Done, CancelScheduled);
call!(EndTransaction => Done, EndTransaction);

impl Call for PollTransactionChecks {
    const COMMAND: Command = Command::PollTransactionChecks;
    type Reply = Records;

    fn wait_ms(&self) -> u32 {
        self.wait_ms
    }
}

impl WireEncode for SendSpecial {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.topic);
        b.put_u32_le(self.queue_id);
        self.mode.encode(b);
        put_messages(b, &self.messages);
    }
}

impl WireDecode for SendSpecial {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(SendSpecial {
            topic: r.str16("topic")?,
            queue_id: r.u32("queue id")?,
            mode: SendMode::decode(r)?,
            messages: decode_messages(r)?,
        })
    }
}

impl WireEncode for CancelScheduled {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u128_le(self.id);
    }
}

impl WireDecode for CancelScheduled {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(CancelScheduled { id: r.u128("id")? })
    }
}

impl WireEncode for EndTransaction {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.group);
        b.put_u128_le(self.id);
        b.put_u64_le(self.handle);
        b.put_u8(self.state as u8);
        b.put_u8(self.from_check as u8);
    }
}

impl WireDecode for EndTransaction {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(EndTransaction {
            group: r.str16("group")?,
            id: r.u128("id")?,
            handle: r.u64("handle")?,
            state: {
                let v = r.u8("transaction state")?;
                TransactionState::from_u8(v).ok_or(DecodeError::Invalid {
                    field: "transaction state",
                    reason: format!("unknown value {v}"),
                })?
            },
            from_check: r.bool("from check")?,
        })
    }
}

impl WireEncode for PollTransactionChecks {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.group);
        b.put_str16(&self.producer_id);
        b.put_u32_le(self.max);
        b.put_u32_le(self.wait_ms);
    }
}

impl WireDecode for PollTransactionChecks {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(PollTransactionChecks {
            group: r.str16("group")?,
            producer_id: r.str16("producer id")?,
            max: r.u32("max")?,
            wait_ms: r.u32("wait ms")?,
        })
    }
}
