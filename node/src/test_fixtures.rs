//! Replicated-state values for unit tests.

use stator_raft::model::{NodeInfo, NodeStatus, WorkerInfo, WorkerRole, WorkerState};

pub fn node_info(quic_addr: &str, status: NodeStatus) -> NodeInfo {
    NodeInfo {
        quic_addr: quic_addr.into(),
        http_addr: String::new(),
        labels: Default::default(),
        gpus: vec![],
        status,
        status_since_ms: 0,
        joined_at_ms: 0,
    }
}

pub fn worker_info(role: WorkerRole, state: WorkerState) -> WorkerInfo {
    WorkerInfo {
        role,
        state,
        model: "m".into(),
        kv_blocks_total: 8,
        device: "cpu".into(),
    }
}
