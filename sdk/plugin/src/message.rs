//! [`Message`], the view of one message a filter reads and a transform edits, and the result
//! types of a transform ([`Outcome`], [`Reject`], [`TransformResult`]).

use std::borrow::Cow;
use std::fmt;

use crate::sections::{self, Keys, Properties};

/// One message of a batch.
///
/// A filter gets a `&Message` and only reads it. A transform gets the `Message` by value and
/// may change its tag, keys, properties and body, copy-on-write: the fields it does not change
/// stay borrowed from the input batch and are handed back to the broker without being copied.
/// The id, topic, queue, offsets, timestamps and reconsume count cannot be changed.
///
/// Reading never panics: a section that is not well formed (which the broker never sends)
/// reads as empty from the first malformed element on, and text that is not UTF-8 reads as
/// `""` or `None`.
#[derive(Clone)]
pub struct Message<'a> {
    pub(crate) id: u128,
    pub(crate) topic: &'a str,
    pub(crate) queue_id: u32,
    pub(crate) queue_offset: u64,
    pub(crate) born_timestamp: i64,
    pub(crate) store_timestamp: i64,
    pub(crate) reconsume_times: u32,
    pub(crate) flags: u32,
    pub(crate) ingress: bool,
    pub(crate) tag: Cow<'a, [u8]>,
    pub(crate) keys: Cow<'a, [u8]>,
    pub(crate) props: Cow<'a, [u8]>,
    pub(crate) body: Cow<'a, [u8]>,
}

impl<'a> Message<'a> {
    /// A standalone message on `topic` with `body`, as a producer would send it: ingress, id 0,
    /// queue 0, born timestamp 0, no tag, keys or properties. Meant for unit tests of plugin
    /// functions (inside the broker, messages come from the input batch); use the setters to
    /// give it a tag, keys and properties.
    pub fn new(topic: &'a str, body: &'a [u8]) -> Self {
        Message {
            id: 0,
            topic,
            queue_id: 0,
            queue_offset: u64::MAX,
            born_timestamp: 0,
            store_timestamp: 0,
            reconsume_times: 0,
            flags: 0,
            ingress: true,
            tag: Cow::Borrowed(&[]),
            keys: Cow::Borrowed(&[]),
            props: Cow::Borrowed(&[]),
            body: Cow::Borrowed(body),
        }
    }

    /// The message id (as shown by `quiver admin message get --id`).
    pub fn id(&self) -> u128 {
        self.id
    }

    /// The topic the message is sent to or pulled from.
    pub fn topic(&self) -> &str {
        self.topic
    }

    /// The queue of the topic.
    pub fn queue_id(&self) -> u32 {
        self.queue_id
    }

    /// The message's offset in its queue; `None` at ingress (not stored yet).
    pub fn queue_offset(&self) -> Option<u64> {
        (self.queue_offset != u64::MAX).then_some(self.queue_offset)
    }

    /// When the producer created the message, in milliseconds since the Unix epoch.
    pub fn born_timestamp(&self) -> i64 {
        self.born_timestamp
    }

    /// When the broker stored the message, in milliseconds since the Unix epoch; `0` at
    /// ingress.
    pub fn store_timestamp(&self) -> i64 {
        self.store_timestamp
    }

    /// How many times the message has been redelivered to its consumer group.
    pub fn reconsume_times(&self) -> u32 {
        self.reconsume_times
    }

    /// The record flags (reserved for system use; `0` for ordinary messages).
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// Whether this is a producer's message before it is stored (`true`), or a message pulled
    /// by a subscription (`false`).
    pub fn is_ingress(&self) -> bool {
        self.ingress
    }

    /// The tag; `""` when the message has none.
    pub fn tag(&self) -> &str {
        std::str::from_utf8(&self.tag).unwrap_or("")
    }

