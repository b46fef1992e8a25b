// Skinny matmul for decode: out[m, n] = x[m, k] . w[n, k]^T (bf16 in, f32 accumulate), m in 1..8.
// For m > 8 the launcher hands over to the tensor-core GEMM in gemm.cu (see infer_gemm_bf16_launch).
//
// Work decomposition (memory bound: the n*k*2 bytes of w are streamed exactly once):
//  - Launched with programmatic dependent launch: each warp issues its first U*R weight loads before
//    griddepcontrol.wait, so the weight stream starts while the previous kernel is still finishing.
//  - Block of 128 threads = 4 warps; each warp owns R consecutive rows of w, so a block covers 4R
//    rows and the grid is ceil(n / 4R) blocks.
//  - Within a warp, lane l reads 16-byte chunks l, l+32, l+64, ... of each of its R rows (a warp reads
//    512 contiguous bytes of a row per step, fully coalesced). Per outer iteration a lane first issues
//    U*R independent 16-byte weight loads (ld.global.nc.L1::no_allocate, i.e. streamed past L1), then
//    consumes them; with U*R = 16 (m == 1) or 8 (m > 1) each lane keeps 256 / 128 bytes in flight,
//    well above what Little's law needs to saturate HBM.
//  - x (m*k bf16, tiny) is read with 16-byte __ldg loads that hit L1 after the first warp of an SM;
//    each x chunk is converted once and reused for the R rows, each w chunk is reused for the m rows.
//  - f32 accumulators acc[m][r] are reduced with xor-shuffles; lane (mi*R + r) stores one output, so
//    the result is deterministic (no atomics, no split-K).
#include "common.cuh"

#define GEMV_THREADS 128
#define GEMV_WARPS (GEMV_THREADS / 32)

// Implemented in gemm.cu (m > 8).
cudaError_t infer_gemm_bf16_launch(const bf16 *x, const bf16 *w, void *out, int m, int n, int k, bool out_f32,
                                   cudaStream_t stream);

// Issue the U*R weight loads of one step (chunks c0, c0+32, ...); chunks past the row load zeros.
template <int R, int U>
__device__ __forceinline__ void gemv_load_w(uint4 (&wv)[U][R], const bf16 *const (&wr)[R], int c0, int kv) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const int c = c0 + u * 32;
#pragma unroll
        for (int r = 0; r < R; ++r) wv[u][r] = c < kv ? ld_stream16(wr[r] + (size_t)c * 8) : make_uint4(0, 0, 0, 0);
    }
}

template <int M, int R, int U, bool F32OUT>
__global__ void __launch_bounds__(GEMV_THREADS)
gemv_kernel(const bf16 *__restrict__ x, const bf16 *__restrict__ w, void *__restrict__ out, int n, int k) {
    pdl_launch_dependents();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row0 = (blockIdx.x * GEMV_WARPS + warp) * R;
    const bool active = row0 < n;  // warp-uniform
    const int kv = k >> 3;         // 16-byte chunks per row

    const bf16 *wr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wr[r] = w + (size_t)min(row0 + r, n - 1) * k;  // clamp: rows past n are not stored

    // The weights do not depend on the previous kernel: start streaming them before the PDL wait.
    uint4 wv[U][R];
    int c0 = lane;
    if (active) gemv_load_w<R, U>(wv, wr, c0, kv);
    pdl_wait();
    if (!active) return;  // whole warp leaves; no block-level synchronisation below

    float acc[M][R];
#pragma unroll
    for (int mi = 0; mi < M; ++mi)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[mi][r] = 0.f;

    while (c0 < kv) {
        // x loads for this step (all up front when they fit in registers, PRE_X); then the math.
        constexpr bool PRE_X = M * U <= 8;
        uint4 xv[PRE_X ? U : 1][PRE_X ? M : 1];
        if (PRE_X) {
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int c = c0 + u * 32;
#pragma unroll
                for (int mi = 0; mi < M; ++mi)
                    xv[PRE_X ? u : 0][PRE_X ? mi : 0] =
                        c < kv ? ld_cached16(x + (size_t)mi * k + (size_t)c * 8) : make_uint4(0, 0, 0, 0);
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int c = c0 + u * 32;
            if (c < kv) {  // the branch also stops ptxas from sinking the loads above into the math
                float wf[R][8];
#pragma unroll
                for (int r = 0; r < R; ++r) unpack8(wv[u][r], wf[r]);
#pragma unroll
                for (int mi = 0; mi < M; ++mi) {
                    float xf[8];
                    unpack8(PRE_X ? xv[PRE_X ? u : 0][PRE_X ? mi : 0] : ld_cached16(x + (size_t)mi * k + (size_t)c * 8), xf);
#pragma unroll
                    for (int r = 0; r < R; ++r)
#pragma unroll
                        for (int e = 0; e < 8; ++e) acc[mi][r] = fmaf(xf[e], wf[r][e], acc[mi][r]);
                }
            }
        }
        c0 += 32 * U;
        if (c0 < kv) gemv_load_w<R, U>(wv, wr, c0, kv);
    }

#pragma unroll
    for (int mi = 0; mi < M; ++mi)
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const float s = warp_sum(acc[mi][r]);
            const int row = row0 + r;
            if (lane == mi * R + r && row < n) {
                if (F32OUT)
                    static_cast<float *>(out)[(size_t)mi * n + row] = s;
                else
                    static_cast<bf16 *>(out)[(size_t)mi * n + row] = __float2bfloat16_rn(s);
            }
        }
}

