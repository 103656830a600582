//! The message record: one layout for the commit log on disk and for messages delivered to
//! consumers (docs/STORAGE.md, docs/PROTOCOL.md). The broker encodes it straight into its mapped
//! log and sends the stored bytes as they are; clients parse them with [`RecordView`].

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Why a message cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The body exceeds the limit.
    #[error("message body of {size} bytes exceeds the maximum of {max} bytes")]
    BodyTooLarge {
        /// Body size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// Tag, keys and properties exceed the limit.
    #[error("tag, keys and properties take {size} bytes, more than the maximum of {max} bytes")]
    PropertiesTooLarge {
        /// Encoded size of the sections.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// Something else is malformed.
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// Magic + format version of a message record (`"QV"` + version 1).
pub const RECORD_MAGIC: u32 = 0x5156_0001;
/// Magic of the blank filler that closes a segment whose tail is too short for the next record.
pub const BLANK_MAGIC: u32 = 0x5156_B1A4;
/// Size of the fixed header; the variable sections follow it.
pub const HEADER_SIZE: usize = 90;
/// Smallest possible record: header plus the length prefixes of the empty variable sections.
pub const MIN_RECORD_SIZE: usize = HEADER_SIZE + 1 + 2 + 2 + 2 + 4;

/// Record flag: another record of the same atomic batch follows this one.
pub const FLAG_BATCH_CONT: u32 = 1;

// Offsets of the fixed header fields.
#[doc(hidden)]
pub const OFF_TOTAL_LEN: usize = 0;
#[doc(hidden)]
pub const OFF_MAGIC: usize = 4;
#[doc(hidden)]
pub const OFF_CRC: usize = 8;
#[doc(hidden)]
pub const OFF_FLAGS: usize = 12;
#[doc(hidden)]
pub const OFF_QUEUE_ID: usize = 16;
#[doc(hidden)]
pub const OFF_QUEUE_OFFSET: usize = 20;
#[doc(hidden)]
pub const OFF_PHYS_OFFSET: usize = 28;
#[doc(hidden)]
pub const OFF_BORN_TS: usize = 36;
#[doc(hidden)]
pub const OFF_STORE_TS: usize = 44;
#[doc(hidden)]
pub const OFF_BORN_HOST: usize = 52;
#[doc(hidden)]
pub const OFF_BORN_PORT: usize = 68;
#[doc(hidden)]
pub const OFF_RECONSUME: usize = 70;
#[doc(hidden)]
pub const OFF_MSG_ID: usize = 74;

/// A message to append, borrowed from the caller (no copy until it lands in the log).
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    /// Producer-assigned unique id (indexed; `quiver admin message get --id`).
    pub msg_id: u128,
    /// Flags carried into the record (the store adds its own batch bits).
    pub flags: u32,
    /// When the producer created the message, ms since the Unix epoch.
    pub born_timestamp: i64,
    /// The producer's address.
    pub born_host: SocketAddr,
    /// How many times this message was handed back for reconsumption.
    pub reconsume_times: u32,
    /// At most one tag; empty means none.
    pub tag: &'a str,
    /// Lookup keys; each is indexed.
    pub keys: &'a [&'a str],
    /// User and system properties, name to value.
    pub properties: &'a [(&'a str, &'a str)],
    /// The payload.
    pub body: &'a [u8],
}

/// Size limits applied to every appended message.
#[derive(Debug, Clone, Copy)]
pub struct RecordLimits {
    /// Largest body in bytes.
    pub max_body: usize,
    /// Largest tag + keys + properties sections together, in bytes.
    pub max_properties: usize,
}

