//! Naming rules shared by broker and clients (as RocketMQ's): topic and group names are 1 to
//! 127 characters from `[A-Za-z0-9_%|-]`; some property names are reserved for the system.

/// Longest topic or group name.
pub const MAX_NAME_LEN: usize = 127;

/// System property names: the one place they are spelled. Each is reserved (a user may not
/// set it, see [`RESERVED_PROPERTIES`]); the broker and the SDK read and write them by these
/// constants.
pub mod props {
    /// The message's tag, as SQL92 filters see it.
    pub const TAGS: &str = "TAGS";
    /// The message's keys (space separated), as SQL92 filters see them.
    pub const KEYS: &str = "KEYS";
    /// Reserved (RocketMQ's client-side unique id).
    pub const UNIQ_KEY: &str = "UNIQ_KEY";
    /// Reserved (RocketMQ's delay).
    pub const DELAY: &str = "DELAY";
    /// The delay level a scheduled message was sent with.
    pub const DELAY_LEVEL: &str = "DELAY_LEVEL";
    /// When a scheduled message is due (epoch ms); it keeps it after delivery.
    pub const DELIVER_AT: &str = "DELIVER_AT";
    /// Marks a transactional half message.
    pub const TRAN_MSG: &str = "TRAN_MSG";
    /// The producer group of a half message (its check-backs go there).
    pub const PGROUP: &str = "PGROUP";
    /// The original topic of a message in a retry or dead-letter topic.
    pub const RETRY_TOPIC: &str = "RETRY_TOPIC";
    /// The topic a staged (scheduled or half) message is delivered to.
    pub const REAL_TOPIC: &str = "REAL_TOPIC";
    /// The queue a staged (scheduled or half) message is delivered to.
    pub const REAL_QID: &str = "REAL_QID";
    /// Reserved (RocketMQ's reconsume time).
    pub const RECONSUME_TIME: &str = "RECONSUME_TIME";
    /// Reserved (RocketMQ's max reconsume times).
    pub const MAX_RECONSUME_TIMES: &str = "MAX_RECONSUME_TIMES";
    /// Reserved (RocketMQ's original message id).
    pub const ORIGIN_MESSAGE_ID: &str = "ORIGIN_MESSAGE_ID";
    /// Reserved (RocketMQ's sharding key property).
    pub const SHARDING_KEY: &str = "SHARDING_KEY";
    /// Marks a timer log record that cancels a scheduled message.
    pub const TIMER_CANCEL: &str = "TIMER_CANCEL";
    /// Check-backs made so far for a half message (on its op records).
    pub const TRAN_CHECK_TIMES: &str = "TRAN_CHECK_TIMES";
}

/// Property names a user may not set: the broker and later features use them.
pub const RESERVED_PROPERTIES: &[&str] = &[
    props::TAGS,
    props::KEYS,
    props::UNIQ_KEY,
    props::DELAY,
    props::DELAY_LEVEL,
    props::DELIVER_AT,
    props::TRAN_MSG,
    props::PGROUP,
    props::RETRY_TOPIC,
    props::REAL_TOPIC,
    props::REAL_QID,
    props::RECONSUME_TIME,
    props::MAX_RECONSUME_TIMES,
    props::ORIGIN_MESSAGE_ID,
    props::SHARDING_KEY,
    props::TIMER_CANCEL,
    props::TRAN_CHECK_TIMES,
];

/// System topic holding scheduled messages until they are due.
pub const SCHEDULE_TOPIC: &str = "%SCHEDULE%";
/// System topic holding transactional half messages.
pub const HALF_TOPIC: &str = "%HALF%";
/// System topic recording transaction outcomes (one op record per decision or check).
pub const HALF_OP_TOPIC: &str = "%HALF_OP%";
/// System topic receiving half messages whose check-backs ran out.
pub const TRANS_CHECK_MAX_TOPIC: &str = "%TRANS_CHECK_MAX%";
/// Prefix of a consumer group's retry topic.
pub const RETRY_PREFIX: &str = "%RETRY%";
/// Prefix of a consumer group's dead-letter topic.
pub const DLQ_PREFIX: &str = "%DLQ%";

/// A consumer group's retry topic.
pub fn retry_topic(group: &str) -> String {
    format!("{RETRY_PREFIX}{group}")
}

