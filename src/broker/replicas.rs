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
        {
            let mut s = self.slaves.lock().unwrap_or_else(|e| e.into_inner());
            let v = s.entry(node).or_insert(SlaveView {
                node,
                acked: 0,
                end: 0,
                last_fetch_ms: now,
                caught_up_ms: i64::MIN,
            });
            // Caught up: it has what the master had when it last asked.
            if from >= v.end {
                v.caught_up_ms = now;
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
        self.clock.now_ms().saturating_sub(v.caught_up_ms) < self.policy.lag_ms
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
                let have = self.slaves().iter().filter(|v| v.acked >= end).count();
                if have >= need {
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

    #[tokio::test]
    async fn async_replication_never_waits() {
        let (r, _) = replicas(false, 2);
        assert!(r.check().is_ok());
        r.wait_acked(u64::MAX).await.unwrap();
    }
}
