// Paged attention for decode (one query token per sequence), flash-decoding style: the grid is
// (kv head, sequence, context split). One CTA serves all GQA_GROUP query heads of its kv head,
// so each K/V row is read from memory once per group. With several splits, each CTA writes an
// unnormalised partial (acc, max, sum); decode_attention_reduce merges them, or, when the launch
// passes split counters, the last CTA of each (sequence, kv head) merges them itself.

#define DEC_TILE 64
#define DEC_THREADS 128
#define DEC_PAIRS (HEAD_DIM / 2)
#define DEC_HSTRIDE (DEC_THREADS / DEC_PAIRS)
#define DEC_HPT ((GQA_GROUP + DEC_HSTRIDE - 1) / DEC_HSTRIDE)

// The merged output of one (sequence, head, dim) from its splits: decode_attention_reduce's
// loop and expressions, in split order, so the in-kernel merge gives the same bits (checked).
// Loads bypass L1: the partials were written by other CTAs of the same grid.
__device__ __forceinline__ float merge_splits(const float* part_acc, const float* part_ml, size_t base, int num_splits,
                                              int d) {
    float m = NEG_INF;
    for (int s = 0; s < num_splits; ++s)
        if (__ldcg(&part_ml[(base + s) * 2 + 1]) > 0.0f) m = fmaxf(m, __ldcg(&part_ml[(base + s) * 2]));
    float total = 0.0f, acc = 0.0f;
    for (int s = 0; s < num_splits; ++s) {
        const float l = __ldcg(&part_ml[(base + s) * 2 + 1]);
        if (l > 0.0f) {
            const float w = __expf(__ldcg(&part_ml[(base + s) * 2]) - m);
            total += l * w;
            acc += __ldcg(&part_acc[(base + s) * HEAD_DIM + d]) * w;
        }
    }
    return acc / total;
}

// Called by every thread of a split CTA once its partials are written. The CTA that finishes
// last for its (sequence, kv head) merges all splits of the group's heads into `out` and puts
// the counter back to 0, so the next layer, step or graph replay starts from zero.
__device__ __forceinline__ void merge_if_last(unsigned* __restrict__ count, const float* part_acc,
                                              const float* part_ml, u16* __restrict__ out, int row, int e, int kvh,
                                              int num_heads, int num_splits) {
    __shared__ int last_s;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last_s = atomicAdd(count, 1u) == (unsigned)(num_splits - 1);
    __syncthreads();
    if (!last_s) return;
    __threadfence();
    const int q_dim = num_heads * HEAD_DIM;
    for (int i = threadIdx.x; i < GQA_GROUP * HEAD_DIM; i += DEC_THREADS) {
        const int head = kvh * GQA_GROUP + i / HEAD_DIM, d = i % HEAD_DIM;
        const size_t base = ((size_t)e * num_heads + head) * num_splits;
        out[(size_t)row * q_dim + (size_t)head * HEAD_DIM + d] =
            from_f(merge_splits(part_acc, part_ml, base, num_splits, d));
    }
    if (threadIdx.x == 0) *count = 0u;
}

