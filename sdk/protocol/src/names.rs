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
}
