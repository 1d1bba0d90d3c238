//! The CUDA backend: bf16 (or f16) weights and paged KV cache in device memory, projections
//! through cuBLAS, and NVRTC-compiled kernels for norms, rotary embedding, SwiGLU, paged
//! decode attention (flash-decoding), tensor-core prefill attention and greedy sampling.
//!
//! CUDA libraries are loaded at run time (cudarc `dynamic-loading`): without a GPU the crate
//! still builds and runs on the CPU backend, and [`CudaBackend::new`] returns an error.

pub mod device;
mod forward;
pub mod gemm;
pub mod gemv;
pub mod graphs;
pub mod kernels;
pub mod kv_cache;
pub mod plan;
pub mod weights;

use std::sync::Arc;

pub use device::{cuda_available, DeviceBuffer, Gpu};
use gemm::Blas;
pub use gemv::GemvVariant;
use graphs::DecodeGraphs;
pub use graphs::{GraphMode, GraphStats};
use kernels::Kernels;
use kv_cache::DeviceKvCache;
use plan::StepPlan;
use weights::DeviceWeights;

use crate::backend::{Backend, BackendError, KvDtype, KvLayout, Logits, SeqStep};
use crate::config::ModelConfig;
use crate::weights::ModelWeights;

/// The 16-bit type of weights, activations and KV cache on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CudaDtype {
    #[default]
    Bf16,
    F16,
}

impl CudaDtype {
    pub fn kv_dtype(self) -> KvDtype {
        match self {
            CudaDtype::Bf16 => KvDtype::Bf16,
            CudaDtype::F16 => KvDtype::F16,
        }
    }
}

