// Shared definitions for every stator kernel. Compiled by NVRTC with no system headers, so the
// 16-bit float conversions are written with PTX `cvt` instead of cuda_bf16.h.
// Build-time macros (set by the Rust side): HEAD_DIM, GQA_GROUP, and STATOR_F16 for f16 models.

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

// NVRTC compiles without math.h, so INFINITY is spelled out.
#define NEG_INF __int_as_float(0xff800000)

#ifndef HEAD_DIM
#error "HEAD_DIM must be defined"
#endif
#ifndef GQA_GROUP
#error "GQA_GROUP must be defined"
#endif

#ifdef STATOR_F16
#define MMA_TYPE "f16"
__device__ __forceinline__ float to_f(u16 x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
    return f;
}
__device__ __forceinline__ u16 from_f(float x) {
    u16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}
#else
#define MMA_TYPE "bf16"
__device__ __forceinline__ float to_f(u16 x) { return __uint_as_float(((u32)x) << 16); }
__device__ __forceinline__ u16 from_f(float x) {
    u16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}
#endif

// Programmatic dependent launch (sm_90+). A kernel launched with programmatic stream
// serialization may start while its predecessor in the stream is still running, once every CTA
// of the predecessor has executed pdl_launch_dependents() (or exited). Its pdl_wait() then
// blocks until the predecessor has completed and its writes are visible. The rules every
// kernel here follows, so any of them may be launched either way:
// - pdl_wait() runs in every CTA before its first read of anything an earlier kernel of the
//   step wrote, before its first global write, and before any early exit. Because every
//   kernel waits, a kernel's completion implies its predecessor's, so one wait orders it
//   after every earlier kernel in the stream, not just the previous one.
// - Before the wait a kernel only reads data no kernel writes during a step: weights, the
//   rope table, step metadata (written by a copy that completes before the step's first
//   kernel starts), and KV positions written by earlier steps.
// Both instructions are no-ops when the kernel was launched the ordinary way.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void pdl_launch_dependents() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
#else
__device__ __forceinline__ void pdl_launch_dependents() {}
__device__ __forceinline__ void pdl_wait() {}
#endif

__device__ __forceinline__ u32 pack2(float lo, float hi) {
    return (u32)from_f(lo) | ((u32)from_f(hi) << 16);
}
__device__ __forceinline__ float lo_f(u32 x) { return to_f((u16)(x & 0xffffu)); }
__device__ __forceinline__ float hi_f(u32 x) { return to_f((u16)(x >> 16)); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a block of at most 1024 threads; every thread gets the result.
__device__ float block_sum(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    const int warps = (blockDim.x + 31) >> 5;
    float total = lane < warps ? partial[lane] : 0.0f;
    return warp_sum(total);
}

// Element offset of the K plane of (block, layer) in the paged cache. The layout is the KV
// exchange layout of the Backend trait: [block][layer][K then V][block_size][kv_heads][head_dim],
// so export/import are plain copies. The V plane follows at + plane.
__device__ __forceinline__ size_t kv_plane_offset(long long block, int layer, int num_layers, size_t plane) {
    return ((size_t)block * (size_t)num_layers + (size_t)layer) * 2 * plane;
}

// Rows of K/V tiles in shared memory are padded by 16 bytes so that 16-byte accesses of
// consecutive rows fall in different banks.
#define HDP (HEAD_DIM + 8)
#define KV_CHUNKS (HEAD_DIM / 8)

// A 16-byte load cached in L2 only: what a kernel reads before pdl_wait() must not leave L1
// lines behind that the previous kernel may still write.
__device__ __forceinline__ uint4 load_l2_only(const u16* p) {
    uint4 v;
    asm volatile("ld.global.cg.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

// Loads tile rows [row_lo, row_hi) of positions [t0, t0 + n) of one kv head into k_s/v_s
// (rows at or past n zero-filled); L2_ONLY for loads issued before pdl_wait().
template <int THREADS, bool L2_ONLY = false>
__device__ __forceinline__ void load_kv_rows(u16 (*k_s)[HDP], u16 (*v_s)[HDP], const u16* __restrict__ cache,
                                             const int* __restrict__ table, int t0, int n, int row_lo, int row_hi,
                                             int kvh, int layer, int num_layers, int num_kv_heads, int block_size) {
    const size_t kv_dim = (size_t)num_kv_heads * HEAD_DIM;
    const size_t plane = (size_t)block_size * kv_dim;
    for (int i = threadIdx.x; i < (row_hi - row_lo) * KV_CHUNKS; i += THREADS) {
        const int tt = row_lo + i / KV_CHUNKS, c = i % KV_CHUNKS;
        uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
        if (tt < n) {
            const int pos = t0 + tt;
            const long long blk = table[pos / block_size];
            const size_t base = kv_plane_offset(blk, layer, num_layers, plane) + (size_t)(pos % block_size) * kv_dim +
                                (size_t)kvh * HEAD_DIM + c * 8;
            if (L2_ONLY) {
                kv = load_l2_only(cache + base);
                vv = load_l2_only(cache + base + plane);
            } else {
                kv = *(const uint4*)(cache + base);
                vv = *(const uint4*)(cache + base + plane);
            }
        }
        *(uint4*)&k_s[tt][c * 8] = kv;
        *(uint4*)&v_s[tt][c * 8] = vv;
    }
}

// Loads positions [t0, t0 + n) of one kv head into k_s/v_s (TILE rows, zero-filled past n).
template <int TILE, int THREADS>
__device__ __forceinline__ void load_kv_tile(u16 (*k_s)[HDP], u16 (*v_s)[HDP], const u16* __restrict__ cache,
                                             const int* __restrict__ table, int t0, int n, int kvh, int layer,
                                             int num_layers, int num_kv_heads, int block_size) {
    load_kv_rows<THREADS>(k_s, v_s, cache, table, t0, n, 0, TILE, kvh, layer, num_layers, num_kv_heads, block_size);
}
