//! The replicated cluster state: what every peer reads from its local copy.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// Planner decisions kept in the replicated history; older ones are dropped first.
pub const PLANNER_HISTORY_LIMIT: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    Up,
    Down,
    Left,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub name: String,
    pub memory_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub quic_addr: String,
    pub http_addr: String,
    pub labels: BTreeMap<String, String>,
    pub gpus: Vec<GpuInfo>,
    pub status: NodeStatus,
    pub status_since_ms: u64,
    pub joined_at_ms: u64,
}

/// A worker is one engine instance on a node; `slot` tells apart several on the same node
/// (e.g. one per GPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkerId {
    pub node: NodeId,
    pub slot: u32,
}

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.node, self.slot)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerRole {
    Prefill,
    Decode,
    Aggregated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerState {
    Active,
    Draining,
    Off,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub role: WorkerRole,
    pub state: WorkerState,
    pub model: String,
    pub kv_blocks_total: u64,
    /// Where the engine runs, e.g. "cpu" or "cuda:0".
    pub device: String,
}

/// A role change under way: the worker drains (state `Draining`, routers skip it), then
/// switches to `role`. `requested_at_ms` (the proposer's clock) starts the drain deadline, so a
/// worker restarting mid-drain keeps the original deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRole {
    pub role: WorkerRole,
    pub requested_at_ms: u64,
}

/// The right to serve one request; `epoch` grows on every reassignment so that tokens from a
/// stale owner can be told apart and dropped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub owner: WorkerId,
    pub epoch: u64,
    pub frontend: NodeId,
    pub granted_at_ms: u64,
}

/// Service-level objectives the planner steers towards.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    pub ttft_ms: f64,
    pub itl_ms: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannerTargets {
    pub prefill_workers: u32,
    pub decode_workers: u32,
    /// Worker count published for an external scaler.
    pub desired_total_workers: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannerDecision {
    pub at_ms: u64,
    pub targets: PlannerTargets,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PlannerState {
    pub slo: Option<Slo>,
    pub targets: PlannerTargets,
    /// Most recent last; at most [`PLANNER_HISTORY_LIMIT`] entries.
    pub decisions: VecDeque<PlannerDecision>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCard {
    pub name: String,
    /// Where peers load it from (path or URL), as the operator gave it.
    pub source: String,
    pub context_length: u32,
    pub vocab_size: u32,
    pub eos_token_ids: Vec<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub cluster_id: String,
    pub join_secret_hash: Option<String>,
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Serialized as a list of pairs so that JSON (admin API) can carry a struct key.
    #[serde(with = "worker_pairs")]
    pub workers: BTreeMap<WorkerId, WorkerInfo>,
    /// Role changes still draining, by worker; an entry exists only while its worker is
    /// `Draining` towards that role.
    #[serde(with = "worker_pairs")]
    pub pending_roles: BTreeMap<WorkerId, PendingRole>,
    pub leases: BTreeMap<String, Lease>,
    pub planner: PlannerState,
    pub models: BTreeMap<String, ModelCard>,
    pub meta: BTreeMap<String, String>,
}

impl ClusterState {
    /// Workers of `node`, in slot order.
    pub fn workers_of(&self, node: NodeId) -> impl Iterator<Item = (&WorkerId, &WorkerInfo)> {
        self.workers.range(
            WorkerId { node, slot: 0 }..=WorkerId {
                node,
                slot: u32::MAX,
            },
        )
    }

    /// Workers a request may be decoded on: active `Decode` or `Aggregated` workers of nodes
    /// that are up, in id order.
    pub fn decode_capable_workers(&self) -> impl Iterator<Item = (&WorkerId, &WorkerInfo)> {
        self.workers.iter().filter(|(id, w)| {
            w.state == WorkerState::Active
                && matches!(w.role, WorkerRole::Decode | WorkerRole::Aggregated)
                && self
                    .nodes
                    .get(&id.node)
                    .is_some_and(|n| n.status == NodeStatus::Up)
        })
    }

    /// Leases owned by `worker`.
    pub fn leases_of(&self, worker: WorkerId) -> impl Iterator<Item = (&String, &Lease)> {
        self.leases.iter().filter(move |(_, l)| l.owner == worker)
    }

    /// Leases currently owned by any worker of `node` (e.g. to reassign when it goes down).
    pub fn leases_on_node(&self, node: NodeId) -> impl Iterator<Item = (&String, &Lease)> {
        self.leases
            .iter()
            .filter(move |(_, l)| l.owner.node == node)
    }
}

mod worker_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use serde::Serialize;

    use super::WorkerId;

    pub fn serialize<S: Serializer, V: Serialize>(
        map: &BTreeMap<WorkerId, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>, V: Deserialize<'de>>(
        d: D,
    ) -> Result<BTreeMap<WorkerId, V>, D::Error> {
        let pairs = Vec::<(WorkerId, V)>::deserialize(d)?;
        Ok(pairs.into_iter().collect())
    }
}
