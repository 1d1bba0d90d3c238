//! GGUF file → [`LoadedModel`]: metadata to [`ModelConfig`], llama.cpp tensor names to
//! [`ModelWeights`] (undoing llama.cpp's rotary row permutation for Llama).

use std::path::Path;

use super::assemble::{assemble, unpermute_rotary_rows, LayerSlot, Slot, TensorSource};
use super::gguf::GgufFile;
use super::{LoadError, LoadedModel};
use crate::config::{ModelConfig, RopeScaling};
use crate::tokenizer::Tokenizer;
use crate::weights::Tensor;

pub(crate) fn load_gguf(path: &Path) -> Result<LoadedModel, LoadError> {
    let file = GgufFile::open(path)?;
    let in_file = |e: LoadError| e.in_file(path);
    let config = config_from_gguf(&file).map_err(in_file)?;
    tracing::info!(
        tensors = file.tensors.len(),
        layers = config.num_layers,
        "GGUF parsed, dequantizing"
    );
    let tokenizer = Tokenizer::from_gguf(&file.metadata).map_err(|e| in_file(e.into()))?;
    let weights = assemble(
        &config,
        &GgufSource {
            file: &file,
            config: &config,
        },
    )
    .map_err(in_file)?;
    let name = file
        .metadata
        .get_str("general.name")
        .map(str::to_string)
        .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    Ok(LoadedModel {
        name,
        config,
        weights,
        tokenizer,
    })
}

/// Architectures whose GGUF Q/K rows llama.cpp's converter permutes for interleaved rope.
fn rows_are_permuted(architecture: &str) -> bool {
    architecture == "llama"
}

