//! [`RemoteTokenSource`]: picks a worker, takes the lease, and hands the request to a
//! [`Flight`](super::flight) that streams it (and migrates it) until it ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use parking_lot::Mutex;
use stator_gpu::request::GenerateRequest;
use stator_raft::model::{
    Applied, ClusterState, Command, NodeStatus, WorkerId, WorkerRole, WorkerState,
};
use stator_raft::RaftNode;
use stator_transport::Endpoint;
use tokio::sync::mpsc;
use tracing::warn;

use super::flight::Flight;
use crate::openai::source::{EngineEvents, GenerateError, TokenSource};
use crate::router::{Decision, Router, RouterConfig};
use crate::util::wall_ms;

#[derive(Clone, Debug)]
pub struct FrontendConfig {
    /// Migrations allowed per request before it fails.
    pub migration_limit: u32,
    /// After a stream breaks, how long to wait for the leader to reassign the lease before the
    /// frontend moves it itself (the leader knows better whether the owner is dead).
    pub reassign_grace: Duration,
    /// How long a broken request may search for a new owner before it fails.
    pub reassign_deadline: Duration,
    /// Longest silence between two frames of a worker's stream.
    pub frame_timeout: Duration,
    /// Events buffered between the flight and the client.
    pub buffer: usize,
    pub router: RouterConfig,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        Self {
            migration_limit: 3,
            reassign_grace: Duration::from_millis(1500),
            reassign_deadline: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(30),
            buffer: 64,
            router: RouterConfig::default(),
        }
    }
}

/// Generates on cluster workers under leases. Cloning shares the router and settings.
#[derive(Clone)]
pub struct RemoteTokenSource {
    pub(super) inner: Arc<Shared>,
}

pub(super) struct Shared {
    pub raft: Arc<RaftNode>,
    pub endpoint: Endpoint,
    pub node_id: u64,
    pub cfg: FrontendConfig,
    pub router: Mutex<Router>,
    next_lease: AtomicU64,
}

impl RemoteTokenSource {
    pub fn new(raft: Arc<RaftNode>, endpoint: Endpoint, cfg: FrontendConfig) -> Self {
        let node_id = raft.node_id();
        let router_cfg = cfg.router.clone();
        Self {
            inner: Arc::new(Shared {
                raft,
                endpoint,
                node_id,
                cfg,
                router: Mutex::new(Router::new(router_cfg)),
                next_lease: AtomicU64::new(0),
            }),
        }
    }
}

impl TokenSource for RemoteTokenSource {
    fn generate(
        &self,
        req: GenerateRequest,
    ) -> BoxFuture<'static, Result<EngineEvents, GenerateError>> {
        let shared = self.inner.clone();
        Box::pin(async move {
            let seq = shared.next_lease.fetch_add(1, Ordering::Relaxed);
            // The API's ids are only unique per peer; a lease key must be unique cluster-wide.
            let request_id = format!("{}/{}/{}", shared.node_id, seq, req.id);
            let decision = shared.route(req.prompt.len(), None)?;
            let owner = decision.decode;
            let epoch = match shared.grant(&request_id, owner).await {
                Ok(epoch) => epoch,
                Err(e) => {
                    shared.release_route(owner, req.prompt.len());
                    return Err(e);
                }
            };
            metrics::gauge!("stator_leases_active").increment(1.0);
            let (tx, rx) = mpsc::channel(shared.cfg.buffer.max(1));
            let flight = Flight::new(shared.clone(), request_id, decision, epoch, req);
            tokio::spawn(flight.fly(tx));
            Ok(stream::unfold(rx, |mut rx| async move {
                let event = rx.recv().await?;
                Some((event, rx))
            })
            .boxed())
        })
    }
}

