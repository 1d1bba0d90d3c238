//! Correctness checks of the CUDA backend on a GPU machine; prints a table, exits non-zero on
//! any failure.
//!
//! ```text
//! cuda_check [--gguf PATH]            kernel checks vs float64 references, model checks vs CPU
//! cuda_check truncate IN OUT LAYERS   (no GPU) write a GGUF keeping only the first LAYERS blocks
//! ```
//! Every kernel check draws fresh random inputs (seed printed), poisons its outputs with NaN
//! first (so an unwritten element fails), and compares ‖out − ref‖ / ‖ref‖.

use std::path::Path;
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use stator_gpu::backend::cpu::CpuBackend;
use stator_gpu::backend::cuda::gemm::{Blas, OutType};
use stator_gpu::backend::cuda::gemv;
use stator_gpu::backend::cuda::kernels::{
    Arg, Kernels, DECODE_THREADS, NULL, PREFILL_THREADS, RMS_NORM_THREADS,
};
use stator_gpu::backend::cuda::plan::StepPlan;
use stator_gpu::backend::cuda::weights::{from_half_bits, to_half_bits};
use stator_gpu::backend::cuda::{
    cuda_available, CudaBackend, CudaDtype, CudaOptions, DeviceBuffer, GemvVariant, Gpu, GraphMode,
};
use stator_gpu::backend::{Backend, BackendError, SeqStep};
use stator_gpu::config::ModelConfig;
use stator_gpu::weights::ModelWeights;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Row {
    name: String,
    shape: String,
    error: f64,
    tolerance: f64,
}

impl Row {
    fn passed(&self) -> bool {
        self.error.is_finite() && self.error <= self.tolerance
    }
}

struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn add(&mut self, name: &str, shape: String, error: f64, tolerance: f64) {
        let row = Row {
            name: name.into(),
            shape,
            error,
            tolerance,
        };
        println!(
            "  {:<28} {:<44} err {:.3e} (tol {:.0e}) {}",
            row.name,
            row.shape,
            row.error,
            row.tolerance,
            if row.passed() { "ok" } else { "FAIL" }
        );
        self.rows.push(row);
    }
}

fn rel_err(out: &[f64], reference: &[f64]) -> f64 {
    if out.len() != reference.len() {
        return f64::NAN;
    }
    let mut num = 0.0;
    let mut den = 0.0;
    for (o, r) in out.iter().zip(reference) {
        if !o.is_finite() {
            return f64::NAN;
        }
        num += (o - r) * (o - r);
        den += r * r;
    }
    (num / den.max(1e-300)).sqrt()
}

fn bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

fn randn(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = 1.0 - rng.gen::<f64>();
            let u2: f64 = rng.gen::<f64>();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32 * std
        })
        .collect()
}

fn upload_f32(gpu: &Arc<Gpu>, data: &[f32]) -> Res<DeviceBuffer> {
    let b = gpu.alloc(data.len() * 4, "check")?;
    b.write(data)?;
    Ok(b)
}
fn upload_half(gpu: &Arc<Gpu>, data: &[f32]) -> Res<DeviceBuffer> {
    let bits = to_half_bits(data, CudaDtype::Bf16);
    let b = gpu.alloc(bits.len() * 2, "check")?;
    b.write(&bits)?;
    gpu.synchronize()?;
    Ok(b)
}
fn upload_i32(gpu: &Arc<Gpu>, data: &[i32]) -> Res<DeviceBuffer> {
    let b = gpu.alloc(data.len().max(1) * 4, "check")?;
    b.write(data)?;
    gpu.synchronize()?;
    Ok(b)
}
fn poisoned(gpu: &Arc<Gpu>, bytes: usize) -> Res<DeviceBuffer> {
    let b = gpu.alloc(bytes, "check output")?;
    b.fill_bytes(0xff)?;
    Ok(b)
}
fn read_half(b: &DeviceBuffer, n: usize) -> Res<Vec<f64>> {
    let mut bits = vec![0u16; n];
    b.read(&mut bits)?;
    Ok(from_half_bits(&bits, CudaDtype::Bf16)
        .into_iter()
        .map(f64::from)
        .collect())
}
fn read_f32(b: &DeviceBuffer, n: usize) -> Res<Vec<f64>> {
    let mut v = vec![0f32; n];
    b.read(&mut v)?;
    Ok(v.into_iter().map(f64::from).collect())
}

/// `n` values of a GEMM output of `out_type`.
fn read_out(b: &DeviceBuffer, n: usize, out_type: OutType) -> Res<Vec<f64>> {
    match out_type {
        OutType::F32 => read_f32(b, n),
        OutType::Half => read_half(b, n),
    }
}

/// `x · w` in float64 of the values rounded to the 16-bit type, as the kernels read them.
fn dot_16bit(x: &[f32], w: &[f32]) -> f64 {
    x.iter()
        .zip(w)
        .map(|(&a, &b)| bf16(a) as f64 * bf16(b) as f64)
        .sum()
}

/// The launch modes a kernel check runs in: PDL off, and on where the device has it.
fn pdl_modes(k: &Kernels) -> &'static [bool] {
    if k.supports_programmatic_launch() {
        &[false, true]
    } else {
        &[false]
    }
}

/// `out[rows, inter] = SwiGLU(gate_up[rows, 2 inter])` by the `swiglu` kernel.
fn launch_swiglu(
    k: &Kernels,
    gate_up: &DeviceBuffer,
    out: &DeviceBuffer,
    rows: usize,
    inter: usize,
) -> Res<()> {
    let total = rows * inter;
    k.launch(
        &k.swiglu,
        (total.div_ceil(256) as u32, 1, 1),
        256,
        &[
            Arg::Ptr(gate_up.ptr()),
            Arg::Ptr(out.ptr()),
            Arg::I32(inter as i32),
            Arg::U64(total as u64),
        ],
    )?;
    Ok(())
}

fn check_elementwise(gpu: &Arc<Gpu>, rng: &mut ChaCha8Rng, report: &mut Report) -> Res<()> {
    let k = Kernels::compile(gpu, 64, 3, CudaDtype::Bf16)?;
    // Rows held in registers (up to 4 float4 per thread), rows too wide for that or not made
    // of whole float4 (the kernel's looping path), at the forward pass's thread count and at a
    // smaller one.
    for (rows, width, threads) in [
        (1usize, 576usize, RMS_NORM_THREADS),
        (7, 4096, RMS_NORM_THREADS),
        (3, 1000, RMS_NORM_THREADS),
        (2, 8192, RMS_NORM_THREADS),
        (2, 10000, RMS_NORM_THREADS),
        (2, 1000, 64),
        (2, 4096, 64),
    ] {
        let x = randn(rng, rows * width, 1.0);
        let w: Vec<f32> = randn(rng, width, 0.5).iter().map(|v| v + 1.0).collect();
        let (dx, dw) = (upload_f32(gpu, &x)?, upload_f32(gpu, &w)?);
        let out = poisoned(gpu, rows * width * 2)?;
        k.launch(
            &k.rms_norm,
            (rows as u32, 1, 1),
            threads,
            &[
                Arg::Ptr(dx.ptr()),
                NULL,
                Arg::Ptr(dw.ptr()),
                Arg::Ptr(out.ptr()),
                Arg::I32(width as i32),
                Arg::F32(1e-5),
            ],
        )?;
        let mut reference = Vec::new();
        for r in 0..rows {
            let row = &x[r * width..(r + 1) * width];
            let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / width as f64;
            let scale = 1.0 / (ms + 1e-5).sqrt();
            reference.extend(
                row.iter()
                    .zip(&w)
                    .map(|(&v, &g)| v as f64 * scale * g as f64),
            );
        }
        report.add(
            "rms_norm",
            format!("{rows}x{width} ({threads} threads)"),
            rel_err(&read_half(&out, rows * width)?, &reference),
            8e-3,
        );
    }
    for (rows, inter) in [(1usize, 1536usize), (5, 14336), (3, 777)] {
        let gu = randn(rng, rows * 2 * inter, 2.0);
        let d = upload_half(gpu, &gu)?;
        let out = poisoned(gpu, rows * inter * 2)?;
        let total = rows * inter;
        launch_swiglu(&k, &d, &out, rows, inter)?;
        let mut reference = Vec::new();
        for r in 0..rows {
            for j in 0..inter {
                let g = bf16(gu[r * 2 * inter + j]) as f64;
                let u = bf16(gu[r * 2 * inter + inter + j]) as f64;
                reference.push(g / (1.0 + (-g).exp()) * u);
            }
        }
        report.add(
            "swiglu",
            format!("{rows}x{inter}"),
            rel_err(&read_half(&out, total)?, &reference),
            8e-3,
        );
    }
    for (rows, vocab) in [(1usize, 49152usize), (4, 128_256), (2, 1000)] {
        let logits = randn(rng, rows * vocab, 3.0);
        let d = upload_f32(gpu, &logits)?;
        let out = poisoned(gpu, rows * 4)?;
        k.launch(
            &k.argmax_rows,
            (rows as u32, 1, 1),
            1024,
            &[
                Arg::Ptr(d.ptr()),
                Arg::Ptr(out.ptr()),
                Arg::I32(vocab as i32),
            ],
        )?;
        let mut got = vec![0u32; rows];
        out.read(&mut got)?;
        let wrong = (0..rows)
            .filter(|&r| got[r] != argmax(&logits[r * vocab..(r + 1) * vocab]))
            .count();
        report.add("argmax", format!("{rows}x{vocab}"), wrong as f64, 0.0);
    }
    let blas = Blas::new(gpu, CudaDtype::Bf16)?;
    let gemm_cases = [
        (false, 1usize, 576usize, 1000usize, OutType::F32, false),
        (false, 5, 4096, 6144, OutType::F32, true),
        (false, 33, 2048, 777, OutType::Half, false),
        (true, 1, 576, 1000, OutType::F32, false),
        (true, 3, 4096, 6144, OutType::F32, true),
        (true, 8, 2048, 777, OutType::Half, false),
        (true, 5, 1000, 300, OutType::F32, true),
    ];
    for (skinny, rows, inn, outd, out_type, accumulate) in gemm_cases {
        let x = randn(rng, rows * inn, 1.0);
        let w = randn(rng, outd * inn, 0.02);
        let y0 = randn(rng, rows * outd, 1.0);
        let (dx, dw) = (upload_half(gpu, &x)?, upload_half(gpu, &w)?);
        let elem = if out_type == OutType::F32 { 4 } else { 2 };
        let dy = if accumulate {
            upload_f32(gpu, &y0)?
        } else {
            poisoned(gpu, rows * outd * elem)?
        };
        if skinny {
            k.skinny_gemm(
                dy.ptr(),
                out_type == OutType::F32,
                dx.ptr(),
                dw.ptr(),
                rows,
                inn,
                outd,
                accumulate,
            )
            .ok_or("skinny gemm refused the shape")??;
        } else {
            blas.linear(
                dy.ptr(),
                out_type,
                dx.ptr(),
                dw.ptr(),
                rows,
                inn,
                outd,
                accumulate,
            )?;
        }
        let mut reference = Vec::new();
        for r in 0..rows {
            for o in 0..outd {
                let dot = dot_16bit(&x[r * inn..(r + 1) * inn], &w[o * inn..(o + 1) * inn]);
                reference.push(
                    dot + if accumulate {
                        y0[r * outd + o] as f64
                    } else {
                        0.0
                    },
                );
            }
        }
        let got = read_out(&dy, rows * outd, out_type)?;
        report.add(
            if skinny {
                "skinny gemm"
            } else {
                "cublas linear"
            },
            format!(
                "{rows}x{inn}->{outd} {out_type:?}{}",
                if accumulate { " +=" } else { "" }
            ),
            rel_err(&got, &reference),
            if out_type == OutType::F32 { 1e-4 } else { 8e-3 },
        );
    }
    check_gemv_variants(gpu, &k, rng, report)?;
    check_gate_up_swiglu(gpu, &k, rng, report)?;
    check_qkv_rope(gpu, &k, rng, report)
}

