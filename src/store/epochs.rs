//! The epoch file (`<dir>/epochs`): which master epoch wrote which part of the commit log,
//! as Kafka's leader-epoch checkpoint and RocketMQ 5's epoch file keep it. Each entry says
//! "from commit-log offset `start` on, the records were written by the master of `epoch`".
//! A returning old master compares its history with the new master's through it and cuts
//! what the new master never had (docs/STORAGE.md §11.2).

use std::path::{Path, PathBuf};

use super::durable;
use super::error::StoreError;

const HEADER: &str = "quiver-epochs 1";

/// One entry of the epoch file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    /// The master epoch.
    pub epoch: u64,
    /// Commit-log offset of the first record that epoch's master wrote.
    pub start: u64,
}

/// Where `epoch`'s part of a history ends, by the rule of Kafka's OffsetsForLeaderEpoch: the
/// largest epoch of `entries` at or below `epoch` (0 when there is none: the part of the log
/// before any entry), and the offset where the next entry starts (`log_end` when none does).
pub fn epoch_end(entries: &[EpochEntry], epoch: u64, log_end: u64) -> (u64, u64) {
    match entries.iter().rposition(|e| e.epoch <= epoch) {
        Some(i) => (
            entries[i].epoch,
            entries.get(i + 1).map_or(log_end, |n| n.start),
        ),
        None => (0, entries.first().map_or(log_end, |e| e.start)),
    }
}

/// Checks that epochs rise and starts never go back.
pub(crate) fn check(entries: &[EpochEntry]) -> Result<(), String> {
    for w in entries.windows(2) {
        if w[1].epoch <= w[0].epoch || w[1].start < w[0].start {
            return Err(format!(
                "entry (epoch {}, start {}) follows (epoch {}, start {})",
                w[1].epoch, w[1].start, w[0].epoch, w[0].start
            ));
        }
    }
    Ok(())
}

/// The epoch file of a store directory.
pub(crate) struct EpochFile {
    path: PathBuf,
    entries: Vec<EpochEntry>,
}

impl EpochFile {
    /// Reads `<dir>/epochs` (none: no entries) and drops entries that start past `log_end`
    /// (a crash lost the records they were about), writing the file back if it changed.
    pub(crate) fn open(dir: &Path, log_end: u64) -> Result<Self, StoreError> {
        let path = dir.join("epochs");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            file: path.clone(),
            offset: 0,
            reason,
        };
        let mut lines = text.lines();
        let mut entries = Vec::new();
        if let Some(first) = lines.next() {
            if first != HEADER {
                return Err(corrupt(format!("the first line is not {HEADER:?}")));
            }
        }
        for (n, line) in lines.enumerate() {
            let mut parts = line.split_ascii_whitespace().map(str::parse::<u64>);
            match (parts.next(), parts.next(), parts.next()) {
                (Some(Ok(epoch)), Some(Ok(start)), None) => {
                    entries.push(EpochEntry { epoch, start })
                }
                _ => {
                    return Err(corrupt(format!(
                        "line {} is not \"<epoch> <start>\"",
                        n + 2
                    )))
                }
            }
        }
        check(&entries).map_err(corrupt)?;
        let mut file = Self { path, entries };
        let before = file.entries.len();
        file.entries.retain(|e| e.start <= log_end);
        if file.entries.len() != before {
            tracing::warn!(
                dropped = before - file.entries.len(),
                log_end,
                "epoch entries past the recovered log end dropped"
            );
            file.write()?;
        }
        Ok(file)
    }

    pub(crate) fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// Replaces the entries (durably, when they changed).
    pub(crate) fn set(&mut self, entries: Vec<EpochEntry>) -> Result<(), StoreError> {
        if entries == self.entries {
            return Ok(());
        }
        check(&entries).map_err(|reason| StoreError::Corrupt {
            file: self.path.clone(),
            offset: 0,
            reason,
        })?;
        let old = std::mem::replace(&mut self.entries, entries);
        if let Err(e) = self.write() {
            self.entries = old;
            return Err(e);
        }
        Ok(())
    }

    fn write(&self) -> Result<(), StoreError> {
        let mut text = String::from(HEADER);
        text.push('\n');
        for e in &self.entries {
            text.push_str(&format!("{} {}\n", e.epoch, e.start));
        }
        durable::write_file(&self.path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(epoch: u64, start: u64) -> EpochEntry {
        EpochEntry { epoch, start }
    }

    #[test]
    fn the_end_of_an_epoch_is_where_the_next_one_starts() {
        let h = [e(1, 0), e(2, 100), e(4, 300)];
        assert_eq!(epoch_end(&h, 1, 500), (1, 100));
        assert_eq!(epoch_end(&h, 2, 500), (2, 300));
        // An epoch this history never had: the largest below it.
        assert_eq!(epoch_end(&h, 3, 500), (2, 300));
        assert_eq!(epoch_end(&h, 4, 500), (4, 500));
        assert_eq!(epoch_end(&h, 9, 500), (4, 500));
        // Below every entry: the part before the first.
        assert_eq!(epoch_end(&h, 0, 500), (0, 0));
        assert_eq!(epoch_end(&[e(3, 40)], 1, 500), (0, 40));
        assert_eq!(epoch_end(&[], 7, 500), (0, 500));
    }

    #[test]
    fn the_file_survives_a_reopen_and_forgets_entries_past_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = EpochFile::open(dir.path(), 0).unwrap();
        assert!(f.entries().is_empty());
        f.set(vec![e(1, 0), e(3, 200)]).unwrap();
        assert!(f.set(vec![e(3, 0), e(1, 200)]).is_err(), "epochs must rise");
        assert_eq!(f.entries(), &[e(1, 0), e(3, 200)]);
        let f = EpochFile::open(dir.path(), 500).unwrap();
        assert_eq!(f.entries(), &[e(1, 0), e(3, 200)]);
        let f = EpochFile::open(dir.path(), 199).unwrap();
        assert_eq!(f.entries(), &[e(1, 0)]);
        let f = EpochFile::open(dir.path(), 1000).unwrap();
        assert_eq!(f.entries(), &[e(1, 0)], "the drop was written back");
        std::fs::write(dir.path().join("epochs"), "quiver-epochs 1\n1 0\nx\n").unwrap();
        assert!(matches!(
            EpochFile::open(dir.path(), 0),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
