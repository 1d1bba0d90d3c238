//! Known model architectures by name, and the `--random-weights` spec parser.
//!
//! Presets carry the real hyper-parameters of the published checkpoints, so a random-weights
//! run costs the same compute and memory as the real model (benchmarks, planner profiles)
//! without downloading it.

use std::path::Path;

use serde::Deserialize;

use crate::config::{ModelConfig, RopeScaling};

/// Names accepted by [`preset`], for help texts and error messages.
pub const PRESET_NAMES: &[&str] = &[
    "smollm2-135m",
    "llama-3.2-1b",
    "llama-3.2-3b",
    "llama-3.1-8b",
    "qwen2.5-0.5b",
    "qwen2.5-7b",
    "tiny",
];

/// The configuration of a known model, by (case-insensitive) name.
///
/// `"tiny"` is not a published model: it is a 2-layer, 64-wide Llama with GQA and a 256-token
/// vocabulary, small enough for unit tests to run a forward pass in microseconds.
pub fn preset(name: &str) -> Option<ModelConfig> {
    let config = match name.to_ascii_lowercase().as_str() {
        "smollm2-135m" | "smollm2-135m-instruct" => ModelConfig {
            architecture: "llama".into(),
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_layers: 30,
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 100_000.0,
            rope_scaling: None,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            attention_bias: false,
        },
        "llama-3.2-1b" | "llama-3.2-1b-instruct" => ModelConfig {
            architecture: "llama".into(),
            vocab_size: 128_256,
            hidden_size: 2048,
            intermediate_size: 8192,
            num_layers: 16,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: Some(llama3_rope_scaling(32.0)),
            max_position_embeddings: 131_072,
            tie_word_embeddings: true,
            attention_bias: false,
        },
        "llama-3.2-3b" | "llama-3.2-3b-instruct" => ModelConfig {
            architecture: "llama".into(),
            vocab_size: 128_256,
            hidden_size: 3072,
            intermediate_size: 8192,
            num_layers: 28,
            num_heads: 24,
            num_kv_heads: 8,
            head_dim: 128,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: Some(llama3_rope_scaling(32.0)),
            max_position_embeddings: 131_072,
            tie_word_embeddings: true,
            attention_bias: false,
        },
        "llama-3.1-8b" | "llama-3.1-8b-instruct" => ModelConfig {
            architecture: "llama".into(),
            vocab_size: 128_256,
            hidden_size: 4096,
            intermediate_size: 14_336,
            num_layers: 32,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 128,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: Some(llama3_rope_scaling(8.0)),
            max_position_embeddings: 131_072,
            tie_word_embeddings: false,
            attention_bias: false,
        },
        "qwen2.5-0.5b" | "qwen2.5-0.5b-instruct" => ModelConfig {
            architecture: "qwen2".into(),
            vocab_size: 151_936,
            hidden_size: 896,
            intermediate_size: 4864,
            num_layers: 24,
            num_heads: 14,
            num_kv_heads: 2,
            head_dim: 64,
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            rope_scaling: None,
            max_position_embeddings: 32_768,
            tie_word_embeddings: true,
            attention_bias: true,
        },
        "qwen2.5-7b" | "qwen2.5-7b-instruct" => ModelConfig {
            architecture: "qwen2".into(),
            vocab_size: 152_064,
            hidden_size: 3584,
            intermediate_size: 18_944,
            num_layers: 28,
            num_heads: 28,
            num_kv_heads: 4,
            head_dim: 128,
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            rope_scaling: None,
            max_position_embeddings: 32_768,
            tie_word_embeddings: false,
            attention_bias: true,
        },
        "tiny" => ModelConfig {
            architecture: "llama".into(),
            vocab_size: 256,
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 2048,
            tie_word_embeddings: true,
            attention_bias: false,
        },
        _ => return None,
    };
    Some(config)
}

/// Llama 3.1 / 3.2 published their scaling with the same band edges; only the factor differs.
fn llama3_rope_scaling(factor: f32) -> RopeScaling {
    RopeScaling {
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PresetError {
    #[error(
        "'{spec}' is neither a known preset ({known}) nor an existing config.json file",
        known = PRESET_NAMES.join(", ")
    )]
    Unknown { spec: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid Hugging Face config.json: {reason}")]
    BadConfig { path: String, reason: String },
}

/// Resolves a `--random-weights` argument: a preset name, or the path of a Hugging Face
/// `config.json` (or of a directory holding one).
pub fn parse_random_weights_spec(spec: &str) -> Result<ModelConfig, PresetError> {
    if let Some(config) = preset(spec) {
        return Ok(config);
    }
    let mut path = Path::new(spec).to_path_buf();
    if path.is_dir() {
        path = path.join("config.json");
    }
    if !path.is_file() {
        return Err(PresetError::Unknown {
            spec: spec.to_string(),
        });
    }
    let text = std::fs::read_to_string(&path).map_err(|source| PresetError::Io {
        path: path.display().to_string(),
        source,
    })?;
    config_from_hf_json(&text).map_err(|reason| PresetError::BadConfig {
        path: path.display().to_string(),
        reason,
    })
}

/// The subset of a Hugging Face `config.json` that a Llama/Qwen2 decoder needs.
#[derive(Deserialize)]
struct HfConfig {
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default)]
    rms_norm_eps: Option<f32>,
    #[serde(default)]
    rope_theta: Option<f32>,
    #[serde(default)]
    rope_scaling: Option<HfRopeScaling>,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    attention_bias: Option<bool>,
}

