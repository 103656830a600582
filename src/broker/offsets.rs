//! Consumer offsets kept by the broker: (group, topic, queue) -> next offset to consume.
//! Held in memory, persisted to `offsets.json` once a second when changed and at shutdown
//! (a crash may redeliver up to a second of commits: at-least-once, never loss).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::Context;

use crate::store::durable::write_file;

type Table = BTreeMap<String, BTreeMap<String, BTreeMap<u32, u64>>>;

pub(crate) struct OffsetTable {
    path: PathBuf,
    table: Mutex<Table>,
    dirty: AtomicBool,
}

impl OffsetTable {
    pub(crate) fn load(path: PathBuf) -> anyhow::Result<Self> {
        let table = match std::fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice(&b).with_context(|| format!("parsing {}", path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Table::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Self {
            path,
            table: Mutex::new(table),
            dirty: AtomicBool::new(false),
        })
    }

    pub(crate) fn commit(&self, group: &str, topic: &str, queue: u32, offset: u64) {
        let mut t = self.table.lock().expect("offsets lock");
        t.entry(group.to_string())
            .or_default()
            .entry(topic.to_string())
            .or_default()
            .insert(queue, offset);
        self.dirty.store(true, Ordering::Release);
    }

    pub(crate) fn fetch(&self, group: &str, topic: &str, queue: u32) -> Option<u64> {
        let t = self.table.lock().expect("offsets lock");
        t.get(group)?.get(topic)?.get(&queue).copied()
    }

    /// Lowest committed offset of any group for a queue (retention's loss report).
    pub(crate) fn lowest(&self, topic: &str, queue: u32) -> Option<u64> {
        let t = self.table.lock().expect("offsets lock");
        t.values()
            .filter_map(|topics| topics.get(topic)?.get(&queue).copied())
            .min()
    }

    /// Groups with committed offsets.
    pub(crate) fn groups(&self) -> Vec<String> {
        self.table
            .lock()
            .expect("offsets lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Every committed offset of a group: (topic, queue, offset).
    pub(crate) fn of_group(&self, group: &str) -> Vec<(String, u32, u64)> {
        let t = self.table.lock().expect("offsets lock");
        t.get(group).map_or_else(Vec::new, |topics| {
            topics
                .iter()
                .flat_map(|(topic, qs)| qs.iter().map(move |(q, o)| (topic.clone(), *q, *o)))
                .collect()
        })
    }

    /// Forgets a group's offsets; true when it had any.
    pub(crate) fn delete_group(&self, group: &str) -> bool {
        let removed = self
            .table
            .lock()
            .expect("offsets lock")
            .remove(group)
            .is_some();
        self.dirty.store(true, Ordering::Release);
        removed
    }

    pub(crate) fn forget_topic(&self, topic: &str) {
        let mut t = self.table.lock().expect("offsets lock");
        for topics in t.values_mut() {
            topics.remove(topic);
        }
        self.dirty.store(true, Ordering::Release);
    }

    /// The whole table as JSON (what a master gives its slaves).
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let t = self.table.lock().expect("offsets lock");
        serde_json::to_value(&*t).unwrap_or_default()
    }

    /// Replaces the whole table with a master's (a slave mirroring it); false when `v` is
    /// not a table.
    pub(crate) fn replace_from_json(&self, v: serde_json::Value) -> bool {
        let Ok(table) = serde_json::from_value::<Table>(v) else {
            return false;
        };
        let mut t = self.table.lock().expect("offsets lock");
        if *t != table {
            *t = table;
            self.dirty.store(true, Ordering::Release);
        }
        true
    }

    /// Writes the table if it changed since the last save.
    pub(crate) fn save_if_dirty(&self) -> anyhow::Result<()> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let bytes = {
            let t = self.table.lock().expect("offsets lock");
            serde_json::to_vec_pretty(&*t)?
        };
        write_file(&self.path, &bytes)
            .map_err(anyhow::Error::from)
            .inspect_err(|_| {
                self.dirty.store(true, Ordering::Release);
            })
    }
}
