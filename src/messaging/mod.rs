//! Messaging semantics on top of the store: scheduled (delayed) messages through a timer
//! wheel over a log (`timer`), transactional half messages with check-back (`tx`), retries
//! with back-off and dead-letter queues (`retry`), and the re-addressed record they all
//! append ([`Moved`]) (docs/SEMANTICS.md). The broker's handlers check requests and call in
//! here; this room uses the store and the clock, never the broker.

pub(crate) mod retry;
pub mod timer;
pub(crate) mod tx;

use std::net::SocketAddr;
use std::time::Duration;

use quiver_protocol::names::{self, props};
use quiver_protocol::{NewMessage, RecordView};
use serde::{Deserialize, Serialize};

/// The `[messaging]` section of the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessagingConfig {
    /// Delay of each delay level, level 1 first (RocketMQ's 18 levels by default).
    pub delay_levels: Vec<String>,
    /// Longest delay a scheduled message may have, in ms (default 30 days).
    #[serde(with = "crate::units::ms")]
    pub max_delay_ms: u64,
    /// Width of one timer-wheel slot in ms (default 100).
    #[serde(with = "crate::units::ms")]
    pub timer_slot_ms: u64,
    /// Slots in the timer wheel (default 2^20: about 29 hours of 100 ms slots). Messages due
    /// later are re-queued when their slot comes round. Memory: 8 bytes per slot.
    pub timer_slots: u32,
    /// Back-off before each retry of a message handed back by a consumer (reconsume 1, 2,
    /// ...; the last one repeats). Default RocketMQ's `10s 30s 1m ... 2h`.
    pub retry_delays: Vec<String>,
    /// First transaction check-back after a half message is stored unresolved (ms).
    #[serde(with = "crate::units::ms")]
    pub tx_check_timeout_ms: u64,
    /// Interval between later check-backs of one half message (ms).
    #[serde(with = "crate::units::ms")]
    pub tx_check_interval_ms: u64,
    /// Real check-backs before a half message is discarded to `%TRANS_CHECK_MAX%`.
    pub tx_max_checks: u32,
}

impl Default for MessagingConfig {
    fn default() -> Self {
        let list = |s: &str| s.split_whitespace().map(String::from).collect();
        Self {
            delay_levels: list("1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h"),
            max_delay_ms: 30 * 24 * 3600 * 1000,
            timer_slot_ms: 100,
            timer_slots: 1 << 20,
            retry_delays: list("10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h"),
            tx_check_timeout_ms: 6_000,
            tx_check_interval_ms: 60_000,
            tx_max_checks: 15,
        }
    }
}

impl MessagingConfig {
    /// Checks the section; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let levels = self.levels()?;
        if levels.is_empty() || levels.len() > 255 {
            return Err("messaging.delay_levels must have 1..=255 entries".into());
        }
        if self.retries()?.is_empty() {
            return Err("messaging.retry_delays must not be empty".into());
        }
        if !(1..=60_000).contains(&self.timer_slot_ms) {
            return Err("messaging.timer_slot_ms must be 1..=60000".into());
        }
        if !(16..=1 << 26).contains(&self.timer_slots) {
            return Err("messaging.timer_slots must be 16..=67108864".into());
        }
        if self.max_delay_ms == 0 {
            return Err("messaging.max_delay_ms must be positive".into());
        }
        if self.tx_check_interval_ms == 0 || self.tx_check_timeout_ms == 0 {
            return Err(
                "messaging.tx_check_timeout_ms and tx_check_interval_ms must be positive".into(),
            );
        }
        Ok(())
    }

    /// The delay levels as durations.
    pub fn levels(&self) -> Result<Vec<Duration>, String> {
        parse_list("messaging.delay_levels", &self.delay_levels)
    }

    /// The retry back-offs as durations.
    pub fn retries(&self) -> Result<Vec<Duration>, String> {
        parse_list("messaging.retry_delays", &self.retry_delays)
    }
}

fn parse_list(field: &str, items: &[String]) -> Result<Vec<Duration>, String> {
    items
        .iter()
        .map(|s| parse_duration(s).map_err(|e| format!("{field}: {e}")))
        .collect()
}

pub use crate::units::parse_duration;

/// Properties the broker adds while a message waits in a system topic; they are removed when
/// it reaches its real topic.
const STAGING_PROPERTIES: &[&str] = &[
    props::REAL_TOPIC,
    props::REAL_QID,
    props::TIMER_CANCEL,
    props::TRAN_MSG,
    props::TRAN_CHECK_TIMES,
];

