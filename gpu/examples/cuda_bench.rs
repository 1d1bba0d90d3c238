//! CUDA backend benchmarks on random weights in real model shapes: the machine's ceilings
//! (device copy bandwidth, large bf16 GEMM rate), decode step time against the HBM roofline,
//! and prefill throughput against the GEMM rate. Writes JSON and prints a table.
//!
//! ```text
//! cuda_bench [--models smollm2-135m,llama-3.2-1b,llama-3.1-8b] [--out results.json] [--quick]
//!            [--fusion-ab-only | --norm-fold-ab-only]
//! ```
//! Decode steps are timed twice, launched eagerly and replayed from CUDA graphs, both with
//! programmatic dependent launch when the device has it (sm_90+); batches 1 and 8 are timed
//! again with it off (`pdl off` columns), so one run gives the A/B. Every one-row GEMV variant
//! (`GemvVariant`) gets its own projection rows and b1 ctx512 decode step (graphs + PDL), and
//! the b1 steps at contexts 512 and 2048 compare the baseline GEMV and split-K with its
//! one-row fusions (SwiGLU into gate/up, rope + K/V write into QKV) off and on
//! (`--fusion-ab-only`: that comparison alone), and the defaults with the RMSNorm fold off, on
//! and gated (`--norm-fold-ab-only`: that alone, contexts 512 and 2048).

use std::sync::Arc;

use cudarc::driver::result::event;
use cudarc::driver::sys::{CUevent, CUevent_flags};
use serde_json::json;
use stator_gpu::backend::cuda::gemm::{Blas, OutType};
use stator_gpu::backend::cuda::kernels::{Arg, Kernels};
use stator_gpu::backend::cuda::{
    cuda_available, CudaBackend, CudaDtype, CudaOptions, DeviceBuffer, GemvVariant, Gpu, GraphMode,
};
use stator_gpu::backend::{Backend, SeqStep};
use stator_gpu::config::ModelConfig;
use stator_gpu::presets::preset;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Timer {
    start: CUevent,
    stop: CUevent,
}

impl Timer {
    fn new() -> Res<Self> {
        Ok(Self {
            start: event::create(CUevent_flags::CU_EVENT_DEFAULT)?,
            stop: event::create(CUevent_flags::CU_EVENT_DEFAULT)?,
        })
    }
    /// Median milliseconds of `reps` runs of `f` after `warmup` runs, timed with events.
    fn median_ms(
        &self,
        gpu: &Gpu,
        warmup: usize,
        reps: usize,
        mut f: impl FnMut() -> Res<()>,
    ) -> Res<f64> {
        for _ in 0..warmup {
            f()?;
        }
        gpu.synchronize()?;
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            // SAFETY: events and stream belong to the current context.
            unsafe { event::record(self.start, gpu.stream()) }?;
            f()?;
            unsafe { event::record(self.stop, gpu.stream()) }?;
            unsafe { event::synchronize(self.stop) }?;
            times.push(unsafe { event::elapsed(self.start, self.stop) }? as f64);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        Ok(times[times.len() / 2])
    }
}

struct Ceilings {
    copy_gbps: f64,
    gemm_tflops: f64,
}

fn ceilings(gpu: &Arc<Gpu>, timer: &Timer) -> Res<Ceilings> {
    let bytes = 2usize << 30;
    let kernels = Kernels::compile(gpu, 128, 4, CudaDtype::Bf16)?;
    let (a, b) = (gpu.alloc(bytes, "copy src")?, gpu.alloc(bytes, "copy dst")?);
    kernels.launch(
        &kernels.fill_normal,
        (4096, 1, 1),
        256,
        &[
            Arg::Ptr(a.ptr()),
            Arg::U64((bytes / 2) as u64),
            Arg::U64(1),
            Arg::U64(1),
            Arg::F32(1.0),
        ],
    )?;
    let ms = timer.median_ms(gpu, 2, 10, || {
        Ok(gpu.copy_device(b.ptr(), a.ptr(), bytes)?)
    })?;
    let copy_gbps = 2.0 * bytes as f64 / (ms * 1e-3) / 1e9;
    drop((a, b));
    let n = 8192usize;
    let blas = Blas::new(gpu, CudaDtype::Bf16)?;
    let mats: Vec<_> = (0..3)
        .map(|_| gpu.alloc(n * n * 2, "gemm"))
        .collect::<Result<_, _>>()?;
    for (i, m) in mats.iter().enumerate() {
        kernels.launch(
            &kernels.fill_normal,
            (4096, 1, 1),
            256,
            &[
                Arg::Ptr(m.ptr()),
                Arg::U64((n * n) as u64),
                Arg::U64(2),
                Arg::U64(i as u64),
                Arg::F32(1.0),
            ],
        )?;
    }
    let ms = timer.median_ms(gpu, 3, 10, || {
        Ok(blas.linear(
            mats[2].ptr(),
            OutType::Half,
            mats[0].ptr(),
            mats[1].ptr(),
            n,
            n,
            n,
            false,
        )?)
    })?;
    let gemm_tflops = 2.0 * (n as f64).powi(3) / (ms * 1e-3) / 1e12;
    Ok(Ceilings {
        copy_gbps,
        gemm_tflops,
    })
}

