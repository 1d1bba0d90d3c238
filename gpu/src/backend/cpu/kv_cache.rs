//! The paged KV cache in host memory, stored in exactly the exchange layout of
//! [`KvLayout`]: for each block, for each layer, K then V, each `[block_size, num_kv_heads,
//! head_dim]` f32. Export and import are therefore plain copies.

use crate::backend::{BackendError, KvLayout};

pub(super) struct KvCache {
    layout: KvLayout,
    num_blocks: usize,
    /// Floats in one K (or V) plane of one layer of one block.
    plane: usize,
    data: Vec<f32>,
}

impl KvCache {
    pub(super) fn new(layout: KvLayout, num_blocks: usize) -> Result<Self, BackendError> {
        let plane = layout.block_size * layout.num_kv_heads * layout.head_dim;
        let total = plane
            .checked_mul(2 * layout.num_layers)
            .and_then(|per_block| per_block.checked_mul(num_blocks))
            .ok_or_else(|| {
                BackendError::OutOfMemory(format!(
                    "{num_blocks} KV blocks overflow the address space"
                ))
            })?;
        let mut data = Vec::new();
        data.try_reserve_exact(total).map_err(|_| {
            BackendError::OutOfMemory(format!(
                "cannot allocate {num_blocks} KV blocks ({} MiB)",
                total * 4 / (1024 * 1024)
            ))
        })?;
        data.resize(total, 0.0);
        Ok(Self {
            layout,
            num_blocks,
            plane,
            data,
        })
    }

    pub(super) fn layout(&self) -> &KvLayout {
        &self.layout
    }

    pub(super) fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    fn floats_per_block(&self) -> usize {
        2 * self.layout.num_layers * self.plane
    }

    /// Offset of the K plane of (`block`, `layer`); the V plane follows it.
    fn k_offset(&self, block: usize, layer: usize) -> usize {
        block * self.floats_per_block() + 2 * layer * self.plane
    }

    /// The K and V planes of one layer of one block, `[block_size, num_kv_heads, head_dim]`.
    pub(super) fn planes(&self, block: usize, layer: usize) -> (&[f32], &[f32]) {
        let k = self.k_offset(block, layer);
        (
            &self.data[k..k + self.plane],
            &self.data[k + self.plane..k + 2 * self.plane],
        )
    }

    /// Stores one token's K and V (`num_kv_heads * head_dim` each) at `slot` of `block`.
    pub(super) fn write_token(
        &mut self,
        block: usize,
        layer: usize,
        slot: usize,
        k: &[f32],
        v: &[f32],
    ) {
        let width = k.len();
        let start = self.k_offset(block, layer) + slot * width;
        self.data[start..start + width].copy_from_slice(k);
        let start = start + self.plane;
        self.data[start..start + width].copy_from_slice(v);
    }

    fn check_ids(&self, blocks: &[u32]) -> Result<(), BackendError> {
        match blocks.iter().find(|&&b| b as usize >= self.num_blocks) {
            Some(bad) => Err(BackendError::InvalidBatch(format!(
                "block id {bad} out of range (this backend has {} blocks)",
                self.num_blocks
            ))),
            None => Ok(()),
        }
    }

    pub(super) fn export(&self, blocks: &[u32], out: &mut Vec<u8>) -> Result<(), BackendError> {
        self.check_ids(blocks)?;
        let per_block = self.floats_per_block();
        out.reserve(blocks.len() * per_block * 4);
        for &block in blocks {
            let start = block as usize * per_block;
            out.extend_from_slice(bytemuck::cast_slice(&self.data[start..start + per_block]));
        }
        Ok(())
    }

    pub(super) fn import(&mut self, blocks: &[u32], data: &[u8]) -> Result<(), BackendError> {
        self.check_ids(blocks)?;
        let per_block = self.floats_per_block();
        let expected = blocks.len() * per_block * 4;
        if data.len() != expected {
            return Err(BackendError::BadKvData(format!(
                "{} bytes for {} blocks, expected {expected} ({} per block)",
                data.len(),
                blocks.len(),
                per_block * 4
            )));
        }
        for (&block, bytes) in blocks.iter().zip(data.chunks_exact(per_block * 4)) {
            let start = block as usize * per_block;
            // Copy bytewise: the incoming buffer need not be 4-byte aligned.
            bytemuck::cast_slice_mut::<f32, u8>(&mut self.data[start..start + per_block])
                .copy_from_slice(bytes);
        }
        Ok(())
    }
}
