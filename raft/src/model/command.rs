//! Commands (the log's payload) and their per-command results.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::state::{
    GpuInfo, ModelCard, NodeStatus, PlannerDecision, Slo, WorkerId, WorkerInfo, WorkerRole,
    WorkerState,
};
use crate::types::NodeId;

/// One log entry: commands applied in order, each independently (a failing command changes
/// nothing and does not stop the others).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch(pub Vec<Command>);

/// One result per command of the [`Batch`], in the same order. Entries that carry no batch
/// (blank, membership) answer with an empty list.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchResponse(pub Vec<CommandResult>);

/// Every time value is the proposing leader's clock, carried inside the command, so that
/// applying is deterministic on every peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Stamps the cluster's identity once, at bootstrap.
    InitCluster {
        cluster_id: String,
    },
    /// Adds a node, or refreshes a known one (rejoin) and marks it `Up`.
    RegisterNode {
        id: NodeId,
        quic_addr: String,
        http_addr: String,
        labels: BTreeMap<String, String>,
        gpus: Vec<GpuInfo>,
        at_ms: u64,
    },
    SetNodeStatus {
        id: NodeId,
        status: NodeStatus,
        at_ms: u64,
    },
    /// Marks the node `Left` and drops its workers; leases of those workers stay so that the
    /// reassigner can move them.
    RemoveNode {
        id: NodeId,
        at_ms: u64,
    },
    /// Hex SHA-256 of the current join secret.
    SetJoinSecret {
        secret_hash: String,
    },
    PutMeta {
        key: String,
        value: String,
    },
    DeleteMeta {
        key: String,
    },
    UpsertWorker {
        id: WorkerId,
        info: WorkerInfo,
    },
    /// Sets the role at once, without a drain; cancels a pending role change.
    SetWorkerRole {
        id: WorkerId,
        role: WorkerRole,
    },
    /// Sets the state directly; cancels a pending role change.
    SetWorkerState {
        id: WorkerId,
        state: WorkerState,
    },
    /// Asks a worker to switch to `role` without losing a request: it becomes `Draining` with
    /// the target remembered, and finishes the switch itself ([`Command::FinishRoleChange`])
    /// once drained. Asking for the role it already has is a no-op; asking for its current role
    /// while it drains towards another cancels the change. An `Off` worker switches at once.
    ChangeWorkerRole {
        id: WorkerId,
        role: WorkerRole,
        at_ms: u64,
    },
    /// Ends a drained role change: role := `role`, state := `Active`. Refused unless `role` is
    /// the pending target, so a change retargeted meanwhile is finished only by its new target.
    FinishRoleChange {
        id: WorkerId,
        role: WorkerRole,
    },
    /// Grants a new lease with epoch 1.
    GrantLease {
        request_id: String,
        owner: WorkerId,
        frontend: NodeId,
        at_ms: u64,
    },
    /// Ends a lease; a release carrying an older epoch than the lease's is ignored (the lease
    /// was moved meanwhile).
    ReleaseLease {
        request_id: String,
        epoch: u64,
    },
    /// Moves a lease to another worker, bumping its epoch; refused unless `expected_epoch`
    /// is the current one (compare-and-set).
    ReassignLease {
        request_id: String,
        new_owner: WorkerId,
        expected_epoch: u64,
    },
    /// Replaces the SLO when `slo` is set; records `decision` (targets + history) when set.
    SetPlanner {
        slo: Option<Slo>,
        decision: Option<PlannerDecision>,
    },
    PutModel {
        card: ModelCard,
    },
}

/// What a successfully applied command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    Done,
    LeaseGranted {
        epoch: u64,
    },
    LeaseReassigned {
        epoch: u64,
    },
    LeaseReleased,
    /// The release named an epoch older than the lease's; nothing changed.
    StaleReleaseIgnored {
        current_epoch: u64,
    },
    /// The worker is draining towards `to` (a new change, or a pending one retargeted).
    RoleChangePending {
        from: WorkerRole,
        to: WorkerRole,
    },
    /// The worker already had `role` and nothing was pending: nothing changed.
    RoleAlreadySet {
        role: WorkerRole,
    },
    /// A pending change was cancelled: the worker keeps `role` and is active again.
    RoleChangeCancelled {
        role: WorkerRole,
    },
    /// The worker now has `role` (a finished drain, or an `Off` worker switched at once).
    RoleChanged {
        role: WorkerRole,
    },
}

pub type CommandResult = Result<Applied, CommandError>;

/// Why a command was refused. A refused command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CommandError {
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("cluster id is already set to {0:?}")]
    ClusterIdAlreadySet(String),
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    #[error("node {0} has left the cluster")]
    NodeLeft(NodeId),
    #[error("unknown worker {0}")]
    UnknownWorker(WorkerId),
    #[error("worker {0} is not active")]
    WorkerNotActive(WorkerId),
    #[error("meta key {0:?} does not exist")]
    UnknownMetaKey(String),
    #[error("lease for request {0:?} already exists")]
    LeaseExists(String),
    #[error("no lease for request {0:?}")]
    UnknownLease(String),
    #[error("lease epoch mismatch: expected {expected}, current {current}")]
    EpochMismatch { expected: u64, current: u64 },
    #[error("worker {0} has no role change under way")]
    NoRoleChange(WorkerId),
    #[error("worker {id} is changing to role {pending:?}, not {given:?}")]
    RoleChangeMismatch {
        id: WorkerId,
        pending: WorkerRole,
        given: WorkerRole,
    },
}
