// Row-wise and element-wise kernels of the forward pass.

// hidden[t, :] = embed[tokens[t], :] as f32.
extern "C" __global__ void embed_lookup(const u32* __restrict__ tokens, const u16* __restrict__ embed,
                                        float* __restrict__ hidden, int hidden_size) {
    pdl_launch_dependents();
    pdl_wait();
    const size_t t = blockIdx.x;
    const u16* src = embed + (size_t)tokens[t] * hidden_size;
    for (int i = threadIdx.x; i < hidden_size; i += blockDim.x) hidden[t * hidden_size + i] = to_f(src[i]);
}

// out[r, :] = x[src, :] / rms(x[src, :]) * weight, src = rows ? rows[r] : r. The residual add
// happens earlier, inside the projection GEMMs (beta = 1 into the f32 residual stream).
// On the one-row decode chain this kernel is pure latency between two weight streams (it cost
// ~10 µs per launch in place at 8B, docs/cuda-notes.md round 9). So when the row fits in
// RMS_NORM_VEC float4 per thread, it loads its norm weights and the row index before pdl_wait
// (neither is written during a step), then the row with every load in flight at once, kept in
// registers for the output pass: one L2 round trip after the wait instead of dependent passes
// over global memory. The squares are still added in the plain loop's order (thread t takes
// elements t, t + blockDim, ...; read back from shared memory), so the result is bit-identical
// to the looping path and to the norms fused into the skinny GEMMs (skinny_gemm.cu).
#define RMS_NORM_VEC 4
#define RMS_NORM_MAX_WIDTH 4096
extern "C" __global__ void rms_norm(const float* __restrict__ x, const int* __restrict__ rows,
                                    const float* __restrict__ weight, u16* __restrict__ out, int width, float eps) {
    __shared__ __align__(16) float row_s[RMS_NORM_MAX_WIDTH];
    pdl_launch_dependents();
    const size_t r = blockIdx.x;
    const size_t src = rows ? (size_t)rows[r] : r;
    const float* row = x + src * width;
    u16* dst = out + r * width;
    const int stride = blockDim.x;
    const bool in_registers = (width & 3) == 0 && width <= RMS_NORM_MAX_WIDTH &&
                              width <= RMS_NORM_VEC * 4 * stride &&
                              (((size_t)row | (size_t)weight | (size_t)dst) & 15) == 0;
    if (!in_registers) {
        pdl_wait();
        float ss = 0.0f;
        for (int i = threadIdx.x; i < width; i += stride) ss += row[i] * row[i];
        ss = block_sum(ss);
        const float scale = 1.0f / sqrtf(ss / (float)width + eps);
        for (int i = threadIdx.x; i < width; i += stride) dst[i] = from_f(row[i] * scale * weight[i]);
        return;
    }
    const int quads = width >> 2;
    float4 w[RMS_NORM_VEC], v[RMS_NORM_VEC];
#pragma unroll
    for (int u = 0; u < RMS_NORM_VEC; ++u) {
        const int q = threadIdx.x + u * stride;
        w[u] = q < quads ? ((const float4*)weight)[q] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    pdl_wait();
#pragma unroll
    for (int u = 0; u < RMS_NORM_VEC; ++u) {
        const int q = threadIdx.x + u * stride;
        v[u] = q < quads ? ((const float4*)row)[q] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll
    for (int u = 0; u < RMS_NORM_VEC; ++u) {
        const int q = threadIdx.x + u * stride;
        if (q < quads) ((float4*)row_s)[q] = v[u];
    }
    __syncthreads();
    float ss = 0.0f;
    for (int i = threadIdx.x; i < width; i += stride) ss += row_s[i] * row_s[i];
    ss = block_sum(ss);
    const float scale = 1.0f / sqrtf(ss / (float)width + eps);
#pragma unroll
    for (int u = 0; u < RMS_NORM_VEC; ++u) {
        const int q = threadIdx.x + u * stride;
        if (q < quads)
            ((uint2*)dst)[q] = make_uint2(pack2(v[u].x * scale * w[u].x, v[u].y * scale * w[u].y),
                                          pack2(v[u].z * scale * w[u].z, v[u].w * scale * w[u].w));
    }
}

// out[t, i] = silu(gate_up[t, i]) * gate_up[t, inter + i].
extern "C" __global__ void swiglu(const u16* __restrict__ gate_up, u16* __restrict__ out, int inter, long long total) {
    pdl_launch_dependents();
    pdl_wait();
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const long long t = idx / inter, j = idx % inter;
        const float g = to_f(gate_up[t * 2 * inter + j]);
        const float u = to_f(gate_up[t * 2 * inter + inter + j]);
        out[idx] = from_f(g / (1.0f + expf(-g)) * u);
    }
}

// For token t (one block): adds the optional QKV bias, rotates Q and K ("rotate_half" pairs
// i, i + head_dim/2; angles in f64 like the CPU reference), writes Q to q_out and K/V into the
// token's cache slot (slot = block_id * block_size + offset). The angles depend only on the
// position (step metadata) and the rope table, so they are computed once per frequency into
// shared memory before waiting for the projection that produced qkv.
extern "C" __global__ void rope_kv_write(const float* __restrict__ qkv, const float* __restrict__ bias,
                                         const int* __restrict__ positions, const int* __restrict__ slots,
                                         const double* __restrict__ inv_freq, u16* __restrict__ q_out,
                                         u16* __restrict__ cache, int layer, int num_layers, int num_heads,
                                         int num_kv_heads, int block_size) {
    const int half = HEAD_DIM / 2;
    __shared__ float cos_s[HEAD_DIM / 2], sin_s[HEAD_DIM / 2];
    const size_t t = blockIdx.x;
    pdl_launch_dependents();
    const double pos = (double)positions[t];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        double sd, cd;
        sincos(pos * inv_freq[i], &sd, &cd);
        cos_s[i] = (float)cd;
        sin_s[i] = (float)sd;
    }
    __syncthreads();
    pdl_wait();
    const int q_dim = num_heads * HEAD_DIM, kv_dim = num_kv_heads * HEAD_DIM;
    const int width = q_dim + 2 * kv_dim;
    const float* row = qkv + t * width;
    const int slot = slots[t];
    const size_t plane = (size_t)block_size * kv_dim;
    const size_t k_base = kv_plane_offset(slot / block_size, layer, num_layers, plane) + (size_t)(slot % block_size) * kv_dim;
    const int pairs = (num_heads + num_kv_heads) * half;
    for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
        const int head = p / half, i = p % half;
        const int ia = head * HEAD_DIM + i, ib = ia + half;
        float a = row[ia], b = row[ib];
        if (bias) { a += bias[ia]; b += bias[ib]; }
        const float c = cos_s[i], s = sin_s[i];
        const float ra = a * c - b * s, rb = b * c + a * s;
        if (head < num_heads) {
            q_out[t * q_dim + ia] = from_f(ra);
            q_out[t * q_dim + ib] = from_f(rb);
        } else {
            const int kh = (head - num_heads) * HEAD_DIM + i;
            cache[k_base + kh] = from_f(ra);
            cache[k_base + kh + half] = from_f(rb);
        }
    }
    for (int j = threadIdx.x; j < kv_dim; j += blockDim.x) {
        float v = row[q_dim + kv_dim + j];
        if (bias) v += bias[q_dim + kv_dim + j];
        cache[k_base + plane + j] = from_f(v);
    }
}

