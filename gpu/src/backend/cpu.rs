//! The CPU reference backend: an exact f32 Llama/Qwen2 forward pass over a paged KV cache.
//!
//! Every token of a step goes through each projection as one matrix product (`gemm`,
//! multi-threaded), attention runs per (sequence, head, query chunk) on rayon, and all
//! intermediate buffers live in a scratch area reused across steps.

mod attention;
mod kernels;
mod kv_cache;
mod packed;
mod rope;
mod rounding;
#[cfg(test)]
mod rounding_tests;
#[cfg(target_arch = "x86_64")]
mod small_batch;

pub use rounding::{Precision, RoundingPlan, RoundingPoint};

use attention::{paged_attention, HeadShape, QueryChunk, QUERY_CHUNK};
use kernels::{matmul_transposed, rms_norm, silu_mul};
use kv_cache::KvCache;
use packed::PackedWeights;
use rope::{rotate_heads, RopeFrequencies};
use rounding::{Rounder, RoundingPoint as Point};

use crate::backend::{Backend, BackendError, KvDtype, KvLayout, Logits, SeqStep};
use crate::config::ModelConfig;
use crate::weights::ModelWeights;

pub struct CpuBackend {
    config: ModelConfig,
    weights: PackedWeights,
    cache: KvCache,
    rope: RopeFrequencies,
    scratch: Scratch,
    /// The precision probe; `None` (the default) runs the exact f32 pass.
    rounding: Option<RoundingPlan>,
}

/// Per-step buffers, grown to the largest step seen and then reused.
#[derive(Default)]
struct Scratch {
    /// Residual stream `[tokens, hidden]`.
    hidden: Vec<f32>,
    normed: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
    /// An output projection's result, held apart from the residual only while a rounding plan
    /// rounds it before the add.
    projection: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    positions: Vec<usize>,
    /// (block id, slot in block) for every token of the step.
    slots: Vec<(usize, usize)>,
    chunks: Vec<QueryChunk>,
    logit_rows: Vec<f32>,
    logit_rows_normed: Vec<f32>,
}

fn resized(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buffer.resize(len, 0.0);
    buffer
}

impl CpuBackend {
    /// A backend with `num_kv_blocks` blocks of `block_size` tokens each.
    pub fn new(
        config: ModelConfig,
        weights: ModelWeights,
        num_kv_blocks: usize,
        block_size: usize,
    ) -> Result<Self, BackendError> {
        check_config(&config)?;
        if block_size == 0 {
            return Err(BackendError::InvalidBatch(
                "block_size must be at least 1".into(),
            ));
        }
        let layout = Self::layout_for(&config, block_size);
        let weights = PackedWeights::pack(&config, weights)?;
        let cache = KvCache::new(layout, num_kv_blocks)?;
        tracing::info!(
            blocks = num_kv_blocks,
            block_size,
            kv_mib = num_kv_blocks * cache.layout().bytes_per_block() / (1024 * 1024),
            threads = rayon::current_num_threads(),
            "CPU backend ready"
        );
        Ok(Self {
            rope: RopeFrequencies::new(&config),
            config,
            weights,
            cache,
            scratch: Scratch::default(),
            rounding: None,
        })
    }

    /// A backend that rounds values as `plan` says (weights once, here; activations on every
    /// step), to measure what a 16-bit device backend loses at each point. Not for serving.
    pub fn with_rounding(
        config: ModelConfig,
        weights: ModelWeights,
        num_kv_blocks: usize,
        block_size: usize,
        plan: RoundingPlan,
    ) -> Result<Self, BackendError> {
        let mut backend = Self::new(config, weights, num_kv_blocks, block_size)?;
        backend.weights.round(&plan);
        backend.rounding = Some(plan);
        Ok(backend)
    }

    /// A backend with as many KV blocks as fit in `kv_bytes`.
    pub fn with_memory_budget(
        config: ModelConfig,
        weights: ModelWeights,
        kv_bytes: usize,
        block_size: usize,
    ) -> Result<Self, BackendError> {
        let per_block = Self::layout_for(&config, block_size.max(1))
            .bytes_per_block()
            .max(1);
        let blocks = kv_bytes / per_block;
        if blocks == 0 {
            return Err(BackendError::OutOfMemory(format!(
                "a KV budget of {kv_bytes} bytes holds no block ({per_block} bytes each)"
            )));
        }
        Self::new(config, weights, blocks, block_size)
    }

    /// The KV layout a CPU backend uses for `config` (always f32).
    pub fn layout_for(config: &ModelConfig, block_size: usize) -> KvLayout {
        KvLayout {
            num_layers: config.num_layers,
            num_kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
            block_size,
            dtype: KvDtype::F32,
        }
    }

