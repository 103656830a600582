//! Naming rules shared by broker and clients (as RocketMQ's): topic and group names are 1 to
//! 127 characters from `[A-Za-z0-9_%|-]`; some property names are reserved for the system.

/// Longest topic or group name.
pub const MAX_NAME_LEN: usize = 127;

/// Property names a user may not set: the broker and later features use them.
pub const RESERVED_PROPERTIES: &[&str] = &[
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