// Greedy sampling: out[r] = argmax of logits row r (lowest index on ties).
extern "C" __global__ void argmax_rows(const float* __restrict__ logits, u32* __restrict__ out, int vocab) {
    __shared__ float best_v[32];
    __shared__ int best_i[32];
    pdl_launch_dependents();
    pdl_wait();
    const float* row = logits + (size_t)blockIdx.x * vocab;
    float v = NEG_INF;
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float x = row[i];
        if (x > v) { v = x; idx = i; }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (ov > v || (ov == v && oi < idx)) { v = ov; idx = oi; }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { best_v[warp] = v; best_i[warp] = idx; }
    __syncthreads();
    if (warp == 0) {
        const int warps = blockDim.x >> 5;
        v = lane < warps ? best_v[lane] : NEG_INF;
        idx = lane < warps ? best_i[lane] : 0x7fffffff;
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, v, o);
            const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
            if (ov > v || (ov == v && oi < idx)) { v = ov; idx = oi; }
        }
        if (lane == 0) out[blockIdx.x] = (u32)(idx == 0x7fffffff ? 0 : idx);
    }
}

__device__ __forceinline__ u64 splitmix64(u64 x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// Deterministic N(0, std) fill keyed by (seed, stream, element pair): random weights built on
// the device, so large models need no host copy.
extern "C" __global__ void fill_normal(u16* __restrict__ out, long long n, u64 seed, u64 stream, float std_dev) {
    pdl_launch_dependents();
    pdl_wait();
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const u64 h = splitmix64(seed ^ splitmix64(stream * 0x632BE59BD9B4E019ull + (u64)(i >> 1)));
        const double u1 = 1.0 - (double)(h >> 40) * (1.0 / 16777216.0);
        const double u2 = (double)(h & 0xffffffull) * (1.0 / 16777216.0);
        const double radius = sqrt(-2.0 * log(u1));
        const double angle = 6.283185307179586 * u2;
        const double z = (i & 1) ? radius * sin(angle) : radius * cos(angle);
        out[i] = from_f((float)z * std_dev);
    }
}

extern "C" __global__ void fill_f32(float* __restrict__ out, long long n, float value) {
    pdl_launch_dependents();
    pdl_wait();
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = value;
}