impl NewMessage<'_> {
    /// Bytes of the tag, keys and properties sections (with their length prefixes).
    fn sections_len(&self) -> (usize, usize) {
        let keys: usize = self.keys.iter().map(|k| 2 + k.len()).sum();
        let props: usize = self
            .properties
            .iter()
            .map(|(k, v)| 4 + k.len() + v.len())
            .sum();
        (keys, props)
    }

    /// Checks the limits and returns the encoded record size.
    pub fn encoded_len(&self, topic: &str, limits: &RecordLimits) -> Result<usize, RecordError> {
        if topic.is_empty() || topic.len() > 255 {
            return Err(RecordError::Invalid(format!(
                "topic must be 1..=255 bytes, got {}",
                topic.len()
            )));
        }
        if self.body.len() > limits.max_body {
            return Err(RecordError::BodyTooLarge {
                size: self.body.len(),
                max: limits.max_body,
            });
        }
        let (keys, props) = self.sections_len();
        let extra = self.tag.len() + keys + props;
        if extra > limits.max_properties || keys > u16::MAX as usize || props > u16::MAX as usize {
            return Err(RecordError::PropertiesTooLarge {
                size: extra,
                max: limits.max_properties.min(u16::MAX as usize),
            });
        }
        for key in self.keys {
            if key.is_empty() || key.len() > u16::MAX as usize {
                return Err(RecordError::Invalid("empty key".into()));
            }
        }
        if self.tag.len() > u16::MAX as usize {
            return Err(RecordError::PropertiesTooLarge {
                size: self.tag.len(),
                max: u16::MAX as usize,
            });
        }
        Ok(HEADER_SIZE
            + 1
            + topic.len()
            + 2
            + self.tag.len()
            + 2
            + keys
            + 2
            + props
            + 4
            + self.body.len())
    }
}

/// Where and when the broker stores a record: the fields only the broker knows.
#[derive(Debug, Clone, Copy)]
pub struct RecordPlacement {
    /// Queue id within the topic.
    pub queue_id: u32,
    /// Position in the consume queue.
    pub queue_offset: u64,
    /// Position in the commit log.
    pub phys_offset: u64,
    /// Broker's append time, ms since the epoch.
    pub store_timestamp: i64,
    /// Flags the broker adds (e.g. [`FLAG_BATCH_CONT`]).
    pub extra_flags: u32,
}

/// Writes one record into `buf` (exactly `encoded_len` bytes) and seals it with its CRC.
pub fn encode_into(buf: &mut [u8], topic: &str, m: &NewMessage<'_>, at: &RecordPlacement) {
    let total = buf.len();
    put_u32(buf, OFF_TOTAL_LEN, total as u32);
    put_u32(buf, OFF_MAGIC, RECORD_MAGIC);
    // The batch bit belongs to the writer: a caller's flags never set it.
    put_u32(
        buf,
        OFF_FLAGS,
        (m.flags & !FLAG_BATCH_CONT) | at.extra_flags,
    );
    put_u32(buf, OFF_QUEUE_ID, at.queue_id);
    put_u64(buf, OFF_QUEUE_OFFSET, at.queue_offset);
    put_u64(buf, OFF_PHYS_OFFSET, at.phys_offset);
    put_u64(buf, OFF_BORN_TS, m.born_timestamp as u64);
    put_u64(buf, OFF_STORE_TS, at.store_timestamp as u64);
    let ip = match m.born_host.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    buf[OFF_BORN_HOST..OFF_BORN_HOST + 16].copy_from_slice(&ip.octets());
    buf[OFF_BORN_PORT..OFF_BORN_PORT + 2].copy_from_slice(&m.born_host.port().to_le_bytes());
    put_u32(buf, OFF_RECONSUME, m.reconsume_times);
    buf[OFF_MSG_ID..OFF_MSG_ID + 16].copy_from_slice(&m.msg_id.to_le_bytes());

    let mut p = HEADER_SIZE;
    buf[p] = topic.len() as u8;
    p += 1;
    p = put_bytes(buf, p, topic.as_bytes());
    p = put_len16(buf, p, m.tag.as_bytes());
    let (keys_len, props_len) = m.sections_len();
    buf[p..p + 2].copy_from_slice(&(keys_len as u16).to_le_bytes());
    p += 2;
    for key in m.keys {
        p = put_len16(buf, p, key.as_bytes());
    }
    buf[p..p + 2].copy_from_slice(&(props_len as u16).to_le_bytes());
    p += 2;
    for (k, v) in m.properties {
        p = put_len16(buf, p, k.as_bytes());
        p = put_len16(buf, p, v.as_bytes());
    }
    buf[p..p + 4].copy_from_slice(&(m.body.len() as u32).to_le_bytes());
    p += 4;
    p = put_bytes(buf, p, m.body);
    debug_assert_eq!(p, total);
    let crc = record_crc(buf);
    put_u32(buf, OFF_CRC, crc);
}

/// CRC32C over the whole record except the CRC field itself.
pub fn record_crc(rec: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&rec[..OFF_CRC]);
    crc32c::crc32c_append(crc, &rec[OFF_CRC + 4..])
}

