// Attention launcher + split-KV decode (flash-decoding) for seq == 1. Prefill kernels: attention_prefill.cu.
//
// Decode work decomposition (graph-capturable: the grid depends on ctx only, never on *pos_dev):
//  - Both kernels use programmatic dependent launch (see common.cuh) and wait before reading.
//  - Split kernel, grid (n_heads / HB, nsplit), 128 threads. Block (hb, s) serves HB query heads of one
//    GQA group (HB = largest power of two <= 8 dividing the group size, so K/V rows are loaded once
//    for HB heads) over cache positions [s*chunk, min((s+1)*chunk, L)), L = *pos_dev + 1; blocks past
//    L exit at once. chunk = dec_chunk(ctx) (128 .. 1024, at most 128 splits up to ctx = 131072).
//      phase 1: D/8 consecutive lanes share one cache row (16 bytes each); scores for all HB heads,
//               reduced with xor-shuffles inside the lane group, go to shared memory (log2 domain).
//      phase 2: one warp per head: chunk max m and p = exp2(s - m), sum l.
//      phase 3: same lane layout over V rows, acc[HB][8] per thread, reduced across row groups
//               (shuffles, then 4 warps through shared memory) -> unnormalised partial in workspace.
//  - Combine (fused, default): nv = ceil(L / chunk) splits are valid. With nv == 1 the block writes
//    the normalised bf16 output itself. Otherwise each valid block publishes its partial (threadfence,
//    then an atomic arrival count per head block in g_attn_arrivals); the last to arrive resets the
//    count and merges the nv partials in f32 in split order (deterministic), so no second launch.
//    The counters are static device memory, zero between launches; launches on one device are
//    serialised on the device's one stream, so no two decode attentions share them at a time.
//  - Combine kernel (INFER_ATTN_COMBINE=1, for A/B timing; also when the counters run short): grid
//    n_heads, 128 threads, the same merge in a second launch.
// Workspace layout (f32): ml [n_heads][nsplit][2] (max, sum), then acc [n_heads][nsplit][head_dim].
#include "common.cuh"

#define DEC_THREADS 128
#define ATTN_MAX_HEAD_BLOCKS 4096

#include <stdlib.h>

__device__ unsigned int g_attn_arrivals[ATTN_MAX_HEAD_BLOCKS];  // see the header comment

// Implemented in attention_prefill.cu.
cudaError_t infer_attention_prefill_launch(const bf16 *q, const bf16 *k, const bf16 *v, bf16 *out,
                                           const int32_t *pos_dev, int seq, int n_heads, int group, int head_dim,
                                           int ctx, float scale_log2, cudaStream_t stream);

static int dec_chunk(int ctx) {
    int c = 128;
    while (c < 1024 && infer_cdiv(ctx, c) > 128) c *= 2;
    return c;
}

// UNROLL cache rows per thread are loaded per batch; with PREV the first batch of V rows is issued
// together with the first batch of K rows, so for chunk <= NRG * UNROLL (the Llama-3.2-1B case)
// the block waits on DRAM only once.
template <int HB, int UNROLL = (HB <= 4 ? 8 : 4), bool PREV = (HB <= 4)>
__global__ void __launch_bounds__(DEC_THREADS)
attn_decode_split(const bf16 *__restrict__ q, const bf16 *__restrict__ kc, const bf16 *__restrict__ vc,
                  const int32_t *__restrict__ pos_dev, int group, int D, int ctx, int chunk, int nsplit,
                  float *__restrict__ ws_ml, float *__restrict__ ws_acc, float scale_log2, bf16 *__restrict__ out) {
    extern __shared__ float smem[];  // scores [HB][chunk]; later reused as [4 warps][HB][D]
    __shared__ float s_m[HB], s_l[HB];
    pdl_launch_dependents();
    pdl_wait();  // q, the caches and *pos_dev come from earlier kernels / copies
    const int h0 = blockIdx.x * HB, kvh = h0 / group, split = blockIdx.y;
    const int L = min(*pos_dev + 1, ctx);
    const int t0 = split * chunk;
    if (t0 >= L) return;  // whole block: nothing to do (the combine kernel ignores this split)
    const int nt = min(chunk, L - t0);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int TPR = D >> 3, sub = tid & (TPR - 1), rg = tid / TPR, NRG = DEC_THREADS / TPR;
    const bf16 *K = kc + ((size_t)kvh * ctx + t0) * D + sub * 8;
    const bf16 *V = vc + ((size_t)kvh * ctx + t0) * D + sub * 8;

    uint4 vpre[PREV ? UNROLL : 1];
    if (PREV) {
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int t = rg + u * NRG;
            vpre[PREV ? u : 0] = t < nt ? ld_stream16(V + (size_t)t * D) : make_uint4(0, 0, 0, 0);
        }
    }

    float qf[HB][8];
