//! The controller's Raft log on disk (`<data_dir>/controller/`): an append-only file of
//! CRC-checked JSON entries, plus the vote, the committed position and the last purged log
//! id, each a small file replaced atomically. The log stays small (it is purged behind each
//! snapshot), so it is also held in memory, and truncation and purging rewrite the file.
//!
//! Record layout in `raft.log`: `u32 LE length, u32 LE CRC32C of the JSON, JSON entry`. A torn
//! or damaged record at the end (a crash during an append) ends the log there and is cut off
//! at open; appends are acknowledged to Raft only after `fdatasync`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::TypeConfig;

type NodeId = u64;

struct Inner {
    dir: PathBuf,
    file: File,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
}

/// The log storage; cheap to clone (readers share it).
#[derive(Clone)]
pub(crate) struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what} {}: {e}", path.display()))
}

/// Writes `bytes` to `path` so that a crash leaves the old or the new content, never a mix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn read_json<T: DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| io_err("damaged controller file", path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> std::io::Result<()> {
    let b = serde_json::to_vec(v).map_err(|e| io_err("encoding", path, e))?;
    write_atomic(path, &b)
}

fn encode_record(e: &Entry<TypeConfig>, out: &mut Vec<u8>) -> std::io::Result<()> {
    let json = serde_json::to_vec(e).map_err(std::io::Error::other)?;
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
    out.extend_from_slice(&json);
    Ok(())
}

/// Reads the records of `bytes` up to the first torn or damaged one; returns them and the
/// length of the valid prefix.
fn decode_records(bytes: &[u8]) -> (Vec<Entry<TypeConfig>>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 8 {
        let len =
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let Some(json) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32c::crc32c(json) != crc {
            break;
        }
        let Ok(e) = serde_json::from_slice::<Entry<TypeConfig>>(json) else {
            break;
        };
        out.push(e);
        at += 8 + len;
    }
    (out, at)
}

fn storage_err(e: std::io::Error) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::write_logs(AnyError::error(e)),
    }
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, cutting off a torn tail.
    pub(crate) fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("raft.log");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (entries, valid) = decode_records(&bytes);
        if valid < bytes.len() {
            tracing::warn!(
                file = %path.display(),
                cut = bytes.len() - valid,
                "controller log: cutting off a torn or damaged tail"
            );
            file.set_len(valid as u64)?;
            file.sync_data()?;
        }
        let purged: Option<LogId<NodeId>> = read_json(&dir.join("purged.json"))?;
        let entries = entries
            .into_iter()
            .filter(|e| purged.is_none_or(|p| e.log_id.index > p.index))
            .map(|e| (e.log_id.index, e))
            .collect();
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                dir: dir.to_path_buf(),
                file,
                entries,
                vote: read_json(&dir.join("vote.json"))?,
                committed: read_json(&dir.join("committed.json"))?,
                purged,
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the locked log on a blocking thread (file I/O and fsync never run on the
    /// async runtime).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, StorageError<NodeId>> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = inner.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut g)
        })
        .await
        .map_err(|e| storage_err(std::io::Error::other(e)))?
        .map_err(storage_err)
    }
}

impl Inner {
    /// Rewrites `raft.log` from the entries in memory (after a truncation or a purge).
    fn rewrite(&mut self) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for e in self.entries.values() {
            encode_record(e, &mut buf)?;
        }
        let path = self.dir.join("raft.log");
        write_atomic(&path, &buf)?;
        self.file = OpenOptions::new().read(true).append(true).open(&path)?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        Ok(self
            .lock()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let g = self.lock();
        let last = g
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(g.purged);
        Ok(LogState {
            last_purged_log_id: g.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let v = *vote;
        self.blocking(move |g| {
            write_json(&g.dir.join("vote.json"), &v)?;
            g.vote = Some(v);
            Ok(())
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.blocking(move |g| {
            write_json(&g.dir.join("committed.json"), &committed)?;
            g.committed = committed;
            Ok(())
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let result = self
            .blocking(move |g| {
                let mut buf = Vec::new();
                for e in &entries {
                    encode_record(e, &mut buf)?;
                }
                g.file.write_all(&buf)?;
                g.file.sync_data()?;
                for e in entries {
                    g.entries.insert(e.log_id.index, e);
                }
                Ok(())
            })
            .await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.blocking(move |g| {
            g.entries.retain(|i, _| *i < log_id.index);
            g.rewrite()
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.blocking(move |g| {
            // The purge point first: a crash between the two files leaves extra entries
            // below it, which open() drops.
            write_json(&g.dir.join("purged.json"), &Some(log_id))?;
            g.purged = Some(log_id);
            g.entries.retain(|i, _| *i > log_id.index);
            g.rewrite()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[test]
    fn records_survive_a_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        for i in 1..=3 {
            encode_record(&entry(1, i), &mut buf).unwrap();
        }
        let good = buf.len();
        encode_record(&entry(1, 4), &mut buf).unwrap();
        buf.truncate(buf.len() - 3);
        std::fs::write(dir.path().join("raft.log"), &buf).unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let idx: Vec<u64> = store.lock().entries.keys().copied().collect();
        assert_eq!(idx, vec![1, 2, 3]);
        assert_eq!(
            std::fs::metadata(dir.path().join("raft.log"))
                .unwrap()
                .len(),
            good as u64
        );
    }

    #[test]
    fn a_damaged_record_ends_the_log() {
        let mut buf = Vec::new();
        for i in 1..=3 {
            encode_record(&entry(1, i), &mut buf).unwrap();
        }
        let second = buf.len() / 3 + 10;
        buf[second] ^= 0x40;
        let (entries, valid) = decode_records(&buf);
        assert_eq!(entries.len(), 1);
        assert!(valid < buf.len());
    }
}
