//! Message ids, messages to send, and messages received from the broker.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use quiver_protocol::names::{self, props};
use quiver_protocol::{RecordView, WireMessage};

use crate::error::ClientError;

/// A producer-assigned, globally unique message id (128 bits).
///
/// Layout, high bits first: 48 bits of creation time in ms since the Unix epoch, 48 bits that
/// identify the process (a hash of the pid, the start time and a random seed), and a 32-bit
/// per-process counter. Ids therefore sort roughly by creation time. Displayed as 32 lowercase
/// hex digits; [`FromStr`] parses that form back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub u128);

impl MessageId {
    /// A new unique id.
    pub fn new() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let ms = now_ms() as u128 & ((1 << 48) - 1);
        let count = COUNTER.fetch_add(1, Ordering::Relaxed) as u128;
        MessageId(ms << 80 | (process_bits() as u128) << 32 | count)
    }

    /// The creation time encoded in the id, ms since the Unix epoch.
    pub fn timestamp_ms(&self) -> u64 {
        (self.0 >> 80) as u64
    }
}

/// 48 bits identifying this process: pid, start time and the std hasher's random keys.
fn process_bits() -> u64 {
    static BITS: OnceLock<u64> = OnceLock::new();
    *BITS.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.finish() & ((1 << 48) - 1)
    })
}

pub(crate) use quiver_protocol::text::epoch_ms as now_ms;

impl Default for MessageId {
    /// A new unique id, as [`MessageId::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl FromStr for MessageId {
    type Err = ClientError;

    /// Parses 32 hex digits (either case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ClientError::invalid(format!(
                "a message id is 32 hex digits, got {s:?}"
            )));
        }
        u128::from_str_radix(s, 16)
            .map(MessageId)
            .map_err(|e| ClientError::invalid(format!("bad message id {s:?}: {e}")))
    }
}

impl From<u128> for MessageId {
    fn from(v: u128) -> Self {
        MessageId(v)
    }
}

/// A message to send. Build it with [`Message::new`] and the `with_*` methods; it is
/// validated when sent (an invalid one fails with [`ClientError::InvalidArgument`] and nothing
/// is sent). The id is assigned when the message is sent and kept across retries.
///
/// ```
/// use quiver_client::Message;
/// let m = Message::new("orders", "payload")
///     .with_tag("created")
///     .with_key("order-42")
///     .with_property("region", "eu")
///     .with_sharding_key("customer-7");
/// assert_eq!(m.tag(), Some("created"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    topic: String,
    body: Bytes,
    tag: Option<String>,
    keys: Vec<String>,
    properties: Vec<(String, String)>,
    sharding_key: Option<String>,
    delivery: Option<Delivery>,
}

/// When a scheduled message becomes visible to consumers (see
/// [`Message::with_delay`], [`Message::with_deliver_at`], [`Message::with_delay_level`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// At this time, ms since the Unix epoch (the broker's clock).
    At(i64),
    /// This long after the broker stores it.
    After(Duration),
    /// After the broker's delay level `n` (1 = 1 s ... 18 = 2 h by default).
    Level(u8),
}

