//! Pull: read a queue from an offset through the subscription's filter and plugins, parking
//! (long poll) until something arrives, the time is up or the broker stops.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quiver_protocol::cmd::{self, PullReply};
use quiver_protocol::names::TopicName;
use quiver_protocol::plugins::MAX_PLUGINS_PER_SUBSCRIPTION;
use quiver_protocol::{FilterSpec, PullStatus, RecordView, Status};
use tokio_util::sync::CancellationToken;

use super::{blocking, Broker, BrokerError, Result};
use crate::filter::{Filter, FilterKind};
use crate::store::{GetStatus, ReadLimits};

impl Broker {
    /// `Pull`: records from `offset` on; answers early when `stop` fires.
    pub(super) async fn pull(&self, c: cmd::Pull, stop: &CancellationToken) -> Result<PullReply> {
        let cmd::Pull {
            topic,
            queue_id,
            offset,
            max_messages,
            max_bytes,
            long_poll_ms,
            filter,
            plugins,
        } = c;
        let filter = self.compile_filter(&filter)?;
        let topic = TopicName::parse(topic)?;
        self.existing_queue(&topic, queue_id)?;
        if plugins.len() > MAX_PLUGINS_PER_SUBSCRIPTION {
            return Err(BrokerError::new(
                Status::BadRequest,
                format!("at most {MAX_PLUGINS_PER_SUBSCRIPTION} plugins per subscription"),
            ));
        }
        // Unknown plugins fail the pull at once, whatever the failure policy.
        self.plugins.resolve(&plugins)?;
        let first_offset = offset;
        let mut offset = offset;
        let max_count = if max_messages == 0 {
            32
        } else {
            max_messages.min(4096)
        } as usize;
        // The response must fit the client's frame limit with room for its header.
        let frame_room = (self.cfg.broker.max_frame_bytes as usize).saturating_sub(64 << 10);
        let max_bytes = if max_bytes == 0 {
            4 << 20
        } else {
            max_bytes as usize
        }
        .min(frame_room);
        let limits = ReadLimits::new(max_count, max_bytes, max_count.max(4096));
        let park = Duration::from_millis(long_poll_ms.min(self.cfg.broker.long_poll_max_ms) as u64);
        let parked_at = tokio::time::Instant::now();
        let deadline = parked_at + park;
        let topic: Arc<str> = topic.into_string().into();
        loop {
            // Subscribe before reading, so an arrival between the read and the wait wakes us.
            let notify = self.waiters.subscribe(&topic, queue_id);
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let store = self.store.clone();
            let t = topic.clone();
            let f = filter.clone();
            // The current version of each plugin: a reload applies from the next batch on.
            let chain = self.plugins.resolve(&plugins)?;
            let host = self.plugins.clone();
            let (r, records, next_offset) = blocking(move || -> Result<_> {
                let mut r = match f {
                    None => store.get_messages(&t, queue_id, offset, limits, |_| true),
                    // Tag hashes in the consume queue skip most non-matching entries without a
                    // commit-log read; the record check is exact (no hash collision gets
                    // through).
                    Some(f) => store.get_messages_where(
                        &t,
                        queue_id,
                        offset,
                        limits,
                        |e| f.may_match_hash(e.tag_hash),
                        |r| f.matches(r),
                    ),
                }?;
                let records: Vec<Bytes> = std::mem::take(&mut r.messages)
                    .into_iter()
                    .map(|m| m.bytes)
                    .collect();
                // Plugins run after the tag/SQL filter, on what it kept.
                let (records, next_offset) = if chain.is_empty() || records.is_empty() {
                    (records, r.next_offset)
                } else {
                    let mut records = host.apply_to_records(&chain, &t, queue_id, records)?;
                    // A transform may enlarge messages: the answer still keeps to the byte
                    // budget (and the frame), continuing at the first message left out.
                    let mut used = 0usize;
                    let cut = records.iter().position(|rec| {
                        used += rec.len();
                        used > max_bytes
                    });
                    match cut {
                        Some(i) if i > 0 => {
                            let next = RecordView::parse_unchecked_crc(&records[i])
                                .map(|v| v.queue_offset())
                                .unwrap_or(r.next_offset);
                            records.truncate(i);
                            (records, next)
                        }
                        _ => (records, r.next_offset),
                    }
                };
                Ok((r, records, next_offset))
            })
            .await??;
            // Plugins that dropped every message leave the pull where a filter would.
            let status = if r.status == GetStatus::Found && records.is_empty() {
                GetStatus::NoMatch
            } else {
                r.status
            };
            let now = tokio::time::Instant::now();
            // A filtered pull that has skipped non-matching arrivals for a while answers, so
            // the consumer's offset (and its lag) follows within about a second.
            let progress_due = parked_at + Duration::from_secs(1);
            let report_progress = r.next_offset > first_offset && now >= progress_due;
            let parked_out = now >= deadline || stop.is_cancelled() || report_progress;
            // Everything up to the end was scanned and nothing matched: for this subscriber that
            // is "nothing new": park from the new position.
            if status == GetStatus::NoMatch && r.next_offset >= r.max_offset && !parked_out {
                offset = r.next_offset;
            } else if status != GetStatus::NoNewMessages || parked_out {
                let status = match status {
                    GetStatus::Found => PullStatus::Found,
                    GetStatus::NoMatch if r.next_offset >= r.max_offset => {
                        PullStatus::NoNewMessages
                    }
                    GetStatus::NoMatch => PullStatus::NoMatch,
                    GetStatus::NoNewMessages => PullStatus::NoNewMessages,
                    GetStatus::OffsetTooSmall => PullStatus::OffsetTooSmall,
                    GetStatus::OffsetOverflow => PullStatus::OffsetOverflow,
                };
                if !records.is_empty() {
                    self.metrics.delivered(
                        &topic,
                        records.len() as u64,
                        records.iter().map(|r| r.len() as u64).sum(),
                    );
                }
                return Ok(PullReply {
                    status,
                    next_offset,
                    min_offset: r.min_offset,
                    max_offset: r.max_offset,
                    records,
                });
            }
            // Skipped entries are reported within a second even if nothing else arrives.
            let wake = if offset > first_offset {
                deadline.min(progress_due)
            } else {
                deadline
            };
            let _parked = Parked::new(&self.metrics);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake) => {}
                _ = stop.cancelled() => {}
            }
        }
    }
    /// Compiles (or finds in the cache) a subscription's filter; `None` means every message.
    pub(super) fn compile_filter(&self, spec: &FilterSpec) -> Result<Option<Arc<Filter>>> {
        let (kind, expr) = match spec {
            FilterSpec::All => return Ok(None),
            FilterSpec::Tag(e) => (FilterKind::Tag, e),
            FilterSpec::Sql(e) => (FilterKind::Sql, e),
        };
        match self.filters.get_or_compile(kind, expr) {
            Ok(f) if f.is_all() => Ok(None),
            Ok(f) => Ok(Some(f)),
            Err(e) => Err(BrokerError::new(
                Status::InvalidFilter,
                format!("invalid {} filter {expr:?}: {e}", kind.name()),
            )),
        }
    }
}

/// Counts a parked pull for as long as it lives (also when the client abandons it).
struct Parked<'a>(&'a crate::metrics::BrokerMetrics);

impl<'a> Parked<'a> {
    fn new(m: &'a crate::metrics::BrokerMetrics) -> Self {
        m.parked(1);
        Self(m)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.parked(-1);
    }
}