/// Weight regions of the projection benchmarks rotate through this many bytes, so no run reads
/// weights from L2 (50 MB).
const POOL_BYTES: usize = 2 << 30;

/// (name, in, out) of the projections timed on their own.
const PROJECTION_SHAPES: [(&str, usize, usize); 9] = [
    ("8B qkv", 4096, 6144),
    ("8B o_proj", 4096, 4096),
    ("8B gate_up", 4096, 28672),
    ("8B down", 14336, 4096),
    ("8B lm_head", 4096, 128_256),
    ("1B qkv", 2048, 3072),
    ("1B o_proj", 2048, 2048),
    ("1B gate_up", 2048, 16384),
    ("1B down", 8192, 2048),
];

/// A device buffer of `elems` 16-bit normal values (standard deviation `std`).
fn random_half_buffer(
    gpu: &Arc<Gpu>,
    kernels: &Kernels,
    elems: usize,
    seed: u64,
    std: f32,
) -> Res<DeviceBuffer> {
    let buffer = gpu.alloc(elems * 2, "random 16-bit values")?;
    kernels.launch(
        &kernels.fill_normal,
        (4096, 1, 1),
        256,
        &[
            Arg::Ptr(buffer.ptr()),
            Arg::U64(elems as u64),
            Arg::U64(seed),
            Arg::U64(seed),
            Arg::F32(std),
        ],
    )?;
    gpu.synchronize()?;
    Ok(buffer)
}

/// Launches per timed stream in [`gemv_variant_rates`]'s back-to-back column.
const BACK_TO_BACK: usize = 16;

/// Every one-row GEMV variant on every projection shape, timed two ways: one launch alone
/// between events with PDL off (comparable with the `skinny` rows above; includes the launch's
/// own ramp and the event overhead), and per launch within a stream of `BACK_TO_BACK` launches
/// with PDL on, as a decode step runs them (each launch on a different weight region).
fn gemv_variant_rates(
    gpu: &Arc<Gpu>,
    timer: &Timer,
    table: &mut Vec<String>,
    results: &mut Vec<serde_json::Value>,
) -> Res<()> {
    let kernels = Kernels::compile(gpu, 128, 4, CudaDtype::Bf16)?;
    let pool = random_half_buffer(gpu, &kernels, POOL_BYTES / 2, 5, 0.02)?;
    let x = random_half_buffer(gpu, &kernels, 14336, 6, 1.0)?;
    let y = gpu.alloc(128_256 * 4, "y")?;
    let pdl_available = kernels.supports_programmatic_launch();
    table.push(format!(
        "one-row GEMV variants: alone (PDL off) | per launch in {BACK_TO_BACK} back to back (PDL {})",
        if pdl_available { "on" } else { "unavailable: off" }
    ));
    for &(name, inn, out) in &PROJECTION_SHAPES {
        let bytes = inn * out * 2;
        let regions = (POOL_BYTES / bytes).max(1);
        let mut line = format!("  {name:<11} {inn:>5}x{out:<6}");
        for variant in GemvVariant::ALL {
            let mut rep = 0usize;
            let mut launch = || -> Res<()> {
                let w = pool.ptr() + ((rep % regions) * bytes) as u64;
                rep += 1;
                kernels
                    .skinny_gemm_with(variant, y.ptr(), true, x.ptr(), w, 1, inn, out, false)
                    .ok_or("shape refused")??;
                Ok(())
            };
            kernels.set_programmatic_launch(false);
            let alone_ms = timer.median_ms(gpu, 3, 20, &mut launch)?;
            kernels.set_programmatic_launch(true);
            let stream_ms = timer.median_ms(gpu, 1, 10, || {
                for _ in 0..BACK_TO_BACK {
                    launch()?;
                }
                Ok(())
            })? / BACK_TO_BACK as f64;
            kernels.set_programmatic_launch(false);
            let gbps = |ms: f64| bytes as f64 / (ms * 1e-3) / 1e9;
            println!(
                "  gemv {variant:<10} {name:<11} {:7.1} us {:5.0} GB/s alone, {:7.1} us {:5.0} GB/s back to back",
                alone_ms * 1e3,
                gbps(alone_ms),
                stream_ms * 1e3,
                gbps(stream_ms)
            );
            line.push_str(&format!(
                " | {variant:<10} {:6.1} {:6.1} us {:4.0} GB/s",
                alone_ms * 1e3,
                stream_ms * 1e3,
                gbps(stream_ms)
            ));
            results.push(json!({"kind": "gemv_variant", "variant": variant.name(), "name": name, "rows": 1, "in": inn, "out": out, "us_alone": alone_ms * 1e3, "gbps_alone": gbps(alone_ms), "us_back_to_back": stream_ms * 1e3, "gbps_back_to_back": gbps(stream_ms), "back_to_back_programmatic_launch": pdl_available}));
        }
        table.push(line);
    }
    Ok(())
}

