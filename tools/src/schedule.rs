//! Arrival-time generators for open-loop load: pure, seeded, unit-tested.
//!
//! An arrival schedule is a sequence of offsets from the start of the run. The runner sends each
//! request at its offset whatever happened to earlier requests (no coordinated omission) and
//! records how late it actually went out.

use std::time::Duration;

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// How gaps between arrivals are drawn at a given mean rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrival {
    /// Evenly spaced: one request every `1/rate` seconds.
    Constant,
    /// Exponentially distributed gaps (a Poisson process) with mean `1/rate`.
    Poisson,
}

/// An endless stream of arrival offsets at `rate` requests per second.
#[derive(Debug, Clone)]
pub struct RateSchedule {
    arrival: Arrival,
    rate: f64,
    rng: ChaCha8Rng,
    sent: u64,
    next_offset_s: f64,
}

impl RateSchedule {
    /// `rate` must be finite and positive; the CLI validates it before getting here.
    pub fn new(arrival: Arrival, rate: f64, seed: u64) -> Self {
        debug_assert!(rate.is_finite() && rate > 0.0);
        Self {
            arrival,
            rate,
            rng: ChaCha8Rng::seed_from_u64(seed),
            sent: 0,
            next_offset_s: 0.0,
        }
    }
}

impl Iterator for RateSchedule {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let offset_s = match self.arrival {
            // Computed from the index, not accumulated, so long runs do not drift.
            Arrival::Constant => self.sent as f64 / self.rate,
            Arrival::Poisson => {
                let current = self.next_offset_s;
                // 1 - u lies in (0, 1], so the logarithm is finite.
                let u: f64 = self.rng.gen();
                self.next_offset_s += -(1.0 - u).ln() / self.rate;
                current
            }
        };
        self.sent += 1;
        Some(Duration::from_secs_f64(offset_s))
    }
}

/// Offsets of recorded arrivals replayed with a time scale: `scale` 0.5 replays twice as fast,
/// 2.0 twice as slow. Offsets are relative to the first recorded arrival.
pub fn scaled_offsets(recorded_offsets_s: &[f64], scale: f64) -> Vec<Duration> {
    let first = recorded_offsets_s.first().copied().unwrap_or(0.0);
    recorded_offsets_s
        .iter()
        .map(|offset| Duration::from_secs_f64(((offset - first) * scale).max(0.0)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(offsets: &[Duration]) -> Vec<f64> {
        offsets.iter().map(Duration::as_secs_f64).collect()
    }

    #[test]
    fn constant_rate_is_evenly_spaced_from_zero() {
        let offsets: Vec<_> = RateSchedule::new(Arrival::Constant, 4.0, 1)
            .take(5)
            .collect();
        let expected = [0.0, 0.25, 0.5, 0.75, 1.0];
        for (got, want) in secs(&offsets).iter().zip(expected) {
            assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        }
    }

    #[test]
    fn poisson_mean_gap_matches_rate_and_gaps_vary() {
        let rate = 10.0;
        let offsets = secs(
            &RateSchedule::new(Arrival::Poisson, rate, 7)
                .take(20_001)
                .collect::<Vec<_>>(),
        );
        let gaps: Vec<f64> = offsets.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        assert!((mean - 0.1).abs() < 0.005, "mean gap {mean}");
        // An exponential distribution has standard deviation equal to its mean.
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        assert!((var.sqrt() - 0.1).abs() < 0.01, "std dev {}", var.sqrt());
        assert!(gaps.iter().all(|g| *g >= 0.0));
    }

    #[test]
    fn poisson_is_reproducible_by_seed() {
        let a: Vec<_> = RateSchedule::new(Arrival::Poisson, 3.0, 42)
            .take(50)
            .collect();
        let b: Vec<_> = RateSchedule::new(Arrival::Poisson, 3.0, 42)
            .take(50)
            .collect();
        let c: Vec<_> = RateSchedule::new(Arrival::Poisson, 3.0, 43)
            .take(50)
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn trace_offsets_start_at_zero_and_scale() {
        let recorded = [100.0, 100.5, 102.0];
        assert_eq!(secs(&scaled_offsets(&recorded, 1.0)), vec![0.0, 0.5, 2.0]);
        assert_eq!(secs(&scaled_offsets(&recorded, 0.5)), vec![0.0, 0.25, 1.0]);
        assert!(scaled_offsets(&[], 1.0).is_empty());
    }
}
