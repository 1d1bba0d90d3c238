//! The applied [`ClusterState`], its snapshots in sled (the only durable image of it: a restart
//! loads the newest and re-applies the log), and the watch channel through which every local
//! reader sees it.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use tokio::sync::watch;

use super::codec::{decode, encode};
use crate::model::{Batch, BatchResponse, ClusterState};
use crate::types::{NodeId, PeerAddr, TypeConfig};

const SNAPSHOT_META_KEY: &[u8] = b"meta";
const SNAPSHOT_DATA_KEY: &[u8] = b"data";

type StorageResult<T> = Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, PeerAddr>;

/// What a restart starts from: the newest snapshot (or nothing), with the log after it.
struct Restored {
    last_applied: Option<LogId<NodeId>>,
    last_membership: Membership,
    state: ClusterState,
}

pub struct SledStateMachine {
    snapshots: sled::Tree,
    last_applied: Option<LogId<NodeId>>,
    last_membership: Membership,
    state: Arc<ClusterState>,
    published: watch::Sender<Arc<ClusterState>>,
    snapshot_seq: Arc<AtomicU64>,
    /// The previously published state, taken back once no reader held it, with the batches
    /// applied since: the next apply replays those on it instead of copying the whole state.
    spare: Option<Spare>,
}

/// A private copy of the state that lags behind the published one by `behind`.
struct Spare {
    state: ClusterState,
    behind: Vec<Batch>,
}

impl SledStateMachine {
    /// Starts from the newest snapshot in `snapshots`; openraft re-applies the log after it.
    pub(crate) fn open(snapshots: sled::Tree) -> StorageResult<Self> {
        let record = stored_snapshot(&snapshots)?.unwrap_or(Restored {
            last_applied: None,
            last_membership: Membership::default(),
            state: ClusterState::default(),
        });
        let state = Arc::new(record.state);
        let (published, _) = watch::channel(state.clone());
        Ok(Self {
            snapshots,
            last_applied: record.last_applied,
            last_membership: record.last_membership,
            state,
            published,
            snapshot_seq: Arc::new(AtomicU64::new(0)),
            spare: None,
        })
    }

    /// The live state, updated after every applied chunk.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.published.subscribe()
    }

    fn publish(&self) {
        self.published.send_replace(self.state.clone());
    }

    /// A uniquely owned copy of the current state to apply new entries to. Readers share the
    /// published state, so mutating it in place would deep-copy all of it on every applied
    /// chunk (that copy and its freeing were the largest CPU cost under write load); the
    /// spare catches up by replaying the few batches it missed (`apply` is deterministic).
    fn working_copy(&mut self) -> ClusterState {
        match self.spare.take() {
            Some(Spare { mut state, behind }) => {
                for batch in &behind {
                    state.apply_batch(batch);
                }
                state
            }
            None => (*self.state).clone(),
        }
    }

    /// Publishes `state` and keeps the state it replaces as the next spare when no reader
    /// still holds it.
    fn publish_new(&mut self, state: ClusterState, applied: Vec<Batch>) {
        let state = Arc::new(state);
        let replaced = self.published.send_replace(state.clone());
        self.state = state;
        self.spare = Arc::try_unwrap(replaced).ok().map(|state| Spare {
            state,
            behind: applied,
        });
    }
}

/// The current snapshot's encoded meta and data, if there is one.
fn read_stored(snapshots: &sled::Tree) -> StorageResult<Option<(sled::IVec, sled::IVec)>> {
    let meta = snapshots
        .get(SNAPSHOT_META_KEY)
        .map_err(|e| read_snapshot(&e))?;
    let data = snapshots
        .get(SNAPSHOT_DATA_KEY)
        .map_err(|e| read_snapshot(&e))?;
    Ok(meta.zip(data))
}

/// The state stored with the current snapshot, if there is one.
fn stored_snapshot(snapshots: &sled::Tree) -> StorageResult<Option<Restored>> {
    let Some((meta, data)) = read_stored(snapshots)? else {
        return Ok(None);
    };
    let meta: SnapshotMeta<NodeId, PeerAddr> = decode(&meta).map_err(|e| read_snapshot(&e))?;
    let state: ClusterState = decode(&data).map_err(|e| read_snapshot(&e))?;
    Ok(Some(Restored {
        last_applied: meta.last_log_id,
        last_membership: meta.last_membership,
        state,
    }))
}

fn read_snapshot(e: &dyn std::error::Error) -> StorageIOError<NodeId> {
    StorageIOError::read_snapshot(None, openraft::AnyError::error(e.to_string()))
}

fn write_snapshot(e: &dyn std::error::Error) -> StorageIOError<NodeId> {
    StorageIOError::write_snapshot(None, openraft::AnyError::error(e.to_string()))
}

