//! Errors of the Raft façade.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stator_transport::RpcError;

use crate::types::NodeId;

/// Cloneable so that one failed batch can answer every write it carried.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RaftError {
    #[error("cannot use data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("raft storage: {0}")]
    Storage(String),
    #[error("invalid raft config: {0}")]
    Config(String),
    #[error("this node is already part of an initialized cluster")]
    AlreadyInitialized,
    #[error("no raft leader is known (election in progress or no quorum reachable)")]
    NoLeader,
    /// The request was forwarded to `leader`, and another leader took over before it
    /// answered: it may or may not have taken effect (the new leader may still commit it).
    #[error("leader {leader} was replaced while the request was in flight; it may or may not have taken effect")]
    LeaderReplaced { leader: NodeId },
    #[error("{what} did not finish within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("could not reach the leader: {0}")]
    Transport(#[from] RpcError),
    #[error("the leader refused: {0}")]
    Remote(RemoteError),
    #[error("raft refused: {0}")]
    Rejected(String),
    #[error("raft node is shut down")]
    ShuttingDown,
}

/// What a leader answers to a forwarded request when it cannot serve it; travels on the wire.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RemoteError {
    #[error("not the leader (leader is {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("timed out on the leader")]
    Timeout,
    #[error("{0}")]
    Rejected(String),
}

impl From<RemoteError> for RaftError {
    fn from(e: RemoteError) -> Self {
        RaftError::Remote(e)
    }
}