    /// The keys, in order.
    pub fn keys(&self) -> Keys<'_> {
        Keys::new(&self.keys)
    }

    /// The value of the first property called `name` (no allocation).
    pub fn property(&self, name: &str) -> Option<&str> {
        sections::find_property(&self.props, name)
    }

    /// The properties as `(name, value)` pairs, in order (a name may appear twice).
    pub fn properties(&self) -> Properties<'_> {
        Properties::new(&self.props)
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as text, when it is valid UTF-8.
    pub fn body_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }

    /// Replaces the body.
    pub fn set_body(&mut self, body: impl Into<Vec<u8>>) {
        self.body = Cow::Owned(body.into());
    }

    /// Replaces the tag (`""` removes it).
    ///
    /// # Panics
    ///
    /// If the tag is longer than 65535 bytes.
    pub fn set_tag(&mut self, tag: impl Into<String>) {
        let tag = tag.into();
        assert!(
            tag.len() <= u16::MAX as usize,
            "a tag is {} bytes long; the maximum is 65535",
            tag.len()
        );
        self.tag = Cow::Owned(tag.into_bytes());
    }

    /// Sets property `name` to `value`: replaces the first property of that name (and removes
    /// any later duplicates), or adds it at the end. At ingress the broker refuses reserved
    /// names (see [`is_reserved_property`](crate::is_reserved_property)).
    ///
    /// # Panics
    ///
    /// If `name` or `value` is longer than 65535 bytes.
    pub fn set_property(&mut self, name: &str, value: &str) {
        if self.property(name) == Some(value)
            && self.properties().filter(|p| p.0 == name).count() == 1
        {
            return;
        }
        self.props = Cow::Owned(sections::rewrite_property(&self.props, name, Some(value)));
    }

    /// Removes every property called `name`; returns whether there was one.
    pub fn remove_property(&mut self, name: &str) -> bool {
        if !sections::has_property(&self.props, name) {
            return false;
        }
        self.props = Cow::Owned(sections::rewrite_property(&self.props, name, None));
        true
    }

    /// Adds a key after the existing ones.
    ///
    /// # Panics
    ///
    /// If `key` is empty (the broker refuses empty keys) or longer than 65535 bytes.
    pub fn add_key(&mut self, key: &str) {
        assert!(!key.is_empty(), "a key may not be empty");
        sections::push_str16(self.keys.to_mut(), "a key", key.as_bytes());
    }

    /// Removes all keys.
    pub fn clear_keys(&mut self) {
        if !self.keys.is_empty() {
            self.keys = Cow::Borrowed(&[]);
        }
    }
}

impl fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("topic", &self.topic)
            .field("queue_id", &self.queue_id)
            .field("queue_offset", &self.queue_offset())
            .field("born_timestamp", &self.born_timestamp)
            .field("store_timestamp", &self.store_timestamp)
            .field("reconsume_times", &self.reconsume_times)
            .field("ingress", &self.ingress)
            .field("tag", &self.tag())
            .field("keys", &self.keys().collect::<Vec<_>>())
            .field("properties", &self.properties().collect::<Vec<_>>())
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// A transform's refusal of one message, with a reason.
///
/// At ingress the producer's whole send fails with status `PluginRejected` and this reason; on
/// a subscription the message is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    reason: String,
}

impl Reject {
    /// A rejection with `reason` (shown to the producer at ingress).
    pub fn new(reason: impl Into<String>) -> Self {
        Reject {
            reason: reason.into(),
        }
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Reject {}

impl From<String> for Reject {
    fn from(reason: String) -> Self {
        Reject::new(reason)
    }
}

impl From<&str> for Reject {
    fn from(reason: &str) -> Self {
        Reject::new(reason)
    }
}

/// What a transform does with one message.
#[derive(Debug, Clone)]
pub enum Outcome<'a> {
    /// Deliver (or, at ingress, store) this message.
    Deliver(Message<'a>),
    /// Drop the message silently.
    Drop,
    /// Reject the message with a reason (see [`Reject`]).
    Reject(Reject),
}

/// The return types a `#[transform]` function may have; each converts into an [`Outcome`].
///
/// | returned | meaning |
/// |---|---|
/// | `Message<'a>` | deliver it |
/// | `Option<Message<'a>>` | `None` drops the message |
/// | `Result<Message<'a>, Reject>` | `Err` rejects it |
/// | `Result<Option<Message<'a>>, Reject>` | `Ok(None)` drops it, `Err` rejects it |
/// | `Outcome<'a>` | as it says |
pub trait TransformResult<'a> {
    /// Converts the result into an [`Outcome`].
    fn into_outcome(self) -> Outcome<'a>;
}

impl<'a> TransformResult<'a> for Outcome<'a> {
    fn into_outcome(self) -> Outcome<'a> {
        self
    }
}

impl<'a> TransformResult<'a> for Message<'a> {
    fn into_outcome(self) -> Outcome<'a> {
        Outcome::Deliver(self)
    }
}

impl<'a> TransformResult<'a> for Option<Message<'a>> {
    fn into_outcome(self) -> Outcome<'a> {
        self.map_or(Outcome::Drop, Outcome::Deliver)
    }
}

impl<'a> TransformResult<'a> for Result<Message<'a>, Reject> {
    fn into_outcome(self) -> Outcome<'a> {
        self.map_or_else(Outcome::Reject, Outcome::Deliver)
    }
}

impl<'a> TransformResult<'a> for Result<Option<Message<'a>>, Reject> {
    fn into_outcome(self) -> Outcome<'a> {
        match self {
            Ok(message) => message.into_outcome(),
            Err(reject) => Outcome::Reject(reject),
        }
    }
}