/// Weight-streaming rate of each 8B projection shape at decode batch sizes: cuBLAS against
/// the skinny GEMM. Weight regions rotate through 2 GiB so no run reads from L2.
fn projection_rates(
    gpu: &Arc<Gpu>,
    timer: &Timer,
    table: &mut Vec<String>,
    results: &mut Vec<serde_json::Value>,
) -> Res<()> {
    let kernels = Kernels::compile(gpu, 128, 4, CudaDtype::Bf16)?;
    let blas = Blas::new(gpu, CudaDtype::Bf16)?;
    let pool_bytes = POOL_BYTES;
    let pool = random_half_buffer(gpu, &kernels, pool_bytes / 2, 3, 0.02)?;
    let x = random_half_buffer(gpu, &kernels, 8 * 14336, 4, 1.0)?;
    let y = gpu.alloc(8 * 128_256 * 4, "y")?;
    for rows in [1usize, 8] {
        for &(name, inn, out) in &PROJECTION_SHAPES {
            if rows > 1 && name.starts_with("1B") {
                continue;
            }
            let bytes = inn * out * 2;
            let regions = (pool_bytes / bytes).max(1);
            for skinny in [false, true] {
                let mut rep = 0usize;
                let ms = timer.median_ms(gpu, 3, 20, || {
                    let w = pool.ptr() + ((rep % regions) * bytes) as u64;
                    rep += 1;
                    if skinny {
                        kernels
                            .skinny_gemm(y.ptr(), true, x.ptr(), w, rows, inn, out, false)
                            .ok_or("shape refused")??;
                    } else {
                        blas.linear(y.ptr(), OutType::F32, x.ptr(), w, rows, inn, out, false)?;
                    }
                    Ok(())
                })?;
                let gbps = bytes as f64 / (ms * 1e-3) / 1e9;
                let path = if skinny { "skinny" } else { "cublas" };
                println!(
                    "  {name:<11} rows{rows} {inn}x{out} {path:<7} {:8.1} us {gbps:7.0} GB/s",
                    ms * 1e3
                );
                table.push(format!(
                    "{name:<11} rows{rows} {path:<7} {:8.1} us  {gbps:6.0} GB/s weights",
                    ms * 1e3
                ));
                results.push(json!({"kind": "projection", "name": name, "rows": rows, "in": inn, "out": out, "path": path, "us": ms * 1e3, "gbps": gbps}));
            }
        }
    }
    Ok(())
}

/// Block tables (consecutive blocks per sequence) and one next token per sequence for decode
/// steps of `batch` sequences holding `ctx` tokens each.
fn decode_inputs(batch: usize, ctx: usize, block_size: usize) -> (Vec<Vec<u32>>, Vec<[u32; 1]>) {
    let blocks_per_seq = (ctx + 1).div_ceil(block_size);
    let tables = (0..batch)
        .map(|s| ((s * blocks_per_seq) as u32..((s + 1) * blocks_per_seq) as u32).collect())
        .collect();
    let tokens = (0..batch).map(|s| [(s * 31 + 5) as u32]).collect();
    (tables, tokens)
}

/// The decode step of [`decode_inputs`]: each sequence feeds its token at position `ctx - 1`.
fn decode_steps<'a>(
    tables: &'a [Vec<u32>],
    tokens: &'a [[u32; 1]],
    ctx: usize,
) -> Vec<SeqStep<'a>> {
    tables
        .iter()
        .zip(tokens)
        .map(|(t, tok)| SeqStep {
            tokens: tok,
            start_pos: ctx - 1,
            block_table: t,
            want_logits: true,
        })
        .collect()
}

/// Median times of `steps` launched eagerly and from graphs (the warm-up runs the key once
/// eagerly, then captures it), and the graph replays of the timed runs.
fn eager_and_graph_ms(
    backend: &mut CudaBackend,
    timer: &Timer,
    reps: usize,
    steps: &[SeqStep],
) -> Res<(f64, f64, usize)> {
    let stream_gpu = backend.gpu().clone();
    backend.set_graph_mode(GraphMode::Off);
    let eager = timer.median_ms(&stream_gpu, 3, reps, || {
        Ok(backend.forward_on_device(steps)?)
    });
    backend.set_graph_mode(GraphMode::On);
    let before = backend.graph_stats();
    let graph = timer.median_ms(&stream_gpu, 3, reps, || {
        Ok(backend.forward_on_device(steps)?)
    });
    let replayed = backend.graph_stats().replayed - before.replayed;
    backend.set_graph_mode(GraphMode::Off);
    Ok((eager?, graph?, replayed))
}

