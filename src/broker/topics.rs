//! The topic table: name -> queue count, persisted as `topics.json` in the data directory
//! (written atomically on every change, and the table in memory changes only once the file
//! did; changes are rare).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::RwLock;

use anyhow::Context;

use crate::store::durable::write_file;

pub(crate) struct TopicTable {
    path: PathBuf,
    topics: RwLock<BTreeMap<String, u32>>,
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
        let mut t = self.topics.write().expect("topics lock");
        if let Some(q) = t.get(topic) {
            return Ok((*q, false));
        }
        let mut next = t.clone();
        next.insert(topic.to_string(), queues);
        self.save(&next)?;
        *t = next;
        Ok((queues, true))
    }

    pub(crate) fn update(&self, topic: &str, queues: u32) -> anyhow::Result<bool> {
        let mut t = self.topics.write().expect("topics lock");
        let mut next = t.clone();
        match next.get_mut(topic) {
            Some(q) => *q = queues,
            None => return Ok(false),
        }
        self.save(&next)?;
        *t = next;
        Ok(true)
    }

    pub(crate) fn delete(&self, topic: &str) -> anyhow::Result<bool> {
        let mut t = self.topics.write().expect("topics lock");
        let mut next = t.clone();
        if next.remove(topic).is_none() {
            return Ok(false);
        }
        self.save(&next)?;
        *t = next;
        Ok(true)
    }

    fn save(&self, t: &BTreeMap<String, u32>) -> anyhow::Result<()> {
        write_file(&self.path, &serde_json::to_vec_pretty(t)?)?;
        Ok(())
    }
}
