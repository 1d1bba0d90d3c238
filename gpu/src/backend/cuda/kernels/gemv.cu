// One-row projections (decode batch 1): y[o] (+)= x · w[o] with w [out, inn] row-major, the
// same contract as skinny_gemm_1, in three alternative shapes of work. skinny_gemm_1 gives each
// warp one row and 8 loads in flight per lane; for in = 4096 a warp does two rounds of loads
// and exits, so a 17–50 MB matrix spends a large part of its ~20 µs in ramp-up and tail. Each
// variant below attacks that differently (docs/cuda-notes.md, "Round 4: GEMV variants").
// All follow the PDL rules of common.cuh (weights may be read before pdl_wait(), x and y only
// after it; every CTA waits before exiting); all but the persistent kernel trigger their
// dependents first thing.
// Requires in % 8 == 0 and 16-byte aligned rows (checked on the host), like skinny_gemm.

#define GEMV_UNROLL 8

// Lane `lane`'s 16-byte piece of 256-element chunk `c` starts at element c * 256 + lane * 8;
// chunks past the row (and lanes past its end in the last chunk) read nothing.
__device__ __forceinline__ uint4 load_chunk(const u16* row, int c, int inn, int lane) {
    const int e = c * 256 + lane * 8;
    return e < inn ? load_stream(row + e) : make_uint4(0, 0, 0, 0);
}

// Where a split-K kernel reads its 16-bit input row x. `prepare` runs in every thread right
// after pdl_wait(), before the first `at`; `at(e)` gives the 8 values x[e .. e + 8).
struct PlainX {
    const u16* __restrict__ x;
    __device__ __forceinline__ void prepare() {}
    __device__ __forceinline__ uint4 at(int e) const { return *(const uint4*)(x + e); }
};

// RMSNorm folded into the projection (one-row steps, docs/cuda-notes.md round 8): x is
// to_16bit(res[i] * scale * norm_w[i]), rms_norm's expression, with scale from the sum of the
// per-CTA partial sums of squares that the projection which wrote `res` left in `partials`.
// Every CTA adds them in the same fixed order, so all CTAs get the same scale; the x values
// equal rms_norm's whenever that sum does (only its order differs from rms_norm's). Each CTA
// normalises the whole row once into shared memory (its warps' slices cover the row), so the
// f32 residual and norm weights are read once per CTA and the dot products read 16-bit values
// as from the two-kernel path's output.
#define NORM_FOLD_MAX_WIDTH 8192
struct NormedX {
    const float* __restrict__ res;
    const float* __restrict__ norm_w;
    const float* __restrict__ partials;
    int num_partials, width;
    float eps;
    const u16* row;
    __device__ __forceinline__ void prepare() {
        __shared__ __align__(16) u16 normed[NORM_FOLD_MAX_WIDTH];
        float ss = 0.0f;
#pragma unroll 4
        for (int i = threadIdx.x; i < num_partials; i += blockDim.x) ss += partials[i];
        ss = block_sum(ss);
        const float scale = 1.0f / sqrtf(ss / (float)width + eps);
        for (int e = threadIdx.x * 8; e < width; e += blockDim.x * 8) {
            const float4 r0 = *(const float4*)(res + e), r1 = *(const float4*)(res + e + 4);
            const float4 g0 = *(const float4*)(norm_w + e), g1 = *(const float4*)(norm_w + e + 4);
            *(uint4*)(normed + e) = make_uint4(pack2(r0.x * scale * g0.x, r0.y * scale * g0.y),
                                               pack2(r0.z * scale * g0.z, r0.w * scale * g0.w),
                                               pack2(r1.x * scale * g1.x, r1.y * scale * g1.y),
                                               pack2(r1.z * scale * g1.z, r1.w * scale * g1.w));
        }
        __syncthreads();
        row = normed;
    }
    __device__ __forceinline__ uint4 at(int e) const { return *(const uint4*)(row + e); }
};

template <typename X>
__device__ __forceinline__ float dot_chunk(uint4 wv, const X& xs, int c, int inn, int lane) {
    const int e = c * 256 + lane * 8;
    return e < inn ? dot8(wv, xs.at(e)) : 0.0f;
}

