//! Model weights on the device: matrices in the model's 16-bit type, norms and biases in f32.
//! Q/K/V and gate/up are fused row-wise, so each becomes one GEMM.

use std::sync::Arc;

use rayon::prelude::*;

use super::device::{DeviceBuffer, Gpu};
use super::kernels::{Arg, Kernels};
use super::CudaDtype;
use crate::backend::BackendError;
use crate::config::ModelConfig;
use crate::weights::{ModelWeights, Tensor};

/// Standard deviation of random matrices, as in `random_weights.rs`.
const INIT_STD: f32 = 0.02;

pub struct LayerBuffers {
    pub attn_norm: DeviceBuffer,
    /// `[q_dim + 2 kv_dim, hidden]`
    pub qkv: DeviceBuffer,
    /// `[q_dim + 2 kv_dim]` f32, when the model has attention biases.
    pub qkv_bias: Option<DeviceBuffer>,
    /// `[hidden, q_dim]`
    pub wo: DeviceBuffer,
    pub ffn_norm: DeviceBuffer,
    /// `[2 intermediate, hidden]`: gate rows, then up rows.
    pub gate_up: DeviceBuffer,
    /// `[hidden, intermediate]`
    pub down: DeviceBuffer,
}

pub struct DeviceWeights {
    pub embed: DeviceBuffer,
    pub layers: Vec<LayerBuffers>,
    pub final_norm: DeviceBuffer,
    /// `None` when tied to `embed`.
    pub lm_head: Option<DeviceBuffer>,
}

