//! The `worker.generate` stream: runs a request on the local engine for as long as this worker
//! holds its lease, and stops the moment it does not.

use std::sync::Arc;
use std::time::Duration;

use stator_gpu::engine::{EngineHandle, EventStream, SubmitError};
use stator_gpu::request::{EngineEvent, GenerateRequest};
use stator_raft::model::{ClusterState, NodeStatus, WorkerId, WorkerRole, WorkerState};
use stator_raft::RaftNode;
use stator_transport::{Endpoint, FramedRecv, FramedSend, PeerInfo};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::fence::Fence;
use super::kv_transfer::{pull_prefix, KvTransferConfig};
use super::lease_check::{standing, LeaseStanding};
use super::wire::{GenerateHeader, PrefillHeader, WorkerFrame, GENERATE_STREAM};

pub struct GenerateService {
    pub raft: Arc<RaftNode>,
    pub engine: EngineHandle,
    pub me: WorkerId,
    pub fence: Fence,
    /// How long to wait for the local state to show a lease before refusing.
    pub lease_wait: Duration,
    /// How often a fenced stream looks again whether contact is back.
    pub fence_check: Duration,
    /// A stream fenced this long ends (its blocks are freed); its frontend has moved on.
    pub fenced_give_up: Duration,
    /// Pulls prompt KV from prefill workers.
    pub endpoint: Endpoint,
    /// Served model name (a prefill worker must serve the same).
    pub model: String,
    pub transfer: KvTransferConfig,
}

/// Registers the `worker.generate` handler on `endpoint`.
pub fn serve_generate(endpoint: &Endpoint, service: Arc<GenerateService>) {
    endpoint.register_stream(GENERATE_STREAM, move |peer, send, recv| {
        let service = service.clone();
        async move { service.handle(peer, send, recv).await }
    });
}

/// Why a stream ended early; each reason is a metric label.
enum Stop {
    Refused(&'static str, String),
    CallerGone,
    Done,
}

impl GenerateService {
    async fn handle(&self, peer: PeerInfo, mut send: FramedSend, mut recv: FramedRecv) {
        let header: GenerateHeader = match recv.recv().await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => {
                debug!(peer = ?peer.node_id, error = %e, "unreadable generate header");
                return;
            }
        };
        metrics::gauge!("stator_worker_streams_active").increment(1.0);
        let stop = self.run(&header, &mut send).await;
        metrics::gauge!("stator_worker_streams_active").decrement(1.0);
        match stop {
            Stop::Refused(reason, message) => {
                info!(request = %header.request_id, epoch = header.epoch, reason, %message, "stopped streaming");
                metrics::counter!("stator_worker_stops_total", "reason" => reason).increment(1);
                let _ = send.send(&WorkerFrame::Refused(message)).await;
                let _ = send.finish().await;
            }
            Stop::CallerGone => {
                metrics::counter!("stator_worker_stops_total", "reason" => "caller_gone")
                    .increment(1);
            }
            Stop::Done => {
                let _ = send.finish().await;
            }
        }
        // Keep the receive half open until here so the caller's side sees a clean end.
        drop(recv);
    }

