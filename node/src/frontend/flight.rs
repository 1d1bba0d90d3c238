//! One request in flight: streams it from its lease owner, forwards each token index once, and
//! resumes it on the next owner when the lease moves or the stream breaks.

use std::net::SocketAddr;
use std::sync::Arc;

use stator_gpu::request::{EngineEvent, GenerateRequest};
use stator_raft::model::{Applied, ClusterState, Command, CommandError, NodeStatus, WorkerId};
use stator_transport::{FramedRecv, FramedSend};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::remote::Shared;
use crate::leases::stream::{Offer, StreamReconciler};
use crate::openai::source::GenerateError;
use crate::router::Decision;
use crate::worker::wire::{GenerateHeader, WorkerFrame, GENERATE_STREAM};

/// Where the lease of a request stands in the replicated state, seen from its frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum LeaseView {
    /// Still `epoch` at its owner.
    Unchanged,
    /// Reassigned (by the leader, or by this frontend) to `owner` at a newer `epoch`.
    Moved { owner: WorkerId, epoch: u64 },
    /// Released or never granted: nobody may stream it.
    Gone,
}

pub(super) fn lease_view(state: &ClusterState, request_id: &str, epoch: u64) -> LeaseView {
    match state.leases.get(request_id) {
        None => LeaseView::Gone,
        Some(l) if l.epoch > epoch => LeaseView::Moved {
            owner: l.owner,
            epoch: l.epoch,
        },
        Some(_) => LeaseView::Unchanged,
    }
}

/// How one attempt on one owner ended.
#[derive(Debug)]
enum Attempt {
    /// `Finished` or `Failed` reached the client.
    Ended,
    ClientGone,
    /// The lease moved on: resume on the new owner.
    Moved {
        owner: WorkerId,
        epoch: u64,
    },
    /// The owner's stream broke; `reason` labels the migration metric.
    Broken(&'static str, String),
    /// The first owner's engine would not admit the request; its caller has been told.
    Rejected,
}

pub(super) struct Flight {
    shared: Arc<Shared>,
    request_id: String,
    owner: WorkerId,
    epoch: u64,
    /// The prefill worker for the first attempt; a resumed stream re-prefills on its owner.
    prefill: Option<WorkerId>,
    /// The router's first decision, whose in-flight accounting is released at the end.
    routed: Decision,
    request: GenerateRequest,
    delivered: Vec<u32>,
    reconciler: StreamReconciler,
    migrations: u32,
    /// Answered once: `Ok` when the first engine admits the request, the mapped error when it
    /// rejects it before that (the client then gets 429/400, as from a local engine).
    admission: Option<oneshot::Sender<Result<(), GenerateError>>>,
    /// The lease grant, still committing: the first attempt opens the worker's stream while it
    /// does (the worker prefills meanwhile but sends nothing before it sees the lease), so the
    /// grant's commit is off the request's critical path.
    grant: Option<GrantFuture>,
    /// Whether the lease was granted (and so must be released at the end).
    granted: bool,
}

/// A lease grant being committed (its own task, so it runs from the start); its epoch, or
/// why the request cannot run. The first attempt always awaits it.
pub(super) type GrantFuture = tokio::task::JoinHandle<Result<u64, GenerateError>>;

/// Every granted lease starts at this epoch (`Command::GrantLease`).
pub(super) const FIRST_EPOCH: u64 = 1;

impl Flight {
    pub fn new(
        shared: Arc<Shared>,
        request_id: String,
        decision: Decision,
        grant: GrantFuture,
        request: GenerateRequest,
        admission: oneshot::Sender<Result<(), GenerateError>>,
    ) -> Self {
        let epoch = FIRST_EPOCH;
        Self {
            shared,
            request_id,
            owner: decision.decode,
            epoch,
            prefill: decision.prefill,
            routed: decision,
            delivered: request.generated.clone(),
            reconciler: {
                let mut r = StreamReconciler::new(epoch);
                // Tokens the caller supplied as already generated are never re-sent.
                for i in 0..request.generated.len() {
                    let _ = r.offer(epoch, i);
                }
                r
            },
            request,
            migrations: 0,
            admission: Some(admission),
            grant: Some(grant),
            granted: false,
        }
    }