/// What the per-model benchmarks read: the model, its name in the rows, the measured copy
/// rate their rooflines divide by, and whether to take fewer repetitions.
struct ModelBench<'a> {
    timer: &'a Timer,
    config: &'a ModelConfig,
    name: &'a str,
    copy_gbps: f64,
    quick: bool,
}

impl ModelBench<'_> {
    /// Timed repetitions of one measurement.
    fn reps(&self) -> usize {
        if self.quick {
            5
        } else {
            20
        }
    }

    /// The time a decode step of `batch` sequences at `ctx` tokens takes to read its bytes at
    /// the measured copy rate, in ms.
    fn roofline_ms(&self, backend: &CudaBackend, batch: usize, ctx: usize) -> f64 {
        decode_bytes(self.config, backend, batch, ctx) / (self.copy_gbps * 1e9) * 1e3
    }
}

/// The b1 ctx512 decode step with each one-row GEMV variant, eager and from graphs, with the
/// backend's launch mode (PDL on where available).
fn gemv_variant_decode(
    backend: &mut CudaBackend,
    model: &ModelBench,
    table: &mut Vec<String>,
    results: &mut Vec<serde_json::Value>,
) -> Res<()> {
    let name = model.name;
    let (batch, ctx) = (1usize, 512usize);
    let (tables, tokens) = decode_inputs(batch, ctx, backend.kv_layout().block_size);
    let steps = decode_steps(&tables, &tokens, ctx);
    let reps = model.reps();
    let initial = backend.gemv_variant();
    let pdl = backend.programmatic_launch();
    let floor_ms = model.roofline_ms(backend, batch, ctx);
    for variant in GemvVariant::ALL {
        // Drops the graphs captured with the previous kernel; the warm-up recaptures.
        backend.set_gemv_variant(variant);
        let (eager, graph, replayed) = eager_and_graph_ms(backend, model.timer, reps, &steps)?;
        println!("  decode b{batch} ctx{ctx} gemv {variant:<10} {eager:8.3} ms eager {graph:8.3} ms graph ({replayed} replays)  {:.1}% of roofline (graph)", floor_ms / graph * 100.0);
        table.push(format!("{name:<14} decode b{batch:<3} ctx{ctx:<5} gemv {variant:<10} {eager:9.3} ms eager {graph:9.3} ms graph  {:5.1}% of HBM roofline (graph, PDL {})", floor_ms / graph * 100.0, if pdl { "on" } else { "off" }));
        results.push(json!({"model": name, "kind": "decode_gemv_variant", "variant": variant.name(), "batch": batch, "context": ctx, "programmatic_launch": pdl, "step_ms": eager, "graph_step_ms": graph, "graph_replays": replayed, "roofline_ms": floor_ms, "graph_roofline_fraction": floor_ms / graph}));
    }
    backend.set_gemv_variant(initial);
    Ok(())
}

/// One configuration of the one-row fusion A/B.
#[derive(Clone, Copy)]
struct FusionConfig {
    label: &'static str,
    variant: GemvVariant,
    swiglu: bool,
    rope: bool,
    merge: bool,
    /// Most attention splits with the SwiGLU/rope folds (`usize::MAX`: always).
    max_splits: usize,
    /// RMSNorm folded into the split-K projections (round 8), up to this many attention
    /// splits.
    norm_fold: bool,
    norm_fold_max_splits: usize,
    /// Timed in the first round only (a reference, not part of the interleaved comparison).
    once: bool,
}

impl FusionConfig {
    /// The backend's defaults under `label`.
    fn default_as(label: &'static str) -> Self {
        let d = CudaOptions::default();
        FusionConfig {
            label,
            variant: GemvVariant::SplitK,
            swiglu: d.fuse_one_row_swiglu,
            rope: d.fuse_one_row_rope,
            merge: d.fuse_attention_merge,
            max_splits: d.one_row_fold_max_splits,
            norm_fold: d.fold_one_row_rms_norm,
            norm_fold_max_splits: d.rms_norm_fold_max_splits,
            once: false,
        }
    }

    fn apply(&self, backend: &mut CudaBackend) {
        backend.set_gemv_variant(self.variant);
        backend.set_fuse_one_row_swiglu(self.swiglu);
        backend.set_fuse_one_row_rope(self.rope);
        backend.set_fuse_attention_merge(self.merge);
        backend.set_one_row_fold_max_splits(self.max_splits);
        backend.set_fold_one_row_rms_norm(self.norm_fold);
        backend.set_rms_norm_fold_max_splits(self.norm_fold_max_splits);
    }
}

