// Paged KV cache (continuous batching): RoPE + K/V write into pool slots, and attention of a batch of
// rows (each from its own sequence, at its own position) over per-sequence block tables.
//
// Pool layout (per layer, K and V alike): [num_blocks, n_kv_heads, block_size, head_dim] bf16.
// Position p of a sequence with block table T lives in block T[p / block_size] at offset
// p % block_size. The per-row / per-sequence metadata (positions, slots, row_seq, block_tables) is
// int32 in DEVICE memory and grids depend only on the sizes passed to the launchers (rows,
// max_blocks, ...), never on the values, so a batch-size bucket can be captured in a CUDA graph and
// replayed with new metadata. Every device value is range-checked before it forms an address:
// garbage metadata gives garbage (zero) rows, never an out-of-bounds access.
//
// rope_kv_paged_kernel: grid (rows, ceil(units / 256)). Same unit decomposition as rope.cu (one unit
//   per rotation pair of the q/k heads, then one per v element; consecutive threads take consecutive
//   columns), but row r uses positions[r] and writes its K/V to slot slots[r].
//
// paged_attn_kernel (flash-decoding over pages): grid (n_heads / HB, nsplit, rows), 128 threads.
//   Block (hb, s, r) serves HB query heads of one GQA group (HB = largest power of two <= 8 dividing
//   the group, so each K/V row is loaded once for HB heads) of row r, over positions
//   [s * chunk, min((s + 1) * chunk, positions[r] + 1)). It walks that range in tiles of
//   TILE = (128 / TPR) * UNROLL positions with an online softmax (exp2 domain, f32 state):
//     - the tile's pool row indices are looked up once through the block table into shared memory;
//     - phase 1: TPR = head_dim / 8 consecutive lanes share one K row (16-byte loads each), scores for
//       the HB heads are reduced with xor-shuffles inside the lane group and stored in shared memory
//       (for HB <= 4 the tile's V rows are loaded together with its K rows);
//     - phase 2: one warp per head: tile max, running max / sum update, p = exp2(s - m);
//     - phase 3: acc[HB][8] per thread (rescaled by the running-max correction) += p * V.
//   At the end the row groups are reduced (shuffles, then the 4 warps through shared memory). With
//   nsplit == 1 the block normalises and writes bf16 out directly; otherwise it writes an
//   unnormalised partial (acc, max, sum) to the workspace and paged_attn_combine merges the valid
//   splits in order (deterministic).
//   nsplit is chosen on the host from rows, heads and max_blocks * block_size (all static for a
//   batch bucket): enough blocks to fill the GPU (4 per SM), at least 256 positions per split. A
//   serving batch with many rows therefore runs without splits (one kernel); a lone long decode
//   row is split like the contiguous decode kernel in attention.cu.
//   Prefill-chunk rows go through the same kernel, each row being one query at its own position:
//   correct, but a chunk of n rows reads the sequence's K/V n times (from L2 mostly) instead of once
//   per query tile as the tiled prefill kernel does: O(n * L) K/V traffic instead of O(n * L / 64).
// Workspace layout (f32, only when nsplit > 1): ml [rows][n_heads][nsplit][2] (max, sum), then
// acc [rows][n_heads][nsplit][head_dim].
#include "common.cuh"

#define PA_THREADS 128
#define PA_MIN_CHUNK 256