__device__ __forceinline__ float dot_chunk(uint4 wv, const u16* __restrict__ x, int c, int inn, int lane) {
    return dot_chunk(wv, PlainX{x}, c, inn, lane);
}

__device__ __forceinline__ void store_output(void* y, int o, float v, int out_f32, int accumulate) {
    if (out_f32) {
        float* yf = (float*)y;
        yf[o] = accumulate ? yf[o] + v : v;
    } else {
        ((u16*)y)[o] = from_f(v);
    }
}

// Warp sum of x · wrow over chunks [c0, c1) of the row (the whole warp gets it): the first
// GEMV_UNROLL chunks are loaded before pdl_wait (weights only), x is read after it; a slice
// longer than GEMV_UNROLL chunks continues in further rounds. Lanes add their chunks in order.
// Every thread of the CTA must call it (X::prepare may synchronise the CTA).
template <typename X>
__device__ __forceinline__ float split_k_slice_sum(const u16* __restrict__ wrow, X& x, int inn, int c0, int c1,
                                                   int lane) {
    uint4 wv[GEMV_UNROLL];
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; ++u)
        wv[u] = c0 + u < c1 ? load_chunk(wrow, c0 + u, inn, lane) : make_uint4(0, 0, 0, 0);
    pdl_wait();
    x.prepare();
    float acc = 0.0f;
    for (int c = c0;;) {
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u)
            if (c + u < c1) acc += dot_chunk(wv[u], x, c + u, inn, lane);
        c += GEMV_UNROLL;
        if (c >= c1) break;
        // Only when the host asked for fewer splits than one round per warp needs.
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u)
            wv[u] = c + u < c1 ? load_chunk(wrow, c + u, inn, lane) : make_uint4(0, 0, 0, 0);
    }
    return warp_sum(acc);
}