/// `--fusion-ab-only` (and the full run): the baseline GEMV, and split-K with its one-row
/// fusions off or SwiGLU and rope + K/V write folded at every context, the decode-attention
/// merge in its own kernel or in the attention kernel, the backend's defaults (folds only up
/// to `one_row_fold_max_splits` attention splits), and the defaults with the RMSNorm fold
/// toggled, at contexts 512, 1024 and 2048.
fn fusion_configs() -> (Vec<FusionConfig>, Vec<usize>) {
    let apart = FusionConfig {
        label: "split_k apart",
        swiglu: false,
        rope: false,
        merge: false,
        max_splits: usize::MAX,
        norm_fold: false,
        ..FusionConfig::default_as("")
    };
    let folds = FusionConfig {
        label: "folds",
        swiglu: true,
        rope: true,
        ..apart
    };
    let default = FusionConfig::default_as("default");
    let configs = vec![
        FusionConfig {
            label: "baseline",
            variant: GemvVariant::Baseline,
            once: true,
            ..apart
        },
        apart,
        FusionConfig {
            label: "apart +merge",
            merge: true,
            ..apart
        },
        folds,
        FusionConfig {
            label: "folds +merge",
            merge: true,
            ..folds
        },
        default,
        FusionConfig {
            label: if default.norm_fold {
                "default -norm fold"
            } else {
                "default +norm fold"
            },
            norm_fold: !default.norm_fold,
            norm_fold_max_splits: usize::MAX,
            ..default
        },
    ];
    (configs, vec![512, 1024, 2048])
}

/// `--norm-fold-ab-only`: the defaults with the RMSNorm fold off, on at every context, and
/// as the defaults gate it, contexts 512 and 2048.
fn norm_fold_configs() -> (Vec<FusionConfig>, Vec<usize>) {
    let base = FusionConfig::default_as("default");
    let configs = vec![
        FusionConfig {
            label: "norm fold off",
            norm_fold: false,
            ..base
        },
        FusionConfig {
            label: "norm fold on",
            norm_fold: true,
            norm_fold_max_splits: usize::MAX,
            ..base
        },
        base,
    ];
    (configs, vec![512, 2048])
}

/// The b1 decode step from graphs (PDL as the backend has it) in each configuration at each
/// context. Configurations not marked `once` are timed twice, interleaved in the same process,
/// so drift shows as a difference between rounds.
fn one_row_fusion_ab(
    backend: &mut CudaBackend,
    model: &ModelBench,
    (configs, contexts): &(Vec<FusionConfig>, Vec<usize>),
    table: &mut Vec<String>,
    results: &mut Vec<serde_json::Value>,
) -> Res<()> {
    let name = model.name;
    let pdl = backend.programmatic_launch();
    let stream_gpu = backend.gpu().clone();
    let reps = model.reps();
    for &ctx in contexts {
        let (tables, tokens) = decode_inputs(1, ctx, backend.kv_layout().block_size);
        let steps = decode_steps(&tables, &tokens, ctx);
        let floor_ms = model.roofline_ms(backend, 1, ctx);
        // rounds[r][i]: round r of configuration i.
        let mut rounds = [vec![f64::NAN; configs.len()], vec![f64::NAN; configs.len()]];
        for (round, slots) in rounds.iter_mut().enumerate() {
            for (i, config) in configs.iter().enumerate() {
                if round == 1 && config.once {
                    continue;
                }
                // Each switch drops the captured graphs; the warm-up recaptures them.
                config.apply(backend);
                backend.set_graph_mode(GraphMode::On);
                let timed = model.timer.median_ms(&stream_gpu, 3, reps, || {
                    Ok(backend.forward_on_device(&steps)?)
                });
                backend.set_graph_mode(GraphMode::Off);
                slots[i] = timed?;
            }
        }
        for (i, c) in configs.iter().enumerate() {
            let (first, second) = (rounds[0][i], rounds[1][i]);
            let best = if second.is_nan() {
                first
            } else {
                first.min(second)
            };
            let label = c.label;
            println!("  decode b1 ctx{ctx} {label:<18} {first:8.3} / {second:8.3} ms graph  {:.1}% of roofline", floor_ms / best * 100.0);
            table.push(format!("{name:<14} decode b1   ctx{ctx:<5} {label:<18} {first:9.3} / {second:9.3} ms graph (rounds 1/2)  {:5.1}% of HBM roofline (PDL {})", floor_ms / best * 100.0, if pdl { "on" } else { "off" }));
            results.push(json!({"model": name, "kind": "decode_one_row_fusion_ab", "config": label, "variant": c.variant.name(), "swiglu_fused": c.swiglu, "rope_fused": c.rope, "attention_merge_in_kernel": c.merge, "one_row_fold_max_splits": if c.max_splits == usize::MAX { None } else { Some(c.max_splits) }, "rms_norm_folded": c.norm_fold, "rms_norm_fold_max_splits": if c.norm_fold_max_splits == usize::MAX { None } else { Some(c.norm_fold_max_splits) }, "batch": 1, "context": ctx, "programmatic_launch": pdl, "graph_step_ms_rounds": [first, second], "roofline_ms": floor_ms, "graph_roofline_fraction": floor_ms / best}));
        }
    }
    FusionConfig::default_as("default").apply(backend);
    Ok(())
}

