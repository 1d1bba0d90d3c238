//! openraft type configuration for stator's cluster log.

use serde::{Deserialize, Serialize};

use crate::model::{Batch, BatchResponse};

/// Raft node ids are the peers' node ids (random u64 chosen at bootstrap/join, kept in the
/// data dir).
pub type NodeId = u64;

/// What Raft needs to reach a member: its QUIC address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddr {
    pub quic: String,
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.quic)
    }
}

openraft::declare_raft_types!(
    /// The Raft type configuration: every log entry is one batch of commands.
    pub TypeConfig:
        D = Batch,
        R = BatchResponse,
        NodeId = NodeId,
        Node = PeerAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);
