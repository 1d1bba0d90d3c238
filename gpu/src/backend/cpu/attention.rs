//! Causal attention over the paged KV cache, parallel over (sequence, head, query chunk).

use std::cell::RefCell;

use rayon::prelude::*;

use super::kernels::{axpy, dot, SharedMut};
use super::kv_cache::KvCache;
use super::rounding::Rounder;

/// Query tokens per parallel task: long prefills split into several tasks per head.
pub(super) const QUERY_CHUNK: usize = 32;

/// One parallel unit of attention work: some query tokens of one sequence.
#[derive(Clone, Copy, Debug)]
pub(super) struct QueryChunk {
    /// Index of the sequence in the batch.
    pub seq: usize,
    /// Row of the chunk's first token in the step's token matrix.
    pub first_row: usize,
    /// Position of that token in its sequence.
    pub first_pos: usize,
    pub len: usize,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct HeadShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
}

thread_local! {
    /// Softmax scores and the output accumulator, reused across steps by each worker thread.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// For each query row, attends over positions `0..=pos` of its sequence, reading K/V of
/// `layer` through the sequence's block table. `q` rows are `q_row_stride` floats apart, with
/// head `h` at `h * head_dim`; `out` is `[rows, num_heads * head_dim]`. The softmax weights
/// enter P·V rounded by `probs` (the rounding probe; exact normally), their sum stays exact.
#[allow(clippy::too_many_arguments)]
pub(super) fn paged_attention(
    out: &mut [f32],
    q: &[f32],
    q_row_stride: usize,
    chunks: &[QueryChunk],
    block_tables: &[&[u32]],
    cache: &KvCache,
    layer: usize,
    shape: HeadShape,
    probs: Rounder,
) {
    let hd = shape.head_dim;
    let q_width = shape.num_heads * hd;
    let rows = chunks
        .iter()
        .map(|c| c.first_row + c.len)
        .max()
        .unwrap_or(0);
    assert!(out.len() >= rows * q_width, "attention output too small");
    let group = shape.num_heads / shape.num_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let simd = Simd::detect();
    let out_ptr = SharedMut(out.as_mut_ptr());

    (0..chunks.len() * shape.num_heads)
        .into_par_iter()
        .for_each(|task| {
            let chunk = chunks[task / shape.num_heads];
            let head = task % shape.num_heads;
            let view = HeadView {
                table: block_tables[chunk.seq],
                cache,
                layer,
                kv_head: head / group,
                shape,
                scale,
                probs,
            };
            SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let max_ctx = chunk.first_pos + chunk.len;
                scratch.resize(max_ctx + hd, 0.0);
                let (scores, acc) = scratch.split_at_mut(max_ctx);
                for i in 0..chunk.len {
                    let row = chunk.first_row + i;
                    let ctx = chunk.first_pos + i + 1;
                    let q_head = &q[row * q_row_stride + head * hd..][..hd];
                    simd.attend(&view, q_head, &mut scores[..ctx], acc);
                    // SAFETY: (row, head) pairs are unique across tasks (chunks cover disjoint
                    // rows, heads are split per task), `row < rows` so the slice lies inside
                    // `out`, and `out` outlives the parallel loop.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            out_ptr.get().add(row * q_width + head * hd),
                            hd,
                        )
                    };
                    dst.copy_from_slice(acc);
                }
            });
        });
}

/// What one (sequence, head) task reads: its KV head of one layer, through a block table.
struct HeadView<'a> {
    table: &'a [u32],
    cache: &'a KvCache,
    layer: usize,
    kv_head: usize,
    shape: HeadShape,
    scale: f32,
    probs: Rounder,
}

/// The instruction set the attention loops are compiled for, chosen once per call.
#[derive(Clone, Copy)]
enum Simd {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
}

impl Simd {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Simd::Avx2Fma;
        }
        Simd::Portable
    }

    fn attend(self, view: &HeadView<'_>, q: &[f32], scores: &mut [f32], acc: &mut [f32]) {
        match self {
            Simd::Portable => attend(view, q, scores, acc),
            // SAFETY: `detect` saw AVX2 and FMA on this CPU.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2Fma => unsafe { attend_avx2(view, q, scores, acc) },
        }
    }
}

/// [`attend`] compiled with 256-bit vectors (its dot/axpy helpers are inlined into it).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(view: &HeadView<'_>, q: &[f32], scores: &mut [f32], acc: &mut [f32]) {
    attend(view, q, scores, acc)
}

/// softmax(q·Kᵀ·scale)·V over the first `scores.len()` cached positions, into `acc`.
#[inline(always)]
fn attend(view: &HeadView<'_>, q: &[f32], scores: &mut [f32], acc: &mut [f32]) {
    let (hd, bs) = (view.shape.head_dim, view.shape.block_size);
    let kv_width = view.shape.num_kv_heads * hd;
    let head_offset = view.kv_head * hd;
    let ctx = scores.len();
    let blocks = ctx.div_ceil(bs);
    let mut max_score = f32::NEG_INFINITY;
    for (b, &block) in view.table[..blocks].iter().enumerate() {
        let (k_plane, _) = view.cache.planes(block as usize, view.layer);
        let used = bs.min(ctx - b * bs);
        for slot in 0..used {
            let k = &k_plane[slot * kv_width + head_offset..][..hd];
            let s = dot(q, k) * view.scale;
            scores[b * bs + slot] = s;
            max_score = max_score.max(s);
        }
    }
    let mut total = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max_score).exp();
        total += *s;
    }
    view.probs.round_all(scores);
    acc.fill(0.0);
    for (b, &block) in view.table[..blocks].iter().enumerate() {
        let (_, v_plane) = view.cache.planes(block as usize, view.layer);
        let used = bs.min(ctx - b * bs);
        for slot in 0..used {
            let v = &v_plane[slot * kv_width + head_offset..][..hd];
            axpy(acc, scores[b * bs + slot], v);
        }
    }
    let inv_total = 1.0 / total;
    acc.iter_mut().for_each(|a| *a *= inv_total);
}
