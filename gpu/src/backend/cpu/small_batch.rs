//! Matrix products with few input rows (decode steps), streaming each weight row once.
//!
//! With 1–16 rows, `gemm`'s packing and blocking cost more than they save: decode is bound by
//! reading the weights from memory. This kernel reads each weight row once, multiplies it by
//! every input row while it sits in L1, and splits weight rows across threads. It needs AVX2
//! and FMA; [`available`] says whether this CPU has them.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::kernels::SharedMut;

/// The largest number of input rows this kernel is used for.
pub(super) const MAX_ROWS: usize = 16;

/// Weight rows per parallel task.
const ROWS_PER_TASK: usize = 64;

pub(super) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// `out[m, n] (+)= a[m, k] · w[n, k]ᵀ`. Callers check [`available`] and `m <= MAX_ROWS`.
pub(super) fn matmul_transposed(
    out: &mut [f32],
    a: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    assert!(available() && m <= MAX_ROWS);
    assert!(out.len() == m * n && a.len() == m * k && w.len() == n * k);
    let out_ptr = SharedMut(out.as_mut_ptr());
    w.par_chunks(ROWS_PER_TASK * k)
        .enumerate()
        .for_each(|(task, w_rows)| {
            let first_col = task * ROWS_PER_TASK;
            let store = |col: usize, row: usize, dot: f32| {
                // SAFETY: (row, col) lies inside `out` (row < m, col < n); only the task
                // owning weight row `col` writes column `col`, and `out` outlives the loop.
                unsafe {
                    let dst = out_ptr.get().add(row * n + col);
                    *dst = if accumulate { *dst + dot } else { dot };
                }
            };
            let pairs = w_rows.chunks_exact(2 * k);
            let single = pairs.remainder();
            for (p, pair) in pairs.enumerate() {
                let col = first_col + 2 * p;
                for_row_groups(m, |row, take| {
                    // SAFETY: AVX2/FMA checked above; `pair` holds two rows of k values and
                    // rows row..row + take of `a` exist.
                    let dots = unsafe { dot_block_dispatch::<2>(pair, a, row, take, k) };
                    for (r, (&first, &second)) in
                        dots[0].iter().zip(&dots[1]).take(take).enumerate()
                    {
                        store(col, row + r, first);
                        store(col + 1, row + r, second);
                    }
                });
            }
            if !single.is_empty() {
                let col = first_col + w_rows.len() / k - 1;
                for_row_groups(m, |row, take| {
                    // SAFETY: as above, with one weight row.
                    let dots = unsafe { dot_block_dispatch::<1>(single, a, row, take, k) };
                    for (r, &dot) in dots[0].iter().take(take).enumerate() {
                        store(col, row + r, dot);
                    }
                });
            }
        });
}

/// Calls `f(first_row, rows)` for consecutive groups of at most four input rows.
fn for_row_groups(m: usize, mut f: impl FnMut(usize, usize)) {
    let mut row = 0;
    while row < m {
        let take = (m - row).min(4);
        f(row, take);
        row += take;
    }
}

/// [`dot_block`] for a runtime group size of 1 to 4 rows; unused entries are zero.
///
/// # Safety
/// As [`dot_block`], with `take` in `1..=4`.
unsafe fn dot_block_dispatch<const W: usize>(
    w_rows: &[f32],
    a: &[f32],
    first: usize,
    take: usize,
    k: usize,
) -> [[f32; 4]; W] {
    let mut out = [[0f32; 4]; W];
    let mut copy = |dots: &[[f32; 4]; W]| out = *dots;
    match take {
        4 => copy(&dot_block::<W, 4>(w_rows, a, first, k)),
        3 => copy(&dot_block::<W, 3>(w_rows, a, first, k)),
        2 => copy(&dot_block::<W, 2>(w_rows, a, first, k)),
        _ => copy(&dot_block::<W, 1>(w_rows, a, first, k)),
    }
    out
}

/// Dot products of `W` consecutive weight rows with input rows `first..first + R` of `a`,
/// as `dots[weight row][input row]`. Each loaded weight vector feeds `R` FMAs and each input
/// vector `W`, so the loop is bound by arithmetic, not loads.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `w_rows` must hold `W * k` values and `a` at least
/// `(first + R) * k`.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_block<const W: usize, const R: usize>(
    w_rows: &[f32],
    a: &[f32],
    first: usize,
    k: usize,
) -> [[f32; 4]; W] {
    let weights: [*const f32; W] = std::array::from_fn(|j| w_rows[j * k..(j + 1) * k].as_ptr());
    let inputs: [*const f32; R] =
        std::array::from_fn(|r| a[(first + r) * k..(first + r + 1) * k].as_ptr());
    let mut acc = [[_mm256_setzero_ps(); R]; W];
    let mut i = 0;
    while i + 8 <= k {
        // Plain loops, not closures: closures do not inherit `target_feature`.
        let mut wv = [_mm256_setzero_ps(); W];
        for j in 0..W {
            wv[j] = _mm256_loadu_ps(weights[j].add(i));
        }
        for r in 0..R {
            let av = _mm256_loadu_ps(inputs[r].add(i));
            for j in 0..W {
                acc[j][r] = _mm256_fmadd_ps(wv[j], av, acc[j][r]);
            }
        }
        i += 8;
    }
    let mut dots = [[0f32; 4]; W];
    for j in 0..W {
        for r in 0..R {
            let sum = acc[j][r];
            let halves = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
            let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
            let single = _mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1));
            let mut dot = _mm_cvtss_f32(single);
            for t in i..k {
                dot += *weights[j].add(t) * *inputs[r].add(t);
            }
            dots[j][r] = dot;
        }
    }
    dots
}
