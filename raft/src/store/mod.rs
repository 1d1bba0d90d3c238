//! Durable Raft storage on one sled database per data dir: the log store and the state
//! machine share it (and its flushes), each in its own trees.

// Helpers return openraft's `StorageError` (what the storage traits require); its size is
// openraft's choice, not ours.
#![allow(clippy::result_large_err)]

mod codec;
mod flusher;
mod log;
mod state_machine;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::{Duration, Instant};

pub use log::SledLogStore;
pub use state_machine::{SledSnapshotBuilder, SledStateMachine};

use crate::error::RaftError;

/// sled's page cache; the cluster state is small, so a modest cache keeps memory flat.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// How long to wait for a previous holder of the same directory (a node of this process that
/// is still shutting down) to let go of sled's lock.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Opens (or creates) the Raft database under `dir`. Open it once per process and hand it to
/// [`open_stores`]: sled locks the directory.
pub async fn open_db(dir: &Path) -> Result<sled::Db, RaftError> {
    std::fs::create_dir_all(dir).map_err(|source| RaftError::DataDir {
        path: dir.to_owned(),
        source: source.into(),
    })?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .open();
        match opened {
            Ok(db) => return Ok(db),
            Err(e) if is_lock_conflict(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(RaftError::Storage(format!(
                    "opening sled db in {}: {e}",
                    dir.display()
                )))
            }
        }
    }
}

fn is_lock_conflict(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// The log store and state machine over `db`.
pub fn open_stores(db: &sled::Db) -> Result<(SledLogStore, SledStateMachine), RaftError> {
    let tree = |name: &str| {
        db.open_tree(name)
            .map_err(|e| RaftError::Storage(format!("opening sled tree {name}: {e}")))
    };
    let log_store = SledLogStore::new(tree("raft_log")?, tree("raft_meta")?)
        .map_err(|e| RaftError::Storage(format!("starting the log flusher: {e}")))?;
    // Data dirs written before snapshots became the only durable image also hold a copy of the
    // whole state in this tree; nothing reads it any more.
    db.drop_tree("state_machine")
        .map_err(|e| RaftError::Storage(format!("dropping the old state tree: {e}")))?;
    let state_machine =
        SledStateMachine::open(tree("snapshot")?).map_err(|e| RaftError::Storage(e.to_string()))?;
    Ok((log_store, state_machine))
}