#[derive(Clone, Debug)]
pub struct CudaOptions {
    /// CUDA device ordinal.
    pub device: usize,
    pub dtype: CudaDtype,
    /// Fraction of the device's memory this backend may hold in total; the KV cache gets what
    /// is left of it after weights and scratch buffers.
    pub gpu_memory_utilization: f32,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Most sequences in one step.
    pub max_num_seqs: usize,
    /// Most tokens in one step (sizes the activation buffers).
    pub max_batch_tokens: usize,
    /// Steps of at most this many tokens (1..=8) run their projections through the
    /// weight-streaming skinny GEMM instead of cuBLAS; 0 always uses cuBLAS. Default 1: at
    /// 8 rows cuBLAS is faster (see docs/cuda-notes.md).
    pub skinny_gemm_max_rows: usize,
    /// One-row steps (while the skinny GEMM serves one row) fuse each RMSNorm into the
    /// projection after it, and SwiGLU into the gate/up projection: bit-identical results, two
    /// and one launches fewer per layer. Applied only to models with hidden size at most
    /// [`FUSED_NORMS_MAX_HIDDEN`]. Default off since round 9 (docs/cuda-notes.md): with the
    /// latency-bound `rms_norm` rewritten, the split-K path with norms apart is faster at
    /// every size measured (b1 ctx512 from graphs, one device call: SmolLM2 0.614 vs 0.718 ms,
    /// Llama-3.2-1B 1.118 vs 1.328 ms, 8B 5.759 vs 6.904 ms); kept selectable and checked.
    /// [`CudaBackend::set_fuse_one_row_norms`] overrides.
    pub fuse_one_row_norms: bool,
    /// Decode steps replay CUDA graphs captured per (batch bucket, table width). Default on;
    /// `STATOR_CUDA_GRAPHS=0` in the environment turns it off.
    pub cuda_graphs: bool,
    /// Largest batch bucket decode graphs serve; bigger decode steps launch eagerly with their
    /// real row count. A graph pads a batch to the next power of two, and from ~32 rows on the
    /// padded rows cost more than the launches a graph saves: serving SmolLM2 at 64 streams
    /// gave 20-30% fewer tokens/s with every bucket graphed than with buckets <= 16
    /// (docs/cuda-notes.md, "Round 7"). Default 16; `STATOR_CUDA_GRAPH_MAX_BATCH=N` overrides.
    pub graph_max_batch: usize,
    /// Kernels launch with programmatic dependent launch (sm_90+): each may start while the
    /// previous one finishes, so the skinny GEMM streams its first weights during the previous
    /// kernel's tail. Results are unchanged (checked bit for bit). Default on; ignored on
    /// devices older than sm_90; `STATOR_CUDA_PDL=0` in the environment turns it off.
    pub programmatic_launch: bool,
    /// The kernel of one-row projections (decode batch 1) while the skinny GEMM serves them;
    /// the fused-norm one-row kernels are not affected. Default from `STATOR_GEMV_VARIANT`
    /// (`baseline`, `split_k`, `rows2`, `persistent`), else `split_k`.
    pub gemv_variant: GemvVariant,
    /// One-row steps whose gate/up projection is not served by a fused-norm kernel (hidden
    /// size above [`FUSED_NORMS_MAX_HIDDEN`], or norms apart) fold SwiGLU into it when the
    /// one-row kernel is `split_k`: one launch and the `[2 inter]` round trip fewer per layer,
    /// bit-identical for hidden sizes up to 8192. Default on;
    /// [`CudaBackend::set_fuse_one_row_swiglu`] overrides.
    pub fuse_one_row_swiglu: bool,
    /// Likewise for the QKV projection: rope and the K/V cache write (`rope_kv_write`) are
    /// folded into the split-K QKV kernel, bit-identical. Default on;
    /// [`CudaBackend::set_fuse_one_row_rope`] overrides.
    pub fuse_one_row_rope: bool,
    /// Decode attention split over the context merges its partial results in the last CTA of
    /// each (sequence, kv head) instead of a separate `decode_attention_reduce` launch: one
    /// launch fewer per layer, bit-identical (same merge code, same order). Default off: one
    /// CTA per kv head merging after the slowest split measured slower than the separate
    /// kernel (8B b1: +0.2 ms at ctx512, +0.8 ms at ctx2048; docs/cuda-notes.md round 6);
    /// [`CudaBackend::set_fuse_attention_merge`] overrides.
    pub fuse_attention_merge: bool,
    /// Decode attention is split over the context until the grid has about this many CTAs per
    /// SM (at most `MAX_DECODE_SPLITS` splits, each a whole number of 64-token tiles).
    /// Default 4; [`CudaBackend::set_decode_ctas_per_sm`] overrides.
    pub decode_ctas_per_sm: usize,
    /// The one-row folds (`fuse_one_row_swiglu`, `fuse_one_row_rope`) apply only to steps whose
    /// decode attention is cut into at most this many context splits: at 8B b1 they gain
    /// 0.04 ms at ctx512 (8 splits) and 0.01 ms at ctx1024 (16), and lose 0.06 ms at ctx2048
    /// (32). Default 16; [`CudaBackend::set_one_row_fold_max_splits`] overrides (`usize::MAX`:
    /// always).
    pub one_row_fold_max_splits: usize,
    /// One-row split-K steps whose norms are not fused (hidden size above
    /// [`FUSED_NORMS_MAX_HIDDEN`], or norms apart) drop the per-layer `rms_norm` kernels
    /// after layer 0's input norm: o_proj and down leave one partial sum of squares of the new
    /// residual per CTA, and the next projection (QKV, gate/up, either fold or plain split-K)
    /// adds them in a fixed order and normalises the row once per CTA into shared memory.
    /// Deterministic; differs from the two-kernel path only in the order of the sum of squares.
    /// Default off: one run measured it 0.05 ms faster at 8B ctx512, a second run equal
    /// (docs/cuda-notes.md round 8), so the simpler two-kernel path stays the default; within
    /// `rms_norm_fold_max_splits` when on. [`CudaBackend::set_fold_one_row_rms_norm`] overrides.
    pub fold_one_row_rms_norm: bool,
    /// The RMSNorm fold applies only to steps whose decode attention is cut into at most this
    /// many context splits: at 8B b1 it gains 0.05 ms at ctx512 (8 splits) and loses 0.21 ms
    /// at ctx2048 (32); 16 splits were not measured. Default 8;
    /// [`CudaBackend::set_rms_norm_fold_max_splits`] overrides (`usize::MAX`: always).
    pub rms_norm_fold_max_splits: usize,
}

