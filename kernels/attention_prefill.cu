// Causal GQA attention for seq > 1 (prefill), rows at positions pos0 + i, pos0 = *pos_dev.
// Row i attends cache positions 0 ..= min(pos0 + i, Lk - 1), Lk = min(pos0 + seq, ctx).
//
// flash_prefill_kernel<D> (D = 64, 128; tensor cores, FlashAttention-2 style):
//   grid (ceil(seq / 64), n_heads), 128 threads. Each warp owns 16 query rows; Q fragments live in
//   registers for the whole kernel. Keys are walked in tiles of 64: K and V tiles go through shared
//   memory by cp.async (rows padded by 16 bytes, conflict-free ldmatrix), the load of V_j overlapping
//   S = Q K_j^T and the load of K_{j+1} overlapping O += P V_j. S and O are mma.sync m16n8k16
//   accumulators in f32; the online softmax (log2 domain) runs on the S fragments, which are
//   repacked in registers as the bf16 A operand of P V. Heavy (late) query tiles are scheduled first.
// attn_generic_kernel (any head_dim % 8 == 0 up to 256, e.g. the tiny model's 16; also seq == 1 when
//   the decode kernel cannot take head_dim): one warp per (row, head); each lane scores one key of a
//   32-key slice, then the warp folds the slice into an online softmax, lane owning columns lane+32e.
#include "common.cuh"

#define FA_BM 64
#define FA_BN 64
#define FA_THREADS 128

__device__ __forceinline__ uint32_t ld_u32_or0(const bf16 *p, bool ok) {
    return ok ? *reinterpret_cast<const uint32_t *>(p) : 0u;
}

template <int D>
__global__ void __launch_bounds__(FA_THREADS)
flash_prefill_kernel(const bf16 *__restrict__ q, const bf16 *__restrict__ kc, const bf16 *__restrict__ vc,
                     bf16 *__restrict__ out, const int32_t *__restrict__ pos_dev, int seq, int n_heads, int group,
                     int ctx, float scale_log2) {
    pdl_launch_dependents();
    pdl_wait();  // every input may come from the previous kernel
    constexpr int LD = D + 8;
    __shared__ __align__(16) bf16 sK[FA_BN][LD];
    __shared__ __align__(16) bf16 sV[FA_BN][LD];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, qd = (lane & 3) * 2;
    const int qt = gridDim.x - 1 - blockIdx.x;
    const int h = blockIdx.y, kvh = h / group;
    const int pos0 = max(*pos_dev, 0);
    const int Lk = min(pos0 + seq, ctx);
    const int i0 = qt * FA_BM;
    const int row_a = i0 + warp * 16 + g, row_b = row_a + 8;
    const int lim_a = pos0 + row_a, lim_b = pos0 + row_b;  // last key each row may see (causal)
    const int kv_end = min(pos0 + i0 + FA_BM, Lk);
    const int ntiles = infer_cdiv(kv_end, FA_BN);
    const size_t qstride = (size_t)n_heads * D;

    uint32_t qa[D / 16][4];
    {
        const bf16 *qa_row = q + (size_t)row_a * qstride + (size_t)h * D + qd;
        const bf16 *qb_row = q + (size_t)row_b * qstride + (size_t)h * D + qd;
        const bool oka = row_a < seq, okb = row_b < seq;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            qa[kk][0] = ld_u32_or0(qa_row + kk * 16, oka);
            qa[kk][1] = ld_u32_or0(qb_row + kk * 16, okb);
            qa[kk][2] = ld_u32_or0(qa_row + kk * 16 + 8, oka);
            qa[kk][3] = ld_u32_or0(qb_row + kk * 16 + 8, okb);
        }
    }

    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;

    const bf16 *Kg = kc + (size_t)kvh * ctx * D;
    const bf16 *Vg = vc + (size_t)kvh * ctx * D;
    auto load_tile = [&](bf16 (*s)[LD], const bf16 *src, int j) {
        for (int id = tid; id < FA_BN * (D / 8); id += FA_THREADS) {
            const int r = id / (D / 8), c = id % (D / 8);
            const int key = j * FA_BN + r;
            const bool ok = key < kv_end;
            cp_async16(&s[r][c * 8], ok ? src + (size_t)key * D + c * 8 : src, ok ? 16 : 0);
        }
        cp_async_commit();
    };

    load_tile(sK, Kg, 0);
    for (int j = 0; j < ntiles; ++j) {
        cp_async_wait<0>();
        __syncthreads();  // K_j visible; every warp is done with V_{j-1}
        load_tile(sV, Vg, j);

        float s[FA_BN / 8][4];
#pragma unroll
        for (int i = 0; i < FA_BN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
            for (int p = 0; p < FA_BN / 16; ++p) {
                uint32_t r[4];
                ldmatrix_x4(r, &sK[p * 16 + (lane >> 4) * 8 + (lane & 7)][kk * 16 + ((lane >> 3) & 1) * 8]);
                mma_bf16_16816(s[2 * p], qa[kk], r[0], r[1]);
                mma_bf16_16816(s[2 * p + 1], qa[kk], r[2], r[3]);
            }

        // Mask, scale, online softmax. Fragment (nt, e): row a for e < 2, row b else; key column qd + (e & 1).
        float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < FA_BN / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = j * FA_BN + nt * 8 + qd + (e & 1);
                const int lim = e < 2 ? lim_a : lim_b;
                const float v = (key <= lim && key < Lk) ? s[nt][e] * scale_log2 : -INFINITY;
                s[nt][e] = v;
                if (e < 2) mx_a = fmaxf(mx_a, v); else mx_b = fmaxf(mx_b, v);
            }
#pragma unroll
        for (int o2 = 1; o2 <= 2; o2 <<= 1) {
            mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, o2));
            mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, o2));
        }
        const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
        const float ref_a = mn_a == -INFINITY ? 0.f : mn_a, ref_b = mn_b == -INFINITY ? 0.f : mn_b;
        const float corr_a = exp2f(m_a - ref_a), corr_b = exp2f(m_b - ref_b);
        m_a = mn_a;
        m_b = mn_b;
        float sum_a = 0.f, sum_b = 0.f;
