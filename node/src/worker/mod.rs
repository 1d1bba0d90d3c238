//! The worker runtime on every peer with an engine: registers the engine as a worker and serves
//! `worker.generate` streams under request leases, fencing itself when it loses the quorum.
//! It also serves `worker.prefill` (computes a prompt prefix for a decode worker on another peer
//! and pushes its KV blocks) and, when the router chose a prefill worker for a request, pulls
//! the prompt's KV from it before decoding (`kv_transfer.rs`).

pub mod drain;
mod fence;
pub mod kv_events;
pub mod kv_transfer;
mod lease_check;
pub mod prefill;
mod register;
mod service;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use stator_gpu::engine::EngineHandle;
use stator_raft::model::{WorkerId, WorkerInfo, WorkerRole, WorkerState};
use stator_raft::RaftNode;
use stator_transport::Endpoint;
use tokio::sync::watch;
use tracing::error;

use fence::Fence;
use kv_transfer::KvTransferConfig;
use prefill::{serve_prefill, PrefillService};
use register::register_worker;
use service::{serve_generate, GenerateService};

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub slot: u32,
    pub role: WorkerRole,
    /// A peer without proven quorum contact for this long holds its streams (self-fencing).
    /// Below the leader's `down_after` minus a heartbeat, a peer frozen long enough to lose
    /// its leases is fenced before they move.
    pub lease_timeout: Duration,
    /// How long a stream waits for its lease to show up in the local state.
    pub lease_wait: Duration,
    /// A stream held by the fence this long ends and frees its blocks.
    pub fenced_give_up: Duration,
    /// How long registration keeps retrying before it gives up (and logs).
    pub register_deadline: Duration,
    /// Deadlines and chunk size of KV transfers (both directions).
    pub kv_transfer: KvTransferConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            slot: 0,
            role: WorkerRole::Aggregated,
            lease_timeout: Duration::from_millis(150),
            lease_wait: Duration::from_secs(2),
            fenced_give_up: Duration::from_secs(5),
            register_deadline: Duration::from_secs(120),
            kv_transfer: KvTransferConfig::default(),
        }
    }
}

/// The local engine a worker runs, as announced to the cluster.
pub struct ServedEngine {
    pub handle: EngineHandle,
    /// Served model name.
    pub model: String,
    /// Where it runs, e.g. "cpu" or "cuda:0".
    pub device: String,
}

/// Starts the worker of this peer's engine: serves `worker.generate` on `endpoint` right away,
/// runs the fence, and registers the worker in the background once the peer is healthy.
pub fn start(
    endpoint: &Endpoint,
    raft: Arc<RaftNode>,
    health: Arc<crate::cluster::Health>,
    engine: ServedEngine,
    cfg: WorkerConfig,
    shutdown: watch::Receiver<bool>,
) -> WorkerId {
    let id = WorkerId {
        node: raft.node_id(),
        slot: cfg.slot,
    };
    let fence = Fence::new(cfg.lease_timeout);
    tokio::spawn(fence::run_fence(
        raft.clone(),
        fence.clone(),
        cfg.lease_timeout,
        shutdown,
    ));
    kv_events::publish(endpoint, &engine.handle, health.load());
    let info = WorkerInfo {
        role: cfg.role,
        state: WorkerState::Active,
        model: engine.model,
        kv_blocks_total: engine.handle.stats().kv_blocks_total as u64,
        device: engine.device,
    };
    serve_prefill(
        endpoint,
        Arc::new(PrefillService {
            engine: engine.handle.clone(),
            model: info.model.clone(),
            transfer: cfg.kv_transfer.clone(),
        }),
    );
    serve_generate(
        endpoint,
        Arc::new(GenerateService {
            raft: raft.clone(),
            engine: engine.handle,
            me: id,
            fence,
            lease_wait: cfg.lease_wait,
            fence_check: (cfg.lease_timeout / 4).max(Duration::from_millis(10)),
            fenced_give_up: cfg.fenced_give_up,
            endpoint: endpoint.clone(),
            model: info.model.clone(),
            transfer: cfg.kv_transfer.clone(),
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = register_worker(raft, health, id, info, cfg.register_deadline).await {
            error!(error = %e, "this peer's engine is not available to the cluster");
        }
    });
    id
}
