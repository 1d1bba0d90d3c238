//! Dense kernels of the CPU forward pass: matrix products (through `gemm`), RMSNorm, SwiGLU.

use gemm::Parallelism;
use rayon::prelude::*;

/// Below this many rows, a product is split across threads by output columns, each thread
/// running a single-threaded `gemm` (which takes its matrix-vector path): `gemm` itself does
/// not parallelise matrix-vector products, which dominate decode.
const COLUMN_SPLIT_MAX_ROWS: usize = 16;

/// Output columns per task when splitting a small product; keeps tasks cache-sized.
const MIN_COLUMNS_PER_TASK: usize = 64;

/// A pointer handed to parallel tasks that each write their own disjoint region of one
/// buffer; every use states which region it owns.
#[derive(Clone, Copy)]
pub(super) struct SharedMut(pub(super) *mut f32);
// SAFETY: the wrapper only moves the address between threads; callers guarantee that no two
// tasks touch the same element and that the buffer outlives the tasks.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// A method (not field access) so closures capture the whole `Send` wrapper.
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// `out[m, n] = a[m, k] · w[n, k]ᵀ`, or `out += a · wᵀ` when `accumulate` (fused residual).
///
/// `w` is row-major `[n, k]` (PyTorch `[out_features, in_features]`); all buffers are
/// row-major and tightly packed.
pub(super) fn matmul_transposed(
    out: &mut [f32],
    a: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    assert_eq!(out.len(), m * n, "matmul output size");
    assert_eq!(a.len(), m * k, "matmul input size");
    assert_eq!(w.len(), n * k, "matmul weight size");
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if m <= super::small_batch::MAX_ROWS && super::small_batch::available() {
        super::small_batch::matmul_transposed(out, a, w, m, k, n, accumulate);
        return;
    }
    gemm_matmul_transposed(out, a, w, m, k, n, accumulate);
}

/// [`matmul_transposed`] through `gemm` only.
pub(super) fn gemm_matmul_transposed(
    out: &mut [f32],
    a: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    let threads = rayon::current_num_threads().max(1);
    if m > COLUMN_SPLIT_MAX_ROWS || threads == 1 {
        let parallelism = if threads > 1 {
            Parallelism::Rayon(threads)
        } else {
            Parallelism::None
        };
        // SAFETY: the three buffers were checked to hold m·n, m·k and n·k elements, and the
        // strides below address exactly those row-major shapes.
        unsafe { gemm_block(out.as_mut_ptr(), n, a, w, m, k, n, accumulate, parallelism) };
        return;
    }
    let tasks = (n / MIN_COLUMNS_PER_TASK).clamp(1, threads * 4);
    let columns_per_task = n.div_ceil(tasks);
    let out_ptr = SharedMut(out.as_mut_ptr());
    (0..n.div_ceil(columns_per_task))
        .into_par_iter()
        .for_each(|task| {
            let first = task * columns_per_task;
            let width = columns_per_task.min(n - first);
            let w_rows = &w[first * k..(first + width) * k];
            // SAFETY: task `task` writes columns `first..first + width` of every row of `out`, a
            // set disjoint from every other task's; `out` outlives the parallel loop.
            unsafe {
                gemm_block(
                    out_ptr.get().add(first),
                    n,
                    a,
                    w_rows,
                    m,
                    k,
                    width,
                    accumulate,
                    Parallelism::None,
                )
            };
        });
}

/// `dst[m, n] (+)= a[m, k] · w[n, k]ᵀ` where `dst` rows are `dst_row_stride` apart.
///
/// # Safety
/// `dst` must be valid for writes at `i * dst_row_stride + j` for `i < m`, `j < n`, with no
/// other thread touching those elements during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_block(
    dst: *mut f32,
    dst_row_stride: usize,
    a: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
    parallelism: Parallelism,
) {
    // gemm computes dst = alpha·dst + beta·lhs·rhs, reading dst only when asked.
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_row_stride as isize,
        accumulate,
        a.as_ptr(),
        1,
        k as isize,
        // rhs[kk, j] = w[j, kk]: column stride k, row stride 1.
        w.as_ptr(),
        k as isize,
        1,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    );
}

/// `out[t] = x[t] / rms(x[t]) * weight` for every row `t`.
pub(super) fn rms_norm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let width = weight.len();
    for (out_row, x_row) in out.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
        let mean_square = dot(x_row, x_row) / width as f32;
        let scale = 1.0 / (mean_square + eps).sqrt();
        for ((o, &v), &w) in out_row.iter_mut().zip(x_row).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// SwiGLU: `out[t, i] = silu(gate_up[t, i]) * gate_up[t, inter + i]`.
pub(super) fn silu_mul(out: &mut [f32], gate_up: &[f32], inter: usize) {
    for (out_row, gu_row) in out
        .chunks_exact_mut(inter)
        .zip(gate_up.chunks_exact(2 * inter))
    {
        let (gate, up) = gu_row.split_at(inter);
        for ((o, &g), &u) in out_row.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    }
}

/// Dot product with eight independent partial sums, so the compiler can vectorise it.
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for i in 0..8 {
            lanes[i] += ca[i] * cb[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `acc += scale * x`.
#[inline(always)]
pub(super) fn axpy(acc: &mut [f32], scale: f32, x: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += scale * v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|kk| a[i * k + kk] as f64 * w[j * k + kk] as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    fn pseudo_random(len: usize, salt: u32) -> Vec<f32> {
        (0..len as u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) ^ salt) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn matmul_matches_naive_for_vector_and_matrix_shapes_and_accumulates() {
        check_against_naive(matmul_transposed);
        check_against_naive(gemm_matmul_transposed);
    }

    type Matmul = fn(&mut [f32], &[f32], &[f32], usize, usize, usize, bool);

    fn check_against_naive(matmul: Matmul) {
        for &(m, k, n) in &[
            (1, 70, 300),
            (3, 64, 129),
            (40, 33, 17),
            (17, 128, 1000),
            (5, 7, 3),
            (16, 40, 65),
            (90, 100, 70),
        ] {
            let a = pseudo_random(m * k, 1);
            let w = pseudo_random(n * k, 2);
            let expected = naive(&a, &w, m, k, n);
            let mut out = vec![0f32; m * n];
            matmul(&mut out, &a, &w, m, k, n, false);
            for (x, y) in out.iter().zip(&expected) {
                assert!((x - y).abs() < 1e-4, "{m}x{k}x{n}: {x} vs {y}");
            }
            let residual = pseudo_random(m * n, 3);
            let mut out = residual.clone();
            matmul(&mut out, &a, &w, m, k, n, true);
            for ((x, y), r) in out.iter().zip(&expected).zip(&residual) {
                assert!((x - (y + r)).abs() < 1e-4, "accumulate {m}x{k}x{n}");
            }
        }
    }

    #[test]
    fn rms_norm_gives_unit_rms_before_the_weight() {
        let x = [3.0, -4.0, 0.0, 0.0];
        let mut out = [0f32; 4];
        rms_norm(&mut out, &x, &[1.0, 2.0, 1.0, 1.0], 0.0);
        assert!(
            (out[0] - 1.2).abs() < 1e-6 && (out[1] + 3.2).abs() < 1e-6,
            "{out:?}"
        );
    }
}