impl Default for CudaOptions {
    fn default() -> Self {
        Self {
            device: 0,
            dtype: CudaDtype::Bf16,
            gpu_memory_utilization: 0.90,
            block_size: 16,
            max_num_seqs: 256,
            max_batch_tokens: 8192,
            skinny_gemm_max_rows: 1,
            fuse_one_row_norms: false,
            cuda_graphs: std::env::var("STATOR_CUDA_GRAPHS").map_or(true, |v| v != "0"),
            graph_max_batch: std::env::var("STATOR_CUDA_GRAPH_MAX_BATCH")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_GRAPH_MAX_BATCH),
            programmatic_launch: std::env::var("STATOR_CUDA_PDL").map_or(true, |v| v != "0"),
            gemv_variant: GemvVariant::from_env(),
            fuse_one_row_swiglu: true,
            fuse_one_row_rope: true,
            fuse_attention_merge: false,
            decode_ctas_per_sm: 4,
            one_row_fold_max_splits: 16,
            fold_one_row_rms_norm: false,
            rms_norm_fold_max_splits: 8,
        }
    }
}

/// Default of [`CudaOptions::graph_max_batch`].
pub const DEFAULT_GRAPH_MAX_BATCH: usize = 16;

/// Widest hidden size for which one-row steps fuse their norms by default.
pub const FUSED_NORMS_MAX_HIDDEN: usize = 2048;

/// Most context splits of one decode sequence (sizes the partial-result buffers; the merge
/// kernels stage this many per head: `DEC_MAX_SPLITS` in `kernels/decode_attention.cu`).
const MAX_DECODE_SPLITS: usize = 32;

/// Activation buffers for the largest step, allocated once.
struct Scratch {
    hidden: DeviceBuffer,
    normed: DeviceBuffer,
    qkv: DeviceBuffer,
    q: DeviceBuffer,
    attn: DeviceBuffer,
    gate_up: DeviceBuffer,
    act: DeviceBuffer,
    final_normed: DeviceBuffer,
    logits: DeviceBuffer,
    sampled: DeviceBuffer,
    part_acc: DeviceBuffer,
    part_ml: DeviceBuffer,
    /// One counter per (layer, sequence, kv head) for the in-kernel merge of decode attention;
    /// zero between kernels (the merging CTA resets its counter).
    split_counts: DeviceBuffer,
    /// Per-CTA partial sums of squares of the residual for the folded RMSNorm (one-row steps:
    /// at most one CTA per residual value).
    ss_partials: DeviceBuffer,
    inv_freq: DeviceBuffer,
    meta: Option<DeviceBuffer>,
}

pub struct CudaBackend {
    config: ModelConfig,
    opts: CudaOptions,
    gpu: Arc<Gpu>,
    kernels: Kernels,
    blas: Blas,
    weights: DeviceWeights,
    cache: DeviceKvCache,
    scratch: Scratch,
    plan: StepPlan,
    graph_mode: GraphMode,
    graphs: DecodeGraphs,
    /// Whether one-row steps use the fused norm kernels now.
    fuse_norms: bool,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.gpu.name)
            .field("blocks", &self.cache.num_blocks())
            .finish()
    }
}

fn check_config(c: &ModelConfig, o: &CudaOptions) -> Result<(), BackendError> {
    let bad = |what: String| {
        Err(BackendError::Device(format!(
            "unsupported configuration: {what}"
        )))
    };
    if c.num_heads == 0 || c.num_kv_heads == 0 || !c.num_heads.is_multiple_of(c.num_kv_heads) {
        return bad("num_heads must be a positive multiple of num_kv_heads".into());
    }
    if !kernels::supported_head_dim(c.head_dim) {
        return bad(format!(
            "head_dim {} (the kernels support 32, 64, 96, 128)",
            c.head_dim
        ));
    }
    if c.hidden_size == 0 || c.vocab_size == 0 || c.intermediate_size == 0 || c.num_layers == 0 {
        return bad("hidden, intermediate, vocab sizes and layer count must be positive".into());
    }
    if o.block_size == 0 || o.max_num_seqs == 0 || o.max_batch_tokens == 0 {
        return bad("block_size, max_num_seqs and max_batch_tokens must be positive".into());
    }
    if !(o.gpu_memory_utilization > 0.0 && o.gpu_memory_utilization <= 1.0) {
        return bad(format!(
            "gpu_memory_utilization {} must be in (0, 1]",
            o.gpu_memory_utilization
        ));
    }
    Ok(())
}

