// GGML block-quantized weights on the GPU: GEMV for decode (m <= 8), dequantization to bf16 (the
// prefill path feeds the result to cuBLASLt), and embedding rows. Block layouts are ggml's
// (see tensor/quant.rs): Q8_0 (34 B / 32), Q4_0 (18 B / 32), Q4_1 (20 B / 32), Q4_K (144 B / 256),
// Q6_K (210 B / 256). Every block size is even and rows are whole blocks, so 2-byte loads are
// always aligned; nothing wider is assumed.
// Decomposition: a row is cut into "items" of 32 consecutive elements (one Q8_0/Q4_x block, one
// Q4_K sub-block, one Q6_K quarter-half); item -> 32 f32 values is `dequant32`.
//  - GEMV: one warp per weight row, lane l takes items l, l + 32, ... (a warp reads contiguous
//    blocks); x (bf16, m rows) comes through L1; f32 accumulators per x row, xor-shuffle reduce.
//  - dequant / embedding: one thread per item.
#include "common.cuh"

#define QG_THREADS 128
#define QG_MAX_M 8

enum { GGML_Q4_0 = 2, GGML_Q4_1 = 3, GGML_Q8_0 = 8, GGML_Q4_K = 12, GGML_Q6_K = 14 };

__device__ __forceinline__ uint32_t ld_u16(const uint8_t *p) { return *reinterpret_cast<const uint16_t *>(p); }
__device__ __forceinline__ float ld_f16(const uint8_t *p) {
    return __half2float(__ushort_as_half((unsigned short)ld_u16(p)));
}

// Bytes per block and items (32-element groups) per block of each type.
__host__ __device__ constexpr int q_block_bytes(int t) {
    return t == GGML_Q8_0 ? 34 : t == GGML_Q4_0 ? 18 : t == GGML_Q4_1 ? 20 : t == GGML_Q4_K ? 144 : 210;
}
__host__ __device__ constexpr int q_items(int t) { return (t == GGML_Q4_K || t == GGML_Q6_K) ? 8 : 1; }

// The 32 values of item `it` of a row starting at `row`.
template <int T>
__device__ __forceinline__ void dequant32(const uint8_t *__restrict__ row, int it, float v[32]) {
    const uint8_t *b = row + (size_t)(it / q_items(T)) * q_block_bytes(T);
    const int j = it % q_items(T);
    if (T == GGML_Q8_0) {
        const float d = ld_f16(b);
#pragma unroll
        for (int e = 0; e < 32; e += 2) {
            const uint32_t q = ld_u16(b + 2 + e);
            v[e] = d * (float)(int8_t)(q & 0xff);
            v[e + 1] = d * (float)(int8_t)(q >> 8);
        }
    } else if (T == GGML_Q4_0 || T == GGML_Q4_1) {
        const float d = ld_f16(b);
        const float m = T == GGML_Q4_1 ? ld_f16(b + 2) : -8.f * d;
        const uint8_t *qs = b + (T == GGML_Q4_1 ? 4 : 2);
#pragma unroll
        for (int e = 0; e < 16; e += 2) {
            const uint32_t q = ld_u16(qs + e);
            v[e] = d * (float)(q & 0xf) + m;
            v[e + 16] = d * (float)((q >> 4) & 0xf) + m;
            v[e + 1] = d * (float)((q >> 8) & 0xf) + m;
            v[e + 17] = d * (float)((q >> 12) & 0xf) + m;
        }
    } else if (T == GGML_Q4_K) {
        // Sub-block j (32 values): chunk c = j / 2 of 32 bytes, low nibbles for even j, high for odd.
        const float d = ld_f16(b), dmin = ld_f16(b + 2);
        const uint8_t *sc = b + 4;
        uint32_t s, mn;
        if (j < 4) {
            s = sc[j] & 63;
            mn = sc[j + 4] & 63;
        } else {
            s = (sc[j + 4] & 0x0f) | ((sc[j - 4] >> 6) << 4);
            mn = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
        }
        const float dd = d * (float)s, mm = dmin * (float)mn;
        const uint8_t *q = b + 16 + (j / 2) * 32;
        const int shift = (j & 1) * 4;
#pragma unroll
        for (int e = 0; e < 32; e += 2) {
            const uint32_t w = ld_u16(q + e);
            v[e] = dd * (float)((w >> shift) & 0xf) - mm;
            v[e + 1] = dd * (float)((w >> (8 + shift)) & 0xf) - mm;
        }
    } else {  // Q6_K: item j = half n (j / 4), group g (j % 4) of 32 values n*128 + g*32 + l
        const int n = j / 4, g = j % 4;
        const uint8_t *ql = b + n * 64 + (g & 1) * 32, *qh = b + 128 + n * 32;
        const int8_t *sc = reinterpret_cast<const int8_t *>(b + 192) + n * 8 + g * 2;
        const float d = ld_f16(b + 208);
        const int lshift = (g >> 1) * 4, hshift = g * 2;
        const float d0 = d * (float)sc[0], d1 = d * (float)sc[1];
#pragma unroll
        for (int l = 0; l < 32; l += 2) {
            const uint32_t lo = ld_u16(ql + l), hi = ld_u16(qh + l);
            const int q0 = (int)(((lo >> lshift) & 0xf) | (((hi >> hshift) & 3) << 4)) - 32;
            const int q1 = (int)(((lo >> (8 + lshift)) & 0xf) | (((hi >> (8 + hshift)) & 3) << 4)) - 32;
            v[l] = (l < 16 ? d0 : d1) * (float)q0;
            v[l + 1] = (l < 16 ? d0 : d1) * (float)q1;
        }
    }
}

