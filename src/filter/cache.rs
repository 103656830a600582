//! A bounded cache of compiled filters, so that a broker compiles each distinct subscription
//! once however many consumers and pulls use it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Filter, FilterError, FilterKind};

/// Compiled filters keyed by (kind, text), least recently used evicted first.
///
/// Both the text as written and the canonical text are keys, so `a>1` and `a > 1` share one
/// compiled [`Filter`]. Errors are not cached. Safe to share between threads.
#[derive(Debug)]
pub struct FilterCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<(FilterKind, String), Entry>,
    clock: u64,
}

#[derive(Debug)]
struct Entry {
    filter: Arc<Filter>,
    last_used: u64,
}

impl Inner {
    fn touch(&mut self, key: &(FilterKind, String)) -> Option<Arc<Filter>> {
        self.clock += 1;
        let now = self.clock;
        self.entries.get_mut(key).map(|e| {
            e.last_used = now;
            e.filter.clone()
        })
    }

    fn insert(&mut self, key: (FilterKind, String), filter: Arc<Filter>) {
        self.clock += 1;
        let last_used = self.clock;
        self.entries.insert(key, Entry { filter, last_used });
    }

    fn evict_to(&mut self, capacity: usize) {
        while self.entries.len() > capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.entries.remove(&k);
                }
                None => break,
            }
        }
    }
}

impl Default for FilterCache {
    /// A cache of [`FilterCache::DEFAULT_CAPACITY`] entries.
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

impl FilterCache {
    /// Entries kept by [`FilterCache::default`].
    pub const DEFAULT_CAPACITY: usize = 1024;

    /// A cache holding at most `capacity` keys (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The map stays consistent even if a holder panicked: keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The compiled filter for `expr`, compiling it on a miss.
    pub fn get_or_compile(&self, kind: FilterKind, expr: &str) -> Result<Arc<Filter>, FilterError> {
        let key = (kind, expr.to_string());
        if let Some(f) = self.lock().touch(&key) {
            return Ok(f);
        }
        // Compile outside the lock; another thread may race us to the same entry, harmlessly.
        let compiled = Filter::parse(kind, expr)?;
        let canonical_key = (kind, compiled.canonical());
        let mut inner = self.lock();
        let filter = match inner.touch(&canonical_key) {
            Some(existing) => existing,
            None => {
                let filter = Arc::new(compiled);
                inner.insert(canonical_key.clone(), filter.clone());
                filter
            }
        };
        if key != canonical_key {
            inner.insert(key, filter.clone());
        }
        inner.evict_to(self.capacity);
        Ok(filter)
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most keys held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.lock().entries.clear();
    }
}
