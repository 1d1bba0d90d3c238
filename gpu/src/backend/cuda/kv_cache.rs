//! The paged KV cache in device memory, in exactly the exchange layout of [`KvLayout`] (for
//! each block, for each layer, K then V, `[block_size, num_kv_heads, head_dim]`, 16-bit), so a
//! block exports and imports as one contiguous copy, staged through pinned host memory.

use std::sync::Arc;

use parking_lot::Mutex;

use super::device::{DeviceBuffer, Gpu, PinnedBuffer};
use crate::backend::{BackendError, KvLayout};

/// Size of the pinned staging buffer for block transfers.
const STAGING_BYTES: usize = 16 << 20;

pub struct DeviceKvCache {
    gpu: Arc<Gpu>,
    layout: KvLayout,
    num_blocks: usize,
    buffer: DeviceBuffer,
    /// Created on first transfer; behind a lock because export takes `&self`.
    staging: Mutex<Option<PinnedBuffer>>,
}

impl DeviceKvCache {
    /// `num_blocks` usable blocks plus one more, the sink (see [`Self::sink_block`]).
    pub fn new(gpu: &Arc<Gpu>, layout: KvLayout, num_blocks: usize) -> Result<Self, BackendError> {
        let bytes = layout
            .bytes_per_block()
            .checked_mul(num_blocks + 1)
            .ok_or_else(|| {
                BackendError::OutOfMemory(format!(
                    "{num_blocks} KV blocks overflow the address space"
                ))
            })?;
        let buffer = gpu.alloc(bytes, "KV cache")?;
        Ok(Self {
            gpu: gpu.clone(),
            layout,
            num_blocks,
            buffer,
            staging: Mutex::new(None),
        })
    }

    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }
    /// Blocks the engine may use; ids `0..num_blocks`.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }
    /// A block no sequence owns: the pad rows of a padded decode step write and read here.
    pub fn sink_block(&self) -> u32 {
        self.num_blocks as u32
    }
    pub fn ptr(&self) -> u64 {
        self.buffer.ptr()
    }
    pub fn bytes(&self) -> usize {
        self.buffer.bytes()
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

    /// Runs `f` with the pinned staging buffer, creating it on first use.
    fn with_staging<R>(
        &self,
        f: impl FnOnce(&mut PinnedBuffer) -> Result<R, BackendError>,
    ) -> Result<R, BackendError> {
        let mut guard = self.staging.lock();
        let staging = match guard.take() {
            Some(buffer) => buffer,
            None => PinnedBuffer::new(&self.gpu, STAGING_BYTES.max(self.layout.bytes_per_block()))?,
        };
        let staging = guard.insert(staging);
        f(staging)
    }

    pub fn export(&self, blocks: &[u32], out: &mut Vec<u8>) -> Result<(), BackendError> {
        self.check_ids(blocks)?;
        self.gpu.bind()?;
        let per_block = self.layout.bytes_per_block();
        let base = self.buffer.ptr();
        out.reserve(blocks.len() * per_block);
        let gpu = &self.gpu;
        self.with_staging(|staging| {
            let per_batch = (staging.as_slice().len() / per_block).max(1);
            for group in blocks.chunks(per_batch) {
                let dst = staging.as_mut_slice();
                for (i, &block) in group.iter().enumerate() {
                    let src = base + (block as usize * per_block) as u64;
                    // SAFETY: the staging slice holds per_batch blocks; the source lies inside the
                    // cache buffer (ids checked above). Synchronised below before reading.
                    unsafe {
                        cudarc::driver::result::memcpy_dtoh_async(
                            &mut dst[i * per_block..(i + 1) * per_block],
                            src,
                            gpu.stream(),
                        )
                    }
                    .map_err(super::device::driver_err("KV export copy"))?;
                }
                gpu.synchronize()?;
                out.extend_from_slice(&staging.as_slice()[..group.len() * per_block]);
            }
            Ok(())
        })
    }

    pub fn import(&self, blocks: &[u32], data: &[u8]) -> Result<(), BackendError> {
        self.check_ids(blocks)?;
        let per_block = self.layout.bytes_per_block();
        let expected = blocks.len() * per_block;
        if data.len() != expected {
            return Err(BackendError::BadKvData(format!(
                "{} bytes for {} blocks, expected {expected} ({per_block} per block)",
                data.len(),
                blocks.len()
            )));
        }
        self.gpu.bind()?;
        let base = self.buffer.ptr();
        let gpu = &self.gpu;
        self.with_staging(|staging| {
            let per_batch = (staging.as_slice().len() / per_block).max(1);
            for (group, bytes) in blocks
                .chunks(per_batch)
                .zip(data.chunks(per_batch * per_block))
            {
                // The previous batch's copies read the staging buffer: wait before overwriting it.
                gpu.synchronize()?;
                staging.as_mut_slice()[..bytes.len()].copy_from_slice(bytes);
                for (i, &block) in group.iter().enumerate() {
                    let dst = base + (block as usize * per_block) as u64;
                    gpu.upload(dst, &staging.as_slice()[i * per_block..(i + 1) * per_block])?;
                }
            }
            gpu.synchronize()
        })
    }
}
