//! Frames and the typed requests and responses they carry (layouts in docs/PROTOCOL.md).
//!
//! Request frame:  `u32 length | u16 command | u16 flags (0) | body`
//! Response frame: `u32 length | u16 status  | u16 command   | body`
//! `length` counts the bytes after the length field itself (so at least 4).

use bytes::{BufMut, Bytes, BytesMut};

use crate::codes::{Command, PullStatus, Status};
use crate::plugins::{
    get_pairs, get_plugin_refs, put_pairs, put_plugin_refs, PluginInfo, PluginRef,
};
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
    fn encode(&self, b: &mut BytesMut) {
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

    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
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
    fn encode(&self, b: &mut BytesMut) {
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

    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
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

/// How a [`Request::SendSpecial`] stores its messages.
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
    fn encode(&self, b: &mut BytesMut) {
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

    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
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

/// Every request a client can make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Handshake: the client's protocol version and a free-form id for logs.
    Hello {
        /// Protocol version the client speaks.
        version: u16,
        /// Client id (for logs).
        client_id: String,
    },
    /// Queue count of a topic; `create` asks for auto-creation if the broker allows it.
    Route {
        /// Topic.
        topic: String,
        /// Create when missing (auto-creation on).
        create: bool,
    },
    /// Append messages to one queue; more than one message is an atomic batch.
    Send {
        /// Topic.
        topic: String,
        /// Queue id.
        queue_id: u32,
        /// The messages (at least one).
        messages: Vec<WireMessage>,
    },
    /// Read a queue from an offset.
    Pull {
        /// Topic.
        topic: String,
        /// Queue id.
        queue_id: u32,
        /// First offset wanted.
        offset: u64,
        /// At most this many messages.
        max_messages: u32,
        /// About this many bytes at most (the first message is always returned).
        max_bytes: u32,
        /// Park up to this long when nothing is there (0 answers at once).
        long_poll_ms: u32,
        /// Only messages matching this filter are returned; offsets still advance past the
        /// others.
        filter: FilterSpec,
        /// Plugins run after the filter, in order (docs/PLUGINS.md).
        plugins: Vec<PluginRef>,
    },
    /// Store a group's offset.
    CommitOffset {
        /// Consumer group.
        group: String,
        /// Topic.
        topic: String,
        /// Queue id.
        queue_id: u32,
        /// Next offset to consume.
        offset: u64,
    },
    /// Read a group's offset.
    FetchOffset {
        /// Consumer group.
        group: String,
        /// Topic.
        topic: String,
        /// Queue id.
        queue_id: u32,
    },
    /// First offset stored at or after a time.
    OffsetForTime {
        /// Topic.
        topic: String,
        /// Queue id.
        queue_id: u32,
        /// ms since the epoch.
        timestamp_ms: i64,
    },
    /// Create a topic with `queues` queues.
    TopicCreate {
        /// Topic.
        topic: String,
        /// Queue count.
        queues: u32,
    },
    /// Change the queue count.
    TopicUpdate {
        /// Topic.
        topic: String,
        /// New queue count.
        queues: u32,
    },
    /// Delete a topic.
    TopicDelete {
        /// Topic.
        topic: String,
    },
    /// List topics.
    TopicList,
    /// Describe one topic.
    TopicDescribe {
        /// Topic.
        topic: String,
    },
    /// Find a message by id.
    MessageById {
        /// Producer-assigned id.
        id: u128,
    },
    /// Find messages by key.
    MessageByKey {
        /// Topic.
        topic: String,
        /// Key.
        key: String,
        /// At most this many.
        max: u32,
        /// Stored at or after (ms).
        begin_ms: i64,
        /// Stored at or before (ms).
        end_ms: i64,
    },
    /// Join or stay in a group, reporting the queues this member still works on.
    Heartbeat {
        /// Consumer group.
        group: String,
        /// This member's id (unique per consumer instance).
        member_id: String,
        /// Clustering or broadcasting.
        mode: GroupMode,
        /// What the member subscribes to (every member of a group must subscribe alike).
        subscriptions: Vec<Subscription>,
        /// Queues the member still holds (processing or committing).
        held: Vec<QueueRef>,
    },
    /// Leave a group now.
    LeaveGroup {
        /// Consumer group.
        group: String,
        /// Member id.
        member_id: String,
    },
    /// List groups.
    GroupList,
    /// Describe a group.
    GroupDescribe {
        /// Consumer group.
        group: String,
    },
    /// Load a WebAssembly plugin under a new name.
    PluginLoad {
        /// Name (topic naming rules).
        name: String,
        /// The module: WebAssembly binary (or WAT text).
        wasm: Bytes,
        /// Configuration given to the plugin's `quiver_init`.
        config: Vec<(String, String)>,
        /// Memory limit per instance in bytes; 0 = the broker's default.
        memory_limit_bytes: u64,
        /// Time limit per batch in ms; 0 = the broker's default.
        time_limit_ms: u32,
    },
    /// Replace a plugin atomically: in-flight batches finish on the old version.
    PluginReload {
        /// Name.
        name: String,
        /// A new module, or empty to keep the current one.
        wasm: Bytes,
        /// A new configuration, or `None` to keep the current one.
        config: Option<Vec<(String, String)>>,
        /// A new memory limit; 0 = keep.
        memory_limit_bytes: u64,
        /// A new time limit; 0 = keep.
        time_limit_ms: u32,
    },
    /// Unload a plugin (refused while attached to topics unless `force`, which detaches it).
    PluginUnload {
        /// Name.
        name: String,
        /// Detach from topics first.
        force: bool,
    },
    /// List loaded plugins.
    PluginList,
    /// Describe one plugin.
    PluginDescribe {
        /// Name.
        name: String,
    },
    /// Append a plugin to a topic's ingress chain (run on every send before it is stored).
    PluginAttach {
        /// Plugin name.
        name: String,
        /// Topic.
        topic: String,
    },
    /// Remove a plugin from a topic's ingress chain.
    PluginDetach {
        /// Plugin name.
        name: String,
        /// Topic.
        topic: String,
    },
    /// Move a group's offsets on a topic.
    GroupResetOffset {
        /// Consumer group.
        group: String,
        /// Topic.
        topic: String,
        /// Where to.
        target: ResetTarget,
        /// Allowed while members are online.
        force: bool,
    },
    /// Delete a group's offsets (refused while members are online unless `force`).
    GroupDelete {
        /// Consumer group.
        group: String,
        /// Allowed while members are online.
        force: bool,
    },
    /// Send scheduled messages or a half message (answered like `Send`; the receipts'
    /// offsets are those of the system topic holding them until they are due or committed).
    SendSpecial {
        /// The topic the messages are for.
        topic: String,
        /// Queue id in that topic.
        queue_id: u32,
        /// Schedule or transaction.
        mode: SendMode,
        /// The messages (a half message is sent alone).
        messages: Vec<WireMessage>,
    },
    /// Cancel a scheduled message by id; refused once it is due.
    CancelScheduled {
        /// The message id.
        id: u128,
    },
    /// Decide a half message.
    EndTransaction {
        /// Producer group.
        group: String,
        /// The message id.
        id: u128,
        /// The half message's commit-log offset (from its send receipt or check record).
        handle: u64,
        /// The outcome.
        state: TransactionState,
        /// True when answering a check-back.
        from_check: bool,
    },
    /// Wait (up to `wait_ms`) for check-back requests for `group`; answered with
    /// `Messages`: the half messages to check.
    PollTransactionChecks {
        /// Producer group.
        group: String,
        /// This producer's id (for logs and `describe`).
        producer_id: String,
        /// Most checks to return.
        max: u32,
        /// Longest wait when nothing is to be checked.
        wait_ms: u32,
    },
    /// Hand a consumed message back (consume failed): it comes back to `group` after a
    /// back-off, or goes to the group's dead-letter queue.
    SendBack {
        /// Consumer group.
        group: String,
        /// The message id.
        id: u128,
        /// The record's commit-log offset (as pulled).
        handle: u64,
        /// Delay level to use; 0 means the group's back-off for its reconsume count.
        delay_level: u8,
        /// The group's maximum reconsume count: beyond it the message goes to the DLQ.
        max_reconsume: u32,
        /// Straight to the dead-letter queue (orderly consumers after their attempts).
        to_dlq: bool,
    },
    /// Resend dead-lettered messages of `group` to its retry topic.
    DlqResend {
        /// Consumer group.
        group: String,
        /// Only this message id; `None` resends every message from `from_offset` on.
        id: Option<u128>,
        /// First DLQ offset to resend (all-messages form).
        from_offset: u64,
        /// Most messages to resend.
        max: u32,
    },
}

impl Request {
    /// The command code.
    pub fn command(&self) -> Command {
        match self {
            Request::Hello { .. } => Command::Hello,
            Request::Route { .. } => Command::Route,
            Request::Send { .. } => Command::Send,
            Request::Pull { .. } => Command::Pull,
            Request::CommitOffset { .. } => Command::CommitOffset,
            Request::FetchOffset { .. } => Command::FetchOffset,
            Request::OffsetForTime { .. } => Command::OffsetForTime,
            Request::TopicCreate { .. } => Command::TopicCreate,
            Request::TopicUpdate { .. } => Command::TopicUpdate,
            Request::TopicDelete { .. } => Command::TopicDelete,
            Request::TopicList => Command::TopicList,
            Request::TopicDescribe { .. } => Command::TopicDescribe,
            Request::MessageById { .. } => Command::MessageById,
            Request::MessageByKey { .. } => Command::MessageByKey,
            Request::Heartbeat { .. } => Command::Heartbeat,
            Request::LeaveGroup { .. } => Command::LeaveGroup,
            Request::GroupList => Command::GroupList,
            Request::GroupDescribe { .. } => Command::GroupDescribe,
            Request::GroupResetOffset { .. } => Command::GroupResetOffset,
            Request::GroupDelete { .. } => Command::GroupDelete,
            Request::PluginLoad { .. } => Command::PluginLoad,
            Request::PluginReload { .. } => Command::PluginReload,
            Request::PluginUnload { .. } => Command::PluginUnload,
            Request::PluginList => Command::PluginList,
            Request::PluginDescribe { .. } => Command::PluginDescribe,
            Request::PluginAttach { .. } => Command::PluginAttach,
            Request::PluginDetach { .. } => Command::PluginDetach,
            Request::SendSpecial { .. } => Command::SendSpecial,
            Request::CancelScheduled { .. } => Command::CancelScheduled,
            Request::EndTransaction { .. } => Command::EndTransaction,
            Request::PollTransactionChecks { .. } => Command::PollTransactionChecks,
            Request::SendBack { .. } => Command::SendBack,
            Request::DlqResend { .. } => Command::DlqResend,
        }
    }

    /// The whole frame (header + body).
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(64);
        b.put_u32_le(0);
        b.put_u16_le(self.command() as u16);
        b.put_u16_le(0);
        match self {
            Request::Hello { version, client_id } => {
                b.put_u16_le(*version);
                b.put_str16(client_id);
            }
            Request::Route { topic, create } => {
                b.put_str16(topic);
                b.put_u8(*create as u8);
            }
            Request::Send {
                topic,
                queue_id,
                messages,
            } => {
                b.put_str16(topic);
                b.put_u32_le(*queue_id);
                b.put_u32_le(messages.len() as u32);
                for m in messages {
                    m.encode(&mut b);
                }
            }
            Request::Pull {
                topic,
                queue_id,
                offset,
                max_messages,
                max_bytes,
                long_poll_ms,
                filter,
                plugins,
            } => {
                b.put_str16(topic);
                b.put_u32_le(*queue_id);
                b.put_u64_le(*offset);
                b.put_u32_le(*max_messages);
                b.put_u32_le(*max_bytes);
                b.put_u32_le(*long_poll_ms);
                filter.encode(&mut b);
                put_plugin_refs(&mut b, plugins);
            }
            Request::CommitOffset {
                group,
                topic,
                queue_id,
                offset,
            } => {
                b.put_str16(group);
                b.put_str16(topic);
                b.put_u32_le(*queue_id);
                b.put_u64_le(*offset);
            }
            Request::FetchOffset {
                group,
                topic,
                queue_id,
            } => {
                b.put_str16(group);
                b.put_str16(topic);
                b.put_u32_le(*queue_id);
            }
            Request::OffsetForTime {
                topic,
                queue_id,
                timestamp_ms,
            } => {
                b.put_str16(topic);
                b.put_u32_le(*queue_id);
                b.put_i64_le(*timestamp_ms);
            }
            Request::TopicCreate { topic, queues } | Request::TopicUpdate { topic, queues } => {
                b.put_str16(topic);
                b.put_u32_le(*queues);
            }
            Request::TopicDelete { topic } | Request::TopicDescribe { topic } => b.put_str16(topic),
            Request::TopicList => {}
            Request::MessageById { id } => b.put_u128_le(*id),
            Request::MessageByKey {
                topic,
                key,
                max,
                begin_ms,
                end_ms,
            } => {
                b.put_str16(topic);
                b.put_str16(key);
                b.put_u32_le(*max);
                b.put_i64_le(*begin_ms);
                b.put_i64_le(*end_ms);
            }
            Request::Heartbeat {
                group,
                member_id,
                mode,
                subscriptions,
                held,
            } => {
                b.put_str16(group);
                b.put_str16(member_id);
                b.put_u8(*mode as u8);
                b.put_u16_le(subscriptions.len() as u16);
                for s in subscriptions {
                    b.put_str16(&s.topic);
                    s.filter.encode(&mut b);
                    put_plugin_refs(&mut b, &s.plugins);
                }
                put_queue_refs(&mut b, held);
            }
            Request::LeaveGroup { group, member_id } => {
                b.put_str16(group);
                b.put_str16(member_id);
            }
            Request::GroupList => {}
            Request::GroupDescribe { group } => b.put_str16(group),
            Request::GroupResetOffset {
                group,
                topic,
                target,
                force,
            } => {
                b.put_str16(group);
                b.put_str16(topic);
                let (kind, value) = match target {
                    ResetTarget::First => (0u8, 0i64),
                    ResetTarget::Last => (1, 0),
                    ResetTarget::Timestamp(t) => (2, *t),
                    ResetTarget::Offset(o) => (3, *o as i64),
                };
                b.put_u8(kind);
                b.put_i64_le(value);
                b.put_u8(*force as u8);
            }
            Request::GroupDelete { group, force } => {
                b.put_str16(group);
                b.put_u8(*force as u8);
            }
            Request::PluginLoad {
                name,
                wasm,
                config,
                memory_limit_bytes,
                time_limit_ms,
            } => {
                b.put_str16(name);
                b.put_u32_le(wasm.len() as u32);
                b.put_slice(wasm);
                put_pairs(&mut b, config);
                b.put_u64_le(*memory_limit_bytes);
                b.put_u32_le(*time_limit_ms);
            }
            Request::PluginReload {
                name,
                wasm,
                config,
                memory_limit_bytes,
                time_limit_ms,
            } => {
                b.put_str16(name);
                b.put_u32_le(wasm.len() as u32);
                b.put_slice(wasm);
                b.put_u8(config.is_some() as u8);
                put_pairs(&mut b, config.as_deref().unwrap_or(&[]));
                b.put_u64_le(*memory_limit_bytes);
                b.put_u32_le(*time_limit_ms);
            }
            Request::PluginUnload { name, force } => {
                b.put_str16(name);
                b.put_u8(*force as u8);
            }
            Request::PluginList => {}
            Request::PluginDescribe { name } => b.put_str16(name),
            Request::PluginAttach { name, topic } | Request::PluginDetach { name, topic } => {
                b.put_str16(name);
                b.put_str16(topic);
            }
            Request::SendSpecial {
                topic,
                queue_id,
                mode,
                messages,
            } => {
                b.put_str16(topic);
                b.put_u32_le(*queue_id);
                mode.encode(&mut b);
                b.put_u32_le(messages.len() as u32);
                for m in messages {
                    m.encode(&mut b);
                }
            }
            Request::CancelScheduled { id } => b.put_u128_le(*id),
            Request::EndTransaction {
                group,
                id,
                handle,
                state,
                from_check,
            } => {
                b.put_str16(group);
                b.put_u128_le(*id);
                b.put_u64_le(*handle);
                b.put_u8(*state as u8);
                b.put_u8(*from_check as u8);
            }
            Request::PollTransactionChecks {
                group,
                producer_id,
                max,
                wait_ms,
            } => {
                b.put_str16(group);
                b.put_str16(producer_id);
                b.put_u32_le(*max);
                b.put_u32_le(*wait_ms);
            }
            Request::SendBack {
                group,
                id,
                handle,
                delay_level,
                max_reconsume,
                to_dlq,
            } => {
                b.put_str16(group);
                b.put_u128_le(*id);
                b.put_u64_le(*handle);
                b.put_u8(*delay_level);
                b.put_u32_le(*max_reconsume);
                b.put_u8(*to_dlq as u8);
            }
            Request::DlqResend {
                group,
                id,
                from_offset,
                max,
            } => {
                b.put_str16(group);
                b.put_u8(id.is_some() as u8);
                b.put_u128_le(id.unwrap_or(0));
                b.put_u64_le(*from_offset);
                b.put_u32_le(*max);
            }
        }
        finish_frame(b)
    }

    /// Decodes a request body for `header.code`.
    pub fn decode(header: &FrameHeader, body: Bytes) -> Result<Self, FrameError> {
        let cmd = Command::from_u16(header.code).ok_or(FrameError::UnknownCommand(header.code))?;
        let mut r = Reader::new(body);
        let req = match cmd {
            Command::Hello => Request::Hello {
                version: r.u16("version")?,
                client_id: r.str16("client id")?,
            },
            Command::Route => Request::Route {
                topic: r.str16("topic")?,
                create: r.bool("create")?,
            },
            Command::Send => {
                let topic = r.str16("topic")?;
                let queue_id = r.u32("queue id")?;
                let messages = decode_messages(&mut r)?;
                Request::Send {
                    topic,
                    queue_id,
                    messages,
                }
            }
            Command::Pull => Request::Pull {
                topic: r.str16("topic")?,
                queue_id: r.u32("queue id")?,
                offset: r.u64("offset")?,
                max_messages: r.u32("max messages")?,
                max_bytes: r.u32("max bytes")?,
                long_poll_ms: r.u32("long poll ms")?,
                filter: FilterSpec::decode(&mut r)?,
                plugins: get_plugin_refs(&mut r)?,
            },
            Command::CommitOffset => Request::CommitOffset {
                group: r.str16("group")?,
                topic: r.str16("topic")?,
                queue_id: r.u32("queue id")?,
                offset: r.u64("offset")?,
            },
            Command::FetchOffset => Request::FetchOffset {
                group: r.str16("group")?,
                topic: r.str16("topic")?,
                queue_id: r.u32("queue id")?,
            },
            Command::OffsetForTime => Request::OffsetForTime {
                topic: r.str16("topic")?,
                queue_id: r.u32("queue id")?,
                timestamp_ms: r.i64("timestamp")?,
            },
            Command::TopicCreate => Request::TopicCreate {
                topic: r.str16("topic")?,
                queues: r.u32("queues")?,
            },
            Command::TopicUpdate => Request::TopicUpdate {
                topic: r.str16("topic")?,
                queues: r.u32("queues")?,
            },
            Command::TopicDelete => Request::TopicDelete {
                topic: r.str16("topic")?,
            },
            Command::TopicList => Request::TopicList,
            Command::TopicDescribe => Request::TopicDescribe {
                topic: r.str16("topic")?,
            },
            Command::MessageById => Request::MessageById {
                id: r.u128("message id")?,
            },
            Command::MessageByKey => Request::MessageByKey {
                topic: r.str16("topic")?,
                key: r.str16("key")?,
                max: r.u32("max")?,
                begin_ms: r.i64("begin")?,
                end_ms: r.i64("end")?,
            },
            Command::Heartbeat => {
                let group = r.str16("group")?;
                let member_id = r.str16("member id")?;
                let mode = r.u8("group mode")?;
                let mode = GroupMode::from_u8(mode).ok_or(DecodeError::Invalid {
                    field: "group mode",
                    reason: format!("unknown value {mode}"),
                })?;
                let n = r.u16("subscription count")? as usize;
                let mut subscriptions = Vec::with_capacity(n.min(r.remaining() / 5));
                for _ in 0..n {
                    let topic = r.str16("topic")?;
                    let filter = FilterSpec::decode(&mut r)?;
                    let plugins = get_plugin_refs(&mut r)?;
                    subscriptions.push(Subscription {
                        topic,
                        filter,
                        plugins,
                    });
                }
                let held = get_queue_refs(&mut r)?;
                Request::Heartbeat {
                    group,
                    member_id,
                    mode,
                    subscriptions,
                    held,
                }
            }
            Command::LeaveGroup => Request::LeaveGroup {
                group: r.str16("group")?,
                member_id: r.str16("member id")?,
            },
            Command::GroupList => Request::GroupList,
            Command::GroupDescribe => Request::GroupDescribe {
                group: r.str16("group")?,
            },
            Command::GroupResetOffset => {
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
                        }
                        .into())
                    }
                };
                Request::GroupResetOffset {
                    group,
                    topic,
                    target,
                    force: r.bool("force")?,
                }
            }
            Command::GroupDelete => Request::GroupDelete {
                group: r.str16("group")?,
                force: r.bool("force")?,
            },
            Command::PluginLoad => {
                let name = r.str16("plugin name")?;
                let n = r.u32("module length")? as usize;
                Request::PluginLoad {
                    name,
                    wasm: r.bytes(n, "module")?,
                    config: get_pairs(&mut r)?,
                    memory_limit_bytes: r.u64("memory limit")?,
                    time_limit_ms: r.u32("time limit")?,
                }
            }
            Command::PluginReload => {
                let name = r.str16("plugin name")?;
                let n = r.u32("module length")? as usize;
                let wasm = r.bytes(n, "module")?;
                let has_config = r.bool("config present")?;
                let config = get_pairs(&mut r)?;
                Request::PluginReload {
                    name,
                    wasm,
                    config: has_config.then_some(config),
                    memory_limit_bytes: r.u64("memory limit")?,
                    time_limit_ms: r.u32("time limit")?,
                }
            }
            Command::PluginUnload => Request::PluginUnload {
                name: r.str16("plugin name")?,
                force: r.bool("force")?,
            },
            Command::PluginList => Request::PluginList,
            Command::PluginDescribe => Request::PluginDescribe {
                name: r.str16("plugin name")?,
            },
            Command::PluginAttach => Request::PluginAttach {
                name: r.str16("plugin name")?,
                topic: r.str16("topic")?,
            },
            Command::PluginDetach => Request::PluginDetach {
                name: r.str16("plugin name")?,
                topic: r.str16("topic")?,
            },
            Command::SendSpecial => {
                let topic = r.str16("topic")?;
                let queue_id = r.u32("queue id")?;
                let mode = SendMode::decode(&mut r)?;
                let messages = decode_messages(&mut r)?;
                Request::SendSpecial {
                    topic,
                    queue_id,
                    mode,
                    messages,
                }
            }
            Command::CancelScheduled => Request::CancelScheduled { id: r.u128("id")? },
            Command::EndTransaction => Request::EndTransaction {
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
            },
            Command::PollTransactionChecks => Request::PollTransactionChecks {
                group: r.str16("group")?,
                producer_id: r.str16("producer id")?,
                max: r.u32("max")?,
                wait_ms: r.u32("wait ms")?,
            },
            Command::SendBack => Request::SendBack {
                group: r.str16("group")?,
                id: r.u128("id")?,
                handle: r.u64("handle")?,
                delay_level: r.u8("delay level")?,
                max_reconsume: r.u32("max reconsume")?,
                to_dlq: r.bool("to dlq")?,
            },
            Command::DlqResend => {
                let group = r.str16("group")?;
                let has_id = r.bool("has id")?;
                let id = r.u128("id")?;
                Request::DlqResend {
                    group,
                    id: has_id.then_some(id),
                    from_offset: r.u64("from offset")?,
                    max: r.u32("max")?,
                }
            }
        };
        r.finish()?;
        Ok(req)
    }
}

