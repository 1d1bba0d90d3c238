//! [`RaftNode`]: the façade the binary uses. Writes are batched, forwarded to the leader when
//! needed, and return once applied; reads come from the local copy of the state.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::InitializeError;
use openraft::{Raft, RaftMetrics};
use parking_lot::Mutex;
use stator_transport::{Endpoint, Method, RpcError};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::RaftConfig;
use crate::error::{RaftError, RemoteError};
use crate::export::spawn_exporter;
use crate::leader;
use crate::model::{ClusterState, Command};
use crate::network::{resolve_peer, TransportNetworkFactory};
use crate::rpc::{
    ForwardMethod, MembershipChange, MembershipMethod, ReadIndexMethod, WriteOutcome,
};
use crate::server::register_handlers;
use crate::store::{open_db, open_stores, SledLogStore};
use crate::types::{NodeId, PeerAddr, TypeConfig};
use crate::writer::{spawn_writer, submit, Origin, Submission, Visibility};

/// Submissions waiting for the writer; beyond this, `write` waits (within its deadline).
const WRITE_QUEUE_DEPTH: usize = 4096;
/// Extra time `write` grants the writer beyond the write timeout (batch window, scheduling),
/// so that the writer's own, more precise error arrives first.
pub(crate) const WRITE_REPLY_GRACE: Duration = Duration::from_millis(250);
/// Bound on each shutdown step (stopping the core, flushing storage).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// What request handlers and the writer need; shared, and held weakly by handlers.
pub(crate) struct NodeCore {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) endpoint: Endpoint,
    pub(crate) cfg: RaftConfig,
    stopped: AtomicBool,
}

