//! One forward pass on the device: embedding, the transformer layers, final norm and logits.
//! The residual stream stays f32; GEMM inputs are 16-bit; the output projections accumulate
//! straight into the residual (cuBLAS beta = 1), which is the "add" of each residual block.

use super::gemm::OutType;
use super::gemv::{
    residual_ss_partials, GemvInput, GemvVariant, NormedInput, QkvRope, NORM_FOLD_MAX_HIDDEN,
};
use super::graphs::{DecodeGraphs, DecodeKey, GraphMode, Next};
use super::kernels::{Arg, DECODE_THREADS, DECODE_TILE, NULL, PREFILL_THREADS, RMS_NORM_THREADS};
use super::plan::{validate, Limits};
use super::{CudaBackend, MAX_DECODE_SPLITS};
use crate::backend::{BackendError, SeqStep};

/// Context splits for flash-decoding: enough CTAs to fill the GPU (`ctas_per_sm` per SM), each
/// split a whole number of tiles. Returns (split_len, num_splits).
pub(super) fn decode_splits(
    entries: usize,
    kv_heads: usize,
    max_ctx: usize,
    num_sms: usize,
    ctas_per_sm: usize,
) -> (usize, usize) {
    let base = (entries * kv_heads).max(1);
    let tiles = max_ctx.div_ceil(DECODE_TILE).max(1);
    let wanted = (ctas_per_sm.max(1) * num_sms).div_ceil(base);
    let splits = wanted.clamp(1, MAX_DECODE_SPLITS.min(tiles));
    let split_len = tiles.div_ceil(splits) * DECODE_TILE;
    (split_len, max_ctx.div_ceil(split_len).max(1))
}