/// The split-K QKV + rope + K/V write kernel of one-row steps against the unfused path it
/// replaces (split-K projection into f32, then `rope_kv_write`), bit for bit: Q and the whole
/// cache (poisoned before, so a missed or stray write shows), with and without a QKV bias,
/// PDL off and on. `rope_kv_write` itself is checked against float64 in
/// `check_rope_and_attention`.
fn check_qkv_rope(
    gpu: &Arc<Gpu>,
    k: &Kernels,
    rng: &mut ChaCha8Rng,
    report: &mut Report,
) -> Res<()> {
    let hd = k.head_dim;
    let (num_layers, layer, block_size, num_blocks) = (2usize, 1usize, 16usize, 4usize);
    // (hidden, q heads, kv heads, bias): 8B-like width (2 warps per row), SmolLM2-like (1).
    let cases = [(4096usize, 6usize, 2usize, true), (576, 9, 3, false)];
    let initial = k.programmatic_launch();
    let pdl_modes = pdl_modes(k);
    let inv_freq: Vec<f64> = (0..hd / 2)
        .map(|i| 1.0 / 10000f64.powf(2.0 * i as f64 / hd as f64))
        .collect();
    let d_inv_freq = gpu.alloc(inv_freq.len() * 8, "check")?;
    d_inv_freq.write(&inv_freq)?;
    let (position, slot) = (1234i32, (2 * block_size + 5) as i32);
    let (d_pos, d_slot) = (upload_i32(gpu, &[position])?, upload_i32(gpu, &[slot])?);
    for (inn, nh, nkv, with_bias) in cases {
        let (q_dim, kv_dim) = (nh * hd, nkv * hd);
        let out = q_dim + 2 * kv_dim;
        let x = randn(rng, inn, 1.0);
        let w = randn(rng, out * inn, 0.05);
        let bias = randn(rng, out, 0.5);
        let (dx, dw, d_bias) = (
            upload_half(gpu, &x)?,
            upload_half(gpu, &w)?,
            upload_f32(gpu, &bias)?,
        );
        let bias_ptr = if with_bias { d_bias.ptr() } else { 0 };
        let cache_elems = num_blocks * num_layers * 2 * block_size * kv_dim;
        for &pdl in pdl_modes {
            k.set_programmatic_launch(pdl);
            let (q_fused, cache_fused) =
                (poisoned(gpu, q_dim * 2)?, poisoned(gpu, cache_elems * 2)?);
            let rope = gemv::QkvRope {
                bias: bias_ptr,
                positions: d_pos.ptr(),
                slots: d_slot.ptr(),
                inv_freq: d_inv_freq.ptr(),
                q_out: q_fused.ptr(),
                cache: cache_fused.ptr(),
                inn,
                layer,
                num_layers,
                num_heads: nh,
                num_kv_heads: nkv,
                block_size,
            };
            k.gemv_qkv_rope(&rope, dx.ptr(), dw.ptr())
                .ok_or("the QKV + rope kernel refused the shape")??;
            let (q_apart, cache_apart) =
                (poisoned(gpu, q_dim * 2)?, poisoned(gpu, cache_elems * 2)?);
            let qkv = poisoned(gpu, out * 4)?;
            k.skinny_gemm_with(
                GemvVariant::SplitK,
                qkv.ptr(),
                true,
                dx.ptr(),
                dw.ptr(),
                1,
                inn,
                out,
                false,
            )
            .ok_or("the one-row GEMV refused the shape")??;
            k.launch(
                &k.rope_kv_write,
                (1, 1, 1),
                256,
                &[
                    Arg::Ptr(qkv.ptr()),
                    if with_bias {
                        Arg::Ptr(d_bias.ptr())
                    } else {
                        NULL
                    },
                    Arg::Ptr(d_pos.ptr()),
                    Arg::Ptr(d_slot.ptr()),
                    Arg::Ptr(d_inv_freq.ptr()),
                    Arg::Ptr(q_apart.ptr()),
                    Arg::Ptr(cache_apart.ptr()),
                    Arg::I32(layer as i32),
                    Arg::I32(num_layers as i32),
                    Arg::I32(nh as i32),
                    Arg::I32(nkv as i32),
                    Arg::I32(block_size as i32),
                ],
            )?;
            let bits = |b: &DeviceBuffer, n: usize| -> Res<Vec<u16>> {
                let mut v = vec![0u16; n];
                b.read(&mut v)?;
                Ok(v)
            };
            let (qf, qa) = (bits(&q_fused, q_dim)?, bits(&q_apart, q_dim)?);
            let (cf, ca) = (
                bits(&cache_fused, cache_elems)?,
                bits(&cache_apart, cache_elems)?,
            );
            // The slot's K and V rows must have been written (poison is 0xffff, a NaN).
            let plane = block_size * kv_dim;
            let k_base = ((slot as usize / block_size) * num_layers + layer) * 2 * plane
                + (slot as usize % block_size) * kv_dim;
            let unwritten = qf.iter().filter(|&&b| b == 0xffff).count()
                + (0..kv_dim)
                    .filter(|&j| cf[k_base + j] == 0xffff || cf[k_base + plane + j] == 0xffff)
                    .count();
            let differing = qf.iter().zip(&qa).filter(|(a, b)| a != b).count()
                + cf.iter().zip(&ca).filter(|(a, b)| a != b).count();
            report.add(
                "gemv qkv+rope = apart",
                format!(
                    "1x{inn} -> {nh}+2x{nkv} heads{}{}: differing+unwritten",
                    if with_bias { " bias" } else { "" },
                    if pdl { " pdl" } else { "" }
                ),
                (differing + unwritten) as f64,
                0.0,
            );
        }
    }
    k.set_programmatic_launch(initial);
    Ok(())
}

/// The split-K gate/up + SwiGLU kernel of one-row steps against float64 (g and u rounded to
/// the 16-bit type first, as the kernel does) and against the unfused path it replaces
/// (split-K gate/up projection into the 16-bit type, then `swiglu`): bit for bit where both
/// cut the rows into the same slices, within rounding where the fused kernel has to use
/// fewer (hidden above 8192). Outputs poisoned, PDL off and on.
fn check_gate_up_swiglu(
    gpu: &Arc<Gpu>,
    k: &Kernels,
    rng: &mut ChaCha8Rng,
    report: &mut Report,
) -> Res<()> {
    // (hidden, intermediate): 8B, the wide check model, 1B, SmolLM2 shapes with odd feature
    // counts; 8192 (4 warps per row); 20000 (capped splits, several rounds per warp); 8.
    let cases = [
        (4096usize, 3001usize),
        (2560, 1729),
        (2048, 1024),
        (576, 1537),
        (8192, 517),
        (20000, 37),
        (8, 5),
    ];
    let initial = k.programmatic_launch();
    let pdl_modes = pdl_modes(k);
    for (inn, inter) in cases {
        let x = randn(rng, inn, 1.0);
        let w = randn(rng, 2 * inter * inn, 0.05);
        let (dx, dw) = (upload_half(gpu, &x)?, upload_half(gpu, &w)?);
        let dot = |row: usize| dot_16bit(&x, &w[row * inn..(row + 1) * inn]);
        let reference: Vec<f64> = (0..inter)
            .map(|o| {
                let g = bf16(dot(o) as f32) as f64;
                let u = bf16(dot(inter + o) as f32) as f64;
                g / (1.0 + (-g).exp()) * u
            })
            .collect();
        let same_slices = gemv::gate_up_swiglu_splits(inn) == gemv::split_k_splits(inn);
        for &pdl in pdl_modes {
            k.set_programmatic_launch(pdl);
            let fused = poisoned(gpu, inter * 2)?;
            k.gemv_gate_up_swiglu(fused.ptr(), dx.ptr(), dw.ptr(), inn, inter)
                .ok_or("the gate/up + SwiGLU kernel refused the shape")??;
            let gate_up = poisoned(gpu, 2 * inter * 2)?;
            let apart = poisoned(gpu, inter * 2)?;
            k.skinny_gemm_with(
                GemvVariant::SplitK,
                gate_up.ptr(),
                false,
                dx.ptr(),
                dw.ptr(),
                1,
                inn,
                2 * inter,
                false,
            )
            .ok_or("the one-row GEMV refused the shape")??;
            launch_swiglu(k, &gate_up, &apart, 1, inter)?;
            let (got, unfused) = (read_half(&fused, inter)?, read_half(&apart, inter)?);
            let shape = format!("1x{inn} -> 2x{inter}{}", if pdl { " pdl" } else { "" });
            report.add(
                "gemv gate_up+swiglu",
                shape.clone(),
                rel_err(&got, &reference),
                8e-3,
            );
            if same_slices {
                let differing = got
                    .iter()
                    .zip(&unfused)
                    .filter(|(a, b)| !a.is_finite() || a.to_bits() != b.to_bits())
                    .count();
                report.add(
                    "gemv gate_up+swiglu = apart",
                    format!("{shape}: differing"),
                    differing as f64,
                    0.0,
                );
            } else {
                report.add(
                    "gemv gate_up+swiglu ~ apart",
                    shape,
                    rel_err(&got, &unfused),
                    1e-2,
                );
            }
        }
    }
    k.set_programmatic_launch(initial);
    Ok(())
}

