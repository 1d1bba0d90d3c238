//! The block manager: block tables, reference counts, the prefix cache and its LRU eviction.

use std::collections::{BTreeMap, HashMap};

use super::hash::{block_hashes, hash_block, BlockHash};
use super::{KvError, KvEvent};

/// The engine's id for a sequence (unique among live sequences).
pub type SeqId = u64;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvStats {
    pub total_blocks: usize,
    /// Blocks referenced by at least one live sequence.
    pub used_blocks: usize,
    /// Unreferenced blocks that still hold a cached prefix (reusable, evictable).
    pub cached_free_blocks: usize,
    /// Unreferenced blocks holding nothing reusable.
    pub empty_blocks: usize,
    /// Tokens served from the prefix cache, summed over admissions.
    pub prefix_hit_tokens: u64,
    /// Tokens looked up in the prefix cache, summed over admissions.
    pub prefix_query_tokens: u64,
}

impl KvStats {
    pub fn prefix_hit_rate(&self) -> f64 {
        if self.prefix_query_tokens == 0 {
            0.0
        } else {
            self.prefix_hit_tokens as f64 / self.prefix_query_tokens as f64
        }
    }
}

#[derive(Clone, Debug, Default)]
struct BlockMeta {
    ref_count: u32,
    /// Set while the block is registered in the prefix cache.
    hash: Option<BlockHash>,
    /// Key in `evictable` while unreferenced and cached.
    evict_key: Option<u64>,
}

#[derive(Clone, Debug, Default)]
struct SeqBlocks {
    blocks: Vec<u32>,
    /// Chained hashes of the sequence's computed full blocks, in order.
    hashes: Vec<BlockHash>,
}

/// A cached prefix found for a token list.
struct PrefixHit {
    blocks: Vec<u32>,
    hashes: Vec<BlockHash>,
}

pub struct BlockManager {
    block_size: usize,
    prefix_caching: bool,
    meta: Vec<BlockMeta>,
    /// Unreferenced blocks without a cached prefix; allocated first.
    empty: Vec<u32>,
    /// Unreferenced cached blocks by release order (oldest first): the LRU eviction queue.
    evictable: BTreeMap<u64, u32>,
    next_evict_key: u64,
    cached: HashMap<BlockHash, u32>,
    seqs: HashMap<SeqId, SeqBlocks>,
    events: Vec<KvEvent>,
    used: usize,
    prefix_hit_tokens: u64,
    prefix_query_tokens: u64,
}

