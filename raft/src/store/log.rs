//! The Raft log in sled: entries keyed by big-endian index; vote, committed and last-purged in
//! a small metadata tree.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, LogId, OptionalSend, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote,
};
use std::sync::mpsc as std_mpsc;

use super::codec::{decode, encode, index_key};
use crate::types::{NodeId, TypeConfig};

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const LAST_PURGED_KEY: &[u8] = b"last_purged";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// Cheap to clone: clones share the same sled trees (and serve as the log reader).
#[derive(Clone)]
pub struct SledLogStore {
    log: sled::Tree,
    meta: sled::Tree,
    flusher: Option<std_mpsc::Sender<LogFlushed<TypeConfig>>>,
    /// Latest committed index openraft reported, for metrics (openraft's metrics lack it).
    committed_index: Arc<AtomicU64>,
}

impl SledLogStore {
    pub(crate) fn new(log: sled::Tree, meta: sled::Tree) -> Self {
        Self {
            log,
            meta,
            flusher: None,
            committed_index: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Live view of the committed log index (0 before anything is committed).
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed_index.clone()
    }

    /// Number of entries currently kept (after purges); used to check that snapshots bound
    /// the log.
    pub fn len(&self) -> usize {
        self.log.len()
    }

    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        err: fn(&dyn std::error::Error) -> StorageIOError<NodeId>,
    ) -> StorageResult<Option<T>> {
        let Some(bytes) = self.meta.get(key).map_err(|e| err(&e))? else {
            return Ok(None);
        };
        decode(&bytes).map(Some).map_err(|e| err(&e).into())
    }

    fn write_meta<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
        err: fn(&dyn std::error::Error) -> StorageIOError<NodeId>,
    ) -> StorageResult<()> {
        let bytes = encode(value).map_err(|e| err(&e))?;
        self.meta.insert(key, bytes).map_err(|e| err(&e))?;
        Ok(())
    }

    fn last_entry_log_id(&self) -> StorageResult<Option<LogId<NodeId>>> {
        let Some((_, bytes)) = self.log.last().map_err(|e| read_logs(&e))? else {
            return Ok(None);
        };
        let entry: Entry<TypeConfig> = decode(&bytes).map_err(|e| read_logs(&e))?;
        Ok(Some(*entry.get_log_id()))
    }

    async fn flush(&self) -> io::Result<()> {
        self.log
            .flush_async()
            .await
            .map(|_| ())
            .map_err(io::Error::other)
    }

    /// Hands `callback` to the group-commit flusher thread, starting it if needed; falls back
    /// to an inline flush when the thread cannot be started or has gone.
    async fn complete_after_flush(&mut self, callback: LogFlushed<TypeConfig>) {
        if self.flusher.is_none() {
            let (tx, rx) = std_mpsc::channel();
            let log = self.log.clone();
            let started = std::thread::Builder::new()
                .name("raft-log-flush".to_owned())
                .spawn(move || run_flusher(log, rx));
            match started {
                Ok(_) => self.flusher = Some(tx),
                Err(e) => tracing::warn!(error = %e, "cannot start the raft log flusher thread"),
            }
        }
        let callback = match &self.flusher {
            Some(sender) => match sender.send(callback) {
                Ok(()) => return,
                Err(std_mpsc::SendError(callback)) => callback,
            },
            None => callback,
        };
        self.flusher = None;
        callback.log_io_completed(self.flush().await);
    }
}

/// Group commit on a thread of its own: one blocking `flush` covers every append queued while
/// the previous flush ran. Callbacks complete strictly in append order and only once the data
/// is durable. A plain thread, not sled's `flush_async`: that one hands each flush to sled's
/// I/O pool, whose every submission wakes all of its idle threads (seven per process), and
/// on a small machine those wake-ups cost more than the flush itself.
fn run_flusher(log: sled::Tree, pending: std_mpsc::Receiver<LogFlushed<TypeConfig>>) {
    let mut group = Vec::new();
    while let Ok(first) = pending.recv() {
        group.push(first);
        while let Ok(more) = pending.try_recv() {
            group.push(more);
        }
        let result = log.flush().map(|_| ());
        for callback in group.drain(..) {
            let result = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::other(e.to_string())),
            };
            callback.log_io_completed(result);
        }
    }
}

fn read_logs(e: &dyn std::error::Error) -> StorageIOError<NodeId> {
    StorageIOError::read_logs(openraft::AnyError::error(e.to_string()))
}

fn write_logs(e: &dyn std::error::Error) -> StorageIOError<NodeId> {
    StorageIOError::write_logs(openraft::AnyError::error(e.to_string()))
}

fn read_vote(e: &dyn std::error::Error) -> StorageIOError<NodeId> {
    StorageIOError::read_vote(openraft::AnyError::error(e.to_string()))
}

fn write_vote(e: &dyn std::error::Error) -> StorageIOError<NodeId> {
    StorageIOError::write_vote(openraft::AnyError::error(e.to_string()))
}

fn bound_to_start(bound: Bound<&u64>) -> Option<u64> {
    match bound {
        Bound::Included(i) => Some(*i),
        Bound::Excluded(i) => i.checked_add(1),
        Bound::Unbounded => Some(0),
    }
}

impl RaftLogReader<TypeConfig> for SledLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let Some(start) = bound_to_start(range.start_bound()) else {
            return Ok(Vec::new());
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut entries = Vec::new();
        for item in self.log.range((Bound::Included(index_key(start)), end)) {
            let (_, bytes) = item.map_err(|e| read_logs(&e))?;
            entries.push(decode(&bytes).map_err(|e| read_logs(&e))?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for SledLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> =
            self.read_meta(LAST_PURGED_KEY, read_logs)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        Self {
            flusher: None,
            ..self.clone()
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.write_meta(VOTE_KEY, vote, write_vote)?;
        // A vote must survive a crash before we answer the candidate.
        self.flush().await.map_err(|e| write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.read_meta(VOTE_KEY, read_vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        if let Some(id) = committed {
            self.committed_index.store(id.index, Ordering::Relaxed);
        }
        // Not flushed: a stale committed id only means re-applying less on restart.
        self.write_meta(COMMITTED_KEY, &committed, write_logs)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(COMMITTED_KEY, read_logs)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = encode(&entry).map_err(|e| write_logs(&e))?;
            batch.insert(&index_key(entry.get_log_id().index), bytes);
        }
        self.log.apply_batch(batch).map_err(|e| write_logs(&e))?;
        self.complete_after_flush(callback).await;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut batch = sled::Batch::default();
        for key in self.log.range(index_key(log_id.index)..).keys() {
            batch.remove(key.map_err(|e| write_logs(&e))?);
        }
        self.log.apply_batch(batch).map_err(|e| write_logs(&e))?;
        // Truncated entries must not come back after a crash, or a stale suffix could be
        // mistaken for the leader's.
        self.flush().await.map_err(|e| write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // Record the purge point first: a crash in between leaves extra entries, never a gap
        // that get_log_state could not explain.
        self.write_meta(LAST_PURGED_KEY, &log_id, write_logs)?;
        let mut batch = sled::Batch::default();
        for key in self.log.range(..=index_key(log_id.index)).keys() {
            batch.remove(key.map_err(|e| write_logs(&e))?);
        }
        self.log.apply_batch(batch).map_err(|e| write_logs(&e))?;
        Ok(())
    }
}
