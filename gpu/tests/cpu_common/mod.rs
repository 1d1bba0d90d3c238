//! Helpers shared by the CPU backend tests: building small backends and driving sequences.

#![allow(dead_code)]

use stator_gpu::backend::cpu::CpuBackend;
use stator_gpu::backend::{Backend, Logits, SeqStep};
use stator_gpu::config::ModelConfig;
use stator_gpu::presets::preset;
use stator_gpu::random_weights::random_weights;

pub const BLOCK_SIZE: usize = 4;

/// The "tiny" preset with Qwen2-style biases and Llama 3.1 rope scaling switched on, so every
/// code path of the forward pass runs.
pub fn tiny_config() -> ModelConfig {
    let mut config = preset("tiny").expect("tiny preset");
    config.attention_bias = true;
    config.rope_scaling = Some(stator_gpu::config::RopeScaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 64,
    });
    config
}

pub fn tiny_backend(num_blocks: usize) -> CpuBackend {
    let config = tiny_config();
    let weights = random_weights(&config, 42);
    CpuBackend::new(config, weights, num_blocks, BLOCK_SIZE).expect("tiny backend")
}

/// Deterministic pseudo-random token ids below `vocab`.
pub fn tokens(len: usize, salt: u32, vocab: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ salt.wrapping_mul(40_503)) % vocab as u32)
        .collect()
}

/// Runs one step for one sequence and returns its logits row.
pub fn step(backend: &mut CpuBackend, tokens: &[u32], start_pos: usize, table: &[u32]) -> Vec<f32> {
    let logits = backend
        .forward(&[SeqStep {
            tokens,
            start_pos,
            block_table: table,
            want_logits: true,
        }])
        .expect("forward");
    logits.row(0).to_vec()
}

pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// max |a - b| / max |b|: the error of a logits row relative to its largest reference value.
pub fn relative_error(actual: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(actual.len(), reference.len());
    let scale = reference
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let diff = actual
        .iter()
        .zip(reference)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

pub fn rows(logits: &Logits) -> Vec<Vec<f32>> {
    (0..logits.rows()).map(|i| logits.row(i).to_vec()).collect()
}

/// Standard base64 (with padding) to little-endian f32s.
pub fn decode_f32_base64(text: &str) -> Vec<f32> {
    let sextet = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a') as u32 + 26,
            b'0'..=b'9' => (c - b'0') as u32 + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("invalid base64 byte {c}"),
        }
    };
    let mut bytes = Vec::with_capacity(text.len() / 4 * 3);
    for quad in text.as_bytes().chunks(4) {
        let data: Vec<u8> = quad.iter().copied().filter(|&c| c != b'=').collect();
        let bits = data
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &c)| acc | sextet(c) << (18 - 6 * i));
        bytes.extend(bits.to_be_bytes()[1..data.len()].iter());
    }
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}
