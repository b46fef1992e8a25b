// Embedding gather: out[i, :] = f32(table[ids[i], :]).
// Decomposition: one block (256 threads) per token; each thread converts 8 bf16 (one 16-byte load)
// per step when hidden % 8 == 0 and the pointers are 16-byte aligned, else one element per step.
#include "common.cuh"

template <bool VEC>
__global__ void __launch_bounds__(256)
embedding_kernel(const int32_t *__restrict__ ids, const bf16 *__restrict__ table, float *__restrict__ out,
                 int hidden, int vocab) {
    pdl_launch_dependents();
    pdl_wait();  // every input may come from the previous kernel
    const int tok = blockIdx.x;
    const int id = ids[tok];
    float *o = out + (size_t)tok * hidden;
    const bool ok = id >= 0 && id < vocab;
    const bf16 *row = table + (size_t)(ok ? id : 0) * hidden;
    if (VEC) {
        for (int c = threadIdx.x; c < hidden / 8; c += blockDim.x) {
            float f[8];
            if (ok) {
                unpack8(ld_cached16(row + c * 8), f);
            } else {
#pragma unroll
                for (int e = 0; e < 8; ++e) f[e] = 0.f;
            }
            float4 *o4 = reinterpret_cast<float4 *>(o + c * 8);
            o4[0] = make_float4(f[0], f[1], f[2], f[3]);
            o4[1] = make_float4(f[4], f[5], f[6], f[7]);
        }
    } else {
        for (int c = threadIdx.x; c < hidden; c += blockDim.x) o[c] = ok ? __bfloat162float(row[c]) : 0.f;
    }
}

extern "C" cudaError_t infer_embedding_bf16(const int32_t *ids, const void *table, float *out, int n_tokens,
                                            int hidden, int vocab, cudaStream_t stream) {
    INFER_CHECK_ARG(n_tokens >= 0 && hidden > 0 && vocab > 0);
    if (n_tokens == 0) return cudaSuccess;
    INFER_CHECK_ARG(ids && table && out);
    const bool vec = hidden % 8 == 0 && infer_aligned16(table) && infer_aligned16(out);
    const bf16 *t = static_cast<const bf16 *>(table);
    if (vec)
        INFER_LAUNCH(embedding_kernel<true>, dim3(n_tokens), dim3(256), 0, stream, ids, t, out, hidden, vocab);
    else
        INFER_LAUNCH(embedding_kernel<false>, dim3(n_tokens), dim3(256), 0, stream, ids, t, out, hidden, vocab);
    return cudaGetLastError();
}
