//! An optional precision probe for the CPU backend: rounds values to a 16-bit float at named
//! points of the forward pass, so the error a 16-bit device backend pays at each point can be
//! measured on the CPU against the exact f32 pass (issue 4's bf16 study).
//!
//! The backend only consults a plan when one is set; without one the forward pass is the
//! exact f32 reference, bit for bit.
//!
//! One run is one draw of rounding noise: which values happen to round up or down. A plan's
//! `realization` (0 = plain round-to-nearest) draws others for the activations: at each
//! activation point, values are scaled by a factor in [1.06, 1.94) before rounding and
//! unscaled after, which keeps the relative error bound of the format but changes which values
//! round which way. Weights always round to nearest: a device rounds them once, at load, just
//! so, while its activations round differently from this emulation (accumulation order).

/// What a value is rounded to at one point (round to nearest even, as the GPU's `cvt.rn`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Left as computed.
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// `x` rounded to this precision and widened back to f32.
    #[inline]
    pub fn round(self, x: f32) -> f32 {
        match self {
            Precision::F32 => x,
            Precision::Bf16 => half::bf16::from_f32(x).to_f32(),
            Precision::F16 => half::f16::from_f32(x).to_f32(),
        }
    }

    /// Rounds every value in place; a no-op for [`Precision::F32`].
    pub fn round_all(self, values: &mut [f32]) {
        if self != Precision::F32 {
            values.iter_mut().for_each(|v| *v = self.round(*v));
        }
    }
}

/// The places in the forward pass where a 16-bit backend stores a value in 16 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoundingPoint {
    /// The token embedding table, as read by the lookup.
    EmbedWeights,
    /// Q/K/V, output, gate/up and down projection matrices (norm weights and biases stay f32,
    /// as on the GPU).
    LayerWeights,
    /// The output projection (for a tied model: the embedding table as the logits read it).
    LmHeadWeights,
    /// The attention and MLP RMSNorm outputs (the inputs of the QKV and gate/up products).
    NormOutput,
    /// Q after bias and rotary embedding.
    Query,
    /// K (after rotary) and V as stored in the KV cache.
    KeyValue,
    /// The unnormalised softmax weights fed to P·V (the normaliser stays exact).
    AttentionProbs,
    /// The attention output (the input of the output projection).
    AttentionOutput,
    /// The output projection's result, before it is added to the residual stream.
    OProjOutput,
    GateUpOutput,
    /// silu(gate)·up (the input of the down projection).
    SwigluOutput,
    /// The down projection's result, before it is added to the residual stream.
    DownOutput,
    /// The final RMSNorm output (the input of the logits product).
    FinalNormOutput,
    Logits,
}

impl RoundingPoint {
    pub const ALL: [RoundingPoint; 14] = [
        RoundingPoint::EmbedWeights,
        RoundingPoint::LayerWeights,
        RoundingPoint::LmHeadWeights,
        RoundingPoint::NormOutput,
        RoundingPoint::Query,
        RoundingPoint::KeyValue,
        RoundingPoint::AttentionProbs,
        RoundingPoint::AttentionOutput,
        RoundingPoint::OProjOutput,
        RoundingPoint::GateUpOutput,
        RoundingPoint::SwigluOutput,
        RoundingPoint::DownOutput,
        RoundingPoint::FinalNormOutput,
        RoundingPoint::Logits,
    ];

