//! Frames and the value types commands share (layouts in docs/PROTOCOL.md); the commands
//! themselves live in [`crate::cmd`], one family per file.
//!
//! Request frame:  `u32 length | u16 command | u16 flags (0) | body`
//! Response frame: `u32 length | u16 status  | u16 command   | body`
//! `length` counts the bytes after the length field itself (so at least 4).

use bytes::{BufMut, Bytes, BytesMut};

use crate::codes::Status;
use crate::plugins::PluginRef;
use crate::wire::{DecodeError, Reader, WriteExt};

/// Protocol version spoken by this crate.
pub const PROTOCOL_VERSION: u16 = 3;
/// The TLS ALPN identifier.
pub const ALPN: &[u8] = b"quiver/1";
/// Bytes of a frame header (length + two u16 fields).
pub const FRAME_HEADER: usize = 8;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Bytes after the length field (code + flags + body).
    pub length: u32,
    /// Command (requests) or status (responses).
    pub code: u16,
    /// Flags (requests) or the echoed command (responses).
    pub aux: u16,
}

impl FrameHeader {
    /// Parses the 8 header bytes, refusing lengths below 4 or above `max_frame`.
    pub fn parse(b: &[u8; FRAME_HEADER], max_frame: u32) -> Result<Self, FrameError> {
        let length = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if length < 4 {
            return Err(FrameError::Decode(DecodeError::Invalid {
                field: "frame length",
                reason: format!("{length} is below the 4-byte minimum"),
            }));
        }
        if length > max_frame {
            return Err(FrameError::TooLarge {
                length,
                max: max_frame,
            });
        }
        Ok(Self {
            length,
            code: u16::from_le_bytes([b[4], b[5]]),
            aux: u16::from_le_bytes([b[6], b[7]]),
        })
    }

    /// Body bytes that follow the header.
    pub fn body_len(&self) -> usize {
        self.length as usize - 4
    }
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Larger than allowed.
    #[error("frame of {length} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Declared length.
        length: u32,
        /// Limit.
        max: u32,
    },
    /// Unknown command code.
    #[error("unknown command code {0}")]
    UnknownCommand(u16),
    /// Malformed body.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl FrameError {
    /// The status a broker answers with.
    pub fn status(&self) -> Status {
        match self {
            FrameError::TooLarge { .. } => Status::FrameTooLarge,
            FrameError::UnknownCommand(_) => Status::UnknownCommand,
            FrameError::Decode(_) => Status::BadRequest,
        }
    }
}

/// A message as a producer sends it (the broker adds queue, offsets and timestamps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireMessage {
    /// Producer-assigned unique id.
    pub id: u128,
    /// Producer's creation time, ms since the epoch.
    pub born_timestamp: i64,
    /// Message flags (0 for plain messages).
    pub flags: u32,
    /// At most one tag ("" for none).
    pub tag: String,
    /// Lookup keys.
    pub keys: Vec<String>,
    /// User properties.
    pub properties: Vec<(String, String)>,
    /// Payload (a zero-copy slice of the received frame when decoded).
    pub body: Bytes,
}

impl WireMessage {
    pub(crate) fn encode(&self, b: &mut BytesMut) {
        b.put_u128_le(self.id);
        b.put_i64_le(self.born_timestamp);
        b.put_u32_le(self.flags);
        b.put_str16(&self.tag);
        b.put_u16_le(self.keys.len() as u16);
        for k in &self.keys {
            b.put_str16(k);
        }
        b.put_u16_le(self.properties.len() as u16);
        for (k, v) in &self.properties {
            b.put_str16(k);
            b.put_str16(v);
        }
        b.put_u32_le(self.body.len() as u32);
        b.put_slice(&self.body);
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let id = r.u128("message id")?;
        let born_timestamp = r.i64("born timestamp")?;
        let flags = r.u32("message flags")?;
        let tag = r.str16("tag")?;
        let nkeys = r.u16("key count")? as usize;
        let mut keys = Vec::with_capacity(nkeys.min(64));
        for _ in 0..nkeys {
            keys.push(r.str16("key")?);
        }
        let nprops = r.u16("property count")? as usize;
        let mut properties = Vec::with_capacity(nprops.min(64));
        for _ in 0..nprops {
            let k = r.str16("property name")?;
            let v = r.str16("property value")?;
            properties.push((k, v));
        }
        let body_len = r.u32("body length")? as usize;
        let body = r.bytes(body_len, "body")?;
        Ok(Self {
            id,
            born_timestamp,
            flags,
            tag,
            keys,
            properties,
            body,
        })
    }
}