    /// Runs the request to its end, then releases the lease.
    pub async fn fly(mut self, tx: mpsc::Sender<EngineEvent>) {
        loop {
            let (reason, detail) = match self.attempt(&tx).await {
                Attempt::Ended | Attempt::ClientGone | Attempt::Rejected => break,
                Attempt::Moved { owner, epoch } => {
                    self.adopt(owner, epoch);
                    (
                        "reassigned",
                        format!("lease moved to {owner} at epoch {epoch}"),
                    )
                }
                Attempt::Broken(reason, detail) => match self.find_new_owner().await {
                    Ok(()) => (reason, detail),
                    Err(why) => {
                        self.fail(&tx, format!("{detail}; {why}")).await;
                        break;
                    }
                },
            };
            self.migrations += 1;
            metrics::counter!("stator_migration_total", "reason" => reason).increment(1);
            info!(request = %self.request_id, reason, %detail, to = %self.owner, epoch = self.epoch, delivered = self.delivered.len(), "migrating request");
            if self.migrations > self.shared.cfg.migration_limit {
                let message = format!(
                    "request gave up after {} migrations, the --migration-limit (last: {detail})",
                    self.shared.cfg.migration_limit
                );
                self.fail(&tx, message).await;
                break;
            }
        }
        self.shared
            .release_route(&self.routed, self.request.prompt.len());
        if self.granted {
            self.release().await;
        }
    }

    /// Opens the owner's `worker.generate` stream and sends the request.
    async fn open_stream(&self, addr: SocketAddr) -> Result<(FramedSend, FramedRecv), String> {
        let (mut send, mut recv) = self
            .shared
            .endpoint
            .open_stream(addr, GENERATE_STREAM)
            .await
            .map_err(|e| e.to_string())?;
        recv.set_frame_timeout(self.shared.cfg.frame_timeout);
        let mut request = self.request.clone();
        request.generated = self.delivered.clone();
        let header = GenerateHeader {
            request_id: self.request_id.clone(),
            epoch: self.epoch,
            request,
            prefill: self.prefill,
        };
        send.send(&header).await.map_err(|e| e.to_string())?;
        Ok((send, recv))
    }

    /// Records the grant's outcome; a refused grant ends the request with its error.
    fn settle_grant(&mut self, granted: Result<u64, GenerateError>) -> Result<(), Attempt> {
        let refused = match granted {
            Ok(epoch) if epoch == self.epoch => {
                self.granted = true;
                metrics::gauge!("stator_leases_active").increment(1.0);
                return Ok(());
            }
            Ok(epoch) => {
                // Never happens: a grant always starts at the first epoch. Release what we got.
                self.granted = true;
                self.epoch = epoch;
                metrics::gauge!("stator_leases_active").increment(1.0);
                GenerateError::Unavailable(format!("the lease was granted at epoch {epoch}"))
            }
            Err(e) => e,
        };
        if let Some(admission) = self.admission.take() {
            let _ = admission.send(Err(refused));
        }
        Err(Attempt::Rejected)
    }

    fn admitted(&mut self) {
        if let Some(admission) = self.admission.take() {
            let _ = admission.send(Ok(()));
        }
    }

    fn adopt(&mut self, owner: WorkerId, epoch: u64) {
        self.owner = owner;
        self.prefill = None;
        self.epoch = epoch;
        self.reconciler.advance_epoch(epoch);
    }

    async fn fail(&self, tx: &mpsc::Sender<EngineEvent>, message: String) {
        warn!(request = %self.request_id, %message, "request failed");
        let _ = tx.send(EngineEvent::Failed { message }).await;
    }