    /// The three weight points (the spec keeps every weight matrix in bf16).
    pub const WEIGHTS: [RoundingPoint; 3] = [
        RoundingPoint::EmbedWeights,
        RoundingPoint::LayerWeights,
        RoundingPoint::LmHeadWeights,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RoundingPoint::EmbedWeights => "embed_w",
            RoundingPoint::LayerWeights => "layer_w",
            RoundingPoint::LmHeadWeights => "lm_head_w",
            RoundingPoint::NormOutput => "norm_out",
            RoundingPoint::Query => "q",
            RoundingPoint::KeyValue => "kv",
            RoundingPoint::AttentionProbs => "probs",
            RoundingPoint::AttentionOutput => "attn_out",
            RoundingPoint::OProjOutput => "o_proj_out",
            RoundingPoint::GateUpOutput => "gate_up_out",
            RoundingPoint::SwigluOutput => "swiglu_out",
            RoundingPoint::DownOutput => "down_out",
            RoundingPoint::FinalNormOutput => "final_norm_out",
            RoundingPoint::Logits => "logits",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How one point rounds: to `precision`, after scaling by `scale` (unscaled afterwards).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Rounder {
    pub precision: Precision,
    pub scale: f32,
}

impl Rounder {
    /// Leaves values as they are.
    pub const EXACT: Rounder = Rounder {
        precision: Precision::F32,
        scale: 1.0,
    };

    pub fn round_all(self, values: &mut [f32]) {
        if self.precision == Precision::F32 || self.scale == 1.0 {
            self.precision.round_all(values);
            return;
        }
        let inverse = 1.0 / self.scale;
        values
            .iter_mut()
            .for_each(|v| *v = self.precision.round(*v * self.scale) * inverse);
    }

    pub fn is_exact(self) -> bool {
        self.precision == Precision::F32
    }
}

/// A precision for every [`RoundingPoint`]; the default leaves everything f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundingPlan {
    precision: [Precision; RoundingPoint::ALL.len()],
    realization: u32,
}

impl RoundingPlan {
    /// Every point rounded to `precision`.
    pub fn all(precision: Precision) -> Self {
        Self {
            precision: [precision; RoundingPoint::ALL.len()],
            realization: 0,
        }
    }

    /// This plan with `point` set to `precision`.
    pub fn with(mut self, point: RoundingPoint, precision: Precision) -> Self {
        self.precision[point.index()] = precision;
        self
    }

    /// This plan with every point of `points` set to `precision`.
    pub fn with_all(self, points: &[RoundingPoint], precision: Precision) -> Self {
        points
            .iter()
            .fold(self, |plan, &point| plan.with(point, precision))
    }

    pub fn at(&self, point: RoundingPoint) -> Precision {
        self.precision[point.index()]
    }

    /// This plan with another draw of rounding noise (0: plain round-to-nearest).
    pub fn with_realization(mut self, realization: u32) -> Self {
        self.realization = realization;
        self
    }

    pub fn realization(&self) -> u32 {
        self.realization
    }

    pub(super) fn rounder(&self, point: RoundingPoint) -> Rounder {
        let scale = if self.realization == 0 || RoundingPoint::WEIGHTS.contains(&point) {
            1.0
        } else {
            let bits = mix((u64::from(self.realization) << 8) | point.index() as u64);
            // Away from 1 and 2 (a power of two rounds exactly as 1 does).
            1.0625 + 0.875 * (bits >> 40) as f32 / (1u64 << 24) as f32
        };
        Rounder {
            precision: self.at(point),
            scale,
        }
    }

    /// The points this plan rounds, with their precision, in forward-pass order.
    pub fn rounded(&self) -> impl Iterator<Item = (RoundingPoint, Precision)> + '_ {
        RoundingPoint::ALL
            .iter()
            .map(|&p| (p, self.at(p)))
            .filter(|&(_, precision)| precision != Precision::F32)
    }
}