/// A message count and the messages.
fn decode_messages(r: &mut Reader) -> Result<Vec<WireMessage>, DecodeError> {
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

/// Every successful response. Errors travel as a status and a message instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Handshake accepted.
    Hello {
        /// Protocol version the broker speaks.
        version: u16,
        /// Broker name.
        broker: String,
        /// Largest body the broker accepts.
        max_message_size: u32,
        /// Largest frame the broker accepts.
        max_frame: u32,
    },
    /// Queue count of a topic.
    Route {
        /// Queue count.
        queues: u32,
    },
    /// Where the messages landed, in order.
    Send {
        /// Queue id.
        queue_id: u32,
        /// One receipt per message.
        receipts: Vec<SendReceipt>,
    },
    /// Messages read.
    Pull {
        /// What happened.
        status: PullStatus,
        /// Where the next pull starts.
        next_offset: u64,
        /// Queue minimum.
        min_offset: u64,
        /// Queue end.
        max_offset: u64,
        /// Records in the stored layout (record.rs), each self-delimited.
        records: Vec<Bytes>,
    },
    /// An offset, if there is one.
    Offset {
        /// `None` when nothing is committed / found.
        offset: Option<u64>,
    },
    /// Done, nothing to return.
    Done,
    /// Topic list.
    Topics(Vec<TopicSummary>),
    /// One topic's queues.
    Topic {
        /// Topic.
        name: String,
        /// Its queues.
        queues: Vec<QueueInfo>,
    },
    /// Records found by a lookup.
    Messages(Vec<Bytes>),
    /// The queues this member owns now.
    Heartbeat {
        /// Increases whenever the group's assignment changes.
        generation: u64,
        /// A member silent for this long is removed.
        session_timeout_ms: u32,
        /// How often to heartbeat.
        heartbeat_interval_ms: u32,
        /// False while queues are still moving (heartbeat again soon).
        settled: bool,
        /// Queues owned by this member: work on exactly these.
        owned: Vec<QueueRef>,
    },
    /// Group list.
    Groups(Vec<GroupSummary>),
    /// One group in detail.
    Group {
        /// Group name.
        name: String,
        /// Mode.
        mode: GroupMode,
        /// Live members.
        members: Vec<MemberInfo>,
        /// Queues of the subscribed topics with offsets.
        queues: Vec<GroupQueue>,
    },
    /// Loaded plugins (one for load, reload and describe; all for list).
    Plugins(Vec<PluginInfo>),
    /// Where a handed-back message went.
    SentBack {
        /// True when it went to the dead-letter queue (no more automatic deliveries).
        to_dlq: bool,
        /// Its reconsume count from now on.
        reconsume_times: u32,
    },
    /// How many items an operation affected.
    Count(u64),
}

