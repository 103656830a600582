//! The topic table: name -> queue count, persisted as `topics.json` in the data directory
//! (written atomically on every change, and the table in memory changes only once the file
//! did; changes are rare).
//!
//! Every send and pull reads the table on an async worker, so no change holds its lock while
//! the file is written and fsynced: changes take turns on a separate writer mutex, write the
//! next table to disk, and only then take the table's write lock to swap it in (as the offset
//! table does).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, RwLock};

use anyhow::Context;

use crate::store::durable::write_file;

pub(crate) struct TopicTable {
    path: PathBuf,
    topics: RwLock<BTreeMap<String, u32>>,
    /// Held by a change from reading the table to swapping in its successor: changes take
    /// turns, while readers of `topics` wait at most for the swap.
    writer: Mutex<()>,
    /// Test seam: runs in `save` before the file is written.
    #[cfg(test)]
    on_save: Mutex<Option<Box<dyn Fn() + Send>>>,
    /// Topics whose deletion is in progress: not auto-created meanwhile.
    deleting: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// Marks a topic as being deleted until dropped.
pub(crate) struct Deleting<'a> {
    table: &'a TopicTable,
    topic: String,
}

impl Drop for Deleting<'_> {
    fn drop(&mut self) {
        self.table
            .deleting
            .lock()
            .expect("deleting lock")
            .remove(&self.topic);
    }
}

impl TopicTable {
    pub(crate) fn load(path: PathBuf) -> anyhow::Result<Self> {
        let topics = match std::fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice(&b).with_context(|| format!("parsing {}", path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Self {
            path,
            topics: RwLock::new(topics),
            writer: Mutex::new(()),
            #[cfg(test)]
            on_save: Mutex::new(None),
            deleting: std::sync::Mutex::new(std::collections::BTreeSet::new()),
        })
    }

    pub(crate) fn queues(&self, topic: &str) -> Option<u32> {
        self.topics.read().expect("topics lock").get(topic).copied()
    }

    pub(crate) fn begin_delete(&self, topic: &str) -> Deleting<'_> {
        self.deleting
            .lock()
            .expect("deleting lock")
            .insert(topic.to_string());
        Deleting {
            table: self,
            topic: topic.to_string(),
        }
    }

    pub(crate) fn is_deleting(&self, topic: &str) -> bool {
        self.deleting.lock().expect("deleting lock").contains(topic)
    }

    pub(crate) fn len(&self) -> usize {
        self.topics.read().expect("topics lock").len()
    }

    pub(crate) fn list(&self) -> Vec<(String, u32)> {
        let t = self.topics.read().expect("topics lock");
        t.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Creates the topic unless it exists; returns (queue count, created).
    pub(crate) fn create(&self, topic: &str, queues: u32) -> anyhow::Result<(u32, bool)> {
        let _turn = self.turn();
        let mut next = self.snapshot();
        if let Some(q) = next.get(topic) {
            return Ok((*q, false));
        }
        next.insert(topic.to_string(), queues);
        self.commit(next)?;
        Ok((queues, true))
    }

    pub(crate) fn update(&self, topic: &str, queues: u32) -> anyhow::Result<bool> {
        let _turn = self.turn();
        let mut next = self.snapshot();
        match next.get_mut(topic) {
            Some(q) => *q = queues,
            None => return Ok(false),
        }
        self.commit(next)?;
        Ok(true)
    }

    pub(crate) fn delete(&self, topic: &str) -> anyhow::Result<bool> {
        let _turn = self.turn();
        let mut next = self.snapshot();
        if next.remove(topic).is_none() {
            return Ok(false);
        }
        self.commit(next)?;
        Ok(true)
    }

    /// The writer's turn: held from reading the table to swapping in the next one.
    fn turn(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the table (the read lock is held only to copy it).
    fn snapshot(&self) -> BTreeMap<String, u32> {
        self.topics.read().expect("topics lock").clone()
    }

    /// Writes `next` to disk with no lock on the table, then swaps it in. Call with the
    /// writer's turn held, so no other change slips in between the snapshot and the swap.
    fn commit(&self, next: BTreeMap<String, u32>) -> anyhow::Result<()> {
        self.save(&next)?;
        *self.topics.write().expect("topics lock") = next;
        Ok(())
    }

    fn save(&self, t: &BTreeMap<String, u32>) -> anyhow::Result<()> {
        #[cfg(test)]
        if let Some(f) = self.on_save.lock().expect("on_save lock").as_ref() {
            f();
        }
        write_file(&self.path, &serde_json::to_vec_pretty(t)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::Duration;

    /// While a create writes topics.json, readers (every send and pull) still get answers:
    /// the file is written without the table's lock. The new topic appears only once the
    /// file holds it, and a second change waits for its turn instead of losing the first.
    #[test]
    fn readers_are_answered_while_a_change_writes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topics.json");
        let table = Arc::new(TopicTable::load(path.clone()).unwrap());
        assert_eq!(table.create("old", 4).unwrap(), (4, true));

        // The writer stops inside `save` until the test lets it go.
        let (in_save_tx, in_save) = mpsc::channel::<()>();
        let (release, release_rx) = mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        *table.on_save.lock().unwrap() = Some(Box::new(move || {
            let _ = in_save_tx.send(());
            let _ = release_rx.lock().unwrap().recv();
        }));
        let t = table.clone();
        let creator = std::thread::spawn(move || t.create("new", 2));
        in_save
            .recv_timeout(Duration::from_secs(30))
            .expect("create reaches save");

        // A reader on another thread must be answered while the writer is stopped.
        let (answer_tx, answer) = mpsc::channel();
        let t = table.clone();
        std::thread::spawn(move || {
            let _ = answer_tx.send((t.queues("old"), t.queues("new"), t.len()));
        });
        let got = answer.recv_timeout(Duration::from_secs(10));
        // Let the writer go whatever happened, so a failure does not hang the test.
        release.send(()).unwrap();
        assert_eq!(
            got.expect("queues() was blocked while topics.json was being written"),
            (Some(4), None, 1),
            "the new topic is not visible before its file is written"
        );
        assert_eq!(creator.join().unwrap().unwrap(), (2, true));
        assert_eq!(table.queues("new"), Some(2));

        // What is in memory is what is on disk.
        let reloaded = TopicTable::load(path).unwrap();
        assert_eq!(reloaded.list(), table.list());
        assert_eq!(table.list(), vec![("new".into(), 2), ("old".into(), 4)]);
    }

    /// Changes racing on several threads all land: none is lost between snapshot and swap.
    #[test]
    fn concurrent_changes_all_land_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topics.json");
        let table = Arc::new(TopicTable::load(path.clone()).unwrap());
        let threads: Vec<_> = (0..8u32)
            .map(|i| {
                let t = table.clone();
                std::thread::spawn(move || {
                    t.create(&format!("t{i}"), i + 1).unwrap();
                    t.update(&format!("t{i}"), i + 2).unwrap();
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        let want: Vec<_> = (0..8u32).map(|i| (format!("t{i}"), i + 2)).collect();
        assert_eq!(table.list(), want);
        assert_eq!(TopicTable::load(path).unwrap().list(), want);
    }
}