/// SplitMix64's finaliser: a well-spread hash of `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_and_f16_round_to_nearest_even() {
        let bf16_ulp = 2f32.powi(-7);
        // Halfway between 1 and 1 + ulp: ties go to the even mantissa (1.0).
        assert_eq!(Precision::Bf16.round(1.0 + bf16_ulp / 2.0), 1.0);
        // Halfway between 1 + ulp (odd) and 1 + 2 ulp (even): up.
        assert_eq!(
            Precision::Bf16.round(1.0 + 1.5 * bf16_ulp),
            1.0 + 2.0 * bf16_ulp
        );
        // Just past halfway: up.
        assert_eq!(
            Precision::Bf16.round(1.0 + bf16_ulp / 2.0 + 2f32.powi(-20)),
            1.0 + bf16_ulp
        );
        let f16_ulp = 2f32.powi(-10);
        assert_eq!(Precision::F16.round(1.0 + 0.75 * f16_ulp), 1.0 + f16_ulp);
        assert_eq!(Precision::F16.round(1.0e5), f32::INFINITY);
        let x = 1.234_567_9_f32;
        assert_eq!(Precision::F32.round(x), x);
        // Unit roundoff: half an ulp is at most 2^-8 of |v| for bf16 (8 significant bits),
        // 2^-11 for f16 (11 bits).
        for precision in [Precision::Bf16, Precision::F16] {
            let bound = if precision == Precision::Bf16 {
                2f32.powi(-8)
            } else {
                2f32.powi(-11)
            };
            for i in 1..2000 {
                let v = i as f32 * 0.013_7 - 7.0;
                let r = precision.round(v);
                assert!((r - v).abs() <= bound * v.abs(), "{precision:?} {v} -> {r}");
                assert_eq!(precision.round(r), r, "rounding is idempotent");
            }
        }
    }

    #[test]
    fn other_realizations_round_other_values_within_the_same_bound() {
        let plan = RoundingPlan::default().with(RoundingPoint::KeyValue, Precision::Bf16);
        assert_eq!(plan.rounder(RoundingPoint::KeyValue).scale, 1.0);
        let values: Vec<f32> = (1..4000).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let round = |realization: u32| {
            let mut v = values.clone();
            plan.with_realization(realization)
                .rounder(RoundingPoint::KeyValue)
                .round_all(&mut v);
            v
        };
        let plain = round(0);
        let mut plain_again = values.clone();
        Precision::Bf16.round_all(&mut plain_again);
        assert_eq!(
            plain, plain_again,
            "realization 0 is plain round-to-nearest"
        );
        let (first, second) = (round(1), round(2));
        for draw in [&first, &second] {
            let changed = draw.iter().zip(&plain).filter(|(a, b)| a != b).count();
            assert!(changed > values.len() / 4, "only {changed} values differ");
            for (r, v) in draw.iter().zip(&values) {
                assert!(
                    (r - v).abs() <= 2f32.powi(-8) * v.abs() * 1.000_1,
                    "{v} -> {r}"
                );
            }
        }
        assert_ne!(first, second);
        assert_eq!(round(1), first, "a realization is reproducible");
        // An exact point stays exact whatever the realization.
        let mut untouched = values.clone();
        plan.with_realization(3)
            .rounder(RoundingPoint::Logits)
            .round_all(&mut untouched);
        assert_eq!(untouched, values);
        let weights = plan.with(RoundingPoint::LayerWeights, Precision::Bf16);
        assert_eq!(
            weights
                .with_realization(5)
                .rounder(RoundingPoint::LayerWeights)
                .scale,
            1.0,
            "weights always round to nearest"
        );
    }

    #[test]
    fn plans_record_one_precision_per_point() {
        let plan = RoundingPlan::default()
            .with_all(&RoundingPoint::WEIGHTS, Precision::Bf16)
            .with(RoundingPoint::AttentionProbs, Precision::F16);
        assert_eq!(plan.at(RoundingPoint::LayerWeights), Precision::Bf16);
        assert_eq!(plan.at(RoundingPoint::AttentionProbs), Precision::F16);
        assert_eq!(plan.at(RoundingPoint::Logits), Precision::F32);
        assert_eq!(plan.rounded().count(), 4);
        assert_eq!(RoundingPlan::default().rounded().count(), 0);
        let mut values = [1.0 + 2f32.powi(-9), 2.0];
        plan.at(RoundingPoint::Logits).round_all(&mut values);
        assert_eq!(values[0], 1.0 + 2f32.powi(-9), "f32 points are left alone");
        plan.at(RoundingPoint::LayerWeights).round_all(&mut values);
        assert_eq!(values, [1.0, 2.0]);
    }
}
