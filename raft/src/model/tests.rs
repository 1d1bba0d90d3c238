use std::collections::BTreeMap;

use super::*;

const N1: u64 = 11;
const N2: u64 = 22;

fn register(id: u64, at_ms: u64) -> Command {
    Command::RegisterNode {
        id,
        quic_addr: format!("10.0.0.{id}:7400"),
        http_addr: format!("10.0.0.{id}:8000"),
        labels: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
        gpus: vec![GpuInfo {
            name: "H100".to_owned(),
            memory_bytes: 80 << 30,
        }],
        at_ms,
    }
}

fn worker(node: u64, slot: u32) -> WorkerId {
    WorkerId { node, slot }
}

fn upsert(id: WorkerId, role: WorkerRole, state: WorkerState) -> Command {
    Command::UpsertWorker {
        id,
        info: WorkerInfo {
            role,
            state,
            model: "llama".to_owned(),
            kv_blocks_total: 1024,
            device: "cpu".to_owned(),
        },
    }
}

fn grant(request_id: &str, owner: WorkerId) -> Command {
    Command::GrantLease {
        request_id: request_id.to_owned(),
        owner,
        frontend: N1,
        at_ms: 500,
    }
}

/// Two live nodes with one active decode worker each.
fn two_node_state() -> ClusterState {
    let mut s = ClusterState::default();
    for cmd in [
        register(N1, 100),
        register(N2, 100),
        upsert(worker(N1, 0), WorkerRole::Decode, WorkerState::Active),
        upsert(worker(N2, 0), WorkerRole::Decode, WorkerState::Active),
    ] {
        s.apply(&cmd).unwrap();
    }
    s
}

/// Applies `cmd`, asserts it was refused with `expected` and that the state did not change.
fn assert_refused(state: &mut ClusterState, cmd: Command, expected: CommandError) {
    let before = state.clone();
    assert_eq!(state.apply(&cmd), Err(expected));
    assert_eq!(*state, before, "a refused command must change nothing");
}

#[test]
fn register_node_is_up_and_rejoin_keeps_join_time() {
    let mut s = ClusterState::default();
    s.apply(&register(N1, 100)).unwrap();
    let n = &s.nodes[&N1];
    assert_eq!(n.status, NodeStatus::Up);
    assert_eq!((n.joined_at_ms, n.status_since_ms), (100, 100));
    assert_eq!(n.gpus[0].name, "H100");

    s.apply(&Command::SetNodeStatus {
        id: N1,
        status: NodeStatus::Down,
        at_ms: 200,
    })
    .unwrap();
    s.apply(&register(N1, 300)).unwrap();
    let n = &s.nodes[&N1];
    assert_eq!(n.status, NodeStatus::Up);
    assert_eq!((n.joined_at_ms, n.status_since_ms), (100, 300));
}

#[test]
fn register_node_rejects_empty_addresses() {
    let mut s = ClusterState::default();
    let cmd = Command::RegisterNode {
        id: N1,
        quic_addr: String::new(),
        http_addr: "x:1".to_owned(),
        labels: BTreeMap::new(),
        gpus: vec![],
        at_ms: 1,
    };
    assert!(matches!(s.apply(&cmd), Err(CommandError::Invalid(_))));
    assert!(s.nodes.is_empty());
}

#[test]
fn set_node_status_tracks_since_only_on_change() {
    let mut s = two_node_state();
    let down = |at_ms| Command::SetNodeStatus {
        id: N2,
        status: NodeStatus::Down,
        at_ms,
    };
    s.apply(&down(1000)).unwrap();
    s.apply(&down(2000)).unwrap();
    assert_eq!(s.nodes[&N2].status, NodeStatus::Down);
    assert_eq!(s.nodes[&N2].status_since_ms, 1000);
    assert_refused(
        &mut s,
        Command::SetNodeStatus {
            id: 99,
            status: NodeStatus::Up,
            at_ms: 1,
        },
        CommandError::UnknownNode(99),
    );
}