/// Stores `meta` + `data` as the current snapshot and makes it durable: the log may be purged
/// up to it right after.
async fn store_snapshot(
    snapshots: &sled::Tree,
    meta: &SnapshotMeta<NodeId, PeerAddr>,
    data: &[u8],
) -> StorageResult<()> {
    let meta_bytes = encode(meta).map_err(|e| write_snapshot(&e))?;
    let mut batch = sled::Batch::default();
    batch.insert(SNAPSHOT_META_KEY, meta_bytes);
    batch.insert(SNAPSHOT_DATA_KEY, data);
    snapshots
        .apply_batch(batch)
        .map_err(|e| write_snapshot(&e))?;
    snapshots
        .flush_async()
        .await
        .map_err(|e| write_snapshot(&e))?;
    Ok(())
}

/// Builds a snapshot of the state as it was when the builder was taken.
pub struct SledSnapshotBuilder {
    snapshots: sled::Tree,
    last_applied: Option<LogId<NodeId>>,
    last_membership: Membership,
    state: Arc<ClusterState>,
    snapshot_seq: Arc<AtomicU64>,
}

impl RaftSnapshotBuilder<TypeConfig> for SledSnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let data = encode(&*self.state).map_err(|e| write_snapshot(&e))?;
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match self.last_applied {
            Some(id) => format!("{}-{}-{seq}", id.leader_id, id.index),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id,
        };
        // The flush inside also makes the applied record (same db) at least this recent
        // durable, so purging the log up to this snapshot can never lose applied state.
        store_snapshot(&self.snapshots, &meta, &data).await?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "built raft snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for SledStateMachine {
    type SnapshotBuilder = SledSnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<BatchResponse>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.working_copy();
        let mut applied = Vec::new();
        let mut responses = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => BatchResponse::default(),
                EntryPayload::Normal(batch) => {
                    let response = state.apply_batch(&batch);
                    applied.push(batch);
                    response
                }
                EntryPayload::Membership(membership) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    BatchResponse::default()
                }
            };
            responses.push(response);
        }
        self.publish_new(state, applied);
        // Nothing is written here: the snapshots openraft builds every
        // `snapshot_every_entries` are the durable image, and every entry after the newest
        // one is still in the log (purging keeps `max_in_snapshot_log_to_keep` entries below
        // it), so a restart loads that snapshot and openraft re-applies the rest. Writing the
        // whole state here every 256 entries put a flush of O(state) bytes behind one write
        // in 256 on every member, which set the single writer's p99.
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SledSnapshotBuilder {
            snapshots: self.snapshots.clone(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            state: self.state.clone(),
            snapshot_seq: self.snapshot_seq.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, PeerAddr>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        // Decode before touching anything: a corrupt snapshot must leave the state as it was.
        let state: ClusterState = decode(&data).map_err(|e| read_snapshot(&e))?;
        store_snapshot(&self.snapshots, meta, &data).await?;
        self.state = Arc::new(state);
        self.spare = None;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.publish();
        tracing::info!(snapshot = %meta.snapshot_id, "installed raft snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let Some((meta, data)) = read_stored(&self.snapshots)? else {
            return Ok(None);
        };
        let meta = decode(&meta).map_err(|e| read_snapshot(&e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.to_vec())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    use super::*;
    use crate::model::Command;

    fn entry(index: u64, cmds: Vec<Command>) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Batch(cmds)),
        }
    }

    fn commands(chunk: u64) -> Vec<Command> {
        let mut cmds = vec![Command::PutMeta {
            key: format!("k{}", chunk % 7),
            value: format!("v{chunk}"),
        }];
        if chunk.is_multiple_of(3) {
            cmds.push(Command::DeleteMeta {
                key: format!("k{}", (chunk + 1) % 7),
            });
        }
        cmds
    }

    /// Readers that hold a published state or let go of it decide whether the next apply
    /// starts from the spare (replaying what it missed) or from a copy; either way every
    /// published state must equal a plain replay of the same entries, and a state a reader
    /// holds must never change under it.
    #[tokio::test]
    async fn published_states_match_a_plain_replay_whether_or_not_readers_hold_them() {
        let db = sled::Config::new().temporary(true).open().expect("db");
        let mut sm =
            SledStateMachine::open(db.open_tree("snapshot").expect("tree")).expect("state machine");
        let readers = sm.subscribe();
        let mut reference = ClusterState::default();
        let mut index = 0;
        for chunk in 0..60u64 {
            // Chunks of 1..=3 entries; every fourth chunk a reader keeps the state it saw.
            let entries: Vec<_> = (0..chunk % 3 + 1)
                .map(|_| {
                    index += 1;
                    entry(index, commands(index))
                })
                .collect();
            for e in &entries {
                if let EntryPayload::Normal(batch) = &e.payload {
                    reference.apply_batch(batch);
                }
            }
            let held = chunk.is_multiple_of(4).then(|| readers.borrow().clone());
            let before = held.as_deref().cloned();
            sm.apply(entries).await.expect("apply");
            assert_eq!(*readers.borrow().clone(), reference, "after chunk {chunk}");
            if let (Some(held), Some(before)) = (held, before) {
                assert_eq!(*held, before, "a held state changed under its reader");
            }
        }
    }
}