impl CudaBackend {
    /// Uploads `weights` (converted to `opts.dtype`) and sizes the KV cache from free memory.
    pub fn new(
        config: ModelConfig,
        weights: &ModelWeights,
        opts: CudaOptions,
    ) -> Result<Self, BackendError> {
        let (gpu, kernels) = Self::open_device(&config, &opts)?;
        let device_weights = DeviceWeights::upload(&gpu, &config, weights, opts.dtype)?;
        Self::assemble(config, opts, gpu, kernels, device_weights)
    }

    /// Random weights (N(0, 0.02), unit norms) generated on the device from `seed`: real model
    /// shapes for benchmarks without a host copy of the weights.
    pub fn with_random_weights(
        config: ModelConfig,
        seed: u64,
        opts: CudaOptions,
    ) -> Result<Self, BackendError> {
        let (gpu, kernels) = Self::open_device(&config, &opts)?;
        let device_weights = DeviceWeights::random(&gpu, &kernels, &config, seed)?;
        Self::assemble(config, opts, gpu, kernels, device_weights)
    }

    /// Checks the model against what the kernels support, opens the device and compiles the
    /// kernels for its architecture.
    fn open_device(
        config: &ModelConfig,
        opts: &CudaOptions,
    ) -> Result<(Arc<Gpu>, Kernels), BackendError> {
        check_config(config, opts)?;
        let gpu = Gpu::open(opts.device)?;
        let kernels = Kernels::compile(
            &gpu,
            config.head_dim,
            config.num_heads / config.num_kv_heads,
            opts.dtype,
        )?;
        Ok((gpu, kernels))
    }

    fn assemble(
        config: ModelConfig,
        opts: CudaOptions,
        gpu: Arc<Gpu>,
        kernels: Kernels,
        weights: DeviceWeights,
    ) -> Result<Self, BackendError> {
        let blas = Blas::new(&gpu, opts.dtype)?;
        let scratch = Self::alloc_scratch(&gpu, &config, &opts)?;
        let layout = KvLayout {
            num_layers: config.num_layers,
            num_kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
            block_size: opts.block_size,
            dtype: opts.dtype.kv_dtype(),
        };
        let (free, total) = gpu.memory_info()?;
        let allowed = (total as f64 * opts.gpu_memory_utilization as f64) as usize;
        // Reserve room for cuBLAS workspaces and the metadata buffer.
        let headroom = 512 << 20;
        let budget = allowed
            .saturating_sub(total - free)
            .saturating_sub(headroom)
            .min(free.saturating_sub(headroom));
        // One block more than the engine sees: the sink for pad rows of graphed decode steps.
        let num_blocks = (budget / layout.bytes_per_block()).saturating_sub(1);
        if num_blocks == 0 {
            return Err(BackendError::OutOfMemory(format!(
                "no room for a KV block: {} MiB free of {} MiB, utilization {}",
                free >> 20,
                total >> 20,
                opts.gpu_memory_utilization
            )));
        }
        let cache = DeviceKvCache::new(&gpu, layout, num_blocks)?;
        tracing::info!(
            device = %gpu.name,
            weights_mib = weights.bytes() >> 20,
            kv_blocks = num_blocks,
            kv_mib = cache.bytes() >> 20,
            "CUDA backend ready"
        );
        let fuse_norms = opts.fuse_one_row_norms && config.hidden_size <= FUSED_NORMS_MAX_HIDDEN;
        let programmatic = kernels.set_programmatic_launch(opts.programmatic_launch);
        kernels.set_gemv_variant(opts.gemv_variant);
        tracing::info!(
            programmatic_launch = programmatic,
            requested = opts.programmatic_launch,
            gemv_variant = %opts.gemv_variant,
            "CUDA kernel launch mode"
        );
        let graph_mode = if opts.cuda_graphs {
            GraphMode::On
        } else {
            GraphMode::Off
        };
        Ok(Self {
            config,
            opts,
            gpu,
            kernels,
            blas,
            weights,
            cache,
            scratch,
            plan: StepPlan::default(),
            graph_mode,
            fuse_norms,
            graphs: DecodeGraphs::default(),
        })
    }