__global__ void __launch_bounds__(256)
rope_kv_paged_kernel(const bf16 *__restrict__ qkv, bf16 *__restrict__ q_out, bf16 *__restrict__ k_pool,
                     bf16 *__restrict__ v_pool, const float *__restrict__ cos_sin, int max_pos,
                     const int32_t *__restrict__ positions, const int32_t *__restrict__ slots, int n_heads,
                     int n_kv_heads, int head_dim, int block_size, int num_blocks) {
    pdl_launch_dependents();
    pdl_wait();  // qkv and the metadata come from earlier kernels / copies
    const int r = blockIdx.x;
    const int half = head_dim / 2;
    const int rot_units = (n_heads + n_kv_heads) * half;
    const int units = rot_units + n_kv_heads * head_dim;
    const int u = blockIdx.y * blockDim.x + threadIdx.x;
    if (u >= units) return;
    const int p = positions[r];
    const int slot = slots[r];
    const bool pos_ok = p >= 0 && p < max_pos;
    const bool slot_ok = pos_ok && slot >= 0 && slot / block_size < num_blocks;
    const int blk = slot_ok ? slot / block_size : 0;
    const int off = slot_ok ? slot - blk * block_size : 0;
    // Pool row of (blk, kv head 0, off); kv head h adds h * block_size rows.
    const size_t row0 = (size_t)blk * n_kv_heads * block_size + off;
    const int width = (n_heads + 2 * n_kv_heads) * head_dim;
    const bf16 *row = qkv + (size_t)r * width;

    if (u < rot_units) {
        const int head = u / half, j = u - head * half;
        float o1 = 0.f, o2 = 0.f;
        if (pos_ok) {
            const float x1 = __bfloat162float(row[head * head_dim + j]);
            const float x2 = __bfloat162float(row[head * head_dim + j + half]);
            const float2 o = rope_pair(x1, x2, cos_sin, p, half, j);
            o1 = o.x;
            o2 = o.y;
        }
        if (head < n_heads) {
            bf16 *dst = q_out + ((size_t)r * n_heads + head) * head_dim;
            dst[j] = __float2bfloat16_rn(o1);
            dst[j + half] = __float2bfloat16_rn(o2);
        } else if (slot_ok) {
            bf16 *dst = k_pool + (row0 + (size_t)(head - n_heads) * block_size) * head_dim;
            dst[j] = __float2bfloat16_rn(o1);
            dst[j + half] = __float2bfloat16_rn(o2);
        }
    } else if (slot_ok) {
        const int e = u - rot_units;  // index into the v part of the row
        const int kvh = e / head_dim, d = e - kvh * head_dim;
        v_pool[(row0 + (size_t)kvh * block_size) * head_dim + d] = row[(n_heads + n_kv_heads) * head_dim + e];
    }
}

extern "C" cudaError_t infer_rope_kv_paged_bf16(const void *qkv, void *q_out, void *k_pool, void *v_pool,
                                                const float *cos_sin, int max_pos, const int32_t *positions,
                                                const int32_t *slots, int rows, int n_heads, int n_kv_heads,
                                                int head_dim, int block_size, int num_blocks, cudaStream_t stream) {
    INFER_CHECK_ARG(rows >= 1 && n_heads >= 1 && n_kv_heads >= 1 && n_heads % n_kv_heads == 0);
    INFER_CHECK_ARG(head_dim >= 2 && head_dim % 2 == 0 && max_pos >= 1 && block_size >= 1 && num_blocks >= 1);
    INFER_CHECK_ARG((long long)num_blocks * block_size <= 0x7fffffffLL);
    INFER_CHECK_ARG(qkv && q_out && k_pool && v_pool && cos_sin && positions && slots);
    INFER_CHECK_ARG((reinterpret_cast<uintptr_t>(cos_sin) & 7u) == 0);
    const int units = (n_heads + n_kv_heads) * (head_dim / 2) + n_kv_heads * head_dim;
    INFER_CHECK_ARG(infer_cdiv(units, 256) <= 65535);
    const dim3 grid(rows, infer_cdiv(units, 256));
    INFER_LAUNCH(rope_kv_paged_kernel, grid, dim3(256), 0, stream, static_cast<const bf16 *>(qkv),
                 static_cast<bf16 *>(q_out), static_cast<bf16 *>(k_pool), static_cast<bf16 *>(v_pool), cos_sin,
                 max_pos, positions, slots, n_heads, n_kv_heads, head_dim, block_size, num_blocks);
    return cudaGetLastError();
}