impl DeviceWeights {
    pub fn output_matrix(&self) -> &DeviceBuffer {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Bytes of device memory the weights occupy.
    pub fn bytes(&self) -> usize {
        let layer_bytes: usize = self
            .layers
            .iter()
            .map(|l| {
                l.attn_norm.bytes()
                    + l.qkv.bytes()
                    + l.qkv_bias.as_ref().map_or(0, |b| b.bytes())
                    + l.wo.bytes()
                    + l.ffn_norm.bytes()
                    + l.gate_up.bytes()
                    + l.down.bytes()
            })
            .sum();
        self.embed.bytes()
            + layer_bytes
            + self.final_norm.bytes()
            + self.lm_head.as_ref().map_or(0, |b| b.bytes())
    }

    /// Converts host f32 weights to `dtype` and uploads them.
    pub fn upload(
        gpu: &Arc<Gpu>,
        config: &ModelConfig,
        w: &ModelWeights,
        dtype: CudaDtype,
    ) -> Result<Self, BackendError> {
        check_shapes(config, w)?;
        let matrix = |parts: &[&Tensor], what: &str| -> Result<DeviceBuffer, BackendError> {
            let numel: usize = parts.iter().map(|t| t.numel()).sum();
            let buffer = gpu.alloc(numel * 2, what)?;
            let mut converted = Vec::with_capacity(numel);
            for part in parts {
                converted.extend(to_half_bits(&part.data, dtype));
            }
            buffer.write(&converted)?;
            // The upload is asynchronous from pageable memory only up to staging; waiting here
            // bounds the host memory held by `converted`.
            gpu.synchronize()?;
            Ok(buffer)
        };
        let vector = |parts: &[&Tensor], what: &str| -> Result<DeviceBuffer, BackendError> {
            let data: Vec<f32> = parts.iter().flat_map(|t| t.data.iter().copied()).collect();
            let buffer = gpu.alloc(data.len() * 4, what)?;
            buffer.write(&data)?;
            gpu.synchronize()?;
            Ok(buffer)
        };
        let layers = w
            .layers
            .iter()
            .map(|l| {
                let qkv_bias = match (&l.bq, &l.bk, &l.bv) {
                    (Some(q), Some(k), Some(v)) => Some(vector(&[q, k, v], "qkv bias")?),
                    _ => None,
                };
                Ok(LayerBuffers {
                    attn_norm: vector(&[&l.attn_norm], "attn norm")?,
                    qkv: matrix(&[&l.wq, &l.wk, &l.wv], "qkv weights")?,
                    qkv_bias,
                    wo: matrix(&[&l.wo], "o_proj weights")?,
                    ffn_norm: vector(&[&l.ffn_norm], "ffn norm")?,
                    gate_up: matrix(&[&l.w_gate, &l.w_up], "gate/up weights")?,
                    down: matrix(&[&l.w_down], "down weights")?,
                })
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        Ok(Self {
            embed: matrix(&[&w.embed], "embedding")?,
            layers,
            final_norm: vector(&[&w.final_norm], "final norm")?,
            lm_head: w
                .lm_head
                .as_ref()
                .map(|t| matrix(&[t], "lm_head"))
                .transpose()?,
        })
    }

    /// Random weights drawn on the device (N(0, 0.02) matrices and biases, unit norms), so a
    /// large model needs no host copy. Deterministic in `seed`.
    pub fn random(
        gpu: &Arc<Gpu>,
        kernels: &Kernels,
        config: &ModelConfig,
        seed: u64,
    ) -> Result<Self, BackendError> {
        let h = config.hidden_size;
        let q_dim = config.num_heads * config.head_dim;
        let kv_dim = config.num_kv_heads * config.head_dim;
        let inter = config.intermediate_size;
        let stream = std::cell::Cell::new(0u64);
        let normal = |numel: usize, what: &str| -> Result<DeviceBuffer, BackendError> {
            stream.set(stream.get() + 1);
            let buffer = gpu.alloc(numel * 2, what)?;
            kernels.launch(
                &kernels.fill_normal,
                (1024, 1, 1),
                256,
                &[
                    Arg::Ptr(buffer.ptr()),
                    Arg::U64(numel as u64),
                    Arg::U64(seed),
                    Arg::U64(stream.get()),
                    Arg::F32(INIT_STD),
                ],
            )?;
            Ok(buffer)
        };
        let constant =
            |numel: usize, value: f32, what: &str| -> Result<DeviceBuffer, BackendError> {
                let buffer = gpu.alloc(numel * 4, what)?;
                kernels.launch(
                    &kernels.fill_f32,
                    (256, 1, 1),
                    256,
                    &[
                        Arg::Ptr(buffer.ptr()),
                        Arg::U64(numel as u64),
                        Arg::F32(value),
                    ],
                )?;
                Ok(buffer)
            };
        let embed = normal(config.vocab_size * h, "embedding")?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for _ in 0..config.num_layers {
            let qkv_bias = if config.attention_bias {
                // Biases are f32 and small: drawn on the host.
                stream.set(stream.get() + 1);
                let data = host_normal(q_dim + 2 * kv_dim, seed, stream.get());
                let buffer = gpu.alloc(data.len() * 4, "qkv bias")?;
                buffer.write(&data)?;
                gpu.synchronize()?;
                Some(buffer)
            } else {
                None
            };
            layers.push(LayerBuffers {
                attn_norm: constant(h, 1.0, "attn norm")?,
                qkv: normal((q_dim + 2 * kv_dim) * h, "qkv weights")?,
                qkv_bias,
                wo: normal(h * q_dim, "o_proj weights")?,
                ffn_norm: constant(h, 1.0, "ffn norm")?,
                gate_up: normal(2 * inter * h, "gate/up weights")?,
                down: normal(h * inter, "down weights")?,
            });
        }
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(normal(config.vocab_size * h, "lm_head")?)
        };
        let final_norm = constant(h, 1.0, "final norm")?;
        gpu.synchronize()?;
        Ok(Self {
            embed,
            layers,
            final_norm,
            lm_head,
        })
    }
}

fn host_normal(n: usize, seed: u64, stream: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    (0..n)
        .map(|_| {
            let u1: f64 = 1.0 - rng.gen::<f64>();
            let u2: f64 = rng.gen::<f64>();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32 * INIT_STD
        })
        .collect()
}

/// Rounds f32 values to the 16-bit type's bits (round to nearest even).
pub fn to_half_bits(data: &[f32], dtype: CudaDtype) -> Vec<u16> {
    match dtype {
        CudaDtype::Bf16 => data
            .par_iter()
            .map(|&x| half::bf16::from_f32(x).to_bits())
            .collect(),
        CudaDtype::F16 => data
            .par_iter()
            .map(|&x| half::f16::from_f32(x).to_bits())
            .collect(),
    }
}

/// Back from 16-bit bits to f32.
pub fn from_half_bits(bits: &[u16], dtype: CudaDtype) -> Vec<f32> {
    match dtype {
        CudaDtype::Bf16 => bits
            .iter()
            .map(|&b| half::bf16::from_bits(b).to_f32())
            .collect(),
        CudaDtype::F16 => bits
            .iter()
            .map(|&b| half::f16::from_bits(b).to_f32())
            .collect(),
    }
}

fn check_shapes(c: &ModelConfig, w: &ModelWeights) -> Result<(), BackendError> {
    let h = c.hidden_size;
    let q_dim = c.num_heads * c.head_dim;
    let kv_dim = c.num_kv_heads * c.head_dim;
    let bad = |what: String| {
        Err(BackendError::Device(format!(
            "weights do not match the config: {what}"
        )))
    };
    let expect = |t: &Tensor, shape: &[usize], name: &str| -> Result<(), BackendError> {
        if t.shape != shape {
            return bad(format!(
                "{name} has shape {:?}, expected {shape:?}",
                t.shape
            ));
        }
        Ok(())
    };
    if w.layers.len() != c.num_layers {
        return bad(format!(
            "{} layers, config says {}",
            w.layers.len(),
            c.num_layers
        ));
    }
    expect(&w.embed, &[c.vocab_size, h], "embed")?;
    expect(&w.final_norm, &[h], "final_norm")?;
    if let Some(head) = &w.lm_head {
        expect(head, &[c.vocab_size, h], "lm_head")?;
    }
    for (i, l) in w.layers.iter().enumerate() {
        expect(&l.attn_norm, &[h], &format!("layer {i} attn_norm"))?;
        expect(&l.wq, &[q_dim, h], &format!("layer {i} wq"))?;
        expect(&l.wk, &[kv_dim, h], &format!("layer {i} wk"))?;
        expect(&l.wv, &[kv_dim, h], &format!("layer {i} wv"))?;
        expect(&l.wo, &[h, q_dim], &format!("layer {i} wo"))?;
        expect(&l.ffn_norm, &[h], &format!("layer {i} ffn_norm"))?;
        expect(
            &l.w_gate,
            &[c.intermediate_size, h],
            &format!("layer {i} w_gate"),
        )?;
        expect(
            &l.w_up,
            &[c.intermediate_size, h],
            &format!("layer {i} w_up"),
        )?;
        expect(
            &l.w_down,
            &[h, c.intermediate_size],
            &format!("layer {i} w_down"),
        )?;
    }
    Ok(())
}