pub struct RaftNode {
    core: Arc<NodeCore>,
    writer: Mutex<Option<mpsc::Sender<Submission>>>,
    state: watch::Receiver<Arc<ClusterState>>,
    log_store: SledLogStore,
    db: sled::Db,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl RaftNode {
    /// Opens (or creates) this node's Raft storage under `data_dir/raft` and starts Raft; the
    /// endpoint starts serving the Raft methods. `node_id` must be the endpoint's node id.
    pub async fn open(
        data_dir: &Path,
        node_id: NodeId,
        endpoint: Endpoint,
        cfg: RaftConfig,
    ) -> Result<Self, RaftError> {
        if endpoint.node_id() != node_id {
            return Err(RaftError::Config(format!(
                "node id {node_id} differs from the endpoint's certificate id {}",
                endpoint.node_id()
            )));
        }
        let openraft_config = Arc::new(cfg.to_openraft()?);
        let db = open_db(&data_dir.join("raft")).await?;
        let (log_store, state_machine) = open_stores(&db)?;
        let state = state_machine.subscribe();
        let raft = Raft::new(
            node_id,
            openraft_config,
            TransportNetworkFactory::new(endpoint.clone()),
            log_store.clone(),
            state_machine,
        )
        .await
        .map_err(|e| RaftError::Storage(e.to_string()))?;
        // A round trip through the core guarantees its metrics already reflect the stored
        // state, so `is_initialized` is right from the start.
        raft.is_initialized()
            .await
            .map_err(|e| RaftError::Storage(e.to_string()))?;

        let core = Arc::new(NodeCore {
            id: node_id,
            raft,
            endpoint: endpoint.clone(),
            cfg: cfg.clone(),
            stopped: AtomicBool::new(false),
        });
        let (writer_tx, writer_rx) = mpsc::channel(WRITE_QUEUE_DEPTH);
        register_handlers(&endpoint, Arc::downgrade(&core), writer_tx.downgrade());
        let tasks = vec![
            spawn_writer(core.clone(), writer_rx, cfg.max_batches_in_flight),
            spawn_exporter(core.raft.metrics(), log_store.committed_index()),
        ];
        tracing::info!(node_id, dir = %data_dir.display(), "raft node open");
        Ok(Self {
            core,
            writer: Mutex::new(Some(writer_tx)),
            state,
            log_store,
            db,
            tasks: Mutex::new(tasks),
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.core.id
    }

    /// True once this node's log holds a membership (bootstrapped, or joined and replicated).
    pub fn is_initialized(&self) -> bool {
        self.core
            .raft
            .metrics()
            .borrow()
            .membership_config
            .log_id()
            .is_some()
    }

    /// Makes this node a one-node cluster and waits until it leads and has applied its own
    /// log, so that the first membership change (a join) is not refused as overlapping the
    /// bootstrap membership.
    pub async fn bootstrap(&self, self_addr: PeerAddr) -> Result<(), RaftError> {
        let members = BTreeMap::from([(self.core.id, self_addr)]);
        match self.core.raft.initialize(members).await {
            Ok(()) => {}
            Err(openraft::error::RaftError::APIError(InitializeError::NotAllowed(_))) => {
                return Err(RaftError::AlreadyInitialized)
            }
            Err(e) => return Err(RaftError::Rejected(e.to_string())),
        }
        let timeout = self.core.cfg.write_timeout;
        self.core
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| {
                    m.current_leader == Some(m.id)
                        && m.last_log_index.is_some()
                        && m.last_applied.map(|id| id.index) >= m.last_log_index
                },
                "bootstrap",
            )
            .await
            .map_err(|_| RaftError::Timeout {
                what: "becoming leader after bootstrap",
                after: timeout,
            })?;
        Ok(())
    }

    /// Submits commands. They are coalesced with other writes from this node into one log
    /// entry, forwarded to the leader when this node is not the leader. Returns once the
    /// entry is committed and applied on this node, so that [`RaftNode::state`] already shows
    /// it, with this write's per-command results.
    pub async fn write(&self, cmds: Vec<Command>) -> Result<WriteOutcome, RaftError> {
        self.submit(cmds, Visibility::AppliedHere).await
    }

    /// Like [`RaftNode::write`], but returns as soon as the entry is committed (durable on a
    /// quorum, applied on the leader), without waiting for this node to apply it. For callers
    /// that only need the acknowledgement: a follower learns of the commit one replication
    /// round later, which under load doubled a forwarded write's latency. Reads through
    /// [`RaftNode::linearizable_barrier`] still see the write.
    pub async fn write_committed(&self, cmds: Vec<Command>) -> Result<WriteOutcome, RaftError> {
        self.submit(cmds, Visibility::Committed).await
    }

    async fn submit(
        &self,
        cmds: Vec<Command>,
        visible: Visibility,
    ) -> Result<WriteOutcome, RaftError> {
        if cmds.is_empty() {
            return Err(RaftError::Rejected(
                "a write needs at least one command".to_owned(),
            ));
        }
        let writer = self.writer.lock().clone().ok_or(RaftError::ShuttingDown)?;
        // The writer takes up to the write timeout to commit, and again to apply locally.
        let deadline = self.core.cfg.write_timeout * 2 + WRITE_REPLY_GRACE;
        submit(&writer, cmds, visible, Origin::Local, deadline).await
    }

    /// Adds `id` as a learner and waits until it has caught up (leader-only; forwarded).
    pub async fn add_learner(&self, id: NodeId, addr: PeerAddr) -> Result<(), RaftError> {
        self.change_membership(MembershipChange::AddLearner { id, addr })
            .await
    }

    /// Makes exactly `voters` the voting members; former voters stay as learners.
    pub async fn change_voters(&self, voters: BTreeSet<NodeId>) -> Result<(), RaftError> {
        self.change_membership(MembershipChange::ChangeVoters { voters })
            .await
    }

    /// Removes `id` from the membership (voter or learner); a no-op for non-members.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), RaftError> {
        self.change_membership(MembershipChange::RemoveMember { id })
            .await
    }

    /// The live replicated state as applied on this node.
    pub fn state(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.clone()
    }

    pub fn metrics(&self) -> watch::Receiver<RaftMetrics<NodeId, PeerAddr>> {
        self.core.raft.metrics()
    }

    pub fn leader(&self) -> Option<(NodeId, PeerAddr)> {
        let metrics = self.core.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader?;
        let addr = leader::member_addr(&m.membership_config, id)?;
        Some((id, addr))
    }

    pub fn is_leader(&self) -> bool {
        self.core.raft.metrics().borrow().current_leader == Some(self.core.id)
    }

    /// (voters, learners) of the latest membership this node knows.
    pub fn membership(&self) -> (BTreeSet<NodeId>, BTreeSet<NodeId>) {
        leader::members(&self.core.raft.metrics().borrow().membership_config)
    }

    /// Waits until this node has applied everything committed before the call (read index
    /// from the leader) and returns its applied index; a read of [`RaftNode::state`] after
    /// this sees every write acknowledged before the call.
    pub async fn linearizable_barrier(&self) -> Result<u64, RaftError> {
        let timeout = self.core.cfg.write_timeout;
        let started = Instant::now();
        let raft = &self.core.raft;
        let read_index = self
            .core
            .on_leader::<ReadIndexMethod, _, _, _>("read index", &(), timeout, |left| {
                leader::read_index(raft, left)
            })
            .await?;
        let left = timeout.saturating_sub(started.elapsed());
        self.core.wait_applied(read_index, left).await
    }

    /// Entries currently kept in the log (bounded by snapshots + purging).
    pub fn log_entries_kept(&self) -> usize {
        self.log_store.len()
    }

    /// Stops Raft and the writer and flushes storage; pending writes fail with
    /// [`RaftError::ShuttingDown`]. The data dir can be reopened once this node is dropped.
    pub async fn shutdown(&self) {
        self.core.stopped.store(true, Ordering::SeqCst);
        self.writer.lock().take();
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, self.core.raft.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "raft core ended abnormally"),
            Err(_) => tracing::warn!("raft core did not stop within {SHUTDOWN_TIMEOUT:?}"),
        }
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, self.db.flush_async()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing raft db at shutdown failed"),
            Err(_) => tracing::warn!("flushing raft db did not finish within {SHUTDOWN_TIMEOUT:?}"),
        }
        tracing::info!(node_id = self.core.id, "raft node shut down");
    }

    async fn change_membership(&self, change: MembershipChange) -> Result<(), RaftError> {
        let timeout = self.core.cfg.membership_timeout;
        let raft = &self.core.raft;
        self.core
            .on_leader::<MembershipMethod, _, _, _>("membership change", &change, timeout, |left| {
                leader::change_membership(raft, change.clone(), left)
            })
            .await
    }
}

