// Tensor-core GEMM for prefill-sized m (> 8): out[m, n] = x[m, k] . w[n, k]^T, bf16 in, f32 accumulate,
// bf16 or f32 out. Reached through infer_gemv_bf16 when m > 8 (an ABI extension, see the report).
//
// Work decomposition: BM x BN output tile per block of 256 threads (8 warps as 2 (m) x 4 (n), each warp
// a (BM/2) x (BN/4) sub-tile of mma.sync m16n8k16 tiles). K is walked in 32-wide slices through a
// 3-stage cp.async pipeline in shared memory; each 64-byte smem row holds 4 16-byte chunks stored at
// chunk ^ ((row >> 1) & 3), which makes the ldmatrix reads conflict-free without padding (3 stages of
// 128x128 fit the 48 KB static limit). Both operands are K-major, so A and B fragments come from plain
// ldmatrix.x4. Grid = (m tiles, n tiles): the m tiles of one n tile run next to each other, so each
// slice of w comes from DRAM about once. The tile shape is picked so the grid covers the SMs:
// 128x128 if that gives >= #SMs blocks, else 64x128, else 64x64. Out-of-range rows / k chunks are
// zero-filled by cp.async (k % 8 == 0 is required, so a 16-byte chunk is all in or all out).
// PDL: the weight tiles of the prologue are requested before griddepcontrol.wait.
#include "common.cuh"

#define GM_BK 32
#define GM_STAGES 3
#define GM_THREADS 256

// Element offset of (row, 16-byte chunk) inside a [rows][32] bf16 stage buffer.
__device__ __forceinline__ int gm_swz(int row, int chunk) { return row * GM_BK + ((chunk ^ ((row >> 1) & 3)) << 3); }