/// Every one-row GEMV variant against the float64 reference: odd output counts, inner sizes
/// of every model here (576, 2048, 4096, 14336) plus one past split-K's single round (20000,
/// with a partial last chunk), f32 and 16-bit outputs, accumulate; PDL off and on.
fn check_gemv_variants(
    gpu: &Arc<Gpu>,
    k: &Kernels,
    rng: &mut ChaCha8Rng,
    report: &mut Report,
) -> Res<()> {
    let cases = [
        (4096usize, 6147usize, OutType::F32, false),
        (4096, 4095, OutType::F32, true),
        (14336, 1001, OutType::F32, true),
        (2048, 3075, OutType::Half, false),
        (576, 999, OutType::F32, false),
        (576, 37, OutType::Half, false),
        (20000, 129, OutType::F32, true),
        (8, 5, OutType::F32, false),
    ];
    let initial = k.programmatic_launch();
    let pdl_modes = pdl_modes(k);
    for (inn, outd, out_type, accumulate) in cases {
        let x = randn(rng, inn, 1.0);
        let w = randn(rng, outd * inn, 0.02);
        let y0 = randn(rng, outd, 1.0);
        let (dx, dw) = (upload_half(gpu, &x)?, upload_half(gpu, &w)?);
        let reference: Vec<f64> = (0..outd)
            .map(|o| {
                let dot = dot_16bit(&x, &w[o * inn..(o + 1) * inn]);
                dot + if accumulate { y0[o] as f64 } else { 0.0 }
            })
            .collect();
        let elem = if out_type == OutType::F32 { 4 } else { 2 };
        for variant in GemvVariant::ALL {
            for &pdl in pdl_modes {
                k.set_programmatic_launch(pdl);
                // Poisoned even when accumulating: the initial values are written over it.
                let dy = poisoned(gpu, outd * elem)?;
                if accumulate {
                    dy.write(&y0)?;
                }
                k.skinny_gemm_with(
                    variant,
                    dy.ptr(),
                    out_type == OutType::F32,
                    dx.ptr(),
                    dw.ptr(),
                    1,
                    inn,
                    outd,
                    accumulate,
                )
                .ok_or("the one-row GEMV refused the shape")??;
                let got = read_out(&dy, outd, out_type)?;
                report.add(
                    &format!("gemv {variant}"),
                    format!(
                        "1x{inn}->{outd} {out_type:?}{}{}",
                        if accumulate { " +=" } else { "" },
                        if pdl { " pdl" } else { "" }
                    ),
                    rel_err(&got, &reference),
                    if out_type == OutType::F32 { 1e-4 } else { 8e-3 },
                );
            }
        }
    }
    k.set_programmatic_launch(initial);
    Ok(())
}

/// The backend the model checks run: a small share of the device, graphs off unless a
/// check turns them on.
fn model_check_options(dtype: CudaDtype) -> CudaOptions {
    CudaOptions {
        gpu_memory_utilization: 0.05,
        max_num_seqs: 16,
        max_batch_tokens: 1024,
        dtype,
        cuda_graphs: false,
        ..Default::default()
    }
}

/// [`check_gemv_model`] on a random model wide enough for every variant to differ from the
/// baseline in its order of work (the small model's rows are 1–2 chunks long, so split-K uses
/// one warp per row there): hidden 2560 (split-K 2 warps per row), intermediate 6912 (4 warps,
/// partial last chunk), vocabulary 1001 (an odd output count).
fn check_gemv_wide_model(seed: u64, dtype: CudaDtype, report: &mut Report) -> Res<()> {
    let config = ModelConfig {
        vocab_size: 1001,
        hidden_size: 2560,
        intermediate_size: 6912,
        num_layers: 2,
        num_heads: 20,
        num_kv_heads: 4,
        head_dim: 128,
        attention_bias: false,
        ..small_config()
    };
    let opts = model_check_options(dtype);
    let mut cuda = CudaBackend::with_random_weights(config, seed, opts)?;
    let name = match dtype {
        CudaDtype::Bf16 => "wide-random",
        CudaDtype::F16 => "wide-random f16",
    };
    check_gemv_model(&mut cuda, name, report)?;
    check_norm_fold(&mut cuda, name, report)?;
    check_attention_merge(&mut cuda, name, report)
}

/// Decode with every one-row GEMV variant against the baseline kernel on the same model:
/// prefill, then teacher-forced one-row steps (logits poisoned before each), with the norms
/// fused and apart (apart, every projection goes through the variant); graph replays must
/// equal the same padded steps launched eagerly bit for bit (as in `check_graphs`).
fn check_gemv_model(cuda: &mut CudaBackend, name: &str, report: &mut Report) -> Res<()> {
    let initial = cuda.gemv_variant();
    let steps = TEACHER_FORCED_STEPS;
    let run = teacher_forced_decode;
    let worst = worst_logits_err;
    let differing = differing_steps;
    let initial_fuse = cuda.fuse_one_row_norms();
    for fuse in [false, true] {
        cuda.set_fuse_one_row_norms(fuse);
        cuda.set_gemv_variant(GemvVariant::Baseline);
        let baseline = run(cuda, GraphMode::Off)?;
        let norms = if fuse { "norms fused" } else { "norms apart" };
        for variant in GemvVariant::ALL {
            cuda.set_gemv_variant(variant);
            let eager = run(cuda, GraphMode::Off)?;
            let padded = run(cuda, GraphMode::PaddedEager)?;
            let before = cuda.graph_stats();
            let graphs = run(cuda, GraphMode::On)?;
            let after = cuda.graph_stats();
            let (replays, failed) = (
                after.replayed - before.replayed,
                after.failed - before.failed,
            );
            if variant == GemvVariant::SplitK && !fuse {
                // With the norms apart the split-K step folds SwiGLU into gate/up and rope +
                // K/V write into QKV (the default); the same steps with the separate kernels
                // (each fusion off alone, then both) must agree bit for bit.
                for (what, swiglu, rope) in [
                    ("swiglu", false, true),
                    ("rope", true, false),
                    ("swiglu+rope", false, false),
                ] {
                    cuda.set_fuse_one_row_swiglu(swiglu);
                    cuda.set_fuse_one_row_rope(rope);
                    let unfused = run(cuda, GraphMode::Off)?;
                    report.add(
                        &format!("{name} gemv split_k {what} fused = apart"),
                        format!("{steps} decode steps, {norms}: differing"),
                        differing(&eager, &unfused) as f64,
                        0.0,
                    );
                }
                cuda.set_fuse_one_row_swiglu(true);
                cuda.set_fuse_one_row_rope(true);
            }
            if variant != GemvVariant::Baseline {
                report.add(
                    &format!("{name} gemv {variant} vs baseline"),
                    format!("{steps} decode steps, {norms}"),
                    worst(&eager, &baseline),
                    // As batched vs alone: the kernels add the same products in another order.
                    1e-2,
                );
            }
            report.add(
                &format!("{name} gemv {variant} graphs = padded eager"),
                format!("{steps} steps, {norms}, {replays} replays: differing"),
                // A failed capture runs eagerly and would pass trivially: counted as a failure.
                if failed == 0 && replays + 4 >= steps {
                    differing(&graphs, &padded) as f64
                } else {
                    f64::NAN
                },
                0.0,
            );
        }
    }
    cuda.set_fuse_one_row_norms(initial_fuse);
    cuda.set_gemv_variant(initial);
    Ok(())
}

/// Decode steps of [`teacher_forced_decode`].
const TEACHER_FORCED_STEPS: usize = 20;

/// A 21-token prefill (eager), then [`TEACHER_FORCED_STEPS`] teacher-forced one-row decode
/// steps in graph mode `mode`, logits poisoned before each; returns every step's logits.
fn teacher_forced_decode(cuda: &mut CudaBackend, mode: GraphMode) -> Res<Vec<Vec<f32>>> {
    let vocab = cuda.config().vocab_size as u32;
    let prompt: Vec<u32> = (0..21).map(|i| (i * 17 + 5) % vocab).collect();
    let steps = TEACHER_FORCED_STEPS;
    let table: Vec<u32> = (0..(prompt.len() + steps).div_ceil(cuda.kv_layout().block_size) as u32)
        .map(|b| b + 40)
        .collect();
    cuda.set_graph_mode(GraphMode::Off);
    cuda.forward(&[SeqStep {
        tokens: &prompt,
        start_pos: 0,
        block_table: &table,
        want_logits: true,
    }])?;
    cuda.set_graph_mode(mode);
    let mut all = Vec::new();
    for i in 0..steps {
        cuda.poison_logits()?;
        let logits = cuda.forward(&[SeqStep {
            tokens: &[((i * 31 + 7) as u32) % vocab],
            start_pos: prompt.len() + i,
            block_table: &table,
            want_logits: true,
        }])?;
        all.push(logits.data);
    }
    cuda.set_graph_mode(GraphMode::Off);
    Ok(all)
}

