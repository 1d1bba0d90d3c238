//! What travels on a stream: the opening frame and the stream error codes.

use serde::{Deserialize, Serialize};

use crate::error::RpcError;

/// First frame of every bidirectional stream.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum StreamOpen {
    /// One request; the server answers with one `Result<Vec<u8>, RpcError>` frame.
    Rpc { method: String, payload: Vec<u8> },
    /// A raw framed stream; the server answers with one `Result<(), RpcError>` frame and then
    /// both sides exchange frames freely.
    Stream { name: String },
    /// Calls of one method, one after another on the same stream: each request frame (the
    /// encoded request) gets one `Result<Vec<u8>, RpcError>` frame, in order, until the
    /// caller finishes the stream. A refused session gets one error frame and is finished.
    Session { method: String },
}

/// Application error codes used when a stream is stopped or reset.
pub(crate) mod code {
    use quinn::VarInt;

    pub const FRAME_TOO_LARGE: VarInt = VarInt::from_u32(1);
    pub const DECODE: VarInt = VarInt::from_u32(2);
    pub const TIMEOUT: VarInt = VarInt::from_u32(3);
    pub const REFUSED: VarInt = VarInt::from_u32(4);
    pub const CANCELLED: VarInt = VarInt::from_u32(5);
}

/// Connection close codes.
pub(crate) mod close {
    use quinn::VarInt;

    pub const SHUTDOWN: VarInt = VarInt::from_u32(0);
    pub const NOT_AUTHORIZED: VarInt = VarInt::from_u32(0x10);
    /// A call went unanswered at the transport level; see `close_unresponsive`.
    pub const UNRESPONSIVE: VarInt = VarInt::from_u32(0x11);
}

/// Stream error code that matches `err`.
pub(crate) fn code_for(err: &RpcError) -> quinn::VarInt {
    match err {
        RpcError::FrameTooLarge { .. } => code::FRAME_TOO_LARGE,
        RpcError::Decode(_) | RpcError::Protocol(_) => code::DECODE,
        RpcError::Timeout => code::TIMEOUT,
        RpcError::NotAuthorized(_) | RpcError::UnknownMethod(_) => code::REFUSED,
        _ => code::CANCELLED,
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, RpcError> {
    postcard::to_allocvec(value).map_err(|e| RpcError::Decode(format!("cannot encode: {e}")))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, RpcError> {
    postcard::from_bytes(bytes).map_err(|e| RpcError::Decode(e.to_string()))
}