#pragma unroll
    for (int j = 0; j < HB; ++j) {
        unpack8(ld_cached16(q + (size_t)(h0 + j) * D + sub * 8), qf[j]);
#pragma unroll
        for (int e = 0; e < 8; ++e) qf[j][e] *= scale_log2;
    }

    // Phase 1: scores. `base` is uniform over the block so the shuffles below see all lanes.
    for (int base = 0; base < nt; base += NRG * UNROLL) {
        uint4 kv[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int t = base + rg + u * NRG;
            kv[u] = t < nt ? ld_stream16(K + (size_t)t * D) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            float kf[8], d[HB];
            unpack8(kv[u], kf);
#pragma unroll
            for (int j = 0; j < HB; ++j) {
                d[j] = 0.f;
#pragma unroll
                for (int e = 0; e < 8; ++e) d[j] = fmaf(qf[j][e], kf[e], d[j]);
            }
            for (int o = TPR >> 1; o > 0; o >>= 1)
#pragma unroll
                for (int j = 0; j < HB; ++j) d[j] += __shfl_xor_sync(0xffffffffu, d[j], o);
            const int t = base + rg + u * NRG;
            if (sub == 0 && t < nt)
#pragma unroll
                for (int j = 0; j < HB; ++j) smem[j * chunk + t] = d[j];
        }
    }
    __syncthreads();

    // Phase 2: per-head softmax statistics of this chunk (one warp per head).
    for (int j = warp; j < HB; j += DEC_THREADS / 32) {
        float *s = smem + j * chunk;
        float mx = -INFINITY;
        for (int t = lane; t < nt; t += 32) mx = fmaxf(mx, s[t]);
        mx = warp_max(mx);
        float sum = 0.f;
        for (int t = lane; t < nt; t += 32) {
            const float p = exp2f(s[t] - mx);
            s[t] = p;
            sum += p;
        }
        sum = warp_sum(sum);
        if (lane == 0) { s_m[j] = mx; s_l[j] = sum; }
    }
    __syncthreads();

    // Phase 3: acc[j][:] = sum_t p[j][t] * V[t][:] over this thread's 8 columns.
    float acc[HB][8];
#pragma unroll
    for (int j = 0; j < HB; ++j)
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[j][e] = 0.f;
    for (int base = 0; base < nt; base += NRG * UNROLL) {
        uint4 vv[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int t = base + rg + u * NRG;
            if (PREV && base == 0)
                vv[u] = vpre[PREV ? u : 0];
            else
                vv[u] = t < nt ? ld_stream16(V + (size_t)t * D) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int t = base + rg + u * NRG;
            if (t < nt) {
                float vf[8];
                unpack8(vv[u], vf);
#pragma unroll
                for (int j = 0; j < HB; ++j) {
                    const float p = smem[j * chunk + t];
#pragma unroll
                    for (int e = 0; e < 8; ++e) acc[j][e] = fmaf(p, vf[e], acc[j][e]);
                }
            }
        }
    }
    // Reduce the row groups of a warp (lanes with equal `sub`), then the 4 warps through smem.
    for (int o = TPR; o < 32; o <<= 1)
#pragma unroll
        for (int j = 0; j < HB; ++j)
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[j][e] += __shfl_xor_sync(0xffffffffu, acc[j][e], o);
    __syncthreads();  // all reads of the scores are done; reuse smem
    if (lane < TPR)
#pragma unroll
        for (int j = 0; j < HB; ++j)
