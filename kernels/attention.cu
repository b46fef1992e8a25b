// Attention launcher + split-KV decode (flash-decoding) for seq == 1. Prefill kernels: attention_prefill.cu.
//
// Decode work decomposition (graph-capturable: the grid depends on ctx only, never on *pos_dev):
//  - Both kernels use programmatic dependent launch (see common.cuh) and wait before reading.
//  - Split kernel, grid (n_heads / HB, nsplit), 512 threads (16 warps; INFER_ATTN_WARPS=8 for 256). Block (hb, s) serves HB query heads of one
//    GQA group (HB = largest power of two <= 8 dividing the group size, so K/V rows are loaded once
//    for HB heads) over cache positions [s*chunk, min((s+1)*chunk, L)), L = *pos_dev + 1; blocks past
//    L exit at once. chunk = dec_chunk(ctx) (256 .. 4096, at most 64 splits up to ctx = 262144).
//    Each warp runs an online-softmax pass over its rows (see attn_decode_split); the warps merge
//    once through shared memory. head_dim 16/32/64/128/256 (others take the prefill kernel).
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

#define ATTN_MAX_HEAD_BLOCKS 4096

#include <stdlib.h>

__device__ unsigned int g_attn_arrivals[ATTN_MAX_HEAD_BLOCKS];  // see the header comment

// Implemented in attention_prefill.cu.
cudaError_t infer_attention_prefill_launch(const bf16 *q, const bf16 *k, const bf16 *v, bf16 *out,
                                           const int32_t *pos_dev, int seq, int n_heads, int group, int head_dim,
                                           int ctx, float scale_log2, cudaStream_t stream);

// Cache positions per split: 256 (one batch of loads per thread for head_dim 64), doubled while
// that would give more than 64 splits. Up to L = 256 one block per head block does everything.
// INFER_ATTN_CHUNK=<power of two in 32..4096> sets the smallest chunk (A/B timing).
static int dec_chunk(int ctx) {
    static const int c0 = [] {
        const char *e = getenv("INFER_ATTN_CHUNK");
        const int v = e ? atoi(e) : 0;
        return v >= 32 && v <= 4096 && (v & (v - 1)) == 0 ? v : 256;
    }();
    int c = c0;
    while (c < 4096 && infer_cdiv(ctx, c) > 64) c *= 2;
    return c;
}

// Split kernel: block (hb, s), NW warps (16; 8 with INFER_ATTN_WARPS=8). D/8 consecutive lanes
// share one cache row (16 bytes each), so a warp covers RPW = 256/D rows per load and the block
// ROWS = NW*RPW. Each warp runs flash attention over its own rows with a running max per head that
// is uniform over the warp (the batch max is reduced across the warp's row groups), so no block
// barrier separates scores, softmax and the V sum: per batch of UNROLL rows per thread the K and V
// loads are issued together (one memory round trip), then scores (xor-shuffles in the lane group),
// rescale, p*V. At the end the NW warps' (max, sum, acc) are merged once through shared memory.
template <int HB, int D, int NW>
struct DecCfg {
    static constexpr int TPR = D / 8, RPW = 32 / TPR, ROWS = NW * RPW;
    // Registers bound UNROLL (q and acc are HB x 8 floats, plus 2 x UNROLL x uint4); one batch of
    // loads covers at most 256 rows.
    static constexpr int UNROLL_REGS = HB * D <= 256 ? 8 : 4;
    static constexpr int UNROLL = UNROLL_REGS < 256 / ROWS ? UNROLL_REGS : (256 / ROWS > 0 ? 256 / ROWS : 1);
};

