//! Turns one logits row into the next token: penalties, temperature, top-k, top-p, min-p,
//! greedy decoding, and OpenAI-style logprobs.
//!
//! Randomness is a `ChaCha20Rng` keyed by `(seed, absolute position of the sampled token)`, so
//! a request resumed on another worker with the same prompt, generated tokens and seed samples
//! exactly what the original would have.

mod penalties;
mod truncation;

use std::borrow::Cow;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::request::{SamplingParams, TokenLogprobs, TopLogprob};

pub use penalties::apply_penalties;

/// The most alternatives a request may ask for per token (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Temperatures below this are treated as greedy: dividing by them overflows the exponent.
const GREEDY_TEMPERATURE: f32 = 1e-5;

#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprobs: Option<TokenLogprobs>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    #[error("the logits row is empty")]
    EmptyLogits,
    #[error("the logits contain NaN or +inf")]
    NonFiniteLogits,
    #[error("every token has a logit of -inf")]
    NoCandidates,
}

/// Checks that `params` make sense before a request is admitted.
pub fn validate_params(params: &SamplingParams) -> Result<(), String> {
    let in_range = |name: &str, value: f32, lo: f32, hi: f32| {
        if value.is_finite() && value >= lo && value <= hi {
            Ok(())
        } else {
            Err(format!("{name} must be in [{lo}, {hi}], got {value}"))
        }
    };
    in_range("temperature", params.temperature, 0.0, 100.0)?;
    in_range("min_p", params.min_p, 0.0, 1.0)?;
    in_range("frequency_penalty", params.frequency_penalty, -2.0, 2.0)?;
    in_range("presence_penalty", params.presence_penalty, -2.0, 2.0)?;
    if !(params.top_p.is_finite() && params.top_p > 0.0 && params.top_p <= 1.0) {
        return Err(format!("top_p must be in (0, 1], got {}", params.top_p));
    }
    if !(params.repetition_penalty.is_finite() && params.repetition_penalty > 0.0) {
        return Err(format!(
            "repetition_penalty must be > 0, got {}",
            params.repetition_penalty
        ));
    }
    if params.max_tokens == 0 {
        return Err("max_tokens must be at least 1".into());
    }
    if let Some(n) = params.logprobs {
        if n > MAX_TOP_LOGPROBS {
            return Err(format!(
                "logprobs must be at most {MAX_TOP_LOGPROBS}, got {n}"
            ));
        }
    }
    Ok(())
}

/// The random stream for the token at `position` (prompt length + output index).
pub fn rng_for(seed: u64, position: usize) -> ChaCha20Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(position as u64).to_le_bytes());
    ChaCha20Rng::from_seed(key)
}

/// Samples the token following `prompt ++ output`.
pub fn sample(
    logits: &[f32],
    params: &SamplingParams,
    prompt: &[u32],
    output: &[u32],
) -> Result<Sampled, SampleError> {
    if logits.is_empty() {
        return Err(SampleError::EmptyLogits);
    }
    if logits.iter().any(|l| l.is_nan() || *l == f32::INFINITY) {
        return Err(SampleError::NonFiniteLogits);
    }
    let processed: Cow<[f32]> = if penalties::any(params) {
        let mut penalised = logits.to_vec();
        apply_penalties(&mut penalised, params, prompt, output);
        Cow::Owned(penalised)
    } else {
        Cow::Borrowed(logits)
    };
    let max = processed.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return Err(SampleError::NoCandidates);
    }
    let token = if params.temperature < GREEDY_TEMPERATURE {
        argmax(&processed)
    } else {
        let position = prompt.len() + output.len();
        let candidates = truncation::candidates(&processed, max, params);
        let total: f64 = candidates.iter().map(|c| c.weight).sum();
        let target = rng_for(params.seed, position).gen::<f64>() * total;
        let mut cumulative = 0.0;
        let mut chosen = candidates.last().map(|c| c.token).unwrap_or(0);
        for candidate in &candidates {
            cumulative += candidate.weight;
            if target < cumulative {
                chosen = candidate.token;
                break;
            }
        }
        chosen
    };
    let logprobs = params
        .logprobs
        .map(|top_n| logprobs_of(&processed, max, token, top_n));
    Ok(Sampled { token, logprobs })
}

/// Highest logit, lowest id on ties.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (id, &value) in logits.iter().enumerate() {
        if value > logits[best] {
            best = id;
        }
    }
    best as u32
}

/// Logprobs of the model's distribution after penalties, before temperature and truncation
/// (what OpenAI and vLLM report).
fn logprobs_of(processed: &[f32], max: f32, token: u32, top_n: usize) -> TokenLogprobs {
    let sum: f64 = processed.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let log_norm = max as f64 + sum.ln();
    let logprob = |id: usize| (processed[id] as f64 - log_norm) as f32;
    let mut ids: Vec<usize> = (0..processed.len()).collect();
    let by_rank = |a: &usize, b: &usize| processed[*b].total_cmp(&processed[*a]).then(a.cmp(b));
    let top_n = top_n.min(ids.len());
    if top_n > 0 && top_n < ids.len() {
        ids.select_nth_unstable_by(top_n - 1, by_rank);
    }
    ids.truncate(top_n);
    ids.sort_by(by_rank);
    TokenLogprobs {
        logprob: logprob(token as usize),
        top: ids
            .into_iter()
            .map(|id| TopLogprob {
                token: id as u32,
                logprob: logprob(id),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