/// Worst relative error of one run's logits against another's, step by step (NaN when a
/// step is missing or unwritten).
fn worst_logits_err(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    if a.len() != b.len() {
        return f64::NAN;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| logits_err(x, y))
        .fold(0.0, worst_of)
}

/// The larger error, NaN (a missing or unwritten value) winning over any number.
fn worst_of(worst: f64, e: f64) -> f64 {
    if worst.is_nan() || e.is_nan() {
        f64::NAN
    } else {
        worst.max(e)
    }
}

/// Logits that differ in their bits between two runs, plus missing steps.
fn differing_steps(a: &[Vec<f32>], b: &[Vec<f32>]) -> usize {
    a.iter()
        .zip(b)
        .map(|(x, y)| differing_bits(x, y))
        .sum::<usize>()
        + a.len().abs_diff(b.len())
}

/// Greedy decoding with the norms apart and the RMSNorm fold on, against the CPU backend's
/// (f32): the logits of every decode step whose input tokens both runs share (random weights
/// may flip a near-tie, which ends the comparison; none shared is only printed).
fn check_norm_fold_vs_cpu(
    cuda: &mut CudaBackend,
    name: &str,
    prompt: &[u32],
    cpu_tokens: &[u32],
    cpu_logits: &[Vec<f32>],
    report: &mut Report,
) -> Res<()> {
    let initial_fuse = cuda.fuse_one_row_norms();
    cuda.set_fuse_one_row_norms(false);
    cuda.set_fold_one_row_rms_norm(true);
    let applied = cuda.one_row_rms_norm_folded(1);
    let generated = generate(cuda, prompt, cpu_tokens.len());
    cuda.set_fold_one_row_rms_norm(CudaOptions::default().fold_one_row_rms_norm);
    cuda.set_fuse_one_row_norms(initial_fuse);
    let (tokens, logits) = generated?;
    if !applied {
        report.add(
            &format!("{name} rms_norm folded decode vs cpu"),
            "the fold did not apply".into(),
            f64::NAN,
            0.0,
        );
        return Ok(());
    }
    let shared = tokens
        .iter()
        .zip(cpu_tokens)
        .take_while(|(a, b)| a == b)
        .count()
        .min(cpu_tokens.len().saturating_sub(1));
    if shared == 0 {
        println!(
            "    {name} rms_norm folded vs cpu: no decode step on shared tokens (informational)"
        );
        return Ok(());
    }
    // Step s decodes token s - 1, so steps 1..=shared saw the same tokens on both backends.
    let worst = (1..=shared)
        .map(|s| logits_err(&logits[s], &cpu_logits[s]))
        .fold(0.0, worst_of);
    report.add(
        &format!("{name} rms_norm folded decode vs cpu"),
        format!("{shared} decode steps, norms apart"),
        worst,
        1e-2,
    );
    Ok(())
}

/// RMSNorm folded into the one-row split-K projections (round 8), on a model with the norms
/// apart (so every layer's norms go through the fold): against the two-kernel path (only the
/// order of the sum of squares differs: logits within 1e-2, greedy tokens identical), with
/// the SwiGLU/rope folds on and off (the fold then feeds the plain split-K kernel); graphs =
/// padded eager and PDL on = off, bit for bit, with the fold on.
fn check_norm_fold(cuda: &mut CudaBackend, name: &str, report: &mut Report) -> Res<()> {
    let steps = TEACHER_FORCED_STEPS;
    let initial_pdl = cuda.programmatic_launch();
    let initial_fuse = cuda.fuse_one_row_norms();
    cuda.set_fuse_one_row_norms(false);
    cuda.set_gemv_variant(GemvVariant::SplitK);
    let greedy = |run: &[Vec<f32>]| run.iter().map(|l| argmax(l)).collect::<Vec<_>>();
    for (what, folds) in [("folds on", true), ("folds off", false)] {
        cuda.set_fuse_one_row_swiglu(folds);
        cuda.set_fuse_one_row_rope(folds);
        cuda.set_fold_one_row_rms_norm(false);
        let apart = teacher_forced_decode(cuda, GraphMode::Off)?;
        cuda.set_fold_one_row_rms_norm(true);
        let folded = teacher_forced_decode(cuda, GraphMode::Off)?;
        report.add(
            &format!("{name} rms_norm folded vs kernel"),
            format!("{steps} decode steps, swiglu/rope {what}"),
            // A fold that did not apply would compare the kernel path with itself.
            if cuda.one_row_rms_norm_folded(1) {
                worst_logits_err(&folded, &apart)
            } else {
                f64::NAN
            },
            // The model tolerance; measured values are far below (round 8).
            1e-2,
        );
        let flips = greedy(&folded)
            .iter()
            .zip(greedy(&apart))
            .filter(|(a, b)| **a != *b)
            .count();
        report.add(
            &format!("{name} rms_norm folded greedy tokens"),
            format!("{steps} decode steps, swiglu/rope {what}: differing"),
            if folded.len() == apart.len() {
                flips as f64
            } else {
                f64::NAN
            },
            0.0,
        );
        let padded = teacher_forced_decode(cuda, GraphMode::PaddedEager)?;
        let before = cuda.graph_stats();
        let graphs = teacher_forced_decode(cuda, GraphMode::On)?;
        let after = cuda.graph_stats();
        let (replays, failed) = (
            after.replayed - before.replayed,
            after.failed - before.failed,
        );
        report.add(
            &format!("{name} rms_norm folded graphs = padded eager"),
            format!("{steps} steps, swiglu/rope {what}, {replays} replays: differing"),
            if failed == 0 && replays + 4 >= steps {
                differing_steps(&graphs, &padded) as f64
            } else {
                f64::NAN
            },
            0.0,
        );
        if cuda.set_programmatic_launch(!initial_pdl) != initial_pdl {
            let other_eager = teacher_forced_decode(cuda, GraphMode::Off)?;
            let other_graphs = teacher_forced_decode(cuda, GraphMode::On)?;
            for (mode, a, b) in [
                ("eager", &other_eager, &folded),
                ("graphs", &other_graphs, &graphs),
            ] {
                report.add(
                    &format!("{name} rms_norm folded pdl on = off"),
                    format!("{steps} steps, {mode}, swiglu/rope {what}: differing"),
                    differing_steps(a, b) as f64,
                    0.0,
                );
            }
        }
        cuda.set_programmatic_launch(initial_pdl);
    }
    let defaults = CudaOptions::default();
    cuda.set_fold_one_row_rms_norm(defaults.fold_one_row_rms_norm);
    cuda.set_fuse_one_row_swiglu(defaults.fuse_one_row_swiglu);
    cuda.set_fuse_one_row_rope(defaults.fuse_one_row_rope);
    cuda.set_gemv_variant(defaults.gemv_variant);
    cuda.set_fuse_one_row_norms(initial_fuse);
    Ok(())
}

/// Attention shapes: (head_dim, group, kv heads, block size, [(start_pos, new tokens)]).
type AttnCase = (usize, usize, usize, usize, Vec<(usize, usize)>);