/// How a consumer group shares its topics' queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum GroupMode {
    /// Each queue is owned by one live member at a time (offsets kept by the broker).
    Clustering = 0,
    /// Every member receives every queue (offsets kept by each member).
    Broadcasting = 1,
}

impl GroupMode {
    /// The mode for a wire value.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(GroupMode::Clustering),
            1 => Some(GroupMode::Broadcasting),
            _ => None,
        }
    }
}

/// A (topic, queue id) pair.
pub type QueueRef = (String, u32);

/// Which messages of a topic a consumer wants; evaluated on the broker, so non-matching
/// messages never cross the network (language in docs/FILTERS.md).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum FilterSpec {
    /// Every message.
    #[default]
    All,
    /// A tag expression: `*`, or `TagA || TagB`.
    Tag(String),
    /// A SQL92 expression over message properties, e.g. `region IN ('eu','us') AND amount > 5`.
    Sql(String),
}

impl FilterSpec {
    pub(crate) fn encode(&self, b: &mut BytesMut) {
        match self {
            FilterSpec::All => {
                b.put_u8(0);
                b.put_str16("");
            }
            FilterSpec::Tag(e) => {
                b.put_u8(1);
                b.put_str16(e);
            }
            FilterSpec::Sql(e) => {
                b.put_u8(2);
                b.put_str16(e);
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let kind = r.u8("filter kind")?;
        let expr = r.str16("filter expression")?;
        match kind {
            0 => Ok(FilterSpec::All),
            1 => Ok(FilterSpec::Tag(expr)),
            2 => Ok(FilterSpec::Sql(expr)),
            k => Err(DecodeError::Invalid {
                field: "filter kind",
                reason: format!("unknown value {k}"),
            }),
        }
    }
}

/// A topic a group member consumes, with its filter and plugins.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subscription {
    /// Topic.
    pub topic: String,
    /// Which of its messages.
    pub filter: FilterSpec,
    /// WebAssembly plugins run on the broker after the filter, in order (docs/PLUGINS.md).
    pub plugins: Vec<PluginRef>,
}

impl Subscription {
    /// A subscription to `topic` with a filter and no plugins.
    pub fn new(topic: impl Into<String>, filter: FilterSpec) -> Self {
        Subscription {
            topic: topic.into(),
            filter,
            plugins: Vec::new(),
        }
    }

    /// The same subscription with one more plugin at the end of its chain.
    pub fn plugin(mut self, plugin: PluginRef) -> Self {
        self.plugins.push(plugin);
        self
    }
}

impl From<&str> for Subscription {
    fn from(topic: &str) -> Self {
        Subscription::new(topic, FilterSpec::All)
    }
}

impl From<String> for Subscription {
    fn from(topic: String) -> Self {
        Subscription::new(topic, FilterSpec::All)
    }
}

/// Where a reset moves a group's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTarget {
    /// Each queue's first readable offset.
    First,
    /// Each queue's end (skip everything stored).
    Last,
    /// The first offset stored at or after this time (ms since the epoch).
    Timestamp(i64),
    /// This exact offset on every queue (clamped to the queue's range).
    Offset(u64),
}

