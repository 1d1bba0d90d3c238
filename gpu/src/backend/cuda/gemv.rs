//! Which kernel serves one-row projections (decode batch 1): the original warp-per-row
//! `skinny_gemm_1` or one of the alternatives in `kernels/gemv.cu` (split-K, two rows per warp,
//! persistent streaming). All compute `y[o] (+)= x · w[o]` with f32 accumulation; they differ
//! only in how the work is spread over warps, so results agree to rounding.

use std::fmt;
use std::str::FromStr;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::CudaFunction;

use super::kernels::{Arg, Kernels, SKINNY_WARPS};
use crate::backend::BackendError;

/// Environment variable that picks the default [`GemvVariant`].
pub const GEMV_VARIANT_ENV: &str = "STATOR_GEMV_VARIANT";

/// Elements per warp-wide 16-byte load (32 lanes x 8 values): one "chunk" of a weight row.
const CHUNK: usize = 256;
/// Chunks each warp of `gemv_split_k` loads at once (`GEMV_UNROLL` in gemv.cu).
const SPLIT_K_CHUNKS_PER_WARP: usize = 8;
/// Output rows per warp of `gemv_rows2` (`GEMV_ROWS_PER_WARP` in gemv.cu).
const ROWS_PER_WARP: usize = 2;
/// Resident CTAs per SM the persistent kernel is built for (`GEMV_PERSISTENT_CTAS_PER_SM`).
const PERSISTENT_CTAS_PER_SM: usize = 2;

/// The kernel of one-row projections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GemvVariant {
    /// `skinny_gemm_1`: one warp per output row, 8 loads in flight per lane.
    Baseline,
    /// `gemv_split_k`: up to 8 warps share a row, each issuing its whole slice (at most 8
    /// loads) before the PDL wait; the CTA adds the slices in shared memory. The default: the
    /// fastest on every measured shape (docs/cuda-notes.md, round 4).
    #[default]
    SplitK,
    /// `gemv_rows2`: two rows per warp, 16 loads in flight per lane, x read once for both.
    Rows2,
    /// `gemv_persistent`: two CTAs per SM, each warp streams its rows as one register
    /// double-buffered sequence of loads.
    Persistent,
}

impl GemvVariant {
    pub const ALL: [GemvVariant; 4] = [
        GemvVariant::Baseline,
        GemvVariant::SplitK,
        GemvVariant::Rows2,
        GemvVariant::Persistent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GemvVariant::Baseline => "baseline",
            GemvVariant::SplitK => "split_k",
            GemvVariant::Rows2 => "rows2",
            GemvVariant::Persistent => "persistent",
        }
    }

    pub(crate) fn to_index(self) -> u8 {
        match self {
            GemvVariant::Baseline => 0,
            GemvVariant::SplitK => 1,
            GemvVariant::Rows2 => 2,
            GemvVariant::Persistent => 3,
        }
    }

    pub(crate) fn from_index(index: u8) -> Self {
        Self::ALL
            .get(usize::from(index))
            .copied()
            .unwrap_or_default()
    }

    /// The variant named by `STATOR_GEMV_VARIANT`; the default ([`GemvVariant::SplitK`]) when
    /// it is unset, and (with a warning naming the accepted values) when it names no variant.
    pub fn from_env() -> Self {
        match std::env::var(GEMV_VARIANT_ENV) {
            Err(_) => Self::default(),
            Ok(value) => value.parse().unwrap_or_else(|e: UnknownGemvVariant| {
                tracing::warn!(error = %e, default = %Self::default(), "using the default GEMV");
                Self::default()
            }),
        }
    }
}

impl fmt::Display for GemvVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown GEMV variant {0:?} (expected baseline, split_k, rows2 or persistent)")]
pub struct UnknownGemvVariant(pub String);

impl FromStr for GemvVariant {
    type Err = UnknownGemvVariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|v| v.name() == wanted)
            .ok_or_else(|| UnknownGemvVariant(s.to_string()))
    }
}

/// Warps sharing one output row in `gemv_split_k`: the fewest (a power of two up to
/// `SKINNY_WARPS`) that leave each warp at most one round of loads.
pub fn split_k_splits(inn: usize) -> usize {
    let chunks = inn.div_ceil(CHUNK);
    let mut splits = 1;
    while splits < SKINNY_WARPS && chunks.div_ceil(splits) > SPLIT_K_CHUNKS_PER_WARP {
        splits *= 2;
    }
    splits
}