// ---------------------------------------------------------------------------------------------
// Paged attention
// ---------------------------------------------------------------------------------------------
struct PagedArgs {
    const bf16 *q;
    const bf16 *k_pool;
    const bf16 *v_pool;
    bf16 *out;
    const int32_t *positions;
    const int32_t *row_seq;
    const int32_t *block_tables;
    float *ws_ml;
    float *ws_acc;
    int n_seqs, max_blocks, n_heads, group, n_kv_heads, block_size, num_blocks, chunk, nsplit;
    float scale_log2;
};

// Tokens of row r's sequence visible to it (0 for metadata outside its ranges).
__device__ __forceinline__ int paged_len(const PagedArgs &a, int r, int *seq_out) {
    const int pos = a.positions[r], seq = a.row_seq[r];
    const bool ok = pos >= 0 && pos / a.block_size < a.max_blocks && seq >= 0 && seq < a.n_seqs;
    *seq_out = ok ? seq : 0;
    return ok ? pos + 1 : 0;
}

template <int HB, int TPR, int UNROLL = (HB <= 4 ? 8 : 4), bool PREV = (HB <= 4)>
__global__ void __launch_bounds__(PA_THREADS) paged_attn_kernel(const PagedArgs a) {
    constexpr int D = TPR * 8, NRG = PA_THREADS / TPR, TILE = NRG * UNROLL, NW = PA_THREADS / 32;
    __shared__ float sc[HB][TILE];      // scores, then probabilities, of the current tile
    __shared__ int s_row[TILE];         // pool row (block, kv head, offset) of each tile position
    __shared__ float s_m[HB], s_l[HB], s_corr[HB];
    __shared__ float red[NW][HB][D];    // cross-warp reduction of acc
    pdl_launch_dependents();
    pdl_wait();  // q, the pools and the metadata come from earlier kernels / copies
    const int h0 = blockIdx.x * HB, split = blockIdx.y, r = blockIdx.z;
    const int kvh = h0 / a.group;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int sub = tid % TPR, rg = tid / TPR;
    int seq;
    const int L = paged_len(a, r, &seq);
    const int t_begin = split * a.chunk, t_end = min(L, t_begin + a.chunk);
    // Whole block: nothing to do (the combine kernel ignores this split). With one split the block
    // goes on and writes zeros for an empty row.
    if (t_begin >= t_end && a.nsplit > 1) return;
    const int32_t *table = a.block_tables + (size_t)seq * a.max_blocks;

    float qf[HB][8];
#pragma unroll
    for (int j = 0; j < HB; ++j) {
        unpack8(ld_cached16(a.q + ((size_t)r * a.n_heads + h0 + j) * D + sub * 8), qf[j]);
#pragma unroll
        for (int e = 0; e < 8; ++e) qf[j][e] *= a.scale_log2;
    }
    float acc[HB][8];
#pragma unroll
    for (int j = 0; j < HB; ++j)
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[j][e] = 0.f;
    if (tid < HB) {
        s_m[tid] = -INFINITY;
        s_l[tid] = 0.f;
    }
    const bf16 *K = a.k_pool + sub * 8, *V = a.v_pool + sub * 8;

    for (int tt = t_begin; tt < t_end; tt += TILE) {  // uniform over the block
        const int nt = min(TILE, t_end - tt);
        __syncthreads();  // the previous tile's readers of s_row / sc are done
        for (int i = tid; i < nt; i += PA_THREADS) {
            const int t = tt + i, b = table[t / a.block_size];
            s_row[i] = (b >= 0 && b < a.num_blocks) ? (b * a.n_kv_heads + kvh) * a.block_size + t % a.block_size : -1;
        }
        __syncthreads();

        // Phase 1: scores (and, for PREV, the V rows too, so the block waits on memory once).
        uint4 kv[UNROLL], vv[UNROLL];
        int prow[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int i = rg + u * NRG;
            prow[u] = i < nt ? s_row[i] : -1;
            kv[u] = prow[u] >= 0 ? ld_stream16(K + (size_t)prow[u] * D) : make_uint4(0, 0, 0, 0);
        }
        if (PREV) {
#pragma unroll
            for (int u = 0; u < UNROLL; ++u)
                vv[u] = prow[u] >= 0 ? ld_stream16(V + (size_t)prow[u] * D) : make_uint4(0, 0, 0, 0);
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
#pragma unroll
            for (int o = TPR >> 1; o > 0; o >>= 1)
#pragma unroll
                for (int j = 0; j < HB; ++j) d[j] += __shfl_xor_sync(0xffffffffu, d[j], o);
            const int i = rg + u * NRG;
            if (sub == 0 && i < nt)
#pragma unroll
                for (int j = 0; j < HB; ++j) sc[j][i] = prow[u] >= 0 ? d[j] : -INFINITY;
        }
        __syncthreads();

        // Phase 2: online softmax update, one warp per head.
        for (int j = warp; j < HB; j += NW) {
            float mx = -INFINITY;
            for (int i = lane; i < nt; i += 32) mx = fmaxf(mx, sc[j][i]);
            mx = warp_max(mx);
            const float m_old = s_m[j], m_new = fmaxf(m_old, mx);
            const bool none = m_new == -INFINITY;  // nothing valid yet (bad metadata only)
            float sum = 0.f;
            for (int i = lane; i < nt; i += 32) {
                const float p = none ? 0.f : exp2f(sc[j][i] - m_new);
                sc[j][i] = p;
                sum += p;
            }
            sum = warp_sum(sum);
            if (lane == 0) {
                const float corr = none ? 1.f : exp2f(m_old - m_new);
                s_corr[j] = corr;
                s_m[j] = m_new;
                s_l[j] = s_l[j] * corr + sum;
            }
        }
        __syncthreads();

        // Phase 3: acc = acc * corr + sum_i p[i] * V[i] over this thread's 8 columns.
#pragma unroll
        for (int j = 0; j < HB; ++j) {
            const float c = s_corr[j];
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[j][e] *= c;
        }
        if (!PREV) {
#pragma unroll
            for (int u = 0; u < UNROLL; ++u)
                vv[u] = prow[u] >= 0 ? ld_stream16(V + (size_t)prow[u] * D) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int i = rg + u * NRG;
            if (i < nt) {
                float vf[8];
                unpack8(vv[u], vf);
#pragma unroll
                for (int j = 0; j < HB; ++j) {
                    const float p = sc[j][i];
#pragma unroll
                    for (int e = 0; e < 8; ++e) acc[j][e] = fmaf(p, vf[e], acc[j][e]);
                }
            }
        }
    }

    // Reduce the row groups of a warp (lanes with equal `sub`), then the warps through shared memory.
#pragma unroll
    for (int o = TPR; o < 32; o <<= 1)
#pragma unroll
        for (int j = 0; j < HB; ++j)
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[j][e] += __shfl_xor_sync(0xffffffffu, acc[j][e], o);
    if (lane < TPR)
#pragma unroll
        for (int j = 0; j < HB; ++j)
#pragma unroll
            for (int e = 0; e < 8; ++e) red[warp][j][sub * 8 + e] = acc[j][e];
    __syncthreads();  // also publishes s_m / s_l of an empty range
    for (int idx = tid; idx < HB * D; idx += PA_THREADS) {
        const int j = idx / D, d = idx - j * D;
        float s = 0.f;
#pragma unroll
        for (int w = 0; w < NW; ++w) s += red[w][j][d];
        const size_t rh = (size_t)r * a.n_heads + h0 + j;
        if (a.nsplit == 1) {
            const float l = s_l[j];
            a.out[rh * D + d] = __float2bfloat16_rn(l > 0.f ? s / l : 0.f);
        } else {
            a.ws_acc[(rh * a.nsplit + split) * D + d] = s;
        }
    }
    if (a.nsplit > 1 && tid < HB) {
        const size_t at = (((size_t)r * a.n_heads + h0 + tid) * a.nsplit + split) * 2;
        a.ws_ml[at] = s_m[tid];
        a.ws_ml[at + 1] = s_l[tid];
    }
}

