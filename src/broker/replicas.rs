//! A master's view of its slaves (issue 15): what each has acknowledged (the `from` of its
//! latest fetch), whether it is in sync (Kafka's rule: it had, at its last fetch, everything
//! the master had at its previous one, within `cluster.replica_lag_ms`), and the gate that
//! sync replication puts on every send: refused while too few replicas are in sync, answered
//! only once `cluster.min_in_sync` copies (the master's included) hold it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use quiver_protocol::Status;
use tokio::sync::Notify;

use super::BrokerError;
use crate::clock::Clock;

/// One slave as its master sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlaveView {
    /// The slave's node id.
    pub node: u64,
    /// Commit-log offset up to which it holds the master's log (its last fetch's `from`).
    pub acked: u64,
    /// The master's log end at that fetch (what it lagged by: `end - acked`).
    pub end: u64,
    /// When it last fetched, ms since the epoch.
    pub last_fetch_ms: i64,
    /// When it last had everything the master had at its previous fetch.
    pub caught_up_ms: i64,
    /// Whether it joined the in-sync set: at a fetch that caught up and held everything
    /// acknowledged so far (the high watermark); it leaves when it stops catching up.
    pub member: bool,
}

/// Replication settings of a master (from `[cluster]`).
#[derive(Debug, Clone, Copy)]
pub struct ReplicationPolicy {
    /// Sends wait for `min_in_sync` copies (the master's included); `false`: asynchronous.
    pub sync: bool,
    /// Copies a sync send needs.
    pub min_in_sync: usize,
    /// A slave that has not caught up for this long is out of sync.
    pub lag_ms: i64,
    /// How long a sync send waits for its copies before it fails (retryable).
    pub ack_timeout: Duration,
}

/// The slaves of this broker's set, when it is their master.
pub struct Replicas {
    policy: ReplicationPolicy,
    clock: Clock,
    slaves: Mutex<BTreeMap<u64, SlaveView>>,
    /// The set's in-sync slaves as last read from the controller.
    committed: Mutex<Vec<u64>>,
    /// Slaves reported in sync to the controller, until when (ms) they count as possibly
    /// committed even when a read of the metadata does not show them (it may be stale).
    reported: Mutex<BTreeMap<u64, i64>>,
    /// The highest log end a sync send was acknowledged at: a slave joins the in-sync set
    /// only once it holds it.
    high_watermark: std::sync::atomic::AtomicU64,
    /// Woken when a slave acknowledges (a fetch arrives).
    acked: Notify,
    /// Woken when new records are readable (parked fetches).
    data: Notify,
}

