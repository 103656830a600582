//! What a filter can see of a message: its properties and the system attributes.

use std::collections::HashMap;

use quiver_protocol::names::props;
use quiver_protocol::record::HEADER_SIZE;
use quiver_protocol::RecordView;

/// Read access to the parts of a message a filter looks at.
///
/// Everything is borrowed: evaluating a compiled filter against a message allocates nothing
/// in the common case. SQL filters see the system attributes under RocketMQ's names: `TAGS`
/// is [`MessageProps::tag`] (NULL when the message has no tag), `KEYS` is
/// [`MessageProps::keys`] joined by single spaces (NULL when there are none), and `TOPIC` is
/// [`MessageProps::topic`]. These names win over user properties of the same name.
pub trait MessageProps {
    /// A user property by exact (case-sensitive) name; `None` when the message has none.
    fn property(&self, name: &str) -> Option<&str>;
    /// The message's tag; "" when it has none.
    fn tag(&self) -> &str;
    /// The message's lookup keys, in order.
    fn keys(&self) -> impl Iterator<Item = &str>;
    /// The topic the message was sent to.
    fn topic(&self) -> &str;
}

impl MessageProps for RecordView<'_> {
    /// Same answer as [`RecordView::property`] (the first property of that name; a value
    /// that is not UTF-8 reads as ""), but compares raw name bytes and checks UTF-8 only for
    /// the value found: this lookup runs for every message a SQL filter looks at.
    fn property(&self, name: &str) -> Option<&str> {
        match properties_section(self.bytes()) {
            Some(section) => find_property(section, name.as_bytes())
                .map(|v| std::str::from_utf8(v).unwrap_or("")),
            None => RecordView::property(self, name),
        }
    }
    fn tag(&self) -> &str {
        RecordView::tag(self)
    }
    fn keys(&self) -> impl Iterator<Item = &str> {
        RecordView::keys(self)
    }
    fn topic(&self) -> &str {
        RecordView::topic(self)
    }
}

impl<T: MessageProps + ?Sized> MessageProps for &T {
    fn property(&self, name: &str) -> Option<&str> {
        (**self).property(name)
    }
    fn tag(&self) -> &str {
        (**self).tag()
    }
    fn keys(&self) -> impl Iterator<Item = &str> {
        (**self).keys()
    }
    fn topic(&self) -> &str {
        (**self).topic()
    }
}

/// A plain map as a message, for tests and the CLI: every entry is a user property, except
/// that `TAGS`, `KEYS` (split on whitespace) and `TOPIC` supply the system attributes.
impl MessageProps for HashMap<String, String> {
    fn property(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
    fn tag(&self) -> &str {
        self.get(props::TAGS).map_or("", String::as_str)
    }
    fn keys(&self) -> impl Iterator<Item = &str> {
        self.get(props::KEYS)
            .map(String::as_str)
            .unwrap_or("")
            .split_whitespace()
    }
    fn topic(&self) -> &str {
        self.get("TOPIC").map_or("", String::as_str)
    }
}

/// An owned message made of a topic, a tag, keys and string properties: the test double of
/// a stored record, also handy for `quiver filter eval`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyMap {
    /// Topic name.
    pub topic: String,
    /// The tag, "" for none.
    pub tag: String,
    /// Lookup keys.
    pub keys: Vec<String>,
    /// User properties, name to value.
    pub properties: HashMap<String, String>,
}

impl PropertyMap {
    /// An empty message (no topic, tag, keys or properties).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the topic.
    pub fn with_topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    /// Sets the tag.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = tag.into();
        self
    }

    /// Adds a key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    /// Sets a user property.
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }
}

impl MessageProps for PropertyMap {
    fn property(&self, name: &str) -> Option<&str> {
        self.properties.get(name).map(String::as_str)
    }
    fn tag(&self) -> &str {
        &self.tag
    }
    fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(String::as_str)
    }
    fn topic(&self) -> &str {
        &self.topic
    }
}

/// The properties section of a record (layout: docs/STORAGE.md §2): after the fixed header
/// come the topic (`u8` length), the tag (`u16`), the keys section (`u16` byte length) and the
/// properties section (`u16` byte length), all little-endian.
fn properties_section(rec: &[u8]) -> Option<&[u8]> {
    let mut p = HEADER_SIZE;
    p += 1 + usize::from(*rec.get(p)?);
    p += 2 + usize::from(read_u16(rec, p)?);
    p += 2 + usize::from(read_u16(rec, p)?);
    let len = usize::from(read_u16(rec, p)?);
    rec.get(p + 2..p + 2 + len)
}

/// The value of the first property named `name` in a properties section (`u16` length +
/// name, `u16` length + value, repeated). Only names of the right length are compared.
fn find_property<'a>(section: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut p = 0;
    while p < section.len() {
        let key_len = usize::from(read_u16(section, p)?);
        let key_start = p + 2;
        let value_at = key_start + key_len;
        let value_len = usize::from(read_u16(section, value_at)?);
        let value_start = value_at + 2;
        let end = value_start + value_len;
        if end > section.len() {
            return None;
        }
        if key_len == name.len() && section[key_start..value_at] == *name {
            return Some(&section[value_start..end]);
        }
        p = end;
    }
    None
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}
