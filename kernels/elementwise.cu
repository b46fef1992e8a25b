// Element-wise kernels: SwiGLU over the fused gate/up projection, and dtype conversions.
// Decomposition: grid-stride loops; SwiGLU handles 8 outputs per thread per step (16-byte loads of
// gate and up, one 16-byte store) when inter % 8 == 0 and pointers are aligned, else 1 per step.
#include "common.cuh"

__device__ __forceinline__ float silu(float g) { return g / (1.f + __expf(-g)); }

template <bool VEC>
__global__ void __launch_bounds__(256)
swiglu_kernel(const bf16 *__restrict__ gu, bf16 *__restrict__ out, int rows, int inter) {
    pdl_launch_dependents();
    pdl_wait();  // every input may come from the previous kernel
    const int per_row = VEC ? inter / 8 : inter;
    const size_t total = (size_t)rows * per_row;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / per_row;
        const int c = (int)(i - r * per_row);
        const bf16 *g = gu + r * 2 * (size_t)inter;
        if (VEC) {
            float gf[8], uf[8], o[8];
            unpack8(ld_cached16(g + c * 8), gf);
            unpack8(ld_cached16(g + inter + c * 8), uf);
#pragma unroll
            for (int e = 0; e < 8; ++e) o[e] = silu(gf[e]) * uf[e];
            *reinterpret_cast<uint4 *>(out + r * inter + c * 8) = pack8(o);
        } else {
            out[r * inter + c] = __float2bfloat16_rn(silu(__bfloat162float(g[c])) * __bfloat162float(g[inter + c]));
        }
    }
}

static inline int grid_for(size_t work, int threads) {
    size_t b = (work + threads - 1) / threads;
    if (b > 65536) b = 65536;  // grid-stride loops cover the rest
    return b < 1 ? 1 : (int)b;
}

extern "C" cudaError_t infer_swiglu_bf16(const void *gate_up, void *out, int rows, int inter, cudaStream_t stream) {
    INFER_CHECK_ARG(rows >= 0 && inter > 0);
    if (rows == 0) return cudaSuccess;
    INFER_CHECK_ARG(gate_up && out);
    const bf16 *g = static_cast<const bf16 *>(gate_up);
    bf16 *o = static_cast<bf16 *>(out);
    if (inter % 8 == 0 && infer_aligned16(gate_up) && infer_aligned16(out))
        INFER_LAUNCH(swiglu_kernel<true>, dim3(grid_for((size_t)rows * inter / 8, 256)), dim3(256), 0, stream, g, o, rows, inter);
    else
        INFER_LAUNCH(swiglu_kernel<false>, dim3(grid_for((size_t)rows * inter, 256)), dim3(256), 0, stream, g, o, rows, inter);
    return cudaGetLastError();
}

__global__ void add_bf16_to_f32_kernel(float *__restrict__ x, const bf16 *__restrict__ d, size_t n) {
    pdl_launch_dependents();
    pdl_wait();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] += __bfloat162float(d[i]);
}

extern "C" cudaError_t infer_add_bf16_to_f32(float *x, const void *delta, size_t n, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    INFER_CHECK_ARG(x && delta);
    INFER_LAUNCH(add_bf16_to_f32_kernel, dim3(grid_for(n, 256)), dim3(256), 0, stream, x,
                 static_cast<const bf16 *>(delta), n);
    return cudaGetLastError();
}

// ---- conversions: one element per thread per grid-stride step ----
// They produce weights, which gemv / gemm read before their PDL wait; so unlike the other kernels they
// let dependents launch only after their own stores are fenced (pdl_trigger_after_stores).
__global__ void f32_to_bf16_kernel(const float *__restrict__ in, bf16 *__restrict__ out, size_t n) {
    pdl_wait();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16_rn(in[i]);
    pdl_trigger_after_stores();
}
__global__ void f16_to_bf16_kernel(const __half *__restrict__ in, bf16 *__restrict__ out, size_t n) {
    pdl_wait();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16_rn(__half2float(in[i]));
    pdl_trigger_after_stores();
}
__global__ void bf16_to_f32_kernel(const bf16 *__restrict__ in, float *__restrict__ out, size_t n) {
    pdl_wait();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = __bfloat162float(in[i]);
    pdl_trigger_after_stores();
}

extern "C" cudaError_t infer_f32_to_bf16(const float *in, void *out, size_t n, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    INFER_CHECK_ARG(in && out);
    INFER_LAUNCH(f32_to_bf16_kernel, dim3(grid_for(n, 256)), dim3(256), 0, stream, in, static_cast<bf16 *>(out), n);
    return cudaGetLastError();
}
extern "C" cudaError_t infer_f16_to_bf16(const void *in, void *out, size_t n, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    INFER_CHECK_ARG(in && out);
    INFER_LAUNCH(f16_to_bf16_kernel, dim3(grid_for(n, 256)), dim3(256), 0, stream, static_cast<const __half *>(in),
                 static_cast<bf16 *>(out), n);
    return cudaGetLastError();
}
extern "C" cudaError_t infer_bf16_to_f32(const void *in, float *out, size_t n, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    INFER_CHECK_ARG(in && out);
    INFER_LAUNCH(bf16_to_f32_kernel, dim3(grid_for(n, 256)), dim3(256), 0, stream, static_cast<const bf16 *>(in), out, n);
    return cudaGetLastError();
}
