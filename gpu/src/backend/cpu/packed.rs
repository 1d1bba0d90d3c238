//! Weights rearranged once at load for the CPU forward pass: Q/K/V fused into one matrix and
//! gate/up into another, so each step runs one product per group instead of three or two.

use super::rounding::{RoundingPlan, RoundingPoint};
use crate::backend::BackendError;
use crate::config::ModelConfig;
use crate::weights::{ModelWeights, Tensor};

pub(super) struct PackedLayer {
    pub attn_norm: Vec<f32>,
    /// `[q_dim + 2 * kv_dim, hidden]`: Q rows, then K, then V.
    pub qkv: Vec<f32>,
    /// `[q_dim + 2 * kv_dim]` when the model has attention biases.
    pub qkv_bias: Option<Vec<f32>>,
    /// `[hidden, q_dim]`
    pub wo: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    /// `[2 * intermediate, hidden]`: gate rows, then up rows.
    pub gate_up: Vec<f32>,
    /// `[hidden, intermediate]`
    pub down: Vec<f32>,
}

pub(super) struct PackedWeights {
    /// `[vocab, hidden]`
    pub embed: Vec<f32>,
    pub layers: Vec<PackedLayer>,
    pub final_norm: Vec<f32>,
    /// `[vocab, hidden]`; `None` when tied to `embed`.
    pub lm_head: Option<Vec<f32>>,
}

impl PackedWeights {
    pub(super) fn output_matrix(&self) -> &[f32] {
        self.lm_head.as_deref().unwrap_or(&self.embed)
    }

    /// Rounds the matrices as `plan` says (norm weights and biases stay f32, as a 16-bit
    /// device keeps them). A tied output head rounded differently from the embedding gets
    /// its own copy.
    pub(super) fn round(&mut self, plan: &RoundingPlan) {
        let embed = plan.rounder(RoundingPoint::EmbedWeights);
        let head = plan.rounder(RoundingPoint::LmHeadWeights);
        if self.lm_head.is_none() && embed != head {
            self.lm_head = Some(self.embed.clone());
        }
        embed.round_all(&mut self.embed);
        if let Some(lm_head) = &mut self.lm_head {
            head.round_all(lm_head);
        }
        let matrices = plan.rounder(RoundingPoint::LayerWeights);
        for layer in &mut self.layers {
            for matrix in [
                &mut layer.qkv,
                &mut layer.wo,
                &mut layer.gate_up,
                &mut layer.down,
            ] {
                matrices.round_all(matrix);
            }
        }
    }

    /// Checks every shape against `config` and repacks, consuming `weights` layer by layer so
    /// peak memory stays near one copy of the model.
    pub(super) fn pack(config: &ModelConfig, weights: ModelWeights) -> Result<Self, BackendError> {
        let h = config.hidden_size;
        let q_dim = config.num_heads * config.head_dim;
        let kv_dim = config.num_kv_heads * config.head_dim;
        let inter = config.intermediate_size;
        if weights.layers.len() != config.num_layers {
            return Err(mismatch(format!(
                "{} layers, config says {}",
                weights.layers.len(),
                config.num_layers
            )));
        }
        if weights.lm_head.is_none() != config.tie_word_embeddings {
            return Err(mismatch(format!(
                "lm_head present = {}, but tie_word_embeddings = {}",
                weights.lm_head.is_some(),
                config.tie_word_embeddings
            )));
        }
        let embed = take(weights.embed, &[config.vocab_size, h], "embed")?;
        let final_norm = take(weights.final_norm, &[h], "final_norm")?;
        let lm_head = weights
            .lm_head
            .map(|t| take(t, &[config.vocab_size, h], "lm_head"))
            .transpose()?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for (i, layer) in weights.layers.into_iter().enumerate() {
            let name = |part: &str| format!("layer {i} {part}");
            let biases = [layer.bq, layer.bk, layer.bv];
            let qkv_bias = match (config.attention_bias, biases) {
                (true, [Some(bq), Some(bk), Some(bv)]) => Some(concat([
                    take(bq, &[q_dim], &name("bq"))?,
                    take(bk, &[kv_dim], &name("bk"))?,
                    take(bv, &[kv_dim], &name("bv"))?,
                ])),
                (false, [None, None, None]) => None,
                _ => {
                    return Err(mismatch(format!(
                        "{}: biases disagree with attention_bias",
                        name("attention")
                    )))
                }
            };
            layers.push(PackedLayer {
                attn_norm: take(layer.attn_norm, &[h], &name("attn_norm"))?,
                qkv: concat([
                    take(layer.wq, &[q_dim, h], &name("wq"))?,
                    take(layer.wk, &[kv_dim, h], &name("wk"))?,
                    take(layer.wv, &[kv_dim, h], &name("wv"))?,
                ]),
                qkv_bias,
                wo: take(layer.wo, &[h, q_dim], &name("wo"))?,
                ffn_norm: take(layer.ffn_norm, &[h], &name("ffn_norm"))?,
                gate_up: concat([
                    take(layer.w_gate, &[inter, h], &name("w_gate"))?,
                    take(layer.w_up, &[inter, h], &name("w_up"))?,
                ]),
                down: take(layer.w_down, &[h, inter], &name("w_down"))?,
            });
        }
        Ok(Self {
            embed,
            layers,
            final_norm,
            lm_head,
        })
    }
}

fn mismatch(what: String) -> BackendError {
    // The trait has no model-error variant; construction failures are reported as device
    // errors carrying the precise reason.
    BackendError::Device(format!("weights do not match the model config: {what}"))
}

fn take(tensor: Tensor, shape: &[usize], name: &str) -> Result<Vec<f32>, BackendError> {
    if tensor.shape != shape || tensor.data.len() != shape.iter().product::<usize>() {
        return Err(mismatch(format!(
            "{name} has shape {:?}, expected {shape:?}",
            tensor.shape
        )));
    }
    Ok(tensor.data)
}

fn concat<const N: usize>(parts: [Vec<f32>; N]) -> Vec<f32> {
    let mut all = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for part in parts {
        all.extend_from_slice(&part);
    }
    all
}
