//! Repetition, frequency and presence penalties (vLLM / OpenAI semantics).

use std::collections::{HashMap, HashSet};

use crate::request::SamplingParams;

/// Whether `params` change the logits at all.
pub(super) fn any(params: &SamplingParams) -> bool {
    params.repetition_penalty != 1.0
        || params.frequency_penalty != 0.0
        || params.presence_penalty != 0.0
}

/// Applies the penalties in place. Repetition (multiplicative) covers prompt and output tokens;
/// frequency and presence (additive) cover output tokens only. Ids outside the row are ignored.
pub fn apply_penalties(
    logits: &mut [f32],
    params: &SamplingParams,
    prompt: &[u32],
    output: &[u32],
) {
    if params.repetition_penalty != 1.0 {
        let seen: HashSet<u32> = prompt.iter().chain(output).copied().collect();
        for token in seen {
            if let Some(logit) = logits.get_mut(token as usize) {
                // Dividing a positive logit and multiplying a negative one both make it less likely.
                if *logit > 0.0 {
                    *logit /= params.repetition_penalty;
                } else {
                    *logit *= params.repetition_penalty;
                }
            }
        }
    }
    if params.frequency_penalty != 0.0 || params.presence_penalty != 0.0 {
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &token in output {
            *counts.entry(token).or_default() += 1;
        }
        for (token, count) in counts {
            if let Some(logit) = logits.get_mut(token as usize) {
                *logit -= params.frequency_penalty * count as f32 + params.presence_penalty;
            }
        }
    }
}