/// Warps per row (gate and up each) of `gemv_gate_up_swiglu_split_k`: as [`split_k_splits`],
/// at most half a CTA, since a CTA holds a feature's gate and up rows together.
pub fn gate_up_swiglu_splits(inn: usize) -> usize {
    split_k_splits(inn).min(SKINNY_WARPS / 2)
}

/// Widest row the folded RMSNorm stages in shared memory (`NORM_FOLD_MAX_WIDTH` in
/// `kernels/gemv.cu`).
pub const NORM_FOLD_MAX_HIDDEN: usize = 8192;

/// The input row of a split-K projection: a 16-bit vector, or RMSNorm of the f32 residual
/// formed on the fly (docs/cuda-notes.md round 8).
#[derive(Clone, Copy, Debug)]
pub enum GemvInput {
    Plain(CUdeviceptr),
    Normed(NormedInput),
}

/// `x[i] = to_16bit(res[i] * scale * norm_w[i])` with `scale = 1 / sqrt(ss / n + eps)`, `ss`
/// the sum of the `num_partials` per-CTA partial sums of squares that
/// [`Kernels::gemv_split_k_residual_ss`] left at `ss_partials` (added in a fixed order).
#[derive(Clone, Copy, Debug)]
pub struct NormedInput {
    pub res: CUdeviceptr,
    pub norm_w: CUdeviceptr,
    pub ss_partials: CUdeviceptr,
    pub num_partials: usize,
    pub eps: f32,
}

impl From<CUdeviceptr> for GemvInput {
    fn from(x: CUdeviceptr) -> Self {
        GemvInput::Plain(x)
    }
}

impl From<NormedInput> for GemvInput {
    fn from(input: NormedInput) -> Self {
        GemvInput::Normed(input)
    }
}

impl GemvInput {
    /// Whether the kernels can read it as a row of `inn` values: 16-byte aligned, and a
    /// normalised row fits the shared memory it is staged in.
    fn fits(&self, inn: usize) -> bool {
        match self {
            GemvInput::Plain(x) => x.is_multiple_of(16),
            GemvInput::Normed(n) => {
                n.res.is_multiple_of(16)
                    && n.norm_w.is_multiple_of(16)
                    && inn <= NORM_FOLD_MAX_HIDDEN
                    && n.num_partials <= i32::MAX as usize
            }
        }
    }

    /// The kernel's leading arguments after the weights, and which of the two kernels reads it.
    fn args<'f>(
        &self,
        plain: &'f CudaFunction,
        normed: &'f CudaFunction,
    ) -> (&'f CudaFunction, Vec<Arg>) {
        match *self {
            GemvInput::Plain(x) => (plain, vec![Arg::Ptr(x)]),
            GemvInput::Normed(n) => (
                normed,
                vec![
                    Arg::Ptr(n.res),
                    Arg::Ptr(n.norm_w),
                    Arg::Ptr(n.ss_partials),
                    Arg::I32(n.num_partials as i32),
                    Arg::F32(n.eps),
                ],
            ),
        }
    }
}

/// CTAs of [`Kernels::gemv_split_k_residual_ss`] for `[out, inn]`: the number of partial sums
/// of squares it leaves.
pub fn residual_ss_partials(inn: usize, out: usize) -> usize {
    out.div_ceil(SKINNY_WARPS / split_k_splits(inn))
}

/// Where [`Kernels::gemv_qkv_rope`] reads and writes, besides the input row and the weights
/// (device pointers; `bias` 0 when the model has no QKV bias).
#[derive(Clone, Copy, Debug)]
pub struct QkvRope {
    pub bias: CUdeviceptr,
    pub positions: CUdeviceptr,
    pub slots: CUdeviceptr,
    pub inv_freq: CUdeviceptr,
    pub q_out: CUdeviceptr,
    pub cache: CUdeviceptr,
    pub inn: usize,
    pub layer: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub block_size: usize,
}

/// CTAs of the persistent kernel: enough for every row to have a warp, at most the resident
/// CTAs of the whole device.
pub fn persistent_grid(out: usize, num_sms: usize) -> usize {
    out.div_ceil(SKINNY_WARPS)
        .min(PERSISTENT_CTAS_PER_SM * num_sms.max(1))
}

