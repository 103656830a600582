//! Dispatch: building consume-queue entries and the key/id index from the commit log, in log
//! order, and publishing them to readers (docs/STORAGE.md §6.3).
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::commitlog::{self, Step};
use super::consume_queue::ConsumeQueue;
use super::{id_hash, key_hash, tag_hash, CqEntry, Inner, StoreError};

impl Inner {
    pub(super) fn queue_or_create(
        &self,
        topic: &str,
        queue_id: u32,
    ) -> Result<Arc<ConsumeQueue>, StoreError> {
        if let Some(cq) = self.queue(topic, queue_id) {
            return Ok(cq);
        }
        let mut queues = self.queues.write().expect("queues lock");
        if let Some(cq) = queues.get(topic).and_then(|m| m.get(&queue_id)) {
            return Ok(cq.clone());
        }
        let cq = Arc::new(ConsumeQueue::open(
            &self.cfg.dir.join("consumequeue"),
            topic,
            queue_id,
            self.cfg.cq_entries_per_file,
            self.derived_space.clone(),
        )?);
        queues
            .entry(topic.to_string())
            .or_default()
            .insert(queue_id, cq.clone());
        Ok(cq)
    }

    /// Builds consume-queue and index entries for records up to `end` and publishes them.
    /// Returns how many records were dispatched.
    pub(super) fn dispatch_to(&self, end: u64) -> Result<u64, StoreError> {
        let mut pos_guard = self.dispatched.lock().expect("dispatch lock");
        let mut pos = *pos_guard;
        if pos >= end {
            return Ok(0);
        }
        let mut touched: Vec<(Arc<ConsumeQueue>, u64)> = Vec::new();
        let mut n = 0;
        while pos < end {
            match self.log.step(pos, false) {
                Step::Record { pos: p, len, .. } => {
                    // Recovery re-dispatches records below the checkpoint that no scan
                    // CRC-checked: an unparsable one is damage to report and pass over
                    // (docs/STORAGE.md §10), not a reason to refuse to open.
                    if self.recovering.load(Ordering::Relaxed) && !self.log_record_parses(p, len) {
                        self.dispatch_damaged_record(p, len, &mut touched)?;
                        pos = p + len as u64;
                        continue;
                    }
                    self.log
                        .with_record(p, len, false, |r| -> Result<(), StoreError> {
                            let qo = r.queue_offset();
                            let cq = match touched.iter().find(|(c, _)| {
                                c.queue_id() == r.queue_id() && c.topic() == r.topic()
                            }) {
                                Some((c, _)) => c.clone(),
                                None => {
                                    let c = self.queue_or_create(r.topic(), r.queue_id())?;
                                    touched.push((c.clone(), 0));
                                    c
                                }
                            };
                            cq.put(
                                qo,
                                CqEntry {
                                    phys_offset: p,
                                    size: len as u32,
                                    tag_hash: tag_hash(r.tag()),
                                },
                            )?;
                            if let Some(t) = touched.iter_mut().find(|(c, _)| Arc::ptr_eq(c, &cq)) {
                                t.1 = t.1.max(qo + 1);
                            }
                            let ts = r.store_timestamp();
                            self.index.put(id_hash(r.msg_id()), p, ts)?;
                            for key in r.keys() {
                                self.index.put(key_hash(r.topic(), key), p, ts)?;
                            }
                            Ok(())
                        })??;
                    pos = p + len as u64;
                    n += 1;
                }
                Step::NextSegment(next) => pos = next,
                Step::End { pos: p, reason } if self.recovering.load(Ordering::Relaxed) => {
                    pos = self.dispatch_skip(p, end, &reason);
                }
                Step::End { pos: p, reason } => {
                    return Err(commitlog::corrupt(
                        &self.log.path_of(p),
                        p % self.log.segment_size(),
                        &format!("dispatch found no record below the written end: {reason}"),
                    ));
                }
            }
        }
        // Publish under the lock, so a checkpoint that reads the new position also flushes
        // these entries.
        for (cq, max) in &touched {
            cq.publish(*max);
        }
        *pos_guard = pos;
        drop(pos_guard);
        if let Some(l) = self.listener.read().expect("listener lock").clone() {
            for (cq, max) in touched {
                l(cq.topic(), cq.queue_id(), max);
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::super::tests::{append, Msg};
    use super::*;
    use crate::store::{Store, StoreConfig};

    /// Dispatch on its own: run again over records it already dispatched, it rewrites the same
    /// entries at the same positions (entry `n` at byte `n·20`), publishes the same maxima and
    /// tells the listener; with nothing new it does nothing.
    #[test]
    fn dispatching_the_same_records_again_rewrites_the_same_entries() {
        let dir = tempfile::tempdir().unwrap();
        // The flush thread must not dispatch meanwhile (it would on its interval).
        let mut cfg = StoreConfig::small_for_tests(dir.path());
        cfg.flush_interval_ms = 3_600_000;
        let store = Store::open(cfg).unwrap();
        let body = vec![7u8; 300];
        for q in 0..2u32 {
            let msgs: Vec<Msg> = (0..40)
                .map(|i| Msg::new(u128::from(q) * 100 + i, &body))
                .collect();
            append(&store, "T", q, &msgs[..25]).unwrap();
            append(&store, "T", q, &msgs[25..]).unwrap();
        }
        let entries = |q| store.read_entries("T", q, 0, 1000);
        let before = (entries(0), entries(1));
        assert_eq!((before.0.len(), before.1.len()), (40, 40));
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        store.set_arrival_listener(Arc::new(move |t: &str, q, max| {
            h.lock().unwrap().push((t.to_string(), q, max));
        }));

        let inner = &store.inner;
        let end = inner.log.written();
        *inner.dispatched.lock().unwrap() = inner.log.min_offset();
        assert_eq!(inner.dispatch_to(end).unwrap(), 80);
        assert_eq!((entries(0), entries(1)), before);
        assert_eq!(store.queue_bounds("T", 0), (0, 40));
        assert_eq!(store.queue_bounds("T", 1), (0, 40));
        let mut got = heard.lock().unwrap().clone();
        got.sort();
        assert_eq!(got, vec![("T".into(), 0, 40), ("T".into(), 1, 40)]);
        // The index got every hash a second time; lookups still give each record once.
        let hits = store.query_by_key("T", "key-105", 10, 0, i64::MAX).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(store.messages_by_id(7).unwrap().len(), 1);

        assert_eq!(inner.dispatch_to(end).unwrap(), 0);
        assert_eq!(heard.lock().unwrap().len(), 2);
    }
}