impl CudaBackend {
    pub(super) fn run(&mut self, batch: &[SeqStep<'_>]) -> Result<(), BackendError> {
        if batch.is_empty() {
            self.plan.build(batch, self.opts.block_size);
            return Ok(());
        }
        validate(
            batch,
            &Limits {
                vocab_size: self.config.vocab_size,
                num_blocks: self.cache.num_blocks(),
                block_size: self.opts.block_size,
                max_batch_tokens: self.opts.max_batch_tokens,
                max_num_seqs: self.opts.max_num_seqs,
            },
        )?;
        self.gpu.bind()?;
        if self.graph_mode != GraphMode::Off {
            if let Some(key) =
                // Pad rows are rows: the bucket must fit the activation buffers too.
                DecodeKey::of(
                    batch,
                    self.opts.block_size,
                    self.opts.max_num_seqs.min(self.opts.max_batch_tokens),
                )
                .filter(|&key| {
                    key.bucket <= self.opts.graph_max_batch && self.graphs.accepts(key)
                })
            {
                return self.run_padded_decode(batch, key);
            }
        }
        self.plan.build(batch, self.opts.block_size);
        let meta_bytes = self.plan.meta.len() * 4;
        if self
            .scratch
            .meta
            .as_ref()
            .is_none_or(|m| m.bytes() < meta_bytes)
        {
            self.scratch.meta = Some(
                self.gpu
                    .alloc(meta_bytes.next_power_of_two(), "step metadata")?,
            );
        }
        let meta = self.scratch.meta.as_ref().expect("allocated just above");
        meta.write(&self.plan.meta)?;
        let splits = decode_splits(
            self.plan.decode_entries,
            self.config.num_kv_heads,
            self.plan.max_decode_ctx,
            self.gpu.num_sms as usize,
            self.opts.decode_ctas_per_sm,
        );
        self.encode(meta.ptr(), splits)
    }

    /// A decode-only step in the padded layout of `key`: replayed from its graph when one is
    /// captured, else launched eagerly (and captured on the key's second step).
    fn run_padded_decode(
        &mut self,
        batch: &[SeqStep<'_>],
        key: DecodeKey,
    ) -> Result<(), BackendError> {
        let block_size = self.opts.block_size;
        self.plan.build_padded_decode(
            batch,
            block_size,
            key.bucket,
            key.width,
            self.cache.sink_block(),
        );
        // Splits follow the key, not the batch, so that a replay matches the capture.
        let splits = decode_splits(
            key.bucket,
            self.config.num_kv_heads,
            key.width * block_size,
            self.gpu.num_sms as usize,
            self.opts.decode_ctas_per_sm,
        );
        let (meta, next) = self
            .graphs
            .prepare(&self.gpu, key, &self.plan.meta, self.graph_mode)?;
        match next {
            Next::Replay => self.graphs.replay(key),
            Next::Eager => self.encode(meta, splits),
            Next::Capture => {
                DecodeGraphs::begin_capture(&self.gpu)?;
                let encoded = self.encode(meta, splits);
                if self.graphs.finish_capture(&self.gpu, key, encoded) {
                    self.graphs.replay(key)
                } else {
                    self.encode(meta, splits)
                }
            }
        }
    }

    /// Enqueues the whole forward pass of `self.plan`, whose metadata is at device address
    /// `meta`, with decode attention cut into `(split_len, num_splits)`. Only launches: no
    /// copies, allocations or synchronisation, so it can be captured into a graph.
    fn encode(
        &self,
        meta: u64,
        (split_len, num_splits): (usize, usize),
    ) -> Result<(), BackendError> {
        let m = |offset: usize| Arg::Ptr(meta + (offset * 4) as u64);

        let c = &self.config;
        let k = &self.kernels;
        let s = &self.scratch;
        let p = &self.plan;
        let rows = p.rows;
        let h = c.hidden_size;
        let q_dim = c.num_heads * c.head_dim;
        let qkv_w = q_dim + 2 * c.num_kv_heads * c.head_dim;
        let inter = c.intermediate_size;
        let layers = c.num_layers as i32;
        let block_size = self.opts.block_size as i32;
        let cache = Arg::Ptr(self.cache.ptr());
        let scale = 1.0 / (c.head_dim as f32).sqrt();
        // RMSNorm of `rows` rows of the residual stream (`row_index`: which rows, or NULL for
        // all), scaled by `weight`, into `out`.
        let rms_norm = |rows: usize, row_index: Arg, weight: u64, out: u64| {
            k.launch(
                &k.rms_norm,
                (rows as u32, 1, 1),
                RMS_NORM_THREADS,
                &[
                    Arg::Ptr(s.hidden.ptr()),
                    row_index,
                    Arg::Ptr(weight),
                    Arg::Ptr(out),
                    Arg::I32(h as i32),
                    Arg::F32(c.rms_norm_eps),
                ],
            )
        };

        k.launch(
            &k.embed_lookup,
            (rows as u32, 1, 1),
            256,
            &[
                m(p.tokens_at),
                Arg::Ptr(self.weights.embed.ptr()),
                Arg::Ptr(s.hidden.ptr()),
                Arg::I32(h as i32),
            ],
        )?;
        // One-row steps fold each norm into the projection after it (see skinny_gemm.cu).
        let fuse_norms = rows == 1 && self.fuse_norms && self.opts.skinny_gemm_max_rows >= 1;
        let fold_norms = self.fold_one_row_rms_norm(rows, num_splits, fuse_norms);
        // The folded norm's input: the residual as the previous o_proj/down left it, with that
        // projection's partial sums of squares.
        let normed_input = |norm_w: u64, writer_inn: usize| NormedInput {
            res: s.hidden.ptr(),
            norm_w,
            ss_partials: s.ss_partials.ptr(),
            num_partials: residual_ss_partials(writer_inn, h),
            eps: c.rms_norm_eps,
        };
        let last_layer = self.weights.layers.len().saturating_sub(1);
        for (li, layer) in self.weights.layers.iter().enumerate() {
            let attn_input: GemvInput = if fold_norms && li > 0 {
                normed_input(layer.attn_norm.ptr(), inter).into()
            } else {
                s.normed.ptr().into()
            };
            let ffn_input: GemvInput = if fold_norms {
                normed_input(layer.ffn_norm.ptr(), q_dim).into()
            } else {
                s.normed.ptr().into()
            };
            let li = li as i32;
            let rope_done = if fuse_norms && k.fused_norm_fits(h, layer.qkv.ptr()) {
                k.skinny_norm_gemm(
                    s.qkv.ptr(),
                    true,
                    s.hidden.ptr(),
                    layer.attn_norm.ptr(),
                    layer.qkv.ptr(),
                    h,
                    qkv_w,
                    false,
                    c.rms_norm_eps,
                )?;
                false
            } else {
                if let GemvInput::Plain(_) = attn_input {
                    rms_norm(rows, NULL, layer.attn_norm.ptr(), s.normed.ptr())?;
                }
                let rope = QkvRope {
                    bias: layer.qkv_bias.as_ref().map_or(0, |b| b.ptr()),
                    positions: meta + (p.positions_at * 4) as u64,
                    slots: meta + (p.slots_at * 4) as u64,
                    inv_freq: s.inv_freq.ptr(),
                    q_out: s.q.ptr(),
                    cache: self.cache.ptr(),
                    inn: h,
                    layer: li as usize,
                    num_layers: c.num_layers,
                    num_heads: c.num_heads,
                    num_kv_heads: c.num_kv_heads,
                    block_size: self.opts.block_size,
                };
                let fused = (self.one_row_folds(rows, num_splits) && self.opts.fuse_one_row_rope)
                    .then(|| k.gemv_qkv_rope(&rope, attn_input, layer.qkv.ptr()))
                    .flatten();
                match (fused, attn_input) {
                    (Some(done), _) => {
                        done?;
                        true
                    }
                    (None, GemvInput::Normed(input)) => {
                        folded(k.gemv_split_k_norm(
                            s.qkv.ptr(),
                            true,
                            &input,
                            layer.qkv.ptr(),
                            h,
                            qkv_w,
                        ))?;
                        false
                    }
                    (None, GemvInput::Plain(x)) => {
                        self.linear(
                            s.qkv.ptr(),
                            OutType::F32,
                            x,
                            layer.qkv.ptr(),
                            rows,
                            h,
                            qkv_w,
                            false,
                        )?;
                        false
                    }
                }
            };
            if !rope_done {
                k.launch(
                    &k.rope_kv_write,
                    (rows as u32, 1, 1),
                    256,
                    &[
                        Arg::Ptr(s.qkv.ptr()),
                        layer.qkv_bias.as_ref().map_or(NULL, |b| Arg::Ptr(b.ptr())),
                        m(p.positions_at),
                        m(p.slots_at),
                        Arg::Ptr(s.inv_freq.ptr()),
                        Arg::Ptr(s.q.ptr()),
                        cache,
                        Arg::I32(li),
                        Arg::I32(layers),
                        Arg::I32(c.num_heads as i32),
                        Arg::I32(c.num_kv_heads as i32),
                        Arg::I32(block_size),
                    ],
                )?;
            }
            if p.decode_entries > 0 {
                let merge_in_kernel = self.opts.fuse_attention_merge;
                k.launch(
                    &k.decode_attention,
                    (
                        c.num_kv_heads as u32,
                        p.decode_entries as u32,
                        num_splits as u32,
                    ),
                    DECODE_THREADS,
                    &[
                        Arg::Ptr(s.q.ptr()),
                        Arg::Ptr(s.attn.ptr()),
                        Arg::Ptr(s.part_acc.ptr()),
                        Arg::Ptr(s.part_ml.ptr()),
                        m(p.dec_rows_at),
                        m(p.dec_ctx_at),
                        m(p.dec_seq_at),
                        m(p.tables_at),
                        Arg::I32(p.max_blocks as i32),
                        cache,
                        Arg::I32(li),
                        Arg::I32(layers),
                        Arg::I32(c.num_heads as i32),
                        Arg::I32(c.num_kv_heads as i32),
                        Arg::I32(block_size),
                        Arg::F32(scale),
                        Arg::I32(split_len as i32),
                        Arg::I32(num_splits as i32),
                        if merge_in_kernel {
                            Arg::Ptr(
                                s.split_counts.at::<u32>(
                                    li as usize * self.opts.max_num_seqs * c.num_kv_heads,
                                ),
                            )
                        } else {
                            NULL
                        },
                    ],
                )?;
                if num_splits > 1 && !merge_in_kernel {
                    k.launch(
                        &k.decode_attention_reduce,
                        (p.decode_entries as u32, c.num_heads as u32, 1),
                        c.head_dim as u32,
                        &[
                            Arg::Ptr(s.part_acc.ptr()),
                            Arg::Ptr(s.part_ml.ptr()),
                            m(p.dec_rows_at),
                            Arg::Ptr(s.attn.ptr()),
                            Arg::I32(c.num_heads as i32),
                            Arg::I32(num_splits as i32),
                        ],
                    )?;
                }
            }
            if p.prefill_tiles > 0 {
                k.launch(
                    &k.prefill_attention,
                    (p.prefill_tiles as u32, c.num_heads as u32, 1),
                    PREFILL_THREADS,
                    &[
                        Arg::Ptr(s.q.ptr()),
                        Arg::Ptr(s.attn.ptr()),
                        m(p.tiles_at),
                        m(p.tables_at),
                        Arg::I32(p.max_blocks as i32),
                        cache,
                        Arg::I32(li),
                        Arg::I32(layers),
                        Arg::I32(c.num_heads as i32),
                        Arg::I32(c.num_kv_heads as i32),
                        Arg::I32(block_size),
                        Arg::F32(scale * std::f32::consts::LOG2_E),
                    ],
                )?;
            }
            self.residual_projection(fold_norms, rows, s.attn.ptr(), layer.wo.ptr(), q_dim)?;
            if fuse_norms && k.fused_norm_fits(h, layer.gate_up.ptr()) {
                k.skinny_norm_gate_up_swiglu(
                    s.act.ptr(),
                    s.hidden.ptr(),
                    layer.ffn_norm.ptr(),
                    layer.gate_up.ptr(),
                    h,
                    inter,
                    c.rms_norm_eps,
                )?;
            } else {
                if let GemvInput::Plain(_) = ffn_input {
                    rms_norm(rows, NULL, layer.ffn_norm.ptr(), s.normed.ptr())?;
                }
                self.gate_up_swiglu(rows, num_splits, layer.gate_up.ptr(), ffn_input)?;
            }
            // The last layer's residual goes to the final norm, which stays a kernel.
            let fold_here = fold_norms && li as usize != last_layer;
            self.residual_projection(fold_here, rows, s.act.ptr(), layer.down.ptr(), inter)?;
        }
        if p.logit_rows > 0 {
            rms_norm(
                p.logit_rows,
                m(p.logit_rows_at),
                self.weights.final_norm.ptr(),
                s.final_normed.ptr(),
            )?;
            self.linear(
                s.logits.ptr(),
                OutType::F32,
                s.final_normed.ptr(),
                self.weights.output_matrix().ptr(),
                p.logit_rows,
                h,
                c.vocab_size,
                false,
            )?;
        }
        Ok(())
    }

    /// Whether this step's projections go through the one-row split-K GEMV (the condition of
    /// its fused gate/up + SwiGLU and QKV + rope kernels).
    fn one_row_split_k(&self, rows: usize) -> bool {
        rows == 1
            && self.opts.skinny_gemm_max_rows >= 1
            && self.kernels.gemv_variant() == GemvVariant::SplitK
    }

    /// Whether this step may use the split-K kernels with SwiGLU or rope + K/V write folded in:
    /// a one-row split-K step whose decode attention has at most
    /// `CudaOptions::one_row_fold_max_splits` context splits (measured at 8B b1: the folds gain
    /// with 8 and 16 splits, ctx512 and ctx1024, and lose with 32, ctx2048; docs/cuda-notes.md
    /// round 6).
    fn one_row_folds(&self, rows: usize, num_splits: usize) -> bool {
        self.one_row_split_k(rows) && num_splits <= self.opts.one_row_fold_max_splits
    }

    /// Whether this step folds its per-layer RMSNorms into the split-K projections
    /// (`CudaOptions::fold_one_row_rms_norm`): a one-row split-K step without fused norms, with
    /// at most `rms_norm_fold_max_splits` attention splits, whose every projection the split-K
    /// kernels can serve, so that no link of the chain of partial sums of squares falls back
    /// to another kernel.
    pub(super) fn fold_one_row_rms_norm(
        &self,
        rows: usize,
        num_splits: usize,
        fuse_norms: bool,
    ) -> bool {
        let (c, k) = (&self.config, &self.kernels);
        let h = c.hidden_size;
        if !self.opts.fold_one_row_rms_norm
            || num_splits > self.opts.rms_norm_fold_max_splits
            || !self.one_row_split_k(rows)
            || !h.is_multiple_of(8)
            || h > NORM_FOLD_MAX_HIDDEN
            || !self.scratch.hidden.ptr().is_multiple_of(16)
        {
            return false;
        }
        self.weights.layers.iter().all(|l| {
            let fused = |w: u64| fuse_norms && k.fused_norm_fits(h, w);
            !fused(l.qkv.ptr())
                && !fused(l.gate_up.ptr())
                && [l.qkv.ptr(), l.gate_up.ptr(), l.wo.ptr(), l.down.ptr()]
                    .iter()
                    .all(|w| w.is_multiple_of(16))
                && l.attn_norm.ptr().is_multiple_of(16)
                && l.ffn_norm.ptr().is_multiple_of(16)
                && (c.num_heads * c.head_dim).is_multiple_of(8)
                && c.intermediate_size.is_multiple_of(8)
        })
    }

    /// `act = SwiGLU(x · gate_upᵀ)` for `rows` rows: one split-K kernel for a one-row step
    /// served by the split-K GEMV, else the projection into `gate_up` and the `swiglu` kernel.
    fn gate_up_swiglu(
        &self,
        rows: usize,
        num_splits: usize,
        gate_up: u64,
        x: GemvInput,
    ) -> Result<(), BackendError> {
        let (s, k) = (&self.scratch, &self.kernels);
        let (h, inter) = (self.config.hidden_size, self.config.intermediate_size);
        if self.one_row_folds(rows, num_splits) && self.opts.fuse_one_row_swiglu {
            if let Some(done) = k.gemv_gate_up_swiglu(s.act.ptr(), x, gate_up, h, inter) {
                return done;
            }
        }
        match x {
            GemvInput::Normed(input) => {
                folded(k.gemv_split_k_norm(s.gate_up.ptr(), false, &input, gate_up, h, 2 * inter))?
            }
            GemvInput::Plain(x) => self.linear(
                s.gate_up.ptr(),
                OutType::Half,
                x,
                gate_up,
                rows,
                h,
                2 * inter,
                false,
            )?,
        }
        let total = rows * inter;
        k.launch(
            &k.swiglu,
            (total.div_ceil(256).min(16384) as u32, 1, 1),
            256,
            &[
                Arg::Ptr(s.gate_up.ptr()),
                Arg::Ptr(s.act.ptr()),
                Arg::I32(inter as i32),
                Arg::U64(total as u64),
            ],
        )
    }
}

/// A launch of the folded-norm chain: `fold_one_row_rms_norm` checked every shape first, so a
/// kernel that still refuses one is a bug, not a reason to fall back (the chain of partial sums
/// of squares would break).
impl CudaBackend {
    /// `hidden += x · w` (o_proj or down: the residual add); with `fold_norm`, also one
    /// partial sum of squares of the new residual per CTA for the next projection's folded
    /// RMSNorm.
    fn residual_projection(
        &self,
        fold_norm: bool,
        rows: usize,
        x: u64,
        w: u64,
        inn: usize,
    ) -> Result<(), BackendError> {
        let (s, h) = (&self.scratch, self.config.hidden_size);
        if fold_norm {
            return folded(self.kernels.gemv_split_k_residual_ss(
                s.hidden.ptr(),
                x,
                w,
                inn,
                h,
                s.ss_partials.ptr(),
            ));
        }
        self.linear(s.hidden.ptr(), OutType::F32, x, w, rows, inn, h, true)
    }
}

fn folded(launch: Option<Result<(), BackendError>>) -> Result<(), BackendError> {
    launch.unwrap_or_else(|| {
        Err(BackendError::Device(
            "a folded-RMSNorm projection refused a shape its check accepted".into(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_splits_fill_the_gpu_and_cover_the_context() {
        // One sequence, 8 kv heads, 2048 tokens on 132 SMs: split into whole tiles.
        let (len, n) = decode_splits(1, 8, 2048, 132, 4);
        assert_eq!(len % DECODE_TILE, 0);
        assert!(len * n >= 2048 && len * (n - 1) < 2048);
        assert!(n > 1);
        // A big batch needs no split.
        assert_eq!(decode_splits(128, 8, 2048, 132, 4).1, 1);
        // Short context: never more splits than tiles.
        assert_eq!(decode_splits(1, 8, 10, 132, 4), (DECODE_TILE, 1));
        // Fewer CTAs per SM: fewer, longer splits (8B b1 ctx2048: 32 splits of one tile at 4
        // per SM, 17 wanted at 1 per SM, so 16 splits of two tiles).
        assert_eq!(decode_splits(1, 8, 2048, 132, 4), (DECODE_TILE, 32));
        assert_eq!(decode_splits(1, 8, 2048, 132, 1), (2 * DECODE_TILE, 16));
    }
}
