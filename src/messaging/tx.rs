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
//!
//! Time comes from the broker's [`Clock`]. Unresolved messages are kept in due order (per
//! group for check-backs, and one order for discards), so finding what is due costs a look at
//! the first entry: a waiting poll sleeps until its group's next check falls due or something
//! changes, and the discarding thread sleeps until the next discard falls due.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use quiver_protocol::names::{props, HALF_OP_TOPIC, HALF_TOPIC, TRANS_CHECK_MAX_TOPIC};
use quiver_protocol::{RecordView, TransactionState};

use tokio::sync::Notify;

use super::Moved;
use crate::clock::{Clock, Waker};
use crate::store::{GetStatus, ReadLimits, Store, StoreError};

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

struct State {
    pending: BTreeMap<u64, Pending>,
    /// Pending messages that may be checked (not busy, checks left), by group, in due order.
    checks_due: HashMap<String, BTreeSet<(i64, u64)>>,
    /// Pending messages whose checks ran out (not busy), in due order: to be discarded.
    discards_due: BTreeSet<(i64, u64)>,
    max_checks: u32,
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
    fn new(max_checks: u32) -> State {
        State {
            pending: BTreeMap::new(),
            checks_due: HashMap::new(),
            discards_due: BTreeSet::new(),
            max_checks,
            resolved: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Takes a pending message out of the due orders (before it changes or goes).
    fn unindex(&mut self, handle: u64) {
        let Some(p) = self.pending.get(&handle) else {
            return;
        };
        let key = (p.next_check_at, handle);
        if p.checks < self.max_checks {
            if let Some(set) = self.checks_due.get_mut(&p.group) {
                set.remove(&key);
                if set.is_empty() {
                    self.checks_due.remove(&p.group);
                }
            }
        } else {
            self.discards_due.remove(&key);
        }
    }

    /// Puts a pending message (back) in its due order, unless it is busy.
    fn index(&mut self, handle: u64) {
        let Some(p) = self.pending.get(&handle) else {
            return;
        };
        if p.busy {
            return;
        }
        let key = (p.next_check_at, handle);
        if p.checks < self.max_checks {
            self.checks_due
                .entry(p.group.clone())
                .or_default()
                .insert(key);
        } else {
            self.discards_due.insert(key);
        }
    }

    fn insert(&mut self, handle: u64, p: Pending) {
        self.unindex(handle);
        self.pending.insert(handle, p);
        self.index(handle);
    }

    fn remove(&mut self, handle: u64) {
        self.unindex(handle);
        self.pending.remove(&handle);
    }

    /// Changes a pending message, keeping the due orders right.
    fn update(&mut self, handle: u64, f: impl FnOnce(&mut Pending)) {
        self.unindex(handle);
        if let Some(p) = self.pending.get_mut(&handle) {
            f(p);
        }
        self.index(handle);
    }

    fn resolve(&mut self, handle: u64, id: u128, o: Outcome) {
        self.remove(handle);
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
    shared: Arc<Shared>,
    /// Queue count of a topic (`None`: gone), and creation of the check-max topic.
    queues: Arc<super::timer::QueueCount>,
    clock: Clock,
    /// Wakes the waiters when a manual clock moves (kept alive here).
    _on_advance: Arc<Waker>,
}

/// What the waiters share.
struct Shared {
    state: Mutex<State>,
    /// Wakes the discarding thread: the first discard due changed, time moved, or stop.
    discard_cv: Condvar,
    stop: AtomicBool,
    /// Wakes the check-back polls of a group: one of its messages may be due sooner.
    watchers: Mutex<HashMap<String, Weak<Notify>>>,
}

impl Shared {
    /// Wakes the polls of `group` (all groups for `None`).
    fn wake_polls(&self, group: Option<&str>) {
        let notifies: Vec<Arc<Notify>> = {
            let w = lock(&self.watchers);
            match group {
                Some(g) => w.get(g).and_then(Weak::upgrade).into_iter().collect(),
                None => w.values().filter_map(Weak::upgrade).collect(),
            }
        };
        for n in notifies {
            n.notify_waiters();
        }
    }

    /// Wakes the discarding thread (which checks the time under the state lock).
    fn wake_discarder(&self) {
        let _st = lock(&self.state);
        self.discard_cv.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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

/// The unresolved half messages as the log has them: op records first, then half messages.
fn load(store: &Store, timing: &TxTiming, clock: &Clock) -> Result<State, StoreError> {
    let mut st = State::new(timing.max_checks);
    let mut checks: HashMap<u64, u32> = HashMap::new();
    scan(store, HALF_OP_TOPIC, |op| {
        let Some(h) = handle_of(op) else { return };
        let o = match op.tag() {
            "commit" => Outcome::Commit,
            "rollback" => Outcome::Rollback,
            "discard" => Outcome::Discard,
            "check" => {
                let c = checks.entry(h).or_default();
                *c = (*c).max(
                    op.property(props::TRAN_CHECK_TIMES)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(*c + 1),
                );
                return;
            }
            _ => return,
        };
        st.resolve(h, op.msg_id(), o);
    })?;
    let now = clock.now_ms();
    scan(store, HALF_TOPIC, |half| {
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
        st.insert(
            h,
            Pending {
                id: half.msg_id(),
                group: half.property(props::PGROUP).unwrap_or_default().to_string(),
                checks,
                next_check_at: next,
                busy: false,
            },
        );
    })?;
    if !st.pending.is_empty() {
        tracing::info!(unresolved = st.pending.len(), "transactions recovered");
    }
    Ok(st)
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
        clock: Clock,
    ) -> Result<Transactions, StoreError> {
        let st = load(&store, &timing, &clock)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(st),
            discard_cv: Condvar::new(),
            stop: AtomicBool::new(false),
            watchers: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&shared);
        let on_advance: Arc<Waker> = Arc::new(move || {
            if let Some(s) = weak.upgrade() {
                s.wake_discarder();
                s.wake_polls(None);
            }
        });
        clock.on_advance(&on_advance);
        Ok(Transactions {
            store,
            timing,
            shared,
            queues,
            clock,
            _on_advance: on_advance,
        })
    }

    /// Rebuilds the unresolved set from the log, as at a start: a slave that a failover made
    /// the master holds its old master's half messages and decisions (replicated), which its
    /// own memory never saw.
    pub(crate) fn reload(&self) -> Result<(), StoreError> {
        let st = load(&self.store, &self.timing, &self.clock)?;
        *self.state() = st;
        self.shared.wake_discarder();
        self.shared.wake_polls(None);
        Ok(())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    /// A half message was stored (just now: its first check falls due a check timeout from
    /// now by the clock).
    pub(crate) fn added(&self, handle: u64, id: u128, group: &str) {
        let now = self.clock.now_ms();
        self.state().insert(
            handle,
            Pending {
                id,
                group: group.to_string(),
                checks: 0,
                next_check_at: now + self.timing.check_timeout_ms,
                busy: false,
            },
        );
        self.shared.wake_polls(Some(group));
        if self.timing.max_checks == 0 {
            self.shared.wake_discarder();
        }
    }

    /// Unresolved half messages.
    pub(crate) fn unresolved(&self) -> usize {
        self.state().pending.len()
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
            let mut st = self.state();
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
            match st.pending.get(&handle) {
                Some(p) if p.id == id => {
                    if p.busy {
                        return Err(TxError::Busy(id));
                    }
                    st.update(handle, |p| p.busy = true);
                }
                _ => return Err(TxError::NotFound { id, handle }),
            }
        }
        let r = self.write_outcome(id, handle, outcome);
        match r {
            Ok(()) => {
                self.state().resolve(handle, id, outcome);
                Ok(())
            }
            Err(e) => {
                self.unbusy(handle);
                Err(e)
            }
        }
    }

    /// A decision or discard failed: the message is due again as it was.
    fn unbusy(&self, handle: u64) {
        let group = {
            let mut st = self.state();
            st.update(handle, |p| p.busy = false);
            st.pending.get(&handle).map(|p| p.group.clone())
        };
        if let Some(g) = group {
            self.shared.wake_polls(Some(&g));
            self.shared.wake_discarder();
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
                let topic = v
                    .property(props::REAL_TOPIC)
                    .unwrap_or_default()
                    .to_string();
                let qid: u32 = v
                    .property(props::REAL_QID)
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
            m.set(props::TRAN_CHECK_TIMES, c.to_string());
        }
        m.append_blocking(&self.store, HALF_OP_TOPIC, 0)?;
        Ok(())
    }

    /// Takes up to `max` half messages of `group` due for a check-back, counting the check
    /// (durably) for each; returns their records. Blocking.
    pub(crate) fn take_checks(&self, group: &str, max: usize) -> Vec<Bytes> {
        let now = self.clock.now_ms();
        let mut last_check = false;
        let due: Vec<(u64, u128, u32)> = {
            let mut st = self.state();
            let handles: Vec<u64> = st.checks_due.get(group).map_or(Vec::new(), |set| {
                set.iter()
                    .take_while(|(at, _)| *at <= now)
                    .take(max)
                    .map(|(_, h)| *h)
                    .collect()
            });
            let mut due = Vec::with_capacity(handles.len());
            let interval = self.timing.check_interval_ms;
            for h in handles {
                st.update(h, |p| {
                    p.checks += 1;
                    p.next_check_at = now + interval;
                });
                if let Some(p) = st.pending.get(&h) {
                    last_check |= p.checks >= st.max_checks;
                    due.push((h, p.id, p.checks));
                }
            }
            due
        };
        if last_check {
            // Its discard is now in the discarding thread's order.
            self.shared.wake_discarder();
        }
        let mut out = Vec::with_capacity(due.len());
        for (h, id, n) in due {
            let Ok(b) = self.half(id, h) else {
                // Gone (retention): nothing to check any more.
                self.state().remove(h);
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

    /// When the next check-back of `group` falls due (clock ms), if any message of it may
    /// still be checked. Looks at one entry.
    pub(crate) fn next_due(&self, group: &str) -> Option<i64> {
        self.state()
            .checks_due
            .get(group)
            .and_then(|set| set.first())
            .map(|(at, _)| *at)
    }

    /// What wakes the check-back polls of `group` when one of its messages may be due sooner
    /// than it was, or a manual clock moved. Create the `notified()` future before looking at
    /// [`Transactions::next_due`] so no wake-up is lost.
    pub(crate) fn watch(&self, group: &str) -> Arc<Notify> {
        let mut w = lock(&self.shared.watchers);
        if let Some(n) = w.get(group).and_then(Weak::upgrade) {
            return n;
        }
        w.retain(|_, n| n.strong_count() > 0);
        let n = Arc::new(Notify::new());
        w.insert(group.to_string(), Arc::downgrade(&n));
        n
    }

    /// Discards half messages whose check-backs ran out and whose last interval passed.
    /// Blocking.
    pub(crate) fn discard_expired(&self) {
        let now = self.clock.now_ms();
        let expired: Vec<(u64, u128)> = {
            let mut st = self.state();
            let handles: Vec<u64> = st
                .discards_due
                .iter()
                .take_while(|(at, _)| *at <= now)
                .map(|(_, h)| *h)
                .collect();
            let mut expired = Vec::with_capacity(handles.len());
            for h in handles {
                st.update(h, |p| p.busy = true);
                if let Some(p) = st.pending.get(&h) {
                    expired.push((h, p.id));
                }
            }
            expired
        };
        for (h, id) in expired {
            let r = self.write_outcome(id, h, Outcome::Discard);
            match r {
                Ok(()) => {
                    tracing::warn!(id = %format!("{id:032x}"), handle = h, "transaction discarded after its check-backs ran out; see %TRANS_CHECK_MAX%");
                    self.state().resolve(h, id, Outcome::Discard);
                }
                Err(TxError::NotFound { .. }) => {
                    self.state().remove(h);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot discard an expired transaction");
                    // Retried at the next wake-up, not at once: the store refused.
                    let mut st = self.state();
                    st.update(h, |p| {
                        p.busy = false;
                        p.next_check_at = now + DISCARD_RETRY_MS;
                    });
                }
            }
        }
    }

    /// The discarding thread: discards each half message whose check-backs ran out when its
    /// last interval passes, sleeping until then. Returns after [`Transactions::stop`].
    /// Blocking.
    pub(crate) fn run_discarder(&self) {
        loop {
            {
                let mut st = self.state();
                loop {
                    if self.shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let now = self.clock.now_ms();
                    let wait = match st.discards_due.first() {
                        Some((at, _)) if *at <= now => break,
                        Some((at, _)) => self.clock.real_wait(at - now),
                        None => None,
                    };
                    st = match wait {
                        Some(d) => {
                            self.shared
                                .discard_cv
                                .wait_timeout(st, d)
                                .unwrap_or_else(|p| p.into_inner())
                                .0
                        }
                        None => self
                            .shared
                            .discard_cv
                            .wait(st)
                            .unwrap_or_else(|p| p.into_inner()),
                    };
                }
            }
            self.discard_expired();
        }
    }

    /// Ends [`Transactions::run_discarder`].
    pub(crate) fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake_discarder();
    }
}

/// Delay before a discard the store refused is tried again (ms).
const DISCARD_RETRY_MS: i64 = 100;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::StoreConfig;
    use quiver_protocol::NewMessage;
    use std::time::Duration;

    const TIMING: TxTiming = TxTiming {
        check_timeout_ms: 1_000,
        check_interval_ms: 500,
        max_checks: 2,
    };

    fn open(dir: &std::path::Path, time: &ManualClock) -> (Arc<Store>, Arc<Transactions>) {
        let store = Arc::new(Store::open(StoreConfig::small_for_tests(dir)).unwrap());
        let queues: Arc<super::super::timer::QueueCount> = Arc::new(|_: &str| Some(1));
        let tx = Transactions::open(store.clone(), TIMING, queues, time.clock()).unwrap();
        (store, Arc::new(tx))
    }

    /// Stores a half message of `group` as the broker does; returns (handle, when its first
    /// check falls due).
    fn half(store: &Store, tx: &Transactions, group: &str, id: u128) -> (u64, i64) {
        let props = [
            (props::REAL_TOPIC, "T"),
            (props::REAL_QID, "0"),
            (props::PGROUP, group),
        ];
        let m = NewMessage {
            msg_id: id,
            flags: 0,
            born_timestamp: 0,
            born_host: "127.0.0.1:1".parse().unwrap(),
            reconsume_times: 0,
            tag: "",
            keys: &[],
            properties: &props,
            body: b"half",
        };
        let a = store
            .append(HALF_TOPIC, 0, std::slice::from_ref(&m))
            .unwrap()
            .wait()
            .unwrap();
        let h = a.results[0].phys_offset;
        tx.added(h, id, group);
        (h, tx.clock.now_ms() + TIMING.check_timeout_ms)
    }

    /// Moves the clock to `at` (clock ms).
    fn advance_to(time: &ManualClock, at: i64) {
        let left = at - time.now_ms();
        assert!(left >= 0, "the clock would go back");
        time.advance(Duration::from_millis(left as u64));
    }

    #[test]
    fn checks_fall_due_by_the_clock_and_running_out_of_them_discards() {
        let dir = tempfile::tempdir().unwrap();
        let time = ManualClock::starting_now();
        let (store, tx) = open(dir.path(), &time);
        let (h, first) = half(&store, &tx, "G", 7);
        let _other = half(&store, &tx, "H", 8);
        assert_eq!(tx.next_due("G"), Some(first));
        assert_eq!(tx.next_due("nobody"), None);

        advance_to(&time, first - 1);
        assert!(tx.take_checks("G", 8).is_empty(), "not due 1 ms early");
        advance_to(&time, first);
        let checks = tx.take_checks("G", 8);
        assert_eq!(checks.len(), 1, "only G's message, due now");
        let v = RecordView::parse_unchecked_crc(&checks[0]).unwrap();
        assert_eq!((v.msg_id(), v.phys_offset()), (7, h));
        assert!(
            tx.take_checks("G", 8).is_empty(),
            "counted: not again at once"
        );
        assert_eq!(tx.next_due("G"), Some(first + TIMING.check_interval_ms));

        advance_to(&time, first + TIMING.check_interval_ms);
        assert_eq!(tx.take_checks("G", 8).len(), 1, "the second and last check");
        assert_eq!(tx.next_due("G"), None, "no checks left for G");
        advance_to(&time, first + 5 * TIMING.check_interval_ms);
        assert!(tx.take_checks("G", 8).is_empty());

        // Discarded one interval after its last check; H's message is untouched.
        tx.discard_expired();
        assert_eq!(tx.unresolved(), 1, "only H's message is left");
        let e = tx
            .end(7, h, TransactionState::Commit)
            .expect_err("discarded");
        assert!(matches!(e, TxError::Resolved { was: "discard", .. }), "{e}");
        let r = store
            .get_messages(
                TRANS_CHECK_MAX_TOPIC,
                0,
                0,
                ReadLimits::new(8, 1 << 20, 8),
                |_| true,
            )
            .unwrap();
        assert_eq!(r.messages.len(), 1);
        assert_eq!(r.messages[0].view().msg_id(), 7);
    }

    #[test]
    fn the_discarding_thread_sleeps_until_a_discard_falls_due() {
        let dir = tempfile::tempdir().unwrap();
        let time = ManualClock::starting_now();
        let (store, tx) = open(dir.path(), &time);
        let (h, first) = half(&store, &tx, "G", 9);
        let t = tx.clone();
        let discarder = std::thread::spawn(move || t.run_discarder());
        for n in 0..TIMING.max_checks as i64 {
            advance_to(&time, first + n * TIMING.check_interval_ms);
            assert_eq!(tx.take_checks("G", 8).len(), 1);
        }
        let discard_at = first + TIMING.max_checks as i64 * TIMING.check_interval_ms;
        advance_to(&time, discard_at - 1);
        assert_eq!(tx.unresolved(), 1);
        advance_to(&time, discard_at);
        // The advance woke the thread; wait for the discard itself.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tx.unresolved() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the discarding thread did not wake"
            );
            std::thread::yield_now();
        }
        assert!(matches!(
            tx.end(9, h, TransactionState::Rollback),
            Err(TxError::Resolved { was: "discard", .. })
        ));
        tx.stop();
        discarder.join().unwrap();
    }

    #[tokio::test]
    async fn a_waiting_poll_is_woken_when_a_check_of_its_group_may_be_due_sooner() {
        let dir = tempfile::tempdir().unwrap();
        let time = ManualClock::starting_now();
        let (store, tx) = open(dir.path(), &time);
        let watch = tx.watch("G");
        let notified = watch.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let other = tx.watch("H").notified_owned();
        let _ = half(&store, &tx, "G", 11);
        // Woken at once (armed before the change), without any time passing.
        tokio::time::timeout(Duration::from_secs(10), notified)
            .await
            .expect("the poll of G is woken");
        let mut other = Box::pin(other);
        assert!(
            futures_poll(other.as_mut()),
            "a poll of another group is not woken by G's message"
        );
        time.advance(Duration::from_millis(1));
        assert!(
            !futures_poll(other.as_mut()),
            "a manual clock moving wakes every poll"
        );
    }

    /// True while `f` is still pending after one poll.
    fn futures_poll<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        f.poll(&mut cx).is_pending()
    }
}
