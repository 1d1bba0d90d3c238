// Projections for decode-sized batches (at most 8 rows): y[r, o] (+)= sum_i x[r, i] * w[o, i].
// Pure weight streaming: one warp per output feature reads its weight row once with 16-byte
// non-caching loads, for every row of x at once. cuBLAS picks tiled GEMM kernels here that
// leave HBM bandwidth on the table; this is the whole cost of a decode step's linear layers.
// Requires in % 8 == 0 and 16-byte aligned rows (checked on the host).

#define SKINNY_WARPS 8

__device__ __forceinline__ uint4 load_stream(const u16* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

// Asks L2 for the first `n` elements of a weight row, one 128-byte line per lane (a warp
// covers 32 lines: 2048 16-bit values); does not wait for them.
__device__ __forceinline__ void prefetch_row_l2(const u16* row, int n, int lane) {
    for (int e = lane * 64; e < n && e < 32 * 64; e += 32 * 64)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(row + e));
}

__device__ __forceinline__ float dot8(uint4 a, uint4 b) {
    return lo_f(a.x) * lo_f(b.x) + hi_f(a.x) * hi_f(b.x) + lo_f(a.y) * lo_f(b.y) + hi_f(a.y) * hi_f(b.y) +
           lo_f(a.z) * lo_f(b.z) + hi_f(a.z) * hi_f(b.z) + lo_f(a.w) * lo_f(b.w) + hi_f(a.w) * hi_f(b.w);
}

template <int R, int U>
__device__ __forceinline__ void skinny_gemm_impl(const u16* __restrict__ w, const u16* __restrict__ x, void* y, int rows,
                                                 int inn, int out, int out_f32, int accumulate) {
    const int o = blockIdx.x * SKINNY_WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    pdl_launch_dependents();
    if (o >= out) {
        pdl_wait();
        return;
    }
    const u16* wrow = w + (size_t)o * inn;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.0f;
    int i = lane * 8;
    // The weights do not depend on the previous kernel: under programmatic launch each warp
    // pulls the first U chunks of its row into L2 while that kernel finishes, which hides
    // this kernel's ramp-up behind its tail. Into L2, not registers: holding the loads across
    // the wait would cost registers and CTAs per SM.
    prefetch_row_l2(wrow, min(inn, U * 256), lane);
    pdl_wait();
    // U weight loads in flight per lane before any use.
    for (; i + (U - 1) * 256 < inn; i += U * 256) {
        uint4 wv[U];
#pragma unroll
        for (int u = 0; u < U; ++u) wv[u] = load_stream(wrow + i + u * 256);
#pragma unroll
        for (int u = 0; u < U; ++u) {
#pragma unroll
            for (int r = 0; r < R; ++r)
                if (r < rows) acc[r] += dot8(wv[u], *(const uint4*)(x + (size_t)r * inn + i + u * 256));
        }
    }
    for (; i < inn; i += 256) {
        const uint4 wv = load_stream(wrow + i);
#pragma unroll
        for (int r = 0; r < R; ++r)
            if (r < rows) acc[r] += dot8(wv, *(const uint4*)(x + (size_t)r * inn + i));
    }
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = warp_sum(acc[r]);
    if (lane < R && lane < rows) {
        float v = 0.0f;
#pragma unroll
        for (int r = 0; r < R; ++r)
            if (r == lane) v = acc[r];
        const size_t idx = (size_t)lane * out + o;
        if (out_f32) {
            float* yf = (float*)y;
            yf[idx] = accumulate ? yf[idx] + v : v;
        } else {
            ((u16*)y)[idx] = from_f(v);
        }
    }
}

#define SKINNY_KERNEL(R, U)                                                                                           \
    extern "C" __global__ void __launch_bounds__(SKINNY_WARPS * 32)                                                  \
        skinny_gemm_##R(const u16* __restrict__ w, const u16* __restrict__ x, void* y, int rows, int inn, int out,   \
                        int out_f32, int accumulate) {                                                              \
        skinny_gemm_impl<R, U>(w, x, y, rows, inn, out, out_f32, accumulate);                                           \
    }
// One row needs few registers, so it keeps twice as many loads in flight.
SKINNY_KERNEL(1, 8)
SKINNY_KERNEL(2, 4)
SKINNY_KERNEL(4, 4)
SKINNY_KERNEL(8, 4)

// One-row steps fuse the RMSNorm before a projection into it: every CTA normalises the f32
// residual row into shared memory (the same arithmetic, thread count and rounding as rms_norm,
// so the result is bit-identical to the two-kernel path) while its first weight loads are
// already in flight. Saves a launch and its ramp-up per norm; the row is re-read from L2 by
// each CTA. Needs inn <= NORM_MAX_INNER.
#define NORM_MAX_INNER 8192

