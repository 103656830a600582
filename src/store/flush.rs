//! Durability: the flush thread (async flushing and sync group commit), waiting for an fsync,
//! the housekeeping thread and the checkpoint it writes (docs/STORAGE.md §5.1, §6.2, §6.5).
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::checkpoint::Checkpoint;
use super::consume_queue::ConsumeQueue;
use super::{mapped, FlushMode, Inner, StoreError};

/// Called once a batch's durability is known.
pub(super) type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// What the flush thread waits on: appends waiting for their fsync (sync mode), and shutdown.
pub(super) struct FlushState {
    pub(super) waiters: Vec<(u64, Completion)>,
    pub(super) shutdown: bool,
}

impl Inner {
    pub(super) fn wait_durable(&self, end: u64, done: Completion) {
        if let Some(p) = self.poisoned.get() {
            return done(Err(StoreError::Poisoned(p.clone())));
        }
        let mut st = self.flush.lock().expect("flush lock");
        if self.log.flushed() >= end {
            drop(st);
            return done(Ok(()));
        }
        if st.shutdown {
            drop(st);
            return done(Err(StoreError::Closed));
        }
        st.waiters.push((end, done));
        drop(st);
        self.flush_cv.notify_one();
    }

    pub(super) fn flush_loop(self: Arc<Self>) {
        let interval = Duration::from_millis(self.cfg.flush_interval_ms.max(1));
        let sync = self.cfg.flush_mode == FlushMode::Sync;
        let gather = Duration::from_micros(self.cfg.group_commit_wait_us);
        let mut last_group = 0usize;
        loop {
            let (waiters, shutdown) = {
                let mut st = self.flush.lock().expect("flush lock");
                let deadline = Instant::now() + interval;
                loop {
                    if st.shutdown || !st.waiters.is_empty() {
                        break;
                    }
                    let dirty = self.log.written() - self.log.flushed();
                    if !sync && dirty >= self.cfg.flush_dirty_pages * mapped::PAGE {
                        break;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    st = self
                        .flush_cv
                        .wait_timeout(st, deadline - now)
                        .expect("flush lock")
                        .0;
                }
                // Group commit: when the last fsync served a large group, wait a moment for
                // its writers to come back, so one fsync again serves many instead of
                // splitting them into small groups (PostgreSQL's commit_delay, adaptively).
                if sync && !st.shutdown && !gather.is_zero() {
                    let until = Instant::now() + gather;
                    while st.waiters.len() < last_group / 2 && !st.shutdown {
                        let now = Instant::now();
                        if now >= until {
                            break;
                        }
                        st = self
                            .flush_cv
                            .wait_timeout(st, until - now)
                            .expect("flush lock")
                            .0;
                    }
                }
                last_group = st.waiters.len();
                (std::mem::take(&mut st.waiters), st.shutdown)
            };
            // Every waiter taken registered after its records were written, so `written` read
            // now covers all of them: one fsync serves the whole group.
            if let Some(p) = self.poisoned.get() {
                for (_, done) in waiters {
                    done(Err(StoreError::Poisoned(p.clone())));
                }
                if shutdown {
                    return;
                }
                continue;
            }
            let quiet = self.quiesce.lock().expect("quiesce lock");
            let w = self.log.written();
            let t0 = Instant::now();
            let dirty = w > self.log.flushed();
            let flushed = self.log.flush(self.log.flushed(), w);
            let took = t0.elapsed();
            self.flush_nanos
                .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
            if dirty {
                if let Some(f) = self.flush_observer.read().expect("observer lock").as_ref() {
                    f(took, waiters.len());
                }
            }
            self.flush_count.fetch_add(1, Ordering::Relaxed);
            self.flush_waiters
                .fetch_add(waiters.len() as u64, Ordering::Relaxed);
            // Dispatch what is in the log: in sync mode the records just made durable; in
            // async mode only what an append could not dispatch itself (disk full).
            let dispatched = match &flushed {
                Ok(()) => self.dispatch_to(w).map(|_| ()),
                Err(_) => Ok(()),
            };
            let outcome = match (flushed, dispatched) {
                (Ok(()), Ok(())) => Ok(()),
                // Durable, so acknowledged; readable once a consume-queue or index file can
                // be allocated (retried every cycle).
                (Ok(()), Err(e @ StoreError::DiskFull { .. })) => {
                    tracing::warn!(error = %e, "dispatch deferred: disk full");
                    Ok(())
                }
                // Sync mode, no space for the write-back: nothing in `flushed..w` was
                // acknowledged, so refuse this group with the retryable error and try again
                // next cycle. In async mode those records were acknowledged: poison below.
                (Err(e @ StoreError::DiskFull { .. }), _) if sync => {
                    tracing::warn!(error = %e, "flush failed: disk full");
                    Err(e)
                }
                (Ok(()), Err(e)) | (Err(e), _) => {
                    self.poison(&e);
                    Err(StoreError::Poisoned(e.to_string()))
                }
            };
            drop(quiet);
            match outcome {
                Ok(()) => {
                    for (_, done) in waiters {
                        done(Ok(()));
                    }
                    self.log.release_flushed(8 << 20);
                }
                Err(e) => {
                    for (_, done) in waiters {
                        done(Err(e.clone()));
                    }
                }
            }
            if shutdown {
                let rest = std::mem::take(&mut self.flush.lock().expect("flush lock").waiters);
                let flushed = self.log.flushed();
                for (end, done) in rest {
                    done(if end <= flushed && self.poisoned.get().is_none() {
                        Ok(())
                    } else {
                        Err(StoreError::Closed)
                    });
                }
                return;
            }
        }
    }

    pub(super) fn housekeeping_loop(self: Arc<Self>) {
        let tick = Duration::from_millis(self.cfg.checkpoint_interval_ms.clamp(10, 1000));
        let mut last_checkpoint = Instant::now();
        let mut last_retention = Instant::now();
        let mut last_release = Instant::now();
        let mut checkpoint_deferred = false;
        loop {
            {
                let st = self.flush.lock().expect("flush lock");
                if st.shutdown {
                    return;
                }
                let (st, _) = self
                    .housekeeping_cv
                    .wait_timeout(st, tick)
                    .expect("flush lock");
                if st.shutdown {
                    return;
                }
            }
            self.check_disk();
            if last_checkpoint.elapsed() >= Duration::from_millis(self.cfg.checkpoint_interval_ms) {
                last_checkpoint = Instant::now();
                if self.poisoned.get().is_none() {
                    let checkpoint = {
                        let _quiet = self.quiesce.lock().expect("quiesce lock");
                        self.checkpoint()
                    };
                    match checkpoint {
                        Ok(()) => {
                            if checkpoint_deferred {
                                checkpoint_deferred = false;
                                tracing::info!("checkpoint written again");
                            }
                        }
                        // A full disk stops the checkpoint from advancing, nothing more: the
                        // previous one stays valid (atomic rename), and recovery just scans
                        // further. Try again next time.
                        Err(e @ StoreError::DiskFull { .. }) => {
                            if !checkpoint_deferred {
                                checkpoint_deferred = true;
                                tracing::warn!(error = %e, "checkpoint deferred: disk full");
                            }
                        }
                        Err(e) => self.poison(&e),
                    }
                }
            }
            if last_retention.elapsed() >= Duration::from_secs(10) {
                last_retention = Instant::now();
                let _quiet = self.quiesce.lock().expect("quiesce lock");
                if let Err(e) = self.run_retention(false) {
                    tracing::error!(error = %e, "retention pass failed");
                }
            }
            if last_release.elapsed() >= Duration::from_secs(30) {
                last_release = Instant::now();
                self.log.release_sealed();
                self.index.release_sealed();
                for per in self.queues.read().expect("queues lock").values() {
                    for cq in per.values() {
                        cq.release_sealed();
                    }
                }
            }
        }
    }

    /// Flushes consume queues and the index, then records what is durable.
    pub(super) fn checkpoint(&self) -> Result<(), StoreError> {
        let dispatched = *self.dispatched.lock().expect("dispatch lock");
        let commitlog = self.log.flushed();
        let queues: Vec<Arc<ConsumeQueue>> = self
            .queues
            .read()
            .expect("queues lock")
            .values()
            .flat_map(|m| m.values().cloned())
            .collect();
        for cq in queues {
            cq.flush()?;
        }
        self.index.flush()?;
        Checkpoint {
            commitlog,
            dispatched,
            written_at: self.clock.now_ms(),
        }
        .write(&self.cfg.dir)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::tests::{append, read_all, Msg};
    use crate::store::{FlushMode, Store, StoreConfig};

    #[test]
    fn sync_mode_group_commit_acks_concurrent_writers() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::small_for_tests(dir.path());
        cfg.flush_mode = FlushMode::Sync;
        let store = Arc::new(Store::open(cfg).unwrap());
        let threads: Vec<_> = (0..8u128)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..50u128 {
                        let a =
                            append(&store, "T", 0, &[Msg::new(t * 1000 + i, b"durable")]).unwrap();
                        let (_, _, flushed) = store.log_offsets();
                        assert!(flushed >= a.end, "acked only once flushed");
                        let (_, max) = store.queue_bounds("T", 0);
                        assert!(max > a.results[0].queue_offset, "readable once acked");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let got = read_all(&store, "T", 0);
        assert_eq!(got.len(), 400);
        assert!(got.iter().enumerate().all(|(i, (o, _, _))| *o == i as u64));
    }
}
