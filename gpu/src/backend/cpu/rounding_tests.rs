//! The rounding probe against the plain backend on the tiny preset (tied embeddings, GQA).

use super::{CpuBackend, Precision, RoundingPlan, RoundingPoint};
use crate::backend::{Backend, SeqStep};
use crate::config::ModelConfig;
use crate::presets::preset;
use crate::random_weights::random_weights;
use crate::weights::{ModelWeights, Tensor};

const BLOCK_SIZE: usize = 4;
const BLOCKS: usize = 8;

fn tiny() -> (ModelConfig, ModelWeights) {
    let config = preset("tiny").expect("tiny preset");
    let weights = random_weights(&config, 7);
    (config, weights)
}

/// Logits of an 11-token prefill (three blocks, so attention spans blocks) and of one decode
/// step after it, as raw bits.
fn run(mut backend: CpuBackend) -> Vec<u32> {
    let vocab = backend.config().vocab_size as u32;
    let prompt: Vec<u32> = (0..11).map(|i| (i * 37 + 5) % vocab).collect();
    let table: Vec<u32> = (0..BLOCKS as u32).collect();
    let mut bits = Vec::new();
    for (tokens, start_pos) in [(&prompt[..], 0), (&[3u32][..], prompt.len())] {
        let logits = backend
            .forward(&[SeqStep {
                tokens,
                start_pos,
                block_table: &table,
                want_logits: true,
            }])
            .expect("forward");
        bits.extend(logits.row(0).iter().map(|v| v.to_bits()));
    }
    bits
}

fn plain(config: ModelConfig, weights: ModelWeights) -> Vec<u32> {
    run(CpuBackend::new(config, weights, BLOCKS, BLOCK_SIZE).expect("backend"))
}

fn probed(config: ModelConfig, weights: ModelWeights, plan: RoundingPlan) -> Vec<u32> {
    let backend =
        CpuBackend::with_rounding(config, weights, BLOCKS, BLOCK_SIZE, plan).expect("backend");
    run(backend)
}

fn bf16(tensor: &Tensor) -> Tensor {
    let mut rounded = tensor.clone();
    Precision::Bf16.round_all(&mut rounded.data);
    rounded
}

fn relative_l2(a: &[u32], b: &[u32]) -> f64 {
    let (mut diff, mut norm) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f32::from_bits(x) as f64, f32::from_bits(y) as f64);
        diff += (x - y) * (x - y);
        norm += y * y;
    }
    (diff / norm).sqrt()
}

#[test]
fn a_plan_that_rounds_nothing_gives_bit_identical_logits() {
    let (config, weights) = tiny();
    let exact = plain(config.clone(), weights.clone());
    assert_eq!(
        probed(config.clone(), weights.clone(), RoundingPlan::default()),
        exact
    );
    // Explicit f32 everywhere is the same plan.
    assert_eq!(
        probed(config, weights, RoundingPlan::all(Precision::F32)),
        exact
    );
}

#[test]
fn weight_points_equal_a_model_built_from_rounded_weights() {
    let (config, weights) = tiny();
    assert!(config.tie_word_embeddings);
    let untied = ModelConfig {
        tie_word_embeddings: false,
        ..config.clone()
    };
    // Only the tied head rounded: the embedding lookup must stay exact.
    let mut head_only = weights.clone();
    head_only.lm_head = Some(bf16(&weights.embed));
    assert_eq!(
        probed(
            config.clone(),
            weights.clone(),
            RoundingPlan::default().with(RoundingPoint::LmHeadWeights, Precision::Bf16)
        ),
        plain(untied.clone(), head_only)
    );
    // Embedding and layer matrices rounded, head exact; norms stay f32.
    let mut body = weights.clone();
    body.lm_head = Some(weights.embed.clone());
    body.embed = bf16(&weights.embed);
    for layer in &mut body.layers {
        for matrix in [
            &mut layer.wq,
            &mut layer.wk,
            &mut layer.wv,
            &mut layer.wo,
            &mut layer.w_gate,
            &mut layer.w_up,
            &mut layer.w_down,
        ] {
            *matrix = bf16(matrix);
        }
    }
    let plan = RoundingPlan::default()
        .with(RoundingPoint::EmbedWeights, Precision::Bf16)
        .with(RoundingPoint::LayerWeights, Precision::Bf16);
    assert_eq!(probed(config, weights, plan), plain(untied, body));
}

#[test]
fn rounded_logits_are_the_exact_logits_rounded() {
    let (config, weights) = tiny();
    let exact = plain(config.clone(), weights.clone());
    let plan = RoundingPlan::default().with(RoundingPoint::Logits, Precision::Bf16);
    let rounded: Vec<u32> = exact
        .iter()
        .map(|&b| Precision::Bf16.round(f32::from_bits(b)).to_bits())
        .collect();
    assert_ne!(rounded, exact);
    assert_eq!(probed(config, weights, plan), rounded);
}

#[test]
fn every_activation_point_perturbs_the_logits_by_a_16_bit_sized_error() {
    let (config, weights) = tiny();
    let exact = plain(config.clone(), weights.clone());
    let activations = RoundingPoint::ALL
        .iter()
        .filter(|p| !RoundingPoint::WEIGHTS.contains(p));
    for &point in activations {
        for (precision, bound) in [(Precision::Bf16, 2e-2), (Precision::F16, 3e-3)] {
            let plan = RoundingPlan::default().with(point, precision);
            let error = relative_l2(&probed(config.clone(), weights.clone(), plan), &exact);
            assert!(
                error > 0.0 && error < bound,
                "{} at {}: relative error {error:e}",
                precision.name(),
                point.name()
            );
        }
    }
}