template <int BM, int BN, bool F32OUT>
__global__ void __launch_bounds__(GM_THREADS, 2)
gemm_kernel(const bf16 *__restrict__ x, const bf16 *__restrict__ w, void *__restrict__ out, int m, int n, int k) {
    constexpr int WM = BM / 2, WN = BN / 4, MT = WM / 16, NT = WN / 8;
    static_assert(MT >= 1 && NT >= 2 && NT % 2 == 0, "warp tile");
    __shared__ __align__(128) bf16 sA[GM_STAGES][BM * GM_BK];
    __shared__ __align__(128) bf16 sB[GM_STAGES][BN * GM_BK];

    pdl_launch_dependents();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 2, wn = warp & 3;
    const int bm = blockIdx.x * BM, bn = blockIdx.y * BN;
    const int ktiles = infer_cdiv(k, GM_BK);

    // Rows of 4 chunks; 256 threads cover 64 rows per pass (passes are warp-uniform: all A or all B).
    auto load_a = [&](int stage, int kt) {
#pragma unroll
        for (int id = tid; id < BM * 4; id += GM_THREADS) {
            const int row = id >> 2, ch = id & 3, col = kt * GM_BK + ch * 8, g = bm + row;
            const bool v = col < k && g < m;
            cp_async16(&sA[stage][gm_swz(row, ch)], v ? x + (size_t)g * k + col : x, v ? 16 : 0);
        }
    };
    auto load_b = [&](int stage, int kt) {
#pragma unroll
        for (int id = tid; id < BN * 4; id += GM_THREADS) {
            const int row = id >> 2, ch = id & 3, col = kt * GM_BK + ch * 8, g = bn + row;
            const bool v = col < k && g < n;
            cp_async16(&sB[stage][gm_swz(row, ch)], v ? w + (size_t)g * k + col : w, v ? 16 : 0);
        }
    };

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

    // Prologue: weights first (independent of the previous kernel), then wait, then activations.
#pragma unroll
    for (int s = 0; s < GM_STAGES - 1; ++s)
        if (s < ktiles) load_b(s, s);
    pdl_wait();
#pragma unroll
    for (int s = 0; s < GM_STAGES - 1; ++s) {
        if (s < ktiles) load_a(s, s);
        cp_async_commit();  // group s holds A_s (and, for s == 0, every prologue B)
    }

    for (int kt = 0; kt < ktiles; ++kt) {
        cp_async_wait<GM_STAGES - 2>();
        __syncthreads();  // tile kt visible to all; every warp is done with tile kt - 1
        {
            const int nk = kt + GM_STAGES - 1;
            if (nk < ktiles) {
                load_a(nk % GM_STAGES, nk);
                load_b(nk % GM_STAGES, nk);
            }
            cp_async_commit();
        }
        const bf16 *a_s = sA[kt % GM_STAGES], *b_s = sB[kt % GM_STAGES];
#pragma unroll
        for (int ks = 0; ks < GM_BK / 16; ++ks) {
            uint32_t a[MT][4], b[NT][2];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
                ldmatrix_x4(a[mt], a_s + gm_swz(wm * WM + mt * 16 + (lane & 15), ks * 2 + (lane >> 4)));
#pragma unroll
            for (int p = 0; p < NT / 2; ++p) {
                uint32_t r[4];
                ldmatrix_x4(r, b_s + gm_swz(wn * WN + p * 16 + (lane >> 4) * 8 + (lane & 7), ks * 2 + ((lane >> 3) & 1)));
                b[2 * p][0] = r[0]; b[2 * p][1] = r[1];
                b[2 * p + 1][0] = r[2]; b[2 * p + 1][1] = r[3];
            }
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) mma_bf16_16816(acc[mt][nt], a[mt], b[nt][0], b[nt][1]);
        }
    }
    cp_async_wait<0>();

    // Epilogue: accumulator (mt, nt) holds rows g, g+8 and columns 2*(lane%4) + {0,1} of its 16x8 tile.
    const int g = lane >> 2, q = (lane & 3) * 2;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = bm + wm * WM + mt * 16 + g + h * 8;
            if (row >= m) continue;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int col = bn + wn * WN + nt * 8 + q + e;
                    if (col >= n) continue;
                    const float v = acc[mt][nt][h * 2 + e];
                    if (F32OUT)
                        static_cast<float *>(out)[(size_t)row * n + col] = v;
                    else
                        static_cast<bf16 *>(out)[(size_t)row * n + col] = __float2bfloat16_rn(v);
                }
        }
}

template <int BM, int BN>
static cudaError_t launch_gemm(const bf16 *x, const bf16 *w, void *out, int m, int n, int k, bool f32, cudaStream_t s) {
    const int gy = infer_cdiv(n, BN);
    INFER_CHECK_ARG(gy <= 65535);
    const dim3 grid(infer_cdiv(m, BM), gy);
    if (f32)
        INFER_LAUNCH(gemm_kernel<BM, BN, true>, grid, dim3(GM_THREADS), 0, s, x, w, out, m, n, k);
    else
        INFER_LAUNCH(gemm_kernel<BM, BN, false>, grid, dim3(GM_THREADS), 0, s, x, w, out, m, n, k);
    return cudaGetLastError();
}

// Called by infer_gemv_bf16 (which already validated pointers, alignment, k % 8 == 0).
cudaError_t infer_gemm_bf16_launch(const bf16 *x, const bf16 *w, void *out, int m, int n, int k, bool out_f32,
                                   cudaStream_t stream) {
    const long long sms = infer_num_sms();
    if ((long long)infer_cdiv(m, 128) * infer_cdiv(n, 128) >= sms)
        return launch_gemm<128, 128>(x, w, out, m, n, k, out_f32, stream);
    if ((long long)infer_cdiv(m, 64) * infer_cdiv(n, 128) >= sms)
        return launch_gemm<64, 128>(x, w, out, m, n, k, out_f32, stream);
    return launch_gemm<64, 64>(x, w, out, m, n, k, out_f32, stream);
}
