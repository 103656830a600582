//! Retention and disk pressure: deleting old commit-log segments (by age in the delete hour,
//! or oldest first above the clean watermark), moving queue minimums past them and reporting
//! unconsumed losses, and the high-watermark check that refuses writes (docs/STORAGE.md §7).
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::consume_queue::ConsumeQueue;
use super::{Inner, LostMessages, RetentionReport, StoreError};

impl Inner {
    pub(super) fn disk_usage(&self) -> Option<f64> {
        let space = self.cfg.disk_space.query(&self.cfg.dir)?;
        if space.total == 0 {
            return None;
        }
        let used = space.total.saturating_sub(space.available) as f64;
        Some(used / space.total as f64)
    }

    pub(super) fn check_disk(&self) {
        let Some(usage) = self.disk_usage() else {
            return;
        };
        let bp = if usage > self.cfg.disk_high_watermark {
            ((usage * 10_000.0) as u64).max(1)
        } else {
            0
        };
        let was = self.disk_full_bp.swap(bp, Ordering::Relaxed);
        if (was == 0) != (bp == 0) {
            if bp > 0 {
                tracing::error!(
                    used = usage,
                    watermark = self.cfg.disk_high_watermark,
                    "disk above the high watermark: refusing writes"
                );
            } else {
                tracing::info!(
                    used = usage,
                    "disk below the high watermark: accepting writes again"
                );
            }
        }
    }

    pub(super) fn run_retention(&self, force: bool) -> Result<RetentionReport, StoreError> {
        let mut report = RetentionReport::default();
        let max_age = Duration::from_secs(self.cfg.retention_hours * 3600);
        let mut under_pressure = false;
        loop {
            let pressure = self
                .disk_usage()
                .is_some_and(|u| u > self.cfg.disk_clean_watermark);
            // The store's clock decides the delete hour and segment ages (tests drive it).
            let now_ms = self.clock.now_ms();
            let in_window = force || local_hour(now_ms) == Some(self.cfg.delete_hour);
            let deleted = self.log.delete_oldest_if(|seg| {
                if pressure {
                    return true;
                }
                let modified_ms = std::fs::metadata(seg.path())
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as i64);
                let age = modified_ms
                    .map(|m| Duration::from_millis(now_ms.saturating_sub(m).max(0) as u64));
                in_window && age.is_some_and(|a| a >= max_age)
            })?;
            match deleted {
                Some(range) => {
                    if pressure {
                        under_pressure = true;
                        tracing::warn!(
                            start = range.0,
                            end = range.1,
                            "disk above the clean watermark: deleted commit-log segment \
                             whatever its age"
                        );
                    } else {
                        tracing::info!(
                            start = range.0,
                            end = range.1,
                            "deleted expired commit-log segment"
                        );
                    }
                    report.deleted_segments.push(range);
                }
                None => break,
            }
        }
        if report.deleted_segments.is_empty() {
            return Ok(report);
        }
        report.lost = self.trim_queues_below(self.log.min_offset(), under_pressure)?;
        Ok(report)
    }

    /// Moves every queue's minimum past `phys_min`. Unconsumed messages deleted are logged at
    /// WARN per queue; under disk pressure so is every queue's count of deleted messages.
    pub(super) fn trim_queues_below(
        &self,
        phys_min: u64,
        pressure: bool,
    ) -> Result<Vec<LostMessages>, StoreError> {
        let progress = self.progress.read().expect("progress lock").clone();
        let queues: Vec<Arc<ConsumeQueue>> = self
            .queues
            .read()
            .expect("queues lock")
            .values()
            .flat_map(|m| m.values().cloned())
            .collect();
        let mut lost = Vec::new();
        for cq in queues {
            let (old, new) = cq.trim_below_phys(phys_min)?;
            if new <= old {
                continue;
            }
            let consumed = progress.as_ref().and_then(|p| p(cq.topic(), cq.queue_id()));
            if pressure {
                tracing::warn!(
                    topic = cq.topic(),
                    queue = cq.queue_id(),
                    deleted = new - old,
                    unconsumed = ?consumed.map(|c| new.saturating_sub(c.max(old))),
                    "disk pressure deleted messages of this queue"
                );
            }
            if let Some(c) = consumed {
                let count = new.saturating_sub(c.max(old));
                if count > 0 {
                    tracing::warn!(
                        topic = cq.topic(),
                        queue = cq.queue_id(),
                        count,
                        "retention deleted unconsumed messages"
                    );
                    *self
                        .lost_total
                        .lock()
                        .expect("lost lock")
                        .entry((cq.topic().to_string(), cq.queue_id()))
                        .or_default() += count;
                    lost.push(LostMessages {
                        topic: cq.topic().to_string(),
                        queue_id: cq.queue_id(),
                        count,
                    });
                }
            }
        }
        self.index.trim_below_phys(phys_min)?;
        Ok(lost)
    }
}