template <int HB, int D, int NW>
__global__ void __launch_bounds__(NW * 32)
attn_decode_split(const bf16 *__restrict__ q, const bf16 *__restrict__ kc, const bf16 *__restrict__ vc,
                  const int32_t *__restrict__ pos_dev, int group, int ctx, int chunk, int nsplit,
                  float *__restrict__ ws_ml, float *__restrict__ ws_acc, float scale_log2, bf16 *__restrict__ out) {
    using C = DecCfg<HB, D, NW>;
    constexpr int TPR = C::TPR, RPW = C::RPW, ROWS = C::ROWS, UNROLL = C::UNROLL, NT = NW * 32;
    __shared__ float s_acc[NW][HB][D];
    __shared__ float s_m[NW][HB], s_l[NW][HB];
    KPROF_SCOPE(2000 + HB);
    pdl_launch_dependents();
    pdl_wait();  // q, the caches and *pos_dev come from earlier kernels / copies
    KPROF_WAITED();
    const int h0 = blockIdx.x * HB, kvh = h0 / group, split = blockIdx.y;
    const int L = min(*pos_dev + 1, ctx);
    const int t0 = split * chunk;
    if (t0 >= L) return;  // whole block: nothing to do (the combine ignores this split)
    const int nt = min(chunk, L - t0);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int sub = lane % TPR, rg = lane / TPR;
    const int row0 = warp * RPW + rg;  // this thread's first row in every batch
    const bf16 *K = kc + ((size_t)kvh * ctx + t0) * D + sub * 8;
    const bf16 *V = vc + ((size_t)kvh * ctx + t0) * D + sub * 8;

    float qf[HB][8];
#pragma unroll
    for (int j = 0; j < HB; ++j) {
        unpack8(ld_cached16(q + (size_t)(h0 + j) * D + sub * 8), qf[j]);
#pragma unroll
        for (int e = 0; e < 8; ++e) qf[j][e] *= scale_log2;
    }
    float m[HB], l[HB], acc[HB][8];
#pragma unroll
    for (int j = 0; j < HB; ++j) {
        m[j] = -INFINITY;
        l[j] = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[j][e] = 0.f;
    }

    for (int base = 0; base < nt; base += ROWS * UNROLL) {  // uniform over the block
        uint4 kv[UNROLL], vv[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int t = base + u * ROWS + row0;
            kv[u] = t < nt ? ld_stream16(K + (size_t)t * D) : make_uint4(0, 0, 0, 0);
            vv[u] = t < nt ? ld_stream16(V + (size_t)t * D) : make_uint4(0, 0, 0, 0);
        }
        float sc[UNROLL][HB];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            float kf[8];
            unpack8(kv[u], kf);
#pragma unroll
            for (int j = 0; j < HB; ++j) {
                float d = 0.f;
#pragma unroll
                for (int e = 0; e < 8; ++e) d = fmaf(qf[j][e], kf[e], d);
                sc[u][j] = d;
            }
#pragma unroll
            for (int o = TPR >> 1; o > 0; o >>= 1)
#pragma unroll
                for (int j = 0; j < HB; ++j) sc[u][j] += __shfl_xor_sync(0xffffffffu, sc[u][j], o);
            if (base + u * ROWS + row0 >= nt)
#pragma unroll
                for (int j = 0; j < HB; ++j) sc[u][j] = -INFINITY;
        }
#pragma unroll
        for (int j = 0; j < HB; ++j) {
            float mb = sc[0][j];
#pragma unroll
            for (int u = 1; u < UNROLL; ++u) mb = fmaxf(mb, sc[u][j]);
#pragma unroll
            for (int o = TPR; o < 32; o <<= 1) mb = fmaxf(mb, __shfl_xor_sync(0xffffffffu, mb, o));
            const float mn = fmaxf(m[j], mb);
            const float mu = mn == -INFINITY ? 0.f : mn;  // no valid row yet: keep zeros, avoid inf - inf
            const float corr = exp2f(m[j] - mu);
            l[j] *= corr;
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[j][e] *= corr;
            m[j] = mn;
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const float pr = exp2f(sc[u][j] - mu);
                float vf[8];
                unpack8(vv[u], vf);
                l[j] += pr;
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[j][e] = fmaf(pr, vf[e], acc[j][e]);
            }
        }
    }
    // The warp's row groups share m: add their sums, then publish the warp's state.
#pragma unroll
    for (int o = TPR; o < 32; o <<= 1)
#pragma unroll
        for (int j = 0; j < HB; ++j) {
            l[j] += __shfl_xor_sync(0xffffffffu, l[j], o);
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[j][e] += __shfl_xor_sync(0xffffffffu, acc[j][e], o);
        }
    if (rg == 0) {
#pragma unroll
        for (int j = 0; j < HB; ++j) {
#pragma unroll
            for (int e = 0; e < 8; ++e) s_acc[warp][j][sub * 8 + e] = acc[j][e];
            if (sub == 0) {
                s_m[warp][j] = m[j];
                s_l[warp][j] = l[j];
            }
        }
    }
    __syncthreads();
    const int nv = infer_cdiv(L, chunk);
    for (int idx = tid; idx < HB * D; idx += NT) {
        const int j = idx / D, d = idx - j * D;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < NW; ++w) M = fmaxf(M, s_m[w][j]);
        float o = 0.f, ls = 0.f;
