//! Three in-process Raft voters over real QUIC on loopback, each on its own sled store (real
//! fsync) in a data dir on disk, with the nodes and workers registered that lease grants need.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use stator_raft::model::{Command, WorkerId, WorkerInfo, WorkerRole, WorkerState};
use stator_raft::{NodeId, PeerAddr, RaftConfig, RaftNode};
use stator_transport::{ClusterCa, Endpoint, TransportConfig};

const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(10);

pub struct RaftPeer {
    pub id: NodeId,
    pub endpoint: Endpoint,
    pub node: RaftNode,
}

impl RaftPeer {
    fn addr(&self) -> PeerAddr {
        PeerAddr {
            quic: self.endpoint.local_addr().to_string(),
        }
    }
}

/// A 3-voter cluster whose replicated state knows the three nodes (up) and one active decode
/// worker per node, so that `GrantLease` from any node is accepted.
pub struct RaftCluster {
    pub peers: Vec<RaftPeer>,
}

pub fn worker_of(node: NodeId) -> WorkerId {
    WorkerId { node, slot: 0 }
}

pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RaftCluster {
    /// `root` must be on a real disk (not tmpfs), or fsync costs nothing and the figure lies.
    pub async fn start(root: &Path, size: usize) -> Result<Self> {
        if size == 0 {
            bail!("a cluster needs at least one node");
        }
        let ca = ClusterCa::generate("leasebench").context("cluster CA")?;
        let mut peers = Vec::new();
        for index in 0..size {
            let id = index as NodeId + 1;
            let identity = ca.issue_identity(id).context("node identity")?;
            let listen = "127.0.0.1:0".parse().context("loopback address")?;
            let endpoint = Endpoint::bind(listen, identity, TransportConfig::default())
                .context("binding a QUIC endpoint")?;
            let dir = root.join(format!("node{id}"));
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let node = RaftNode::open(&dir, id, endpoint.clone(), RaftConfig::default())
                .await
                .with_context(|| format!("opening raft node {id}"))?;
            peers.push(RaftPeer { id, endpoint, node });
        }
        let first = &peers[0];
        first
            .node
            .bootstrap(first.addr())
            .await
            .context("bootstrap")?;
        for peer in &peers[1..] {
            first
                .node
                .add_learner(peer.id, peer.addr())
                .await
                .with_context(|| format!("adding learner {}", peer.id))?;
        }
        let voters: BTreeSet<NodeId> = peers.iter().map(|p| p.id).collect();
        first
            .node
            .change_voters(voters.clone())
            .await
            .context("promoting voters")?;
        let cluster = Self { peers };
        cluster.wait_membership(&voters).await?;
        cluster.register_nodes_and_workers().await?;
        Ok(cluster)
    }

    async fn wait_membership(&self, voters: &BTreeSet<NodeId>) -> Result<()> {
        let deadline = Instant::now() + MEMBERSHIP_DEADLINE;
        for peer in &self.peers {
            while peer.node.membership().0 != *voters {
                if Instant::now() >= deadline {
                    bail!(
                        "node {} did not see voters {voters:?} within {MEMBERSHIP_DEADLINE:?}",
                        peer.id
                    );
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }

    /// What a peer does when it starts: register its node, then its worker.
    async fn register_nodes_and_workers(&self) -> Result<()> {
        let mut cmds = Vec::new();
        for peer in &self.peers {
            let addr = peer.endpoint.local_addr().to_string();
            cmds.push(Command::RegisterNode {
                id: peer.id,
                quic_addr: addr.clone(),
                http_addr: addr,
                labels: BTreeMap::new(),
                gpus: Vec::new(),
                at_ms: wall_ms(),
            });
        }
        for peer in &self.peers {
            cmds.push(Command::UpsertWorker {
                id: worker_of(peer.id),
                info: WorkerInfo {
                    role: WorkerRole::Decode,
                    state: WorkerState::Active,
                    model: "leasebench".into(),
                    kv_blocks_total: 1024,
                    device: "cpu".into(),
                },
            });
        }
        let outcome = self.peers[0]
            .node
            .write(cmds)
            .await
            .context("registering nodes and workers")?;
        if let Some(refused) = outcome.results.iter().find_map(|r| r.as_ref().err()) {
            return Err(anyhow!("registration refused: {refused}"));
        }
        Ok(())
    }

    pub fn leader_id(&self) -> Option<NodeId> {
        self.peers[0].node.leader().map(|(id, _)| id)
    }

    pub async fn shutdown(self) {
        for peer in &self.peers {
            peer.node.shutdown().await;
            peer.endpoint.close();
        }
    }
}