impl NodeCore {
    pub(crate) async fn wait_applied(
        &self,
        index: u64,
        timeout: Duration,
    ) -> Result<u64, RaftError> {
        let metrics = self
            .raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "applied")
            .await
            .map_err(|e| match e {
                openraft::metrics::WaitError::Timeout(_, _) => RaftError::Timeout {
                    what: "applying locally",
                    after: timeout,
                },
                openraft::metrics::WaitError::ShuttingDown => RaftError::ShuttingDown,
            })?;
        Ok(metrics.last_applied.map(|id| id.index).unwrap_or(0))
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Proposes one batch on the leader (here or forwarded).
    pub(crate) async fn write_batch(&self, cmds: Vec<Command>) -> Result<WriteOutcome, RaftError> {
        let timeout = self.cfg.write_timeout;
        let raft = &self.raft;
        self.on_leader::<ForwardMethod, _, _, _>("raft write", &cmds, timeout, |left| {
            leader::propose(raft, cmds.clone(), left)
        })
        .await
    }

    /// Runs `local` when this node leads, otherwise calls `M` on the leader. Retries once
    /// when the leader changed under us (it answered NotLeader) or could not be reached; a
    /// timeout is not retried, since the request may have been applied, and a call whose
    /// leader is replaced while it waits ends with [`RaftError::LeaderReplaced`].
    async fn on_leader<M, T, F, Fut>(
        &self,
        what: &'static str,
        req: &M::Request,
        timeout: Duration,
        local: F,
    ) -> Result<T, RaftError>
    where
        M: Method<Response = Result<T, RemoteError>>,
        F: Fn(Duration) -> Fut,
        Fut: Future<Output = Result<T, RemoteError>>,
    {
        if self.is_stopped() {
            return Err(RaftError::ShuttingDown);
        }
        let deadline = Instant::now() + timeout;
        let timed_out = RaftError::Timeout {
            what,
            after: timeout,
        };
        let mut avoid: Option<(NodeId, u64)> = None;
        let mut retried = false;
        loop {
            let (leader_id, addr) = self.wait_for_leader(deadline, avoid).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = if leader_id == self.id {
                local(left).await
            } else {
                let term = self.current_term();
                // A leader that died keeps the call waiting until its deadline; once this
                // node knows the next leader, answer now so the caller can retry there.
                let called = tokio::select! {
                    called = self.call_leader::<M>(&addr, req, left) => called,
                    () = self.leader_replaced(leader_id, term) => {
                        tracing::debug!(leader_id, what, "leader replaced during the call");
                        return Err(RaftError::LeaderReplaced { leader: leader_id });
                    }
                };
                match called {
                    Ok(answer) => answer,
                    // A closed connection says nothing about leadership (a pooled connection
                    // to a restarted leader closes too): retry on whichever leader is known;
                    // a dead one is given up as soon as its successor is known (above).
                    Err(RpcError::Connect(_) | RpcError::Closed(_)) if !retried => {
                        tracing::debug!(leader_id, what, "leader unreachable, retrying once");
                        retried = true;
                        avoid = None;
                        continue;
                    }
                    Err(RpcError::Timeout) => return Err(timed_out),
                    Err(e) => return Err(RaftError::Transport(e)),
                }
            };
            match answer {
                Err(RemoteError::NotLeader { .. }) if !retried => {
                    tracing::debug!(leader_id, what, "leader changed, retrying once");
                    retried = true;
                    avoid = Some((leader_id, self.current_term()));
                }
                Err(RemoteError::NotLeader { .. }) => return Err(RaftError::NoLeader),
                Err(RemoteError::Timeout) => return Err(timed_out),
                other => return other.map_err(RaftError::Remote),
            }
        }
    }