// One block per (query head, row); merges the row's valid splits in order.
__global__ void __launch_bounds__(128) paged_attn_combine(const PagedArgs a, int D) {
    pdl_launch_dependents();
    pdl_wait();  // partials of the split kernel
    const int h = blockIdx.x, r = blockIdx.y;
    int seq;
    const int L = paged_len(a, r, &seq);
    const int nv = min(L > 0 ? infer_cdiv(L, a.chunk) : 0, a.nsplit);
    const size_t rh = (size_t)r * a.n_heads + h;
    const float *ml = a.ws_ml + rh * a.nsplit * 2;
    const float *acc = a.ws_acc + rh * a.nsplit * D;
    float M = -INFINITY;
    for (int s = 0; s < nv; ++s) M = fmaxf(M, ml[2 * s]);
    float l = 0.f;
    if (M != -INFINITY)
        for (int s = 0; s < nv; ++s) l += ml[2 * s + 1] * exp2f(ml[2 * s] - M);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float o = 0.f;
        if (M != -INFINITY)
            for (int s = 0; s < nv; ++s) o += acc[(size_t)s * D + d] * exp2f(ml[2 * s] - M);
        a.out[rh * D + d] = __float2bfloat16_rn(o * inv);
    }
}

struct PagedPlan {
    int hb, nsplit, chunk;
};