// split_counts: null (partials merged by decode_attention_reduce) or one zeroed counter per
// (sequence, kv head) of this layer, indexed e * num_kv_heads + kv head.
extern "C" __global__ void __launch_bounds__(DEC_THREADS) decode_attention(
    const u16* __restrict__ q, u16* __restrict__ out, float* __restrict__ part_acc, float* __restrict__ part_ml,
    const int* __restrict__ rows, const int* __restrict__ ctx_lens, const int* __restrict__ seq_ids,
    const int* __restrict__ block_tables, int max_blocks, const u16* __restrict__ cache, int layer, int num_layers,
    int num_heads, int num_kv_heads, int block_size, float scale, int split_len, int num_splits,
    unsigned* __restrict__ split_counts) {
    __shared__ float q_s[GQA_GROUP][HEAD_DIM];
    __shared__ __align__(16) u16 k_s[DEC_TILE][HDP];
    __shared__ __align__(16) u16 v_s[DEC_TILE][HDP];
    __shared__ float p_s[GQA_GROUP][DEC_TILE];
    __shared__ float m_s[GQA_GROUP], l_s[GQA_GROUP], alpha_s[GQA_GROUP];

    const int kvh = blockIdx.x, e = blockIdx.y, split = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    pdl_launch_dependents();
    const int ctx = ctx_lens[e];
    const int start = split * split_len;
    const size_t part_base = ((size_t)e * num_heads + (size_t)kvh * GQA_GROUP) * num_splits + split;
    if (start >= ctx) {
        pdl_wait();
        // An empty split still reports itself so the merge can skip it.
        if (tid < GQA_GROUP) {
            part_ml[(part_base + (size_t)tid * num_splits) * 2] = NEG_INF;
            part_ml[(part_base + (size_t)tid * num_splits) * 2 + 1] = 0.0f;
        }
        if (split_counts != nullptr && num_splits > 1)
            merge_if_last(split_counts + (size_t)e * num_kv_heads + kvh, part_acc, part_ml, out, rows[e], e, kvh,
                          num_heads, num_splits);
        return;
    }
    const int end = min(ctx, start + split_len);
    const int row = rows[e];
    const int q_dim = num_heads * HEAD_DIM;
    const int* table = block_tables + (size_t)seq_ids[e] * max_blocks;

    // Only the newest position (ctx - 1) is written by this step (by the previous kernel:
    // rope_kv_write, or the one-row QKV + rope kernel); the older rows of the first tile load
    // while that kernel finishes.
    const int first_n = min(DEC_TILE, end - start);
    const int early_rows = max(0, min(DEC_TILE, ctx - 1 - start));
    load_kv_rows<DEC_THREADS, true>(k_s, v_s, cache, table, start, first_n, 0, early_rows, kvh, layer, num_layers,
                                    num_kv_heads, block_size);
    pdl_wait();

    for (int i = tid; i < GQA_GROUP * HEAD_DIM; i += DEC_THREADS) {
        const int g = i / HEAD_DIM, d = i % HEAD_DIM;
        q_s[g][d] = to_f(q[(size_t)row * q_dim + (size_t)(kvh * GQA_GROUP + g) * HEAD_DIM + d]) * scale;
    }
    if (tid < GQA_GROUP) { m_s[tid] = NEG_INF; l_s[tid] = 0.0f; }

    const int dp = tid % DEC_PAIRS;
    float acc[DEC_HPT][2];
#pragma unroll
    for (int k = 0; k < DEC_HPT; ++k) { acc[k][0] = 0.0f; acc[k][1] = 0.0f; }

    for (int t0 = start; t0 < end; t0 += DEC_TILE) {
        const int n = min(DEC_TILE, end - t0);
        __syncthreads();
        load_kv_rows<DEC_THREADS>(k_s, v_s, cache, table, t0, n, t0 == start ? early_rows : 0, DEC_TILE, kvh, layer,
                                  num_layers, num_kv_heads, block_size);
        __syncthreads();
        for (int i = tid; i < GQA_GROUP * DEC_TILE; i += DEC_THREADS) {
            const int g = i / DEC_TILE, tt = i % DEC_TILE;
            float s = NEG_INF;
            if (tt < n) {
                s = 0.0f;
#pragma unroll
                for (int c = 0; c < KV_CHUNKS; ++c) {
                    const uint4 k = *(const uint4*)&k_s[tt][c * 8];
                    const float* qq = &q_s[g][c * 8];
                    s += qq[0] * lo_f(k.x) + qq[1] * hi_f(k.x) + qq[2] * lo_f(k.y) + qq[3] * hi_f(k.y) +
                         qq[4] * lo_f(k.z) + qq[5] * hi_f(k.z) + qq[6] * lo_f(k.w) + qq[7] * hi_f(k.w);
                }
            }
            p_s[g][tt] = s;
        }
        __syncthreads();
        for (int g = warp; g < GQA_GROUP; g += DEC_THREADS / 32) {
            const float s0 = p_s[g][lane], s1 = p_s[g][lane + 32];
            const float m_old = m_s[g];
            const float m_new = fmaxf(m_old, warp_max(fmaxf(s0, s1)));
            const float e0 = __expf(s0 - m_new), e1 = __expf(s1 - m_new);
            p_s[g][lane] = e0;
            p_s[g][lane + 32] = e1;
            const float sum = warp_sum(e0 + e1);
            if (lane == 0) {
                const float a = __expf(m_old - m_new);
                alpha_s[g] = a;
                l_s[g] = l_s[g] * a + sum;
                m_s[g] = m_new;
            }
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < DEC_HPT; ++k) {
            const int g = tid / DEC_PAIRS + k * DEC_HSTRIDE;
            if (g < GQA_GROUP) {
                const float a = alpha_s[g];
                float a0 = acc[k][0] * a, a1 = acc[k][1] * a;
                for (int tt = 0; tt < n; ++tt) {
                    const float p = p_s[g][tt];
                    const u32 v = *(const u32*)&v_s[tt][dp * 2];
                    a0 += p * lo_f(v);
                    a1 += p * hi_f(v);
                }
                acc[k][0] = a0;
                acc[k][1] = a1;
            }
        }
    }

#pragma unroll
    for (int k = 0; k < DEC_HPT; ++k) {
        const int g = tid / DEC_PAIRS + k * DEC_HSTRIDE;
        if (g < GQA_GROUP) {
            const int head = kvh * GQA_GROUP + g;
            if (num_splits == 1) {
                const float inv = 1.0f / l_s[g];
                *(u32*)&out[(size_t)row * q_dim + (size_t)head * HEAD_DIM + dp * 2] = pack2(acc[k][0] * inv, acc[k][1] * inv);
            } else {
                float* dst = part_acc + (part_base + (size_t)g * num_splits) * HEAD_DIM + dp * 2;
                dst[0] = acc[k][0];
                dst[1] = acc[k][1];
            }
        }
    }
    if (num_splits > 1 && tid < GQA_GROUP) {
        part_ml[(part_base + (size_t)tid * num_splits) * 2] = m_s[tid];
        part_ml[(part_base + (size_t)tid * num_splits) * 2 + 1] = l_s[tid];
    }
    if (split_counts != nullptr && num_splits > 1)
        merge_if_last(split_counts + (size_t)e * num_kv_heads + kvh, part_acc, part_ml, out, row, e, kvh, num_heads,
                      num_splits);
}

