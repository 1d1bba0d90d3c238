//! The compute backend trait: one forward pass over a batch of sequences with a paged KV cache.
//!
//! The scheduler and block manager decide *which* blocks a sequence uses; a backend owns the
//! KV memory and only reads/writes the blocks it is told to. Both the CPU reference backend and
//! the CUDA backend implement this trait, so everything above it is backend-agnostic.

pub mod cpu;
pub mod cuda;

use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;

/// Element type of KV cache entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvDtype {
    F32,
    F16,
    Bf16,
}

impl KvDtype {
    pub fn size_bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 | KvDtype::Bf16 => 2,
        }
    }
}

/// Geometry of the paged KV cache. Two workers can exchange blocks only if their layouts are
/// equal; the KV-transfer header carries this struct.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvLayout {
    pub num_layers: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Tokens per block.
    pub block_size: usize,
    pub dtype: KvDtype,
}

impl KvLayout {
    /// Bytes of one block: K and V, every layer.
    pub fn bytes_per_block(&self) -> usize {
        2 * self.num_layers
            * self.num_kv_heads
            * self.head_dim
            * self.block_size
            * self.dtype.size_bytes()
    }
}

/// The work for one sequence in one forward pass.
#[derive(Clone, Debug)]
pub struct SeqStep<'a> {
    /// Tokens to run this step (a prefill chunk, or the one token of a decode step).
    pub tokens: &'a [u32],
    /// Position of `tokens[0]` in the sequence; positions `0..start_pos` are already in the KV
    /// cache (computed earlier or reused from the prefix cache).
    pub start_pos: usize,
    /// Block ids covering positions `0..start_pos + tokens.len()`, in order.
    pub block_table: &'a [u32],
    /// Compute logits for the last token of `tokens`.
    pub want_logits: bool,
}

/// Logits for the sequences of a batch that asked for them, in batch order.
#[derive(Clone, Debug, Default)]
pub struct Logits {
    pub vocab_size: usize,
    /// `rows * vocab_size` values.
    pub data: Vec<f32>,
}

impl Logits {
    pub fn rows(&self) -> usize {
        self.data.len().checked_div(self.vocab_size).unwrap_or(0)
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab_size..(i + 1) * self.vocab_size]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    #[error("KV block data does not match the layout: {0}")]
    BadKvData(String),
    #[error("device error: {0}")]
    Device(String),
    #[error("out of device memory: {0}")]
    OutOfMemory(String),
}

/// Checks what every backend requires of a batch, before anything is written: each step has
/// tokens inside the vocabulary, its positions do not overflow, and its block table covers
/// them with block ids inside the cache.
pub fn validate_steps(
    batch: &[SeqStep<'_>],
    vocab_size: usize,
    num_blocks: usize,
    block_size: usize,
) -> Result<(), BackendError> {
    for (i, step) in batch.iter().enumerate() {
        if step.tokens.is_empty() {
            return Err(BackendError::InvalidBatch(format!(
                "step {i} has no tokens"
            )));
        }
        if let Some(bad) = step.tokens.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(BackendError::InvalidBatch(format!(
                "step {i}: token id {bad} is outside the vocabulary ({vocab_size})"
            )));
        }
        let end = step
            .start_pos
            .checked_add(step.tokens.len())
            .ok_or_else(|| {
                BackendError::InvalidBatch(format!(
                    "step {i}: start_pos {} overflows",
                    step.start_pos
                ))
            })?;
        let needed = end.div_ceil(block_size.max(1));
        if step.block_table.len() < needed {
            return Err(BackendError::InvalidBatch(format!(
                "step {i}: positions 0..{end} need {needed} blocks, block table has {}",
                step.block_table.len()
            )));
        }
        if let Some(bad) = step.block_table[..needed]
            .iter()
            .find(|&&b| b as usize >= num_blocks)
        {
            return Err(BackendError::InvalidBatch(format!(
                "step {i}: block id {bad} out of range (this backend has {num_blocks} blocks)"
            )));
        }
    }
    Ok(())
}

/// A forward-pass implementation owning the KV cache memory.
pub trait Backend: Send {
    /// Human-readable name ("cpu", "cuda:0").
    fn name(&self) -> String;
    fn config(&self) -> &ModelConfig;
    fn kv_layout(&self) -> &KvLayout;
    /// Number of KV blocks this backend allocated.
    fn num_kv_blocks(&self) -> usize;
    /// Runs the batch: writes K/V of every token into its block slots and returns logits for the
    /// steps with `want_logits`, in order.
    fn forward(&mut self, batch: &[SeqStep<'_>]) -> Result<Logits, BackendError>;
    /// Appends the bytes of `blocks` (in `kv_layout` order: for each block, for each layer, K
    /// then V, `[block_size, num_kv_heads, head_dim]` each) to `out`.
    fn export_blocks(&self, blocks: &[u32], out: &mut Vec<u8>) -> Result<(), BackendError>;
    /// Writes blocks previously exported by a backend with an equal layout.
    fn import_blocks(&mut self, blocks: &[u32], data: &[u8]) -> Result<(), BackendError>;
}
