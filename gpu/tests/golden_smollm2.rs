//! Golden test: the CPU backend on the real SmolLM2-135M GGUF against the independent NumPy
//! reference (tests/reference/reference.py, float64).
//!
//! For every fixture prompt the greedy continuation must match token for token, and logits
//! must agree within 1e-3 *row-relative* error: `max_i |rust_i - ref_i| / max_i |ref_i|`,
//! over the full row at step 0 and over the reference's top-256 ids at later steps (the
//! denominator is then the full row's max |logit|, stored in the fixture).
//!
//! Skips, with a notice, only when the model file is absent (tools/fetch-model.sh installs it).

mod cpu_common;

use std::path::PathBuf;

use cpu_common::{argmax, decode_f32_base64, relative_error, step};
use serde::Deserialize;
use stator_gpu::backend::cpu::CpuBackend;
use stator_gpu::backend::Backend;
use stator_gpu::loader::{default_model_path, load_model};

const MAX_RELATIVE_ERROR: f32 = 1e-3;
const BLOCK_SIZE: usize = 16;
/// Prefill runs in chunks of this many tokens, as the scheduler would split a long prompt.
const PREFILL_CHUNK: usize = 64;

#[derive(Deserialize)]
struct Fixture {
    num_generated: usize,
    prompts: Vec<Prompt>,
}

#[derive(Deserialize)]
struct Prompt {
    text: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    top2_margins: Vec<f32>,
    full_logits: Vec<FullLogits>,
    top_logits: Vec<TopLogits>,
}

#[derive(Deserialize)]
struct FullLogits {
    step: usize,
    f32_le_base64: String,
}

#[derive(Deserialize)]
struct TopLogits {
    step: usize,
    ids: Vec<usize>,
    values: Vec<f32>,
    max_abs: f32,
}

fn fixture() -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/reference/fixtures/smollm2_greedy.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture JSON")
}

#[test]
fn greedy_decoding_and_logits_match_the_numpy_reference() {
    let model_path = default_model_path();
    if !model_path.exists() {
        eprintln!(
            "SKIPPED: {} not found (run tools/fetch-model.sh)",
            model_path.display()
        );
        return;
    }
    let fixture = fixture();
    let model = load_model(&model_path).expect("load SmolLM2 GGUF");
    let longest = fixture
        .prompts
        .iter()
        .map(|p| p.prompt_ids.len())
        .max()
        .unwrap_or(0)
        + fixture.num_generated;
    let table: Vec<u32> = (0..longest.div_ceil(BLOCK_SIZE) as u32).collect();
    let mut backend =
        CpuBackend::new(model.config, model.weights, table.len(), BLOCK_SIZE).expect("backend");
    assert!(fixture.num_generated >= 32);

    for (index, prompt) in fixture.prompts.iter().enumerate() {
        let label = format!(
            "prompt {index} ({:?})",
            prompt.text.chars().take(40).collect::<String>()
        );
        let mut rows = Vec::with_capacity(fixture.num_generated);
        let mut logits = prefill(&mut backend, &prompt.prompt_ids, &table);
        let mut generated = Vec::with_capacity(fixture.num_generated);
        for k in 0..fixture.num_generated {
            let token = argmax(&logits);
            let expected = prompt.greedy_ids[k];
            assert_eq!(
                token, expected,
                "{label}: step {k} chose {token}, reference {expected} (reference top-2 margin {}); so far {generated:?}",
                prompt.top2_margins[k]
            );
            generated.push(token);
            rows.push(logits);
            logits = match k + 1 < fixture.num_generated {
                true => step(&mut backend, &[token], prompt.prompt_ids.len() + k, &table),
                false => Vec::new(),
            };
        }

        for full in &prompt.full_logits {
            let reference = decode_f32_base64(&full.f32_le_base64);
            let err = relative_error(&rows[full.step], &reference);
            eprintln!(
                "{label}: step {} full-row relative error {err:.2e}",
                full.step
            );
            assert!(
                err <= MAX_RELATIVE_ERROR,
                "{label}: step {} full-row relative error {err}",
                full.step
            );
        }
        for top in &prompt.top_logits {
            let row = &rows[top.step];
            let diff = top
                .ids
                .iter()
                .zip(&top.values)
                .fold(0f32, |m, (&id, &v)| m.max((row[id] - v).abs()));
            let err = diff / top.max_abs;
            eprintln!(
                "{label}: step {} top-256 relative error {err:.2e}",
                top.step
            );
            assert!(
                err <= MAX_RELATIVE_ERROR,
                "{label}: step {} top-256 relative error {err}",
                top.step
            );
        }
    }
}

fn prefill(backend: &mut CpuBackend, prompt: &[u32], table: &[u32]) -> Vec<f32> {
    let mut logits = Vec::new();
    for (i, chunk) in prompt.chunks(PREFILL_CHUNK).enumerate() {
        logits = step(backend, chunk, i * PREFILL_CHUNK, table);
    }
    assert_eq!(logits.len(), backend.config().vocab_size);
    logits
}
