//! Handlers of the messaging semantics: scheduled sends and cancels, transactions, send-back
//! to the retry topic or the dead-letter queue, DLQ resend (docs/SEMANTICS.md). Each checks
//! the request, makes sure the topics exist, and calls `crate::messaging` (timer, tx,
//! retry), which does the work.

use std::net::SocketAddr;
use std::time::Duration;

use quiver_protocol::cmd::{self, CountReply, Done, Records, SendReply, SentBackReply};
use quiver_protocol::names::{
    self, props, GroupName, TopicName, HALF_TOPIC, SCHEDULE_TOPIC, TRANS_CHECK_MAX_TOPIC,
};
use quiver_protocol::{SendMode, Status};
use tokio_util::sync::CancellationToken;

use super::produce::receipts;
use super::{blocking, Broker, BrokerError, Result};
use crate::messaging::retry::{HandBack, RetryError};
use crate::messaging::staging_properties;
use crate::messaging::timer::CancelError;
use crate::messaging::tx::TxError;

/// Topics the broker creates on first use (one queue): retry, dead-letter and check-max.
pub(crate) fn is_broker_created(topic: &str) -> bool {
    topic.starts_with(names::RETRY_PREFIX)
        || topic.starts_with(names::DLQ_PREFIX)
        || topic == TRANS_CHECK_MAX_TOPIC
}

/// Most check records answered at once.
const MAX_CHECKS_PER_POLL: u32 = 64;

impl From<CancelError> for BrokerError {
    fn from(e: CancelError) -> Self {
        let status = match e {
            CancelError::Store(s) => return BrokerError::from(s),
            CancelError::NotFound(_) => Status::NotFound,
            CancelError::AlreadyDue(_) => Status::AlreadyDue,
            CancelError::Io(_) => Status::Internal,
        };
        BrokerError::new(status, e.to_string())
    }
}

impl From<RetryError> for BrokerError {
    fn from(e: RetryError) -> Self {
        match e {
            RetryError::Store(s) => BrokerError::from(s),
            RetryError::NotFound(m) => BrokerError::new(Status::NotFound, m),
        }
    }
}

impl From<TxError> for BrokerError {
    fn from(e: TxError) -> Self {
        let status = match e {
            TxError::Store(s) => return BrokerError::from(s),
            TxError::NotFound { .. } => Status::NotFound,
            TxError::Resolved { .. } => Status::TransactionResolved,
            TxError::Busy(_) => Status::Busy,
            TxError::TopicGone(_) => Status::TopicNotFound,
        };
        BrokerError::new(status, e.to_string())
    }
}

impl Broker {
    /// `SendSpecial`: a scheduled send or a half message.
    pub(super) async fn send_special(
        &self,
        c: cmd::SendSpecial,
        born: SocketAddr,
    ) -> Result<SendReply> {
        let cmd::SendSpecial {
            topic,
            queue_id,
            mode,
            messages,
        } = c;
        let now = self.clock.now_ms();
        let max_delay = self.cfg.messaging.max_delay_ms as i64;
        let invalid = |m: String| BrokerError::new(Status::InvalidDelay, m);
        // Check the mode before anything is created.
        let (due, level) = match &mode {
            SendMode::DeliverAt(t) => (*t, None),
            SendMode::DelayMs(d) if *d < 0 => {
                return Err(invalid(format!("delay of {d} ms is negative")))
            }
            SendMode::DelayMs(d) => (now.saturating_add(*d), None),
            SendMode::DelayLevel(l) => {
                let d = self.delay_level(*l)?;
                (now + d.as_millis() as i64, Some(*l))
            }
            SendMode::Half { group } => {
                GroupName::parse_as("producer group", group.as_str())?;
                if messages.len() != 1 {
                    return Err(BrokerError::new(
                        Status::InvalidMessage,
                        "a transactional message is sent alone, not in a batch",
                    ));
                }
                (0, None)
            }
        };
        if !matches!(mode, SendMode::Half { .. }) && due.saturating_sub(now) > max_delay {
            return Err(invalid(format!(
                "due in {} ms; the broker allows at most {max_delay} ms (messaging.max_delay_ms)",
                due.saturating_sub(now)
            )));
        }
        let topic = TopicName::parse(topic)?;
        let mut messages = self.accept(&topic, queue_id, messages).await?;
        match mode {
            SendMode::Half { group } => {
                let staging = staging_properties(
                    &topic,
                    queue_id,
                    &[
                        (props::PGROUP, group.clone()),
                        (props::TRAN_MSG, "true".to_string()),
                    ],
                );
                messages[0].properties.extend(staging);
                let appended = self
                    .store_messages(HALF_TOPIC.to_string(), 0, messages, born)
                    .await?;
                for r in &appended.results {
                    self.tx.added(r.phys_offset, r.msg_id, &group);
                }
                Ok(receipts(queue_id, &appended))
            }
            _ if due <= now => {
                // Already due: a plain send.
                let appended = self
                    .store_messages(topic.into_string(), queue_id, messages, born)
                    .await?;
                Ok(receipts(queue_id, &appended))
            }
            _ => {
                let mut extra = vec![(props::DELIVER_AT, due.to_string())];
                if let Some(l) = level {
                    extra.push((props::DELAY_LEVEL, l.to_string()));
                }
                let staging = staging_properties(&topic, queue_id, &extra);
                for m in &mut messages {
                    m.properties.extend(staging.iter().cloned());
                }
                let appended = self
                    .store_messages(SCHEDULE_TOPIC.to_string(), 0, messages, born)
                    .await?;
                Ok(receipts(queue_id, &appended))
            }
        }
    }