/// The local hour (0..=23) at `now_ms` (ms since the epoch).
fn local_hour(now_ms: i64) -> Option<u8> {
    let now = now_ms.div_euclid(1000) as libc::time_t;
    // SAFETY: localtime_r fills the struct we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::localtime_r(&now, &mut tm) };
    (!r.is_null()).then_some(tm.tm_hour as u8)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::super::tests::{append, read_all, Msg};
    use crate::store::{GetStatus, LostMessages, ReadLimits, Store, StoreConfig};

    #[test]
    fn disk_above_the_watermark_refuses_writes_with_a_retryable_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::small_for_tests(dir.path());
        cfg.disk_high_watermark = 0.0;
        cfg.disk_clean_watermark = 0.0;
        let store = Store::open(cfg).unwrap();
        let err = append(&store, "T", 0, &[Msg::new(1, b"x")]).unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("watermark"), "{err}");
    }

    #[test]
    fn retention_deletes_old_segments_and_reports_unconsumed_losses() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::small_for_tests(dir.path());
        cfg.retention_hours = 1;
        cfg.disk_clean_watermark = 1.0;
        cfg.disk_high_watermark = 1.0;
        let store = Store::open(cfg).unwrap();
        let body = vec![0u8; 1000];
        for i in 0..300u128 {
            append(&store, "T", (i % 2) as u32, &[Msg::new(i, &body)]).unwrap();
        }
        // Queue 0 consumed up to 20, queue 1 fully consumed.
        store.set_consumer_progress(Arc::new(|_t: &str, q: u32| {
            Some(if q == 0 { 20 } else { 150 })
        }));
        let old = SystemTime::now() - Duration::from_secs(2 * 3600);
        let mut segs: Vec<_> = std::fs::read_dir(dir.path().join("commitlog"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        segs.sort();
        for seg in &segs[..2] {
            std::fs::File::options()
                .write(true)
                .open(seg)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        let report = store.run_retention(true).unwrap();
        assert_eq!(
            report.deleted_segments.len(),
            2,
            "only the two old segments go"
        );
        let (min0, _) = store.queue_bounds("T", 0);
        assert!(min0 > 20);
        assert_eq!(
            report.lost,
            vec![LostMessages {
                topic: "T".into(),
                queue_id: 0,
                count: min0 - 20
            }]
        );
        assert_eq!(store.lost_messages(), report.lost);
        let r = store
            .get_messages("T", 0, 0, ReadLimits::new(10, 1 << 20, 100), |_| true)
            .unwrap();
        assert_eq!((r.status, r.next_offset), (GetStatus::OffsetTooSmall, min0));
        assert_eq!(read_all(&store, "T", 0).first().map(|m| m.0), Some(min0));
        assert!(
            store.message_by_id(0).unwrap().is_none(),
            "deleted messages are gone from lookups"
        );
        assert!(store.message_by_id(299).unwrap().is_some());
    }

    #[test]
    fn segment_ages_and_the_delete_hour_follow_the_store_clock() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::small_for_tests(dir.path());
        cfg.retention_hours = 1;
        cfg.disk_clean_watermark = 1.0;
        cfg.disk_high_watermark = 1.0;
        let clock = crate::clock::ManualClock::starting_now();
        // The delete hour is whatever hour it will be two hours from now, local time.
        let later = clock.now_ms() + 2 * 3600 * 1000;
        cfg.delete_hour = super::local_hour(later).unwrap();
        let store = Store::open_with_clock(cfg, clock.clock()).unwrap();
        let body = vec![0u8; 1000];
        for i in 0..300u128 {
            append(&store, "T", 0, &[Msg::new(i, &body)]).unwrap();
        }
        store.set_consumer_progress(Arc::new(|_t: &str, _q: u32| Some(300)));
        let report = store.run_retention(false).unwrap();
        assert!(
            report.deleted_segments.is_empty(),
            "segments written just now are younger than the retention"
        );
        clock.advance(Duration::from_secs(2 * 3600));
        let report = store.run_retention(false).unwrap();
        assert!(
            !report.deleted_segments.is_empty(),
            "two hours later on the store's clock, in its delete hour, old segments go"
        );
        assert!(report.lost.is_empty(), "everything was consumed");
    }
}