// (a) Split-K. `splits` warps (1, 2, 4 or 8; a power of two dividing SKINNY_WARPS) share one
// output row, each taking a contiguous slice of at most GEMV_UNROLL chunks, so every warp
// issues all of its loads at once — before pdl_wait — and runs exactly one DRAM round trip.
// The CTA adds the slices' warp sums in shared memory in a fixed order (deterministic).
// With `ss_partials` (f32 output only) the CTA also writes the sum of squares of the values it
// stored, added in row order, to ss_partials[blockIdx.x]: the next projection's folded RMSNorm.
template <typename X>
__device__ __forceinline__ void gemv_split_k_body(const u16* __restrict__ w, X& x, void* y, int inn, int out,
                                                  int splits, int out_f32, int accumulate,
                                                  float* __restrict__ ss_partials) {
    __shared__ float partial[SKINNY_WARPS];
    __shared__ float squares[SKINNY_WARPS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int o = blockIdx.x * (SKINNY_WARPS / splits) + warp / splits;
    const int part = warp % splits;
    pdl_launch_dependents();
    const bool active = o < out;
    const int chunks = (inn + 255) / 256;
    const int per = (chunks + splits - 1) / splits;
    const int c0 = part * per;
    const int c1 = active ? min(chunks, c0 + per) : c0;
    const u16* wrow = w + (size_t)(active ? o : 0) * inn;
    const float acc = split_k_slice_sum(wrow, x, inn, c0, c1, lane);
    if (lane == 0) partial[warp] = acc;
    __syncthreads();
    if (part == 0 && lane == 0) {
        float stored = 0.0f;
        if (active) {
            float v = 0.0f;
            for (int s = 0; s < splits; ++s) v += partial[warp + s];
            if (out_f32) {
                float* yf = (float*)y;
                stored = accumulate ? yf[o] + v : v;
                yf[o] = stored;
            } else {
                ((u16*)y)[o] = from_f(v);
            }
        }
        squares[warp] = stored * stored;
    }
    if (!ss_partials) return;
    __syncthreads();
    if (threadIdx.x == 0) {
        float ss = 0.0f;
        for (int r = 0; r < SKINNY_WARPS; r += splits) ss += squares[r];
        ss_partials[blockIdx.x] = ss;
    }
}

extern "C" __global__ void __launch_bounds__(SKINNY_WARPS * 32)
    gemv_split_k(const u16* __restrict__ w, const u16* __restrict__ x, void* y, int inn, int out, int splits,
                 int out_f32, int accumulate) {
    PlainX xs{x};
    gemv_split_k_body(w, xs, y, inn, out, splits, out_f32, accumulate, nullptr);
}

// gemv_split_k accumulating into the f32 residual `y` and leaving one partial sum of squares
// of the new residual per CTA in ss_partials (the first half of the folded RMSNorm).
extern "C" __global__ void __launch_bounds__(SKINNY_WARPS * 32)
    gemv_split_k_residual_ss(const u16* __restrict__ w, const u16* __restrict__ x, float* y, int inn, int out,
                             int splits, float* __restrict__ ss_partials) {
    PlainX xs{x};
    gemv_split_k_body(w, xs, y, inn, out, splits, 1, 1, ss_partials);
}

// gemv_split_k whose input is RMSNorm(res) formed on the fly (the second half of the fold).
extern "C" __global__ void __launch_bounds__(SKINNY_WARPS * 32)
    gemv_split_k_norm(const u16* __restrict__ w, const float* __restrict__ res, const float* __restrict__ norm_w,
                      const float* __restrict__ ss_partials, int num_partials, float eps, void* y, int inn, int out,
                      int splits, int out_f32) {
    NormedX xs{res, norm_w, ss_partials, num_partials, inn, eps, nullptr};
    gemv_split_k_body(w, xs, y, inn, out, splits, out_f32, 0, nullptr);
}

// Split-K over pairs of rows: a CTA serves SKINNY_WARPS / (2 splits) pairs; per pair, `splits`
// warps take slices of its first row and `splits` warps the same slices of its second row,
// exactly as gemv_split_k slices a row, and the slices are added in gemv_split_k's order. So
// each sum is bit-identical to gemv_split_k's output for that row with the same `splits`.
// The pair handled by this thread's warp:
__device__ __forceinline__ int split_k_pair_index(int splits) {
    return blockIdx.x * (SKINNY_WARPS / (2 * splits)) + (threadIdx.x >> 5) / (2 * splits);
}

// Computes the pair's two sums `a` (row_of(pair, 0)) and `b` (row_of(pair, 1)); returns true in
// exactly one thread per active pair, which holds them. Waits (pdl_wait) after issuing the
// weight loads; every thread must call it.
template <typename X, typename RowOf>
__device__ __forceinline__ bool split_k_pair_sums(const u16* __restrict__ w, X& x, int inn,
                                                  int npairs, int splits, RowOf row_of, float& a, float& b) {
    __shared__ float partial[SKINNY_WARPS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int pair = split_k_pair_index(splits);
    const int second = (warp / splits) & 1;
    const int part = warp % splits;
    const bool active = pair < npairs;
    const int chunks = (inn + 255) / 256;
    const int per = (chunks + splits - 1) / splits;
    const int c0 = part * per;
    const int c1 = active ? min(chunks, c0 + per) : c0;
    const u16* wrow = w + (size_t)(active ? row_of(pair, second) : 0) * inn;
    const float acc = split_k_slice_sum(wrow, x, inn, c0, c1, lane);
    if (lane == 0) partial[warp] = acc;
    __syncthreads();
    if (!active || second || part != 0 || lane != 0) return false;
    a = 0.0f;
    b = 0.0f;
    for (int s = 0; s < splits; ++s) a += partial[warp + s];
    for (int s = 0; s < splits; ++s) b += partial[warp + splits + s];
    return true;
}

// (a') Split-K gate/up projection with SwiGLU folded in, for one row: act[o] = silu(g) * u with
// g = x · w[o] and u = x · w[inter + o] (w is the fused [gate; up] matrix, as for
// skinny_norm_gate_up_swiglu_1). g and u are rounded to the 16-bit type before SwiGLU, as the
// unfused path stores them and the swiglu kernel reads them back, so the result is
// bit-identical to gemv_split_k + swiglu with the same `splits` (at most SKINNY_WARPS / 2).
// Saves the swiglu launch and the [2 inter] round trip.
template <typename X>
__device__ __forceinline__ void gate_up_swiglu_body(const u16* __restrict__ w, X& x, u16* __restrict__ act, int inn,
                                                    int inter, int splits) {
    pdl_launch_dependents();
    float g, up;
    const auto row_of = [inter](int o, int second) { return second ? inter + o : o; };
    if (!split_k_pair_sums(w, x, inn, inter, splits, row_of, g, up)) return;
    const int o = split_k_pair_index(splits);
    const float gr = to_f(from_f(g)), ur = to_f(from_f(up));
    act[o] = from_f(gr / (1.0f + expf(-gr)) * ur);
}

extern "C" __global__ void __launch_bounds__(SKINNY_WARPS * 32)
    gemv_gate_up_swiglu_split_k(const u16* __restrict__ w, const u16* __restrict__ x, u16* __restrict__ act, int inn,
                                int inter, int splits) {
    PlainX xs{x};
    gate_up_swiglu_body(w, xs, act, inn, inter, splits);
}

// The same with RMSNorm(res) formed on the fly as its input (see NormedX).
extern "C" __global__ void __launch_bounds__(SKINNY_WARPS * 32)
    gemv_gate_up_swiglu_split_k_norm(const u16* __restrict__ w, const float* __restrict__ res,
                                     const float* __restrict__ norm_w, const float* __restrict__ ss_partials,
                                     int num_partials, float eps, u16* __restrict__ act, int inn, int inter,
                                     int splits) {
    NormedX xs{res, norm_w, ss_partials, num_partials, inn, eps, nullptr};
    gate_up_swiglu_body(w, xs, act, inn, inter, splits);
}

// (a'') Split-K QKV projection with rope_kv_write folded in, for one row (token 0 of the step):
// pairs are the rotate_half pairs (i, i + HEAD_DIM / 2) of every Q and K head, then the V
// features two by two. The leader thread of a pair adds the optional bias, rotates with the
// same f32 cos/sin (from f64 sincos of the step's position) and the same arithmetic as
// rope_kv_write, and writes Q to q_out or K/V into the token's cache slot: bit-identical to
// gemv_split_k (f32 output) + rope_kv_write with the same `splits`. The angle is computed
// before the weights are waited for (positions are step metadata, written before the step).
template <typename X>
__device__ __forceinline__ void qkv_rope_body(const u16* __restrict__ w, X& x, const float* __restrict__ bias,
                                              const int* __restrict__ positions, const int* __restrict__ slots,
                                              const double* __restrict__ inv_freq, u16* __restrict__ q_out,
                                              u16* __restrict__ cache, int inn, int splits, int layer,
                                              int num_layers, int num_heads, int num_kv_heads, int block_size) {
    pdl_launch_dependents();
    const int half = HEAD_DIM / 2;
    const int q_dim = num_heads * HEAD_DIM, kv_dim = num_kv_heads * HEAD_DIM;
    const int rope_pairs = (num_heads + num_kv_heads) * half;
    const int npairs = rope_pairs + kv_dim / 2;
    const int pair = split_k_pair_index(splits);
    float c = 0.0f, sn = 0.0f;
    if (pair < rope_pairs && (threadIdx.x & (64 * splits - 1)) == 0) {
        double sd, cd;
        sincos((double)positions[0] * inv_freq[pair % half], &sd, &cd);
        c = (float)cd;
        sn = (float)sd;
    }
    const auto row_of = [=](int p, int second) {
        return p < rope_pairs ? (p / half) * HEAD_DIM + p % half + second * half
                              : q_dim + kv_dim + 2 * (p - rope_pairs) + second;
    };
    float a, b;
    if (!split_k_pair_sums(w, x, inn, npairs, splits, row_of, a, b)) return;
    const int ia = row_of(pair, 0), ib = row_of(pair, 1);
    if (bias) {
        a += bias[ia];
        b += bias[ib];
    }
    const int slot = slots[0];
    const size_t plane = (size_t)block_size * kv_dim;
    const size_t k_base =
        kv_plane_offset(slot / block_size, layer, num_layers, plane) + (size_t)(slot % block_size) * kv_dim;
    if (pair >= rope_pairs) {
        const int j = ia - q_dim - kv_dim;
        cache[k_base + plane + j] = from_f(a);
        cache[k_base + plane + j + 1] = from_f(b);
        return;
    }
    const float ra = a * c - b * sn, rb = b * c + a * sn;
    if (ia < q_dim) {
        q_out[ia] = from_f(ra);
        q_out[ib] = from_f(rb);
    } else {
        const int kh = ia - q_dim;
        cache[k_base + kh] = from_f(ra);
        cache[k_base + kh + half] = from_f(rb);
    }
}

extern "C" __global__ void __launch_bounds__(SKINNY_WARPS * 32)
    gemv_qkv_rope_split_k(const u16* __restrict__ w, const u16* __restrict__ x, const float* __restrict__ bias,
                          const int* __restrict__ positions, const int* __restrict__ slots,
                          const double* __restrict__ inv_freq, u16* __restrict__ q_out, u16* __restrict__ cache,
                          int inn, int splits, int layer, int num_layers, int num_heads, int num_kv_heads,
                          int block_size) {
    PlainX xs{x};
    qkv_rope_body(w, xs, bias, positions, slots, inv_freq, q_out, cache, inn, splits, layer, num_layers, num_heads,
                  num_kv_heads, block_size);
}

// The same with RMSNorm(res) formed on the fly as its input (see NormedX).
extern "C" __global__ void __launch_bounds__(SKINNY_WARPS * 32)
    gemv_qkv_rope_split_k_norm(const u16* __restrict__ w, const float* __restrict__ res,
                               const float* __restrict__ norm_w, const float* __restrict__ ss_partials,
                               int num_partials, float eps, const float* __restrict__ bias,
                               const int* __restrict__ positions, const int* __restrict__ slots,
                               const double* __restrict__ inv_freq, u16* __restrict__ q_out, u16* __restrict__ cache,
                               int inn, int splits, int layer, int num_layers, int num_heads, int num_kv_heads,
                               int block_size) {
    NormedX xs{res, norm_w, ss_partials, num_partials, inn, eps, nullptr};
    qkv_rope_body(w, xs, bias, positions, slots, inv_freq, q_out, cache, inn, splits, layer, num_layers, num_heads,
                  num_kv_heads, block_size);
}

// (b) Two rows per warp: both rows' GEMV_UNROLL loads are issued before either is used (16 x
// 16 B in flight per lane), and each x chunk is read once for both rows. Half as many warps as
// skinny_gemm_1, each with twice the work and twice the loads in flight.
#define GEMV_ROWS_PER_WARP 2
extern "C" __global__ void __launch_bounds__(SKINNY_WARPS * 32)
    gemv_rows2(const u16* __restrict__ w, const u16* __restrict__ x, void* y, int inn, int out, int out_f32,
               int accumulate) {
    constexpr int R = GEMV_ROWS_PER_WARP, U = GEMV_UNROLL;
    const int o0 = (blockIdx.x * SKINNY_WARPS + (threadIdx.x >> 5)) * R;
    const int lane = threadIdx.x & 31;
    pdl_launch_dependents();
    const u16* rows[R];
    bool valid[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        valid[r] = o0 + r < out;
        rows[r] = w + (size_t)(valid[r] ? o0 + r : 0) * inn;
        if (valid[r]) prefetch_row_l2(rows[r], min(inn, U * 256), lane);
    }
    pdl_wait();
    const int chunks = (inn + 255) / 256;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.0f;
    for (int c = 0; c < chunks; c += U) {
        uint4 wv[R][U];
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int u = 0; u < U; ++u)
                wv[r][u] = valid[r] && c + u < chunks ? load_chunk(rows[r], c + u, inn, lane) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int e = (c + u) * 256 + lane * 8;
            if (c + u < chunks && e < inn) {
                const uint4 xv = *(const uint4*)(x + e);
#pragma unroll
                for (int r = 0; r < R; ++r) acc[r] += dot8(wv[r][u], xv);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const float v = warp_sum(acc[r]);
        if (valid[r] && lane == 0) store_output(y, o0 + r, v, out_f32, accumulate);
    }
}

// (c) Persistent streaming: the grid is a fixed number of CTAs per SM and each warp walks rows
// o, o + warps, o + 2 warps, ... as one continuous stream of GEMV_UNROLL-chunk groups, double
// buffered in registers: the next group's loads (of this row or the warp's next row) are issued
// before the current group is used, so a warp's loads never stop at row boundaries and the
// only ramp is the first group, issued before pdl_wait.
#define GEMV_PERSISTENT_CTAS_PER_SM 2

struct GemvStream {
    const u16* w;
    const u16* x;
    void* y;
    int inn, out, groups, stride, lane, out_f32, accumulate;
};

__device__ __forceinline__ void load_group(uint4 (&buf)[GEMV_UNROLL], const GemvStream& s, int o, int g) {
    const u16* row = s.w + (size_t)o * s.inn;
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; ++u) buf[u] = load_chunk(row, g * GEMV_UNROLL + u, s.inn, s.lane);
}

// Uses `cur` (group g of row o) after issuing the loads of the stream's next group into `nxt`;
// finishes the row when g was its last group. Returns false once the warp has no rows left.
__device__ __forceinline__ bool gemv_stream_step(uint4 (&cur)[GEMV_UNROLL], uint4 (&nxt)[GEMV_UNROLL],
                                                 const GemvStream& s, int& o, int& g, float& acc) {
    int next_o = o, next_g = g + 1;
    if (next_g == s.groups) {
        next_g = 0;
        next_o = o + s.stride;
    }
    if (next_o < s.out) load_group(nxt, s, next_o, next_g);
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; ++u) acc += dot_chunk(cur[u], s.x, g * GEMV_UNROLL + u, s.inn, s.lane);
    if (next_g == 0) {
        const float v = warp_sum(acc);
        if (s.lane == 0) store_output(s.y, o, v, s.out_f32, s.accumulate);
        acc = 0.0f;
    }
    o = next_o;
    g = next_g;
    return o < s.out;
}