fn check_rope_and_attention(gpu: &Arc<Gpu>, rng: &mut ChaCha8Rng, report: &mut Report) -> Res<()> {
    let cases: Vec<AttnCase> = vec![
        (64, 3, 3, 16, vec![(0, 1), (16, 1), (300, 1), (2048, 1)]),
        (128, 4, 8, 16, vec![(0, 37), (100, 1), (1999, 1), (63, 65)]),
        (128, 1, 2, 32, vec![(5, 1), (0, 130), (64, 64)]),
        (64, 8, 1, 7, vec![(10, 1), (3, 200), (700, 1)]),
    ];
    for (hd, group, nkv, bs, seqs) in cases {
        let k = Kernels::compile(gpu, hd, group, CudaDtype::Bf16)?;
        let nh = nkv * group;
        let num_layers = 2;
        let layer = 1usize;
        let kv_dim = nkv * hd;
        let plane = bs * kv_dim;
        let per_block = 2 * num_layers * plane;
        let needed: usize = seqs.iter().map(|&(s, n)| (s + n).div_ceil(bs)).sum();
        let num_blocks = needed + 5;
        let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
        ids.shuffle(rng);
        let mut tables: Vec<Vec<u32>> = Vec::new();
        let mut next = 0;
        for &(s, n) in &seqs {
            let used = (s + n).div_ceil(bs);
            tables.push(ids[next..next + used].to_vec());
            next += used;
        }
        let tokens: Vec<Vec<u32>> = seqs.iter().map(|&(_, n)| vec![0u32; n]).collect();
        let batch: Vec<SeqStep> = seqs
            .iter()
            .zip(&tables)
            .zip(&tokens)
            .map(|((&(s, _), t), tok)| SeqStep {
                tokens: tok,
                start_pos: s,
                block_table: t,
                want_logits: true,
            })
            .collect();
        let mut plan = StepPlan::default();
        plan.build(&batch, bs);
        let rows = plan.rows;
        let q_dim = nh * hd;

        // Cache: random everywhere; new tokens' K/V are then written by rope_kv_write, which is
        // itself checked against its reference below.
        let cache_host: Vec<f32> = randn(rng, num_blocks * per_block, 1.0)
            .iter()
            .map(|&v| bf16(v))
            .collect();
        let cache = upload_half(gpu, &cache_host)?;
        let meta = upload_i32(gpu, &plan.meta)?;
        let m = |o: usize| Arg::Ptr(meta.at::<i32>(o));
        let qkv_w = q_dim + 2 * kv_dim;
        let qkv = randn(rng, rows * qkv_w, 1.0);
        let bias = randn(rng, qkv_w, 0.1);
        let theta = 10000.0f64;
        let inv_freq: Vec<f64> = (0..hd / 2)
            .map(|i| theta.powf(-((2 * i) as f64) / hd as f64))
            .collect();
        let (dqkv, dbias) = (upload_f32(gpu, &qkv)?, upload_f32(gpu, &bias)?);
        let dfreq = gpu.alloc(inv_freq.len() * 8, "freq")?;
        dfreq.write(&inv_freq)?;
        let q_out = poisoned(gpu, rows * q_dim * 2)?;
        k.launch(
            &k.rope_kv_write,
            (rows as u32, 1, 1),
            256,
            &[
                Arg::Ptr(dqkv.ptr()),
                Arg::Ptr(dbias.ptr()),
                m(plan.positions_at),
                m(plan.slots_at),
                Arg::Ptr(dfreq.ptr()),
                Arg::Ptr(q_out.ptr()),
                Arg::Ptr(cache.ptr()),
                Arg::I32(layer as i32),
                Arg::I32(num_layers as i32),
                Arg::I32(nh as i32),
                Arg::I32(nkv as i32),
                Arg::I32(bs as i32),
            ],
        )?;
        // Reference rotary + cache contents in f64.
        let mut ref_cache: Vec<f64> = cache_host.iter().map(|&v| v as f64).collect();
        let mut ref_q = vec![0f64; rows * q_dim];
        let positions = &plan.meta[plan.positions_at..plan.positions_at + rows];
        let slots = &plan.meta[plan.slots_at..plan.slots_at + rows];
        for t in 0..rows {
            let pos = positions[t] as f64;
            let row: Vec<f64> = (0..qkv_w)
                .map(|j| qkv[t * qkv_w + j] as f64 + bias[j] as f64)
                .collect();
            let (blk, off) = (slots[t] as usize / bs, slots[t] as usize % bs);
            let k_base = (blk * num_layers + layer) * 2 * plane + off * kv_dim;
            for head in 0..nh + nkv {
                for i in 0..hd / 2 {
                    let (a, b) = (row[head * hd + i], row[head * hd + i + hd / 2]);
                    let ang = pos * inv_freq[i];
                    let (ra, rb) = (a * ang.cos() - b * ang.sin(), b * ang.cos() + a * ang.sin());
                    if head < nh {
                        ref_q[t * q_dim + head * hd + i] = ra;
                        ref_q[t * q_dim + head * hd + i + hd / 2] = rb;
                    } else {
                        let kh = (head - nh) * hd + i;
                        ref_cache[k_base + kh] = ra;
                        ref_cache[k_base + kh + hd / 2] = rb;
                    }
                }
            }
            for j in 0..kv_dim {
                ref_cache[k_base + plane + j] = row[q_dim + kv_dim + j];
            }
        }
        let got_q = read_half(&q_out, rows * q_dim)?;
        let got_cache = read_half(&cache, num_blocks * per_block)?;
        let shape = format!("hd{hd} g{group} kv{nkv} bs{bs} rows{rows}");
        report.add(
            "rope_kv_write q",
            shape.clone(),
            rel_err(&got_q, &ref_q),
            8e-3,
        );
        report.add(
            "rope_kv_write cache",
            shape.clone(),
            rel_err(&got_cache, &ref_cache),
            8e-3,
        );

        // Attention reference from what the device holds (inputs exact, so only the kernels'
        // own rounding shows).
        let q_in = got_q.clone();
        let kv = got_cache;
        let mut reference = vec![0f64; rows * q_dim];
        let mut row = 0;
        for (si, &(start, n)) in seqs.iter().enumerate() {
            for j in 0..n {
                let pos = start + j;
                for head in 0..nh {
                    let kvh = head / group;
                    let q = &q_in[(row + j) * q_dim + head * hd..][..hd];
                    let mut scores = Vec::with_capacity(pos + 1);
                    for p in 0..=pos {
                        let blk = tables[si][p / bs] as usize;
                        let base =
                            (blk * num_layers + layer) * 2 * plane + (p % bs) * kv_dim + kvh * hd;
                        let dot: f64 = (0..hd).map(|d| q[d] * kv[base + d]).sum();
                        scores.push(dot / (hd as f64).sqrt());
                    }
                    let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let w: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                    let total: f64 = w.iter().sum();
                    for d in 0..hd {
                        let mut acc = 0.0;
                        for (p, wp) in w.iter().enumerate() {
                            let blk = tables[si][p / bs] as usize;
                            let base = (blk * num_layers + layer) * 2 * plane
                                + plane
                                + (p % bs) * kv_dim
                                + kvh * hd;
                            acc += wp * kv[base + d];
                        }
                        reference[(row + j) * q_dim + head * hd + d] = acc / total;
                    }
                }
            }
            row += n;
        }
        let decode_rows: Vec<usize> = plan.meta
            [plan.dec_rows_at..plan.dec_rows_at + plan.decode_entries]
            .iter()
            .map(|&r| r as usize)
            .collect();
        let max_splits = 32usize;
        let part_acc = gpu.alloc(
            plan.decode_entries.max(1) * nh * max_splits * hd * 4,
            "partials",
        )?;
        let part_ml = gpu.alloc(
            plan.decode_entries.max(1) * nh * max_splits * 2 * 4,
            "partials",
        )?;
        let counts = upload_i32(gpu, &vec![0; plan.decode_entries.max(1) * nkv])?;
        // Output of the split decode merged by the reduce kernel, for the in-kernel merge.
        let mut reduced: Option<Vec<f64>> = None;
        // Decode with one split and with 64-token splits, the splits merged by the reduce kernel,
        // then in the kernel (launched twice: the second finds the counters reset); prefill
        // over every multi-token step.
        for (split_len, merge_in_kernel) in [(usize::MAX, false), (64, false), (64, true)] {
            for launch in 0..if merge_in_kernel { 2 } else { 1 } {
                let out = poisoned(gpu, rows * q_dim * 2)?;
                let max_ctx = plan.max_decode_ctx.max(1);
                let split_len = split_len.min(max_ctx.div_ceil(64) * 64);
                let splits = max_ctx.div_ceil(split_len);
                if splits > max_splits {
                    continue;
                }
                if plan.decode_entries > 0 {
                    k.launch(
                        &k.decode_attention,
                        (nkv as u32, plan.decode_entries as u32, splits as u32),
                        DECODE_THREADS,
                        &[
                            Arg::Ptr(q_out.ptr()),
                            Arg::Ptr(out.ptr()),
                            Arg::Ptr(part_acc.ptr()),
                            Arg::Ptr(part_ml.ptr()),
                            m(plan.dec_rows_at),
                            m(plan.dec_ctx_at),
                            m(plan.dec_seq_at),
                            m(plan.tables_at),
                            Arg::I32(plan.max_blocks as i32),
                            Arg::Ptr(cache.ptr()),
                            Arg::I32(layer as i32),
                            Arg::I32(num_layers as i32),
                            Arg::I32(nh as i32),
                            Arg::I32(nkv as i32),
                            Arg::I32(bs as i32),
                            Arg::F32(1.0 / (hd as f32).sqrt()),
                            Arg::I32(split_len as i32),
                            Arg::I32(splits as i32),
                            if merge_in_kernel {
                                Arg::Ptr(counts.ptr())
                            } else {
                                NULL
                            },
                        ],
                    )?;
                    if splits > 1 && !merge_in_kernel {
                        k.launch(
                            &k.decode_attention_reduce,
                            (plan.decode_entries as u32, nh as u32, 1),
                            hd as u32,
                            &[
                                Arg::Ptr(part_acc.ptr()),
                                Arg::Ptr(part_ml.ptr()),
                                m(plan.dec_rows_at),
                                Arg::Ptr(out.ptr()),
                                Arg::I32(nh as i32),
                                Arg::I32(splits as i32),
                            ],
                        )?;
                    }
                }
                if plan.prefill_tiles > 0 {
                    k.launch(
                        &k.prefill_attention,
                        (plan.prefill_tiles as u32, nh as u32, 1),
                        PREFILL_THREADS,
                        &[
                            Arg::Ptr(q_out.ptr()),
                            Arg::Ptr(out.ptr()),
                            m(plan.tiles_at),
                            m(plan.tables_at),
                            Arg::I32(plan.max_blocks as i32),
                            Arg::Ptr(cache.ptr()),
                            Arg::I32(layer as i32),
                            Arg::I32(num_layers as i32),
                            Arg::I32(nh as i32),
                            Arg::I32(nkv as i32),
                            Arg::I32(bs as i32),
                            Arg::F32(std::f32::consts::LOG2_E / (hd as f32).sqrt()),
                        ],
                    )?;
                }
                let got = read_half(&out, rows * q_dim)?;
                let pick = |v: &[f64], decode: bool| -> Vec<f64> {
                    (0..rows)
                        .filter(|r| decode_rows.contains(r) == decode)
                        .flat_map(|r| v[r * q_dim..(r + 1) * q_dim].to_vec())
                        .collect()
                };
                if plan.decode_entries > 0 {
                    let merged = if merge_in_kernel {
                        " merged in kernel"
                    } else {
                        ""
                    };
                    let decoded = pick(&got, true);
                    report.add(
                        &format!("decode_attention{merged}"),
                        format!("{shape} splits{splits} launch{launch}"),
                        rel_err(&decoded, &pick(&reference, true)),
                        1e-2,
                    );
                    if split_len == 64 && !merge_in_kernel {
                        reduced = Some(decoded);
                    } else if merge_in_kernel {
                        let differing = reduced.as_ref().map_or(decoded.len(), |r| {
                            r.iter()
                                .zip(&decoded)
                                .filter(|(a, b)| !b.is_finite() || a.to_bits() != b.to_bits())
                                .count()
                        });
                        report.add(
                            "decode_attention merged in kernel = reduce kernel",
                            format!("{shape} splits{splits} launch{launch}: differing"),
                            differing as f64,
                            0.0,
                        );
                        let mut left = vec![0i32; plan.decode_entries.max(1) * nkv];
                        counts.read(&mut left)?;
                        report.add(
                            "decode_attention split counters reset",
                            format!("{shape} splits{splits} launch{launch}: non-zero"),
                            left.iter().filter(|&&c| c != 0).count() as f64,
                            0.0,
                        );
                    }
                }
                if plan.prefill_tiles > 0 && split_len != 64 {
                    report.add(
                        "prefill_attention (mma)",
                        format!("{shape} tiles{}", plan.prefill_tiles),
                        rel_err(&pick(&got, false), &pick(&reference, false)),
                        1.5e-2,
                    );
                }
            }
        }
        let (regs, local) = k.resources(&k.prefill_attention)?;
        let (dregs, dlocal) = k.resources(&k.decode_attention)?;
        println!("  resources hd{hd} g{group}: prefill {regs} regs {local} B local; decode {dregs} regs {dlocal} B local");
    }
    Ok(())
}