impl Response {
    /// Encodes as chunks (header first) so stored records are sent without copying.
    pub fn encode_chunks(&self, cmd: Command) -> Vec<Bytes> {
        let mut b = BytesMut::with_capacity(64);
        b.put_u32_le(0);
        b.put_u16_le(Status::Ok as u16);
        b.put_u16_le(cmd as u16);
        let mut tail: Vec<Bytes> = Vec::new();
        match self {
            Response::Hello {
                version,
                broker,
                max_message_size,
                max_frame,
            } => {
                b.put_u16_le(*version);
                b.put_str16(broker);
                b.put_u32_le(*max_message_size);
                b.put_u32_le(*max_frame);
            }
            Response::Route { queues } => b.put_u32_le(*queues),
            Response::Send { queue_id, receipts } => {
                b.put_u32_le(*queue_id);
                b.put_u32_le(receipts.len() as u32);
                for r in receipts {
                    b.put_u128_le(r.id);
                    b.put_u64_le(r.queue_offset);
                    b.put_u64_le(r.phys_offset);
                }
            }
            Response::Pull {
                status,
                next_offset,
                min_offset,
                max_offset,
                records,
            } => {
                b.put_u8(*status as u8);
                b.put_u64_le(*next_offset);
                b.put_u64_le(*min_offset);
                b.put_u64_le(*max_offset);
                b.put_u32_le(records.len() as u32);
                tail.extend(records.iter().cloned());
            }
            Response::Offset { offset } => match offset {
                Some(o) => {
                    b.put_u8(1);
                    b.put_u64_le(*o);
                }
                None => {
                    b.put_u8(0);
                    b.put_u64_le(0);
                }
            },
            Response::Done => {}
            Response::Topics(list) => {
                b.put_u32_le(list.len() as u32);
                for t in list {
                    b.put_str16(&t.name);
                    b.put_u32_le(t.queues);
                }
            }
            Response::Topic { name, queues } => {
                b.put_str16(name);
                b.put_u32_le(queues.len() as u32);
                for q in queues {
                    b.put_u32_le(q.queue_id);
                    b.put_u64_le(q.min_offset);
                    b.put_u64_le(q.max_offset);
                }
            }
            Response::Messages(records) => {
                b.put_u32_le(records.len() as u32);
                tail.extend(records.iter().cloned());
            }
            Response::Heartbeat {
                generation,
                session_timeout_ms,
                heartbeat_interval_ms,
                settled,
                owned,
            } => {
                b.put_u64_le(*generation);
                b.put_u32_le(*session_timeout_ms);
                b.put_u32_le(*heartbeat_interval_ms);
                b.put_u8(*settled as u8);
                put_queue_refs(&mut b, owned);
            }
            Response::Groups(list) => {
                b.put_u32_le(list.len() as u32);
                for g in list {
                    b.put_str16(&g.name);
                    b.put_u8(g.mode as u8);
                    b.put_u32_le(g.members);
                }
            }
            Response::Group {
                name,
                mode,
                members,
                queues,
            } => {
                b.put_str16(name);
                b.put_u8(*mode as u8);
                b.put_u32_le(members.len() as u32);
                for m in members {
                    b.put_str16(&m.member_id);
                    b.put_str16(&m.client_id);
                    b.put_str16(&m.remote);
                    b.put_u16_le(m.topics.len() as u16);
                    for t in &m.topics {
                        b.put_str16(t);
                    }
                    put_queue_refs(&mut b, &m.owned);
                }
                b.put_u32_le(queues.len() as u32);
                for q in queues {
                    b.put_str16(&q.topic);
                    b.put_u32_le(q.queue_id);
                    b.put_u8(q.committed.is_some() as u8);
                    b.put_u64_le(q.committed.unwrap_or(0));
                    b.put_u64_le(q.max_offset);
                    b.put_str16(q.owner.as_deref().unwrap_or(""));
                }
            }
            Response::Plugins(list) => {
                b.put_u32_le(list.len() as u32);
                for p in list {
                    p.encode(&mut b);
                }
            }
            Response::SentBack {
                to_dlq,
                reconsume_times,
            } => {
                b.put_u8(*to_dlq as u8);
                b.put_u32_le(*reconsume_times);
            }
            Response::Count(n) => b.put_u64_le(*n),
        }
        let total: usize = b.len() - 4 + tail.iter().map(Bytes::len).sum::<usize>();
        b[0..4].copy_from_slice(&(total as u32).to_le_bytes());
        let mut chunks = Vec::with_capacity(1 + tail.len());
        chunks.push(b.freeze());
        chunks.extend(tail);
        chunks
    }

