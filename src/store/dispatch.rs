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
