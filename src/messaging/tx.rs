//! Transactional messages: half messages, decisions and check-backs.
//!
//! A half message is stored in `%HALF%` (queue 0) with its real topic and producer group in
//! properties: durable, invisible to consumers. Every decision and every check-back sent to a
//! producer is recorded in `%HALF_OP%` (queue 0) as an *op record* whose body is the half
//! message's commit-log offset (its *handle*) and whose tag is `commit`, `rollback`, `check`
//! or `discard`. Commit appends the message to its real topic first, then the op record.
//! At start the broker reads both queues and rebuilds the unresolved set, check counts
//! included, so a restart loses no decision.
//!
//! Unresolved half messages older than `tx_check_timeout_ms` are offered to the producers of
//! their group that wait in `PollTransactionChecks`, then every `tx_check_interval_ms`; only
//! checks actually handed to a producer count. After `tx_max_checks` of them the half message
//! is copied to `%TRANS_CHECK_MAX%` and discarded.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use quiver_protocol::names::{HALF_OP_TOPIC, HALF_TOPIC, TRANS_CHECK_MAX_TOPIC};
use quiver_protocol::{RecordView, TransactionState};

use super::Moved;
use crate::store::{now_ms, GetStatus, ReadLimits, Store, StoreError};

/// Resolved handles remembered for idempotent answers.
const RESOLVED_MEMORY: usize = 100_000;

/// Why a decision was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TxError {
    #[error("no unresolved transaction with id {id:032x} at handle {handle} (wrong id or handle, or discarded after its check-backs)")]
    NotFound { id: u128, handle: u64 },
    #[error("transaction {id:032x} was already {was}; {asked} refused")]
    Resolved {
        id: u128,
        was: &'static str,
        asked: &'static str,
    },
    #[error("transaction {0:032x} is being decided by another request; retry")]
    Busy(u128),
    #[error("the committed message's topic {0:?} no longer exists")]
    TopicGone(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Pending {
    id: u128,
    group: String,
    checks: u32,
    next_check_at: i64,
    /// A decision or discard is being written.
    busy: bool,
}

#[derive(Default)]
struct State {
    pending: BTreeMap<u64, Pending>,
    resolved: HashMap<u64, (u128, Outcome)>,
    order: VecDeque<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Commit,
    Rollback,
    Discard,
}

impl Outcome {
    fn tag(self) -> &'static str {
        match self {
            Outcome::Commit => "commit",
            Outcome::Rollback => "rollback",
            Outcome::Discard => "discard",
        }
    }
}

impl State {
    fn resolve(&mut self, handle: u64, id: u128, o: Outcome) {
        self.pending.remove(&handle);
        if self.resolved.insert(handle, (id, o)).is_none() {
            self.order.push_back(handle);
        }
        while self.order.len() > RESOLVED_MEMORY {
            if let Some(h) = self.order.pop_front() {
                self.resolved.remove(&h);
            }
        }
    }
}

/// Timing of check-backs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TxTiming {
    pub(crate) check_timeout_ms: i64,
    pub(crate) check_interval_ms: i64,
    pub(crate) max_checks: u32,
}