    async fn attempt(&mut self, tx: &mpsc::Sender<EngineEvent>) -> Attempt {
        let mut state = self.shared.raft.state();
        let grant = self.grant.take();
        if grant.is_none() {
            let view = lease_view(&state.borrow_and_update(), &self.request_id, self.epoch);
            match view {
                LeaseView::Unchanged => {}
                LeaseView::Moved { owner, epoch } => return Attempt::Moved { owner, epoch },
                LeaseView::Gone => {
                    return Attempt::Broken("lease_lost", "the lease was released".into())
                }
            }
        }
        let Some(addr) = owner_addr(&state.borrow(), self.owner) else {
            if let Some(grant) = grant {
                // Nothing to overlap with: settle the grant first, so the lease is known.
                if let Err(attempt) = self.settle_grant(joined(grant.await)) {
                    return attempt;
                }
            }
            return Attempt::Broken(
                "no_address",
                format!("no address for worker {}", self.owner),
            );
        };
        let opened = match grant {
            None => self.open_stream(addr).await,
            Some(grant) => {
                let (opened, granted) = tokio::join!(self.open_stream(addr), grant);
                if let Err(attempt) = self.settle_grant(joined(granted)) {
                    return attempt;
                }
                // The grant's own change is not news for the lease watch below.
                state.borrow_and_update();
                opened
            }
        };
        let (_send, mut recv) = match opened {
            Ok(halves) => halves,
            Err(e) => return Attempt::Broken("connect", e),
        };
        if tx.is_closed() {
            return Attempt::ClientGone;
        }
        loop {
            let frame = tokio::select! {
                _ = tx.closed() => return Attempt::ClientGone,
                changed = state.changed() => {
                    if changed.is_err() {
                        return Attempt::Broken("shutdown", "the peer is shutting down".into());
                    }
                    let view = lease_view(&state.borrow_and_update(), &self.request_id, self.epoch);
                    match view {
                        LeaseView::Unchanged => continue,
                        // Dropping `recv` here cuts the old owner off: its later tokens cannot
                        // reach this client.
                        LeaseView::Moved { owner, epoch } => return Attempt::Moved { owner, epoch },
                        LeaseView::Gone => return Attempt::Broken("lease_lost", "the lease was released".into()),
                    }
                }
                frame = recv.recv::<WorkerFrame>() => frame,
            };
            let event = match frame {
                Ok(Some(WorkerFrame::Accepted)) => {
                    self.admitted();
                    continue;
                }
                Ok(Some(WorkerFrame::Rejected(rejection))) => match self.admission.take() {
                    Some(admission) => {
                        let _ = admission.send(Err(rejection.into()));
                        return Attempt::Rejected;
                    }
                    // A resumed request is not the client's to retry: try another worker.
                    None => return Attempt::Broken("rejected", rejection.to_string()),
                },
                Ok(Some(WorkerFrame::Event(event))) => {
                    self.admitted();
                    event
                }
                Ok(Some(WorkerFrame::Refused(why))) => return Attempt::Broken("refused", why),
                Ok(None) => {
                    return Attempt::Broken(
                        "stream_ended",
                        "the worker ended the stream early".into(),
                    )
                }
                Err(e) => return Attempt::Broken("stream_error", e.to_string()),
            };
            let forward = match event {
                EngineEvent::Token {
                    index,
                    token,
                    logprobs,
                } => match self.reconciler.offer(self.epoch, index) {
                    Offer::Forward => {
                        self.delivered.push(token);
                        EngineEvent::Token {
                            index,
                            token,
                            logprobs,
                        }
                    }
                    Offer::Duplicate | Offer::Stale => continue,
                    Offer::Gap => {
                        return Attempt::Broken(
                            "gap",
                            format!(
                                "token {index} arrived, {} expected",
                                self.reconciler.next_index()
                            ),
                        )
                    }
                },
                EngineEvent::Finished {
                    reason,
                    cached_tokens,
                    ..
                } => EngineEvent::Finished {
                    reason,
                    // A resumed worker counts delivered tokens as prompt; the client's request
                    // had only its own prompt.
                    prompt_tokens: self.request.prompt.len(),
                    completion_tokens: self.delivered.len() - self.request.generated.len(),
                    cached_tokens: cached_tokens.min(self.request.prompt.len()),
                },
                failed @ EngineEvent::Failed { .. } => failed,
            };
            let last = !matches!(forward, EngineEvent::Token { .. });
            if tx.send(forward).await.is_err() {
                return Attempt::ClientGone;
            }
            if last {
                return Attempt::Ended;
            }
        }
    }