#[test]
fn remove_node_drops_workers_but_keeps_their_leases() {
    let mut s = two_node_state();
    s.apply(&upsert(
        worker(N2, 1),
        WorkerRole::Prefill,
        WorkerState::Active,
    ))
    .unwrap();
    s.apply(&grant("req-1", worker(N2, 0))).unwrap();

    s.apply(&Command::RemoveNode { id: N2, at_ms: 900 })
        .unwrap();

    assert_eq!(s.nodes[&N2].status, NodeStatus::Left);
    assert_eq!(s.nodes[&N2].status_since_ms, 900);
    assert_eq!(s.workers_of(N2).count(), 0);
    assert_eq!(s.workers_of(N1).count(), 1);
    assert_eq!(
        s.leases_on_node(N2).count(),
        1,
        "leases stay for the reassigner"
    );

    // A node that left cannot be revived by a status change, only by registering again.
    assert_refused(
        &mut s,
        Command::SetNodeStatus {
            id: N2,
            status: NodeStatus::Up,
            at_ms: 950,
        },
        CommandError::NodeLeft(N2),
    );
    assert_refused(
        &mut s,
        upsert(worker(N2, 0), WorkerRole::Decode, WorkerState::Active),
        CommandError::NodeLeft(N2),
    );
    s.apply(&register(N2, 1000)).unwrap();
    assert_eq!(s.nodes[&N2].joined_at_ms, 1000);
}

#[test]
fn join_secret_must_be_sha256_hex() {
    let mut s = ClusterState::default();
    assert_refused(
        &mut s,
        Command::SetJoinSecret {
            secret_hash: "abc".to_owned(),
        },
        CommandError::Invalid("secret_hash must be 64 hex characters (SHA-256)".to_owned()),
    );
    let hash = "AB".repeat(32);
    s.apply(&Command::SetJoinSecret { secret_hash: hash })
        .unwrap();
    assert_eq!(s.join_secret_hash, Some("ab".repeat(32)));
}

#[test]
fn cluster_id_is_set_once() {
    let mut s = ClusterState::default();
    let init = |id: &str| Command::InitCluster {
        cluster_id: id.to_owned(),
    };
    s.apply(&init("c1")).unwrap();
    s.apply(&init("c1")).unwrap();
    assert_refused(
        &mut s,
        init("c2"),
        CommandError::ClusterIdAlreadySet("c1".to_owned()),
    );
}

#[test]
fn meta_put_delete_and_limits() {
    let mut s = ClusterState::default();
    let put = |k: &str, v: &str| Command::PutMeta {
        key: k.to_owned(),
        value: v.to_owned(),
    };
    s.apply(&put("a", "1")).unwrap();
    s.apply(&put("a", "2")).unwrap();
    assert_eq!(s.meta["a"], "2");
    assert!(matches!(
        s.apply(&put("", "x")),
        Err(CommandError::Invalid(_))
    ));
    let long_key = "k".repeat(MAX_META_KEY_BYTES + 1);
    assert!(matches!(
        s.apply(&put(&long_key, "x")),
        Err(CommandError::Invalid(_))
    ));
    let long_value = "v".repeat(MAX_META_VALUE_BYTES + 1);
    assert!(matches!(
        s.apply(&put("b", &long_value)),
        Err(CommandError::Invalid(_))
    ));
    assert_eq!(s.meta.len(), 1);

    s.apply(&Command::DeleteMeta {
        key: "a".to_owned(),
    })
    .unwrap();
    assert!(s.meta.is_empty());
    assert_refused(
        &mut s,
        Command::DeleteMeta {
            key: "a".to_owned(),
        },
        CommandError::UnknownMetaKey("a".to_owned()),
    );
}

#[test]
fn worker_role_and_state_changes() {
    let mut s = two_node_state();
    let w = worker(N1, 0);
    s.apply(&Command::SetWorkerRole {
        id: w,
        role: WorkerRole::Prefill,
    })
    .unwrap();
    s.apply(&Command::SetWorkerState {
        id: w,
        state: WorkerState::Draining,
    })
    .unwrap();
    assert_eq!(s.workers[&w].role, WorkerRole::Prefill);
    assert_eq!(s.workers[&w].state, WorkerState::Draining);
    assert_refused(
        &mut s,
        Command::SetWorkerRole {
            id: worker(N1, 7),
            role: WorkerRole::Decode,
        },
        CommandError::UnknownWorker(worker(N1, 7)),
    );
    assert_refused(
        &mut s,
        upsert(worker(99, 0), WorkerRole::Decode, WorkerState::Active),
        CommandError::UnknownNode(99),
    );
}