    /// Decodes a successful response body for `cmd`.
    pub fn decode(cmd: Command, body: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let resp = match cmd {
            Command::Hello => Response::Hello {
                version: r.u16("version")?,
                broker: r.str16("broker")?,
                max_message_size: r.u32("max message size")?,
                max_frame: r.u32("max frame")?,
            },
            Command::Route => Response::Route {
                queues: r.u32("queues")?,
            },
            Command::Send | Command::SendSpecial => {
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
                Response::Send { queue_id, receipts }
            }
            Command::Pull => {
                let status = r.u8("pull status")?;
                let status = PullStatus::from_u8(status).ok_or(DecodeError::Invalid {
                    field: "pull status",
                    reason: format!("unknown value {status}"),
                })?;
                let next_offset = r.u64("next offset")?;
                let min_offset = r.u64("min offset")?;
                let max_offset = r.u64("max offset")?;
                let records = decode_records(&mut r)?;
                Response::Pull {
                    status,
                    next_offset,
                    min_offset,
                    max_offset,
                    records,
                }
            }
            Command::CommitOffset
            | Command::TopicCreate
            | Command::TopicUpdate
            | Command::TopicDelete
            | Command::LeaveGroup
            | Command::GroupResetOffset
            | Command::GroupDelete
            | Command::PluginUnload
            | Command::PluginAttach
            | Command::PluginDetach
            | Command::CancelScheduled
            | Command::EndTransaction => Response::Done,
            Command::SendBack => Response::SentBack {
                to_dlq: r.bool("to dlq")?,
                reconsume_times: r.u32("reconsume times")?,
            },
            Command::DlqResend => Response::Count(r.u64("count")?),
            Command::PluginLoad
            | Command::PluginReload
            | Command::PluginList
            | Command::PluginDescribe => {
                let n = r.u32("plugin count")? as usize;
                let mut list = Vec::with_capacity(n.min(r.remaining() / 64));
                for _ in 0..n {
                    list.push(PluginInfo::decode(&mut r)?);
                }
                Response::Plugins(list)
            }
            Command::Heartbeat => Response::Heartbeat {
                generation: r.u64("generation")?,
                session_timeout_ms: r.u32("session timeout")?,
                heartbeat_interval_ms: r.u32("heartbeat interval")?,
                settled: r.bool("settled")?,
                owned: get_queue_refs(&mut r)?,
            },
            Command::GroupList => {
                let n = r.u32("group count")? as usize;
                let mut list = Vec::with_capacity(n.min(r.remaining() / 7));
                for _ in 0..n {
                    let name = r.str16("group")?;
                    let mode = get_mode(&mut r)?;
                    list.push(GroupSummary {
                        name,
                        mode,
                        members: r.u32("members")?,
                    });
                }
                Response::Groups(list)
            }
            Command::GroupDescribe => {
                let name = r.str16("group")?;
                let mode = get_mode(&mut r)?;
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
                        owned: get_queue_refs(&mut r)?,
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
                Response::Group {
                    name,
                    mode,
                    members,
                    queues,
                }
            }
            Command::FetchOffset | Command::OffsetForTime => {
                let present = r.bool("offset present")?;
                let o = r.u64("offset")?;
                Response::Offset {
                    offset: present.then_some(o),
                }
            }
            Command::TopicList => {
                let n = r.u32("topic count")? as usize;
                let mut list = Vec::with_capacity(n.min(r.remaining() / 6));
                for _ in 0..n {
                    list.push(TopicSummary {
                        name: r.str16("topic")?,
                        queues: r.u32("queues")?,
                    });
                }
                Response::Topics(list)
            }
            Command::TopicDescribe => {
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
                Response::Topic { name, queues }
            }
            Command::MessageById | Command::MessageByKey | Command::PollTransactionChecks => {
                Response::Messages(decode_records(&mut r)?)
            }
        };
        r.finish()?;
        Ok(resp)
    }
}

fn put_queue_refs(b: &mut BytesMut, refs: &[QueueRef]) {
    b.put_u32_le(refs.len() as u32);
    for (t, q) in refs {
        b.put_str16(t);
        b.put_u32_le(*q);
    }
}

fn get_queue_refs(r: &mut Reader) -> Result<Vec<QueueRef>, DecodeError> {
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

fn get_mode(r: &mut Reader) -> Result<GroupMode, DecodeError> {
    let v = r.u8("group mode")?;
    GroupMode::from_u8(v).ok_or(DecodeError::Invalid {
        field: "group mode",
        reason: format!("unknown value {v}"),
    })
}

fn decode_records(r: &mut Reader) -> Result<Vec<Bytes>, DecodeError> {
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

fn finish_frame(mut b: BytesMut) -> Bytes {
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