/// Writes a blank filler header (total length + magic) at the start of `buf`.
pub fn encode_blank(buf: &mut [u8], len: u32) {
    put_u32(buf, OFF_TOTAL_LEN, len);
    put_u32(buf, OFF_MAGIC, BLANK_MAGIC);
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_bytes(buf: &mut [u8], at: usize, b: &[u8]) -> usize {
    buf[at..at + b.len()].copy_from_slice(b);
    at + b.len()
}

fn put_len16(buf: &mut [u8], at: usize, b: &[u8]) -> usize {
    buf[at..at + 2].copy_from_slice(&(b.len() as u16).to_le_bytes());
    put_bytes(buf, at + 2, b)
}

/// Little-endian u32 at `at` (panics when out of bounds; callers check lengths).
pub fn get_u32(buf: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Little-endian u64 at `at` (panics when out of bounds; callers check lengths).
pub fn get_u64(buf: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(a)
}

fn get_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}

/// What is at a position of the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// A record of this many bytes (header checked, CRC not yet).
    Record(usize),
    /// A blank filler: the rest of the segment is unused.
    Blank,
    /// Zeros or garbage: the end of the written data, or a torn write.
    End(&'static str),
}

/// Reads the length and magic at the start of `avail` (the bytes left in the segment).
pub fn probe(avail: &[u8]) -> Probe {
    if avail.len() < 8 {
        return Probe::Blank;
    }
    let len = get_u32(avail, OFF_TOTAL_LEN) as usize;
    match get_u32(avail, OFF_MAGIC) {
        BLANK_MAGIC if len == avail.len() => Probe::Blank,
        RECORD_MAGIC if (MIN_RECORD_SIZE..=avail.len()).contains(&len) => Probe::Record(len),
        0 if len == 0 => Probe::End("zeros"),
        RECORD_MAGIC => Probe::End("record length out of range"),
        _ => Probe::End("bad magic"),
    }
}

/// A parsed, CRC-checked record borrowed from the log (or from a copy of its bytes).
#[derive(Clone, Copy)]
pub struct RecordView<'a> {
    buf: &'a [u8],
    topic: &'a str,
    tag: &'a str,
    keys: &'a [u8],
    props: &'a [u8],
    body: &'a [u8],
}

