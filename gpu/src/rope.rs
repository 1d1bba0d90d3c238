//! Rotary inverse frequencies (f64, with Llama 3.1 scaling folded in), shared by every
//! backend so they agree to the bit; each backend forms the angles itself, in f64.

use crate::config::{ModelConfig, RopeScaling};

/// One inverse frequency per rotated pair (`head_dim / 2`).
pub fn inverse_frequencies(config: &ModelConfig) -> Vec<f64> {
    let theta = config.rope_theta as f64;
    (0..config.head_dim / 2)
        .map(|i| {
            let base = theta.powf(-((2 * i) as f64) / config.head_dim as f64);
            config
                .rope_scaling
                .as_ref()
                .map_or(base, |s| llama3_scaled(base, s))
        })
        .collect()
}

/// Llama 3.1: keep high frequencies, divide low ones by `factor`, blend linearly in between.
fn llama3_scaled(inv_freq: f64, s: &RopeScaling) -> f64 {
    let original = s.original_max_position_embeddings as f64;
    let wavelen = std::f64::consts::TAU / inv_freq;
    if wavelen < original / s.high_freq_factor as f64 {
        inv_freq
    } else if wavelen > original / s.low_freq_factor as f64 {
        inv_freq / s.factor as f64
    } else {
        let smooth = (original / wavelen - s.low_freq_factor as f64)
            / (s.high_freq_factor as f64 - s.low_freq_factor as f64);
        (1.0 - smooth) * inv_freq / s.factor as f64 + smooth * inv_freq
    }
}