#pragma unroll
        for (int nt = 0; nt < FA_BN / 8; ++nt) {
            s[nt][0] = exp2f(s[nt][0] - ref_a); s[nt][1] = exp2f(s[nt][1] - ref_a);
            s[nt][2] = exp2f(s[nt][2] - ref_b); s[nt][3] = exp2f(s[nt][3] - ref_b);
            sum_a += s[nt][0] + s[nt][1];
            sum_b += s[nt][2] + s[nt][3];
        }
        l_a = l_a * corr_a + sum_a;  // per-thread partial; the quad is summed at the end
        l_b = l_b * corr_b + sum_b;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
            o[dt][0] *= corr_a; o[dt][1] *= corr_a;
            o[dt][2] *= corr_b; o[dt][3] *= corr_b;
        }
        uint32_t pa[FA_BN / 16][4];
#pragma unroll
        for (int kk = 0; kk < FA_BN / 16; ++kk) {
            pa[kk][0] = pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
            pa[kk][1] = pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
            pa[kk][2] = pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[kk][3] = pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
        }

        cp_async_wait<0>();
        __syncthreads();  // V_j visible; every warp is done with K_j
        if (j + 1 < ntiles) load_tile(sK, Kg, j + 1);

#pragma unroll
        for (int kk = 0; kk < FA_BN / 16; ++kk)
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                uint32_t r[4];
                ldmatrix_x4_trans(r, &sV[kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8][dp * 16 + (lane >> 4) * 8]);
                mma_bf16_16816(o[2 * dp], pa[kk], r[0], r[1]);
                mma_bf16_16816(o[2 * dp + 1], pa[kk], r[2], r[3]);
            }
    }

#pragma unroll
    for (int o2 = 1; o2 <= 2; o2 <<= 1) {
        l_a += __shfl_xor_sync(0xffffffffu, l_a, o2);
        l_b += __shfl_xor_sync(0xffffffffu, l_b, o2);
    }
    const float inv_a = l_a > 0.f ? 1.f / l_a : 0.f, inv_b = l_b > 0.f ? 1.f / l_b : 0.f;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
        const int col = h * D + dt * 8 + qd;
        if (row_a < seq)
            *reinterpret_cast<uint32_t *>(out + (size_t)row_a * qstride + col) = pack_bf16x2(o[dt][0] * inv_a, o[dt][1] * inv_a);
        if (row_b < seq)
            *reinterpret_cast<uint32_t *>(out + (size_t)row_b * qstride + col) = pack_bf16x2(o[dt][2] * inv_b, o[dt][3] * inv_b);
    }
}

#define GP_WARPS 4