extern "C" __global__ void __launch_bounds__(SKINNY_WARPS * 32, GEMV_PERSISTENT_CTAS_PER_SM)
    gemv_persistent(const u16* __restrict__ w, const u16* __restrict__ x, void* y, int inn, int out, int out_f32,
                    int accumulate) {
    GemvStream s;
    s.w = w;
    s.x = x;
    s.y = y;
    s.inn = inn;
    s.out = out;
    s.groups = (inn + GEMV_UNROLL * 256 - 1) / (GEMV_UNROLL * 256);
    s.stride = gridDim.x * SKINNY_WARPS;
    s.lane = threadIdx.x & 31;
    s.out_f32 = out_f32;
    s.accumulate = accumulate;
    int o = blockIdx.x * SKINNY_WARPS + (threadIdx.x >> 5);
    int g = 0;
    // Two named buffers whose roles alternate (the loop is unrolled by hand): copying the
    // next buffer into the current one would wait for its loads and stall the stream.
    uint4 a[GEMV_UNROLL], b[GEMV_UNROLL];
    if (o < out) load_group(a, s, o, 0);
    pdl_wait();
    float acc = 0.0f;
    while (o < out) {
        if (!gemv_stream_step(a, b, s, o, g, acc)) break;
        if (!gemv_stream_step(b, a, s, o, g, acc)) break;
    }
    // Triggered last, unlike every other kernel: this grid is resident at once, so a trigger
    // at the start launched the following kernels immediately and their waiting CTAs cost the
    // 8B decode step ~1 ms (measured; docs/cuda-notes.md round 4). Later is always safe.
    pdl_launch_dependents();
}
