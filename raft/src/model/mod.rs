//! The replicated data model: [`ClusterState`] and the [`Command`]s that change it.

mod apply;
mod command;
mod state;

pub use apply::{MAX_META_KEY_BYTES, MAX_META_VALUE_BYTES};
pub use command::{Applied, Batch, BatchResponse, Command, CommandError, CommandResult};
pub use state::{
    ClusterState, GpuInfo, Lease, ModelCard, NodeInfo, NodeStatus, PendingRole, PlannerDecision,
    PlannerState, PlannerTargets, Slo, WorkerId, WorkerInfo, WorkerRole, WorkerState,
    PLANNER_HISTORY_LIMIT,
};

#[cfg(test)]
mod tests;