/// A consumer group's dead-letter topic.
pub fn dlq_topic(group: &str) -> String {
    format!("{DLQ_PREFIX}{group}")
}

/// True for topics only the broker writes (clients may read retry and DLQ topics).
pub fn is_system_topic(topic: &str) -> bool {
    topic.starts_with('%')
        && (topic == SCHEDULE_TOPIC
            || topic == HALF_TOPIC
            || topic == HALF_OP_TOPIC
            || topic == TRANS_CHECK_MAX_TOPIC
            || topic.starts_with(RETRY_PREFIX)
            || topic.starts_with(DLQ_PREFIX))
}

/// Checks a topic or group name; the error says what is wrong.
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{kind} name is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{kind} name is {} characters long; the maximum is {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if let Some((i, c)) = name
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '%' | '|' | '-')))
    {
        return Err(format!(
            "{kind} name {name:?} has {c:?} at position {i}; allowed are A-Z a-z 0-9 _ % | -"
        ));
    }
    Ok(())
}

/// A name that breaks the naming rules; the message says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidName(pub String);

/// Defines a name type whose only constructor checks [`check_name`] (parse, don't validate):
/// code that holds one never checks it again.
macro_rules! name_type {
    ($(#[$doc:meta])* $t:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $t(String);

        /// Debug-prints as the quoted name, like a `String`, so messages read `topic "x"`.
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(&self.0, f)
            }
        }

        impl $t {
            /// Checks `name` against the naming rules.
            pub fn parse(name: impl Into<String>) -> Result<Self, InvalidName> {
                Self::parse_as($kind, name)
            }

            /// Like [`Self::parse`], naming the value `kind` in the error (e.g. "producer
            /// group").
            pub fn parse_as(kind: &str, name: impl Into<String>) -> Result<Self, InvalidName> {
                let name = name.into();
                check_name(kind, &name).map_err(InvalidName)?;
                Ok($t(name))
            }

            /// The name.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The name as a `String`.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::ops::Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A topic name that follows the naming rules.
    TopicName,
    "topic"
);
name_type!(
    /// A consumer or producer group name that follows the naming rules.
    GroupName,
    "group"
);
name_type!(
    /// A plugin name (topic naming rules).
    PluginName,
    "plugin"
);

impl GroupName {
    /// This group's retry topic (too long a group name makes it invalid).
    pub fn retry_topic(&self) -> Result<TopicName, InvalidName> {
        TopicName::parse(retry_topic(self))
    }

    /// This group's dead-letter topic (too long a group name makes it invalid).
    pub fn dlq_topic(&self) -> Result<TopicName, InvalidName> {
        TopicName::parse(dlq_topic(self))
    }
}

/// Checks a user property name: not empty, not reserved, not starting with `__`.
pub fn check_property_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("property name is empty".into());
    }
    if RESERVED_PROPERTIES.contains(&name) || name.starts_with("__") {
        return Err(format!(
            "property name {name:?} is reserved for the system; choose another name"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rocketmq_rules() {
        assert!(check_name("topic", "Order_Events-1|%x").is_ok());
        assert!(check_name("topic", "").unwrap_err().contains("empty"));
        assert!(check_name("topic", &"a".repeat(128))
            .unwrap_err()
            .contains("127"));
        let e = check_name("group", "bad name").unwrap_err();
        assert!(e.contains("position 3"), "{e}");
        assert!(check_property_name("KEYS").is_err());
        assert!(check_property_name("__x").is_err());
        assert!(check_property_name("region").is_ok());
    }

    #[test]
    fn typed_names_are_parsed_once() {
        let t = TopicName::parse("orders").unwrap();
        assert_eq!(&*t, "orders");
        assert_eq!(t.to_string(), "orders");
        let e = GroupName::parse_as("producer group", "a b").unwrap_err();
        assert!(e.0.starts_with("producer group name"), "{e}");
        let g = GroupName::parse("g".repeat(127)).unwrap();
        assert!(
            g.retry_topic().is_err(),
            "a 127-character group has no valid retry topic"
        );
        assert_eq!(
            GroupName::parse("pay")
                .unwrap()
                .dlq_topic()
                .unwrap()
                .as_str(),
            "%DLQ%pay"
        );
        assert!(PluginName::parse("").is_err());
    }
}
