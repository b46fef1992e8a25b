// Fused residual add + RMSNorm:  x += f32(delta) (optional);  out = bf16(x * rsqrt(mean(x^2) + eps) * w).
// Decomposition: one block of 256 threads per row.
//  - Fast path (dim % 8 == 0, dim <= 256 * 8 * MAXV, 16-byte aligned pointers): each thread owns up to
//    MAXV chunks of 8 consecutive elements, keeps them in registers between the sum-of-squares pass
//    and the scaling pass, so x is read once and written once.
//  - Generic path: scalar two-pass loop (x re-read from cache in the second pass).
#include "common.cuh"

#define RMS_THREADS 256
#define RMS_MAXV 4  // register-cached path handles dim <= 256 * 8 * 4 = 8192

__global__ void __launch_bounds__(RMS_THREADS)
rms_norm_vec_kernel(float *__restrict__ x, const bf16 *__restrict__ delta, const bf16 *__restrict__ w,
                    bf16 *__restrict__ out, int dim, float eps) {
    pdl_launch_dependents();
    pdl_wait();  // every input may come from the previous kernel
    __shared__ float scratch[32];
    const size_t base = (size_t)blockIdx.x * dim;
    float *xr = x + base;
    const int nchunk = dim / 8;
    float v[RMS_MAXV][8];
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < RMS_MAXV; ++i) {
        const int c = threadIdx.x + i * RMS_THREADS;
        if (c < nchunk) {
            float4 *x4 = reinterpret_cast<float4 *>(xr + c * 8);
            float4 a = x4[0], b = x4[1];
            v[i][0] = a.x; v[i][1] = a.y; v[i][2] = a.z; v[i][3] = a.w;
            v[i][4] = b.x; v[i][5] = b.y; v[i][6] = b.z; v[i][7] = b.w;
            if (delta) {
                float d[8];
                unpack8(ld_cached16(delta + base + c * 8), d);
#pragma unroll
                for (int e = 0; e < 8; ++e) v[i][e] += d[e];
                x4[0] = make_float4(v[i][0], v[i][1], v[i][2], v[i][3]);
                x4[1] = make_float4(v[i][4], v[i][5], v[i][6], v[i][7]);
            }
#pragma unroll
            for (int e = 0; e < 8; ++e) ss = fmaf(v[i][e], v[i][e], ss);
        }
    }
    const float inv = rsqrtf(block_sum(ss, scratch) / (float)dim + eps);
#pragma unroll
    for (int i = 0; i < RMS_MAXV; ++i) {
        const int c = threadIdx.x + i * RMS_THREADS;
        if (c < nchunk) {
            float g[8], o[8];
            unpack8(ld_cached16(w + c * 8), g);
#pragma unroll
            for (int e = 0; e < 8; ++e) o[e] = v[i][e] * inv * g[e];
            *reinterpret_cast<uint4 *>(out + base + c * 8) = pack8(o);
        }
    }
}

__global__ void __launch_bounds__(RMS_THREADS)
rms_norm_generic_kernel(float *__restrict__ x, const bf16 *__restrict__ delta, const bf16 *__restrict__ w,
                        bf16 *__restrict__ out, int dim, float eps) {
    pdl_launch_dependents();
    pdl_wait();  // every input may come from the previous kernel
    __shared__ float scratch[32];
    const size_t base = (size_t)blockIdx.x * dim;
    float ss = 0.f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        float v = x[base + c];
        if (delta) {
            v += __bfloat162float(delta[base + c]);
            x[base + c] = v;
        }
        ss = fmaf(v, v, ss);
    }
    const float inv = rsqrtf(block_sum(ss, scratch) / (float)dim + eps);
    for (int c = threadIdx.x; c < dim; c += blockDim.x)
        out[base + c] = __float2bfloat16_rn(x[base + c] * inv * __bfloat162float(w[c]));
}

extern "C" cudaError_t infer_add_rms_norm_bf16(float *x, const void *delta, const void *weight, void *out, int rows,
                                               int dim, float eps, cudaStream_t stream) {
    INFER_CHECK_ARG(rows >= 0 && dim > 0 && eps >= 0.f);
    if (rows == 0) return cudaSuccess;
    INFER_CHECK_ARG(x && weight && out);
    const bf16 *d = static_cast<const bf16 *>(delta);
    const bf16 *w = static_cast<const bf16 *>(weight);
    bf16 *o = static_cast<bf16 *>(out);
    const bool vec = dim % 8 == 0 && dim <= RMS_THREADS * 8 * RMS_MAXV && infer_aligned16(x) &&
                     infer_aligned16(weight) && infer_aligned16(out) && (!delta || infer_aligned16(delta));
    if (vec)
        INFER_LAUNCH(rms_norm_vec_kernel, dim3(rows), dim3(RMS_THREADS), 0, stream, x, d, w, o, dim, eps);
    else
        INFER_LAUNCH(rms_norm_generic_kernel, dim3(rows), dim3(RMS_THREADS), 0, stream, x, d, w, o, dim, eps);
    return cudaGetLastError();
}