    /// After a broken stream: adopts the leader's reassignment when it comes within the grace
    /// period, else moves the lease itself (compare-and-set on the epoch) to another worker.
    async fn find_new_owner(&mut self) -> Result<(), String> {
        let cfg = self.shared.cfg.clone();
        let deadline = tokio::time::Instant::now() + cfg.reassign_deadline;
        let grace = tokio::time::Instant::now() + cfg.reassign_grace;
        let mut state = self.shared.raft.state();
        loop {
            let view = lease_view(&state.borrow_and_update(), &self.request_id, self.epoch);
            match view {
                LeaseView::Moved { owner, epoch } => {
                    self.adopt(owner, epoch);
                    return Ok(());
                }
                LeaseView::Gone => return Err("the lease was released".into()),
                LeaseView::Unchanged => {}
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(format!(
                    "no worker took the request within {:?}",
                    cfg.reassign_deadline
                ));
            }
            let owner_up = owner_is_up(&state.borrow(), self.owner);
            if now >= grace || !owner_up {
                match self.reassign_myself().await {
                    Ok(()) => return Ok(()),
                    Err(why) => {
                        debug!(request = %self.request_id, %why, "could not move the lease yet")
                    }
                }
            }
            let wake = if now >= grace {
                now + cfg.reassign_grace / 4
            } else {
                grace
            };
            tokio::select! {
                _ = state.changed() => {}
                _ = tokio::time::sleep_until(wake.min(deadline)) => {}
            }
        }
    }

    async fn reassign_myself(&mut self) -> Result<(), String> {
        let decision = self
            .shared
            .route(&self.request.prompt, Some(self.owner))
            .map_err(|_| "no other worker is available".to_string())?;
        let new_owner = decision.decode;
        let cmd = Command::ReassignLease {
            request_id: self.request_id.clone(),
            new_owner,
            expected_epoch: self.epoch,
        };
        let outcome = self.shared.raft.write(vec![cmd]).await;
        self.shared
            .release_route(&decision, self.request.prompt.len());
        match outcome
            .map_err(|e| e.to_string())?
            .results
            .into_iter()
            .next()
        {
            Some(Ok(Applied::LeaseReassigned { epoch })) => {
                self.adopt(new_owner, epoch);
                Ok(())
            }
            // Someone (the leader) moved it first: the next look at the state adopts that.
            Some(Err(CommandError::EpochMismatch { .. })) => {
                Err("the lease moved meanwhile".into())
            }
            other => Err(format!("reassignment refused: {other:?}")),
        }
    }

    async fn release(&self) {
        let cmd = Command::ReleaseLease {
            request_id: self.request_id.clone(),
            epoch: self.epoch,
        };
        metrics::gauge!("stator_leases_active").decrement(1.0);
        if let Err(e) = self.shared.raft.write(vec![cmd]).await {
            // The lease stays until its owner's peer goes down or the request id is reused; the
            // worker already stopped streaming it.
            warn!(request = %self.request_id, error = %e, "could not release the lease");
        }
    }
}

fn joined(
    grant: Result<Result<u64, GenerateError>, tokio::task::JoinError>,
) -> Result<u64, GenerateError> {
    grant.unwrap_or_else(|e| {
        Err(GenerateError::Unavailable(format!(
            "the lease grant failed: {e}"
        )))
    })
}

fn owner_addr(state: &ClusterState, owner: WorkerId) -> Option<SocketAddr> {
    state.nodes.get(&owner.node)?.quic_addr.parse().ok()
}

fn owner_is_up(state: &ClusterState, owner: WorkerId) -> bool {
    state
        .nodes
        .get(&owner.node)
        .is_some_and(|n| n.status == NodeStatus::Up)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stator_raft::model::Lease;

    #[test]
    fn the_frontend_sees_a_reassignment_as_a_move_and_a_release_as_gone() {
        let owner = WorkerId { node: 2, slot: 0 };
        let mut s = ClusterState::default();
        s.leases.insert(
            "r".into(),
            Lease {
                owner,
                epoch: 1,
                frontend: 1,
                granted_at_ms: 0,
            },
        );
        assert_eq!(lease_view(&s, "r", 1), LeaseView::Unchanged);
        let moved_to = WorkerId { node: 3, slot: 0 };
        if let Some(l) = s.leases.get_mut("r") {
            l.owner = moved_to;
            l.epoch = 2;
        }
        assert_eq!(
            lease_view(&s, "r", 1),
            LeaseView::Moved {
                owner: moved_to,
                epoch: 2
            }
        );
        s.leases.clear();
        assert_eq!(lease_view(&s, "r", 2), LeaseView::Gone);
    }
}