impl Message {
    /// A message for `topic` with this payload.
    pub fn new(topic: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            body: body.into(),
            tag: None,
            keys: Vec::new(),
            properties: Vec::new(),
            sharding_key: None,
            delivery: None,
        }
    }

    /// Makes this a scheduled message, visible `delay` after the broker stores it (up to the
    /// broker's `messaging.max_delay_ms`, 30 days by default). Millisecond precision.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delivery = Some(Delivery::After(delay));
        self
    }

    /// Makes this a scheduled message, visible at `at` (a time in the past means at once).
    pub fn with_deliver_at(mut self, at: SystemTime) -> Self {
        let ms = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        self.delivery = Some(Delivery::At(ms));
        self
    }

    /// Makes this a scheduled message using one of the broker's delay levels (RocketMQ's
    /// `1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h`, level 1 first).
    pub fn with_delay_level(mut self, level: u8) -> Self {
        self.delivery = Some(Delivery::Level(level));
        self
    }

    /// When the message becomes visible, if it is scheduled.
    pub fn delivery(&self) -> Option<Delivery> {
        self.delivery
    }

    /// Sets the tag (at most one; consumers can filter on it). An empty tag means none.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        let tag = tag.into();
        self.tag = (!tag.is_empty()).then_some(tag);
        self
    }

    /// Adds a lookup key (the broker indexes it for [`crate::Admin::query_by_key`]); may be
    /// called several times.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    /// Adds several lookup keys.
    pub fn with_keys<I, K>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        self.keys.extend(keys.into_iter().map(Into::into));
        self
    }

    /// Adds a user property. The name must not be empty, reserved
    /// ([`quiver_protocol::names::RESERVED_PROPERTIES`]) or start with `__` (checked at send
    /// time).
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((name.into(), value.into()));
        self
    }

    /// Sets the sharding key: every message with the same key goes to the same queue
    /// (`queue = fnv1a64(key) % queue_count`, see [`crate::sharding_queue`]), whatever the
    /// producer's selector, so they are stored and consumed in send order. The key is used
    /// for routing only and is not stored with the message.
    pub fn with_sharding_key(mut self, key: impl Into<String>) -> Self {
        self.sharding_key = Some(key.into());
        self
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The payload.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The lookup keys.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The user properties, in insertion order.
    pub fn properties(&self) -> &[(String, String)] {
        &self.properties
    }

    /// A user property by name.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The sharding key, if any.
    pub fn sharding_key(&self) -> Option<&str> {
        self.sharding_key.as_deref()
    }

    /// Checks the message against the naming and size rules the broker enforces.
    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        names::check_name("topic", &self.topic).map_err(ClientError::InvalidArgument)?;
        let max = u16::MAX as usize;
        if let Some(tag) = &self.tag {
            if tag.len() > max {
                return Err(ClientError::invalid(format!(
                    "tag is {} bytes; the maximum is {max}",
                    tag.len()
                )));
            }
        }
        if self.keys.len() > max {
            return Err(ClientError::invalid("too many keys"));
        }
        for k in &self.keys {
            if k.is_empty() {
                return Err(ClientError::invalid("message key is empty"));
            }
            if k.len() > max {
                return Err(ClientError::invalid(format!(
                    "key is {} bytes; the maximum is {max}",
                    k.len()
                )));
            }
        }
        if self.properties.len() > max {
            return Err(ClientError::invalid("too many properties"));
        }
        for (k, v) in &self.properties {
            names::check_property_name(k).map_err(ClientError::InvalidArgument)?;
            if k.len() > max || v.len() > max {
                return Err(ClientError::invalid(format!(
                    "property {k:?}: names and values are at most {max} bytes"
                )));
            }
        }
        if self.body.len() > u32::MAX as usize {
            return Err(ClientError::invalid("message body larger than 4 GiB"));
        }
        match self.delivery {
            Some(Delivery::Level(0)) => {
                return Err(ClientError::invalid("delay levels start at 1"))
            }
            Some(Delivery::After(d)) if d.as_millis() > i64::MAX as u128 => {
                return Err(ClientError::invalid("delay too long"))
            }
            _ => {}
        }
        Ok(())
    }

    /// The wire form with the given id and the current time as birth time.
    pub(crate) fn to_wire(&self, id: MessageId) -> WireMessage {
        WireMessage {
            id: id.0,
            born_timestamp: now_ms(),
            flags: 0,
            tag: self.tag.clone().unwrap_or_default(),
            keys: self.keys.clone(),
            properties: self.properties.clone(),
            body: self.body.clone(),
        }
    }
}

/// A message read from the broker: one stored record, CRC-checked, with its fields decoded.
/// The body is a zero-copy slice of the record bytes, which are a slice of the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// Topic. For a message delivered again through its group's retry topic, the topic it
    /// was sent to (the `RETRY_TOPIC` property); `raw()` keeps the stored record as it is.
    pub topic: String,
    /// Queue id within the topic.
    pub queue_id: u32,
    /// Position in the (topic, queue) consume queue.
    pub queue_offset: u64,
    /// Position in the broker's commit log.
    pub commit_log_offset: u64,
    /// Producer-assigned id.
    pub msg_id: MessageId,
    /// The tag, if any.
    pub tag: Option<String>,
    /// Lookup keys.
    pub keys: Vec<String>,
    /// Properties, name to value, in stored order.
    pub properties: Vec<(String, String)>,
    /// The payload.
    pub body: Bytes,
    /// When the producer created the message, ms since the Unix epoch.
    pub born_timestamp: i64,
    /// When the broker stored the message, ms since the Unix epoch.
    pub store_timestamp: i64,
    /// The producer's address as the broker saw it.
    pub born_host: SocketAddr,
    /// How many times the message was handed back for reconsumption.
    pub reconsume_times: u32,
    /// Record flags.
    pub flags: u32,
    raw: Bytes,
}