    fn alloc_scratch(
        gpu: &Arc<Gpu>,
        c: &ModelConfig,
        o: &CudaOptions,
    ) -> Result<Scratch, BackendError> {
        let t = o.max_batch_tokens;
        let s = o.max_num_seqs;
        let h = c.hidden_size;
        let q_dim = c.num_heads * c.head_dim;
        let qkv_w = q_dim + 2 * c.num_kv_heads * c.head_dim;
        let inter = c.intermediate_size;
        let inv_freq = crate::rope::inverse_frequencies(c);
        let inv_freq_buf = gpu.alloc(inv_freq.len() * 8, "rope table")?;
        inv_freq_buf.write(&inv_freq)?;
        gpu.synchronize()?;
        Ok(Scratch {
            hidden: gpu.alloc(t * h * 4, "hidden state")?,
            normed: gpu.alloc(t * h * 2, "normed activations")?,
            qkv: gpu.alloc(t * qkv_w * 4, "qkv activations")?,
            q: gpu.alloc(t * q_dim * 2, "rotated queries")?,
            attn: gpu.alloc(t * q_dim * 2, "attention output")?,
            gate_up: gpu.alloc(t * 2 * inter * 2, "gate/up activations")?,
            act: gpu.alloc(t * inter * 2, "SwiGLU output")?,
            final_normed: gpu.alloc(s * h * 2, "final norm rows")?,
            logits: gpu.alloc(s * c.vocab_size * 4, "logits")?,
            sampled: gpu.alloc(s * 4, "sampled tokens")?,
            part_acc: gpu.alloc(
                s * c.num_heads * MAX_DECODE_SPLITS * c.head_dim * 4,
                "decode partials",
            )?,
            part_ml: gpu.alloc(
                s * c.num_heads * MAX_DECODE_SPLITS * 2 * 4,
                "decode partial stats",
            )?,
            split_counts: {
                let counts = vec![0u32; c.num_layers * s * c.num_kv_heads];
                let buf = gpu.alloc(counts.len() * 4, "decode split counters")?;
                buf.write(&counts)?;
                buf
            },
            ss_partials: gpu.alloc(h * 4, "residual sum-of-squares partials")?,
            inv_freq: inv_freq_buf,
            meta: None,
        })
    }