__global__ void __launch_bounds__(GP_WARPS * 32)
attn_generic_kernel(const bf16 *__restrict__ q, const bf16 *__restrict__ kc, const bf16 *__restrict__ vc,
                    bf16 *__restrict__ out, const int32_t *__restrict__ pos_dev, int seq, int n_heads, int group,
                    int D, int ctx, float scale_log2) {
    pdl_launch_dependents();
    pdl_wait();  // every input may come from the previous kernel
    __shared__ float sq[GP_WARPS][256];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wid = blockIdx.x * GP_WARPS + warp;
    if (wid >= seq * n_heads) return;  // warp-uniform; only __syncwarp below
    const int i = wid / n_heads, h = wid - i * n_heads, kvh = h / group;
    const int pos0 = max(*pos_dev, 0);
    const int Lk = min(pos0 + seq, ctx);
    const int last = min(pos0 + i, Lk - 1);
    const bf16 *qr = q + ((size_t)i * n_heads + h) * D;
    for (int d = lane; d < D; d += 32) sq[warp][d] = __bfloat162float(qr[d]) * scale_log2;
    __syncwarp();
    const bf16 *K = kc + (size_t)kvh * ctx * D, *V = vc + (size_t)kvh * ctx * D;

    float m = -INFINITY, l = 0.f, acc[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[e] = 0.f;
    for (int t0 = 0; t0 <= last; t0 += 32) {
        const int t = t0 + lane;
        float s = -INFINITY;
        if (t <= last) {
            s = 0.f;
            const bf16 *kr = K + (size_t)t * D;
            for (int c = 0; c < D; c += 8) {
                float kf[8];
                unpack8(ld_cached16(kr + c), kf);
#pragma unroll
                for (int e = 0; e < 8; ++e) s = fmaf(sq[warp][c + e], kf[e], s);
            }
        }
        const float mn = fmaxf(m, warp_max(s));  // finite: key t0 is always valid
        const float corr = exp2f(m - mn);
        const float p = t <= last ? exp2f(s - mn) : 0.f;
        l = l * corr + warp_sum(p);
        m = mn;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[e] *= corr;
        const int nv = min(32, last - t0 + 1);
        for (int jj = 0; jj < nv; ++jj) {
            const float pj = __shfl_sync(0xffffffffu, p, jj);
            const bf16 *vr = V + (size_t)(t0 + jj) * D;
#pragma unroll
            for (int e = 0; e < 8; ++e)
                if (lane + 32 * e < D) acc[e] = fmaf(pj, __bfloat162float(vr[lane + 32 * e]), acc[e]);
        }
    }
    const float inv = l > 0.f ? 1.f / l : 0.f;
    bf16 *orow = out + ((size_t)i * n_heads + h) * D;
#pragma unroll
    for (int e = 0; e < 8; ++e)
        if (lane + 32 * e < D) orow[lane + 32 * e] = __float2bfloat16_rn(acc[e] * inv);
}

// Called by infer_attention_bf16 after argument checks (head_dim % 8 == 0, <= 256, aligned pointers).
cudaError_t infer_attention_prefill_launch(const bf16 *q, const bf16 *k, const bf16 *v, bf16 *out,
                                           const int32_t *pos_dev, int seq, int n_heads, int group, int head_dim,
                                           int ctx, float scale_log2, cudaStream_t stream) {
    if (seq > 1 && (head_dim == 64 || head_dim == 128)) {
        INFER_CHECK_ARG(n_heads <= 65535);
        const dim3 grid(infer_cdiv(seq, FA_BM), n_heads);
        if (head_dim == 64)
            INFER_LAUNCH(flash_prefill_kernel<64>, grid, dim3(FA_THREADS), 0, stream, q, k, v, out, pos_dev, seq, n_heads,
                         group, ctx, scale_log2);
        else
            INFER_LAUNCH(flash_prefill_kernel<128>, grid, dim3(FA_THREADS), 0, stream, q, k, v, out, pos_dev, seq, n_heads,
                         group, ctx, scale_log2);
    } else {
        const long long warps = (long long)seq * n_heads;
        INFER_CHECK_ARG(warps <= 0x7fffffffLL);
        INFER_LAUNCH(attn_generic_kernel, dim3((unsigned)((warps + GP_WARPS - 1) / GP_WARPS)), dim3(GP_WARPS * 32), 0,
                     stream, q, k, v, out, pos_dev, seq, n_heads, group, head_dim, ctx, scale_log2);
    }
    return cudaGetLastError();
}