/// Bytes one decode step must read: every weight matrix once (the input embedding only for the
/// batch's rows, negligible) plus each sequence's K and V.
fn decode_bytes(c: &ModelConfig, backend: &CudaBackend, batch: usize, ctx: usize) -> f64 {
    let embed = (c.vocab_size * c.hidden_size * 2) as f64;
    let weights = backend.weights_bytes() as f64 - if c.tie_word_embeddings { 0.0 } else { embed };
    let kv = (batch * ctx * c.num_layers * 2 * c.num_kv_heads * c.head_dim * 2) as f64;
    weights + kv
}

/// FLOPs of a prefill: 2·(layer params)·tokens + logits for the last rows + causal attention.
fn prefill_flops(c: &ModelConfig, seqs: usize, len: usize) -> f64 {
    let h = c.hidden_size;
    let q_dim = c.num_heads * c.head_dim;
    let kv_dim = c.num_kv_heads * c.head_dim;
    let layer = (h * (q_dim + 2 * kv_dim) + q_dim * h + 3 * h * c.intermediate_size) as f64;
    let tokens = (seqs * len) as f64;
    let linear =
        2.0 * layer * c.num_layers as f64 * tokens + 2.0 * (c.vocab_size * h) as f64 * seqs as f64;
    // QKᵀ and PV over the causal triangle: 2 matmuls × 2 flops × head_dim × n(n+1)/2 per head.
    let attn = 2.0
        * 2.0
        * c.head_dim as f64
        * (len * (len + 1) / 2) as f64
        * (c.num_heads * c.num_layers * seqs) as f64;
    linear + attn
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let models = arg("--models").unwrap_or_else(|| "smollm2-135m,llama-3.2-1b,llama-3.1-8b".into());
    let out_path = arg("--out");
    let quick = args.iter().any(|a| a == "--quick");
    // Only the b1 A/B of the one-row split-K fusions (short device runs).
    let fusion_ab_only = args.iter().any(|a| a == "--fusion-ab-only");
    // Only the b1 A/B of the RMSNorm fold (round 8).
    let norm_fold_ab_only = args.iter().any(|a| a == "--norm-fold-ab-only");
    let ab_only = fusion_ab_only || norm_fold_ab_only;
    let ab = if norm_fold_ab_only {
        norm_fold_configs()
    } else {
        fusion_configs()
    };
    if !cuda_available() {
        println!("CUDA is not available on this machine: no benchmark");
        return Ok(());
    }
    let gpu = Gpu::open(0)?;
    let timer = Timer::new()?;
    let ceil = ceilings(&gpu, &timer)?;
    println!(
        "device {}: copy {:.0} GB/s (read+write), bf16 GEMM 8192^3 {:.0} TFLOP/s",
        gpu.name, ceil.copy_gbps, ceil.gemm_tflops
    );
    let mut results = Vec::new();
    let mut table = Vec::new();
    if !ab_only {
        projection_rates(&gpu, &timer, &mut table, &mut results)?;
        gemv_variant_rates(&gpu, &timer, &mut table, &mut results)?;
    }
    for name in models.split(',') {
        let config = preset(name).ok_or_else(|| format!("unknown preset {name}"))?;
        let opts = CudaOptions {
            max_num_seqs: 128,
            max_batch_tokens: 4096,
            // The bench times every bucket from graphs (its batches are exact buckets, so no
            // padding); serving caps graphed buckets at 16 by default.
            graph_max_batch: usize::MAX,
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let mut backend = CudaBackend::with_random_weights(config.clone(), 42, opts)?;
        // Events go on the backend's own stream: on another stream they would time only the
        // host's enqueueing (round 1 did that; its pageable metadata copies happened to wait
        // for the previous step, which hid it for eager steps but not for graph replays).
        let stream_gpu = backend.gpu().clone();
        // The backend's default (on where the device supports it, unless STATOR_CUDA_PDL=0).
        let pdl = backend.programmatic_launch();
        println!(
            "  programmatic dependent launch: {}",
            if pdl { "on" } else { "off" }
        );
        backend.randomize_kv_cache(7)?;
        println!(
            "{name}: weights {:.2} GB, {} KV blocks, ready in {:.1} s",
            backend.weights_bytes() as f64 / 1e9,
            backend.num_kv_blocks(),
            started.elapsed().as_secs_f64()
        );
        let model = ModelBench {
            timer: &timer,
            config: &config,
            name,
            copy_gbps: ceil.copy_gbps,
            quick,
        };
        one_row_fusion_ab(&mut backend, &model, &ab, &mut table, &mut results)?;
        if ab_only {
            continue;
        }
        let bs = backend.kv_layout().block_size;
        let batches: &[usize] = if quick { &[1, 32] } else { &[1, 8, 32, 128] };
        for &ctx in &[512usize, 2048] {
            for &batch in batches {
                let blocks_per_seq = (ctx + 1).div_ceil(bs);
                if batch * blocks_per_seq > backend.num_kv_blocks() {
                    println!("  skip decode b{batch} ctx{ctx}: not enough KV blocks");
                    continue;
                }
                let (tables, tokens) = decode_inputs(batch, ctx, bs);
                let steps = decode_steps(&tables, &tokens, ctx);
                let reps = model.reps();
                let (ms, graph_ms, replayed) =
                    eager_and_graph_ms(&mut backend, &timer, reps, &steps)?;
                let bytes = decode_bytes(&config, &backend, batch, ctx);
                let floor_ms = bytes / (ceil.copy_gbps * 1e9) * 1e3;
                let frac = floor_ms / ms;
                let graph_frac = floor_ms / graph_ms;
                println!("  decode b{batch:<3} ctx{ctx:<5} {ms:8.3} ms/step eager, {graph_ms:8.3} graph ({replayed} replays)  roofline {floor_ms:.3} ms ({:.0}% / {:.0}%)", frac * 100.0, graph_frac * 100.0);
                table.push(format!("{name:<14} decode b{batch:<3} ctx{ctx:<5} {ms:9.3} ms eager {graph_ms:9.3} ms graph  {:9.0} tok/s  {:5.1}% / {:5.1}% of HBM roofline", batch as f64 / graph_ms.min(ms) * 1e3, frac * 100.0, graph_frac * 100.0));
                results.push(json!({"model": name, "kind": "decode", "batch": batch, "context": ctx, "programmatic_launch": pdl, "step_ms": ms, "graph_step_ms": graph_ms, "graph_replays": replayed, "tokens_per_s": batch as f64 / ms * 1e3, "graph_tokens_per_s": batch as f64 / graph_ms * 1e3, "bytes_per_step": bytes, "roofline_ms": floor_ms, "roofline_fraction": frac, "graph_roofline_fraction": graph_frac}));
                if pdl && (batch == 1 || batch == 8) {
                    // A/B: the same steps launched the ordinary way, eager and from graphs
                    // (switching drops the captured graphs; the warm-up recaptures them).
                    backend.set_programmatic_launch(false);
                    let plain = timer.median_ms(&stream_gpu, 3, reps, || {
                        Ok(backend.forward_on_device(&steps)?)
                    });
                    backend.set_graph_mode(GraphMode::On);
                    let plain_graph = timer.median_ms(&stream_gpu, 3, reps, || {
                        Ok(backend.forward_on_device(&steps)?)
                    });
                    backend.set_graph_mode(GraphMode::Off);
                    backend.set_programmatic_launch(true);
                    let (plain, plain_graph) = (plain?, plain_graph?);
                    let gain = (graph_ms / plain_graph - 1.0) * 100.0;
                    println!("  decode b{batch:<3} ctx{ctx:<5} pdl off: {plain:8.3} ms/step eager, {plain_graph:8.3} graph; pdl on: {ms:8.3} / {graph_ms:8.3} ({gain:+.1}% graph)");
                    table.push(format!("{name:<14} decode b{batch:<3} ctx{ctx:<5} PDL off {plain:9.3} ms eager {plain_graph:9.3} ms graph | PDL on {ms:9.3} / {graph_ms:9.3} ms ({gain:+.1}% graph)  {:5.1}% -> {:5.1}% of HBM roofline (graphs)", floor_ms / plain_graph * 100.0, graph_frac * 100.0));
                    results.push(json!({"model": name, "kind": "decode_pdl_ab", "batch": batch, "context": ctx, "step_ms_pdl_off": plain, "graph_step_ms_pdl_off": plain_graph, "step_ms_pdl_on": ms, "graph_step_ms_pdl_on": graph_ms, "roofline_ms": floor_ms, "graph_roofline_fraction_pdl_off": floor_ms / plain_graph, "graph_roofline_fraction_pdl_on": graph_frac}));
                }
            }
        }
        gemv_variant_decode(&mut backend, &model, &mut table, &mut results)?;
        // A/B: the same decode steps with every projection on cuBLAS.
        for &(batch, ctx) in &[(1usize, 512usize), (8, 512), (1, 2048)] {
            let (tables, tokens) = decode_inputs(batch, ctx, bs);
            let steps = decode_steps(&tables, &tokens, ctx);
            backend.set_skinny_gemm_max_rows(0);
            let ms = timer.median_ms(&stream_gpu, 3, model.reps(), || {
                Ok(backend.forward_on_device(&steps)?)
            });
            backend.set_skinny_gemm_max_rows(CudaOptions::default().skinny_gemm_max_rows);
            let ms = ms?;
            if batch == 1 {
                // The same one-row step from graphs, with and without the fused norm kernels.
                backend.set_graph_mode(GraphMode::On);
                let mut fused_ab = [0.0f64; 2];
                for (slot, fuse) in fused_ab.iter_mut().zip([false, true]) {
                    backend.set_fuse_one_row_norms(fuse);
                    *slot = timer.median_ms(&stream_gpu, 3, model.reps(), || {
                        Ok(backend.forward_on_device(&steps)?)
                    })?;
                }
                backend.set_graph_mode(GraphMode::Off);
                let bytes = decode_bytes(&config, &backend, batch, ctx);
                let floor_ms = bytes / (ceil.copy_gbps * 1e9) * 1e3;
                let [apart, fused] = fused_ab;
                table.push(format!("{name:<14} decode b{batch:<3} ctx{ctx:<5} {apart:9.3} ms norms apart {fused:9.3} ms fused (graphs)  {:5.1}% / {:5.1}% of HBM roofline", floor_ms / apart * 100.0, floor_ms / fused * 100.0));
                results.push(json!({"model": name, "kind": "decode_fused_norms_ab", "batch": batch, "context": ctx, "graph_step_ms_norms_apart": apart, "graph_step_ms_fused": fused, "roofline_ms": floor_ms}));
            }
            let bytes = decode_bytes(&config, &backend, batch, ctx);
            let floor_ms = bytes / (ceil.copy_gbps * 1e9) * 1e3;
            table.push(format!("{name:<14} decode b{batch:<3} ctx{ctx:<5} {ms:9.3} ms  {:9.0} tok/s  {:5.1}% of HBM roofline [cuBLAS only]", batch as f64 / ms * 1e3, floor_ms / ms * 100.0));
            results.push(json!({"model": name, "kind": "decode_cublas_only", "batch": batch, "context": ctx, "step_ms": ms, "roofline_fraction": floor_ms / ms}));
        }
        for &(seqs, len) in &[(1usize, 2048usize), (8, 512)] {
            let blocks_per_seq = len.div_ceil(bs);
            let tables: Vec<Vec<u32>> = (0..seqs)
                .map(|s| ((s * blocks_per_seq) as u32..((s + 1) * blocks_per_seq) as u32).collect())
                .collect();
            let prompts: Vec<Vec<u32>> = (0..seqs)
                .map(|s| {
                    (0..len)
                        .map(|i| ((i * 7919 + s * 104_729) % config.vocab_size) as u32)
                        .collect()
                })
                .collect();
            let steps: Vec<SeqStep> = tables
                .iter()
                .zip(&prompts)
                .map(|(t, p)| SeqStep {
                    tokens: p,
                    start_pos: 0,
                    block_table: t,
                    want_logits: true,
                })
                .collect();
            let ms = timer.median_ms(&stream_gpu, 2, if quick { 3 } else { 10 }, || {
                Ok(backend.forward_on_device(&steps)?)
            })?;
            let flops = prefill_flops(&config, seqs, len);
            let tflops = flops / (ms * 1e-3) / 1e12;
            let frac = tflops / ceil.gemm_tflops;
            let tps = (seqs * len) as f64 / ms * 1e3;
            println!("  prefill {seqs}x{len}: {ms:8.2} ms {tps:9.0} tok/s {tflops:6.1} TFLOP/s ({:.0}% of GEMM rate)", frac * 100.0);
            table.push(format!("{name:<14} prefill {seqs}x{len:<6}   {ms:9.2} ms  {tps:9.0} tok/s  {:5.1}% of GEMM rate ({tflops:.0} TFLOP/s)", frac * 100.0));
            results.push(json!({"model": name, "kind": "prefill", "sequences": seqs, "length": len, "ms": ms, "tokens_per_s": tps, "flops": flops, "tflops": tflops, "gemm_fraction": frac}));
        }
        drop(backend);
    }
    let doc = json!({"device": gpu.name, "copy_gbps": ceil.copy_gbps, "gemm_tflops": ceil.gemm_tflops, "results": results});
    if let Some(path) = out_path {
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
    }
    println!(
        "\n=== cuda_bench summary ({}; copy {:.0} GB/s, GEMM {:.0} TFLOP/s) ===",
        gpu.name, ceil.copy_gbps, ceil.gemm_tflops
    );
    for line in table {
        println!("{line}");
    }
    Ok(())
}
