//! Rotary position embedding in the Hugging Face "rotate_half" convention: dimension `i` of a
//! head is rotated together with dimension `i + head_dim / 2`.

use crate::config::ModelConfig;

/// Per-pair inverse frequencies of a model, with Llama 3.1 scaling folded in.
#[derive(Clone, Debug)]
pub(super) struct RopeFrequencies {
    inv_freq: Vec<f64>,
}

impl RopeFrequencies {
    pub(super) fn new(config: &ModelConfig) -> Self {
        Self {
            inv_freq: crate::rope::inverse_frequencies(config),
        }
    }

    pub(super) fn half_dim(&self) -> usize {
        self.inv_freq.len()
    }

    /// Fills `cos` and `sin` (`positions.len() * half_dim` each) for the given positions.
    /// Angles are formed in f64 so long positions keep their precision.
    pub(super) fn fill_tables(&self, positions: &[usize], cos: &mut [f32], sin: &mut [f32]) {
        let half = self.half_dim();
        for (t, &pos) in positions.iter().enumerate() {
            let row = t * half..(t + 1) * half;
            for ((c, s), &f) in cos[row.clone()]
                .iter_mut()
                .zip(&mut sin[row])
                .zip(&self.inv_freq)
            {
                let angle = pos as f64 * f;
                *c = angle.cos() as f32;
                *s = angle.sin() as f32;
            }
        }
    }
}

/// Rotates every head of `row` (`num_heads * 2 * cos.len()` values) in place.
pub(super) fn rotate_heads(row: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    for head in row.chunks_exact_mut(2 * half) {
        let (first, second) = head.split_at_mut(half);
        for i in 0..half {
            let (a, b) = (first[i], second[i]);
            first[i] = a * cos[i] - b * sin[i];
            second[i] = b * cos[i] + a * sin[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::preset;

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let plain = RopeFrequencies::new(&ModelConfig {
            rope_scaling: None,
            ..preset("llama-3.1-8b").unwrap()
        });
        let scaled = RopeFrequencies::new(&preset("llama-3.1-8b").unwrap());
        assert_eq!(scaled.inv_freq[0], plain.inv_freq[0]);
        let last = plain.inv_freq.len() - 1;
        assert!((scaled.inv_freq[last] - plain.inv_freq[last] / 8.0).abs() < 1e-15);
        // Blended band: strictly between the two.
        let mid = (0..=last)
            .find(|&i| {
                scaled.inv_freq[i] != plain.inv_freq[i]
                    && scaled.inv_freq[i] != plain.inv_freq[i] / 8.0
            })
            .expect("a blended frequency");
        assert!(
            scaled.inv_freq[mid] < plain.inv_freq[mid]
                && scaled.inv_freq[mid] > plain.inv_freq[mid] / 8.0
        );
    }

    #[test]
    fn rotation_pairs_dimension_i_with_i_plus_half() {
        let mut head = [1.0, 0.0, 0.0, 0.0]; // half = 2: pairs (0,2) and (1,3)
        let quarter_turn = std::f32::consts::FRAC_PI_2;
        rotate_heads(
            &mut head,
            &[quarter_turn.cos(), 1.0],
            &[quarter_turn.sin(), 0.0],
        );
        assert!(
            head[0].abs() < 1e-6 && (head[2] - 1.0).abs() < 1e-6,
            "{head:?}"
        );
        assert_eq!(head[1], 0.0);
    }
}
