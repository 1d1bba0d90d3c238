// Causal attention for prefill chunks over the paged cache, flash-attention-2 style on the
// tensor cores (mma.sync m16n8k16, f32 accumulate). Grid: (query tile, head); 4 warps, each
// owning 16 query rows of a 64-row tile. S = Q·Kᵀ and O += P·V stay in registers; the online
// softmax runs on the S fragments; K/V tiles of 64 positions are staged in shared memory.
// A query tile is (sequence, first row, first position, length): queries may start after a
// cached prefix, and attend to every cached position up to their own.

#define PF_Q 64
#define PF_K 64
#define PF_THREADS 128

__device__ __forceinline__ void mma_16816(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." MMA_TYPE "." MMA_TYPE
                 ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Three CTAs per SM (register cap ~170) so one CTA's K/V loads overlap others' MMAs.
extern "C" __global__ void __launch_bounds__(PF_THREADS, 3) prefill_attention(
    const u16* __restrict__ q, u16* __restrict__ out, const int* __restrict__ tiles,
    const int* __restrict__ block_tables, int max_blocks, const u16* __restrict__ cache, int layer, int num_layers,
    int num_heads, int num_kv_heads, int block_size, float scale_log2) {
    __shared__ __align__(16) u16 k_s[PF_K][HDP];
    __shared__ __align__(16) u16 v_s[PF_K][HDP];
    pdl_launch_dependents();
    pdl_wait();

    const int head = blockIdx.y, kvh = head / GQA_GROUP;
    // Tiles run last-first: later query tiles see more of the causal triangle, and starting
    // the heaviest first shortens the tail of the launch.
    const int tile = gridDim.x - 1 - blockIdx.x;
    const int seq = tiles[tile * 4], first_row = tiles[tile * 4 + 1];
    const int first_pos = tiles[tile * 4 + 2], len = tiles[tile * 4 + 3];
    const int* table = block_tables + (size_t)seq * max_blocks;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const int q_dim = num_heads * HEAD_DIM;
    const int r0 = warp * 16 + g, r1 = r0 + 8;  // query rows of this thread inside the tile
    const bool v0 = r0 < len, v1 = r1 < len;
    const int qp0 = first_pos + r0, qp1 = first_pos + r1;

    u32 qf[HEAD_DIM / 16][4];
    {
        const u16* q0 = q + (size_t)(first_row + r0) * q_dim + (size_t)head * HEAD_DIM;
        const u16* q1 = q + (size_t)(first_row + r1) * q_dim + (size_t)head * HEAD_DIM;
#pragma unroll
        for (int kc = 0; kc < HEAD_DIM / 16; ++kc) {
            const int c0 = kc * 16 + 2 * t;
            qf[kc][0] = v0 ? *(const u32*)(q0 + c0) : 0u;
            qf[kc][1] = v1 ? *(const u32*)(q1 + c0) : 0u;
            qf[kc][2] = v0 ? *(const u32*)(q0 + c0 + 8) : 0u;
            qf[kc][3] = v1 ? *(const u32*)(q1 + c0 + 8) : 0u;
        }
    }

    float o[HEAD_DIM / 8][4];
#pragma unroll
    for (int nt = 0; nt < HEAD_DIM / 8; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;

    const int kv_end = first_pos + len;  // positions 0..kv_end-1 are visible to the last query
    for (int k0 = 0; k0 < kv_end; k0 += PF_K) {
        const int n = min(PF_K, kv_end - k0);
        __syncthreads();
        load_kv_tile<PF_K, PF_THREADS>(k_s, v_s, cache, table, k0, n, kvh, layer, num_layers, num_kv_heads, block_size);
        __syncthreads();

        float s[PF_K / 8][4];
#pragma unroll
        for (int nt = 0; nt < PF_K / 8; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
            for (int kc = 0; kc < HEAD_DIM / 16; ++kc) {
                const u32 b0 = *(const u32*)&k_s[nt * 8 + g][kc * 16 + 2 * t];
                const u32 b1 = *(const u32*)&k_s[nt * 8 + g][kc * 16 + 2 * t + 8];
                mma_16816(s[nt], qf[kc], b0, b1);
            }
        }

        float tmax0 = NEG_INF, tmax1 = NEG_INF;
#pragma unroll
        for (int nt = 0; nt < PF_K / 8; ++nt) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int kp = k0 + nt * 8 + 2 * t + (j & 1);
                const bool upper = j < 2;
                const bool ok = upper ? (v0 && kp <= qp0) : (v1 && kp <= qp1);
                const float val = ok ? s[nt][j] * scale_log2 : NEG_INF;
                s[nt][j] = val;
                if (upper) tmax0 = fmaxf(tmax0, val); else tmax1 = fmaxf(tmax1, val);
            }
        }
        tmax0 = fmaxf(tmax0, __shfl_xor_sync(0xffffffffu, tmax0, 1));
        tmax0 = fmaxf(tmax0, __shfl_xor_sync(0xffffffffu, tmax0, 2));
        tmax1 = fmaxf(tmax1, __shfl_xor_sync(0xffffffffu, tmax1, 1));
        tmax1 = fmaxf(tmax1, __shfl_xor_sync(0xffffffffu, tmax1, 2));
        const float mn0 = fmaxf(m0, tmax0), mn1 = fmaxf(m1, tmax1);
        // A row with nothing visible yet keeps a zero reference so exp2 never sees inf - inf.
        const float ms0 = mn0 == NEG_INF ? 0.0f : mn0, ms1 = mn1 == NEG_INF ? 0.0f : mn1;
        const float alpha0 = exp2f(m0 - ms0), alpha1 = exp2f(m1 - ms1);
        m0 = mn0;
        m1 = mn1;
        l0 *= alpha0;
        l1 *= alpha1;
#pragma unroll
        for (int nt = 0; nt < HEAD_DIM / 8; ++nt) {
            o[nt][0] *= alpha0; o[nt][1] *= alpha0;
            o[nt][2] *= alpha1; o[nt][3] *= alpha1;
        }
#pragma unroll
        for (int nt = 0; nt < PF_K / 8; ++nt) {
            s[nt][0] = exp2f(s[nt][0] - ms0);
            s[nt][1] = exp2f(s[nt][1] - ms0);
            s[nt][2] = exp2f(s[nt][2] - ms1);
            s[nt][3] = exp2f(s[nt][3] - ms1);
            l0 += s[nt][0] + s[nt][1];
            l1 += s[nt][2] + s[nt][3];
        }

#pragma unroll
        for (int kc = 0; kc < PF_K / 16; ++kc) {
            u32 a[4];
            a[0] = pack2(s[2 * kc][0], s[2 * kc][1]);
            a[1] = pack2(s[2 * kc][2], s[2 * kc][3]);
            a[2] = pack2(s[2 * kc + 1][0], s[2 * kc + 1][1]);
            a[3] = pack2(s[2 * kc + 1][2], s[2 * kc + 1][3]);
            const int kr = kc * 16 + 2 * t;
#pragma unroll
            for (int nt = 0; nt < HEAD_DIM / 8; ++nt) {
                const int col = nt * 8 + g;
                const u32 b0 = (u32)v_s[kr][col] | ((u32)v_s[kr + 1][col] << 16);
                const u32 b1 = (u32)v_s[kr + 8][col] | ((u32)v_s[kr + 9][col] << 16);
                mma_16816(o[nt], a, b0, b1);
            }
        }
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = v0 ? 1.0f / l0 : 0.0f, inv1 = v1 ? 1.0f / l1 : 0.0f;
    u16* out0 = out + (size_t)(first_row + r0) * q_dim + (size_t)head * HEAD_DIM;
    u16* out1 = out + (size_t)(first_row + r1) * q_dim + (size_t)head * HEAD_DIM;
#pragma unroll
    for (int nt = 0; nt < HEAD_DIM / 8; ++nt) {
        const int col = nt * 8 + 2 * t;
        if (v0) *(u32*)(out0 + col) = pack2(o[nt][0] * inv0, o[nt][1] * inv0);
        if (v1) *(u32*)(out1 + col) = pack2(o[nt][2] * inv1, o[nt][3] * inv1);
    }
}