// Heads per block, number of splits and positions per split; a pure function of the sizes (and the
// device's SM count), shared by the launcher and the workspace query.
static PagedPlan paged_plan(int rows, int n_heads, int n_kv_heads, int max_ctx) {
    const int group = n_heads / n_kv_heads;
    PagedPlan p;
    p.hb = group % 8 == 0 ? 8 : group % 4 == 0 ? 4 : group % 2 == 0 ? 2 : 1;
    const long long base = (long long)rows * (n_heads / p.hb);
    const long long target = 4LL * infer_num_sms();
    long long ns = base >= target ? 1 : (target + base - 1) / base;
    ns = min(ns, (long long)infer_cdiv(max_ctx, PA_MIN_CHUNK));
    ns = ns < 1 ? 1 : ns;
    const int per = (int)((max_ctx + ns - 1) / ns);
    p.chunk = infer_cdiv(per, 64) * 64;
    p.nsplit = infer_cdiv(max_ctx, p.chunk);
    return p;
}

static bool paged_sizes_ok(int rows, int n_heads, int n_kv_heads, int head_dim, int block_size, int max_blocks) {
    const int tpr = head_dim / 8;
    return rows >= 1 && rows <= 65535 && n_heads >= 1 && n_kv_heads >= 1 && n_heads % n_kv_heads == 0 &&
           head_dim % 8 == 0 && tpr >= 2 && tpr <= 32 && (tpr & (tpr - 1)) == 0 && block_size >= 1 &&
           max_blocks >= 1 && (long long)block_size * max_blocks <= 0x7fffffffLL;
}

extern "C" size_t infer_paged_attention_workspace_bytes(int rows, int n_heads, int n_kv_heads, int head_dim,
                                                        int block_size, int max_blocks) {
    if (!paged_sizes_ok(rows, n_heads, n_kv_heads, head_dim, block_size, max_blocks)) return 0;
    const PagedPlan p = paged_plan(rows, n_heads, n_kv_heads, block_size * max_blocks);
    if (p.nsplit <= 1) return 0;
    return (size_t)rows * n_heads * p.nsplit * (size_t)(head_dim + 2) * sizeof(float);
}

