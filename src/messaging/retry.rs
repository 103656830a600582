//! Retries and the dead-letter queue (docs/SEMANTICS.md): a message a consumer hands back goes
//! to its group's retry topic through the schedule topic, after a back-off that grows with
//! each reconsume; past the group's limit (or when asked) it goes to the group's dead-letter
//! queue, from which it can be resent to the retry topic. Blocking: callers run these on a
//! blocking thread.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quiver_protocol::names::{dlq_topic, props, retry_topic, SCHEDULE_TOPIC};
use quiver_protocol::RecordView;

use super::{body_of, original_topic, Moved};
use crate::clock::Clock;
use crate::store::{GetStatus, ReadLimits, Store, StoreError};

/// Reconsume limit when a consumer gives none (0), as RocketMQ's.
pub(crate) const DEFAULT_MAX_RECONSUME: u32 = 16;

/// Why a send-back or a resend failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RetryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    NotFound(String),
}

/// Where a handed-back message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SentBack {
    /// True when it went to the dead-letter queue.
    pub(crate) to_dlq: bool,
    /// Its reconsume count now.
    pub(crate) reconsume_times: u32,
}

/// What a consumer asks for a message it hands back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HandBack {
    /// The message's id and commit-log offset (its handle).
    pub(crate) id: u128,
    pub(crate) handle: u64,
    /// The back-off the consumer chose (a delay level's), or `None` for the schedule's.
    pub(crate) delay: Option<Duration>,
    /// Reconsumes allowed before the dead-letter queue; 0 for [`DEFAULT_MAX_RECONSUME`].
    pub(crate) max_reconsume: u32,
    /// Straight to the dead-letter queue.
    pub(crate) to_dlq: bool,
}

/// Moves handed-back messages to retry topics and dead-letter queues.
pub(crate) struct Retries {
    store: Arc<Store>,
    clock: Clock,
    /// Back-off before reconsume 1, 2, ...; the last one repeats. Not empty.
    back_offs: Vec<Duration>,
}

impl Retries {
    /// `back_offs` comes from `messaging.retry_delays` (validated not empty).
    pub(crate) fn new(store: Arc<Store>, clock: Clock, back_offs: Vec<Duration>) -> Self {
        Retries {
            store,
            clock,
            back_offs,
        }
    }

    /// The back-off before reconsume number `reconsume` (1 for the first).
    fn back_off(&self, reconsume: u32) -> Duration {
        let i = (reconsume.max(1) - 1) as usize;
        self.back_offs
            .get(i)
            .or(self.back_offs.last())
            .copied()
            .unwrap_or_default()
    }

    /// Sends a message of `group` back: to the schedule topic, due on the group's retry topic
    /// after its back-off, or to the group's dead-letter queue. The caller makes sure both
    /// topics exist. Blocking (waits until the copy is durable).
    pub(crate) fn send_back(&self, group: &str, h: HandBack) -> Result<SentBack, RetryError> {
        let max_reconsume = match h.max_reconsume {
            0 => DEFAULT_MAX_RECONSUME,
            n => n,
        };
        let b = self.store.message_at(h.handle)?;
        let v = match RecordView::parse_unchecked_crc(&b) {
            Ok(v) if v.msg_id() == h.id => v,
            _ => {
                return Err(RetryError::NotFound(format!(
                    "no message {:032x} at commit-log offset {}",
                    h.id, h.handle
                )))
            }
        };
        let reconsume = v.reconsume_times().saturating_add(1);
        let body = body_of(&b).map(|(b, _)| b).unwrap_or_default();
        let mut m = Moved::from_record(&v, body, false);
        m.set(props::RETRY_TOPIC, original_topic(&v));
        m.reconsume_times = reconsume;
        if h.to_dlq || reconsume > max_reconsume {
            let dlq = dlq_topic(group);
            m.remove(props::DELIVER_AT);
            m.append_blocking(&self.store, &dlq, 0)?;
            tracing::info!(group = %dlq, id = %format!("{:032x}", h.id), reconsume, "message moved to the dead-letter queue");
            return Ok(SentBack {
                to_dlq: true,
                reconsume_times: reconsume,
            });
        }
        let delay = h.delay.unwrap_or_else(|| self.back_off(reconsume));
        let due = self.clock.now_ms().saturating_add(delay.as_millis() as i64);
        m.set(props::REAL_TOPIC, retry_topic(group));
        m.set(props::REAL_QID, "0");
        m.set(props::DELIVER_AT, due.to_string());
        m.append_blocking(&self.store, SCHEDULE_TOPIC, 0)?;
        Ok(SentBack {
            to_dlq: false,
            reconsume_times: reconsume,
        })
    }