template <int T>
__global__ void __launch_bounds__(QG_THREADS)
gemv_quant_kernel(const bf16 *__restrict__ x, const uint8_t *__restrict__ w, void *__restrict__ out, int m, int n,
                  int k, int out_f32) {
    pdl_launch_dependents();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = blockIdx.x * (QG_THREADS / 32) + warp;
    pdl_wait();
    if (row >= n) return;
    const size_t row_bytes = (size_t)(k / (32 * q_items(T))) * q_block_bytes(T);
    const uint8_t *wr = w + row_bytes * row;
    float acc[QG_MAX_M];
#pragma unroll
    for (int mi = 0; mi < QG_MAX_M; ++mi) acc[mi] = 0.f;
    for (int it = lane; it < k / 32; it += 32) {
        float v[32];
        dequant32<T>(wr, it, v);
#pragma unroll
        for (int mi = 0; mi < QG_MAX_M; ++mi) {
            if (mi < m) {
                const bf16 *xr = x + (size_t)mi * k + (size_t)it * 32;
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    float xf[8];
                    unpack8(ld_cached16(xr + c * 8), xf);
#pragma unroll
                    for (int e = 0; e < 8; ++e) acc[mi] = fmaf(xf[e], v[c * 8 + e], acc[mi]);
                }
            }
        }
    }
#pragma unroll
    for (int mi = 0; mi < QG_MAX_M; ++mi) {
        if (mi < m) {
            const float s = warp_sum(acc[mi]);
            if (lane == 0) {
                if (out_f32)
                    static_cast<float *>(out)[(size_t)mi * n + row] = s;
                else
                    static_cast<bf16 *>(out)[(size_t)mi * n + row] = __float2bfloat16_rn(s);
            }
        }
    }
}

// Dequantize rows [0, rows) of k values to bf16 (or f32 embedding rows picked by ids).
template <int T, bool EMBED>
__global__ void __launch_bounds__(256)
dequant_kernel(const uint8_t *__restrict__ w, const int32_t *__restrict__ ids, void *__restrict__ out, int rows,
               int k, int vocab) {
    if (EMBED) pdl_launch_dependents();  // dequantized weights: dependents wait for the stores (below)
    pdl_wait();
    const int per_row = k / 32;
    const size_t items = (size_t)rows * per_row;
    const size_t row_bytes = (size_t)(k / (32 * q_items(T))) * q_block_bytes(T);
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < items; i += (size_t)gridDim.x * blockDim.x) {
        const int r = (int)(i / per_row), it = (int)(i % per_row);
        float v[32];
        int src = r;
        bool ok = true;
        if (EMBED) {
            src = ids[r];
            ok = src >= 0 && src < vocab;
            if (!ok) src = 0;
        }
        dequant32<T>(w + row_bytes * src, it, v);
        if (EMBED) {
            float *o = static_cast<float *>(out) + (size_t)r * k + (size_t)it * 32;
#pragma unroll
            for (int e = 0; e < 32; ++e) o[e] = ok ? v[e] : 0.f;
        } else {
            uint4 *o = reinterpret_cast<uint4 *>(static_cast<bf16 *>(out) + (size_t)r * k + (size_t)it * 32);
#pragma unroll
            for (int c = 0; c < 4; ++c) o[c] = pack8(v + c * 8);
        }
    }
    if (!EMBED) pdl_trigger_after_stores();  // the result is read as weights by the GEMM
}