impl Replicas {
    /// A master's tracker with `policy`.
    pub fn new(policy: ReplicationPolicy, clock: Clock) -> Self {
        Self {
            policy,
            clock,
            slaves: Mutex::new(BTreeMap::new()),
            committed: Mutex::new(Vec::new()),
            reported: Mutex::new(BTreeMap::new()),
            high_watermark: std::sync::atomic::AtomicU64::new(0),
            acked: Notify::new(),
            data: Notify::new(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> ReplicationPolicy {
        self.policy
    }

    /// A fetch from slave `node` with `from` (its log end): its acknowledgement. `end` is
    /// the master's log end now.
    pub fn record_fetch(&self, node: u64, from: u64, end: u64) {
        let now = self.clock.now_ms();
        let hw = self.high_watermark();
        {
            let mut s = self.slaves.lock().unwrap_or_else(|e| e.into_inner());
            let v = s.entry(node).or_insert(SlaveView {
                node,
                acked: 0,
                end: 0,
                last_fetch_ms: now,
                caught_up_ms: i64::MIN,
                member: false,
            });
            if now.saturating_sub(v.caught_up_ms) >= self.policy.lag_ms {
                v.member = false;
            }
            // Caught up: it has what the master had when it last asked.
            if from >= v.end {
                v.caught_up_ms = now;
                // It joins holding everything acknowledged so far (Kafka's rule for
                // joining the ISR: the follower has reached the high watermark).
                if from >= hw {
                    v.member = true;
                }
            }
            v.acked = from;
            v.end = end;
            v.last_fetch_ms = now;
        }
        self.acked.notify_waiters();
    }

    /// Every slave that has fetched, with its state.
    pub fn slaves(&self) -> Vec<SlaveView> {
        let s = self.slaves.lock().unwrap_or_else(|e| e.into_inner());
        s.values().copied().collect()
    }

    /// Whether `v` is in sync now.
    pub fn in_sync(&self, v: &SlaveView) -> bool {
        v.member && self.clock.now_ms().saturating_sub(v.caught_up_ms) < self.policy.lag_ms
    }

    /// The highest log end a sync send was acknowledged at.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The slaves every sync send waits for: those in sync now, those the controller has as
    /// in sync (failover candidates), and those reported to it lately (its answer may not be
    /// read yet). Whoever the controller may elect holds every acknowledged send.
    pub fn required(&self) -> Vec<u64> {
        let now = self.clock.now_ms();
        let mut nodes: Vec<u64> = self
            .slaves()
            .iter()
            .filter(|v| self.in_sync(v))
            .map(|v| v.node)
            .collect();
        nodes.extend(
            self.committed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .copied(),
        );
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        reported.retain(|_, until| *until > now);
        nodes.extend(reported.keys().copied());
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// Copies of the log (the master's included) that are in sync now.
    pub fn copies_in_sync(&self) -> usize {
        1 + self.slaves().iter().filter(|v| self.in_sync(v)).count()
    }

    /// Sync replication: refuses a send while fewer than `min_in_sync` copies are in sync,
    /// before anything is stored.
    pub fn check(&self) -> Result<(), BrokerError> {
        if !self.policy.sync {
            return Ok(());
        }
        let have = self.copies_in_sync();
        if have < self.policy.min_in_sync {
            return Err(not_enough(have, self.policy.min_in_sync));
        }
        Ok(())
    }

    /// Sync replication: waits until `min_in_sync` copies hold the log up to `end`.
    pub async fn wait_acked(&self, end: u64) -> Result<(), BrokerError> {
        if !self.policy.sync {
            return Ok(());
        }
        let need = self.policy.min_in_sync.saturating_sub(1);
        let wait = async {
            loop {
                let notified = self.acked.notified();
                let slaves = self.slaves();
                let holds = |n: &u64| slaves.iter().any(|v| v.node == *n && v.acked >= end);
                let have = slaves.iter().filter(|v| v.acked >= end).count();
                if have >= need && self.required().iter().all(holds) {
                    self.high_watermark
                        .fetch_max(end, std::sync::atomic::Ordering::AcqRel);
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(self.policy.ack_timeout, wait)
            .await
            .map_err(|_| {
                BrokerError::new(
                    Status::NotEnoughReplicas,
                    format!(
                        "stored on the master but not acknowledged by {need} slave(s) within {:?}: \
                         not acknowledged (retrying may store it twice)",
                        self.policy.ack_timeout
                    ),
                )
            })
    }

    /// New records are readable: wakes parked fetches.
    pub fn notify_data(&self) {
        self.data.notify_waiters();
    }

    /// A future that completes at the next [`Replicas::notify_data`] after this call (it
    /// counts from its creation, before it is polled).
    pub fn data_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.data.notified()
    }
}

/// How long a reported in-sync slave counts as possibly committed: longer than a metadata
/// read may lag (the 500 ms cache of a node without a controller, a 200 ms read interval).
const REPORTED_MS: i64 = 3_000;

/// What the cluster's replication loop tells and asks a master (through the broker's
/// `cluster::BrokerRole`).
impl Replicas {
    /// The slaves in sync now (node ids).
    pub fn in_sync_now(&self) -> Vec<u64> {
        self.slaves()
            .iter()
            .filter(|v| self.in_sync(v))
            .map(|v| v.node)
            .collect()
    }

    /// The set's in-sync slaves as the controller has them (read from its metadata).
    pub fn committed_in_sync(&self, nodes: &[u64]) {
        let mut c = self.committed.lock().unwrap_or_else(|e| e.into_inner());
        if c.as_slice() != nodes {
            *c = nodes.to_vec();
            drop(c);
            // A slave no longer required may be all a send waits for.
            self.acked.notify_waiters();
        }
    }

    /// This broker became its set's master with its log ending at `log_end`.
    pub fn became_master(&self, log_end: u64) {
        // Anything in the log may have been acknowledged (before a restart, or by the
        // master this one replaces): a slave joins the in-sync set only holding all of it.
        self.high_watermark
            .fetch_max(log_end, std::sync::atomic::Ordering::AcqRel);
    }

    /// These slaves are about to be reported in sync to the controller.
    pub fn reporting(&self, nodes: &[u64]) {
        let until = self.clock.now_ms().saturating_add(REPORTED_MS);
        let mut r = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        for n in nodes {
            r.insert(*n, until);
        }
    }
}

fn not_enough(have: usize, need: usize) -> BrokerError {
    BrokerError::new(
        Status::NotEnoughReplicas,
        format!(
            "sync replication needs {need} copies in sync and {have} are: nothing was stored; \
             retry after a back-off"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(sync: bool, min: usize) -> (Replicas, crate::clock::ManualClock) {
        let clock = crate::clock::ManualClock::at(1_000_000);
        let r = Replicas::new(
            ReplicationPolicy {
                sync,
                min_in_sync: min,
                lag_ms: 5_000,
                ack_timeout: Duration::from_millis(200),
            },
            clock.clock(),
        );
        (r, clock)
    }

    #[tokio::test]
    async fn sync_sends_need_copies_in_sync_and_acknowledged() {
        let (r, clock) = replicas(true, 2);
        // No slave yet: refused before storing.
        assert_eq!(r.check().unwrap_err().status(), Status::NotEnoughReplicas);
        r.record_fetch(2, 0, 100);
        assert!(
            r.check().is_ok(),
            "a slave at 0 had what the master had before (0)"
        );
        // It acknowledges up to 100 at its next fetch: the wait for 100 ends.
        let wait = r.wait_acked(100);
        tokio::pin!(wait);
        assert!(futures::poll!(&mut wait).is_pending());
        r.record_fetch(2, 100, 150);
        wait.await.unwrap();
        // It stops fetching: out of sync after the lag, sends refused again.
        clock.advance(Duration::from_millis(5_001));
        assert_eq!(r.copies_in_sync(), 1);
        assert!(r.check().is_err());
        // A wait nobody acknowledges times out with the retryable status.
        let e = r.wait_acked(1_000).await.unwrap_err();
        assert_eq!(e.status(), Status::NotEnoughReplicas);
        assert!(e.status().is_retryable());
    }

    #[tokio::test]
    async fn a_slave_that_keeps_falling_behind_leaves_the_in_sync_set() {
        let (r, clock) = replicas(true, 2);
        r.record_fetch(2, 0, 0);
        // Each fetch has less than the master had at the previous one.
        for i in 1..=10u64 {
            clock.advance(Duration::from_millis(1_000));
            r.record_fetch(2, i * 10, i * 1_000);
        }
        assert_eq!(r.copies_in_sync(), 1, "{:?}", r.slaves());
        // It catches up: back in sync.
        r.record_fetch(2, 10_000, 10_000);
        assert_eq!(r.copies_in_sync(), 2);
    }

    /// Whoever the controller may elect holds every acknowledged send: a send waits for
    /// every slave in sync, committed in sync or lately reported, and a slave joins the
    /// in-sync set only holding the high watermark.
    #[tokio::test]
    async fn every_failover_candidate_holds_what_was_acknowledged() {
        let (r, clock) = replicas(true, 2);
        r.record_fetch(2, 0, 0);
        r.record_fetch(3, 0, 0);
        assert_eq!(r.required(), vec![2, 3]);
        // Slave 2 acknowledges 100; slave 3 (in sync) has not: the send waits for it too.
        r.record_fetch(2, 100, 100);
        let wait = r.wait_acked(100);
        tokio::pin!(wait);
        assert!(futures::poll!(&mut wait).is_pending());
        r.record_fetch(3, 100, 100);
        wait.await.unwrap();
        assert_eq!(r.high_watermark(), 100);
        // Slave 3 stops; once out of sync locally it is still waited for while the
        // controller (or a recent report) has it.
        r.committed_in_sync(&[2, 3]);
        clock.advance(Duration::from_millis(5_001));
        r.record_fetch(2, 100, 100);
        r.record_fetch(2, 200, 200);
        assert_eq!(r.in_sync_now(), vec![2]);
        let wait = r.wait_acked(200);
        tokio::pin!(wait);
        assert!(futures::poll!(&mut wait).is_pending());
        // The controller's in-sync set drops it: the send is answered.
        r.committed_in_sync(&[2]);
        wait.await.unwrap();
        assert_eq!(r.high_watermark(), 200);
        // Slave 3 comes back caught up with the master's previous end but below the high
        // watermark: not in sync until it holds it.
        r.record_fetch(3, 150, 150);
        r.record_fetch(3, 150, 150);
        assert_eq!(r.in_sync_now(), vec![2]);
        r.record_fetch(3, 200, 200);
        assert_eq!(r.in_sync_now(), vec![2, 3]);
        // A report keeps a slave required for a while even if the metadata read lags.
        r.reporting(&[4]);
        assert!(r.required().contains(&4));
        clock.advance(Duration::from_millis(3_001));
        assert!(!r.required().contains(&4));
    }

    #[tokio::test]
    async fn async_replication_never_waits() {
        let (r, _) = replicas(false, 2);
        assert!(r.check().is_ok());
        r.wait_acked(u64::MAX).await.unwrap();
    }
}