    /// Resends dead-lettered messages of `group` to its retry topic with a reconsume count of
    /// 0: the one with id `id`, or up to `max` from `from_offset` of the dead-letter queue.
    /// Returns how many were resent. The caller makes sure the retry topic exists. Blocking.
    pub(crate) fn resend_dlq(
        &self,
        group: &str,
        id: Option<u128>,
        from_offset: u64,
        max: usize,
    ) -> Result<u64, RetryError> {
        let dlq = dlq_topic(group);
        let retry = retry_topic(group);
        let mut records: Vec<Bytes> = Vec::new();
        match id {
            Some(id) => {
                let found = self.store.messages_by_id(id)?;
                let Some(b) = found
                    .into_iter()
                    .find(|b| RecordView::parse_unchecked_crc(b).is_ok_and(|v| v.topic() == dlq))
                else {
                    return Err(RetryError::NotFound(format!(
                        "message {id:032x} is not in {dlq}"
                    )));
                };
                records.push(b);
            }
            None => {
                let mut offset = from_offset;
                while records.len() < max {
                    let want = (max - records.len()).min(1024);
                    let r = self.store.get_messages(
                        &dlq,
                        0,
                        offset,
                        ReadLimits::new(want, 16 << 20, want),
                        |_| true,
                    )?;
                    match r.status {
                        GetStatus::Found => {
                            records.extend(r.messages.into_iter().map(|m| m.bytes));
                            offset = r.next_offset;
                        }
                        GetStatus::OffsetTooSmall => offset = r.next_offset,
                        _ => break,
                    }
                }
            }
        }
        let mut n = 0;
        for b in &records {
            let Ok(v) = RecordView::parse_unchecked_crc(b) else {
                continue;
            };
            let body = body_of(b).map(|(b, _)| b).unwrap_or_default();
            let mut m = Moved::from_record(&v, body, false);
            m.reconsume_times = 0;
            m.append_blocking(&self.store, &retry, 0)?;
            n += 1;
        }
        tracing::info!(%group, count = n, "dead-letter messages resent to the retry topic");
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::StoreConfig;
    use quiver_protocol::NewMessage;

    const SECOND: Duration = Duration::from_secs(1);

    /// Stores one message and returns its commit-log offset.
    fn put(store: &Store, topic: &str, id: u128, reconsume: u32, props: &[(&str, &str)]) -> u64 {
        let m = NewMessage {
            msg_id: id,
            flags: 0,
            born_timestamp: 7,
            born_host: "127.0.0.1:1".parse().unwrap(),
            reconsume_times: reconsume,
            tag: "tg",
            keys: &["k"],
            properties: props,
            body: b"payload",
        };
        let appended = store
            .append(topic, 0, std::slice::from_ref(&m))
            .unwrap()
            .wait()
            .unwrap();
        appended.results[0].phys_offset
    }

    fn read(store: &Store, topic: &str) -> Vec<Bytes> {
        let r = store
            .get_messages(topic, 0, 0, ReadLimits::new(64, 1 << 20, 64), |_| true)
            .unwrap();
        r.messages.into_iter().map(|m| m.bytes).collect()
    }

    fn hand_back(id: u128, handle: u64) -> HandBack {
        HandBack {
            id,
            handle,
            delay: None,
            max_reconsume: 2,
            to_dlq: false,
        }
    }

    #[test]
    fn a_handed_back_message_is_scheduled_on_the_retry_topic_then_dead_lettered_past_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(StoreConfig::small_for_tests(dir.path())).unwrap());
        let time = ManualClock::at(1_000_000);
        let retries = Retries::new(store.clone(), time.clock(), vec![10 * SECOND, 30 * SECOND]);

        // First hand-back: scheduled, due after the first back-off, for the retry topic.
        let h = put(&store, "pay", 1, 0, &[("region", "eu")]);
        let sent = retries.send_back("g", hand_back(1, h)).unwrap();
        assert_eq!(
            sent,
            SentBack {
                to_dlq: false,
                reconsume_times: 1
            }
        );
        let staged = read(&store, SCHEDULE_TOPIC);
        let v = RecordView::parse_unchecked_crc(&staged[0]).unwrap();
        assert_eq!(v.msg_id(), 1);
        assert_eq!(v.reconsume_times(), 1);
        assert_eq!(v.body(), b"payload");
        assert_eq!(v.property(props::REAL_TOPIC), Some("%RETRY%g"));
        assert_eq!(v.property(props::REAL_QID), Some("0"));
        assert_eq!(v.property(props::RETRY_TOPIC), Some("pay"));
        assert_eq!(v.property(props::DELIVER_AT), Some("1010000"));
        assert_eq!(v.property("region"), Some("eu"));

