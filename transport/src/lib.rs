//! stator-transport: the QUIC endpoint peers talk through.
//!
//! Cluster PKI (CA, node certificates, join tokens), mutual TLS 1.3, framed typed RPC over
//! bidirectional streams, raw framed streams, datagrams, a connection pool and per-peer
//! metrics. It knows nothing about Raft or models.
//!
//! Wire format: every bidirectional stream starts with one frame (u32 big-endian length +
//! postcard payload) naming an RPC method with its request, a session of calls, or a raw
//! stream. An RPC gets one response frame carrying `Result<payload, RpcError>`. Calls through
//! [`Endpoint::call`] go over sessions: a stream per (peer, method) that stays open and
//! carries one request frame and one response frame per call, one call at a time. A bad frame
//! closes only its stream.
//!
//! Security: TLS 1.3 only (ring provider). Node certificates carry the DNS names
//! `stator.cluster` (verified by clients) and `node-<id>.stator.cluster` (the id the server
//! reports in [`PeerInfo::node_id`]); servers send [node cert, CA cert]. ALPN `stator/1`
//! requires a cluster client certificate (else the connection is closed with code 0x10);
//! ALPN `stator-join/1` needs none and reaches only methods registered with
//! [`Endpoint::register_join`], with frames limited to 1 MiB.
//!
//! Metrics: `stator_transport_bytes_sent_total{peer}`, `stator_transport_bytes_received_total{peer}`
//! (peer = node id, or address when unknown), `stator_transport_streams_total{direction}`,
//! `stator_transport_rpc_seconds{method}`, `stator_transport_rpc_errors_total{method,kind}`,
//! `stator_transport_connections`, `stator_transport_datagrams_dropped_total`.

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