#[test]
fn grant_lease_starts_at_epoch_one_and_refuses_duplicates() {
    let mut s = two_node_state();
    assert_eq!(
        s.apply(&grant("r", worker(N1, 0))),
        Ok(Applied::LeaseGranted { epoch: 1 })
    );
    let lease = &s.leases["r"];
    assert_eq!(
        (
            lease.owner,
            lease.epoch,
            lease.frontend,
            lease.granted_at_ms
        ),
        (worker(N1, 0), 1, N1, 500)
    );
    assert_refused(
        &mut s,
        grant("r", worker(N2, 0)),
        CommandError::LeaseExists("r".to_owned()),
    );
}

#[test]
fn grant_lease_needs_an_active_worker() {
    let mut s = two_node_state();
    assert_refused(
        &mut s,
        grant("r", worker(N1, 5)),
        CommandError::UnknownWorker(worker(N1, 5)),
    );
    s.apply(&Command::SetWorkerState {
        id: worker(N1, 0),
        state: WorkerState::Draining,
    })
    .unwrap();
    assert_refused(
        &mut s,
        grant("r", worker(N1, 0)),
        CommandError::WorkerNotActive(worker(N1, 0)),
    );
}

#[test]
fn reassign_lease_bumps_epoch_with_compare_and_set() {
    let mut s = two_node_state();
    s.apply(&grant("r", worker(N1, 0))).unwrap();
    let reassign = |expected_epoch| Command::ReassignLease {
        request_id: "r".to_owned(),
        new_owner: worker(N2, 0),
        expected_epoch,
    };
    assert_eq!(
        s.apply(&reassign(1)),
        Ok(Applied::LeaseReassigned { epoch: 2 })
    );
    assert_eq!(s.leases["r"].owner, worker(N2, 0));
    // A second reassigner racing with the first lost: it saw epoch 1.
    assert_refused(
        &mut s,
        reassign(1),
        CommandError::EpochMismatch {
            expected: 1,
            current: 2,
        },
    );
    assert_refused(
        &mut s,
        Command::ReassignLease {
            request_id: "nope".to_owned(),
            new_owner: worker(N2, 0),
            expected_epoch: 1,
        },
        CommandError::UnknownLease("nope".to_owned()),
    );
}

#[test]
fn release_with_stale_epoch_is_ignored() {
    let mut s = two_node_state();
    s.apply(&grant("r", worker(N1, 0))).unwrap();
    s.apply(&Command::ReassignLease {
        request_id: "r".to_owned(),
        new_owner: worker(N2, 0),
        expected_epoch: 1,
    })
    .unwrap();

    let release = |epoch| Command::ReleaseLease {
        request_id: "r".to_owned(),
        epoch,
    };
    let before = s.clone();
    assert_eq!(
        s.apply(&release(1)),
        Ok(Applied::StaleReleaseIgnored { current_epoch: 2 })
    );
    assert_eq!(s, before);
    assert_refused(
        &mut s,
        release(3),
        CommandError::EpochMismatch {
            expected: 3,
            current: 2,
        },
    );
    assert_eq!(s.apply(&release(2)), Ok(Applied::LeaseReleased));
    assert!(s.leases.is_empty());
    assert_refused(
        &mut s,
        release(2),
        CommandError::UnknownLease("r".to_owned()),
    );
}

#[test]
fn planner_history_is_bounded_and_targets_follow_last_decision() {
    let mut s = ClusterState::default();
    for i in 0..(PLANNER_HISTORY_LIMIT as u64 + 10) {
        s.apply(&Command::SetPlanner {
            slo: None,
            decision: Some(PlannerDecision {
                at_ms: i,
                targets: PlannerTargets {
                    prefill_workers: i as u32,
                    decode_workers: 1,
                    desired_total_workers: i as u32 + 1,
                },
                reason: format!("step {i}"),
            }),
        })
        .unwrap();
    }
    assert_eq!(s.planner.decisions.len(), PLANNER_HISTORY_LIMIT);
    assert_eq!(s.planner.decisions.front().map(|d| d.at_ms), Some(10));
    let last = PLANNER_HISTORY_LIMIT as u32 + 9;
    assert_eq!(s.planner.targets.prefill_workers, last);

    s.apply(&Command::SetPlanner {
        slo: Some(Slo {
            ttft_ms: 500.0,
            itl_ms: 50.0,
        }),
        decision: None,
    })
    .unwrap();
    assert_eq!(s.planner.slo.map(|x| x.ttft_ms), Some(500.0));
    assert_eq!(s.planner.targets.prefill_workers, last);
    assert_refused(
        &mut s,
        Command::SetPlanner {
            slo: Some(Slo {
                ttft_ms: f64::NAN,
                itl_ms: 50.0,
            }),
            decision: None,
        },
        CommandError::Invalid("SLO values must be finite and positive".to_owned()),
    );
}