/// The properties a message carries while it waits in a system topic (scheduled or half):
/// the topic and queue it goes to, then `extra` (due time, delay level, producer group...).
pub(crate) fn staging_properties(
    topic: &str,
    queue_id: u32,
    extra: &[(&str, String)],
) -> Vec<(String, String)> {
    let mut staging = vec![
        (props::REAL_TOPIC.to_string(), topic.to_string()),
        (props::REAL_QID.to_string(), queue_id.to_string()),
    ];
    staging.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    staging
}

/// A stored record, re-addressed: what the broker appends when a message moves between
/// topics (due, committed, retried, dead-lettered). Keeps id, tag, keys, body, born time and
/// host, flags; properties are edited.
pub(crate) struct Moved {
    pub(crate) msg_id: u128,
    pub(crate) flags: u32,
    pub(crate) born_timestamp: i64,
    pub(crate) born_host: SocketAddr,
    pub(crate) reconsume_times: u32,
    pub(crate) tag: String,
    pub(crate) keys: Vec<String>,
    pub(crate) properties: Vec<(String, String)>,
    pub(crate) body: bytes::Bytes,
}

impl Moved {
    /// The record's fields; `keep_staging` keeps the system staging properties.
    pub(crate) fn from_record(
        rec: &RecordView<'_>,
        body: bytes::Bytes,
        keep_staging: bool,
    ) -> Self {
        Moved {
            msg_id: rec.msg_id(),
            flags: rec.flags() & !quiver_protocol::record::FLAG_BATCH_CONT,
            born_timestamp: rec.born_timestamp(),
            born_host: rec.born_host(),
            reconsume_times: rec.reconsume_times(),
            tag: rec.tag().to_string(),
            keys: rec.keys().map(String::from).collect(),
            properties: rec
                .properties()
                .filter(|(k, _)| keep_staging || !STAGING_PROPERTIES.contains(k))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body,
        }
    }

    /// Sets (or replaces) a property.
    pub(crate) fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.properties.iter_mut().find(|(k, _)| k == name) {
            Some(p) => p.1 = value,
            None => self.properties.push((name.to_string(), value)),
        }
    }

    /// Removes a property.
    pub(crate) fn remove(&mut self, name: &str) {
        self.properties.retain(|(k, _)| k != name);
    }

    /// Appends this message to (topic, queue); durability is reported by the result.
    pub(crate) fn append(
        &self,
        store: &crate::store::Store,
        topic: &str,
        queue_id: u32,
    ) -> Result<crate::store::PendingAppend, crate::store::StoreError> {
        let keys: Vec<&str> = self.keys.iter().map(String::as_str).collect();
        let props: Vec<(&str, &str)> = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let m = NewMessage {
            msg_id: self.msg_id,
            flags: self.flags,
            born_timestamp: self.born_timestamp,
            born_host: self.born_host,
            reconsume_times: self.reconsume_times,
            tag: &self.tag,
            keys: &keys,
            properties: &props,
            body: &self.body,
        };
        store.append(topic, queue_id, std::slice::from_ref(&m))
    }

    /// Appends this message to (topic, queue) and waits until it is durable. Blocking.
    pub(crate) fn append_blocking(
        &self,
        store: &crate::store::Store,
        topic: &str,
        queue_id: u32,
    ) -> Result<crate::store::Appended, crate::store::StoreError> {
        self.append(store, topic, queue_id)?.wait()
    }
}

/// The body bytes of a record held in `rec_bytes` (a zero-copy slice).
pub(crate) fn body_of(rec_bytes: &bytes::Bytes) -> Option<(bytes::Bytes, u128)> {
    let v = RecordView::parse_unchecked_crc(rec_bytes).ok()?;
    let body = v.body();
    let start = body.as_ptr() as usize - rec_bytes.as_ptr() as usize;
    Some((rec_bytes.slice(start..start + body.len()), v.msg_id()))
}

/// The original topic of a message seen in a retry or dead-letter topic.
pub(crate) fn original_topic<'a>(rec: &RecordView<'a>) -> &'a str {
    let t = rec.topic();
    if t.starts_with(names::RETRY_PREFIX) || t.starts_with(names::DLQ_PREFIX) {
        rec.property(props::RETRY_TOPIC).unwrap_or(t)
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("x1s").is_err());
        let c = MessagingConfig::default();
        c.validate().unwrap();
        assert_eq!(c.levels().unwrap().len(), 18);
        assert_eq!(c.retries().unwrap().len(), 16);
        assert_eq!(c.levels().unwrap()[17], Duration::from_secs(7200));
    }
}