impl ReceivedMessage {
    /// Parses and CRC-checks one record; a bad record is a [`ClientError::Protocol`] error.
    pub fn parse(record: Bytes) -> Result<Self, ClientError> {
        let v = RecordView::parse(&record)
            .map_err(|e| ClientError::Protocol(format!("bad message record: {e}")))?;
        let tag = v.tag();
        // A retried message shows the topic it was first sent to; a half message being
        // checked shows the topic it is for.
        let stored = v.topic();
        let topic = if stored.starts_with(names::RETRY_PREFIX) {
            v.property(props::RETRY_TOPIC).unwrap_or(stored)
        } else if stored == names::HALF_TOPIC {
            v.property(props::REAL_TOPIC).unwrap_or(stored)
        } else {
            stored
        };
        Ok(Self {
            topic: topic.to_string(),
            queue_id: v.queue_id(),
            queue_offset: v.queue_offset(),
            commit_log_offset: v.phys_offset(),
            msg_id: MessageId(v.msg_id()),
            tag: (!tag.is_empty()).then(|| tag.to_string()),
            keys: v.keys().map(str::to_string).collect(),
            properties: v
                .properties()
                .map(|(k, val)| (k.to_string(), val.to_string()))
                .collect(),
            body: record.slice_ref(v.body()),
            born_timestamp: v.born_timestamp(),
            store_timestamp: v.store_timestamp(),
            born_host: v.born_host(),
            reconsume_times: v.reconsume_times(),
            flags: v.flags(),
            raw: record.clone(),
        })
    }

    /// A property by name.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The whole stored record, as received.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_protocol::record::{encode_into, NewMessage, RecordPlacement};
    use quiver_protocol::RecordLimits;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_and_ordered_by_time() {
        let before = now_ms() as u64;
        let ids: Vec<MessageId> = (0..10_000).map(|_| MessageId::new()).collect();
        let after = now_ms() as u64;
        let set: HashSet<_> = ids.iter().collect();
        assert_eq!(set.len(), ids.len());
        for id in &ids {
            assert!((before..=after).contains(&id.timestamp_ms()));
        }
        // Same process bits for all ids of this process.
        let proc_bits: HashSet<u128> = ids.iter().map(|i| (i.0 >> 32) & ((1 << 48) - 1)).collect();
        assert_eq!(proc_bits.len(), 1);
    }