#[test]
fn put_model_validates_card() {
    let mut s = ClusterState::default();
    let card = |name: &str, context_length| ModelCard {
        name: name.to_owned(),
        source: "/models/x.gguf".to_owned(),
        context_length,
        vocab_size: 32000,
        eos_token_ids: vec![2],
    };
    s.apply(&Command::PutModel {
        card: card("m", 4096),
    })
    .unwrap();
    assert_eq!(s.models["m"].context_length, 4096);
    assert!(s
        .apply(&Command::PutModel {
            card: card("", 4096)
        })
        .is_err());
    assert!(s.apply(&Command::PutModel { card: card("z", 0) }).is_err());
    assert_eq!(s.models.len(), 1);
}

#[test]
fn batch_applies_each_command_independently() {
    let mut s = two_node_state();
    let resp = s.apply_batch(&Batch(vec![
        grant("a", worker(N1, 0)),
        grant("a", worker(N1, 0)),
        grant("b", worker(N2, 0)),
    ]));
    assert_eq!(resp.0.len(), 3);
    assert!(resp.0[0].is_ok());
    assert_eq!(resp.0[1], Err(CommandError::LeaseExists("a".to_owned())));
    assert!(resp.0[2].is_ok());
    assert_eq!(s.leases.len(), 2);
}

#[test]
fn apply_is_deterministic_across_replicas() {
    let cmds = vec![
        register(N1, 1),
        register(N2, 2),
        upsert(worker(N1, 0), WorkerRole::Decode, WorkerState::Active),
        grant("r", worker(N1, 0)),
        Command::RemoveNode { id: N1, at_ms: 9 },
        grant("bad", worker(N1, 0)),
    ];
    let mut a = ClusterState::default();
    let mut b = ClusterState::default();
    let ra = a.apply_batch(&Batch(cmds.clone()));
    let rb = b.apply_batch(&Batch(cmds));
    assert_eq!(ra, rb);
    assert_eq!(a, b);
}

#[test]
fn state_round_trips_through_postcard_and_json() {
    let mut s = two_node_state();
    s.apply(&grant("r", worker(N1, 0))).unwrap();
    s.apply(&change_role(worker(N2, 0), WorkerRole::Prefill, 600))
        .unwrap();
    let bytes = postcard::to_allocvec(&s).unwrap();
    let back: ClusterState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, s);
    let json = serde_json::to_string(&s).unwrap();
    let back: ClusterState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
}

fn change_role(id: WorkerId, role: WorkerRole, at_ms: u64) -> Command {
    Command::ChangeWorkerRole { id, role, at_ms }
}

#[test]
fn a_role_change_drains_first_and_the_worker_finishes_it() {
    let mut s = two_node_state();
    let w = worker(N1, 0);
    assert_eq!(
        s.apply(&change_role(w, WorkerRole::Prefill, 700)),
        Ok(Applied::RoleChangePending {
            from: WorkerRole::Decode,
            to: WorkerRole::Prefill
        })
    );
    assert_eq!(s.workers[&w].state, WorkerState::Draining);
    assert_eq!(
        s.workers[&w].role,
        WorkerRole::Decode,
        "the role waits for the drain"
    );
    assert_eq!(
        s.pending_roles[&w],
        PendingRole {
            role: WorkerRole::Prefill,
            requested_at_ms: 700
        }
    );
    assert_eq!(
        s.decode_capable_workers()
            .map(|(id, _)| *id)
            .collect::<Vec<_>>(),
        vec![worker(N2, 0)],
        "a draining worker takes no new requests"
    );
    assert_refused(
        &mut s,
        grant("req-new", w),
        CommandError::WorkerNotActive(w),
    );

    assert_eq!(
        s.apply(&Command::FinishRoleChange {
            id: w,
            role: WorkerRole::Prefill
        }),
        Ok(Applied::RoleChanged {
            role: WorkerRole::Prefill
        })
    );
    assert_eq!(s.workers[&w].role, WorkerRole::Prefill);
    assert_eq!(s.workers[&w].state, WorkerState::Active);
    assert!(s.pending_roles.is_empty());
    // Finishing twice (a worker restarting right after its commit) is refused harmlessly.
    assert_refused(
        &mut s,
        Command::FinishRoleChange {
            id: w,
            role: WorkerRole::Prefill,
        },
        CommandError::NoRoleChange(w),
    );
}