static bool q_supported(int t) {
    return t == GGML_Q8_0 || t == GGML_Q4_0 || t == GGML_Q4_1 || t == GGML_Q4_K || t == GGML_Q6_K;
}

static int q_grid(size_t items) {
    size_t b = (items + 255) / 256;
    return (int)(b < 1 ? 1 : (b > 65536 ? 65536 : b));
}

#define Q_DISPATCH(T, CALL)                   \
    switch (T) {                              \
        case GGML_Q8_0: CALL(GGML_Q8_0); break; \
        case GGML_Q4_0: CALL(GGML_Q4_0); break; \
        case GGML_Q4_1: CALL(GGML_Q4_1); break; \
        case GGML_Q4_K: CALL(GGML_Q4_K); break; \
        default: CALL(GGML_Q6_K); break;      \
    }

extern "C" cudaError_t infer_gemv_quant(const void *x, const void *w, int ggml_type, void *out, int m, int n, int k,
                                        int out_f32, cudaStream_t stream) {
    INFER_CHECK_ARG(q_supported(ggml_type) && m >= 1 && m <= QG_MAX_M && n >= 1 && k >= 32);
    INFER_CHECK_ARG(k % (32 * q_items(ggml_type)) == 0 && x && w && out && infer_aligned16(x));
    const bf16 *xb = static_cast<const bf16 *>(x);
    const uint8_t *wb = static_cast<const uint8_t *>(w);
    const dim3 grid(infer_cdiv(n, QG_THREADS / 32)), block(QG_THREADS);
#define QG_LAUNCH(T) INFER_LAUNCH(gemv_quant_kernel<T>, grid, block, 0, stream, xb, wb, out, m, n, k, out_f32)
    Q_DISPATCH(ggml_type, QG_LAUNCH)
#undef QG_LAUNCH
    return cudaGetLastError();
}

extern "C" cudaError_t infer_dequant_bf16(const void *w, int ggml_type, void *out, int rows, int k,
                                          cudaStream_t stream) {
    INFER_CHECK_ARG(q_supported(ggml_type) && rows >= 0 && k >= 32 && k % (32 * q_items(ggml_type)) == 0);
    if (rows == 0) return cudaSuccess;
    INFER_CHECK_ARG(w && out && infer_aligned16(out));
    const uint8_t *wb = static_cast<const uint8_t *>(w);
    const dim3 grid(q_grid((size_t)rows * (k / 32))), block(256);
#define DQ_LAUNCH(T) \
    INFER_LAUNCH((dequant_kernel<T, false>), grid, block, 0, stream, wb, (const int32_t *)nullptr, out, rows, k, 0)
    Q_DISPATCH(ggml_type, DQ_LAUNCH)
#undef DQ_LAUNCH
    return cudaGetLastError();
}

extern "C" cudaError_t infer_embedding_quant(const int32_t *ids, const void *table, int ggml_type, float *out,
                                             int n_tokens, int hidden, int vocab, cudaStream_t stream) {
    INFER_CHECK_ARG(q_supported(ggml_type) && n_tokens >= 0 && hidden >= 32 && vocab >= 1);
    INFER_CHECK_ARG(hidden % (32 * q_items(ggml_type)) == 0);
    if (n_tokens == 0) return cudaSuccess;
    INFER_CHECK_ARG(ids && table && out);
    const uint8_t *wb = static_cast<const uint8_t *>(table);
    const dim3 grid(q_grid((size_t)n_tokens * (hidden / 32))), block(256);
#define EQ_LAUNCH(T) \
    INFER_LAUNCH((dequant_kernel<T, true>), grid, block, 0, stream, wb, ids, (void *)out, n_tokens, hidden, vocab)
    Q_DISPATCH(ggml_type, EQ_LAUNCH)
#undef EQ_LAUNCH
    return cudaGetLastError();
}
