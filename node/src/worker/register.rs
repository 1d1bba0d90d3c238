//! Announces this peer's engine as a worker in the replicated state.

use std::sync::Arc;
use std::time::Duration;

use stator_raft::model::{Command, WorkerId, WorkerInfo};
use stator_raft::RaftNode;
use tracing::{debug, info};

use crate::cluster::Health;

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("could not register worker {id} within {after:?}: {last}")]
    TimedOut {
        id: WorkerId,
        after: Duration,
        last: String,
    },
}

/// Commits `UpsertWorker` once this peer is healthy, retrying until `deadline` has passed.
pub async fn register_worker(
    raft: Arc<RaftNode>,
    health: Arc<Health>,
    id: WorkerId,
    info: WorkerInfo,
    deadline: Duration,
) -> Result<(), RegisterError> {
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        let last = match health.check(&raft) {
            Err(why) => why,
            Ok(()) => {
                let cmd = Command::UpsertWorker {
                    id,
                    info: info.clone(),
                };
                match raft.write(vec![cmd]).await {
                    Ok(outcome) => match outcome.results.first() {
                        Some(Ok(_)) => {
                            info!(worker = %id, role = ?info.role, model = %info.model, "worker registered");
                            return Ok(());
                        }
                        Some(Err(e)) => e.to_string(),
                        None => "the write returned no result".into(),
                    },
                    Err(e) => e.to_string(),
                }
            }
        };
        if tokio::time::Instant::now() >= give_up {
            return Err(RegisterError::TimedOut {
                id,
                after: deadline,
                last,
            });
        }
        debug!(worker = %id, reason = %last, "worker registration not yet possible");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
