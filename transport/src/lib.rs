//! stator-transport: the QUIC endpoint peers talk through.
//!
//! Cluster PKI (CA, node certificates, join tokens), mutual TLS 1.3, framed typed RPC over
//! bidirectional streams, raw framed streams, datagrams, a connection pool and per-peer
//! metrics. It knows nothing about Raft or models.
//!
//! Wire format: every bidirectional stream starts with one frame (u32 big-endian length +
//! postcard payload) naming an RPC method with its request, or a raw stream. An RPC gets one
//! response frame carrying `Result<payload, RpcError>`. A bad frame closes only its stream.

mod config;
mod endpoint;
mod error;
mod frame;
mod join;
mod method;
mod metrics;
mod pki;
mod tls;
mod wire;

#[cfg(test)]
mod tests;

pub use config::TransportConfig;
pub use endpoint::Endpoint;
pub use error::{PkiError, RpcError, TransportError};
pub use frame::{FramedRecv, FramedSend};
pub use join::call_join;
pub use method::{Method, PeerInfo};
pub use pki::{ClusterCa, Fingerprint, JoinToken, NodeCsr, NodeIdentity, NodeKey};
