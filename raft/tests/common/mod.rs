//! In-process peers for Raft tests: real QUIC endpoints on 127.0.0.1 under one test CA.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stator_raft::model::{ClusterState, Command};
use stator_raft::{NodeId, PeerAddr, RaftConfig, RaftNode};
use stator_transport::{ClusterCa, Endpoint, TransportConfig};

pub struct Peer {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub endpoint: Endpoint,
    pub node: RaftNode,
}

impl Peer {
    pub fn peer_addr(&self) -> PeerAddr {
        PeerAddr {
            quic: self.addr.to_string(),
        }
    }

    /// Stops Raft and closes the endpoint, as a crash would look to the other peers.
    pub async fn kill(self) -> (NodeId, SocketAddr, PathBuf) {
        self.node.shutdown().await;
        self.endpoint.close();
        (self.id, self.addr, self.dir)
    }
}

/// Adds every peer after the first as a learner, through the first (the leader).
pub async fn add_learners(peers: &[Peer]) {
    for p in &peers[1..] {
        peers[0]
            .node
            .add_learner(p.id, p.peer_addr())
            .await
            .expect("add learner");
    }
}

pub fn test_config() -> RaftConfig {
    RaftConfig::default()
}

/// Binds `listen` (retrying while a previous endpoint on the same port winds down) and opens
/// the Raft node on `dir`.
pub async fn start_peer(
    ca: &ClusterCa,
    id: NodeId,
    dir: &Path,
    listen: SocketAddr,
    cfg: RaftConfig,
) -> Peer {
    let identity = ca.issue_identity(id).expect("issue identity");
    let deadline = Instant::now() + Duration::from_secs(5);
    let endpoint = loop {
        match Endpoint::bind(listen, identity.clone(), TransportConfig::default()) {
            Ok(ep) => break ep,
            Err(e) if Instant::now() < deadline => {
                eprintln!("bind {listen} failed ({e}), retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot bind {listen}: {e}"),
        }
    };
    let addr = endpoint.local_addr();
    let node = RaftNode::open(dir, id, endpoint.clone(), cfg)
        .await
        .expect("open raft node");
    Peer {
        id,
        addr,
        dir: dir.to_owned(),
        endpoint,
        node,
    }
}

pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().expect("literal address")
}

/// Polls `check` until it holds or `within` elapses; returns how long it took.
pub async fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < within,
            "{what}: not reached within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

pub fn state_of(node: &RaftNode) -> Arc<ClusterState> {
    node.state().borrow().clone()
}

pub fn put(key: &str, value: &str) -> Command {
    Command::PutMeta {
        key: key.to_owned(),
        value: value.to_owned(),
    }
}
