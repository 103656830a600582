//! Parked pulls: one `Notify` per queue that has ever been pulled. The store's dispatcher wakes
//! it when entries become readable; parked pulls re-read and answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Default)]
pub(crate) struct LongPoll {
    queues: Mutex<HashMap<String, HashMap<u32, Arc<Notify>>>>,
}

impl LongPoll {
    pub(crate) fn subscribe(&self, topic: &str, queue: u32) -> Arc<Notify> {
        let mut q = self.queues.lock().expect("longpoll lock");
        if let Some(n) = q.get(topic).and_then(|m| m.get(&queue)) {
            return n.clone();
        }
        q.entry(topic.to_string())
            .or_default()
            .entry(queue)
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    pub(crate) fn wake(&self, topic: &str, queue: u32) {
        let n = {
            let q = self.queues.lock().expect("longpoll lock");
            q.get(topic).and_then(|m| m.get(&queue)).cloned()
        };
        if let Some(n) = n {
            n.notify_waiters();
        }
    }
}