impl<'a> RecordView<'a> {
    /// Parses and validates `buf`, which must hold exactly one record.
    pub fn parse(buf: &'a [u8]) -> Result<Self, &'static str> {
        if buf.len() < MIN_RECORD_SIZE {
            return Err("record shorter than its header");
        }
        if get_u32(buf, OFF_MAGIC) != RECORD_MAGIC {
            return Err("bad magic");
        }
        if get_u32(buf, OFF_TOTAL_LEN) as usize != buf.len() {
            return Err("length field does not match");
        }
        if record_crc(buf) != get_u32(buf, OFF_CRC) {
            return Err("CRC mismatch");
        }
        Self::parse_unchecked_crc(buf)
    }

    /// Parses the sections without checking the CRC (the caller did, or trusts the bytes).
    pub fn parse_unchecked_crc(buf: &'a [u8]) -> Result<Self, &'static str> {
        let mut p = HEADER_SIZE;
        let topic_len = *buf.get(p).ok_or("truncated topic")? as usize;
        p += 1;
        let topic = take(buf, &mut p, topic_len)?;
        let tag_len = get_u16(take(buf, &mut p, 2)?, 0) as usize;
        let tag = take(buf, &mut p, tag_len)?;
        let keys_len = get_u16(take(buf, &mut p, 2)?, 0) as usize;
        let keys = take(buf, &mut p, keys_len)?;
        let props_len = get_u16(take(buf, &mut p, 2)?, 0) as usize;
        let props = take(buf, &mut p, props_len)?;
        let body_len = get_u32(take(buf, &mut p, 4)?, 0) as usize;
        let body = take(buf, &mut p, body_len)?;
        if p != buf.len() {
            return Err("trailing bytes after body");
        }
        let topic = std::str::from_utf8(topic).map_err(|_| "topic is not UTF-8")?;
        let tag = std::str::from_utf8(tag).map_err(|_| "tag is not UTF-8")?;
        Ok(Self {
            buf,
            topic,
            tag,
            keys,
            props,
            body,
        })
    }

    /// The whole record's bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.buf
    }
    /// Record flags.
    pub fn flags(&self) -> u32 {
        get_u32(self.buf, OFF_FLAGS)
    }
    /// Queue id within the topic.
    pub fn queue_id(&self) -> u32 {
        get_u32(self.buf, OFF_QUEUE_ID)
    }
    /// Position in the (topic, queue) consume queue.
    pub fn queue_offset(&self) -> u64 {
        get_u64(self.buf, OFF_QUEUE_OFFSET)
    }
    /// Position in the commit log.
    pub fn phys_offset(&self) -> u64 {
        get_u64(self.buf, OFF_PHYS_OFFSET)
    }
    /// Producer's creation time, ms since the epoch.
    pub fn born_timestamp(&self) -> i64 {
        get_u64(self.buf, OFF_BORN_TS) as i64
    }
    /// Broker's append time, ms since the epoch.
    pub fn store_timestamp(&self) -> i64 {
        get_u64(self.buf, OFF_STORE_TS) as i64
    }
    /// The producer's address.
    pub fn born_host(&self) -> SocketAddr {
        let mut ip = [0u8; 16];
        ip.copy_from_slice(&self.buf[OFF_BORN_HOST..OFF_BORN_HOST + 16]);
        let ip = Ipv6Addr::from(ip);
        let ip = match ip.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(ip),
        };
        SocketAddr::new(ip, get_u16(self.buf, OFF_BORN_PORT))
    }
    /// Times this message was handed back for reconsumption.
    pub fn reconsume_times(&self) -> u32 {
        get_u32(self.buf, OFF_RECONSUME)
    }
    /// Producer-assigned unique id.
    pub fn msg_id(&self) -> u128 {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buf[OFF_MSG_ID..OFF_MSG_ID + 16]);
        u128::from_le_bytes(a)
    }
    /// Topic name.
    pub fn topic(&self) -> &'a str {
        self.topic
    }
    /// The tag, or "" for none.
    pub fn tag(&self) -> &'a str {
        self.tag
    }
    /// Lookup keys (invalid UTF-8 keys are skipped; the writer only stores `&str`).
    pub fn keys(&self) -> impl Iterator<Item = &'a str> + 'a {
        let mut rest = self.keys;
        std::iter::from_fn(move || {
            let (item, tail) = split_len16(rest)?;
            rest = tail;
            Some(std::str::from_utf8(item).unwrap_or(""))
        })
    }
    /// Properties, name to value, in stored order.
    pub fn properties(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let mut rest = self.props;
        std::iter::from_fn(move || {
            let (k, tail) = split_len16(rest)?;
            let (v, tail) = split_len16(tail)?;
            rest = tail;
            Some((
                std::str::from_utf8(k).unwrap_or(""),
                std::str::from_utf8(v).unwrap_or(""),
            ))
        })
    }
    /// The raw keys section: repeated `u16 len | bytes` (docs/STORAGE.md).
    pub fn keys_section(&self) -> &'a [u8] {
        self.keys
    }
    /// The raw properties section: repeated `u16 len | name | u16 len | value`.
    pub fn properties_section(&self) -> &'a [u8] {
        self.props
    }
    /// One property by name.
    pub fn property(&self, name: &str) -> Option<&'a str> {
        self.properties().find(|(k, _)| *k == name).map(|(_, v)| v)
    }
    /// The payload.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }
}

impl std::fmt::Debug for RecordView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("topic", &self.topic)
            .field("queue_id", &self.queue_id())
            .field("queue_offset", &self.queue_offset())
            .field("phys_offset", &self.phys_offset())
            .field("tag", &self.tag)
            .field("body_len", &self.body.len())
            .finish()
    }
}

fn take<'a>(buf: &'a [u8], p: &mut usize, n: usize) -> Result<&'a [u8], &'static str> {
    let end = p.checked_add(n).ok_or("length overflow")?;
    let s = buf.get(*p..end).ok_or("section runs past the record")?;
    *p = end;
    Ok(s)
}

fn split_len16(b: &[u8]) -> Option<(&[u8], &[u8])> {
    if b.len() < 2 {
        return None;
    }
    let n = get_u16(b, 0) as usize;
    let rest = &b[2..];
    (rest.len() >= n).then(|| rest.split_at(n))
}