    async fn run(&self, header: &GenerateHeader, send: &mut FramedSend) -> Stop {
        let mut state = self.raft.state();
        let mut request = header.request.clone();
        // The lease key is cluster-unique; the engine tracks requests by it.
        request.id = header.request_id.clone();
        // The frontend opens this stream while its lease grant is still committing: the
        // engine starts on the prompt at once, and nothing leaves this worker (not even the
        // admission answer) before the lease is seen here. If it never comes, dropping the
        // events cancels the sequence and frees its blocks.
        let submitted = match header.prefill {
            Some(prefill) => self.submit_prefilled_on(prefill, header, request).await,
            None => self.submit_local(request),
        };
        if let Err(stop) = self.await_lease(header, &mut state).await {
            return stop;
        }
        if let Err(stop) = self.hold_while_fenced(header, &mut state).await {
            return stop;
        }
        let (mut events, answer) = match submitted {
            Ok(events) => (Some(events), WorkerFrame::Accepted),
            Err(e) => (None, WorkerFrame::Rejected(e.into())),
        };
        if send.send(&answer).await.is_err() {
            return Stop::CallerGone;
        }
        let Some(mut events) = events.take() else {
            return Stop::Done;
        };
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                changed = state.changed() => {
                    if changed.is_err() {
                        return Stop::Refused("shutdown", "the peer is shutting down".into());
                    }
                    if let Err(stop) = self.still_held(header, &state.borrow_and_update()) {
                        return stop;
                    }
                    continue;
                }
            };
            let Some(event) = event else {
                return Stop::Refused("engine", "the engine ended the stream".into());
            };
            // Checked before every send: a token produced after the lease moved, or while this
            // peer cannot prove its view of the lease is current, must never leave it.
            if let Err(stop) = self.hold_while_fenced(header, &mut state).await {
                return stop;
            }
            if let Err(stop) = self.still_held(header, &state.borrow()) {
                return stop;
            }
            let last = matches!(
                event,
                EngineEvent::Finished { .. } | EngineEvent::Failed { .. }
            );
            if send.send(&WorkerFrame::Event(event)).await.is_err() {
                return Stop::CallerGone;
            }
            if last {
                return Stop::Done;
            }
        }
    }

    fn submit_local(&self, request: GenerateRequest) -> Result<EventStream, SubmitError> {
        let events = self.engine.submit(request)?;
        metrics::counter!("stator_prefill_total", "where" => "local").increment(1);
        Ok(events)
    }

    /// Pulls the prompt's KV from the prefill worker the router chose, then runs the request
    /// on it. Any failure (worker gone, refusal, stall, deadline) frees what was reserved and
    /// prefills here instead: a retry elsewhere would cost about as much as doing it locally.
    async fn submit_prefilled_on(
        &self,
        prefill: WorkerId,
        header: &GenerateHeader,
        request: GenerateRequest,
    ) -> Result<EventStream, SubmitError> {
        let addr = match self.prefill_address(prefill) {
            Ok(addr) => addr,
            Err(why) => {
                debug!(request = %header.request_id, %prefill, why, "prefilling locally");
                return self.submit_local(request);
            }
        };
        let mut tokens = request.prompt.clone();
        tokens.extend(&request.generated);
        let block_size = self.engine.kv_layout().block_size;
        // The last token is computed here to sample the first output token with this
        // worker's own sampler, so only full blocks before it travel.
        tokens.truncate((tokens.len() - 1) / block_size * block_size);
        if tokens.is_empty() {
            return self.submit_local(request);
        }
        let reservation = match self.engine.reserve_prefix(&tokens).await {
            Ok(r) if r.blocks_needed() > 0 => r,
            Ok(_) => return self.submit_local(request), // all of it is cached here already
            Err(e) => {
                kv_transfer_failed("reserve");
                warn!(request = %header.request_id, error = %e, "cannot reserve KV blocks; prefilling locally");
                return self.submit_local(request);
            }
        };
        let prefill_header = PrefillHeader {
            request_id: header.request_id.clone(),
            epoch: header.epoch,
            model: self.model.clone(),
            layout: self.engine.kv_layout(),
            tokens,
            from_block: reservation.first_block() as u32,
            deadline_ms: self.transfer.total.as_millis() as u64,
        };
        let pulled = tokio::select! {
            pulled = pull_prefix(
                &self.endpoint,
                addr,
                &prefill_header,
                &reservation,
                &self.transfer,
            ) => pulled,
            // A dead prefill peer is known here once the leader commits it Down (~300 ms),
            // long before its QUIC connection times out.
            () = node_leaves(self.raft.state(), prefill.node) => {
                kv_transfer_failed("prefill_peer_down");
                warn!(request = %header.request_id, %prefill, "the prefill peer went down during the transfer; prefilling locally");
                drop(reservation);
                return self.submit_local(request);
            }
        };
        match pulled {
            Ok(pulled) => {
                debug!(request = %header.request_id, %prefill, ?pulled, "prompt KV received");
                self.engine.submit_with_prefix(request, reservation)
            }
            Err(e) => {
                kv_transfer_failed(e.reason());
                warn!(request = %header.request_id, %prefill, error = %e, "KV transfer failed; prefilling locally");
                drop(reservation);
                self.submit_local(request)
            }
        }
    }

    /// Where to reach `prefill`, if it is an active prefill worker on a live peer.
    fn prefill_address(&self, prefill: WorkerId) -> Result<std::net::SocketAddr, &'static str> {
        if prefill.node == self.me.node {
            return Err("the prefill worker is this peer");
        }
        let state = self.raft.state();
        let state = state.borrow();
        let worker = state
            .workers
            .get(&prefill)
            .ok_or("unknown prefill worker")?;
        if worker.role != WorkerRole::Prefill || worker.state != WorkerState::Active {
            return Err("not an active prefill worker");
        }
        let node = state.nodes.get(&prefill.node).ok_or("unknown node")?;
        if node.status != NodeStatus::Up {
            return Err("its peer is not up");
        }
        node.quic_addr
            .parse()
            .map_err(|_| "unparsable peer address")
    }

    async fn await_lease(
        &self,
        header: &GenerateHeader,
        state: &mut watch::Receiver<Arc<ClusterState>>,
    ) -> Result<(), Stop> {
        let deadline = tokio::time::Instant::now() + self.lease_wait;
        loop {
            let now_standing = standing(
                &state.borrow_and_update(),
                &header.request_id,
                self.me,
                header.epoch,
                false,
            );
            match now_standing {
                LeaseStanding::Held => return Ok(()),
                LeaseStanding::Lost(why) => return Err(Stop::Refused("not_owner", why)),
                LeaseStanding::NotYet => {}
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() {
                    return Err(Stop::Refused("shutdown", "the peer is shutting down".into()));
                },
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Stop::Refused("no_lease", format!(
                        "no lease for {} at epoch {} on worker {} within {:?}",
                        header.request_id, header.epoch, self.me, self.lease_wait
                    )));
                }
            }
        }
    }

    /// Holds the stream (the engine keeps its tokens) while this peer is fenced. Contact coming
    /// back proves the local state is current, so the lease check that follows it is decisive:
    /// a lease that moved during a freeze ends the stream without one more token sent.
    async fn hold_while_fenced(
        &self,
        header: &GenerateHeader,
        state: &mut watch::Receiver<Arc<ClusterState>>,
    ) -> Result<(), Stop> {
        if !self.fence.is_fenced() {
            return Ok(());
        }
        metrics::counter!("stator_worker_fence_holds_total").increment(1);
        let give_up = tokio::time::Instant::now() + self.fenced_give_up;
        loop {
            // Fence first, then the state: contact proven before this look implies the state
            // read below includes every lease change committed before that contact.
            let unfenced = !self.fence.is_fenced();
            self.still_held(header, &state.borrow_and_update())?;
            if unfenced {
                return Ok(());
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(Stop::Refused(
                    "fenced",
                    format!("no quorum contact for {:?}", self.fenced_give_up),
                ));
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() {
                    return Err(Stop::Refused("shutdown", "the peer is shutting down".into()));
                },
                _ = tokio::time::sleep(self.fence_check) => {}
            }
        }
    }

    fn still_held(&self, header: &GenerateHeader, state: &ClusterState) -> Result<(), Stop> {
        match standing(state, &header.request_id, self.me, header.epoch, true) {
            LeaseStanding::Held => Ok(()),
            LeaseStanding::Lost(why) => Err(Stop::Refused("lease_moved", why)),
            LeaseStanding::NotYet => Err(Stop::Refused(
                "lease_moved",
                "the lease went back to an older epoch".into(),
            )),
        }
    }
}

fn kv_transfer_failed(reason: &'static str) {
    metrics::counter!("stator_kv_transfer_failures_total", "reason" => reason).increment(1);
}

/// Resolves once `node` is no longer `Up` in the replicated state (or the state ends).
async fn node_leaves(mut state: watch::Receiver<Arc<ClusterState>>, node: u64) {
    loop {
        let up = state
            .borrow_and_update()
            .nodes
            .get(&node)
            .is_some_and(|n| n.status == NodeStatus::Up);
        if !up || state.changed().await.is_err() {
            return;
        }
    }
}
