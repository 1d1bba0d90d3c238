//! Publishes Raft metrics through the `metrics` facade when openraft's metrics change, at
//! most once per [`EXPORT_INTERVAL`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::RaftMetrics;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::types::{NodeId, PeerAddr};

/// openraft's metrics change several times per log entry; following each change woke this
/// task (and often a sleeping thread) thousands of times a second under load. A scrape sees
/// values at most this old.
const EXPORT_INTERVAL: Duration = Duration::from_millis(20);

/// Ends when the Raft instance is dropped (its metrics channel closes).
pub(crate) fn spawn_exporter(
    mut metrics: watch::Receiver<RaftMetrics<NodeId, PeerAddr>>,
    committed_index: Arc<AtomicU64>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_leader: Option<NodeId> = None;
        loop {
            {
                let m = metrics.borrow_and_update();
                export(&m, &committed_index, &mut last_leader);
            }
            tokio::time::sleep(EXPORT_INTERVAL).await;
            if metrics.changed().await.is_err() {
                break;
            }
        }
    })
}

fn export(
    m: &RaftMetrics<NodeId, PeerAddr>,
    committed_index: &AtomicU64,
    last_leader: &mut Option<NodeId>,
) {
    metrics::gauge!("stator_raft_term").set(m.current_term as f64);
    metrics::gauge!("stator_raft_commit_index").set(committed_index.load(Ordering::Relaxed) as f64);
    metrics::gauge!("stator_raft_applied_index")
        .set(m.last_applied.map(|id| id.index).unwrap_or(0) as f64);
    metrics::gauge!("stator_raft_last_log_index").set(m.last_log_index.unwrap_or(0) as f64);
    metrics::gauge!("stator_raft_snapshot_index")
        .set(m.snapshot.map(|id| id.index).unwrap_or(0) as f64);
    metrics::gauge!("stator_raft_purged_index")
        .set(m.purged.map(|id| id.index).unwrap_or(0) as f64);
    let is_leader = m.current_leader == Some(m.id);
    metrics::gauge!("stator_raft_is_leader").set(if is_leader { 1.0 } else { 0.0 });
    // Node ids are random u64s that an f64 gauge value cannot hold exactly, so the leader is a
    // label: the current leader's series is 1, a former leader's is set back to 0.
    if *last_leader != m.current_leader {
        if let Some(old) = last_leader.take() {
            metrics::gauge!("stator_raft_leader_id", "leader" => old.to_string()).set(0.0);
        }
        if let Some(new) = m.current_leader {
            metrics::gauge!("stator_raft_leader_id", "leader" => new.to_string()).set(1.0);
        }
        *last_leader = m.current_leader;
    }
}
