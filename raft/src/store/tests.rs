//! The store under openraft itself: a leader replicates before its own flush (patched
//! openraft, `vendor/README.md`) but must never count an entry it has not flushed.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError as OpenRaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::Raft;

use super::flusher::{flush_sled, FlushFn, Flusher};
use super::{SledLogStore, SledStateMachine};
use crate::config::RaftConfig;
use crate::model::{Batch, Command};
use crate::types::{NodeId, PeerAddr, TypeConfig};

const WAIT: Duration = Duration::from_secs(10);

/// The other members, simulated: they grant every vote and accept every append, and
/// remember the highest log index they were sent. A one-member cluster never calls them.
#[derive(Clone, Default)]
struct AgreeablePeers {
    highest_sent: Arc<Mutex<u64>>,
}

impl RaftNetworkFactory<TypeConfig> for AgreeablePeers {
    type Network = AgreeablePeers;

    async fn new_client(&mut self, _target: NodeId, _node: &PeerAddr) -> AgreeablePeers {
        self.clone()
    }
}

impl RaftNetwork<TypeConfig> for AgreeablePeers {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, PeerAddr, OpenRaftError<NodeId>>>
    {
        if let Some(last) = rpc.entries.last() {
            let mut highest = self.highest_sent.lock().expect("lock");
            *highest = (*highest).max(last.log_id.index);
        }
        Ok(AppendEntriesResponse::Success)
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, PeerAddr, OpenRaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(RPCError::Unreachable(Unreachable::new(&io::Error::other(
            "no snapshots in this test",
        ))))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, PeerAddr, OpenRaftError<NodeId>>> {
        Ok(VoteResponse::new(rpc.vote, None, true))
    }
}

/// Holds the log's flushes back while closed.
#[derive(Clone, Default)]
struct FlushGate(Arc<(Mutex<bool>, Condvar)>);

impl FlushGate {
    fn set_open(&self, open: bool) {
        *self.0 .0.lock().expect("gate lock") = open;
        self.0 .1.notify_all();
    }

    fn flush_fn(&self) -> FlushFn {
        let gate = self.clone();
        Arc::new(move |tree: &sled::Tree| {
            let (open, changed) = &*gate.0;
            let guard = open.lock().expect("gate lock");
            let (_guard, waited) = changed
                .wait_timeout_while(guard, WAIT, |open| !*open)
                .expect("gate lock");
            if waited.timed_out() {
                return Err(io::Error::other("flush gate never opened"));
            }
            flush_sled(tree)
        })
    }
}

struct Cluster {
    raft: Raft<TypeConfig>,
    gate: FlushGate,
    peers: AgreeablePeers,
    _dir: tempfile::TempDir,
}

/// Node 1 on a real sled store whose flushes `gate` holds back, leading `members` (1 and
/// simulated others), with its own log applied.
async fn leader_of(members: &[NodeId]) -> Cluster {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sled::open(dir.path()).expect("sled");
    let tree = |name: &str| db.open_tree(name).expect("tree");
    let gate = FlushGate::default();
    gate.set_open(true);
    let flusher = Flusher::start_with(gate.flush_fn()).expect("flusher");
    let log_store = SledLogStore::with_flusher(tree("raft_log"), tree("raft_meta"), flusher);
    let state_machine = SledStateMachine::open(tree("snapshot")).expect("state machine");
    let config = RaftConfig::default().to_openraft().expect("config");
    let peers = AgreeablePeers::default();
    let raft = Raft::new(1, Arc::new(config), peers.clone(), log_store, state_machine)
        .await
        .expect("raft");
    let addr = |id: &NodeId| PeerAddr {
        quic: format!("127.0.0.1:{id}"),
    };
    let voters = members
        .iter()
        .map(|id| (*id, addr(id)))
        .collect::<BTreeMap<_, _>>();
    raft.initialize(voters).await.expect("initialize");
    raft.wait(Some(WAIT))
        .metrics(
            |m| {
                m.current_leader == Some(1)
                    && m.last_log_index.is_some()
                    && m.last_applied.map(|id| id.index) >= m.last_log_index
            },
            "leading, own log applied",
        )
        .await
        .expect("leader");
    Cluster {
        raft,
        gate,
        peers,
        _dir: dir,
    }
}

fn put() -> Batch {
    Batch(vec![Command::PutMeta {
        key: "k".to_owned(),
        value: "v".to_owned(),
    }])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_leader_acknowledges_a_write_only_once_its_own_flush_is_done() {
    let c = leader_of(&[1]).await;
    c.gate.set_open(false);
    let writer = c.raft.clone();
    let write = tokio::spawn(async move { writer.client_write(put()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !write.is_finished(),
        "the write was acknowledged while the leader's flush was held back"
    );

    c.gate.set_open(true);
    let written = tokio::time::timeout(WAIT, write)
        .await
        .expect("acknowledged once the flush is done")
        .expect("write task")
        .expect("write");
    assert!(written.log_id.index > 0);
    c.raft.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_replicates_while_its_own_flush_is_held_back() {
    let c = leader_of(&[1, 2, 3]).await;
    c.gate.set_open(false);
    // Two followers of three make a quorum: the write commits through them alone, which it
    // can only do if the leader sent them the entry before its own flush ended.
    let written = tokio::time::timeout(WAIT, c.raft.client_write(put()))
        .await
        .expect("committed through the followers while the leader's flush is held back")
        .expect("write");
    assert_eq!(
        *c.peers.highest_sent.lock().expect("lock"),
        written.log_id.index
    );
    c.gate.set_open(true);
    c.raft.shutdown().await.expect("shutdown");
}
