//! Paged KV cache bookkeeping: which fixed-size blocks each sequence owns, and a prefix cache
//! keyed by chained block hashes so sequences sharing a prompt prefix share its blocks.
//!
//! Everything here is a plain state machine: no threads, no I/O. The backend owns the memory;
//! this module only decides block ids.

mod block_manager;
mod hash;

pub use block_manager::{BlockManager, KvStats, SeqId};
pub use hash::{block_hashes, hash_block, BlockHash};

use serde::{Deserialize, Serialize};

/// A change in which prefixes this worker holds, for routers on other peers to index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvEvent {
    /// Blocks with these hashes now hold complete, reusable KV.
    Stored { hashes: Vec<BlockHash> },
    /// Blocks with these hashes were evicted; their prefixes are no longer cached here.
    Removed { hashes: Vec<BlockHash> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("out of KV blocks: {needed} needed, {available} available")]
    OutOfBlocks { needed: usize, available: usize },
    #[error("sequence {0} already holds KV blocks")]
    SequenceExists(SeqId),
    #[error("unknown sequence {0}")]
    UnknownSequence(SeqId),
    #[error("block size must be at least 1 token")]
    ZeroBlockSize,
}