impl Kernels {
    /// `y[out] (+)= x[inn] · w[out, inn]ᵀ` for one row with `variant` (the caller has checked
    /// the shape and alignment as for [`Kernels::skinny_gemm`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn launch_gemv_one_row(
        &self,
        variant: GemvVariant,
        y: CUdeviceptr,
        y_f32: bool,
        x: CUdeviceptr,
        w: CUdeviceptr,
        inn: usize,
        out: usize,
        accumulate: bool,
    ) -> Result<(), BackendError> {
        let threads = (SKINNY_WARPS * 32) as u32;
        let (inn_arg, out_arg) = (Arg::I32(inn as i32), Arg::I32(out as i32));
        let (f32_arg, acc_arg) = (Arg::I32(y_f32 as i32), Arg::I32(accumulate as i32));
        let plain = [
            Arg::Ptr(w),
            Arg::Ptr(x),
            Arg::Ptr(y),
            inn_arg,
            out_arg,
            f32_arg,
            acc_arg,
        ];
        match variant {
            GemvVariant::Baseline => self.launch(
                &self.skinny_gemm[0],
                (out.div_ceil(SKINNY_WARPS) as u32, 1, 1),
                threads,
                &[
                    Arg::Ptr(w),
                    Arg::Ptr(x),
                    Arg::Ptr(y),
                    Arg::I32(1),
                    inn_arg,
                    out_arg,
                    f32_arg,
                    acc_arg,
                ],
            ),
            GemvVariant::SplitK => {
                let splits = split_k_splits(inn);
                let rows_per_cta = SKINNY_WARPS / splits;
                self.launch(
                    &self.gemv_split_k,
                    (out.div_ceil(rows_per_cta) as u32, 1, 1),
                    threads,
                    &[
                        Arg::Ptr(w),
                        Arg::Ptr(x),
                        Arg::Ptr(y),
                        inn_arg,
                        out_arg,
                        Arg::I32(splits as i32),
                        f32_arg,
                        acc_arg,
                    ],
                )
            }
            GemvVariant::Rows2 => self.launch(
                &self.gemv_rows2,
                (out.div_ceil(SKINNY_WARPS * ROWS_PER_WARP) as u32, 1, 1),
                threads,
                &plain,
            ),
            GemvVariant::Persistent => {
                let sms = usize::try_from(self.num_sms()).unwrap_or(1);
                self.launch(
                    &self.gemv_persistent,
                    (persistent_grid(out, sms) as u32, 1, 1),
                    threads,
                    &plain,
                )
            }
        }
    }

    /// The QKV projection of one row (`x[inn] · qkv[out, inn]ᵀ`) with `rope_kv_write` folded
    /// in: rotated Q into `q_out`, rotated K and V into the cache slot `slots[0]` of `layer`,
    /// at position `positions[0]` (device pointers into the step metadata). Bit-identical to the
    /// split-K projection into f32 followed by `rope_kv_write` whenever
    /// [`gate_up_swiglu_splits`] equals [`split_k_splits`] (the same pairing rule). `None` when
    /// the shape or alignment does not suit it.
    pub fn gemv_qkv_rope(
        &self,
        qkv_rope: &QkvRope,
        x: impl Into<GemvInput>,
        w: CUdeviceptr,
    ) -> Option<Result<(), BackendError>> {
        let q = qkv_rope;
        let x = x.into();
        let out = (q.num_heads + 2 * q.num_kv_heads) * self.head_dim;
        if q.inn == 0
            || !q.inn.is_multiple_of(8)
            || !x.fits(q.inn)
            || !w.is_multiple_of(16)
            || q.inn > i32::MAX as usize
            || out > i32::MAX as usize
        {
            return None;
        }
        let splits = gate_up_swiglu_splits(q.inn);
        let pairs_per_cta = SKINNY_WARPS / (2 * splits);
        let (kernel, input) = x.args(
            &self.gemv_qkv_rope_split_k,
            &self.gemv_qkv_rope_split_k_norm,
        );
        Some(
            self.launch(
                kernel,
                ((out / 2).div_ceil(pairs_per_cta) as u32, 1, 1),
                (SKINNY_WARPS * 32) as u32,
                &[
                    &[Arg::Ptr(w)],
                    &input[..],
                    &[
                        Arg::Ptr(q.bias),
                        Arg::Ptr(q.positions),
                        Arg::Ptr(q.slots),
                        Arg::Ptr(q.inv_freq),
                        Arg::Ptr(q.q_out),
                        Arg::Ptr(q.cache),
                        Arg::I32(q.inn as i32),
                        Arg::I32(splits as i32),
                        Arg::I32(q.layer as i32),
                        Arg::I32(q.num_layers as i32),
                        Arg::I32(q.num_heads as i32),
                        Arg::I32(q.num_kv_heads as i32),
                        Arg::I32(q.block_size as i32),
                    ],
                ]
                .concat(),
            ),
        )
    }

    /// `act[inter] = SwiGLU(x[inn] · gate_up[2 inter, inn]ᵀ)` for one row in one split-K
    /// kernel, bit-identical to the split-K gate/up projection into the 16-bit type followed by
    /// the `swiglu` kernel whenever [`gate_up_swiglu_splits`] equals [`split_k_splits`] (hidden
    /// sizes up to 8192). `None` when the shape or alignment does not suit it (the caller runs
    /// the two kernels).
    pub fn gemv_gate_up_swiglu(
        &self,
        act: CUdeviceptr,
        x: impl Into<GemvInput>,
        gate_up: CUdeviceptr,
        inn: usize,
        inter: usize,
    ) -> Option<Result<(), BackendError>> {
        let x = x.into();
        if inn == 0
            || inter == 0
            || !inn.is_multiple_of(8)
            || !x.fits(inn)
            || !gate_up.is_multiple_of(16)
            || inn > i32::MAX as usize
            || 2 * inter > i32::MAX as usize
        {
            return None;
        }
        let splits = gate_up_swiglu_splits(inn);
        let features_per_cta = SKINNY_WARPS / (2 * splits);
        let (kernel, input) = x.args(
            &self.gemv_gate_up_swiglu_split_k,
            &self.gemv_gate_up_swiglu_split_k_norm,
        );
        Some(
            self.launch(
                kernel,
                (inter.div_ceil(features_per_cta) as u32, 1, 1),
                (SKINNY_WARPS * 32) as u32,
                &[
                    &[Arg::Ptr(gate_up)],
                    &input[..],
                    &[
                        Arg::Ptr(act),
                        Arg::I32(inn as i32),
                        Arg::I32(inter as i32),
                        Arg::I32(splits as i32),
                    ],
                ]
                .concat(),
            ),
        )
    }

    /// `y[out] += x · wᵀ` (f32 residual, split-K) leaving one partial sum of squares of the new
    /// `y` per CTA at `ss_partials` ([`residual_ss_partials`] of them). None where the split-K
    /// GEMV cannot serve the shape.
    pub fn gemv_split_k_residual_ss(
        &self,
        y: CUdeviceptr,
        x: CUdeviceptr,
        w: CUdeviceptr,
        inn: usize,
        out: usize,
        ss_partials: CUdeviceptr,
    ) -> Option<Result<(), BackendError>> {
        if !split_k_fits(inn, out, x, w) {
            return None;
        }
        let splits = split_k_splits(inn);
        Some(self.launch(
            &self.gemv_split_k_residual_ss,
            (residual_ss_partials(inn, out) as u32, 1, 1),
            (SKINNY_WARPS * 32) as u32,
            &[
                Arg::Ptr(w),
                Arg::Ptr(x),
                Arg::Ptr(y),
                Arg::I32(inn as i32),
                Arg::I32(out as i32),
                Arg::I32(splits as i32),
                Arg::Ptr(ss_partials),
            ],
        ))
    }

    /// `y[out] = RMSNorm(res) · wᵀ` (split-K; `y` f32 or 16-bit) with the norm formed on the
    /// fly from `input`. None where the split-K GEMV cannot serve the shape.
    pub fn gemv_split_k_norm(
        &self,
        y: CUdeviceptr,
        y_f32: bool,
        input: &NormedInput,
        w: CUdeviceptr,
        inn: usize,
        out: usize,
    ) -> Option<Result<(), BackendError>> {
        if !split_k_fits(inn, out, input.res, w) || !GemvInput::Normed(*input).fits(inn) {
            return None;
        }
        let splits = split_k_splits(inn);
        Some(self.launch(
            &self.gemv_split_k_norm,
            (out.div_ceil(SKINNY_WARPS / splits) as u32, 1, 1),
            (SKINNY_WARPS * 32) as u32,
            &[
                Arg::Ptr(w),
                Arg::Ptr(input.res),
                Arg::Ptr(input.norm_w),
                Arg::Ptr(input.ss_partials),
                Arg::I32(input.num_partials as i32),
                Arg::F32(input.eps),
                Arg::Ptr(y),
                Arg::I32(inn as i32),
                Arg::I32(out as i32),
                Arg::I32(splits as i32),
                Arg::I32(y_f32 as i32),
            ],
        ))
    }
}

