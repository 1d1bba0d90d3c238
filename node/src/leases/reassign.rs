//! The leader's reassignment of a dead peer's leases, committed in the same entry as its `Down`.

use std::collections::BTreeMap;

use stator_raft::model::{ClusterState, Command, NodeStatus, WorkerId, WorkerRole, WorkerState};

/// Commands moving every lease owned by a worker of `dead` to a live decode-capable worker,
/// chosen by load (`load`: active blocks per worker, as last reported). Leases are spread:
/// each assignment adds an estimate to the chosen worker's load. Leases with no live target
/// stay where they are (the frontend fails them after its deadline).
pub fn reassign_leases(state: &ClusterState, dead: u64, load: &BTreeMap<WorkerId, u32>) -> Vec<Command> {
    let mut targets: Vec<(WorkerId, u64)> = state
        .workers
        .iter()
        .filter(|(id, w)| {
            id.node != dead
                && w.state == WorkerState::Active
                && matches!(w.role, WorkerRole::Decode | WorkerRole::Aggregated)
                && state.nodes.get(&id.node).is_some_and(|n| n.status == NodeStatus::Up)
        })
        .map(|(id, _)| (*id, load.get(id).copied().unwrap_or(0) as u64))
        .collect();
    if targets.is_empty() {
        return Vec::new();
    }
    // A resumed request re-prefills its prompt: weigh each one like a few dozen blocks.
    const PER_LEASE: u64 = 32;
    let mut out = Vec::new();
    for (request_id, lease) in &state.leases {
        if lease.owner.node != dead {
            continue;
        }
        let Some(best) = targets.iter_mut().min_by_key(|(id, l)| (*l, *id)) else { break };
        best.1 += PER_LEASE;
        out.push(Command::ReassignLease {
            request_id: request_id.clone(),
            new_owner: best.0,
            expected_epoch: lease.epoch,
        });
    }
    out
}