__device__ __forceinline__ void norm_row_to_shared(const float* __restrict__ row, const float* __restrict__ weight,
                                                   u16* x_s, int width, float eps) {
    float ss = 0.0f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) ss += row[i] * row[i];
    ss = block_sum(ss);
    const float scale = 1.0f / sqrtf(ss / (float)width + eps);
    for (int i = threadIdx.x; i < width; i += blockDim.x) x_s[i] = from_f(row[i] * scale * weight[i]);
    __syncthreads();
}

// y[o] (+)= rmsnorm(hidden) · w[o] for one row; y f32 or 16-bit like skinny_gemm.
extern "C" __global__ void __launch_bounds__(SKINNY_WARPS * 32)
    skinny_norm_gemm_1(const u16* __restrict__ w, const float* __restrict__ hidden, const float* __restrict__ norm_weight,
                       void* y, int inn, int out, int out_f32, int accumulate, float eps) {
    constexpr int U = 8;
    __shared__ __align__(16) u16 x_s[NORM_MAX_INNER];
    const int o = blockIdx.x * SKINNY_WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    pdl_launch_dependents();
    const bool active = o < out;
    const u16* wrow = w + (size_t)(active ? o : 0) * inn;
    int i = lane * 8;
    uint4 wv[U];
    bool loaded = false;
    if (active && i + (U - 1) * 256 < inn) {
#pragma unroll
        for (int u = 0; u < U; ++u) wv[u] = load_stream(wrow + i + u * 256);
        loaded = true;
    }
    pdl_wait();
    norm_row_to_shared(hidden, norm_weight, x_s, inn, eps);
    if (!active) return;
    float acc = 0.0f;
    for (; i + (U - 1) * 256 < inn; i += U * 256) {
        if (!loaded) {
#pragma unroll
            for (int u = 0; u < U; ++u) wv[u] = load_stream(wrow + i + u * 256);
        }
        loaded = false;
#pragma unroll
        for (int u = 0; u < U; ++u) acc += dot8(wv[u], *(const uint4*)(x_s + i + u * 256));
    }
    for (; i < inn; i += 256) acc += dot8(load_stream(wrow + i), *(const uint4*)(x_s + i));
    acc = warp_sum(acc);
    if (lane == 0) {
        if (out_f32) {
            float* yf = (float*)y;
            yf[o] = accumulate ? yf[o] + acc : acc;
        } else {
            ((u16*)y)[o] = from_f(acc);
        }
    }
}

// act[o] = silu(g) * u with g = rmsnorm(hidden) · w[o], u = rmsnorm(hidden) · w[inter + o]
// (w is the fused [gate; up] matrix): norm, gate/up projection and SwiGLU in one kernel for one
// row. Each warp streams its gate and up rows together; g and u are rounded to the 16-bit type
// before SwiGLU exactly as the unfused path stores them.
extern "C" __global__ void __launch_bounds__(SKINNY_WARPS * 32)
    skinny_norm_gate_up_swiglu_1(const u16* __restrict__ w, const float* __restrict__ hidden,
                                 const float* __restrict__ norm_weight, u16* __restrict__ act, int inn, int inter,
                                 float eps) {
    constexpr int U = 4;
    __shared__ __align__(16) u16 x_s[NORM_MAX_INNER];
    const int o = blockIdx.x * SKINNY_WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    pdl_launch_dependents();
    const bool active = o < inter;
    const u16* grow = w + (size_t)(active ? o : 0) * inn;
    const u16* urow = w + ((size_t)inter + (active ? o : 0)) * inn;
    int i = lane * 8;
    uint4 gv[U], uv[U];
    bool loaded = false;
    if (active && i + (U - 1) * 256 < inn) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            gv[u] = load_stream(grow + i + u * 256);
            uv[u] = load_stream(urow + i + u * 256);
        }
        loaded = true;
    }
    pdl_wait();
    norm_row_to_shared(hidden, norm_weight, x_s, inn, eps);
    if (!active) return;
    float g = 0.0f, up = 0.0f;
    for (; i + (U - 1) * 256 < inn; i += U * 256) {
        if (!loaded) {
#pragma unroll
            for (int u = 0; u < U; ++u) {
                gv[u] = load_stream(grow + i + u * 256);
                uv[u] = load_stream(urow + i + u * 256);
            }
        }
        loaded = false;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const uint4 xv = *(const uint4*)(x_s + i + u * 256);
            g += dot8(gv[u], xv);
            up += dot8(uv[u], xv);
        }
    }
    for (; i < inn; i += 256) {
        const uint4 xv = *(const uint4*)(x_s + i);
        g += dot8(load_stream(grow + i), xv);
        up += dot8(load_stream(urow + i), xv);
    }
    g = warp_sum(g);
    up = warp_sum(up);
    if (lane == 0) {
        const float gr = to_f(from_f(g)), ur = to_f(from_f(up));
        act[o] = from_f(gr / (1.0f + expf(-gr)) * ur);
    }
}