    /// `CancelScheduled`: refused once the message is due.
    pub(super) async fn cancel_scheduled(&self, c: cmd::CancelScheduled) -> Result<Done> {
        let timer = self.timer.clone();
        blocking(move || timer.cancel(c.id)).await??;
        Ok(Done)
    }

    /// `EndTransaction`: commit or roll back a half message.
    pub(super) async fn end_transaction(&self, c: cmd::EndTransaction) -> Result<Done> {
        let cmd::EndTransaction {
            group,
            id,
            handle,
            state,
            from_check,
        } = c;
        let group = GroupName::parse_as("producer group", group)?;
        let tx = self.tx.clone();
        blocking(move || tx.end(id, handle, state)).await??;
        tracing::debug!(%group, id = %format!("{id:032x}"), ?state, from_check, "transaction decided");
        Ok(Done)
    }

    /// `PollTransactionChecks`: waits for the group's next check-backs.
    pub(super) async fn poll_checks(
        &self,
        c: cmd::PollTransactionChecks,
        stop: &CancellationToken,
    ) -> Result<Records> {
        let cmd::PollTransactionChecks {
            group,
            producer_id,
            max,
            wait_ms,
        } = c;
        let group = GroupName::parse_as("producer group", group)?;
        let max = max.clamp(1, MAX_CHECKS_PER_POLL) as usize;
        let wait = Duration::from_millis(wait_ms.min(self.cfg.broker.long_poll_max_ms) as u64);
        let deadline = tokio::time::Instant::now() + wait;
        let changed = self.tx.watch(&group);
        loop {
            // Armed before the look, so a change made right after it still wakes this poll.
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next = self.tx.next_due(&group);
            if next.is_some_and(|at| at <= self.clock.now_ms()) {
                let (tx, g) = (self.tx.clone(), group.clone());
                let mut records = blocking(move || tx.take_checks(&g, max)).await?;
                if !records.is_empty() {
                    // One frame: keep what fits.
                    let room = (self.cfg.broker.max_frame_bytes as usize).saturating_sub(64 << 10);
                    let mut used = 0;
                    records.retain(|r| {
                        used += r.len();
                        used <= room
                    });
                    tracing::debug!(%group, producer = %producer_id, checks = records.len(), "transaction check-back");
                    return Ok(Records(records));
                }
            }
            if tokio::time::Instant::now() >= deadline || stop.is_cancelled() {
                return Ok(Records::default());
            }
            // Sleep until the group's next check falls due, something changes, or the poll
            // ends.
            let due = async {
                match next {
                    Some(at) => self.clock.sleep_until_ms(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = due => {}
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = stop.cancelled() => {}
            }
        }
    }

    /// `SendBack`: to the group's retry topic after a back-off, or to its DLQ.
    pub(super) async fn send_back(&self, c: cmd::SendBack) -> Result<SentBackReply> {
        let cmd::SendBack {
            group,
            id,
            handle,
            delay_level,
            max_reconsume,
            to_dlq,
        } = c;
        let group = GroupName::parse(group)?;
        let delay = match delay_level {
            0 => None,
            l => Some(self.delay_level(l)?),
        };
        // Make sure the group's topics exist (the retry topic is subscribed by its members).
        self.route(&group.retry_topic()?, true).await?;
        self.route(&group.dlq_topic()?, true).await?;
        let retries = self.retries.clone();
        let h = HandBack {
            id,
            handle,
            delay,
            max_reconsume,
            to_dlq,
        };
        let sent = blocking(move || retries.send_back(&group, h)).await??;
        Ok(SentBackReply {
            to_dlq: sent.to_dlq,
            reconsume_times: sent.reconsume_times,
        })
    }

    /// `DlqResend`: dead letters back to the group's retry topic.
    pub(super) async fn dlq_resend(&self, c: cmd::DlqResend) -> Result<CountReply> {
        let cmd::DlqResend {
            group,
            id,
            from_offset,
            max,
        } = c;
        let group = GroupName::parse(group)?;
        let dlq = group.dlq_topic()?;
        if self.topics.queues(&dlq).is_none() {
            return Err(BrokerError::new(
                Status::NotFound,
                format!("group {group:?} has no dead-letter queue ({dlq} does not exist)"),
            ));
        }
        self.route(&group.retry_topic()?, true).await?;
        let retries = self.retries.clone();
        let max = max.clamp(1, 10_000) as usize;
        let count = blocking(move || retries.resend_dlq(&group, id, from_offset, max)).await??;
        Ok(CountReply(count))
    }

    /// The delay of level `level` (1 for the first).
    fn delay_level(&self, level: u8) -> Result<Duration> {
        (level as usize)
            .checked_sub(1)
            .and_then(|i| self.delay_levels.get(i))
            .copied()
            .ok_or_else(|| {
                let n = self.delay_levels.len();
                BrokerError::new(
                    Status::InvalidDelay,
                    format!("delay level {level} does not exist; levels are 1..={n}"),
                )
            })
    }
}
