//! Model hyper-parameters shared by every loader and backend.

use serde::{Deserialize, Serialize};

/// The architecture of a Llama-family decoder (Llama 2/3, SmolLM2, Qwen2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Short architecture tag ("llama", "qwen2").
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    /// Llama 3.1-style frequency scaling, when the model uses it.
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    /// Output projection shares the token embedding matrix.
    pub tie_word_embeddings: bool,
    /// Q/K/V projections carry biases (Qwen2).
    pub attention_bias: bool,
}

/// Llama 3.1 "llama3" rope scaling parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

impl ModelConfig {
    /// Number of parameters (embedding counted once when tied).
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let kv = self.num_kv_heads * self.head_dim;
        let q = self.num_heads * self.head_dim;
        let attn = h * q + 2 * h * kv + q * h + if self.attention_bias { q + 2 * kv } else { 0 };
        let mlp = 3 * h * self.intermediate_size;
        let per_layer = attn + mlp + 2 * h;
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + self.num_layers * per_layer + h
    }
}