// Merges the splits of each (sequence, head): grid (entries, heads), HEAD_DIM threads.
extern "C" __global__ void decode_attention_reduce(const float* __restrict__ part_acc, const float* __restrict__ part_ml,
                                                   const int* __restrict__ rows, u16* __restrict__ out, int num_heads,
                                                   int num_splits) {
    pdl_launch_dependents();
    pdl_wait();
    const int e = blockIdx.x, head = blockIdx.y, d = threadIdx.x;
    const size_t base = ((size_t)e * num_heads + head) * num_splits;
    float m = NEG_INF;
    for (int s = 0; s < num_splits; ++s)
        if (part_ml[(base + s) * 2 + 1] > 0.0f) m = fmaxf(m, part_ml[(base + s) * 2]);
    float total = 0.0f, acc = 0.0f;
    for (int s = 0; s < num_splits; ++s) {
        const float l = part_ml[(base + s) * 2 + 1];
        if (l > 0.0f) {
            const float w = __expf(part_ml[(base + s) * 2] - m);
            total += l * w;
            acc += part_acc[(base + s) * HEAD_DIM + d] * w;
        }
    }
    out[(size_t)rows[e] * num_heads * HEAD_DIM + (size_t)head * HEAD_DIM + d] = from_f(acc / total);
}
