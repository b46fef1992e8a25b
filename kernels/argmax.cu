// Deterministic argmax over f32 logits (first index of the maximum, NaN ignored).
// Decomposition: pass 1 launches ARGMAX_BLOCKS(n) x rows blocks of 256 threads; block (b, r) reduces
// the contiguous slice [b * ARGMAX_SLICE, (b + 1) * ARGMAX_SLICE) of row r to one (value, index)
// pair in the workspace. Pass 2 is one block per row that reduces the row's pairs. Ties resolve to the smaller index at every
// step, so the result does not depend on the reduction order.
#include "common.cuh"
#include <limits.h>

#define ARGMAX_THREADS 256
#define ARGMAX_SLICE 2048  // elements per pass-1 block (8 per thread)

struct ArgPair {
    float v;
    int i;
};

// Is (v, i) better than (bv, bi)? NaN never wins; among equal values the smaller index wins.
__device__ __forceinline__ bool better(float v, int i, float bv, int bi) { return v > bv || (v == bv && i < bi); }

__device__ __forceinline__ void block_argmax(float &bv, int &bi) {
    __shared__ float sv[32];
    __shared__ int si[32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { sv[warp] = bv; si[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
        const int nw = blockDim.x >> 5;
        bv = lane < nw ? sv[lane] : -INFINITY;
        bi = lane < nw ? si[lane] : INT_MAX;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
        }
    }
}

__global__ void __launch_bounds__(ARGMAX_THREADS) argmax_pass1(const float *__restrict__ x, int n, ArgPair *ws) {
    pdl_launch_dependents();
    pdl_wait();  // every input may come from the previous kernel
    x += (size_t)blockIdx.y * n;
    ws += (size_t)blockIdx.y * gridDim.x;
    const int beg = blockIdx.x * ARGMAX_SLICE;
    const int end = min(n, beg + ARGMAX_SLICE);
    float bv = -INFINITY;
    int bi = INT_MAX;
    for (int i = beg + threadIdx.x; i < end; i += ARGMAX_THREADS) {
        const float v = x[i];
        if (better(v, i, bv, bi)) { bv = v; bi = i; }
    }
    block_argmax(bv, bi);
    if (threadIdx.x == 0) ws[blockIdx.x] = ArgPair{bv, bi};
}

__global__ void __launch_bounds__(ARGMAX_THREADS) argmax_pass2(const ArgPair *ws, int nb, int32_t *out) {
    pdl_launch_dependents();
    pdl_wait();  // every input may come from the previous kernel
    ws += (size_t)blockIdx.x * nb;
    out += blockIdx.x;
    float bv = -INFINITY;
    int bi = INT_MAX;
    for (int b = threadIdx.x; b < nb; b += ARGMAX_THREADS) {
        const ArgPair p = ws[b];
        if (better(p.v, p.i, bv, bi)) { bv = p.v; bi = p.i; }
    }
    block_argmax(bv, bi);
    if (threadIdx.x == 0) *out = bi == INT_MAX ? 0 : bi;  // all NaN -> 0
}

static inline int argmax_blocks(int n) { return infer_cdiv(n, ARGMAX_SLICE); }

extern "C" size_t infer_argmax_workspace_bytes(int n) { return infer_argmax_rows_workspace_bytes(1, n); }

extern "C" size_t infer_argmax_rows_workspace_bytes(int rows, int n) {
    if (n <= 0 || rows <= 0) return sizeof(ArgPair);
    return (size_t)rows * argmax_blocks(n) * sizeof(ArgPair);
}

extern "C" cudaError_t infer_argmax_f32(const float *logits, int n, int32_t *out_id, void *workspace,
                                        cudaStream_t stream) {
    return infer_argmax_rows_f32(logits, 1, n, out_id, workspace, stream);
}

extern "C" cudaError_t infer_argmax_rows_f32(const float *logits, int rows, int n, int32_t *out_ids,
                                             void *workspace, cudaStream_t stream) {
    INFER_CHECK_ARG(n > 0 && rows > 0 && rows <= 65535 && logits && out_ids && workspace);
    INFER_CHECK_ARG((reinterpret_cast<uintptr_t>(workspace) & 7u) == 0);
    const int nb = argmax_blocks(n);
    ArgPair *ws = static_cast<ArgPair *>(workspace);
    INFER_LAUNCH(argmax_pass1, dim3(nb, rows), dim3(ARGMAX_THREADS), 0, stream, logits, n, ws);
    INFER_LAUNCH(argmax_pass2, dim3(rows), dim3(ARGMAX_THREADS), 0, stream, (const ArgPair *)ws, nb, out_ids);
    return cudaGetLastError();
}