    async fn call_leader<M: Method>(
        &self,
        addr: &PeerAddr,
        req: &M::Request,
        timeout: Duration,
    ) -> Result<M::Response, RpcError> {
        let sock = resolve_peer(&addr.quic).await?;
        self.endpoint.call_timeout::<M>(sock, req, timeout).await
    }

    /// Resolves once this node knows a leader other than `leader` of `term`: another node,
    /// or `leader` again in a later term (it restarted and was re-elected).
    async fn leader_replaced(&self, leader: NodeId, term: u64) {
        // Server metrics change only with the vote, the leader or the membership; the full
        // metrics change with every entry, which would wake this wait several times per write.
        let mut metrics = self.raft.server_metrics();
        loop {
            {
                let m = metrics.borrow_and_update();
                if let Some(now) = m.current_leader {
                    if now != leader || m.vote.leader_id().get_term() > term {
                        return;
                    }
                }
            }
            if metrics.changed().await.is_err() {
                // Raft stopped: nothing will change any more; the call's own deadline rules.
                std::future::pending::<()>().await;
            }
        }
    }

    /// The term of the persisted vote, the one `server_metrics` reports: the leader waits
    /// above compare against it, and the full metrics' `current_term` (the in-memory vote)
    /// can differ from it.
    fn current_term(&self) -> u64 {
        self.raft
            .server_metrics()
            .borrow()
            .vote
            .leader_id()
            .get_term()
    }

    /// Waits for a known leader; with `avoid = (id, term)`, a leader other than `id`, or `id`
    /// again in a later term.
    async fn wait_for_leader(
        &self,
        deadline: Instant,
        avoid: Option<(NodeId, u64)>,
    ) -> Result<(NodeId, PeerAddr), RaftError> {
        let mut metrics = self.raft.server_metrics();
        loop {
            {
                let m = metrics.borrow_and_update();
                if let Some(id) = m.current_leader {
                    let acceptable = match avoid {
                        Some((bad, term)) => id != bad || m.vote.leader_id().get_term() > term,
                        None => true,
                    };
                    if acceptable {
                        if let Some(addr) = leader::member_addr(&m.membership_config, id) {
                            return Ok((id, addr));
                        }
                    }
                }
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Err(_) => return Err(RaftError::NoLeader),
                Ok(Err(_)) => return Err(RaftError::ShuttingDown),
                Ok(Ok(())) => {}
            }
        }
    }
}
