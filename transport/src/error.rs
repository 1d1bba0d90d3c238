//! Error types of the transport crate.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Errors from creating, parsing, signing or storing cluster certificates and join tokens.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("key generation failed: {0}")]
    KeyGeneration(String),
    #[error("certificate signing failed: {0}")]
    Signing(String),
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    #[error("invalid private key: {0}")]
    InvalidKey(String),
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("invalid join token: {0}")]
    InvalidToken(String),
    #[error("identity file {} is missing (is the data directory initialised?)", path.display())]
    MissingFile { path: PathBuf },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Errors from setting up an [`crate::Endpoint`].
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("address {0} is already in use (is another stator peer listening on this port?)")]
    AddrInUse(SocketAddr),
    #[error("cannot bind UDP socket on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid transport configuration: {0}")]
    InvalidConfig(String),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("the endpoint must be created inside a tokio runtime")]
    NoRuntime,
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// Errors of a single RPC, stream or datagram. Travels over the wire inside responses, so a
/// handler's error reaches the caller unchanged.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("timed out")]
    Timeout,
    #[error("closed: {0}")]
    Closed(String),
    #[error("remote handler failed: {0}")]
    Remote(String),
    #[error("unknown method or stream {0:?}")]
    UnknownMethod(String),
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { size: usize, max: usize },
    #[error("cannot decode: {0}")]
    Decode(String),
    #[error("not authorized: {0}")]
    NotAuthorized(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
}

impl RpcError {
    /// Short stable name, used as the `kind` metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            RpcError::Connect(_) => "connect",
            RpcError::Timeout => "timeout",
            RpcError::Closed(_) => "closed",
            RpcError::Remote(_) => "remote",
            RpcError::UnknownMethod(_) => "unknown_method",
            RpcError::FrameTooLarge { .. } => "frame_too_large",
            RpcError::Decode(_) => "decode",
            RpcError::NotAuthorized(_) => "not_authorized",
            RpcError::Protocol(_) => "protocol",
        }
    }
}