fn small_config() -> ModelConfig {
    ModelConfig {
        architecture: "llama".into(),
        vocab_size: 512,
        hidden_size: 256,
        intermediate_size: 512,
        num_layers: 3,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 4096,
        tie_word_embeddings: false,
        attention_bias: true,
    }
}

fn round_weights(w: &ModelWeights) -> ModelWeights {
    let mut w = w.clone();
    let r = |t: &mut stator_gpu::weights::Tensor| t.data.iter_mut().for_each(|v| *v = bf16(*v));
    r(&mut w.embed);
    if let Some(h) = w.lm_head.as_mut() {
        r(h);
    }
    for l in &mut w.layers {
        for t in [
            &mut l.wq,
            &mut l.wk,
            &mut l.wv,
            &mut l.wo,
            &mut l.w_gate,
            &mut l.w_up,
            &mut l.w_down,
        ] {
            r(t);
        }
    }
    w
}

fn logits_err(a: &[f32], b: &[f32]) -> f64 {
    rel_err(
        &a.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        &b.iter().map(|&v| v as f64).collect::<Vec<_>>(),
    )
}

/// The token greedy decoding picks: the largest logit, the first of equals.
fn argmax(row: &[f32]) -> u32 {
    row.iter()
        .enumerate()
        .fold(0, |b, (j, &v)| if v > row[b] { j } else { b }) as u32
}

/// Logits that differ in their bits over the length both runs share; an unwritten (poisoned,
/// NaN) or non-finite value counts as a difference even when both runs left it so.
fn differing_bits(a: &[f32], b: &[f32]) -> usize {
    a.iter()
        .zip(b)
        .filter(|(x, y)| !x.is_finite() || x.to_bits() != y.to_bits())
        .count()
}

/// Block tables of `n` sequences: sequence `s` owns blocks `s * per_seq..(s + 1) * per_seq`.
fn consecutive_tables(n: usize, per_seq: u32) -> Vec<Vec<u32>> {
    (0..n as u32)
        .map(|s| (s * per_seq..(s + 1) * per_seq).collect())
        .collect()
}

/// One step prefilling each prompt from position 0 into its block table.
fn prefill_steps<'a>(prompts: &'a [Vec<u32>], tables: &'a [Vec<u32>]) -> Vec<SeqStep<'a>> {
    prompts
        .iter()
        .zip(tables)
        .map(|(p, t)| SeqStep {
            tokens: p,
            start_pos: 0,
            block_table: t,
            want_logits: true,
        })
        .collect()
}

/// Decode step `step` after the prompts: sequence `s` feeds the token `next[s]`.
fn decode_steps<'a>(
    next: &'a [[u32; 1]],
    prompts: &[Vec<u32>],
    tables: &'a [Vec<u32>],
    step: usize,
) -> Vec<SeqStep<'a>> {
    (0..next.len())
        .map(|s| SeqStep {
            tokens: &next[s],
            start_pos: prompts[s].len() + step,
            block_table: &tables[s],
            want_logits: true,
        })
        .collect()
}

/// Greedy generation of `steps` tokens after `prompt`, one sequence, blocks 0.. in order.
fn generate(
    backend: &mut dyn Backend,
    prompt: &[u32],
    steps: usize,
) -> Result<(Vec<u32>, Vec<Vec<f32>>), BackendError> {
    let bs = backend.kv_layout().block_size;
    let table: Vec<u32> = (0..((prompt.len() + steps).div_ceil(bs)) as u32).collect();
    let mut out = Vec::new();
    let mut all_logits = Vec::new();
    let mut logits = backend.forward(&[SeqStep {
        tokens: prompt,
        start_pos: 0,
        block_table: &table,
        want_logits: true,
    }])?;
    for i in 0..steps {
        let row = logits.row(0);
        let next = argmax(row);
        all_logits.push(row.to_vec());
        out.push(next);
        if i + 1 < steps {
            logits = backend.forward(&[SeqStep {
                tokens: &[next],
                start_pos: prompt.len() + i,
                block_table: &table,
                want_logits: true,
            }])?;
        }
    }
    Ok((out, all_logits))
}

fn check_model(
    check_greedy: bool,
    name: &str,
    config: ModelConfig,
    weights: ModelWeights,
    prompts: &[Vec<u32>],
    dtype: CudaDtype,
    report: &mut Report,
) -> Res<()> {
    let opts = model_check_options(dtype);
    let name = &match dtype {
        CudaDtype::Bf16 => name.to_string(),
        CudaDtype::F16 => format!("{name} f16"),
    };
    let mut cuda = CudaBackend::new(config.clone(), &weights, opts)?;
    let mut cpu = CpuBackend::new(config.clone(), weights.clone(), 64, 16)?;
    let mut cpu_rounded = CpuBackend::new(config.clone(), round_weights(&weights), 64, 16)?;
    let steps = 16;
    for (i, prompt) in prompts.iter().enumerate() {
        let (gpu_tokens, gpu_logits) = generate(&mut cuda, prompt, steps)?;
        let (cpu_tokens, cpu_logits) = generate(&mut cpu, prompt, steps)?;
        // Teacher-forced on the CPU's own tokens, so both see the same sequence.
        let first = logits_err(&gpu_logits[0], &cpu_logits[0]);
        report.add(
            &format!("{name} prompt{i} logits vs cpu"),
            format!("{} tokens, f32 weights", prompt.len()),
            first,
            1e-2,
        );
        if i == 0 {
            check_norm_fold_vs_cpu(&mut cuda, name, prompt, &cpu_tokens, &cpu_logits, report)?;
        }
        let (_, rounded_logits) = generate(&mut cpu_rounded, prompt, 1)?;
        report.add(
            &format!("{name} prompt{i} logits vs cpu"),
            "CPU on bf16-rounded weights".into(),
            logits_err(&gpu_logits[0], &rounded_logits[0]),
            1e-2,
        );
        let same = gpu_tokens
            .iter()
            .zip(&cpu_tokens)
            .take_while(|(a, b)| a == b)
            .count();
        println!("    gpu {gpu_tokens:?}\n    cpu {cpu_tokens:?}");
        // Random weights give near-flat logits where bf16 rounding legitimately flips ties;
        // only real weights make greedy agreement a meaningful check.
        if !check_greedy {
            println!("    {name} prompt{i}: greedy agreement {same}/{steps} (informational)");
            continue;
        }
        report.add(
            &format!("{name} prompt{i} greedy mismatch"),
            format!("first {steps} tokens identical: {same}"),
            (steps - same) as f64,
            0.0,
        );
        // The same generation with decode steps replayed from CUDA graphs.
        cuda.set_graph_mode(GraphMode::On);
        let (graph_tokens, _) = generate(&mut cuda, prompt, steps)?;
        cuda.set_graph_mode(GraphMode::Off);
        let same = graph_tokens
            .iter()
            .zip(&cpu_tokens)
            .take_while(|(a, b)| a == b)
            .count();
        report.add(
            &format!("{name} prompt{i} greedy mismatch"),
            format!("graphs on: first {steps} tokens identical: {same}"),
            (steps - same) as f64,
            0.0,
        );
    }
    // Batched equals unbatched: all prompts prefilled in one step, then one decode step each.
    let bs = 16;
    let tables: Vec<Vec<u32>> = (0..prompts.len())
        .map(|i| ((i * 12) as u32..(i * 12 + 12) as u32).collect())
        .collect();
    let batch = prefill_steps(prompts, &tables);
    let batched = cuda.forward(&batch)?;
    let mut worst: f64 = 0.0;
    for (i, p) in prompts.iter().enumerate() {
        let alone = cuda.forward(&[SeqStep {
            tokens: p,
            start_pos: 0,
            block_table: &tables[i],
            want_logits: true,
        }])?;
        worst = worst.max(logits_err(batched.row(i), alone.row(0)));
    }
    report.add(
        &format!("{name} batched vs alone"),
        format!("{} prompts prefill", prompts.len()),
        worst,
        // cuBLAS picks its kernel per row count, so a batched GEMM rounds differently.
        1e-2,
    );
    let next: Vec<[u32; 1]> = (0..prompts.len()).map(|i| [(i * 7 + 3) as u32]).collect();
    let dbatch: Vec<SeqStep> = prompts
        .iter()
        .zip(&tables)
        .zip(&next)
        .map(|((p, t), n)| SeqStep {
            tokens: n,
            start_pos: p.len(),
            block_table: t,
            want_logits: true,
        })
        .collect();
    let dbatched = cuda.forward(&dbatch)?;
    let mut worst: f64 = 0.0;
    for (i, step) in dbatch.iter().enumerate() {
        let alone = cuda.forward(std::slice::from_ref(step))?;
        worst = worst.max(logits_err(dbatched.row(i), alone.row(0)));
    }
    report.add(
        &format!("{name} batched vs alone"),
        format!("{} sequences decode", prompts.len()),
        worst,
        1e-2,
    );
    cuda.set_graph_mode(GraphMode::On);
    let mut worst: f64 = 0.0;
    // Three rounds: warm-up, capture, replay.
    for _ in 0..3 {
        cuda.poison_logits()?;
        let dbatched = cuda.forward(&dbatch)?;
        for (i, step) in dbatch.iter().enumerate() {
            cuda.poison_logits()?;
            let alone = cuda.forward(std::slice::from_ref(step))?;
            worst = worst.max(logits_err(dbatched.row(i), alone.row(0)));
        }
    }
    cuda.set_graph_mode(GraphMode::Off);
    report.add(
        &format!("{name} batched vs alone"),
        format!("{} sequences decode, graphs on", prompts.len()),
        worst,
        1e-2,
    );
    // One-row steps with the norms fused into the projections: bit-identical to the
    // separate kernels.
    let probe = std::slice::from_ref(&dbatch[0]);
    let initial_fuse = cuda.fuse_one_row_norms();
    cuda.set_fuse_one_row_norms(false);
    cuda.poison_logits()?;
    let unfused = cuda.forward(probe)?;
    cuda.set_fuse_one_row_norms(true);
    cuda.poison_logits()?;
    let fused = cuda.forward(probe)?;
    report.add(
        &format!("{name} fused one-row norms"),
        "vs norm + projection (+ SwiGLU) apart".into(),
        logits_err(fused.row(0), unfused.row(0)),
        1e-6,
    );
    cuda.set_fuse_one_row_norms(initial_fuse);
    check_graphs(&mut cuda, name, report)?;
    check_programmatic_launch(&mut cuda, name, report)?;
    check_gemv_model(&mut cuda, name, report)?;
    check_norm_fold(&mut cuda, name, report)?;
    check_attention_merge(&mut cuda, name, report)?;
    // KV export/import: copy sequence 0's blocks to fresh ids, decode from the copy.
    let mut bytes = Vec::new();
    let src = &tables[0][..(prompts[0].len() + 1).div_ceil(bs)];
    cuda.export_blocks(src, &mut bytes)?;
    let dst: Vec<u32> = (0..src.len() as u32).map(|i| 200 + i).collect();
    cuda.import_blocks(&dst, &bytes)?;
    let mut round_trip = Vec::new();
    cuda.export_blocks(&dst, &mut round_trip)?;
    report.add(
        &format!("{name} kv export/import"),
        format!("{} blocks, {} bytes", src.len(), bytes.len()),
        if round_trip == bytes { 0.0 } else { 1.0 },
        0.0,
    );
    let probe = [5u32];
    let a = cuda.forward(&[SeqStep {
        tokens: &probe,
        start_pos: prompts[0].len() + 1,
        block_table: &tables[0],
        want_logits: true,
    }])?;
    let mut moved = dst.clone();
    moved.extend_from_slice(&tables[0][src.len()..]);
    let b = cuda.forward(&[SeqStep {
        tokens: &probe,
        start_pos: prompts[0].len() + 1,
        block_table: &moved,
        want_logits: true,
    }])?;
    report.add(
        &format!("{name} decode from imported kv"),
        "same logits".into(),
        logits_err(a.row(0), b.row(0)),
        1e-6,
    );
    let bad = cuda.import_blocks(&dst, &bytes[1..]);
    report.add(
        &format!("{name} import rejects bad size"),
        "BadKvData".into(),
        if matches!(bad, Err(BackendError::BadKvData(_))) {
            0.0
        } else {
            1.0
        },
        0.0,
    );
    Ok(())
}