#[test]
fn asking_for_the_current_role_is_a_no_op_and_bad_targets_change_nothing() {
    let mut s = two_node_state();
    let w = worker(N1, 0);
    let before = s.clone();
    assert_eq!(
        s.apply(&change_role(w, WorkerRole::Decode, 700)),
        Ok(Applied::RoleAlreadySet {
            role: WorkerRole::Decode
        })
    );
    assert_eq!(s, before);
    assert_refused(
        &mut s,
        change_role(worker(N1, 9), WorkerRole::Prefill, 700),
        CommandError::UnknownWorker(worker(N1, 9)),
    );
    assert_refused(
        &mut s,
        Command::FinishRoleChange {
            id: w,
            role: WorkerRole::Prefill,
        },
        CommandError::NoRoleChange(w),
    );
}

#[test]
fn a_pending_change_can_be_retargeted_or_cancelled() {
    let mut s = two_node_state();
    let w = worker(N1, 0);
    s.apply(&change_role(w, WorkerRole::Prefill, 700)).unwrap();
    assert_eq!(
        s.apply(&change_role(w, WorkerRole::Aggregated, 900)),
        Ok(Applied::RoleChangePending {
            from: WorkerRole::Decode,
            to: WorkerRole::Aggregated
        })
    );
    assert_eq!(
        s.pending_roles[&w].requested_at_ms, 700,
        "retargeting keeps the drain deadline"
    );
    // The old target can no longer finish it.
    assert_refused(
        &mut s,
        Command::FinishRoleChange {
            id: w,
            role: WorkerRole::Prefill,
        },
        CommandError::RoleChangeMismatch {
            id: w,
            pending: WorkerRole::Aggregated,
            given: WorkerRole::Prefill,
        },
    );
    assert_eq!(
        s.apply(&change_role(w, WorkerRole::Decode, 950)),
        Ok(Applied::RoleChangeCancelled {
            role: WorkerRole::Decode
        })
    );
    assert_eq!(s.workers[&w].state, WorkerState::Active);
    assert!(s.pending_roles.is_empty());
}

#[test]
fn an_off_worker_switches_at_once() {
    let mut s = two_node_state();
    let w = worker(N1, 0);
    s.apply(&Command::SetWorkerState {
        id: w,
        state: WorkerState::Off,
    })
    .unwrap();
    assert_eq!(
        s.apply(&change_role(w, WorkerRole::Prefill, 700)),
        Ok(Applied::RoleChanged {
            role: WorkerRole::Prefill
        })
    );
    assert_eq!(s.workers[&w].state, WorkerState::Off);
    assert!(s.pending_roles.is_empty());
}

#[test]
fn a_restarting_worker_keeps_its_replicated_role_and_drain() {
    let mut s = two_node_state();
    let w = worker(N1, 0);
    s.apply(&change_role(w, WorkerRole::Prefill, 700)).unwrap();
    // The peer restarts mid-drain and announces its start-up role again.
    let mut again = upsert(w, WorkerRole::Decode, WorkerState::Active);
    if let Command::UpsertWorker { info, .. } = &mut again {
        info.kv_blocks_total = 2048;
    }
    s.apply(&again).unwrap();
    assert_eq!(s.workers[&w].state, WorkerState::Draining);
    assert_eq!(
        s.workers[&w].kv_blocks_total, 2048,
        "the engine facts refresh"
    );
    assert_eq!(s.pending_roles[&w].role, WorkerRole::Prefill);
    s.apply(&Command::FinishRoleChange {
        id: w,
        role: WorkerRole::Prefill,
    })
    .unwrap();
    s.apply(&upsert(w, WorkerRole::Decode, WorkerState::Active))
        .unwrap();
    assert_eq!(
        s.workers[&w].role,
        WorkerRole::Prefill,
        "the changed role survives a restart with the old --role"
    );
}

#[test]
fn removing_a_node_forgets_its_pending_role_changes() {
    let mut s = two_node_state();
    s.apply(&change_role(worker(N2, 0), WorkerRole::Prefill, 700))
        .unwrap();
    s.apply(&Command::RemoveNode { id: N2, at_ms: 900 })
        .unwrap();
    assert!(s.pending_roles.is_empty());
}