template <int M, int R, int U>
static cudaError_t launch_gemv(const bf16 *x, const bf16 *w, void *out, int n, int k, bool f32, cudaStream_t s) {
    static_assert(M * R <= 32, "one lane stores each output");
    const int grid = infer_cdiv(n, GEMV_WARPS * R);
    if (f32)
        INFER_LAUNCH(gemv_kernel<M, R, U, true>, dim3(grid), dim3(GEMV_THREADS), 0, s, x, w, out, n, k);
    else
        INFER_LAUNCH(gemv_kernel<M, R, U, false>, dim3(grid), dim3(GEMV_THREADS), 0, s, x, w, out, n, k);
    return cudaGetLastError();
}

extern "C" cudaError_t infer_gemv_bf16(const void *x, const void *w, void *out, int m, int n, int k, int out_f32,
                                       cudaStream_t stream) {
    INFER_CHECK_ARG(m >= 1 && n >= 1 && k >= 8 && k % 8 == 0);
    INFER_CHECK_ARG(x && w && out && infer_aligned16(x) && infer_aligned16(w));
    const bf16 *xb = static_cast<const bf16 *>(x);
    const bf16 *wb = static_cast<const bf16 *>(w);
    const bool f32 = out_f32 != 0;
    if (m > 8) return infer_gemm_bf16_launch(xb, wb, out, m, n, k, f32, stream);
    // Rows per warp R grows with m so each x chunk (converted once) feeds more FMAs. m == 1 keeps
    // U*R = 16 loads in flight per lane (measured best on H100 with PDL: they are issued before the
    // wait); m > 1 keeps 8 to bound registers.
    switch (m) {
        case 1: return launch_gemv<1, 2, 8>(xb, wb, out, n, k, f32, stream);
        case 2: return launch_gemv<2, 2, 4>(xb, wb, out, n, k, f32, stream);
        case 3: return launch_gemv<3, 2, 4>(xb, wb, out, n, k, f32, stream);
        case 4: return launch_gemv<4, 2, 4>(xb, wb, out, n, k, f32, stream);
        case 5: return launch_gemv<5, 4, 2>(xb, wb, out, n, k, f32, stream);
        case 6: return launch_gemv<6, 4, 2>(xb, wb, out, n, k, f32, stream);
        case 7: return launch_gemv<7, 4, 2>(xb, wb, out, n, k, f32, stream);
        default: return launch_gemv<8, 4, 2>(xb, wb, out, n, k, f32, stream);
    }
}

// Tuning hook for kernels/tests (not part of the ABI, not in infer_kernels.h): m == 1 with an explicit
// (rows per warp, loads per lane) configuration. variant: 0 = (1,8), 1 = (2,4), 2 = (4,2),
// 3 = (1,16), 4 = (2,8) [the default for m == 1].
extern "C" cudaError_t infer_gemv_bf16_variant(const void *x, const void *w, void *out, int n, int k, int out_f32,
                                               int variant, cudaStream_t stream) {
    INFER_CHECK_ARG(n >= 1 && k >= 8 && k % 8 == 0 && x && w && out && infer_aligned16(x) && infer_aligned16(w));
    const bf16 *xb = static_cast<const bf16 *>(x), *wb = static_cast<const bf16 *>(w);
    const bool f32 = out_f32 != 0;
    switch (variant) {
        case 0: return launch_gemv<1, 1, 8>(xb, wb, out, n, k, f32, stream);
        case 1: return launch_gemv<1, 2, 4>(xb, wb, out, n, k, f32, stream);
        case 2: return launch_gemv<1, 4, 2>(xb, wb, out, n, k, f32, stream);
        case 3: return launch_gemv<1, 1, 16>(xb, wb, out, n, k, f32, stream);
        case 4: return launch_gemv<1, 2, 8>(xb, wb, out, n, k, f32, stream);
        default: return cudaErrorInvalidValue;
    }
}
