//! The CPU backend against the NumPy float64 reference on a tiny random model that has what
//! the SmolLM2 golden test lacks: Q/K/V biases, Llama 3.1 rope scaling, an untied output head
//! (fixture: tests/reference/fixtures/tiny_bias_llama3.json, from tiny_reference.py).

mod cpu_common;

use std::collections::HashMap;
use std::path::PathBuf;

use cpu_common::{decode_f32_base64, relative_error};
use serde::Deserialize;
use stator_gpu::backend::cpu::CpuBackend;
use stator_gpu::backend::{Backend, SeqStep};
use stator_gpu::config::ModelConfig;
use stator_gpu::weights::{LayerWeights, ModelWeights, Tensor};

/// Row-relative error bound (`max |a - b| / max |b|`); f32 against f64 on a 2-layer model.
const MAX_RELATIVE_ERROR: f32 = 1e-5;
const BLOCK_SIZE: usize = 4;

#[derive(Deserialize)]
struct Fixture {
    config: ModelConfig,
    weights: HashMap<String, StoredTensor>,
    prompt_ids: Vec<u32>,
    decode_ids: Vec<u32>,
    prefill_logits: String,
    decode_logits: String,
}

#[derive(Deserialize)]
struct StoredTensor {
    shape: Vec<usize>,
    f32_le_base64: String,
}

fn load() -> (ModelConfig, ModelWeights, Fixture) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/reference/fixtures/tiny_bias_llama3.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let fixture: Fixture = serde_json::from_str(&text).expect("fixture JSON");
    let tensor = |name: &str| {
        let stored = fixture
            .weights
            .get(name)
            .unwrap_or_else(|| panic!("fixture lacks {name}"));
        Tensor::new(
            stored.shape.clone(),
            decode_f32_base64(&stored.f32_le_base64),
        )
    };
    let layers = (0..fixture.config.num_layers)
        .map(|i| {
            let t = |part: &str| tensor(&format!("layers.{i}.{part}"));
            LayerWeights {
                attn_norm: t("attn_norm"),
                wq: t("wq"),
                wk: t("wk"),
                wv: t("wv"),
                wo: t("wo"),
                bq: Some(t("bq")),
                bk: Some(t("bk")),
                bv: Some(t("bv")),
                ffn_norm: t("ffn_norm"),
                w_gate: t("w_gate"),
                w_up: t("w_up"),
                w_down: t("w_down"),
            }
        })
        .collect();
    let weights = ModelWeights {
        embed: tensor("embed"),
        layers,
        final_norm: tensor("final_norm"),
        lm_head: Some(tensor("lm_head")),
    };
    (fixture.config.clone(), weights, fixture)
}

#[test]
fn biases_rope_scaling_and_untied_head_match_the_numpy_reference() {
    let (config, weights, fixture) = load();
    assert!(config.attention_bias && config.rope_scaling.is_some() && !config.tie_word_embeddings);
    let vocab = config.vocab_size;
    let total = fixture.prompt_ids.len() + fixture.decode_ids.len();
    // Blocks deliberately out of order.
    let table: Vec<u32> = (0..total.div_ceil(BLOCK_SIZE) as u32).rev().collect();
    let mut backend = CpuBackend::new(config, weights, table.len(), BLOCK_SIZE).expect("backend");

    // Every prompt position's logits, one forward per position prefix, so each row is checked.
    let expected_prefill = decode_f32_base64(&fixture.prefill_logits);
    let prompt = &fixture.prompt_ids;
    for (pos, expected) in expected_prefill.chunks_exact(vocab).enumerate() {
        let logits = backend
            .forward(&[SeqStep {
                tokens: &prompt[pos..pos + 1],
                start_pos: pos,
                block_table: &table,
                want_logits: true,
            }])
            .expect("prefill step");
        let err = relative_error(logits.row(0), expected);
        assert!(
            err <= MAX_RELATIVE_ERROR,
            "prompt position {pos}: relative error {err}"
        );
    }

    let expected_decode = decode_f32_base64(&fixture.decode_logits);
    for (i, (&token, expected)) in fixture
        .decode_ids
        .iter()
        .zip(expected_decode.chunks_exact(vocab))
        .enumerate()
    {
        let logits = backend
            .forward(&[SeqStep {
                tokens: &[token],
                start_pos: prompt.len() + i,
                block_table: &table,
                want_logits: true,
            }])
            .expect("decode step");
        let err = relative_error(logits.row(0), expected);
        assert!(
            err <= MAX_RELATIVE_ERROR,
            "decode step {i}: relative error {err}"
        );
    }
}

#[test]
fn one_shot_prefill_matches_the_reference_at_the_last_prompt_position() {
    let (config, weights, fixture) = load();
    let vocab = config.vocab_size;
    let table: Vec<u32> = (0..fixture.prompt_ids.len().div_ceil(BLOCK_SIZE) as u32).collect();
    let mut backend = CpuBackend::new(config, weights, table.len(), BLOCK_SIZE).expect("backend");
    let logits = backend
        .forward(&[SeqStep {
            tokens: &fixture.prompt_ids,
            start_pos: 0,
            block_table: &table,
            want_logits: true,
        }])
        .expect("prefill");
    let expected = decode_f32_base64(&fixture.prefill_logits);
    let last = &expected[expected.len() - vocab..];
    let err = relative_error(logits.row(0), last);
    assert!(err <= MAX_RELATIVE_ERROR, "relative error {err}");
}