/// The split-K GEMV's requirements: 8-element rows, 16-byte aligned input and weights, i32
/// sizes.
fn split_k_fits(inn: usize, out: usize, x: CUdeviceptr, w: CUdeviceptr) -> bool {
    inn > 0
        && out > 0
        && inn.is_multiple_of(8)
        && x.is_multiple_of(16)
        && w.is_multiple_of(16)
        && inn <= i32::MAX as usize
        && out <= i32::MAX as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residual_partials_fit_one_slot_per_residual_value() {
        // 8B: o_proj (in 4096) has 4 rows per CTA, down (in 14336) one.
        assert_eq!(residual_ss_partials(4096, 4096), 1024);
        assert_eq!(residual_ss_partials(14336, 4096), 4096);
        // The partials buffer holds one float per residual value: never more CTAs than rows.
        for inn in [8, 256, 576, 2048, 4096, 8192, 14336, 28672] {
            for out in [1, 3, 576, 4096, 8191] {
                assert!(residual_ss_partials(inn, out) <= out, "in {inn} out {out}");
            }
        }
    }

    #[test]
    fn variant_names_round_trip_and_unknown_names_are_refused() {
        for v in GemvVariant::ALL {
            assert_eq!(v.name().parse::<GemvVariant>(), Ok(v));
            assert_eq!(GemvVariant::from_index(v.to_index()), v);
        }
        assert_eq!("Split-K".parse::<GemvVariant>(), Ok(GemvVariant::SplitK));
        assert_eq!(
            "fastest".parse::<GemvVariant>(),
            Err(UnknownGemvVariant("fastest".into()))
        );
    }

    #[test]
    fn split_k_gives_each_warp_one_round_of_loads() {
        // 8B qkv/o_proj (16 chunks), 8B down (56), 1B (8 and 32), SmolLM2 (576: 3 chunks).
        assert_eq!(split_k_splits(4096), 2);
        assert_eq!(split_k_splits(14336), 8);
        assert_eq!(split_k_splits(2048), 1);
        assert_eq!(split_k_splits(8192), 4);
        assert_eq!(split_k_splits(576), 1);
        // Wider than 8 warps x 8 chunks: capped, the kernel loops.
        assert_eq!(split_k_splits(65536), SKINNY_WARPS);
        for inn in (8..40_000).step_by(8) {
            let s = split_k_splits(inn);
            assert!(SKINNY_WARPS.is_multiple_of(s), "{inn}: {s}");
        }
    }

    #[test]
    fn split_k_is_the_default_and_gate_up_swiglu_splits_fit_half_a_cta() {
        assert_eq!(GemvVariant::default(), GemvVariant::SplitK);
        // 8B (hidden 4096) and 1B (2048): the same slices as the split-K gate/up projection.
        assert_eq!(gate_up_swiglu_splits(4096), split_k_splits(4096));
        assert_eq!(gate_up_swiglu_splits(2048), split_k_splits(2048));
        assert_eq!(gate_up_swiglu_splits(8192), split_k_splits(8192));
        assert_eq!(gate_up_swiglu_splits(65536), SKINNY_WARPS / 2);
        for inn in (8..40_000).step_by(8) {
            let s = gate_up_swiglu_splits(inn);
            assert!((SKINNY_WARPS / 2).is_multiple_of(s), "{inn}: {s}");
        }
    }

    #[test]
    fn persistent_grid_never_exceeds_the_rows_or_the_resident_ctas() {
        assert_eq!(persistent_grid(6144, 132), 264);
        assert_eq!(persistent_grid(100, 132), 13);
        assert_eq!(persistent_grid(1, 0), 1);
    }
}