    /// Chooses the skinny GEMM or cuBLAS for `y[rows, out] (+)= x · wᵀ`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear(
        &self,
        y: u64,
        y_type: gemm::OutType,
        x: u64,
        w: u64,
        rows: usize,
        inn: usize,
        out: usize,
        accumulate: bool,
    ) -> Result<(), BackendError> {
        if rows <= self.opts.skinny_gemm_max_rows && !(accumulate && y_type == gemm::OutType::Half)
        {
            let y_f32 = y_type == gemm::OutType::F32;
            if let Some(done) = self
                .kernels
                .skinny_gemm(y, y_f32, x, w, rows, inn, out, accumulate)
            {
                return done;
            }
        }
        self.blas
            .linear(y, y_type, x, w, rows, inn, out, accumulate)
    }

    /// Changes which projections use the skinny GEMM (benchmarks compare both paths).
    pub fn set_skinny_gemm_max_rows(&mut self, rows: usize) {
        self.opts.skinny_gemm_max_rows = rows;
        // Captured graphs hold the old choice of GEMM.
        self.graphs.clear();
    }

    /// Turns the fused one-row norm kernels on or off (checks and benchmarks compare both).
    pub fn set_fuse_one_row_norms(&mut self, fuse: bool) {
        self.fuse_norms = fuse;
        self.graphs.clear();
    }

    /// Whether one-row steps use the fused norm kernels (the backend's setting, for checks
    /// that switch it and put it back).
    pub fn fuse_one_row_norms(&self) -> bool {
        self.fuse_norms
    }

    /// Launches kernels with programmatic dependent launch (on) or the ordinary way (off);
    /// stays off on devices older than sm_90. Returns whether it is on. Captured graphs hold
    /// the old launch mode, so they are dropped.
    pub fn set_programmatic_launch(&mut self, on: bool) -> bool {
        self.graphs.clear();
        self.kernels.set_programmatic_launch(on)
    }

    /// Serves one-row projections with `variant` from now on (checks and benchmarks compare
    /// them). Captured graphs hold the old kernel, so they are dropped.
    pub fn set_gemv_variant(&mut self, variant: GemvVariant) {
        self.opts.gemv_variant = variant;
        self.graphs.clear();
        self.kernels.set_gemv_variant(variant);
    }

    pub fn gemv_variant(&self) -> GemvVariant {
        self.kernels.gemv_variant()
    }

    /// Turns the split-K gate/up + SwiGLU kernel of one-row steps on or off (checks and
    /// benchmarks compare both). Captured graphs hold the old choice, so they are dropped.
    pub fn set_fuse_one_row_swiglu(&mut self, fuse: bool) {
        self.opts.fuse_one_row_swiglu = fuse;
        self.graphs.clear();
    }

    /// Turns the split-K QKV + rope + K/V write kernel of one-row steps on or off (checks and
    /// benchmarks compare both). Captured graphs hold the old choice, so they are dropped.
    pub fn set_fuse_one_row_rope(&mut self, fuse: bool) {
        self.opts.fuse_one_row_rope = fuse;
        self.graphs.clear();
    }

    /// Turns the RMSNorm fold of one-row split-K steps on or off (checks and benchmarks compare
    /// both). Captured graphs hold the old choice, so they are dropped.
    pub fn set_fold_one_row_rms_norm(&mut self, fold: bool) {
        self.opts.fold_one_row_rms_norm = fold;
        self.graphs.clear();
    }

    /// Changes the most decode-attention splits with which one-row steps fold their RMSNorms
    /// (benchmarks compare settings). Captured graphs hold the old choice, so they are dropped.
    pub fn set_rms_norm_fold_max_splits(&mut self, max_splits: usize) {
        self.opts.rms_norm_fold_max_splits = max_splits;
        self.graphs.clear();
    }

    /// Whether a one-row decode step whose attention is cut into `attention_splits` context
    /// splits would run with its RMSNorms folded into the split-K projections now (the option
    /// is on and the model and settings allow it).
    pub fn one_row_rms_norm_folded(&self, attention_splits: usize) -> bool {
        self.fold_one_row_rms_norm(
            1,
            attention_splits,
            self.fuse_norms && self.opts.skinny_gemm_max_rows >= 1,
        )
    }

    /// Turns the in-kernel merge of split decode attention on or off (checks and benchmarks
    /// compare it with `decode_attention_reduce`). Captured graphs hold the old choice, so they
    /// are dropped.
    pub fn set_fuse_attention_merge(&mut self, fuse: bool) {
        self.opts.fuse_attention_merge = fuse;
        self.graphs.clear();
    }

    /// Changes how finely decode attention is split over the context (benchmarks compare
    /// settings). Captured graphs hold the old split, so they are dropped.
    pub fn set_decode_ctas_per_sm(&mut self, ctas_per_sm: usize) {
        self.opts.decode_ctas_per_sm = ctas_per_sm.max(1);
        self.graphs.clear();
    }

    /// Limits the one-row folds to steps with at most `max_splits` decode-attention splits
    /// (benchmarks compare limits). Captured graphs hold the old choice, so they are dropped.
    pub fn set_one_row_fold_max_splits(&mut self, max_splits: usize) {
        self.opts.one_row_fold_max_splits = max_splits;
        self.graphs.clear();
    }

    /// Whether kernels launch with programmatic dependent launch now.
    pub fn programmatic_launch(&self) -> bool {
        self.kernels.programmatic_launch()
    }

    /// How decode steps run from now on (checks and benchmarks compare the modes); captured
    /// graphs are kept.
    pub fn set_graph_mode(&mut self, mode: GraphMode) {
        self.graph_mode = mode;
    }

    pub fn graph_mode(&self) -> GraphMode {
        self.graph_mode
    }

    /// What decode graphs have done so far.
    pub fn graph_stats(&self) -> GraphStats {
        self.graphs.stats
    }

    /// Overwrites the logits buffer with NaN, so a check can tell a step that wrote its
    /// logits from one that left the previous step's in place.
    pub fn poison_logits(&self) -> Result<(), BackendError> {
        self.gpu.bind()?;
        self.scratch.logits.fill_bytes(0xff)?;
        self.gpu.synchronize()
    }

    /// Device name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn device_name(&self) -> &str {
        &self.gpu.name
    }
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }
    pub fn options(&self) -> &CudaOptions {
        &self.opts
    }
    /// Device bytes held by the weights.
    pub fn weights_bytes(&self) -> usize {
        self.weights.bytes()
    }

    /// Runs the batch and samples greedily on the device: one token per step that wants
    /// logits, and only those tokens cross to the host.
    pub fn forward_greedy(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<u32>, BackendError> {
        self.run(batch)?;
        let rows = self.plan.output_rows;
        if rows == 0 {
            self.gpu.synchronize()?;
            return Ok(Vec::new());
        }
        self.kernels.launch(
            &self.kernels.argmax_rows,
            (rows as u32, 1, 1),
            1024,
            &[
                kernels::Arg::Ptr(self.scratch.logits.ptr()),
                kernels::Arg::Ptr(self.scratch.sampled.ptr()),
                kernels::Arg::I32(self.config.vocab_size as i32),
            ],
        )?;
        let mut out = vec![0u32; rows];
        self.scratch.sampled.read(&mut out)?;
        Ok(out)
    }

    /// Runs the batch and leaves the logits on the device (benchmarks time this plus a sync).
    pub fn forward_on_device(&mut self, batch: &[SeqStep<'_>]) -> Result<(), BackendError> {
        self.run(batch)
    }

    pub fn synchronize(&self) -> Result<(), BackendError> {
        self.gpu.synchronize()
    }

    /// Fills the whole KV cache with N(0, 1) values: benchmarks read realistic data instead of
    /// whatever the allocation held (zeros can run faster than real data).
    pub fn randomize_kv_cache(&mut self, seed: u64) -> Result<(), BackendError> {
        self.gpu.bind()?;
        self.kernels.launch(
            &self.kernels.fill_normal,
            (4096, 1, 1),
            256,
            &[
                kernels::Arg::Ptr(self.cache.ptr()),
                kernels::Arg::U64((self.cache.bytes() / 2) as u64),
                kernels::Arg::U64(seed),
                kernels::Arg::U64(u64::MAX),
                kernels::Arg::F32(1.0),
            ],
        )?;
        self.gpu.synchronize()
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        format!("cuda:{}", self.opts.device)
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
        self.run(batch)?;
        let vocab = self.config.vocab_size;
        let mut data = vec![0f32; self.plan.output_rows * vocab];
        self.scratch.logits.read(&mut data)?;
        Ok(Logits {
            vocab_size: vocab,
            data,
        })
    }

    fn export_blocks(&self, blocks: &[u32], out: &mut Vec<u8>) -> Result<(), BackendError> {
        self.cache.export(blocks, out)
    }

    fn import_blocks(&mut self, blocks: &[u32], data: &[u8]) -> Result<(), BackendError> {
        self.cache.import(blocks, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_config() -> ModelConfig {
        ModelConfig {
            architecture: "llama".into(),
            vocab_size: 64,
            hidden_size: 128,
            intermediate_size: 256,
            num_layers: 1,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            max_position_embeddings: 1024,
            tie_word_embeddings: true,
            attention_bias: false,
        }
    }

    #[test]
    fn unsupported_shapes_and_options_are_rejected_before_touching_cuda() {
        let opts = CudaOptions::default();
        assert!(check_config(&small_config(), &opts).is_ok());
        let odd_head = ModelConfig {
            head_dim: 80,
            ..small_config()
        };
        assert!(
            matches!(check_config(&odd_head, &opts), Err(BackendError::Device(m)) if m.contains("head_dim"))
        );
        let bad_gqa = ModelConfig {
            num_kv_heads: 3,
            ..small_config()
        };
        assert!(check_config(&bad_gqa, &opts).is_err());
        let bad_util = CudaOptions {
            gpu_memory_utilization: 1.5,
            ..CudaOptions::default()
        };
        assert!(check_config(&small_config(), &bad_util).is_err());
        let no_blocks = CudaOptions {
            block_size: 0,
            ..CudaOptions::default()
        };
        assert!(check_config(&small_config(), &no_blocks).is_err());
    }

    #[test]
    fn a_machine_without_cuda_gets_an_error_not_a_panic() {
        let config = small_config();
        let weights = crate::random_weights::random_weights(&config, 1);
        let opts = CudaOptions {
            gpu_memory_utilization: 0.05,
            max_num_seqs: 4,
            max_batch_tokens: 64,
            ..Default::default()
        };
        match CudaBackend::new(config, &weights, opts) {
            Ok(backend) => assert!(
                cuda_available(),
                "a backend came up on {}",
                backend.device_name()
            ),
            Err(BackendError::Device(message)) => {
                assert!(
                    !cuda_available(),
                    "CUDA is available but the backend failed: {message}"
                )
            }
            Err(other) => panic!("unexpected error kind: {other}"),
        }
    }
}
