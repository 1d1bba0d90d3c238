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

__device__ __forceinline__ float dot8(uint4 a, uint4 b) {
    return lo_f(a.x) * lo_f(b.x) + hi_f(a.x) * hi_f(b.x) + lo_f(a.y) * lo_f(b.y) + hi_f(a.y) * hi_f(b.y) +
           lo_f(a.z) * lo_f(b.z) + hi_f(a.z) * hi_f(b.z) + lo_f(a.w) * lo_f(b.w) + hi_f(a.w) * hi_f(b.w);
}

template <int R, int U>
__device__ __forceinline__ void skinny_gemm_impl(const u16* __restrict__ w, const u16* __restrict__ x, void* y, int rows,
                                                 int inn, int out, int out_f32, int accumulate) {
    const int o = blockIdx.x * SKINNY_WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (o >= out) return;
    const u16* wrow = w + (size_t)o * inn;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.0f;
    int i = lane * 8;
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
