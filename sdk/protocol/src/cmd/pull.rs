//! Reading a queue.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Call, WireDecode, WireEncode};
use crate::codes::{Command, PullStatus};
use crate::frame::{decode_records, FilterSpec};
use crate::plugins::{get_plugin_refs, put_plugin_refs, PluginRef};
use crate::wire::{DecodeError, Reader, WriteExt};

/// Read a queue from an offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pull {
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue_id: u32,
    /// First offset wanted.
    pub offset: u64,
    /// At most this many messages.
    pub max_messages: u32,
    /// About this many bytes at most (the first message is always returned).
    pub max_bytes: u32,
    /// Park up to this long when nothing is there (0 answers at once).
    pub long_poll_ms: u32,
    /// Only messages matching this filter are returned; offsets still advance past the
    /// others.
    pub filter: FilterSpec,
    /// Plugins run after the filter, in order (docs/PLUGINS.md).
    pub plugins: Vec<PluginRef>,
}

/// Messages read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullReply {
    /// What happened.
    pub status: PullStatus,
    /// Where the next pull starts.
    pub next_offset: u64,
    /// Queue minimum.
    pub min_offset: u64,
    /// Queue end.
    pub max_offset: u64,
    /// Records in the stored layout (record.rs), each self-delimited.
    pub records: Vec<Bytes>,
}

impl Call for Pull {
    const COMMAND: Command = Command::Pull;
    type Reply = PullReply;

    fn wait_ms(&self) -> u32 {
        self.long_poll_ms
    }
}

impl WireEncode for Pull {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.topic);
        b.put_u32_le(self.queue_id);
        b.put_u64_le(self.offset);
        b.put_u32_le(self.max_messages);
        b.put_u32_le(self.max_bytes);
        b.put_u32_le(self.long_poll_ms);
        self.filter.encode(b);
        put_plugin_refs(b, &self.plugins);
    }
}

impl WireDecode for Pull {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Pull {
            topic: r.str16("topic")?,
            queue_id: r.u32("queue id")?,
            offset: r.u64("offset")?,
            max_messages: r.u32("max messages")?,
            max_bytes: r.u32("max bytes")?,
            long_poll_ms: r.u32("long poll ms")?,
            filter: FilterSpec::decode(r)?,
            plugins: get_plugin_refs(r)?,
        })
    }
}

impl WireEncode for PullReply {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u8(self.status as u8);
        b.put_u64_le(self.next_offset);
        b.put_u64_le(self.min_offset);
        b.put_u64_le(self.max_offset);
        b.put_u32_le(self.records.len() as u32);
    }

    fn tail(&self) -> &[Bytes] {
        &self.records
    }
}

impl WireDecode for PullReply {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let status = r.u8("pull status")?;
        let status = PullStatus::from_u8(status).ok_or(DecodeError::Invalid {
            field: "pull status",
            reason: format!("unknown value {status}"),
        })?;
        Ok(PullReply {
            status,
            next_offset: r.u64("next offset")?,
            min_offset: r.u64("min offset")?,
            max_offset: r.u64("max offset")?,
            records: decode_records(r)?,
        })
    }
}
