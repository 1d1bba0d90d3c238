//! [`RemoteTokenSource`]: picks a worker, takes the lease, and hands the request to a
//! [`Flight`](super::flight) that streams it (and migrates it) until it ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use parking_lot::Mutex;
use stator_gpu::kv::block_hashes;
use stator_gpu::request::GenerateRequest;
use stator_raft::model::{
    Applied, ClusterState, Command, NodeStatus, WorkerId, WorkerRole, WorkerState,
};
use stator_raft::RaftNode;
use stator_transport::Endpoint;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use super::flight::{Flight, GrantFuture};
use super::kv_feed;
use super::load::LoadApplier;
use crate::cluster::load::LoadTable;
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
    pub router: Arc<Mutex<Router>>,
    /// The leader's load table (see [`RemoteTokenSource::with_load_table`]).
    load_table: OnceLock<watch::Receiver<LoadTable>>,
    load_applier: Mutex<LoadApplier>,
    next_lease: AtomicU64,
}

impl RemoteTokenSource {
    /// Starts following every worker's KV events (needs a tokio runtime; without one the
    /// router goes by load alone).
    pub fn new(raft: Arc<RaftNode>, endpoint: Endpoint, cfg: FrontendConfig) -> Self {
        let node_id = raft.node_id();
        let router = Arc::new(Mutex::new(Router::new(cfg.router.clone())));
        if tokio::runtime::Handle::try_current().is_ok() {
            kv_feed::spawn(raft.clone(), endpoint.clone(), &router);
        } else {
            warn!("no tokio runtime: the router will not see the workers' KV caches");
        }
        Self {
            inner: Arc::new(Shared {
                raft,
                endpoint,
                node_id,
                cfg,
                router,
                load_table: OnceLock::new(),
                load_applier: Mutex::new(LoadApplier::default()),
                next_lease: AtomicU64::new(0),
            }),
        }
    }

    /// Routes with the live load of the leader's fan-out (`Health::load().table()`); without
    /// it the router knows only this frontend's own in-flight requests.
    pub fn with_load_table(self, table: watch::Receiver<LoadTable>) -> Self {
        if self.inner.load_table.set(table).is_err() {
            warn!("a load table was already attached; keeping the first");
        }
        self
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
            let decision = shared.route(&req.prompt, None)?;
            let owner = decision.decode;
            let grant: GrantFuture = {
                let (shared, request_id) = (shared.clone(), request_id.clone());
                tokio::spawn(async move { shared.grant(&request_id, owner).await })
            };
            let (tx, rx) = mpsc::channel(shared.cfg.buffer.max(1));
            let (admission, admitted) = oneshot::channel();
            let flight = Flight::new(shared.clone(), request_id, decision, grant, req, admission);
            tokio::spawn(flight.fly(tx));
            // Wait for the engine's admission so that a full queue or a too-long prompt answers
            // like a local engine (429 / 400). Without an answer in time (or when the flight
            // ends otherwise) the stream carries whatever comes.
            if let Ok(Ok(Err(rejected))) =
                tokio::time::timeout(shared.cfg.frame_timeout, admitted).await
            {
                return Err(rejected);
            }
            Ok(stream::unfold(rx, |mut rx| async move {
                let event = rx.recv().await?;
                Some((event, rx))
            })
            .boxed())
        })
    }
}

/// Workers the router may pick from: active workers of peers that are up. The router sends
/// requests to decode-capable ones and prefill legs to prefill ones.
pub(super) fn routable_workers(state: &ClusterState) -> Vec<(WorkerId, WorkerRole)> {
    state
        .workers
        .iter()
        .filter(|(id, w)| {
            w.state == WorkerState::Active
                && state
                    .nodes
                    .get(&id.node)
                    .is_some_and(|n| n.status == NodeStatus::Up)
        })
        .map(|(id, w)| (*id, w.role))
        .collect()
}

impl Shared {
    /// Picks the workers for `prompt`, never `exclude`.
    pub(super) fn route(
        &self,
        prompt: &[u32],
        exclude: Option<WorkerId>,
    ) -> Result<Decision, GenerateError> {
        let mut workers = routable_workers(&self.raft.state().borrow());
        workers.retain(|(id, _)| Some(*id) != exclude);
        let hashes = block_hashes(prompt, self.cfg.router.block_size);
        let uniform: f64 = rand::random();
        let mut router = self.router.lock();
        let started = Instant::now();
        router.set_workers(workers);
        if let Some(table) = self.load_table.get() {
            self.load_applier
                .lock()
                .apply(&mut router, &table.borrow(), started);
        }
        let decided = router.route(&hashes, prompt.len(), uniform);
        metrics::histogram!("stator_router_decision_seconds").record(started.elapsed());
        metrics::gauge!("stator_router_workers").set(router.workers() as f64);
        metrics::gauge!("stator_router_indexed_blocks").set(router.indexed_blocks() as f64);
        drop(router);
        let why = decided.as_ref().map_or("no_worker", |d| d.why);
        metrics::counter!("stator_router_decisions_total", "why" => why).increment(1);
        decided.map_err(|e| {
            warn!(error = %e, "no worker for a request");
            GenerateError::Unavailable(e.to_string())
        })
    }

    /// Gives back this frontend's in-flight accounting for a request routed by `decision`.
    pub(super) fn release_route(&self, decision: &Decision, prompt_len: usize) {
        self.router.lock().release(decision, prompt_len);
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
        crate::test_fixtures::node_info("127.0.0.1:1", status)
    }

    fn worker(role: WorkerRole, state: WorkerState) -> WorkerInfo {
        crate::test_fixtures::worker_info(role, state)
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
        assert_eq!(
            ids,
            vec![w(1), w(3), w(4)],
            "prefill workers are candidates too"
        );
        let mut router = Router::new(RouterConfig::default());
        router.set_workers(routable_workers(&s));
        for _ in 0..4 {
            let d = router.route(&[], 64, 0.0).unwrap();
            assert!([w(1), w(3)].contains(&d.decode), "{d:?}");
        }
    }
}