/// Reads the hyper-parameters of a `llama` or `qwen2` GGUF.
pub fn config_from_gguf(file: &GgufFile) -> Result<ModelConfig, LoadError> {
    let meta = &file.metadata;
    let arch = meta
        .get_str("general.architecture")
        .ok_or_else(|| LoadError::bad_config("general.architecture", "missing"))?
        .to_string();
    if arch != "llama" && arch != "qwen2" {
        return Err(LoadError::UnsupportedArchitecture(arch));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let required = |k: &str| -> Result<usize, LoadError> {
        let full = key(k);
        match meta.get_u64(&full) {
            Some(v) if v > 0 => usize::try_from(v)
                .map_err(|_| LoadError::bad_config(&full, format!("{v} is too large"))),
            Some(v) => Err(LoadError::bad_config(
                &full,
                format!("{v} must be positive"),
            )),
            None => Err(LoadError::bad_config(&full, "missing")),
        }
    };
    let hidden_size = required("embedding_length")?;
    let num_heads = required("attention.head_count")?;
    let num_kv_heads = match meta.get(&key("attention.head_count_kv")) {
        None => num_heads,
        Some(_) => required("attention.head_count_kv")?,
    };
    let head_dim = match meta.get(&key("attention.key_length")) {
        None => hidden_size / num_heads,
        Some(_) => required("attention.key_length")?,
    };
    if head_dim == 0 || num_heads % num_kv_heads != 0 {
        return Err(LoadError::bad_config(
            key("attention.head_count_kv"),
            format!("{num_heads} heads cannot be grouped over {num_kv_heads} KV heads"),
        ));
    }
    let embed = file
        .tensor_info("token_embd.weight")
        .ok_or_else(|| LoadError::MissingTensor("token_embd.weight".into()))?;
    let vocab_size = embed.shape().first().copied().unwrap_or(0);
    let rope_theta = meta.get_f64(&key("rope.freq_base")).unwrap_or(10_000.0) as f32;
    let max_position_embeddings = meta
        .get_u64(&key("context_length"))
        .and_then(|v| usize::try_from(v).ok())
        .unwrap_or(2048);
    let config = ModelConfig {
        architecture: arch.clone(),
        vocab_size,
        hidden_size,
        intermediate_size: required("feed_forward_length")?,
        num_layers: required("block_count")?,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: meta
            .get_f64(&key("attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-5) as f32,
        rope_theta,
        rope_scaling: rope_scaling(file, &arch, rope_theta, head_dim)?,
        max_position_embeddings,
        tie_word_embeddings: file.tensor_info("output.weight").is_none(),
        attention_bias: file.tensor_info("blk.0.attn_q.bias").is_some(),
    };
    Ok(config)
}

/// Llama 3.1 GGUFs carry the scaling as a precomputed `rope_freqs.weight` (one divisor per
/// frequency) rather than its parameters. Recover the parameters assuming Meta's published
/// low/high frequency factors and check that they reproduce the tensor exactly; anything
/// else is refused rather than run with the wrong positions.
fn rope_scaling(
    file: &GgufFile,
    arch: &str,
    rope_theta: f32,
    head_dim: usize,
) -> Result<Option<RopeScaling>, LoadError> {
    let meta = &file.metadata;
    let scaling_type = meta
        .get_str(&format!("{arch}.rope.scaling.type"))
        .unwrap_or("none");
    if scaling_type != "none" {
        return Err(LoadError::Unsupported(format!(
            "rope scaling type {scaling_type:?} is not supported (only Llama 3.1 style)"
        )));
    }
    let Some(freqs) = file.dequantize("rope_freqs.weight")? else {
        return Ok(None);
    };
    let factor = freqs.data.iter().copied().fold(1.0f32, f32::max);
    let original = meta
        .get_u64(&format!("{arch}.rope.scaling.original_context_length"))
        .unwrap_or(8192) as usize;
    let scaling = RopeScaling {
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: original,
    };
    let expected = llama3_freq_divisors(&scaling, rope_theta, head_dim);
    let matches = expected.len() == freqs.data.len()
        && expected
            .iter()
            .zip(&freqs.data)
            .all(|(a, b)| (a - b).abs() <= 1e-3 * a.abs().max(1.0));
    if !matches {
        return Err(LoadError::Unsupported(
            "rope_freqs.weight does not match Llama 3.1 scaling (low 1, high 4)".into(),
        ));
    }
    Ok(Some(scaling))
}

/// The per-frequency divisor Llama 3.1 scaling applies (1 = unchanged).
pub(crate) fn llama3_freq_divisors(s: &RopeScaling, theta: f32, head_dim: usize) -> Vec<f32> {
    let low_wavelen = s.original_max_position_embeddings as f32 / s.low_freq_factor;
    let high_wavelen = s.original_max_position_embeddings as f32 / s.high_freq_factor;
    (0..head_dim / 2)
        .map(|i| {
            let freq = theta.powf(-((2 * i) as f32) / head_dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                s.factor
            } else {
                let smooth = (s.original_max_position_embeddings as f32 / wavelen
                    - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                1.0 / ((1.0 - smooth) / s.factor + smooth)
            }
        })
        .collect()
}

struct GgufSource<'a> {
    file: &'a GgufFile,
    config: &'a ModelConfig,
}

impl TensorSource for GgufSource<'_> {
    fn name(&self, slot: Slot) -> String {
        let layer = |l: usize, s: &str| format!("blk.{l}.{s}");
        match slot {
            Slot::Embed => "token_embd.weight".into(),
            Slot::FinalNorm => "output_norm.weight".into(),
            Slot::LmHead => "output.weight".into(),
            Slot::Layer(l, s) => layer(
                l,
                match s {
                    LayerSlot::AttnNorm => "attn_norm.weight",
                    LayerSlot::Wq => "attn_q.weight",
                    LayerSlot::Wk => "attn_k.weight",
                    LayerSlot::Wv => "attn_v.weight",
                    LayerSlot::Wo => "attn_output.weight",
                    LayerSlot::Bq => "attn_q.bias",
                    LayerSlot::Bk => "attn_k.bias",
                    LayerSlot::Bv => "attn_v.bias",
                    LayerSlot::FfnNorm => "ffn_norm.weight",
                    LayerSlot::Gate => "ffn_gate.weight",
                    LayerSlot::Up => "ffn_up.weight",
                    LayerSlot::Down => "ffn_down.weight",
                },
            ),
        }
    }

    fn load(&self, slot: Slot) -> Result<Option<Tensor>, LoadError> {
        let Some(tensor) = self.file.dequantize(&self.name(slot))? else {
            return Ok(None);
        };
        if !rows_are_permuted(&self.config.architecture) {
            return Ok(Some(tensor));
        }
        let heads = match slot {
            Slot::Layer(_, LayerSlot::Wq | LayerSlot::Bq) => self.config.num_heads,
            Slot::Layer(_, LayerSlot::Wk | LayerSlot::Bk) => self.config.num_kv_heads,
            _ => return Ok(Some(tensor)),
        };
        unpermute_rotary_rows(&tensor, heads).map(Some)
    }
}