    #[test]
    fn ids_are_unique_across_threads() {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| (0..5_000).map(|_| MessageId::new()).collect::<Vec<_>>())
            })
            .collect();
        let mut set = HashSet::new();
        for h in handles {
            for id in h.join().unwrap() {
                assert!(set.insert(id));
            }
        }
        assert_eq!(set.len(), 20_000);
    }

    #[test]
    fn id_display_and_parse() {
        let id = MessageId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let s = id.to_string();
        assert_eq!(s, "0123456789abcdef0011223344556677");
        assert_eq!(s.parse::<MessageId>().unwrap(), id);
        assert_eq!(
            "0123456789ABCDEF0011223344556677"
                .parse::<MessageId>()
                .unwrap(),
            id
        );
        assert_eq!(MessageId(1).to_string(), format!("{}1", "0".repeat(31)));
        let fresh = MessageId::new();
        assert_eq!(fresh.to_string().parse::<MessageId>().unwrap(), fresh);
        for bad in [
            "",
            "123",
            &"g".repeat(32),
            &"0".repeat(33),
            &format!("+{}", "0".repeat(31)),
        ] {
            assert!(
                matches!(
                    bad.parse::<MessageId>(),
                    Err(ClientError::InvalidArgument(_))
                ),
                "{bad:?}"
            );
        }
    }

    fn record(body: &[u8], tag: &str, keys: &[&str], props: &[(&str, &str)]) -> Bytes {
        let m = NewMessage {
            msg_id: 0xfeed,
            flags: 4,
            born_timestamp: 1_700_000_000_000,
            born_host: "10.0.0.7:5555".parse().unwrap(),
            reconsume_times: 2,
            tag,
            keys,
            properties: props,
            body,
        };
        let limits = RecordLimits {
            max_body: 1 << 20,
            max_properties: 1 << 15,
        };
        let len = m.encoded_len("demo", &limits).unwrap();
        let mut buf = vec![0u8; len];
        encode_into(
            &mut buf,
            "demo",
            &m,
            &RecordPlacement {
                queue_id: 3,
                queue_offset: 99,
                phys_offset: 123_456,
                store_timestamp: 1_700_000_000_500,
                extra_flags: 0,
            },
        );
        Bytes::from(buf)
    }

    #[test]
    fn received_message_parses_a_record() {
        let raw = record(b"hello world", "tagA", &["k1", "k2"], &[("region", "eu")]);
        let m = ReceivedMessage::parse(raw.clone()).unwrap();
        assert_eq!(m.topic, "demo");
        assert_eq!(m.queue_id, 3);
        assert_eq!(m.queue_offset, 99);
        assert_eq!(m.commit_log_offset, 123_456);
        assert_eq!(m.msg_id, MessageId(0xfeed));
        assert_eq!(m.tag.as_deref(), Some("tagA"));
        assert_eq!(m.keys, vec!["k1", "k2"]);
        assert_eq!(m.property("region"), Some("eu"));
        assert_eq!(m.property("missing"), None);
        assert_eq!(&m.body[..], b"hello world");
        assert_eq!(m.born_timestamp, 1_700_000_000_000);
        assert_eq!(m.store_timestamp, 1_700_000_000_500);
        assert_eq!(m.born_host, "10.0.0.7:5555".parse::<SocketAddr>().unwrap());
        assert_eq!(m.reconsume_times, 2);
        assert_eq!(m.flags, 4);
        assert_eq!(m.raw(), &raw);
        // The body is a zero-copy slice of the record.
        let range = raw.as_ptr() as usize..raw.as_ptr() as usize + raw.len();
        assert!(range.contains(&(m.body.as_ptr() as usize)));

        let empty = ReceivedMessage::parse(record(b"", "", &[], &[])).unwrap();
        assert!(empty.body.is_empty());
        assert_eq!(empty.tag, None);
        assert!(empty.keys.is_empty() && empty.properties.is_empty());
    }

    #[test]
    fn corrupt_records_are_protocol_errors() {
        let raw = record(b"payload", "t", &[], &[]);
        let mut bad = raw.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        assert!(matches!(
            ReceivedMessage::parse(Bytes::from(bad)),
            Err(ClientError::Protocol(_))
        ));
        assert!(matches!(
            ReceivedMessage::parse(raw.slice(..raw.len() - 1)),
            Err(ClientError::Protocol(_))
        ));
        assert!(matches!(
            ReceivedMessage::parse(Bytes::from_static(b"short")),
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn message_validation() {
        let ok = Message::new("demo", "x")
            .with_tag("t")
            .with_keys(["a", "b"])
            .with_key("c")
            .with_property("region", "eu");
        ok.validate().unwrap();
        assert_eq!(ok.keys(), ["a", "b", "c"]);
        assert_eq!(ok.property("region"), Some("eu"));
        assert_eq!(Message::new("demo", "x").with_tag("").tag(), None);
        for bad in [
            Message::new("bad topic", "x"),
            Message::new("", "x"),
            Message::new("demo", "x").with_key(""),
            Message::new("demo", "x").with_property("KEYS", "v"),
            Message::new("demo", "x").with_property("__internal", "v"),
            Message::new("demo", "x").with_property("", "v"),
            Message::new("demo", "x").with_property("p", "v".repeat(70_000)),
        ] {
            assert!(
                matches!(bad.validate(), Err(ClientError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        let w = ok.to_wire(MessageId(5));
        assert_eq!(w.id, 5);
        assert_eq!(w.tag, "t");
        assert_eq!(w.keys, vec!["a", "b", "c"]);
        assert!(w.born_timestamp > 0);
    }
}