template <int HB>
static cudaError_t paged_launch_hb(dim3 grid, const PagedArgs &a, int head_dim, cudaStream_t s) {
    switch (head_dim) {
        case 16: INFER_LAUNCH(paged_attn_kernel<HB, 2>, grid, dim3(PA_THREADS), 0, s, a); break;
        case 32: INFER_LAUNCH(paged_attn_kernel<HB, 4>, grid, dim3(PA_THREADS), 0, s, a); break;
        case 64: INFER_LAUNCH(paged_attn_kernel<HB, 8>, grid, dim3(PA_THREADS), 0, s, a); break;
        case 128: INFER_LAUNCH(paged_attn_kernel<HB, 16>, grid, dim3(PA_THREADS), 0, s, a); break;
        case 256: INFER_LAUNCH(paged_attn_kernel<HB, 32>, grid, dim3(PA_THREADS), 0, s, a); break;
        default: return cudaErrorInvalidValue;
    }
    return cudaSuccess;
}

extern "C" cudaError_t infer_paged_attention_bf16(const void *q, const void *k_pool, const void *v_pool, void *out,
                                                  const int32_t *positions, const int32_t *row_seq,
                                                  const int32_t *block_tables, int rows, int n_seqs,
                                                  int max_blocks, int n_heads, int n_kv_heads, int head_dim,
                                                  int block_size, int num_blocks, float *workspace,
                                                  size_t workspace_bytes, cudaStream_t stream) {
    INFER_CHECK_ARG(paged_sizes_ok(rows, n_heads, n_kv_heads, head_dim, block_size, max_blocks));
    INFER_CHECK_ARG(n_seqs >= 1 && num_blocks >= 1);
    INFER_CHECK_ARG((long long)num_blocks * n_kv_heads * block_size <= 0x7fffffffLL);  // pool rows fit an int
    INFER_CHECK_ARG(q && k_pool && v_pool && out && positions && row_seq && block_tables);
    INFER_CHECK_ARG(infer_aligned16(q) && infer_aligned16(k_pool) && infer_aligned16(v_pool) && infer_aligned16(out));
    const PagedPlan p = paged_plan(rows, n_heads, n_kv_heads, block_size * max_blocks);
    INFER_CHECK_ARG(p.nsplit <= 65535);
    if (p.nsplit > 1)
        INFER_CHECK_ARG(workspace && workspace_bytes >= infer_paged_attention_workspace_bytes(
                                                            rows, n_heads, n_kv_heads, head_dim, block_size, max_blocks));
    PagedArgs a;
    a.q = static_cast<const bf16 *>(q);
    a.k_pool = static_cast<const bf16 *>(k_pool);
    a.v_pool = static_cast<const bf16 *>(v_pool);
    a.out = static_cast<bf16 *>(out);
    a.positions = positions;
    a.row_seq = row_seq;
    a.block_tables = block_tables;
    a.ws_ml = p.nsplit > 1 ? workspace : nullptr;
    a.ws_acc = p.nsplit > 1 ? workspace + (size_t)rows * n_heads * p.nsplit * 2 : nullptr;
    a.n_seqs = n_seqs;
    a.max_blocks = max_blocks;
    a.n_heads = n_heads;
    a.group = n_heads / n_kv_heads;
    a.n_kv_heads = n_kv_heads;
    a.block_size = block_size;
    a.num_blocks = num_blocks;
    a.chunk = p.chunk;
    a.nsplit = p.nsplit;
    a.scale_log2 = 1.4426950408889634f / sqrtf((float)head_dim);
    const dim3 grid(n_heads / p.hb, p.nsplit, rows);
    cudaError_t e;
    switch (p.hb) {
        case 8: e = paged_launch_hb<8>(grid, a, head_dim, stream); break;
        case 4: e = paged_launch_hb<4>(grid, a, head_dim, stream); break;
        case 2: e = paged_launch_hb<2>(grid, a, head_dim, stream); break;
        default: e = paged_launch_hb<1>(grid, a, head_dim, stream); break;
    }
    if (e != cudaSuccess) return e;
    if (p.nsplit > 1) INFER_LAUNCH(paged_attn_combine, dim3(n_heads, rows), dim3(128), 0, stream, a, head_dim);
    return cudaGetLastError();
}