#pragma unroll
            for (int e = 0; e < 8; ++e) smem[(warp * HB + j) * D + sub * 8 + e] = acc[j][e];
    __syncthreads();
    const int nv = infer_cdiv(L, chunk);
    if (out && nv == 1) {  // the only split: normalise and store, no partials
        for (int idx = tid; idx < HB * D; idx += DEC_THREADS) {
            const int j = idx / D, d = idx - j * D;
            float o = 0.f;
#pragma unroll
            for (int w = 0; w < DEC_THREADS / 32; ++w) o += smem[(w * HB + j) * D + d];
            out[(size_t)(h0 + j) * D + d] = __float2bfloat16_rn(o * (s_l[j] > 0.f ? 1.f / s_l[j] : 0.f));
        }
        return;
    }
    for (int idx = tid; idx < HB * D; idx += DEC_THREADS) {
        const int j = idx / D, d = idx - j * D;
        float s = 0.f;
#pragma unroll
        for (int w = 0; w < DEC_THREADS / 32; ++w) s += smem[(w * HB + j) * D + d];
        ws_acc[((size_t)(h0 + j) * nsplit + split) * D + d] = s;
    }
    if (tid < HB) {
        ws_ml[((size_t)(h0 + tid) * nsplit + split) * 2 + 0] = s_m[tid];
        ws_ml[((size_t)(h0 + tid) * nsplit + split) * 2 + 1] = s_l[tid];
    }
    if (!out) return;  // the combine kernel merges

    // Last block of this head block to finish merges every split's partial (read from L2).
    __shared__ bool s_last;
    __threadfence();
    __syncthreads();
    if (tid == 0) {
        s_last = atomicAdd(&g_attn_arrivals[blockIdx.x], 1u) + 1 == (unsigned)nv;
        if (s_last) atomicExch(&g_attn_arrivals[blockIdx.x], 0u);  // every valid split has arrived
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    for (int idx = tid; idx < HB * D; idx += DEC_THREADS) {
        const int j = idx / D, d = idx - j * D;
        const float *ml = ws_ml + (size_t)(h0 + j) * nsplit * 2;
        const float *acc = ws_acc + (size_t)(h0 + j) * nsplit * D + d;
        float M = -INFINITY;
        for (int sp = 0; sp < nv; ++sp) M = fmaxf(M, __ldcg(ml + 2 * sp));
        float l = 0.f, o = 0.f;
        for (int sp = 0; sp < nv; ++sp) {
            const float w = exp2f(__ldcg(ml + 2 * sp) - M);
            l += __ldcg(ml + 2 * sp + 1) * w;
            o += __ldcg(acc + (size_t)sp * D) * w;
        }
        out[(size_t)(h0 + j) * D + d] = __float2bfloat16_rn(o * (l > 0.f ? 1.f / l : 0.f));
    }
}

// One block per query head; merges the valid splits in order.
__global__ void __launch_bounds__(128)
attn_decode_combine(const float *__restrict__ ws_ml, const float *__restrict__ ws_acc,
                    const int32_t *__restrict__ pos_dev, bf16 *__restrict__ out, int D, int ctx, int chunk,
                    int nsplit) {
    pdl_launch_dependents();
    pdl_wait();  // partials of the split kernel
    const int h = blockIdx.x;
    const int L = min(*pos_dev + 1, ctx);
    const int nv = L > 0 ? infer_cdiv(L, chunk) : 0;
    const float *ml = ws_ml + (size_t)h * nsplit * 2;
    const float *acc = ws_acc + (size_t)h * nsplit * D;
    float M = -INFINITY;
    for (int s = 0; s < nv; ++s) M = fmaxf(M, ml[2 * s]);
    float l = 0.f;
    for (int s = 0; s < nv; ++s) l += ml[2 * s + 1] * exp2f(ml[2 * s] - M);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float o = 0.f;
        for (int s = 0; s < nv; ++s) o += acc[(size_t)s * D + d] * exp2f(ml[2 * s] - M);
        out[(size_t)h * D + d] = __float2bfloat16_rn(o * inv);
    }
}

static int nsplit_for(int ctx) { return infer_cdiv(ctx, dec_chunk(ctx)); }

extern "C" size_t infer_attention_workspace_bytes(int n_heads, int head_dim, int ctx) {
    if (n_heads <= 0 || head_dim <= 0 || ctx <= 0) return 0;
    return (size_t)n_heads * nsplit_for(ctx) * (size_t)(head_dim + 2) * sizeof(float);
}

