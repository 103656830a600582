//! The checkpoint (what is known to be on disk) and the clean-shutdown marker.
//! Recovery scans the commit log only from the checkpoint, so its cost follows the unflushed
//! tail, not the size of the log.

use std::fs::File;
use std::path::Path;

use super::durable::{self, sync_dir};
use super::error::StoreError;
use super::record::{get_u32, get_u64};

const MAGIC: u32 = 0x5156_4350; // "QVCP"
const LEN: usize = 32;

/// Positions known durable at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    /// Commit-log bytes below this offset are on disk.
    pub(crate) commitlog: u64,
    /// Consume-queue and index entries of every record below this offset are on disk.
    pub(crate) dispatched: u64,
    /// When it was written, ms since the epoch.
    pub(crate) written_at: i64,
}

impl Checkpoint {
    fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[8..16].copy_from_slice(&self.commitlog.to_le_bytes());
        b[16..24].copy_from_slice(&self.dispatched.to_le_bytes());
        b[24..32].copy_from_slice(&self.written_at.to_le_bytes());
        let crc = crc32c::crc32c(&b[8..]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Reads the checkpoint; `Ok(None)` when there is none (a new store) or it is unreadable
    /// (then recovery scans everything, which is slow but correct).
    pub(crate) fn read(dir: &Path) -> Result<Option<Self>, StoreError> {
        let path = dir.join("checkpoint");
        let b = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        if b.len() != LEN || get_u32(&b, 0) != MAGIC || get_u32(&b, 4) != crc32c::crc32c(&b[8..]) {
            tracing::warn!(file = %path.display(), "checkpoint is unreadable; recovering from the start of the log");
            return Ok(None);
        }
        Ok(Some(Self {
            commitlog: get_u64(&b, 8),
            dispatched: get_u64(&b, 16),
            written_at: get_u64(&b, 24) as i64,
        }))
    }

    /// Writes atomically: `checkpoint.tmp`, fsync, rename, fsync of the directory
    /// ([`durable::write_file`], which also takes part in the power-loss seam in tests).
    pub(crate) fn write(&self, dir: &Path) -> Result<(), StoreError> {
        durable::write_file(&dir.join("checkpoint"), &self.encode())
    }
}

/// Marker present while the store is open; found at start-up it means the last run did not
/// shut down cleanly.
pub(crate) struct AbortMarker;

impl AbortMarker {
    pub(crate) fn exists(dir: &Path) -> bool {
        dir.join("abort").exists()
    }

    pub(crate) fn create(dir: &Path) -> Result<(), StoreError> {
        let path = dir.join("abort");
        #[cfg(test)]
        super::powerloss::check(&path)?;
        File::create(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| StoreError::io(&path, e))?;
        sync_dir(dir)
    }

    pub(crate) fn remove(dir: &Path) -> Result<(), StoreError> {
        let path = dir.join("abort");
        #[cfg(test)]
        super::powerloss::check(&path)?;
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption_falls_back_to_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Checkpoint::read(dir.path()).unwrap(), None);
        let cp = Checkpoint {
            commitlog: 123,
            dispatched: 100,
            written_at: 9,
        };
        cp.write(dir.path()).unwrap();
        assert_eq!(Checkpoint::read(dir.path()).unwrap(), Some(cp));
        let mut b = std::fs::read(dir.path().join("checkpoint")).unwrap();
        b[10] ^= 1;
        std::fs::write(dir.path().join("checkpoint"), b).unwrap();
        assert_eq!(Checkpoint::read(dir.path()).unwrap(), None);
    }
}