        // A consumer's own delay wins; the second back-off follows the first.
        time.advance(SECOND);
        let chosen = HandBack {
            delay: Some(SECOND),
            ..hand_back(1, h)
        };
        retries.send_back("g", chosen).unwrap();
        let v = RecordView::parse_unchecked_crc(&read(&store, SCHEDULE_TOPIC)[1])
            .unwrap()
            .property(props::DELIVER_AT)
            .map(String::from);
        assert_eq!(v.as_deref(), Some("1002000"));
        let again = put(
            &store,
            "%RETRY%g",
            1,
            1,
            &[(props::RETRY_TOPIC, "pay"), (props::DELIVER_AT, "1")],
        );
        retries.send_back("g", hand_back(1, again)).unwrap();
        let v = RecordView::parse_unchecked_crc(&read(&store, SCHEDULE_TOPIC)[2])
            .unwrap()
            .property(props::DELIVER_AT)
            .map(String::from);
        assert_eq!(v.as_deref(), Some("1031000"));

        // Past the limit: the dead-letter queue, with the original topic and no due time.
        let last = put(
            &store,
            "%RETRY%g",
            1,
            2,
            &[(props::RETRY_TOPIC, "pay"), (props::DELIVER_AT, "1")],
        );
        let sent = retries.send_back("g", hand_back(1, last)).unwrap();
        assert_eq!(
            sent,
            SentBack {
                to_dlq: true,
                reconsume_times: 3
            }
        );
        let dead = read(&store, "%DLQ%g");
        let v = RecordView::parse_unchecked_crc(&dead[0]).unwrap();
        assert_eq!(v.property(props::RETRY_TOPIC), Some("pay"));
        assert_eq!(v.property(props::DELIVER_AT), None);
        assert_eq!(v.reconsume_times(), 3);
        assert_eq!(
            read(&store, SCHEDULE_TOPIC).len(),
            3,
            "nothing more scheduled"
        );

        // Asked for: straight to the dead-letter queue.
        let sent = retries
            .send_back(
                "g",
                HandBack {
                    to_dlq: true,
                    ..hand_back(1, h)
                },
            )
            .unwrap();
        assert!(sent.to_dlq);
        assert_eq!(read(&store, "%DLQ%g").len(), 2);

        // A wrong id at that offset is refused, and nothing is written.
        let e = retries.send_back("g", hand_back(2, h)).unwrap_err();
        assert!(matches!(e, RetryError::NotFound(_)), "{e}");
        assert_eq!(read(&store, "%DLQ%g").len(), 2);
    }

    #[test]
    fn dead_lettered_messages_are_resent_to_the_retry_topic_with_no_reconsumes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(StoreConfig::small_for_tests(dir.path())).unwrap());
        let time = ManualClock::at(1_000_000);
        let retries = Retries::new(store.clone(), time.clock(), vec![SECOND]);
        for id in 1..=3 {
            put(&store, "%DLQ%g", id, 17, &[(props::RETRY_TOPIC, "pay")]);
        }

        assert_eq!(retries.resend_dlq("g", Some(2), 0, 10).unwrap(), 1);
        let e = retries.resend_dlq("g", Some(9), 0, 10).unwrap_err();
        assert!(e.to_string().contains("is not in %DLQ%g"), "{e}");
        assert_eq!(retries.resend_dlq("g", None, 1, 10).unwrap(), 2);

        let back: Vec<(u128, u32, Option<String>)> = read(&store, "%RETRY%g")
            .iter()
            .map(|b| {
                let v = RecordView::parse_unchecked_crc(b).unwrap();
                let t = v.property(props::RETRY_TOPIC).map(String::from);
                (v.msg_id(), v.reconsume_times(), t)
            })
            .collect();
        let pay = Some("pay".to_string());
        assert_eq!(
            back,
            vec![(2, 0, pay.clone()), (2, 0, pay.clone()), (3, 0, pay)]
        );
    }
}