/// Stable 64-bit hash of a tag, kept in consume-queue entries (FNV-1a; 0 means "no tag").
pub fn tag_hash(tag: &str) -> u64 {
    if tag.is_empty() {
        return 0;
    }
    fnv1a(FNV_OFFSET, tag.as_bytes())
}

/// FNV-1a 64 offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a 64 over `bytes`, continuing from `h`.
pub fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> RecordLimits {
        RecordLimits {
            max_body: 1 << 20,
            max_properties: 32 * 1024,
        }
    }

    fn encode(topic: &str, m: &NewMessage<'_>) -> Vec<u8> {
        let len = m.encoded_len(topic, &limits()).expect("valid");
        let mut buf = vec![0u8; len];
        let at = RecordPlacement {
            queue_id: 3,
            queue_offset: 77,
            phys_offset: 4096,
            store_timestamp: 1_700_000_000_123,
            extra_flags: 0,
        };
        encode_into(&mut buf, topic, m, &at);
        buf
    }

    proptest! {
        #[test]
        fn any_message_round_trips(
            topic in "[A-Za-z0-9_%|-]{1,127}",
            tag in "[a-zA-Z]{0,20}",
            keys in proptest::collection::vec("[a-z0-9]{1,12}", 0..5),
            props in proptest::collection::vec(("[a-z]{1,8}", ".{0,16}"), 0..6),
            body in proptest::collection::vec(any::<u8>(), 0..2048),
            id in any::<u128>(),
            v6 in any::<bool>(),
        ) {
            let keys: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
            let props: Vec<(&str, &str)> = props.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let host: SocketAddr = if v6 { "[2001:db8::1]:4000".parse().unwrap() } else { "10.1.2.3:999".parse().unwrap() };
            let m = NewMessage { msg_id: id, flags: 8, born_timestamp: 42, born_host: host, reconsume_times: 2,
                tag: &tag, keys: &keys, properties: &props, body: &body };
            let buf = encode(&topic, &m);
            prop_assert_eq!(probe(&buf), Probe::Record(buf.len()));
            let v = RecordView::parse(&buf).unwrap();
            prop_assert_eq!(v.topic(), topic.as_str());
            prop_assert_eq!(v.tag(), tag.as_str());
            prop_assert_eq!(v.keys().collect::<Vec<_>>(), keys);
            prop_assert_eq!(v.properties().collect::<Vec<_>>(), props);
            prop_assert_eq!(v.body(), &body[..]);
            prop_assert_eq!(v.msg_id(), id);
            prop_assert_eq!(v.born_host(), host);
            prop_assert_eq!((v.queue_id(), v.queue_offset(), v.phys_offset()), (3, 77, 4096));
            prop_assert_eq!((v.flags(), v.reconsume_times(), v.born_timestamp()), (8, 2, 42));
            prop_assert_eq!(v.store_timestamp(), 1_700_000_000_123);
        }

        #[test]
        fn any_flipped_byte_is_detected(pos in 0usize..200, bit in 0u8..8) {
            let m = NewMessage { msg_id: 1, flags: 0, born_timestamp: 1, born_host: "127.0.0.1:1".parse().unwrap(),
                reconsume_times: 0, tag: "t", keys: &["k"], properties: &[("a", "b")], body: &[7u8; 64] };
            let mut buf = encode("topic", &m);
            let pos = pos % buf.len();
            buf[pos] ^= 1 << bit;
            prop_assert!(RecordView::parse(&buf).is_err());
        }
    }

    #[test]
    fn limits_are_enforced_with_typed_errors() {
        let big = vec![0u8; (1 << 20) + 1];
        let m = NewMessage {
            msg_id: 1,
            flags: 0,
            born_timestamp: 0,
            born_host: "127.0.0.1:1".parse().unwrap(),
            reconsume_times: 0,
            tag: "",
            keys: &[],
            properties: &[],
            body: &big,
        };
        assert!(matches!(
            m.encoded_len("t", &limits()),
            Err(RecordError::BodyTooLarge { .. })
        ));
        let long = "v".repeat(40_000);
        let props = [("k", long.as_str())];
        let m = NewMessage {
            body: b"x",
            properties: &props,
            ..m
        };
        assert!(matches!(
            m.encoded_len("t", &limits()),
            Err(RecordError::PropertiesTooLarge { .. })
        ));
    }
}