impl BlockManager {
    pub fn new(
        num_blocks: usize,
        block_size: usize,
        prefix_caching: bool,
    ) -> Result<Self, KvError> {
        if block_size == 0 {
            return Err(KvError::ZeroBlockSize);
        }
        let num_blocks = num_blocks.min(u32::MAX as usize);
        Ok(Self {
            block_size,
            prefix_caching,
            meta: vec![BlockMeta::default(); num_blocks],
            // Reversed so that block 0 is handed out first (easier to read in logs and tests).
            empty: (0..num_blocks as u32).rev().collect(),
            evictable: BTreeMap::new(),
            next_evict_key: 0,
            cached: HashMap::new(),
            seqs: HashMap::new(),
            events: Vec::new(),
            used: 0,
            prefix_hit_tokens: 0,
            prefix_query_tokens: 0,
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Whether computed blocks are published for reuse (reservations depend on it).
    pub fn prefix_caching(&self) -> bool {
        self.prefix_caching
    }

    pub fn num_blocks(&self) -> usize {
        self.meta.len()
    }

    /// Blocks that an allocation could take right now (empty + evictable).
    pub fn available_blocks(&self) -> usize {
        self.empty.len() + self.evictable.len()
    }

    pub fn contains(&self, seq: SeqId) -> bool {
        self.seqs.contains_key(&seq)
    }

    fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    /// The longest cached prefix of `tokens`, leaving at least the last token uncached: a
    /// sequence must compute its last token to get logits.
    fn find_prefix(&self, tokens: &[u32]) -> PrefixHit {
        self.find_full_blocks(&tokens[..tokens.len().saturating_sub(1)])
    }

    /// The longest cached run of `tokens`' full blocks, from the first one.
    fn find_full_blocks(&self, tokens: &[u32]) -> PrefixHit {
        let mut hit = PrefixHit {
            blocks: Vec::new(),
            hashes: Vec::new(),
        };
        if !self.prefix_caching {
            return hit;
        }
        for hash in block_hashes(tokens, self.block_size) {
            match self.cached.get(&hash) {
                Some(&block) => {
                    hit.blocks.push(block);
                    hit.hashes.push(hash);
                }
                None => break,
            }
        }
        hit
    }

    /// Tokens of `tokens` that [`Self::allocate`] would serve from the prefix cache right now.
    pub fn cached_prefix_tokens(&self, tokens: &[u32]) -> usize {
        self.find_prefix(tokens).blocks.len() * self.block_size
    }

    /// Starts tracking `seq`: reuses the longest cached prefix of `tokens` and allocates fresh
    /// blocks so that the table covers `num_tokens` positions (at least the cached prefix).
    /// All or nothing: on error nothing changes. Returns the number of cached tokens.
    pub fn allocate(
        &mut self,
        seq: SeqId,
        tokens: &[u32],
        num_tokens: usize,
    ) -> Result<usize, KvError> {
        if self.seqs.contains_key(&seq) {
            return Err(KvError::SequenceExists(seq));
        }
        let hit = self.find_prefix(tokens);
        let cached_tokens = self.take_blocks(seq, hit, num_tokens)?;
        if self.prefix_caching {
            self.prefix_query_tokens += tokens.len() as u64;
            self.prefix_hit_tokens += cached_tokens as u64;
        }
        Ok(cached_tokens)
    }

    /// Holds blocks for every full block of `tokens` under `seq` (a reservation, not a running
    /// sequence): reuses the cached ones from the start and allocates fresh blocks for the
    /// rest, whose KV arrives from elsewhere; [`Self::mark_computed`] then publishes them like
    /// a prefill would. Unlike [`Self::allocate`] the last block may be a cache hit: nothing
    /// runs on a reservation, so no token has to stay uncached. All or nothing.
    /// Returns the number of leading blocks served from the cache.
    pub fn reserve(&mut self, seq: SeqId, tokens: &[u32]) -> Result<usize, KvError> {
        if self.seqs.contains_key(&seq) {
            return Err(KvError::SequenceExists(seq));
        }
        let full_tokens = tokens.len() / self.block_size * self.block_size;
        let hit = self.find_full_blocks(&tokens[..full_tokens]);
        let cached_tokens = self.take_blocks(seq, hit, full_tokens)?;
        Ok(cached_tokens / self.block_size)
    }

    /// Gives `seq` the blocks of `hit` plus fresh ones up to `num_tokens` positions, or
    /// changes nothing. Returns the number of cached tokens.
    fn take_blocks(
        &mut self,
        seq: SeqId,
        hit: PrefixHit,
        num_tokens: usize,
    ) -> Result<usize, KvError> {
        let revived = hit
            .blocks
            .iter()
            .filter(|&&b| self.meta[b as usize].ref_count == 0)
            .count();
        let fresh = self.blocks_for(num_tokens).saturating_sub(hit.blocks.len());
        let available = self.available_blocks() - revived;
        if fresh > available {
            return Err(KvError::OutOfBlocks {
                needed: fresh,
                available,
            });
        }
        for &block in &hit.blocks {
            self.take_ref(block);
        }
        let mut table = SeqBlocks {
            blocks: hit.blocks,
            hashes: hit.hashes,
        };
        for _ in 0..fresh {
            let block = self.pop_free_block();
            self.take_ref(block);
            table.blocks.push(block);
        }
        let cached_tokens = table.hashes.len() * self.block_size;
        self.seqs.insert(seq, table);
        Ok(cached_tokens)
    }

    /// Extends `seq`'s table to cover `num_tokens` positions. All or nothing.
    pub fn grow(&mut self, seq: SeqId, num_tokens: usize) -> Result<(), KvError> {
        let have = self
            .seqs
            .get(&seq)
            .ok_or(KvError::UnknownSequence(seq))?
            .blocks
            .len();
        let needed = self.blocks_for(num_tokens).saturating_sub(have);
        let available = self.available_blocks();
        if needed > available {
            return Err(KvError::OutOfBlocks { needed, available });
        }
        let mut fresh = Vec::with_capacity(needed);
        for _ in 0..needed {
            let block = self.pop_free_block();
            self.take_ref(block);
            fresh.push(block);
        }
        if let Some(table) = self.seqs.get_mut(&seq) {
            table.blocks.extend(fresh);
        }
        Ok(())
    }

    /// Records that the KV of `computed` (the first tokens of `seq`) is now written: its full
    /// blocks get their chained hashes and, when new to the cache, become reusable prefixes.
    pub fn mark_computed(&mut self, seq: SeqId, computed: &[u32]) -> Result<(), KvError> {
        let table = self
            .seqs
            .get_mut(&seq)
            .ok_or(KvError::UnknownSequence(seq))?;
        let full = (computed.len() / self.block_size).min(table.blocks.len());
        let mut stored = Vec::new();
        for index in table.hashes.len()..full {
            let tokens = &computed[index * self.block_size..(index + 1) * self.block_size];
            let hash = hash_block(table.hashes.last().copied(), tokens);
            table.hashes.push(hash);
            let block = table.blocks[index];
            let meta = &mut self.meta[block as usize];
            // A duplicate of an already cached block stays private: one block per hash.
            if self.prefix_caching && meta.hash.is_none() && !self.cached.contains_key(&hash) {
                meta.hash = Some(hash);
                self.cached.insert(hash, block);
                stored.push(hash);
            }
        }
        if !stored.is_empty() {
            self.events.push(KvEvent::Stored { hashes: stored });
        }
        Ok(())
    }

    /// Releases `seq`'s blocks. Cached blocks stay reusable until evicted; the tail is released
    /// first so that eviction takes the ends of prefixes before their beginnings.
    pub fn free(&mut self, seq: SeqId) -> bool {
        let Some(table) = self.seqs.remove(&seq) else {
            return false;
        };
        for &block in table.blocks.iter().rev() {
            let meta = &mut self.meta[block as usize];
            meta.ref_count -= 1;
            if meta.ref_count > 0 {
                continue;
            }
            self.used -= 1;
            if meta.hash.is_some() {
                let key = self.next_evict_key;
                self.next_evict_key += 1;
                meta.evict_key = Some(key);
                self.evictable.insert(key, block);
            } else {
                self.empty.push(block);
            }
        }
        true
    }

    pub fn block_table(&self, seq: SeqId) -> Option<&[u32]> {
        self.seqs.get(&seq).map(|t| t.blocks.as_slice())
    }

    /// Chained hashes of `seq`'s computed full blocks.
    pub fn seq_block_hashes(&self, seq: SeqId) -> Option<&[BlockHash]> {
        self.seqs.get(&seq).map(|t| t.hashes.as_slice())
    }

    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Takes the queued prefix-cache changes, oldest first.
    pub fn drain_events(&mut self) -> Vec<KvEvent> {
        std::mem::take(&mut self.events)
    }

    pub fn stats(&self) -> KvStats {
        KvStats {
            total_blocks: self.meta.len(),
            used_blocks: self.used,
            cached_free_blocks: self.evictable.len(),
            empty_blocks: self.empty.len(),
            prefix_hit_tokens: self.prefix_hit_tokens,
            prefix_query_tokens: self.prefix_query_tokens,
        }
    }

    fn take_ref(&mut self, block: u32) {
        let meta = &mut self.meta[block as usize];
        if meta.ref_count == 0 {
            self.used += 1;
            if let Some(key) = meta.evict_key.take() {
                self.evictable.remove(&key);
            }
        }
        meta.ref_count += 1;
    }

    /// An unreferenced block: an empty one, else the least recently released cached one.
    /// Callers check `available_blocks()` first.
    fn pop_free_block(&mut self) -> u32 {
        if let Some(block) = self.empty.pop() {
            return block;
        }
        let Some((_, block)) = self.evictable.pop_first() else {
            unreachable!("pop_free_block called without an available block");
        };
        let meta = &mut self.meta[block as usize];
        meta.evict_key = None;
        if let Some(hash) = meta.hash.take() {
            self.cached.remove(&hash);
            match self.events.last_mut() {
                Some(KvEvent::Removed { hashes }) => hashes.push(hash),
                _ => self.events.push(KvEvent::Removed { hashes: vec![hash] }),
            }
        }
        block
    }

    /// Verifies the internal bookkeeping; tests call it after every operation.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut refs = vec![0u32; self.meta.len()];
        for (seq, table) in &self.seqs {
            let mut seen = std::collections::HashSet::new();
            for &block in &table.blocks {
                if !seen.insert(block) {
                    return Err(format!("sequence {seq} holds block {block} twice"));
                }
                refs[block as usize] += 1;
            }
            if table.hashes.len() > table.blocks.len() {
                return Err(format!("sequence {seq} has more hashes than blocks"));
            }
        }
        let mut free_seen = vec![false; self.meta.len()];
        for &block in self.empty.iter().chain(self.evictable.values()) {
            if std::mem::replace(&mut free_seen[block as usize], true) {
                return Err(format!("block {block} is free twice"));
            }
        }
        for (block, meta) in self.meta.iter().enumerate() {
            if meta.ref_count != refs[block] {
                return Err(format!(
                    "block {block}: ref_count {} but {} owners",
                    meta.ref_count, refs[block]
                ));
            }
            if (meta.ref_count == 0) != free_seen[block] {
                return Err(format!(
                    "block {block}: ref_count {} but free={}",
                    meta.ref_count, free_seen[block]
                ));
            }
            if meta.ref_count == 0 && meta.hash.is_some() != meta.evict_key.is_some() {
                return Err(format!(
                    "free block {block}: cached but not evictable (or the reverse)"
                ));
            }
            if let Some(hash) = meta.hash {
                if self.cached.get(&hash) != Some(&(block as u32)) {
                    return Err(format!("block {block} hash not indexed"));
                }
            }
        }
        if self.cached.len() != self.meta.iter().filter(|m| m.hash.is_some()).count() {
            return Err("hash index has entries for unhashed blocks".into());
        }
        let used = refs.iter().filter(|&&r| r > 0).count();
        if used != self.used || used + self.available_blocks() != self.meta.len() {
            return Err(format!(
                "used {used} (counter {}) + free {} != total {}",
                self.used,
                self.available_blocks(),
                self.meta.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "block_manager_tests.rs"]
mod tests;
