//! Chained block hashes: `hash(block i) = H(hash(block i-1), tokens of block i)`.
//!
//! Routers on other peers compute the same hashes from a prompt to find which worker already
//! holds its prefix, so the function must be identical across processes, platforms and
//! releases: SHA-256 over little-endian bytes, never a randomly seeded hasher.
//!
//! Exact bytes hashed for a block (for implementations in other languages):
//! `"stator-kv-v1/root"` for the first block, else `"stator-kv-v1/child" ++ parent_u64_le`;
//! then `token_count_u64_le`, then every token as `u32_le`. The hash is the first 8 bytes of the
//! digest read as a little-endian `u64`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Identity of a full block *and everything before it* in its sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BlockHash(pub u64);

/// Distinguishes "first block" from "some parent"; bump the version byte if the scheme changes.
const ROOT_TAG: &[u8] = b"stator-kv-v1/root";
const CHILD_TAG: &[u8] = b"stator-kv-v1/child";

/// Hash of one full block given the hash of the block before it (`None` for the first block).
pub fn hash_block(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
    let mut hasher = Sha256::new();
    match parent {
        None => hasher.update(ROOT_TAG),
        Some(parent) => {
            hasher.update(CHILD_TAG);
            hasher.update(parent.0.to_le_bytes());
        }
    }
    hasher.update((tokens.len() as u64).to_le_bytes());
    for token in tokens {
        hasher.update(token.to_le_bytes());
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    BlockHash(u64::from_le_bytes(first))
}

/// Chained hashes of every *full* block of `tokens` (a trailing partial block has none).
/// `block_size == 0` yields no hashes.
pub fn block_hashes(tokens: &[u32], block_size: usize) -> Vec<BlockHash> {
    if block_size == 0 {
        return Vec::new();
    }
    let mut parent = None;
    tokens
        .chunks_exact(block_size)
        .map(|block| {
            let hash = hash_block(parent, block);
            parent = Some(hash);
            hash
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_pinned_across_releases() {
        // Peers on different builds must agree; a change here breaks cross-version routing.
        let hashes = block_hashes(&[1, 2, 3, 4, 5, 6, 7, 8, 9], 4);
        assert_eq!(hashes.len(), 2);
        assert_eq!(hashes, PINNED.to_vec());
    }

    const PINNED: [BlockHash; 2] = [
        BlockHash(14733530747375986311),
        BlockHash(3739844022126365010),
    ];

    #[test]
    fn hash_depends_on_whole_prefix_not_just_block() {
        let a = block_hashes(&[1, 2, 9, 9], 2);
        let b = block_hashes(&[3, 4, 9, 9], 2);
        assert_ne!(a[1], b[1], "same second block after different first blocks");
        assert_eq!(
            block_hashes(&[1, 2, 9, 9, 5], 2),
            a,
            "partial tail block is not hashed"
        );
    }

    #[test]
    fn zero_block_size_gives_no_hashes() {
        assert!(block_hashes(&[1, 2, 3], 0).is_empty());
    }
}
