//! `/health`: ready once a leader is known and this peer has applied the log up to the leader's
//! commit index as of its start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stator_raft::RaftNode;
use tokio::sync::watch;
use tracing::{debug, info};

use super::load::LoadBoard;
use super::ClusterConfig;

/// What the cluster duties share with the rest of the peer: readiness, and the load board (the
/// worker plugs its engine's stats in, the frontend reads the leader's load table).
#[derive(Default, Debug)]
pub struct Health {
    caught_up: AtomicBool,
    load: LoadBoard,
}

impl Health {
    pub fn load(&self) -> &LoadBoard {
        &self.load
    }

    /// `Ok` when healthy, else the reason.
    pub fn check(&self, raft: &RaftNode) -> Result<(), String> {
        if raft.leader().is_none() {
            return Err("no Raft leader known yet".into());
        }
        if !self.caught_up.load(Ordering::Acquire) {
            let applied = raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
            return Err(format!(
                "catching up with the leader's log (applied index {applied})"
            ));
        }
        Ok(())
    }
}

/// Waits until a read barrier through the leader succeeds: then everything the leader had
/// committed when this peer started is applied here.
pub(super) async fn track(
    raft: Arc<RaftNode>,
    _cfg: ClusterConfig,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if raft.leader().is_some() {
            match tokio::time::timeout(Duration::from_secs(2), raft.linearizable_barrier()).await {
                Ok(Ok(index)) => {
                    health.caught_up.store(true, Ordering::Release);
                    info!(applied = index, "caught up with the cluster log");
                    return;
                }
                Ok(Err(e)) => debug!(error = %e, "read barrier failed; retrying"),
                Err(_) => debug!("read barrier timed out; retrying"),
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}
