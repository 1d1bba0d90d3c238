//! stator's replicated state: openraft on sled, the typed data model and its commands, and the
//! Raft network over the QUIC transport.

pub mod model;
pub mod types;