/// Unresolved half messages and their decisions.
pub(crate) struct Transactions {
    store: Arc<Store>,
    timing: TxTiming,
    state: Mutex<State>,
    /// Queue count of a topic (`None`: gone), and creation of the check-max topic.
    queues: Arc<super::timer::QueueCount>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads a whole queue of a system topic in order. Blocking.
fn scan(store: &Store, topic: &str, mut f: impl FnMut(&RecordView<'_>)) -> Result<(), StoreError> {
    let (mut offset, _) = store.queue_bounds(topic, 0);
    loop {
        let r = store.get_messages(
            topic,
            0,
            offset,
            ReadLimits::new(1024, 8 << 20, 1024),
            |_| true,
        )?;
        match r.status {
            GetStatus::Found | GetStatus::NoMatch => {
                for m in &r.messages {
                    f(&m.view());
                }
                if r.next_offset <= offset {
                    return Ok(());
                }
                offset = r.next_offset;
            }
            GetStatus::OffsetTooSmall => offset = r.next_offset,
            _ => return Ok(()),
        }
    }
}

fn handle_of(op: &RecordView<'_>) -> Option<u64> {
    Some(u64::from_le_bytes(op.body().get(0..8)?.try_into().ok()?))
}

impl Transactions {
    /// Rebuilds the unresolved set from `%HALF%` and `%HALF_OP%`. Blocking.
    pub(crate) fn open(
        store: Arc<Store>,
        timing: TxTiming,
        queues: Arc<super::timer::QueueCount>,
    ) -> Result<Transactions, StoreError> {
        let mut st = State::default();
        let mut checks: HashMap<u64, u32> = HashMap::new();
        scan(&store, HALF_OP_TOPIC, |op| {
            let Some(h) = handle_of(op) else { return };
            let o = match op.tag() {
                "commit" => Outcome::Commit,
                "rollback" => Outcome::Rollback,
                "discard" => Outcome::Discard,
                "check" => {
                    let c = checks.entry(h).or_default();
                    *c = (*c).max(
                        op.property("TRAN_CHECK_TIMES")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(*c + 1),
                    );
                    return;
                }
                _ => return,
            };
            st.resolve(h, op.msg_id(), o);
        })?;
        let now = now_ms();
        scan(&store, HALF_TOPIC, |half| {
            let h = half.phys_offset();
            if st.resolved.contains_key(&h) {
                return;
            }
            let checks = checks.get(&h).copied().unwrap_or(0);
            // After a restart producers get a check timeout to reconnect first.
            let next = (half.store_timestamp() + timing.check_timeout_ms).max(
                now + if checks > 0 {
                    timing.check_timeout_ms
                } else {
                    0
                },
            );
            st.pending.insert(
                h,
                Pending {
                    id: half.msg_id(),
                    group: half.property("PGROUP").unwrap_or_default().to_string(),
                    checks,
                    next_check_at: next,
                    busy: false,
                },
            );
        })?;
        if !st.pending.is_empty() {
            tracing::info!(unresolved = st.pending.len(), "transactions recovered");
        }
        Ok(Transactions {
            store,
            timing,
            state: Mutex::new(st),
            queues,
        })
    }

    /// A half message was stored.
    pub(crate) fn added(&self, handle: u64, id: u128, group: &str, stored_at: i64) {
        lock(&self.state).pending.insert(
            handle,
            Pending {
                id,
                group: group.to_string(),
                checks: 0,
                next_check_at: stored_at + self.timing.check_timeout_ms,
                busy: false,
            },
        );
    }

    /// Unresolved half messages.
    pub(crate) fn unresolved(&self) -> usize {
        lock(&self.state).pending.len()
    }

    /// Applies a producer's decision. Blocking.
    pub(crate) fn end(
        &self,
        id: u128,
        handle: u64,
        state: TransactionState,
    ) -> Result<(), TxError> {
        let outcome = match state {
            // Unknown: nothing to record; the broker checks again later.
            TransactionState::Unknown => return Ok(()),
            TransactionState::Commit => Outcome::Commit,
            TransactionState::Rollback => Outcome::Rollback,
        };
        {
            let mut st = lock(&self.state);
            if let Some((rid, o)) = st.resolved.get(&handle) {
                if *rid == id {
                    return if *o == outcome {
                        Ok(())
                    } else {
                        Err(TxError::Resolved {
                            id,
                            was: o.tag(),
                            asked: outcome.tag(),
                        })
                    };
                }
            }
            match st.pending.get_mut(&handle) {
                Some(p) if p.id == id => {
                    if p.busy {
                        return Err(TxError::Busy(id));
                    }
                    p.busy = true;
                }
                _ => return Err(TxError::NotFound { id, handle }),
            }
        }
        let r = self.write_outcome(id, handle, outcome);
        let mut st = lock(&self.state);
        match r {
            Ok(()) => {
                st.resolve(handle, id, outcome);
                Ok(())
            }
            Err(e) => {
                if let Some(p) = st.pending.get_mut(&handle) {
                    p.busy = false;
                }
                Err(e)
            }
        }
    }

    fn half(&self, id: u128, handle: u64) -> Result<Bytes, TxError> {
        let b = self.store.message_at(handle)?;
        match RecordView::parse_unchecked_crc(&b) {
            Ok(v) if v.msg_id() == id && v.topic() == HALF_TOPIC => Ok(b),
            _ => Err(TxError::NotFound { id, handle }),
        }
    }

    fn write_outcome(&self, id: u128, handle: u64, outcome: Outcome) -> Result<(), TxError> {
        let b = self.half(id, handle)?;
        let v =
            RecordView::parse_unchecked_crc(&b).map_err(|_| TxError::NotFound { id, handle })?;
        let body = super::body_of(&b).map(|(b, _)| b).unwrap_or_default();
        match outcome {
            Outcome::Commit => {
                let topic = v.property("REAL_TOPIC").unwrap_or_default().to_string();
                let qid: u32 = v
                    .property("REAL_QID")
                    .and_then(|q| q.parse().ok())
                    .unwrap_or(0);
                let Some(n) = (self.queues)(&topic) else {
                    return Err(TxError::TopicGone(topic));
                };
                Moved::from_record(&v, body, false).append_blocking(
                    &self.store,
                    &topic,
                    qid % n.max(1),
                )?;
            }
            Outcome::Discard => {
                (self.queues)(TRANS_CHECK_MAX_TOPIC);
                Moved::from_record(&v, body, true).append_blocking(
                    &self.store,
                    TRANS_CHECK_MAX_TOPIC,
                    0,
                )?;
            }
            Outcome::Rollback => {}
        }
        self.op(&v, handle, outcome.tag(), None)
    }

    fn op(
        &self,
        half: &RecordView<'_>,
        handle: u64,
        tag: &str,
        checks: Option<u32>,
    ) -> Result<(), TxError> {
        let mut m = Moved::from_record(half, Bytes::copy_from_slice(&handle.to_le_bytes()), true);
        m.tag = tag.to_string();
        m.keys.clear();
        m.properties.clear();
        if let Some(c) = checks {
            m.set("TRAN_CHECK_TIMES", c.to_string());
        }
        m.append_blocking(&self.store, HALF_OP_TOPIC, 0)?;
        Ok(())
    }

    /// Takes up to `max` half messages of `group` due for a check-back, counting the check
    /// (durably) for each; returns their records. Blocking.
    pub(crate) fn take_checks(&self, group: &str, max: usize) -> Vec<Bytes> {
        let now = now_ms();
        let due: Vec<(u64, u128, u32)> = {
            let mut st = lock(&self.state);
            let mut due = Vec::new();
            for (h, p) in st.pending.iter_mut() {
                if due.len() >= max {
                    break;
                }
                if p.group == group
                    && !p.busy
                    && p.next_check_at <= now
                    && p.checks < self.timing.max_checks
                {
                    p.checks += 1;
                    p.next_check_at = now + self.timing.check_interval_ms;
                    due.push((*h, p.id, p.checks));
                }
            }
            due
        };
        let mut out = Vec::with_capacity(due.len());
        for (h, id, n) in due {
            let Ok(b) = self.half(id, h) else {
                // Gone (retention): nothing to check any more.
                lock(&self.state).pending.remove(&h);
                continue;
            };
            let Ok(v) = RecordView::parse_unchecked_crc(&b) else {
                continue;
            };
            if let Err(e) = self.op(&v, h, "check", Some(n)) {
                tracing::warn!(error = %e, "cannot record a transaction check");
            }
            out.push(b);
        }
        out
    }

    /// True when some unresolved message of `group` is due for a check.
    pub(crate) fn has_due(&self, group: &str) -> bool {
        let now = now_ms();
        lock(&self.state).pending.values().any(|p| {
            p.group == group
                && !p.busy
                && p.next_check_at <= now
                && p.checks < self.timing.max_checks
        })
    }

    /// Discards half messages whose check-backs ran out. Blocking.
    pub(crate) fn discard_expired(&self) {
        let now = now_ms();
        let expired: Vec<(u64, u128)> = {
            let mut st = lock(&self.state);
            st.pending
                .iter_mut()
                .filter(|(_, p)| {
                    !p.busy && p.checks >= self.timing.max_checks && p.next_check_at <= now
                })
                .map(|(h, p)| {
                    p.busy = true;
                    (*h, p.id)
                })
                .collect()
        };
        for (h, id) in expired {
            let r = self.write_outcome(id, h, Outcome::Discard);
            let mut st = lock(&self.state);
            match r {
                Ok(()) => {
                    tracing::warn!(id = %format!("{id:032x}"), handle = h, "transaction discarded after its check-backs ran out; see %TRANS_CHECK_MAX%");
                    st.resolve(h, id, Outcome::Discard);
                }
                Err(TxError::NotFound { .. }) => {
                    st.pending.remove(&h);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot discard an expired transaction");
                    if let Some(p) = st.pending.get_mut(&h) {
                        p.busy = false;
                    }
                }
            }
        }
    }

    /// How long a poller should sleep between looks.
    pub(crate) fn poll_step() -> Duration {
        Duration::from_millis(50)
    }
}
