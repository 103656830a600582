//! The controller's state machine storage: [`ClusterState`] in memory, applied from the Raft
//! log, with its snapshot kept in `<data_dir>/controller/snapshot.json` (replaced atomically)
//! so a restarted node starts from it and replays only the log after it.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::log_store::write_atomic;
use super::state::{ClusterState, Reply};
use super::TypeConfig;

type NodeId = u64;

/// What a snapshot holds: the state and where in the log it stands.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Stored {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    state: ClusterState,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

struct Inner {
    path: PathBuf,
    sm: Stored,
    snapshot: Option<SnapshotFile>,
    snapshots_built: u64,
}

/// The state machine; cheap to clone (the snapshot builder and readers share it).
#[derive(Clone)]
pub(crate) struct StateMachine {
    inner: Arc<Mutex<Inner>>,
}

fn sm_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::write_state_machine(AnyError::error(e.to_string())),
    }
}

impl StateMachine {
    /// Loads the last snapshot from `dir`, if any.
    pub(crate) fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("snapshot.json");
        let (sm, snapshot) = match std::fs::read(&path) {
            Ok(b) => {
                let snap: SnapshotFile = serde_json::from_slice(&b).map_err(|e| {
                    std::io::Error::other(format!("damaged {}: {e}", path.display()))
                })?;
                let sm: Stored = serde_json::from_slice(&snap.data).map_err(|e| {
                    std::io::Error::other(format!("damaged {}: {e}", path.display()))
                })?;
                (sm, Some(snap))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Stored::default(), None),
            Err(e) => return Err(e),
        };
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                path,
                sm,
                snapshot,
                snapshots_built: 0,
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the current state (for route queries and `cluster list`).
    pub(crate) fn state(&self) -> ClusterState {
        self.lock().sm.state.clone()
    }

    async fn save(&self, snap: SnapshotFile) -> Result<(), StorageError<NodeId>> {
        let path = self.lock().path.clone();
        let bytes = serde_json::to_vec(&snap).map_err(sm_err)?;
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
            .await
            .map_err(sm_err)?
            .map_err(sm_err)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (snap, data) = {
            let mut g = self.lock();
            let data = serde_json::to_vec(&g.sm).map_err(sm_err)?;
            g.snapshots_built += 1;
            let id = match g.sm.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, g.snapshots_built),
                None => format!("none-{}", g.snapshots_built),
            };
            let meta = SnapshotMeta {
                last_log_id: g.sm.last_applied,
                last_membership: g.sm.membership.clone(),
                snapshot_id: id,
            };
            (
                SnapshotFile {
                    meta,
                    data: data.clone(),
                },
                data,
            )
        };
        self.save(snap.clone()).await?;
        let meta = snap.meta.clone();
        self.lock().snapshot = Some(snap);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let g = self.lock();
        Ok((g.sm.last_applied, g.sm.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut g = self.lock();
        let mut out = Vec::new();
        for e in entries {
            g.sm.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => out.push(Reply::Ok),
                EntryPayload::Normal(cmd) => out.push(g.sm.state.apply(&cmd)),
                EntryPayload::Membership(m) => {
                    g.sm.membership = StoredMembership::new(Some(e.log_id), m);
                    out.push(Reply::Ok);
                }
            }
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let sm: Stored = serde_json::from_slice(&data).map_err(sm_err)?;
        let file = SnapshotFile {
            meta: meta.clone(),
            data,
        };
        self.save(file.clone()).await?;
        let mut g = self.lock();
        g.sm = Stored {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            state: sm.state,
        };
        g.snapshot = Some(file);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.lock().snapshot.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}
