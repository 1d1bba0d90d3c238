//! Temperature, top-k, top-p and min-p: the candidate set a random draw picks from.

use std::cmp::Ordering;

use crate::request::SamplingParams;

/// Below this the top-p mass counts as reached: probabilities computed from a softmax are off
/// by a few ulps, and a cut at exactly `top_p` must not keep an extra token.
const TOP_P_TOLERANCE: f64 = 1e-6;

/// How many of the best tokens top-p ranks first. Nuclei are usually far smaller than the
/// vocabulary, so ranking a growing prefix beats sorting 100k+ logits per token.
const NUCLEUS_FIRST_RANKING: usize = 64;

pub(super) struct Candidate {
    pub token: u32,
    /// Unnormalised probability after temperature.
    pub weight: f64,
}

/// Best first; equal weights by lowest id, so the order is total and deterministic.
fn by_rank(a: &Candidate, b: &Candidate) -> Ordering {
    b.weight.total_cmp(&a.weight).then(a.token.cmp(&b.token))
}

/// The tokens that may be drawn, with their weights, in a deterministic order (rank order when
/// truncating, id order otherwise). `max` is the largest logit (finite).
pub(super) fn candidates(logits: &[f32], max: f32, params: &SamplingParams) -> Vec<Candidate> {
    let temperature = params.temperature as f64;
    let mut candidates: Vec<Candidate> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(id, &l)| Candidate {
            token: id as u32,
            weight: ((l - max) as f64 / temperature).exp(),
        })
        .collect();
    if params.top_k > 0 && params.top_k < candidates.len() {
        keep_best(&mut candidates, params.top_k);
    }
    if params.top_p < 1.0 {
        keep_nucleus(&mut candidates, params.top_p as f64);
    }
    if params.min_p > 0.0 {
        // The top token has weight 1 (its logit is `max`), so the threshold is min_p itself.
        let threshold = params.min_p as f64;
        candidates.retain(|c| c.weight >= threshold);
    }
    candidates
}

/// Keeps the `k` best candidates, best first.
fn keep_best(candidates: &mut Vec<Candidate>, k: usize) {
    if k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, by_rank);
        candidates.truncate(k);
    }
    candidates.sort_by(by_rank);
}

/// Keeps the smallest best-first prefix whose mass reaches `top_p` of the total, best first.
fn keep_nucleus(candidates: &mut Vec<Candidate>, top_p: f64) {
    let total: f64 = candidates.iter().map(|c| c.weight).sum();
    let target = (top_p - TOP_P_TOLERANCE) * total;
    let mut ranked = NUCLEUS_FIRST_RANKING.min(candidates.len());
    loop {
        if ranked < candidates.len() {
            candidates.select_nth_unstable_by(ranked - 1, by_rank);
        }
        candidates[..ranked].sort_by(by_rank);
        let mut cumulative = 0.0;
        for (i, candidate) in candidates[..ranked].iter().enumerate() {
            cumulative += candidate.weight;
            if cumulative >= target {
                candidates.truncate(i + 1);
                return;
            }
        }
        if ranked == candidates.len() {
            return; // rounding kept the target out of reach: keep everything
        }
        ranked = (ranked * 4).min(candidates.len());
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// The plain definition: sort everything, cut at the mass.
    fn reference(logits: &[f32], params: &SamplingParams) -> Vec<u32> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let t = params.temperature as f64;
        let mut all: Vec<Candidate> = logits
            .iter()
            .enumerate()
            .map(|(id, &l)| Candidate {
                token: id as u32,
                weight: ((l - max) as f64 / t).exp(),
            })
            .collect();
        all.sort_by(by_rank);
        if params.top_k > 0 {
            all.truncate(params.top_k);
        }
        let total: f64 = all.iter().map(|c| c.weight).sum();
        let mut cumulative = 0.0;
        let mut out = Vec::new();
        for c in all {
            if cumulative >= (params.top_p as f64 - TOP_P_TOLERANCE) * total {
                break;
            }
            cumulative += c.weight;
            out.push(c.token);
        }
        out
    }

    #[test]
    fn ranked_prefix_nucleus_equals_the_full_sort() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for case in 0..60 {
            let vocab = rng.gen_range(1..3000);
            // Sharp and flat distributions, so nuclei range from one token to most of them.
            let scale = [0.1f32, 1.0, 8.0][case % 3];
            let logits: Vec<f32> = (0..vocab).map(|_| rng.gen::<f32>() * scale).collect();
            let params = SamplingParams {
                temperature: rng.gen_range(0.3..1.5),
                top_p: rng.gen_range(0.05..1.0),
                top_k: [0, 5, 500][case % 3],
                ..SamplingParams::default()
            };
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let got: Vec<u32> = candidates(&logits, max, &params)
                .iter()
                .map(|c| c.token)
                .collect();
            assert_eq!(got, reference(&logits, &params), "case {case}");
        }
    }
}