/// One group in a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    /// Group name.
    pub name: String,
    /// Mode of its members.
    pub mode: GroupMode,
    /// Live members.
    pub members: u32,
}

/// One live member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Member id (unique per consumer instance).
    pub member_id: String,
    /// Client id from the handshake (for people).
    pub client_id: String,
    /// The member's address.
    pub remote: String,
    /// Topics it subscribes to.
    pub topics: Vec<String>,
    /// Queues it owns now.
    pub owned: Vec<QueueRef>,
}

/// One queue of a group's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupQueue {
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue_id: u32,
    /// Committed offset, if any.
    pub committed: Option<u64>,
    /// The queue's end.
    pub max_offset: u64,
    /// Member owning it now (clustering), if any.
    pub owner: Option<String>,
}

/// How a [`crate::cmd::SendSpecial`] stores its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendMode {
    /// Visible to consumers at this time (ms since the Unix epoch, broker clock); a past time
    /// means at once.
    DeliverAt(i64),
    /// Visible after this many milliseconds, counted from the broker's arrival time.
    DelayMs(i64),
    /// Visible after the broker's delay level `n` (1-based; by default level 1 is 1 s and
    /// level 18 is 2 h).
    DelayLevel(u8),
    /// A transactional half message of producer group `group`: invisible until committed.
    Half {
        /// Producer group whose live producers answer check-backs.
        group: String,
    },
}

impl SendMode {
    pub(crate) fn encode(&self, b: &mut BytesMut) {
        let (kind, value, group) = match self {
            SendMode::DeliverAt(t) => (1u8, *t, ""),
            SendMode::DelayMs(d) => (2, *d, ""),
            SendMode::DelayLevel(l) => (3, i64::from(*l), ""),
            SendMode::Half { group } => (4, 0, group.as_str()),
        };
        b.put_u8(kind);
        b.put_i64_le(value);
        b.put_str16(group);
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let kind = r.u8("send mode")?;
        let value = r.i64("send mode value")?;
        let group = r.str16("producer group")?;
        Ok(match kind {
            1 => SendMode::DeliverAt(value),
            2 => SendMode::DelayMs(value),
            3 => SendMode::DelayLevel(u8::try_from(value).map_err(|_| DecodeError::Invalid {
                field: "delay level",
                reason: format!("{value} is not 0..=255"),
            })?),
            4 => SendMode::Half { group },
            k => {
                return Err(DecodeError::Invalid {
                    field: "send mode",
                    reason: format!("unknown kind {k}"),
                })
            }
        })
    }
}

/// A transaction's outcome as the producer reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TransactionState {
    /// Not known yet: the broker asks again later (check-back).
    Unknown = 0,
    /// The local transaction committed: the message becomes visible.
    Commit = 1,
    /// The local transaction rolled back: the message is never visible.
    Rollback = 2,
}

impl TransactionState {
    /// The state for a wire code.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => TransactionState::Unknown,
            1 => TransactionState::Commit,
            2 => TransactionState::Rollback,
            _ => return None,
        })
    }
}
/// A message count and the messages.
pub(crate) fn decode_messages(r: &mut Reader) -> Result<Vec<WireMessage>, DecodeError> {
    let n = r.u32("message count")? as usize;
    // Each message takes at least 38 bytes (id 16, born 8, flags 4, four empty length
    // prefixes 10): refuse counts the body cannot hold before allocating.
    if n > r.remaining() / 38 {
        return Err(DecodeError::Invalid {
            field: "message count",
            reason: format!("{n} messages cannot fit in {} bytes", r.remaining()),
        });
    }
    let mut messages = Vec::with_capacity(n);
    for _ in 0..n {
        messages.push(WireMessage::decode(r)?);
    }
    Ok(messages)
}

/// Where one sent message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendReceipt {
    /// The message id.
    pub id: u128,
    /// Queue offset.
    pub queue_offset: u64,
    /// Commit-log offset.
    pub phys_offset: u64,
}