/// Decode steps replayed from CUDA graphs against the same padded steps launched eagerly
/// (must be bit-identical) and against the unpadded eager path (cuBLAS rounds differently per
/// row count), for several batch sizes, over 24 steps that cross block boundaries (the table
/// width bucket grows) with sequences of different lengths in one batch.
fn check_graphs(cuda: &mut CudaBackend, name: &str, report: &mut Report) -> Res<()> {
    let vocab = cuda.config().vocab_size as u32;
    let blocks_per_seq = 8u32;
    let steps = 24;
    for n in [1usize, 3, 8, 16] {
        let tables = consecutive_tables(n, blocks_per_seq);
        // Lengths 13, 18, 23, ...: the shortest crosses 16 and 32 during the steps.
        let prompts: Vec<Vec<u32>> = (0..n)
            .map(|s| {
                (0..13 + 5 * s)
                    .map(|i| ((i * 31 + s * 7 + 1) as u32) % vocab)
                    .collect()
            })
            .collect();
        cuda.set_graph_mode(GraphMode::Off);
        let prefill = prefill_steps(&prompts, &tables);
        let logits = cuda.forward(&prefill)?;
        let mut next: Vec<[u32; 1]> = (0..n).map(|i| [argmax(logits.row(i))]).collect();
        let before = cuda.graph_stats();
        let (mut exact, mut loose): (f64, f64) = (0.0, 0.0);
        for step in 0..steps {
            let batch = decode_steps(&next, &prompts, &tables, step);
            // Poisoned before each run: a replay that wrote nothing would read as NaN.
            cuda.set_graph_mode(GraphMode::Off);
            cuda.poison_logits()?;
            let unpadded = cuda.forward(&batch)?;
            cuda.set_graph_mode(GraphMode::PaddedEager);
            cuda.poison_logits()?;
            let eager = cuda.forward(&batch)?;
            cuda.set_graph_mode(GraphMode::On);
            cuda.poison_logits()?;
            let graph = cuda.forward(&batch)?;
            for s in 0..n {
                exact = exact.max(logits_err(graph.row(s), eager.row(s)));
                loose = loose.max(logits_err(graph.row(s), unpadded.row(s)));
            }
            next = (0..n).map(|s| [argmax(graph.row(s))]).collect();
        }
        cuda.set_graph_mode(GraphMode::Off);
        let after = cuda.graph_stats();
        let shape = format!("batch {n}, ctx {}..{}", 13 + 1, 13 + 5 * (n - 1) + steps);
        report.add(
            &format!("{name} graph vs eager padded"),
            shape.clone(),
            exact,
            1e-6,
        );
        report.add(
            &format!("{name} graph vs eager"),
            shape.clone(),
            loose,
            1e-2,
        );
        // Widths 1→2→4 blocks (and 8 for the longest): each key warms, captures, replays.
        let replays = after.replayed - before.replayed;
        let failed = after.failed - before.failed;
        println!(
            "    graphs batch {n}: {} captured ({} nodes in the last), {replays} replayed, {failed} failed",
            after.captured - before.captured,
            after.last_graph_nodes
        );
        report.add(
            &format!("{name} graph replays"),
            format!("{shape}: {replays} of {steps} steps replayed"),
            if failed == 0 && replays + 8 >= steps {
                0.0
            } else {
                1.0
            },
            0.0,
        );
    }
    Ok(())
}

/// One launch mode's results: logits of the prefill and every decode step, and the greedy
/// tokens of every decode step.
type ModeRun = (Vec<Vec<f32>>, Vec<Vec<u32>>);

/// Logits from programmatic dependent launch against the same steps launched the ordinary way:
/// must be bit-identical, eager and from graphs, for the prefill and 24 decode steps crossing
/// block boundaries, with one-row norms fused and apart (the 8B path keeps them apart), and
/// the on-device argmax under PDL must pick the host's argmax of the same logits.
/// Decode attention split over contexts of 200+ tokens (several splits, the shorter sequences
/// of a batch leaving some splits empty), merged in the kernel against the separate reduce
/// kernel: eager with PDL on and off against eager, graphs with PDL on and off against padded
/// eager (padding changes the split count), logits bit for bit. Graph replays reuse the split
/// counters, so a counter left non-zero would merge too early and show here.
fn check_attention_merge(cuda: &mut CudaBackend, name: &str, report: &mut Report) -> Res<()> {
    let initial_pdl = cuda.programmatic_launch();
    let vocab = cuda.config().vocab_size as u32;
    let bs = cuda.kv_layout().block_size;
    let steps = 12;
    for n in [1usize, 3] {
        let prompts: Vec<Vec<u32>> = (0..n)
            .map(|s| {
                (0..200 + 61 * s)
                    .map(|i| ((i * 23 + s * 5 + 2) as u32) % vocab)
                    .collect()
            })
            .collect();
        let per_seq = (200 + 61 * n + steps).div_ceil(bs) as u32;
        let tables = consecutive_tables(n, per_seq);
        let tokens: Vec<Vec<[u32; 1]>> = (0..steps)
            .map(|step| {
                (0..n)
                    .map(|s| [((step * 11 + s * 3 + 4) as u32) % vocab])
                    .collect()
            })
            .collect();
        let run = |cuda: &mut CudaBackend,
                   merge: bool,
                   pdl: bool,
                   mode: GraphMode|
         -> Res<(Vec<Vec<f32>>, usize)> {
            cuda.set_fuse_attention_merge(merge);
            cuda.set_programmatic_launch(pdl);
            cuda.set_graph_mode(GraphMode::Off);
            let prefill = prefill_steps(&prompts, &tables);
            cuda.forward(&prefill)?;
            cuda.set_graph_mode(mode);
            let before = cuda.graph_stats();
            let mut logits = Vec::new();
            for (step, next) in tokens.iter().enumerate() {
                let batch = decode_steps(next, &prompts, &tables, step);
                cuda.poison_logits()?;
                logits.push(cuda.forward(&batch)?.data);
            }
            let after = cuda.graph_stats();
            cuda.set_graph_mode(GraphMode::Off);
            // A failed capture runs eagerly and would pass trivially: reported as no replays.
            let replays = if after.failed > before.failed {
                0
            } else {
                after.replayed - before.replayed
            };
            Ok((logits, replays))
        };
        let differing = |a: &[Vec<f32>], b: &[Vec<f32>]| -> usize {
            a.iter()
                .zip(b)
                .map(|(x, y)| differing_bits(x, y) + x.len().abs_diff(y.len()))
                .sum::<usize>()
                + a.len().abs_diff(b.len())
        };
        let (eager_apart, _) = run(cuda, false, true, GraphMode::Off)?;
        let (padded_apart, _) = run(cuda, false, true, GraphMode::PaddedEager)?;
        for (what, pdl, mode) in [
            ("eager", true, GraphMode::Off),
            ("eager, PDL off", false, GraphMode::Off),
            ("padded eager", true, GraphMode::PaddedEager),
            ("graphs", true, GraphMode::On),
            ("graphs, PDL off", false, GraphMode::On),
        ] {
            let (merged, replays) = run(cuda, true, pdl, mode)?;
            let reference = if mode == GraphMode::Off {
                &eager_apart
            } else {
                &padded_apart
            };
            let diff = differing(&merged, reference) as f64;
            report.add(
                &format!("{name} attention merged in kernel = reduce kernel"),
                format!("batch {n}, ctx 200+, {steps} steps, {what}: differing"),
                if mode == GraphMode::On && replays + 3 < steps {
                    f64::NAN
                } else {
                    diff
                },
                0.0,
            );
        }
    }
    cuda.set_fuse_attention_merge(CudaOptions::default().fuse_attention_merge);
    cuda.set_programmatic_launch(initial_pdl);
    Ok(())
}

