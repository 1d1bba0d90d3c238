//! Byte encodings of what the stores keep in sled.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Log keys are big-endian so that sled's byte order is index order.
pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_allocvec(value).map_err(|e| CodecError(e.to_string()))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    postcard::from_bytes(bytes).map_err(|e| CodecError(e.to_string()))
}

#[derive(Debug, thiserror::Error)]
#[error("corrupt stored record: {0}")]
pub struct CodecError(String);