#pragma unroll
        for (int w = 0; w < NW; ++w) {
            const float wt = s_m[w][j] == -INFINITY ? 0.f : exp2f(s_m[w][j] - M);
            o = fmaf(s_acc[w][j][d], wt, o);
            ls = fmaf(s_l[w][j], wt, ls);
        }
        if (out && nv == 1) {  // the only split: normalise and store, no partials
            out[(size_t)(h0 + j) * D + d] = __float2bfloat16_rn(o * (ls > 0.f ? 1.f / ls : 0.f));
        } else {
            ws_acc[((size_t)(h0 + j) * nsplit + split) * D + d] = o;
            if (d == 0) {
                ws_ml[((size_t)(h0 + j) * nsplit + split) * 2 + 0] = M;
                ws_ml[((size_t)(h0 + j) * nsplit + split) * 2 + 1] = ls;
            }
        }
    }
    if (!out || nv == 1) return;  // the combine kernel merges / nothing left to merge

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
    for (int idx = tid; idx < HB * D; idx += NT) {
        const int j = idx / D, d = idx - j * D;
        const float *ml = ws_ml + (size_t)(h0 + j) * nsplit * 2;
        const float *acc_p = ws_acc + (size_t)(h0 + j) * nsplit * D + d;
        float M = -INFINITY;
        for (int sp = 0; sp < nv; ++sp) M = fmaxf(M, __ldcg(ml + 2 * sp));
        float lsum = 0.f, o = 0.f;
        for (int sp = 0; sp < nv; ++sp) {
            const float w = exp2f(__ldcg(ml + 2 * sp) - M);
            lsum += __ldcg(ml + 2 * sp + 1) * w;
            o += __ldcg(acc_p + (size_t)sp * D) * w;
        }
        out[(size_t)(h0 + j) * D + d] = __float2bfloat16_rn(o * (lsum > 0.f ? 1.f / lsum : 0.f));
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

static int dec_warps() {  // INFER_ATTN_WARPS=8|16 (A/B timing); default 16
    static const int w = [] {
        const char *e = getenv("INFER_ATTN_WARPS");
        return e && atoi(e) == 8 ? 8 : 16;
    }();
    return w;
}

template <int HB, int D>
static cudaError_t launch_decode_d(const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *pos, int n_heads,
                                   int group, int ctx, float *ws, float scale_log2, bf16 *out, cudaStream_t s) {
    if constexpr (HB * D > 512) {  // shared memory holds 16 warps x HB x D floats (<= 32 KB): halve HB
        return launch_decode_d<HB / 2, D>(q, k, v, pos, n_heads, group, ctx, ws, scale_log2, out, s);
    } else {
        const int chunk = dec_chunk(ctx), nsplit = infer_cdiv(ctx, chunk);
        float *ml = ws, *acc = ws + (size_t)n_heads * nsplit * 2;
        if (dec_warps() == 8)
            INFER_LAUNCH(attn_decode_split<HB, D, 8>, dim3(n_heads / HB, nsplit), dim3(256), 0, s, q, k, v, pos,
                         group, ctx, chunk, nsplit, ml, acc, scale_log2, out);
        else
            INFER_LAUNCH(attn_decode_split<HB, D, 16>, dim3(n_heads / HB, nsplit), dim3(512), 0, s, q, k, v, pos,
                         group, ctx, chunk, nsplit, ml, acc, scale_log2, out);
        return cudaSuccess;
    }
}

template <int HB>
static cudaError_t launch_decode(const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *pos, int n_heads,
                                 int group, int D, int ctx, float *ws, float scale_log2, bf16 *out, cudaStream_t s) {
    switch (D) {
        case 16: return launch_decode_d<HB, 16>(q, k, v, pos, n_heads, group, ctx, ws, scale_log2, out, s);
        case 32: return launch_decode_d<HB, 32>(q, k, v, pos, n_heads, group, ctx, ws, scale_log2, out, s);
        case 64: return launch_decode_d<HB, 64>(q, k, v, pos, n_heads, group, ctx, ws, scale_log2, out, s);
        case 128: return launch_decode_d<HB, 128>(q, k, v, pos, n_heads, group, ctx, ws, scale_log2, out, s);
        case 256: return launch_decode_d<HB, 256>(q, k, v, pos, n_heads, group, ctx, ws, scale_log2, out, s);
        default: return cudaErrorInvalidValue;  // the caller routes other head sizes to the prefill kernel
    }
}

// Query heads per block of the decode split kernel: the largest power of two <= 8 dividing the
// group (K/V rows loaded once for HB heads), except a group of 4 with head_dim 64 (Llama-3.2-1B)
// when the launch serves at most 2,048 positions (len_bound): 2 heads per block there, and 1 up
// to 512 positions (more blocks, each K/V row read 2 or 4 times from L2, a shorter chain per
// block). The engine captures separate graphs for the ranges (op::attention::decode_range).
// H100, per-op decode step of Llama-3.2-1B (kernel harness, two rounds each): session 14,
// 2 vs 4 heads: 1,020 vs 1,041 us at position 144 (1,024 cache), with a 4,096 cache 1,060 vs
// 1,095 at 1,023 and 1,076 vs 1,100 at 2,047, but 1,154 vs 1,128 at 4,095; session 15 (GEMV
// register caps), 1 vs 2: 973 vs 985 us at 144, but 1,020 vs 1,000 at 1,023 and 1,087 vs 1,043
// at 2,047. INFER_ATTN_HB=1|2|4|8 overrides it (A/B timing; must divide the group).
static int decode_heads_per_block(int group, int head_dim, int len_bound) {
    static const int hb_env = [] {
        const char *e = getenv("INFER_ATTN_HB");
        return e ? atoi(e) : 0;
    }();
    if (hb_env > 0 && hb_env <= 8 && group % hb_env == 0 && (hb_env & (hb_env - 1)) == 0) return hb_env;
    if (group == 4 && head_dim == 64 && len_bound <= 512) return 1;
    if (group == 4 && head_dim == 64 && len_bound <= 2048) return 2;
    return group % 8 == 0 ? 8 : group % 4 == 0 ? 4 : group % 2 == 0 ? 2 : 1;
}

extern "C" cudaError_t infer_attention_bf16(const void *q, const void *k_cache, const void *v_cache, void *out,
                                            const int32_t *pos_dev, int seq, int n_heads, int n_kv_heads,
                                            int head_dim, int ctx, float *workspace, size_t workspace_bytes,
                                            cudaStream_t stream) {
    return infer_attention_bound_bf16(q, k_cache, v_cache, out, pos_dev, seq, n_heads, n_kv_heads, head_dim, ctx, ctx,
                                      workspace, workspace_bytes, stream);
}

extern "C" cudaError_t infer_attention_bound_bf16(const void *q, const void *k_cache, const void *v_cache, void *out,
                                                  const int32_t *pos_dev, int seq, int n_heads, int n_kv_heads,
                                                  int head_dim, int ctx, int len_bound, float *workspace,
                                                  size_t workspace_bytes, cudaStream_t stream) {
    INFER_CHECK_ARG(len_bound >= 1);
    INFER_CHECK_ARG(seq >= 1 && n_heads >= 1 && n_kv_heads >= 1 && n_heads % n_kv_heads == 0);
    INFER_CHECK_ARG(head_dim >= 8 && head_dim <= 256 && head_dim % 8 == 0 && ctx >= 1 && seq <= ctx);
    INFER_CHECK_ARG(q && k_cache && v_cache && out && pos_dev);
    INFER_CHECK_ARG(infer_aligned16(q) && infer_aligned16(k_cache) && infer_aligned16(v_cache) && infer_aligned16(out));
    const bf16 *qb = static_cast<const bf16 *>(q), *kb = static_cast<const bf16 *>(k_cache),
               *vb = static_cast<const bf16 *>(v_cache);
    bf16 *ob = static_cast<bf16 *>(out);
    const int group = n_heads / n_kv_heads;
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)head_dim);
    const bool dec_dim = head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128 || head_dim == 256;
    if (seq > 1 || !dec_dim)
        return infer_attention_prefill_launch(qb, kb, vb, ob, pos_dev, seq, n_heads, group, head_dim, ctx,
                                              scale_log2, stream);

    INFER_CHECK_ARG(workspace && workspace_bytes >= infer_attention_workspace_bytes(n_heads, head_dim, ctx));
    INFER_CHECK_ARG(nsplit_for(ctx) <= 65535);
    const int hb = decode_heads_per_block(group, head_dim, len_bound);
    static const bool separate_env = [] {
        const char *e = getenv("INFER_ATTN_COMBINE");
        return e && e[0] == '1';
    }();
    const bool separate = separate_env || n_heads > ATTN_MAX_HEAD_BLOCKS;  // counters per head block (HB >= 1)
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
