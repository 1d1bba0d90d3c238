//! stator's replicated state: openraft on sled, the typed data model and its commands, and the
//! Raft network over the QUIC transport.
//!
//! [`RaftNode`] is the entry point: open it on a data dir with a transport endpoint, then
//! `bootstrap` (first peer) or be added by the leader (`add_learner`, `change_voters`), then
//! `write` commands and read the applied [`model::ClusterState`] through `state()`.

mod config;
mod error;
mod export;
mod leader;
pub mod model;
pub mod network;
mod node;
pub mod rpc;
mod server;
pub mod store;
pub mod types;
mod writer;

pub use config::RaftConfig;
pub use error::{RaftError, RemoteError};
pub use node::RaftNode;
pub use rpc::WriteOutcome;
pub use types::{NodeId, PeerAddr, TypeConfig};
