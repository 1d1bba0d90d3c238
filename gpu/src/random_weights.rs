//! Deterministic random weights for any [`ModelConfig`]: benchmarks and tests run the real
//! architecture without a checkpoint.
//!
//! Scaled like a fresh Hugging Face init: matrices and biases ~ N(0, 0.02), norms = 1. Every
//! tensor is filled in fixed-size chunks, each from its own generator seeded by
//! `(seed, tensor index, chunk index)`, so filling is parallel and the result does not depend on
//! the number of threads.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::config::ModelConfig;
use crate::weights::{LayerWeights, ModelWeights, Tensor};

const INIT_STD: f32 = 0.02;
const CHUNK: usize = 1 << 16;

/// Builds weights for `config`; the same `(config, seed)` always gives the same weights.
pub fn random_weights(config: &ModelConfig, seed: u64) -> ModelWeights {
    let mut next_tensor_id = 0u64;
    let mut normal = |shape: Vec<usize>| {
        next_tensor_id += 1;
        normal_tensor(shape, seed, next_tensor_id)
    };
    let h = config.hidden_size;
    let q_dim = config.num_heads * config.head_dim;
    let kv_dim = config.num_kv_heads * config.head_dim;
    let inter = config.intermediate_size;

    let embed = normal(vec![config.vocab_size, h]);
    let layers = (0..config.num_layers)
        .map(|_| {
            let mut bias = |n: usize| config.attention_bias.then(|| normal(vec![n]));
            let (bq, bk, bv) = (bias(q_dim), bias(kv_dim), bias(kv_dim));
            LayerWeights {
                attn_norm: ones(h),
                wq: normal(vec![q_dim, h]),
                wk: normal(vec![kv_dim, h]),
                wv: normal(vec![kv_dim, h]),
                wo: normal(vec![h, q_dim]),
                bq,
                bk,
                bv,
                ffn_norm: ones(h),
                w_gate: normal(vec![inter, h]),
                w_up: normal(vec![inter, h]),
                w_down: normal(vec![h, inter]),
            }
        })
        .collect();
    let lm_head = (!config.tie_word_embeddings).then(|| normal(vec![config.vocab_size, h]));
    ModelWeights {
        embed,
        layers,
        final_norm: ones(h),
        lm_head,
    }
}

fn ones(n: usize) -> Tensor {
    Tensor::new(vec![n], vec![1.0; n])
}

fn normal_tensor(shape: Vec<usize>, seed: u64, tensor_id: u64) -> Tensor {
    let numel = shape.iter().product();
    let mut data = vec![0f32; numel];
    data.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk_index, chunk)| {
            let stream = (tensor_id << 32) ^ chunk_index as u64;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(stream);
            fill_normal(&mut rng, chunk, INIT_STD);
        });
    Tensor::new(shape, data)
}

/// Box–Muller: two independent normals per pair of uniforms.
fn fill_normal(rng: &mut impl Rng, out: &mut [f32], std: f32) {
    for pair in out.chunks_mut(2) {
        // `1 - u` keeps the log argument in (0, 1].
        let u1: f64 = 1.0 - rng.gen::<f64>();
        let u2: f64 = rng.gen::<f64>();
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        pair[0] = (radius * angle.cos()) as f32 * std;
        if let Some(second) = pair.get_mut(1) {
            *second = (radius * angle.sin()) as f32 * std;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::preset;

    #[test]
    fn same_seed_gives_identical_weights_and_other_seeds_differ() {
        let config = preset("tiny").unwrap();
        let a = random_weights(&config, 7);
        let b = random_weights(&config, 7);
        let c = random_weights(&config, 8);
        assert_eq!(a.embed, b.embed);
        assert_eq!(a.layers[1].w_down, b.layers[1].w_down);
        assert_ne!(a.embed, c.embed);
        // Distinct tensors must not repeat each other's stream.
        assert_ne!(a.layers[0].w_gate.data, a.layers[0].w_up.data);
    }

    #[test]
    fn shapes_follow_the_config_including_biases_and_untied_head() {
        let mut config = preset("tiny").unwrap();
        config.attention_bias = true;
        config.tie_word_embeddings = false;
        let w = random_weights(&config, 1);
        let q_dim = config.num_heads * config.head_dim;
        let kv_dim = config.num_kv_heads * config.head_dim;
        assert_eq!(w.layers.len(), config.num_layers);
        assert_eq!(w.layers[0].wq.shape, vec![q_dim, config.hidden_size]);
        assert_eq!(w.layers[0].wk.shape, vec![kv_dim, config.hidden_size]);
        assert_eq!(w.layers[0].bv.as_ref().unwrap().shape, vec![kv_dim]);
        assert_eq!(
            w.layers[0].w_down.shape,
            vec![config.hidden_size, config.intermediate_size]
        );
        assert_eq!(
            w.lm_head.unwrap().shape,
            vec![config.vocab_size, config.hidden_size]
        );
        assert!(w.final_norm.data.iter().all(|&x| x == 1.0));
    }

    #[test]
    fn matrix_entries_have_the_init_scale() {
        let config = preset("tiny").unwrap();
        let data = &random_weights(&config, 3).embed.data;
        let n = data.len() as f64;
        let mean = data.iter().map(|&x| x as f64).sum::<f64>() / n;
        let std = (data.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 0.002, "mean {mean}");
        assert!((std - 0.02).abs() < 0.001, "std {std}");
    }
}