/// Workers a request may run on: active decode-capable workers of peers that are up.
pub(super) fn routable_workers(state: &ClusterState) -> Vec<(WorkerId, WorkerRole)> {
    state
        .workers
        .iter()
        .filter(|(id, w)| {
            w.state == WorkerState::Active
                && matches!(w.role, WorkerRole::Decode | WorkerRole::Aggregated)
                && state
                    .nodes
                    .get(&id.node)
                    .is_some_and(|n| n.status == NodeStatus::Up)
        })
        .map(|(id, w)| (*id, w.role))
        .collect()
}

impl Shared {
    /// Picks the workers for a prompt of `prompt_len` tokens, never `exclude` as the decode
    /// worker.
    pub(super) fn route(
        &self,
        prompt_len: usize,
        exclude: Option<WorkerId>,
    ) -> Result<Decision, GenerateError> {
        let mut workers = routable_workers(&self.raft.state().borrow());
        workers.retain(|(id, _)| Some(*id) != exclude);
        let mut router = self.router.lock();
        router.set_workers(workers);
        router.route(&[], prompt_len, 0.0).map_err(|e| {
            warn!(error = %e, "no worker for a request");
            GenerateError::Unavailable(e.to_string())
        })
    }

    /// Gives back this frontend's in-flight accounting for a request routed to `worker`.
    pub(super) fn release_route(&self, worker: WorkerId, prompt_len: usize) {
        let blocks = prompt_len.div_ceil(self.router.lock().config().block_size.max(1));
        self.router.lock().release(worker, blocks as u32);
    }

    async fn grant(&self, request_id: &str, owner: WorkerId) -> Result<u64, GenerateError> {
        let cmd = Command::GrantLease {
            request_id: request_id.to_string(),
            owner,
            frontend: self.node_id,
            at_ms: wall_ms(),
        };
        let outcome = self.raft.write(vec![cmd]).await.map_err(|e| {
            warn!(error = %e, "could not take a request lease");
            GenerateError::Unavailable(format!("the request lease could not be committed: {e}"))
        })?;
        match outcome.results.into_iter().next() {
            Some(Ok(Applied::LeaseGranted { epoch })) => Ok(epoch),
            other => {
                warn!(result = ?other, "the lease grant was refused");
                Err(GenerateError::Unavailable(
                    "the request lease was refused".into(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stator_raft::model::{NodeInfo, WorkerInfo};

    fn node(status: NodeStatus) -> NodeInfo {
        NodeInfo {
            quic_addr: "127.0.0.1:1".into(),
            http_addr: String::new(),
            labels: Default::default(),
            gpus: vec![],
            status,
            status_since_ms: 0,
            joined_at_ms: 0,
        }
    }

    fn worker(role: WorkerRole, state: WorkerState) -> WorkerInfo {
        WorkerInfo {
            role,
            state,
            model: "m".into(),
            kv_blocks_total: 8,
            device: "cpu".into(),
        }
    }

    #[test]
    fn requests_go_only_to_active_decoding_workers_of_live_peers() {
        let mut s = ClusterState::default();
        let w = |node| WorkerId { node, slot: 0 };
        for (id, status) in [
            (1, NodeStatus::Up),
            (2, NodeStatus::Down),
            (3, NodeStatus::Up),
        ] {
            s.nodes.insert(id, node(status));
        }
        s.nodes.insert(4, node(NodeStatus::Up));
        s.nodes.insert(5, node(NodeStatus::Up));
        s.workers
            .insert(w(1), worker(WorkerRole::Aggregated, WorkerState::Active));
        s.workers
            .insert(w(2), worker(WorkerRole::Aggregated, WorkerState::Active));
        s.workers
            .insert(w(3), worker(WorkerRole::Decode, WorkerState::Active));
        s.workers
            .insert(w(4), worker(WorkerRole::Prefill, WorkerState::Active));
        s.workers
            .insert(w(5), worker(WorkerRole::Aggregated, WorkerState::Draining));
        let ids: Vec<WorkerId> = routable_workers(&s).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![w(1), w(3)]);
    }
}
