//! Role changes without losing a request. [`request_role_change`] (admin API, planner) commits
//! `ChangeWorkerRole`: the worker turns `Draining` and routers stop sending it requests. The
//! worker's drain task ([`run`]) then waits until its engine is idle, or past the drain timeout
//! moves the leases it still holds to other workers (their frontends resume there, token-exact),
//! and commits `FinishRoleChange`. Each step is decided by [`drain_step`], a plain function of
//! the replicated state, the engine's load and the time, so a restart mid-drain simply decides
//! again from where the cluster stands.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use stator_gpu::engine::{EngineHandle, EngineStats};
use stator_raft::model::{Applied, ClusterState, Command, CommandError, WorkerId, WorkerRole};
use stator_raft::RaftNode;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::util::wall_ms;

/// How often a draining worker looks at its engine again (the engine's load has no watch).
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// Why a role change was not started.
#[derive(Debug, thiserror::Error)]
pub enum RoleChangeError {
    /// The cluster refused it (unknown worker, ...): nothing changed.
    #[error(transparent)]
    Refused(#[from] CommandError),
    /// It could not be committed (no quorum, shutting down): it may or may not have applied.
    #[error("the role change could not be committed: {0}")]
    NotCommitted(String),
}

/// Asks `worker` to switch to `role` after draining; the one entry point for operators and the
/// planner. Returns what the cluster did: `RoleChangePending` (draining now),
/// `RoleAlreadySet` (a no-op), `RoleChangeCancelled` or `RoleChanged` (an `Off` worker).
pub async fn request_role_change(
    raft: &RaftNode,
    worker: WorkerId,
    role: WorkerRole,
) -> Result<Applied, RoleChangeError> {
    let cmd = Command::ChangeWorkerRole {
        id: worker,
        role,
        at_ms: wall_ms(),
    };
    let outcome = raft
        .write(vec![cmd])
        .await
        .map_err(|e| RoleChangeError::NotCommitted(e.to_string()))?;
    let applied =
        outcome.results.into_iter().next().ok_or_else(|| {
            RoleChangeError::NotCommitted("the write returned no result".into())
        })??;
    info!(%worker, ?role, outcome = ?applied, "role change requested");
    Ok(applied)
}

/// A lease the draining worker hands over: compare-and-set on `expected_epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseMove {
    pub request_id: String,
    pub expected_epoch: u64,
    pub new_owner: WorkerId,
}

/// What a worker does next about its role change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrainStep {
    /// No role change is pending for it.
    Idle,
    /// Requests still run here and the drain timeout has not passed.
    Wait,
    /// Past the timeout: hand these leases to other workers, then look again.
    MoveLeases(Vec<LeaseMove>),
    /// Drained (or nothing left that could move): commit the switch to this role.
    Finish(WorkerRole),
}

/// Decides the next drain step of worker `me` at wall-clock `now_ms`.
pub fn drain_step(
    state: &ClusterState,
    me: WorkerId,
    engine: &EngineStats,
    now_ms: u64,
    timeout: Duration,
) -> DrainStep {
    let Some(pending) = state.pending_roles.get(&me) else {
        return DrainStep::Idle;
    };
    let held: Vec<(&String, u64)> = state
        .leases_of(me)
        .map(|(id, lease)| (id, lease.epoch))
        .collect();
    let engine_idle = engine.waiting == 0 && engine.running == 0;
    if engine_idle && held.is_empty() {
        return DrainStep::Finish(pending.role);
    }
    let deadline_ms = pending
        .requested_at_ms
        .saturating_add(timeout.as_millis() as u64);
    if now_ms < deadline_ms {
        return DrainStep::Wait;
    }
    // Sequences left in the engine without a lease are being cancelled: nothing to wait for.
    if held.is_empty() {
        return DrainStep::Finish(pending.role);
    }
    let mut load: BTreeMap<WorkerId, usize> = state
        .decode_capable_workers()
        .filter(|(id, _)| **id != me)
        .map(|(id, _)| (*id, state.leases_of(*id).count()))
        .collect();
    if load.is_empty() {
        // Nowhere to go: the requests finish here, under the new role.
        return DrainStep::Finish(pending.role);
    }
    let moves = held
        .into_iter()
        .filter_map(|(request_id, epoch)| {
            let (target, count) = load.iter_mut().min_by_key(|(id, n)| (**n, **id))?;
            *count += 1;
            Some(LeaseMove {
                request_id: request_id.clone(),
                expected_epoch: epoch,
                new_owner: *target,
            })
        })
        .collect();
    DrainStep::MoveLeases(moves)
}