#[derive(Deserialize)]
struct HfRopeScaling {
    #[serde(default, alias = "type")]
    rope_type: Option<String>,
    #[serde(default)]
    factor: Option<f32>,
    #[serde(default)]
    low_freq_factor: Option<f32>,
    #[serde(default)]
    high_freq_factor: Option<f32>,
    #[serde(default)]
    original_max_position_embeddings: Option<usize>,
}

fn config_from_hf_json(text: &str) -> Result<ModelConfig, String> {
    let hf: HfConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let architecture = match hf.model_type.as_deref() {
        None | Some("llama") | Some("mistral") => "llama",
        Some("qwen2") => "qwen2",
        Some(other) => return Err(format!("unsupported model_type '{other}' (llama, qwen2)")),
    };
    if hf.num_attention_heads == 0 || hf.hidden_size == 0 || hf.num_hidden_layers == 0 {
        return Err(
            "hidden_size, num_hidden_layers and num_attention_heads must be positive".into(),
        );
    }
    let num_kv_heads = hf.num_key_value_heads.unwrap_or(hf.num_attention_heads);
    if num_kv_heads == 0 || !hf.num_attention_heads.is_multiple_of(num_kv_heads) {
        return Err(format!(
            "num_attention_heads ({}) must be a multiple of num_key_value_heads ({num_kv_heads})",
            hf.num_attention_heads
        ));
    }
    let head_dim = hf
        .head_dim
        .unwrap_or(hf.hidden_size / hf.num_attention_heads);
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(format!(
            "head_dim {head_dim} must be even and positive (rotary halves)"
        ));
    }
    let rope_scaling = match hf.rope_scaling {
        Some(s) if s.rope_type.as_deref() == Some("llama3") => Some(RopeScaling {
            factor: s.factor.ok_or("llama3 rope_scaling without factor")?,
            low_freq_factor: s.low_freq_factor.unwrap_or(1.0),
            high_freq_factor: s.high_freq_factor.unwrap_or(4.0),
            original_max_position_embeddings: s.original_max_position_embeddings.unwrap_or(8192),
        }),
        Some(s) => {
            return Err(format!(
                "unsupported rope_scaling type '{}' (only llama3)",
                s.rope_type.unwrap_or_default()
            ))
        }
        None => None,
    };
    Ok(ModelConfig {
        architecture: architecture.into(),
        vocab_size: hf.vocab_size,
        hidden_size: hf.hidden_size,
        intermediate_size: hf.intermediate_size,
        num_layers: hf.num_hidden_layers,
        num_heads: hf.num_attention_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
        rope_theta: hf.rope_theta.unwrap_or(10_000.0),
        rope_scaling,
        max_position_embeddings: hf.max_position_embeddings.unwrap_or(4096),
        tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
        attention_bias: hf.attention_bias.unwrap_or(architecture == "qwen2"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_preset_resolves_and_has_consistent_shapes() {
        for name in PRESET_NAMES {
            let c = preset(name).unwrap_or_else(|| panic!("preset {name} missing"));
            assert_eq!(c.num_heads % c.num_kv_heads, 0, "{name}: GQA grouping");
            assert_eq!(c.head_dim % 2, 0, "{name}: rotary needs even head_dim");
        }
    }

    #[test]
    fn smollm2_parameter_count_matches_the_published_135m() {
        let c = preset("SmolLM2-135M").unwrap();
        let params = c.num_parameters();
        assert!((134_000_000..136_000_000).contains(&params), "{params}");
    }

    #[test]
    fn llama_8b_preset_has_about_8_billion_parameters_and_rope_scaling() {
        let c = preset("llama-3.1-8b").unwrap();
        assert!((8_000_000_000..8_100_000_000).contains(&c.num_parameters()));
        assert_eq!(c.rope_scaling.unwrap().factor, 8.0);
    }

    #[test]
    fn spec_accepts_a_hugging_face_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"model_type":"llama","vocab_size":128256,"hidden_size":2048,
               "intermediate_size":8192,"num_hidden_layers":16,"num_attention_heads":32,
               "num_key_value_heads":8,"rms_norm_eps":1e-5,"rope_theta":500000.0,
               "rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
               "original_max_position_embeddings":8192,"rope_type":"llama3"},
               "max_position_embeddings":131072,"tie_word_embeddings":true}"#,
        )
        .unwrap();
        let from_file = parse_random_weights_spec(path.to_str().unwrap()).unwrap();
        assert_eq!(from_file, preset("llama-3.2-1b").unwrap());
        let from_dir = parse_random_weights_spec(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(from_dir, from_file);
    }

    #[test]
    fn spec_rejects_unknown_names_and_broken_configs_with_a_clear_message() {
        let err = parse_random_weights_spec("gpt-17").unwrap_err().to_string();
        assert!(err.contains("smollm2-135m"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"model_type":"bert","vocab_size":1}"#).unwrap();
        let err = parse_random_weights_spec(path.to_str().unwrap()).unwrap_err();
        assert!(matches!(err, PresetError::BadConfig { .. }), "{err}");
    }
}