fn check_programmatic_launch(cuda: &mut CudaBackend, name: &str, report: &mut Report) -> Res<()> {
    if !cuda.kernels().supports_programmatic_launch() {
        println!("    {name}: no programmatic dependent launch on this device (sm_90+): skipped");
        return Ok(());
    }
    let initial = cuda.programmatic_launch();
    let vocab = cuda.config().vocab_size as u32;
    let blocks_per_seq = 8u32;
    let steps = 24;
    // Runs of different lengths differ everywhere.
    let differing = |a: &[f32], b: &[f32]| -> usize {
        if a.len() != b.len() {
            return a.len().max(b.len());
        }
        differing_bits(a, b)
    };
    let initial_fuse = cuda.fuse_one_row_norms();
    for (n, fuse) in [(1usize, true), (1, false), (3, true), (8, true)] {
        let tables = consecutive_tables(n, blocks_per_seq);
        let prompts: Vec<Vec<u32>> = (0..n)
            .map(|s| {
                (0..13 + 5 * s)
                    .map(|i| ((i * 29 + s * 11 + 3) as u32) % vocab)
                    .collect()
            })
            .collect();
        // Teacher-forced tokens, so every mode runs exactly the same steps.
        let tokens: Vec<Vec<[u32; 1]>> = (0..steps)
            .map(|step| {
                (0..n)
                    .map(|s| [((step * 13 + s * 7 + 1) as u32) % vocab])
                    .collect()
            })
            .collect();
        cuda.set_fuse_one_row_norms(fuse);
        let mut runs: Vec<ModeRun> = Vec::new();
        let modes = [
            (false, GraphMode::Off),
            (true, GraphMode::Off),
            (false, GraphMode::On),
            (true, GraphMode::On),
        ];
        let mut failed_captures = 0;
        let mut replays = 0;
        for &(pdl, mode) in &modes {
            cuda.set_programmatic_launch(pdl);
            cuda.set_graph_mode(GraphMode::Off);
            let prefill = prefill_steps(&prompts, &tables);
            cuda.poison_logits()?;
            let mut logits = vec![cuda.forward(&prefill)?.data];
            let mut greedy = Vec::new();
            cuda.set_graph_mode(mode);
            let before = cuda.graph_stats();
            for (step, next) in tokens.iter().enumerate() {
                let batch = decode_steps(next, &prompts, &tables, step);
                cuda.poison_logits()?;
                logits.push(cuda.forward(&batch)?.data);
                greedy.push(cuda.forward_greedy(&batch)?);
            }
            let after = cuda.graph_stats();
            if pdl && mode == GraphMode::On {
                failed_captures = after.failed - before.failed;
                replays = after.replayed - before.replayed;
            }
            cuda.set_graph_mode(GraphMode::Off);
            runs.push((logits, greedy));
        }
        let shape = format!(
            "batch {n}{}, prefill + {steps} steps",
            if n == 1 && !fuse { ", norms apart" } else { "" }
        );
        for (label, off, on) in [("eager", 0, 1), ("graphs", 2, 3)] {
            let diff: usize = runs[off]
                .0
                .iter()
                .zip(&runs[on].0)
                .map(|(a, b)| differing(a, b))
                .sum();
            report.add(
                &format!("{name} pdl on = off ({label})"),
                format!("{shape}: differing logits"),
                diff as f64,
                0.0,
            );
        }
        // Greedy tokens under PDL: the argmax kernel reads the logits the step just wrote.
        let vocab = vocab as usize;
        let mut wrong = 0usize;
        for (pdl_run, label) in [(1, "eager"), (3, "graphs")] {
            let (logits, greedy) = &runs[pdl_run];
            for (step_logits, step_tokens) in logits[1..].iter().zip(greedy) {
                for (s, &token) in step_tokens.iter().enumerate() {
                    let row = &step_logits[s * vocab..(s + 1) * vocab];
                    if token != argmax(row) {
                        wrong += 1;
                        println!("    {name} {label} pdl: device argmax {token} != host");
                    }
                }
            }
        }
        report.add(
            &format!("{name} pdl greedy = host argmax"),
            format!("{shape}: mismatches"),
            wrong as f64,
            0.0,
        );
        report.add(
            &format!("{name} pdl graph replays"),
            format!("{shape}: {replays} replayed, {failed_captures} failed captures"),
            if failed_captures == 0 && replays + 8 >= steps {
                0.0
            } else {
                1.0
            },
            0.0,
        );
    }
    cuda.set_fuse_one_row_norms(initial_fuse);
    cuda.set_programmatic_launch(initial);
    Ok(())
}

fn truncate(input: &Path, output: &Path, layers: usize) -> Res<()> {
    use stator_gpu::loader::{GgufBuilder, GgufFile, MetaValue};
    let file = GgufFile::open(input)?;
    let mut builder = GgufBuilder::new();
    for (key, value) in &file.metadata.entries {
        if key.ends_with(".block_count") {
            builder.metadata(key, MetaValue::U32(layers as u32));
        } else {
            builder.metadata(key, value.clone());
        }
    }
    for t in &file.tensors {
        let keep = match t.name.strip_prefix("blk.") {
            Some(rest) => rest
                .split('.')
                .next()
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n < layers),
            None => true,
        };
        if keep {
            builder.tensor_raw(
                &t.name,
                &t.shape(),
                t.ggml_type,
                file.tensor_bytes(t).to_vec(),
            );
        }
    }
    std::fs::write(output, builder.to_bytes())?;
    println!("wrote {} with {layers} layers", output.display());
    Ok(())
}

fn check_real_model(path: &str, dtypes: &[CudaDtype], report: &mut Report) -> Res<()> {
    let model = stator_gpu::loader::load_model(Path::new(&path))?;
    println!(
        "real weights: {} ({} layers)",
        model.name, model.config.num_layers
    );
    let texts = [
        "The capital of France is",
        "def fibonacci(n):",
        "Once upon a time, in a small village,",
    ];
    let prompts: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| model.tokenizer.encode(t, true))
        .collect::<Result<_, _>>()?;
    for dtype in dtypes {
        check_model(
            true,
            "smollm2",
            model.config.clone(),
            model.weights.clone(),
            &prompts,
            *dtype,
            report,
        )?;
    }
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("truncate") {
        let (Some(i), Some(o), Some(n)) = (args.get(2), args.get(3), args.get(4)) else {
            return Err("usage: cuda_check truncate IN OUT LAYERS".into());
        };
        return truncate(Path::new(i), Path::new(o), n.parse()?);
    }
    let gguf = args
        .iter()
        .position(|a| a == "--gguf")
        .and_then(|i| args.get(i + 1))
        .cloned();
    // `--dtype bf16,f16`: the 16-bit types the model-level checks run in (default bf16).
    let dtypes = args
        .iter()
        .position(|a| a == "--dtype")
        .and_then(|i| args.get(i + 1))
        .map_or("bf16", String::as_str)
        .split(',')
        .map(|d| match d {
            "bf16" => Ok(CudaDtype::Bf16),
            "f16" => Ok(CudaDtype::F16),
            other => Err(format!("--dtype {other}: expected bf16 or f16")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let model_only = args.iter().any(|a| a == "--model-only");
    if !cuda_available() {
        println!("CUDA is not available on this machine: nothing to check");
        return Ok(());
    }
    let seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    println!("seed {seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let gpu = Gpu::open(0)?;
    println!("device: {}", gpu.name);
    let mut report = Report { rows: Vec::new() };
    if !model_only {
        check_elementwise(&gpu, &mut rng, &mut report)?;
        check_rope_and_attention(&gpu, &mut rng, &mut report)?;
    }
    gpu.synchronize()?;
    drop(gpu);

    let config = small_config();
    let weights = stator_gpu::random_weights::random_weights(&config, seed);
    let prompts: Vec<Vec<u32>> = vec![
        (1..40).collect(),
        vec![7; 3],
        (0..130).map(|i| (i * 37 % 512) as u32).collect(),
    ];
    for dtype in &dtypes {
        if let Err(e) = check_model(
            false,
            "small-random",
            config.clone(),
            weights.clone(),
            &prompts,
            *dtype,
            &mut report,
        ) {
            println!("small-model check failed: {e}");
            report.add("small-random model", format!("error: {e}"), f64::NAN, 0.0);
        }
    }

    for dtype in &dtypes {
        if let Err(e) = check_gemv_wide_model(seed, *dtype, &mut report) {
            println!("wide-model GEMV check failed: {e}");
            report.add("wide-random model", format!("error: {e}"), f64::NAN, 0.0);
        }
    }

    if let Some(path) = gguf {
        if let Err(e) = check_real_model(&path, &dtypes, &mut report) {
            println!("real-weights check failed: {e}");
            report.add("smollm2 real weights", format!("error: {e}"), f64::NAN, 0.0);
        }
    }

    let failed = report.rows.iter().filter(|r| !r.passed()).count();
    println!(
        "\n=== cuda_check summary: {} checks, {} failed ===",
        report.rows.len(),
        failed
    );
    println!(
        "{:<34} {:<44} {:>10} {:>8}  result",
        "check", "shape", "error", "tol"
    );
    for r in &report.rows {
        println!(
            "{:<34} {:<44} {:>10.3e} {:>8.0e}  {}",
            r.name,
            r.shape,
            r.error,
            r.tolerance,
            if r.passed() { "ok" } else { "FAIL" }
        );
    }
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
