//! The leader's reassignment of a dead peer's leases, committed in the same entry as its `Down`.

use std::collections::BTreeMap;

use stator_raft::model::{ClusterState, Command, WorkerId};

/// Commands moving every lease owned by a worker of `dead` to a live decode-capable worker,
/// chosen by load (`load`: active blocks per worker, as last reported). Leases are spread:
/// each assignment adds an estimate to the chosen worker's load. Leases with no live target
/// stay where they are (the frontend fails them after its deadline).
pub fn reassign_leases(
    state: &ClusterState,
    dead: u64,
    load: &BTreeMap<WorkerId, u32>,
) -> Vec<Command> {
    let mut targets: Vec<(WorkerId, u64)> = state
        .decode_capable_workers()
        .filter(|(id, _)| id.node != dead)
        .map(|(id, _)| (*id, load.get(id).copied().unwrap_or(0) as u64))
        .collect();
    if targets.is_empty() {
        return Vec::new();
    }
    // A resumed request re-prefills its prompt: weigh each one like a few dozen blocks.
    const PER_LEASE: u64 = 32;
    let mut out = Vec::new();
    for (request_id, lease) in state.leases_on_node(dead) {
        let Some(best) = targets.iter_mut().min_by_key(|(id, l)| (*l, *id)) else {
            break;
        };
        best.1 += PER_LEASE;
        out.push(Command::ReassignLease {
            request_id: request_id.clone(),
            new_owner: best.0,
            expected_epoch: lease.epoch,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use stator_raft::model::{NodeStatus, WorkerInfo, WorkerRole, WorkerState};

    fn register(state: &mut ClusterState, id: u64) {
        let r = state.apply(&Command::RegisterNode {
            id,
            quic_addr: format!("127.0.0.1:{id}"),
            http_addr: format!("127.0.0.1:{}", 8000 + id),
            labels: Default::default(),
            gpus: vec![],
            at_ms: 1,
        });
        assert!(r.is_ok());
    }

    fn worker(state: &mut ClusterState, node: u64, role: WorkerRole) -> WorkerId {
        let id = WorkerId { node, slot: 0 };
        let info = WorkerInfo {
            role,
            state: WorkerState::Active,
            model: "m".into(),
            kv_blocks_total: 100,
            device: "cpu".into(),
        };
        assert!(state.apply(&Command::UpsertWorker { id, info }).is_ok());
        id
    }

    fn cluster() -> (ClusterState, WorkerId, WorkerId, WorkerId, WorkerId) {
        let mut s = ClusterState::default();
        for n in 1..=4 {
            register(&mut s, n);
        }
        let d1 = worker(&mut s, 1, WorkerRole::Decode);
        let d2 = worker(&mut s, 2, WorkerRole::Decode);
        let d3 = worker(&mut s, 3, WorkerRole::Aggregated);
        let p4 = worker(&mut s, 4, WorkerRole::Prefill);
        (s, d1, d2, d3, p4)
    }

    #[test]
    fn leases_of_the_dead_node_move_to_live_decoders_spread_by_load() {
        let (mut s, d1, d2, d3, _p4) = cluster();
        for i in 0..4 {
            let r = s.apply(&Command::GrantLease {
                request_id: format!("r{i}"),
                owner: d1,
                frontend: 4,
                at_ms: 1,
            });
            assert!(r.is_ok());
        }
        assert!(s
            .apply(&Command::GrantLease {
                request_id: "other".into(),
                owner: d2,
                frontend: 4,
                at_ms: 1
            })
            .is_ok());
        let cmds = reassign_leases(&s, 1, &BTreeMap::from([(d2, 0), (d3, 40)]));
        assert_eq!(cmds.len(), 4, "only the dead node's leases move");
        let owners: Vec<WorkerId> = cmds
            .iter()
            .map(|c| match c {
                Command::ReassignLease {
                    new_owner,
                    expected_epoch,
                    ..
                } => {
                    assert_eq!(*expected_epoch, 1);
                    *new_owner
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert!(
            owners.contains(&d2) && owners.contains(&d3),
            "spread over both: {owners:?}"
        );
        assert!(!owners.contains(&d1));
        for c in &cmds {
            assert!(s.apply(c).is_ok());
        }
        assert!(s.leases.values().all(|l| l.owner.node != 1));
        assert!(s
            .leases
            .iter()
            .filter(|(k, _)| k.starts_with('r'))
            .all(|(_, l)| l.epoch == 2));
    }

    #[test]
    fn prefill_workers_and_down_nodes_are_never_targets() {
        let (mut s, d1, _d2, _d3, _p4) = cluster();
        assert!(s
            .apply(&Command::GrantLease {
                request_id: "r".into(),
                owner: d1,
                frontend: 4,
                at_ms: 1
            })
            .is_ok());
        for n in [2, 3] {
            assert!(s
                .apply(&Command::SetNodeStatus {
                    id: n,
                    status: NodeStatus::Down,
                    at_ms: 2
                })
                .is_ok());
        }
        assert!(
            reassign_leases(&s, 1, &BTreeMap::new()).is_empty(),
            "only the prefill worker is up"
        );
    }
}