/// Whether the broker refuses `name` as a property name at ingress (docs/PROTOCOL.md §9.2):
/// empty, starting with `__`, or one of the names reserved for the system (`TAGS`, `KEYS`,
/// `UNIQ_KEY`, `DELAY`, …). The comparison is exact and case-sensitive.
pub fn is_reserved_property(name: &str) -> bool {
    name.is_empty() || name.starts_with("__") || RESERVED.contains(&name)
}

/// The broker's reserved property names (the same list as `quiver_protocol::names`, which this
/// crate does not depend on so plugins stay small; a test keeps the two equal).
const RESERVED: &[&str] = &[
    "TAGS",
    "KEYS",
    "UNIQ_KEY",
    "DELAY",
    "DELAY_LEVEL",
    "DELIVER_AT",
    "TRAN_MSG",
    "PGROUP",
    "RETRY_TOPIC",
    "REAL_TOPIC",
    "REAL_QID",
    "RECONSUME_TIME",
    "MAX_RECONSUME_TIMES",
    "ORIGIN_MESSAGE_ID",
    "SHARDING_KEY",
    "TIMER_CANCEL",
    "TRAN_CHECK_TIMES",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_match_the_broker() {
        assert_eq!(RESERVED, quiver_protocol::names::RESERVED_PROPERTIES);
    }

    #[test]
    fn standalone_message_and_setters() {
        let mut m = Message::new("orders", b"hello");
        assert!(m.is_ingress());
        assert_eq!(m.queue_offset(), None);
        assert_eq!(m.body_str(), Some("hello"));
        assert_eq!(m.tag(), "");
        m.set_tag("t1");
        m.add_key("k1");
        m.add_key("k2");
        m.set_property("a", "1");
        m.set_property("b", "2");
        m.set_property("a", "3");
        assert_eq!(m.tag(), "t1");
        assert_eq!(m.keys().collect::<Vec<_>>(), ["k1", "k2"]);
        assert_eq!(m.properties().collect::<Vec<_>>(), [("a", "3"), ("b", "2")]);
        assert!(m.remove_property("a"));
        assert!(!m.remove_property("a"));
        assert_eq!(m.property("a"), None);
        assert_eq!(m.property("b"), Some("2"));
        m.clear_keys();
        assert_eq!(m.keys().count(), 0);
        m.set_body("bye");
        assert_eq!(m.body(), b"bye");
        assert!(format!("{m:?}").contains("\"t1\""));
    }

    #[test]
    fn setting_an_existing_value_keeps_the_borrow() {
        let mut props = Vec::new();
        sections::push_str16(&mut props, "", b"a");
        sections::push_str16(&mut props, "", b"1");
        let mut m = Message::new("t", b"");
        m.props = Cow::Borrowed(&props);
        m.set_property("a", "1");
        assert!(matches!(m.props, Cow::Borrowed(_)));
        assert!(!m.remove_property("zz"));
        assert!(matches!(m.props, Cow::Borrowed(_)));
        m.set_property("a", "2");
        assert!(matches!(m.props, Cow::Owned(_)));
    }

    #[test]
    fn invalid_utf8_reads_as_empty() {
        let mut m = Message::new("t", &[0xff, 0x00]);
        m.tag = Cow::Borrowed(&[0xc3]);
        assert_eq!(m.tag(), "");
        assert_eq!(m.body_str(), None);
    }

    #[test]
    #[should_panic(expected = "may not be empty")]
    fn empty_key_panics() {
        Message::new("t", b"").add_key("");
    }

    #[test]
    fn results_convert() {
        let m = || Message::new("t", b"x");
        assert!(matches!(m().into_outcome(), Outcome::Deliver(_)));
        assert!(matches!(Some(m()).into_outcome(), Outcome::Deliver(_)));
        assert!(matches!(None::<Message>.into_outcome(), Outcome::Drop));
        assert!(matches!(
            Err::<Option<Message>, _>(Reject::new("no")).into_outcome(),
            Outcome::Reject(r) if r.reason() == "no"
        ));
        assert!(matches!(
            Ok::<_, Reject>(m()).into_outcome(),
            Outcome::Deliver(_)
        ));
        assert!(matches!(
            Ok::<Option<Message>, Reject>(None).into_outcome(),
            Outcome::Drop
        ));
    }

    #[test]
    fn reserved_names() {
        assert!(is_reserved_property(""));
        assert!(is_reserved_property("__x"));
        assert!(is_reserved_property("KEYS"));
        assert!(!is_reserved_property("keys"));
        assert!(!is_reserved_property("redacted"));
    }
}