/// A queue's readable range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueInfo {
    /// Queue id.
    pub queue_id: u32,
    /// First readable offset.
    pub min_offset: u64,
    /// One past the last offset.
    pub max_offset: u64,
}

/// A topic and its queue count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSummary {
    /// Topic.
    pub name: String,
    /// Queue count.
    pub queues: u32,
}

pub(crate) fn put_queue_refs(b: &mut BytesMut, refs: &[QueueRef]) {
    b.put_u32_le(refs.len() as u32);
    for (t, q) in refs {
        b.put_str16(t);
        b.put_u32_le(*q);
    }
}

pub(crate) fn get_queue_refs(r: &mut Reader) -> Result<Vec<QueueRef>, DecodeError> {
    let n = r.u32("queue count")? as usize;
    if n > r.remaining() / 6 {
        return Err(DecodeError::Invalid {
            field: "queue count",
            reason: format!("{n} queues cannot fit in {} bytes", r.remaining()),
        });
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = r.str16("topic")?;
        out.push((t, r.u32("queue id")?));
    }
    Ok(out)
}

pub(crate) fn get_mode(r: &mut Reader) -> Result<GroupMode, DecodeError> {
    let v = r.u8("group mode")?;
    GroupMode::from_u8(v).ok_or(DecodeError::Invalid {
        field: "group mode",
        reason: format!("unknown value {v}"),
    })
}

pub(crate) fn decode_records(r: &mut Reader) -> Result<Vec<Bytes>, DecodeError> {
    let n = r.u32("record count")? as usize;
    if n > r.remaining() / crate::record::MIN_RECORD_SIZE + 1 {
        return Err(DecodeError::Invalid {
            field: "record count",
            reason: format!("{n} records cannot fit in {} bytes", r.remaining()),
        });
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        // Peek the record's own length (its first field) and take the whole record.
        let mut peek = r.clone();
        let len = peek.u32("record length")? as usize;
        if len < crate::record::MIN_RECORD_SIZE {
            return Err(DecodeError::Invalid {
                field: "record length",
                reason: format!("{len} is below the minimum record size"),
            });
        }
        out.push(r.bytes(len, "record")?);
    }
    Ok(out)
}

/// An error response frame: status, echoed command, and a UTF-8 message.
pub fn encode_error(status: Status, cmd: u16, message: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(16 + message.len());
    b.put_u32_le(0);
    b.put_u16_le(status as u16);
    b.put_u16_le(cmd);
    b.put_str16(message);
    finish_frame(b)
}

/// Decodes an error body into its message.
pub fn decode_error(body: Bytes) -> String {
    let mut r = Reader::new(body);
    r.str16("error message")
        .unwrap_or_else(|e| format!("(unreadable error message: {e})"))
}

pub(crate) fn finish_frame(mut b: BytesMut) -> Bytes {
    let len = (b.len() - 4) as u32;
    b[0..4].copy_from_slice(&len.to_le_bytes());
    b.freeze()
}

/// Splits a whole frame into its header and body (for tests and simple clients).
pub fn split_frame(frame: &Bytes, max_frame: u32) -> Result<(FrameHeader, Bytes), FrameError> {
    if frame.len() < FRAME_HEADER {
        return Err(DecodeError::Truncated {
            field: "frame header",
            need: FRAME_HEADER,
            have: frame.len(),
        }
        .into());
    }
    let mut h = [0u8; FRAME_HEADER];
    h.copy_from_slice(&frame[..FRAME_HEADER]);
    let header = FrameHeader::parse(&h, max_frame)?;
    if frame.len() != 4 + header.length as usize {
        return Err(DecodeError::Invalid {
            field: "frame length",
            reason: format!(
                "header says {} bytes, frame has {}",
                header.length,
                frame.len() - 4
            ),
        }
        .into());
    }
    Ok((header, frame.slice(FRAME_HEADER..)))
}
