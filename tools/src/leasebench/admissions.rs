//! Closed-loop lease admissions, as frontends make them: each in-flight request commits a
//! `GrantLease` through its own peer's `RaftNode::write` (coalesced by that peer's batching
//! writer, forwarded to the leader when the peer follows), then releases it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use stator_raft::model::{Applied, Command};

use super::raft_cluster::{wall_ms, worker_of, RaftCluster};
use crate::clusterbench::figures::Completion;

/// What one level of concurrency produced.
pub struct AdmissionRun {
    pub grants: Vec<Completion>,
    pub releases: Vec<Completion>,
    /// Distinct log indexes that carried the acknowledged grants and releases.
    pub log_entries: usize,
    /// Grant or release answers that were not what a frontend expects, first few kept.
    pub refusals: Vec<String>,
}

const KEPT_REFUSALS: usize = 5;

struct Lane {
    grants: Vec<Completion>,
    releases: Vec<Completion>,
    indexes: BTreeSet<u64>,
    refusals: Vec<String>,
}

/// Runs `in_flight` requests for `duration`; request `i` is admitted through peer `i % 3` and
/// leased to worker `(i + 1) % 3`, so grants cross peers like routed requests do.
pub async fn closed_loop(
    cluster: Arc<RaftCluster>,
    in_flight: usize,
    duration: Duration,
    level_tag: &str,
) -> AdmissionRun {
    let start = Instant::now();
    let peers = cluster.peers.len();
    let lanes = (0..in_flight).map(|lane| {
        let cluster = cluster.clone();
        async move {
            let peer = &cluster.peers[lane % peers];
            let owner = worker_of(cluster.peers[(lane + 1) % peers].id);
            let mut out = Lane {
                grants: Vec::new(),
                releases: Vec::new(),
                indexes: BTreeSet::new(),
                refusals: Vec::new(),
            };
            let mut sequence = 0u64;
            while start.elapsed() < duration {
                sequence += 1;
                let request_id = format!("{level_tag}/{lane}/{sequence}");
                let sent = Instant::now();
                let granted = peer
                    .node
                    .write(vec![Command::GrantLease {
                        request_id: request_id.clone(),
                        owner,
                        frontend: peer.id,
                        at_ms: wall_ms(),
                    }])
                    .await;
                let epoch = match granted {
                    Ok(outcome) => match outcome.results.first() {
                        Some(Ok(Applied::LeaseGranted { epoch })) => {
                            out.indexes.insert(outcome.index);
                            Some(*epoch)
                        }
                        other => {
                            note(&mut out.refusals, format!("grant answered {other:?}"));
                            None
                        }
                    },
                    Err(e) => {
                        note(&mut out.refusals, format!("grant failed: {e}"));
                        None
                    }
                };
                out.grants.push(completion(start, sent, epoch.is_some()));
                let Some(epoch) = epoch else {
                    // A refusing cluster must not turn this lane into a busy loop.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                };
                let sent = Instant::now();
                let released = peer
                    .node
                    .write(vec![Command::ReleaseLease { request_id, epoch }])
                    .await;
                let ok = match released {
                    Ok(outcome) => match outcome.results.first() {
                        Some(Ok(Applied::LeaseReleased)) => {
                            out.indexes.insert(outcome.index);
                            true
                        }
                        other => {
                            note(&mut out.refusals, format!("release answered {other:?}"));
                            false
                        }
                    },
                    Err(e) => {
                        note(&mut out.refusals, format!("release failed: {e}"));
                        false
                    }
                };
                out.releases.push(completion(start, sent, ok));
            }
            out
        }
    });
    let mut run = AdmissionRun {
        grants: Vec::new(),
        releases: Vec::new(),
        log_entries: 0,
        refusals: Vec::new(),
    };
    let mut indexes = BTreeSet::new();
    for lane in join_all(lanes).await {
        run.grants.extend(lane.grants);
        run.releases.extend(lane.releases);
        indexes.extend(lane.indexes);
        for refusal in lane.refusals {
            note(&mut run.refusals, refusal);
        }
    }
    run.log_entries = indexes.len();
    run
}

fn completion(start: Instant, sent: Instant, ok: bool) -> Completion {
    let finished = Instant::now();
    Completion {
        end_s: finished.duration_since(start).as_secs_f64(),
        latency_ms: finished.duration_since(sent).as_secs_f64() * 1e3,
        ok,
    }
}

fn note(kept: &mut Vec<String>, refusal: String) {
    if kept.len() < KEPT_REFUSALS {
        kept.push(refusal);
    }
}