    fn validate(&self, batch: &[SeqStep<'_>]) -> Result<(), BackendError> {
        super::validate_steps(
            batch,
            self.config.vocab_size,
            self.cache.num_blocks(),
            self.cache.layout().block_size,
        )
    }

    /// Fills positions, cache slots, rotary tables and attention work units for the batch.
    fn plan_step(&mut self, batch: &[SeqStep<'_>]) {
        let block_size = self.cache.layout().block_size;
        let s = &mut self.scratch;
        s.positions.clear();
        s.slots.clear();
        s.chunks.clear();
        for (seq, step) in batch.iter().enumerate() {
            let first_row = s.positions.len();
            for pos in step.start_pos..step.start_pos + step.tokens.len() {
                s.positions.push(pos);
                s.slots.push((
                    step.block_table[pos / block_size] as usize,
                    pos % block_size,
                ));
            }
            for offset in (0..step.tokens.len()).step_by(QUERY_CHUNK) {
                s.chunks.push(QueryChunk {
                    seq,
                    first_row: first_row + offset,
                    first_pos: step.start_pos + offset,
                    len: QUERY_CHUNK.min(step.tokens.len() - offset),
                });
            }
        }
        let half = self.rope.half_dim();
        let rows = s.positions.len();
        let (cos, sin) = (
            resized(&mut s.cos, rows * half),
            resized(&mut s.sin, rows * half),
        );
        self.rope.fill_tables(&s.positions, cos, sin);
    }

    fn run_layer(&mut self, layer_index: usize, block_tables: &[&[u32]]) {
        let c = &self.config;
        let (h, hd, inter) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let q_dim = c.num_heads * hd;
        let kv_dim = c.num_kv_heads * hd;
        let qkv_width = q_dim + 2 * kv_dim;
        let half = hd / 2;
        let layer = &self.weights.layers[layer_index];
        let plan = self.rounding.as_ref();
        let s = &mut self.scratch;
        let rows = s.positions.len();

        let normed = resized(&mut s.normed, rows * h);
        rms_norm(normed, &s.hidden, &layer.attn_norm, c.rms_norm_eps);
        round_at(plan, Point::NormOutput, normed);
        let qkv = resized(&mut s.qkv, rows * qkv_width);
        matmul_transposed(qkv, normed, &layer.qkv, rows, h, qkv_width, false);
        for (t, row) in qkv.chunks_exact_mut(qkv_width).enumerate() {
            if let Some(bias) = &layer.qkv_bias {
                row.iter_mut().zip(bias).for_each(|(x, b)| *x += b);
            }
            let (cos, sin) = (
                &s.cos[t * half..(t + 1) * half],
                &s.sin[t * half..(t + 1) * half],
            );
            rotate_heads(&mut row[..q_dim + kv_dim], cos, sin);
            round_at(plan, Point::Query, &mut row[..q_dim]);
            round_at(plan, Point::KeyValue, &mut row[q_dim..]);
            let (block, slot) = s.slots[t];
            let (k, v) = row[q_dim..].split_at(kv_dim);
            self.cache.write_token(block, layer_index, slot, k, v);
        }

        let shape = HeadShape {
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: hd,
            block_size: self.cache.layout().block_size,
        };
        let attn = resized(&mut s.attn, rows * q_dim);
        paged_attention(
            attn,
            &s.qkv,
            qkv_width,
            &s.chunks,
            block_tables,
            &self.cache,
            layer_index,
            shape,
            rounder_at(plan, Point::AttentionProbs),
        );
        round_at(plan, Point::AttentionOutput, attn);
        add_product(
            &mut s.hidden,
            &mut s.projection,
            attn,
            &layer.wo,
            q_dim,
            rounder_at(plan, Point::OProjOutput),
        );

        rms_norm(&mut s.normed, &s.hidden, &layer.ffn_norm, c.rms_norm_eps);
        round_at(plan, Point::NormOutput, &mut s.normed);
        let gate_up = resized(&mut s.gate_up, rows * 2 * inter);
        matmul_transposed(
            gate_up,
            &s.normed,
            &layer.gate_up,
            rows,
            h,
            2 * inter,
            false,
        );
        round_at(plan, Point::GateUpOutput, gate_up);
        let act = resized(&mut s.act, rows * inter);
        silu_mul(act, gate_up, inter);
        round_at(plan, Point::SwigluOutput, act);
        add_product(
            &mut s.hidden,
            &mut s.projection,
            act,
            &layer.down,
            inter,
            rounder_at(plan, Point::DownOutput),
        );
    }

    /// Final norm and output projection for the last token of each step that wants logits.
    fn logits(&mut self, batch: &[SeqStep<'_>]) -> Logits {
        let (h, vocab) = (self.config.hidden_size, self.config.vocab_size);
        let plan = self.rounding.as_ref();
        let s = &mut self.scratch;
        s.logit_rows.clear();
        let mut end_row = 0;
        for step in batch {
            end_row += step.tokens.len();
            if step.want_logits {
                s.logit_rows
                    .extend_from_slice(&s.hidden[(end_row - 1) * h..end_row * h]);
            }
        }
        let rows = s.logit_rows.len() / h;
        let normed = resized(&mut s.logit_rows_normed, rows * h);
        rms_norm(
            normed,
            &s.logit_rows,
            &self.weights.final_norm,
            self.config.rms_norm_eps,
        );
        round_at(plan, Point::FinalNormOutput, normed);
        let mut data = vec![0f32; rows * vocab];
        matmul_transposed(
            &mut data,
            normed,
            self.weights.output_matrix(),
            rows,
            h,
            vocab,
            false,
        );
        round_at(plan, Point::Logits, &mut data);
        Logits {
            vocab_size: vocab,
            data,
        }
    }
}

/// How `plan` rounds `point`; exact without a plan.
fn rounder_at(plan: Option<&RoundingPlan>, point: RoundingPoint) -> Rounder {
    plan.map_or(Rounder::EXACT, |plan| plan.rounder(point))
}

/// Rounds `values` at `point` when a plan is set.
fn round_at(plan: Option<&RoundingPlan>, point: RoundingPoint, values: &mut [f32]) {
    rounder_at(plan, point).round_all(values);
}

/// `hidden[rows, n] += input[rows, k] · w[n, k]ᵀ`, the end of a residual block: fused into the
/// product, unless the product is to be rounded before the add (then it goes through `spare`).
fn add_product(
    hidden: &mut [f32],
    spare: &mut Vec<f32>,
    input: &[f32],
    w: &[f32],
    k: usize,
    rounder: Rounder,
) {
    let n = w.len() / k;
    let rows = hidden.len() / n;
    if rounder.is_exact() {
        matmul_transposed(hidden, input, w, rows, k, n, true);
        return;
    }
    let product = resized(spare, rows * n);
    matmul_transposed(product, input, w, rows, k, n, false);
    rounder.round_all(product);
    hidden
        .iter_mut()
        .zip(product.iter())
        .for_each(|(h, p)| *h += p);
}

fn check_config(c: &ModelConfig) -> Result<(), BackendError> {
    let bad = |what: &str| {
        Err(BackendError::Device(format!(
            "unsupported model config: {what}"
        )))
    };
    if c.num_heads == 0 || c.num_kv_heads == 0 || !c.num_heads.is_multiple_of(c.num_kv_heads) {
        return bad("num_heads must be a positive multiple of num_kv_heads");
    }
    if c.head_dim == 0 || !c.head_dim.is_multiple_of(2) {
        return bad("head_dim must be even and positive");
    }
    if c.hidden_size == 0 || c.vocab_size == 0 {
        return bad("hidden_size and vocab_size must be positive");
    }
    Ok(())
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu".into()
    }

    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn kv_layout(&self) -> &KvLayout {
        self.cache.layout()
    }

    fn num_kv_blocks(&self) -> usize {
        self.cache.num_blocks()
    }

    fn forward(&mut self, batch: &[SeqStep<'_>]) -> Result<Logits, BackendError> {
        self.validate(batch)?;
        self.plan_step(batch);
        let h = self.config.hidden_size;
        let rows = self.scratch.positions.len();
        let hidden = resized(&mut self.scratch.hidden, rows * h);
        let tokens = batch.iter().flat_map(|step| step.tokens.iter());
        for (row, &token) in hidden.chunks_exact_mut(h).zip(tokens) {
            let token = token as usize;
            row.copy_from_slice(&self.weights.embed[token * h..(token + 1) * h]);
        }
        let block_tables: Vec<&[u32]> = batch.iter().map(|step| step.block_table).collect();
        for layer in 0..self.config.num_layers {
            self.run_layer(layer, &block_tables);
        }
        Ok(self.logits(batch))
    }

    fn export_blocks(&self, blocks: &[u32], out: &mut Vec<u8>) -> Result<(), BackendError> {
        self.cache.export(blocks, out)
    }

    fn import_blocks(&mut self, blocks: &[u32], data: &[u8]) -> Result<(), BackendError> {
        self.cache.import(blocks, data)
    }
}