/// The drain task of worker `me`.
pub struct Drain {
    pub raft: Arc<RaftNode>,
    pub engine: EngineHandle,
    pub me: WorkerId,
    /// How long requests may finish here before their leases are moved.
    pub timeout: Duration,
}

/// Runs until shutdown: carries out every role change the cluster asks of this worker.
pub async fn run(drain: Drain, mut shutdown: watch::Receiver<bool>) {
    let mut state = drain.raft.state();
    loop {
        let step = drain_step(
            &state.borrow_and_update(),
            drain.me,
            &drain.engine.stats(),
            wall_ms(),
            drain.timeout,
        );
        let poll_again = match step {
            DrainStep::Idle => false,
            DrainStep::Wait => true,
            DrainStep::MoveLeases(moves) => {
                drain.move_leases(moves).await;
                true
            }
            DrainStep::Finish(role) => !drain.finish(role).await,
        };
        let poll = async {
            if poll_again {
                tokio::time::sleep(DRAIN_POLL).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            changed = state.changed() => if changed.is_err() { return },
            _ = poll => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

impl Drain {
    async fn move_leases(&self, moves: Vec<LeaseMove>) {
        let count = moves.len();
        let cmds = moves
            .iter()
            .map(|m| Command::ReassignLease {
                request_id: m.request_id.clone(),
                new_owner: m.new_owner,
                expected_epoch: m.expected_epoch,
            })
            .collect();
        info!(worker = %self.me, leases = count, timeout = ?self.timeout, "drain timed out; moving the remaining requests");
        match self.raft.write(cmds).await {
            Ok(outcome) => {
                for (m, result) in moves.iter().zip(outcome.results) {
                    match result {
                        Ok(_) => {
                            metrics::counter!("stator_worker_drain_lease_moves_total").increment(1);
                        }
                        // Its frontend or the leader moved it first, or it ended: fine.
                        Err(e) => {
                            debug!(request = %m.request_id, error = %e, "lease not moved by the drain")
                        }
                    }
                }
            }
            Err(e) => {
                warn!(worker = %self.me, error = %e, "could not move the draining worker's leases")
            }
        }
    }

    /// Commits the switch; false when it must be tried again.
    async fn finish(&self, role: WorkerRole) -> bool {
        let cmd = Command::FinishRoleChange { id: self.me, role };
        match self.raft.write(vec![cmd]).await {
            Ok(outcome) => match outcome.results.into_iter().next() {
                Some(Ok(_)) => {
                    metrics::counter!("stator_worker_role_changes_total").increment(1);
                    info!(worker = %self.me, ?role, "drained; role changed");
                    true
                }
                // Retargeted or cancelled meanwhile: the state change wakes the loop.
                Some(Err(e)) => {
                    debug!(worker = %self.me, error = %e, "role change not finished");
                    true
                }
                None => false,
            },
            Err(e) => {
                warn!(worker = %self.me, error = %e, "could not commit the role change; retrying");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stator_raft::model::{Lease, NodeInfo, NodeStatus, WorkerInfo, WorkerState};

    const ME: WorkerId = WorkerId { node: 1, slot: 0 };
    const OTHER: WorkerId = WorkerId { node: 2, slot: 0 };
    const THIRD: WorkerId = WorkerId { node: 3, slot: 0 };
    const TIMEOUT: Duration = Duration::from_secs(30);

    fn cluster() -> ClusterState {
        let mut s = ClusterState::default();
        for w in [ME, OTHER, THIRD] {
            s.nodes.insert(
                w.node,
                NodeInfo {
                    quic_addr: "127.0.0.1:1".into(),
                    http_addr: "127.0.0.1:2".into(),
                    labels: Default::default(),
                    gpus: vec![],
                    status: NodeStatus::Up,
                    status_since_ms: 0,
                    joined_at_ms: 0,
                },
            );
            s.workers.insert(
                w,
                WorkerInfo {
                    role: WorkerRole::Aggregated,
                    state: WorkerState::Active,
                    model: "m".into(),
                    kv_blocks_total: 64,
                    device: "cpu".into(),
                },
            );
        }
        s
    }

    fn draining_to(mut s: ClusterState, role: WorkerRole, at_ms: u64) -> ClusterState {
        s.apply(&Command::ChangeWorkerRole {
            id: ME,
            role,
            at_ms,
        })
        .unwrap();
        s
    }

    fn lease(s: &mut ClusterState, request: &str, owner: WorkerId, epoch: u64) {
        s.leases.insert(
            request.into(),
            Lease {
                owner,
                epoch,
                frontend: 9,
                granted_at_ms: 0,
            },
        );
    }

    fn busy(running: usize) -> EngineStats {
        EngineStats {
            running,
            ..EngineStats::default()
        }
    }

    #[test]
    fn without_a_pending_change_nothing_happens() {
        assert_eq!(
            drain_step(&cluster(), ME, &busy(3), 1_000_000, TIMEOUT),
            DrainStep::Idle
        );
    }

    #[test]
    fn an_idle_worker_switches_at_once() {
        let s = draining_to(cluster(), WorkerRole::Prefill, 1000);
        assert_eq!(
            drain_step(&s, ME, &busy(0), 1001, TIMEOUT),
            DrainStep::Finish(WorkerRole::Prefill)
        );
    }

    #[test]
    fn a_busy_worker_waits_until_the_timeout() {
        let mut s = draining_to(cluster(), WorkerRole::Decode, 1000);
        lease(&mut s, "a", ME, 1);
        assert_eq!(
            drain_step(&s, ME, &busy(1), 30_999, TIMEOUT),
            DrainStep::Wait
        );
        // A lease without a running sequence (its stream is about to start) still counts.
        assert_eq!(drain_step(&s, ME, &busy(0), 2000, TIMEOUT), DrainStep::Wait);
        // Queued work counts too.
        let queued = EngineStats {
            waiting: 1,
            ..EngineStats::default()
        };
        s.leases.clear();
        assert_eq!(drain_step(&s, ME, &queued, 2000, TIMEOUT), DrainStep::Wait);
    }

    #[test]
    fn past_the_timeout_leases_move_to_the_least_loaded_active_workers() {
        let mut s = draining_to(cluster(), WorkerRole::Prefill, 1000);
        lease(&mut s, "a", ME, 1);
        lease(&mut s, "b", ME, 4);
        lease(&mut s, "c", ME, 2);
        lease(&mut s, "x", OTHER, 1);
        let DrainStep::MoveLeases(moves) = drain_step(&s, ME, &busy(3), 31_000, TIMEOUT) else {
            panic!("expected lease moves");
        };
        let targets: Vec<(&str, u64, WorkerId)> = moves
            .iter()
            .map(|m| (m.request_id.as_str(), m.expected_epoch, m.new_owner))
            .collect();
        assert_eq!(
            targets,
            vec![("a", 1, THIRD), ("b", 4, OTHER), ("c", 2, THIRD)],
            "each lease goes where the fewest are, at its current epoch"
        );
    }

    #[test]
    fn leases_never_move_to_draining_prefill_or_down_workers() {
        let mut s = draining_to(cluster(), WorkerRole::Prefill, 1000);
        lease(&mut s, "a", ME, 1);
        s.workers.get_mut(&OTHER).unwrap().role = WorkerRole::Prefill;
        s.nodes.get_mut(&THIRD.node).unwrap().status = NodeStatus::Down;
        // Nowhere to go: the request finishes here rather than being dropped.
        assert_eq!(
            drain_step(&s, ME, &busy(1), 31_000, TIMEOUT),
            DrainStep::Finish(WorkerRole::Prefill)
        );
        s.workers.get_mut(&OTHER).unwrap().role = WorkerRole::Decode;
        s.workers.get_mut(&OTHER).unwrap().state = WorkerState::Draining;
        assert_eq!(
            drain_step(&s, ME, &busy(1), 31_000, TIMEOUT),
            DrainStep::Finish(WorkerRole::Prefill)
        );
    }

    #[test]
    fn once_the_leases_moved_the_switch_does_not_wait_for_cancelled_sequences() {
        let s = draining_to(cluster(), WorkerRole::Decode, 1000);
        assert_eq!(
            drain_step(&s, ME, &busy(2), 31_000, TIMEOUT),
            DrainStep::Finish(WorkerRole::Decode)
        );
    }
}