template <int HB>
static cudaError_t launch_decode(const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *pos, int n_heads,
                                 int group, int D, int ctx, float *ws, float scale_log2, bf16 *out, cudaStream_t s) {
    const int chunk = dec_chunk(ctx), nsplit = infer_cdiv(ctx, chunk);
    float *ml = ws, *acc = ws + (size_t)n_heads * nsplit * 2;
    const int sm_floats = HB * chunk > 4 * HB * D ? HB * chunk : 4 * HB * D;  // <= 32 KB
    INFER_LAUNCH(attn_decode_split<HB>, dim3(n_heads / HB, nsplit), dim3(DEC_THREADS), sm_floats * sizeof(float), s,
                 q, k, v, pos, group, D, ctx, chunk, nsplit, ml, acc, scale_log2, out);
    return cudaSuccess;
}

extern "C" cudaError_t infer_attention_bf16(const void *q, const void *k_cache, const void *v_cache, void *out,
                                            const int32_t *pos_dev, int seq, int n_heads, int n_kv_heads,
                                            int head_dim, int ctx, float *workspace, size_t workspace_bytes,
                                            cudaStream_t stream) {
    INFER_CHECK_ARG(seq >= 1 && n_heads >= 1 && n_kv_heads >= 1 && n_heads % n_kv_heads == 0);
    INFER_CHECK_ARG(head_dim >= 8 && head_dim <= 256 && head_dim % 8 == 0 && ctx >= 1 && seq <= ctx);
    INFER_CHECK_ARG(q && k_cache && v_cache && out && pos_dev);
    INFER_CHECK_ARG(infer_aligned16(q) && infer_aligned16(k_cache) && infer_aligned16(v_cache) && infer_aligned16(out));
    const bf16 *qb = static_cast<const bf16 *>(q), *kb = static_cast<const bf16 *>(k_cache),
               *vb = static_cast<const bf16 *>(v_cache);
    bf16 *ob = static_cast<bf16 *>(out);
    const int group = n_heads / n_kv_heads;
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)head_dim);
    const int tpr = head_dim / 8;
    const bool pow2_tpr = (tpr & (tpr - 1)) == 0;
    if (seq > 1 || !pow2_tpr)
        return infer_attention_prefill_launch(qb, kb, vb, ob, pos_dev, seq, n_heads, group, head_dim, ctx,
                                              scale_log2, stream);

    INFER_CHECK_ARG(workspace && workspace_bytes >= infer_attention_workspace_bytes(n_heads, head_dim, ctx));
    INFER_CHECK_ARG(nsplit_for(ctx) <= 65535);
    const int hb = group % 8 == 0 ? 8 : group % 4 == 0 ? 4 : group % 2 == 0 ? 2 : 1;
    static const bool separate_env = [] {
        const char *e = getenv("INFER_ATTN_COMBINE");
        return e && e[0] == '1';
    }();
    const bool separate = separate_env || n_heads / hb > ATTN_MAX_HEAD_BLOCKS;
    bf16 *fused_out = separate ? nullptr : ob;
    cudaError_t e;
    switch (hb) {
        case 8: e = launch_decode<8>(qb, kb, vb, pos_dev, n_heads, group, head_dim, ctx, workspace, scale_log2, fused_out, stream); break;
        case 4: e = launch_decode<4>(qb, kb, vb, pos_dev, n_heads, group, head_dim, ctx, workspace, scale_log2, fused_out, stream); break;
        case 2: e = launch_decode<2>(qb, kb, vb, pos_dev, n_heads, group, head_dim, ctx, workspace, scale_log2, fused_out, stream); break;
        default: e = launch_decode<1>(qb, kb, vb, pos_dev, n_heads, group, head_dim, ctx, workspace, scale_log2, fused_out, stream); break;
    }
    if (e != cudaSuccess || !separate) return e;
    const int chunk = dec_chunk(ctx), nsplit = infer_cdiv(ctx, chunk);
    INFER_LAUNCH(attn_decode_combine, dim3(n_heads), dim3(128), 0, stream, (const float *)workspace,
                 (const float *)(workspace + (size_t)n_heads * nsplit * 2), pos_dev, ob, head_dim, ctx, chunk, nsplit);
    return cudaGetLastError();
}
