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
//    well above what Little's law needs to saturate HBM. The weight loads carry an L2 evict-first
//    policy: 2.5 GB of weights pass through the 50 MB L2 per decode step, and without it they push
//    out the KV cache and activations that the attention kernel re-reads (measured on an H100,
//    Llama-3.2-1B decode: 910 -> 923..933 tok/s; INFER_L2_EF=0 turns it off).
//  - m == 1 with rows longer than one step (k > 2048: the down projection) double-buffers: the next
//    step's U*R loads are issued before this step's math (H200, Llama-3.2-1B decode step 931.7 ->
//    917.7 us; INFER_GEMV_DB=0 turns it off). Measured and dropped: split-K inside the block and a
//    persistent grid-stride GEMV (G blocks per SM) were both slower in the whole decode step.
//  - x (m*k bf16, tiny) is read with 16-byte __ldg loads that hit L1 after the first warp of an SM;
//    each x chunk is converted once and reused for the R rows, each w chunk is reused for the m rows.
//  - f32 accumulators acc[m][r] are reduced with xor-shuffles; lane (mi*R + r) stores one output, so
//    the result is deterministic (no atomics, no split-K).
//  - Paired outputs (m == 1, R == 2; decode fusions): a warp owns two rows that are not adjacent and
//    lane 0 combines their results in the epilogue: OUT_SWIGLU takes gate row j and up row j of a
//    [gate | up] matrix and writes silu(gate) * up; OUT_ROPE_KV takes the rotation pair (j, j + hd/2)
//    of one q/k head (or two adjacent v rows) of a fused qkv matrix, rotates it and writes q / the
//    KV caches at *pos. Both round to bf16 first, so they match the unfused kernels bit for bit.
#include "common.cuh"

#include <stdlib.h>

#define GEMV_THREADS 128
#define GEMV_WARPS (GEMV_THREADS / 32)
#define INFER_GEMV_FUSED_MAX_K 16384  // fused inputs live in 2k bytes of shared memory (<= 32 KB)

// Implemented in gemm.cu (m > 8).
cudaError_t infer_gemm_bf16_launch(const bf16 *x, const bf16 *w, void *out, int m, int n, int k, bool out_f32,
                                   cudaStream_t stream);

// Issue the U*R weight loads of one step (chunks c0, c0+32, ...); chunks past the row load zeros.
template <int R, int U>
__device__ __forceinline__ void gemv_load_w(uint4 (&wv)[U][R], const bf16 *const (&wr)[R], int c0, int kv,
                                            uint64_t pol) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const int c = c0 + u * 32;
#pragma unroll
        for (int r = 0; r < R; ++r) wv[u][r] = c < kv ? ld_stream16_hint(wr[r] + (size_t)c * 8, pol) : make_uint4(0, 0, 0, 0);
    }
}

// How a GEMV obtains its input row x (k elements) and where its result goes (fusions for decode).
enum GemvIn {
    IN_BF16 = 0,    // x bf16 [m, k]
    IN_NORM = 1,    // x f32 [m, k] (the residual stream) times the RMSNorm weight g bf16 [k]; the dot is
                    // scaled by rsqrt(mean(x^2) + eps) at the end, so RMSNorm costs no extra pass
    IN_SWIGLU = 2,  // x = silu(gate) * up from gate_up bf16 [m, 2k] laid out [gate | up]
};
enum GemvOut {
    OUT_BF16 = 0,   // out bf16 [m, n]
    OUT_F32 = 1,    // out f32 [m, n]
    OUT_ADD_F32 = 2,  // out f32 [m, n] += result (residual add in the epilogue)
    OUT_SWIGLU = 3,   // out bf16 [n] = silu(gate) * up; w holds 2n rows [gate | up]
    OUT_ROPE_KV = 4,  // rows of a fused qkv projection: rotated q -> out, rotated k and v -> caches
};

struct GemvArgs {
    const void *x;
    const bf16 *w;
    void *out;
    const bf16 *g;  // IN_NORM only
    float eps;      // IN_NORM only
    int n, k;
    // OUT_ROPE_KV only (out = q [n_heads * head_dim] bf16; caches [n_kv, ctx, head_dim] bf16)
    bf16 *k_cache, *v_cache;
    const float *cos_sin;  // [positions][head_dim / 2][2] (cos, sin)
    const int32_t *pos;
    int n_heads, n_kv, head_dim, ctx;
    float evict_first;  // fraction of the weight loads marked L2 evict-first (set by launch_gemv_out)
};

template <int OUT>
constexpr bool gemv_paired() { return OUT == OUT_SWIGLU || OUT == OUT_ROPE_KV; }
static inline bool gemv_paired_mode(int out) { return out == OUT_SWIGLU || out == OUT_ROPE_KV; }

__device__ __forceinline__ float gemv_silu(float v) { return v / (1.f + __expf(-v)); }

// The 8 input values of chunk c (elements 8c .. 8c+7) of row mi, and (IN_NORM) their squares' sum.
template <int IN>
__device__ __forceinline__ void gemv_x8(const GemvArgs &a, int mi, int c, float xf[8], float &ss) {
    if (IN == IN_BF16) {
        unpack8(ld_cached16(static_cast<const bf16 *>(a.x) + (size_t)mi * a.k + (size_t)c * 8), xf);
    } else if (IN == IN_NORM) {
        const float *xr = static_cast<const float *>(a.x) + (size_t)mi * a.k + (size_t)c * 8;
        const uint4 lo = ld_cached16(xr), hi = ld_cached16(xr + 4);
        float gf[8];
        unpack8(ld_cached16(a.g + (size_t)c * 8), gf);
        const float v[8] = {__uint_as_float(lo.x), __uint_as_float(lo.y), __uint_as_float(lo.z), __uint_as_float(lo.w),
                            __uint_as_float(hi.x), __uint_as_float(hi.y), __uint_as_float(hi.z), __uint_as_float(hi.w)};
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            ss = fmaf(v[e], v[e], ss);
            xf[e] = v[e] * gf[e];
        }
    } else {
        const bf16 *gu = static_cast<const bf16 *>(a.x) + (size_t)mi * 2 * a.k + (size_t)c * 8;
        float gf[8], uf[8];
        unpack8(ld_cached16(gu), gf);
        unpack8(ld_cached16(gu + a.k), uf);
#pragma unroll
        for (int e = 0; e < 8; ++e) xf[e] = gemv_silu(gf[e]) * uf[e];
    }
}

// Weight row r of warp gw in a paired mode (see the header comment).
template <int OUT>
__device__ __forceinline__ int gemv_pair_row(const GemvArgs &a, int gw, int r) {
    if (OUT == OUT_SWIGLU) return gw + r * a.n;
    const int half = a.head_dim >> 1, rot = (a.n_heads + a.n_kv) * half;
    if (gw < rot) {
        const int head = gw / half;
        return head * a.head_dim + (gw - head * half) + r * half;
    }
    return 2 * gw + r;  // v rows start at (n_heads + n_kv) * head_dim == 2 * rot
}

__device__ __forceinline__ float bf16_round(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

// OUT_ROPE_KV: the position and this warp's (cos, sin), read before the PDL wait. *pos is written by
// a copy or by the previous step's infer_decode_advance (an earlier graph launch), both complete
// before the step's first kernel starts, and every later kernel starts after its predecessor
// started, so the value is final here; the table is constant.
struct RopeIn {
    int p = 0;
    float2 cs = make_float2(1.f, 0.f);
};
template <int OUT>
__device__ __forceinline__ RopeIn gemv_rope_in(const GemvArgs &a, int gw) {
    RopeIn r;
    if constexpr (OUT == OUT_ROPE_KV) {
        r.p = *a.pos;
        const int half = a.head_dim >> 1, rot = (a.n_heads + a.n_kv) * half;
        if (gw < rot && r.p >= 0 && r.p < a.ctx)
            r.cs = *reinterpret_cast<const float2 *>(a.cos_sin + ((size_t)r.p * half + gw % half) * 2);
    }
    return r;
}

// Paired epilogue of warp gw (one lane): s0, s1 are the dots of its rows 0 and 1.
template <int OUT>
__device__ __forceinline__ void gemv_pair_store(const GemvArgs &a, int gw, float s0, float s1, const RopeIn &ri) {
    const float x0 = bf16_round(s0), x1 = bf16_round(s1);  // as the unfused GEMV stores them
    if (OUT == OUT_SWIGLU) {
        static_cast<bf16 *>(a.out)[gw] = __float2bfloat16_rn(gemv_silu(x0) * x1);
        return;
    }
    const int hd = a.head_dim, half = hd >> 1, rot = (a.n_heads + a.n_kv) * half, p = ri.p;
    const bool pos_ok = p >= 0 && p < a.ctx;  // else q gets zeros and the caches stay untouched
    if (gw < rot) {
        const int head = gw / half, j = gw - head * half;
        float o1 = 0.f, o2 = 0.f;
        if (pos_ok) {
            const float2 o = rope_rotate(x0, x1, ri.cs);
            o1 = o.x;
            o2 = o.y;
        }
        bf16 *dst = head < a.n_heads ? static_cast<bf16 *>(a.out) + (size_t)head * hd
                    : pos_ok         ? a.k_cache + ((size_t)(head - a.n_heads) * a.ctx + p) * hd
                                     : nullptr;
        if (dst) {
            dst[j] = __float2bfloat16_rn(o1);
            dst[j + half] = __float2bfloat16_rn(o2);
        }
    } else if (pos_ok) {
        const int e = 2 * (gw - rot), kvh = e / hd, d = e - kvh * hd;  // hd even: d, d + 1 in one head
        *reinterpret_cast<bf162 *>(a.v_cache + ((size_t)kvh * a.ctx + p) * hd + d) = __floats2bfloat162_rn(x0, x1);
    }
}

// Where a warp's weight loads land (m == 1 decode kernels; see launch_gemv_out): registers, one
// step of U*R loads per lane (W_REG: rows of at most 256 U elements) or double-buffered (W_DB:
// longer rows). Launch bounds cap the registers so that several blocks fit per SM: while a kernel
// of the decode step runs, blocks of the next kernels become resident and issue their weight
// loads before their PDL wait. Without the split every m == 1 kernel carried the second buffer's
// registers (205-238 per thread: two 128-thread blocks per SM); now W_REG takes 110-128 and W_DB
// 173-194. H100, Llama-3.2-1B per-op decode step (kernel harness, session 15): 986 vs 1,025 us at
// position 144, 1,001 vs 1,064 at 1023; engine 999 vs 961 tok/s (generate() 1,006 vs 967).
// Measured and dropped: staging W_REG's weights in shared memory by cp.async (56-71 registers,
// six blocks per SM): 1,017 us at 144 (the attention waited behind the larger prefetch).
enum GemvW { W_REG = 0, W_DB = 1 };
#ifndef GEMV_MINB
#define GEMV_MINB 4
#endif
#ifndef GEMV_MINB_DB
#define GEMV_MINB_DB 2
#endif

template <int M, int R, int U, int IN, int OUT, int WM>
__global__ void __launch_bounds__(GEMV_THREADS, WM == W_DB ? GEMV_MINB_DB : GEMV_MINB)
    gemv_kernel(const GemvArgs a) {
    KPROF_SCOPE(1000 + IN * 10 + OUT);
    pdl_launch_dependents();
    constexpr bool PAIR = gemv_paired<OUT>();
    constexpr bool DB = WM == W_DB;
    static_assert(!PAIR || (M == 1 && R == 2), "paired outputs take two rows of one input row");
    const int n = a.n, k = a.k;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gw = blockIdx.x * GEMV_WARPS + warp;
    const int row0 = gw * R;
    const bool active = PAIR ? gw < (OUT == OUT_SWIGLU ? n : n >> 1) : row0 < n;  // warp-uniform
    const int kv = k >> 3;  // 16-byte chunks per row

    const bf16 *wr[R];
#pragma unroll
    for (int r = 0; r < R; ++r)  // clamp: rows past n are not stored
        wr[r] = a.w + (size_t)(PAIR ? (active ? gemv_pair_row<OUT>(a, gw, r) : 0) : min(row0 + r, n - 1)) * k;

    // The weights do not depend on the previous kernel: start streaming them before the PDL wait.
    uint4 wv[U][R];
    int c0 = lane;
    const uint64_t pol = l2_policy_evict_first(a.evict_first);
    if (active) gemv_load_w<R, U>(wv, wr, c0, kv, pol);
    RopeIn ri;
    if (PAIR && active && lane == 0) ri = gemv_rope_in<OUT>(a, gw);
    pdl_wait();
    KPROF_WAITED();
    KPROF_LANDED(wv[0][0].x);

    // Fused inputs (m == 1): the block forms the input row once, as bf16 in shared memory, while
    // the weight loads above are in flight; IN_NORM also reduces sum(x^2) over the block.
    extern __shared__ uint4 sx[];  // [kv] chunks of 8 bf16 (fused modes only)
    __shared__ float red[32];
    float scale = 1.f;
    if (IN != IN_BF16) {
        float ss = 0.f;
        for (int c = threadIdx.x; c < kv; c += GEMV_THREADS) {
            float xf[8];
            gemv_x8<IN>(a, 0, c, xf, ss);
            sx[c] = pack8(xf);
        }
        if (IN == IN_NORM) scale = rsqrtf(block_sum(ss, red) / (float)k + a.eps);
        __syncthreads();
    }
    if (!active) return;  // whole warp leaves; no block-level synchronisation below

    float acc[M][R];
#pragma unroll
    for (int mi = 0; mi < M; ++mi)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[mi][r] = 0.f;

    while (c0 < kv) {
        // Double buffering (DB: m == 1, rows longer than one step): the next step's weights are
        // requested before this step's math, so each warp keeps loads in flight across steps.
        uint4 wn[DB ? U : 1][R];
        const int cn = c0 + 32 * U;
        const bool db = DB && cn < kv;
        if (db) gemv_load_w<R, DB ? U : 1>(wn, wr, cn, kv, pol);
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
                        c >= kv ? make_uint4(0, 0, 0, 0)
                        : IN != IN_BF16
                            ? sx[c]
                            : ld_cached16(static_cast<const bf16 *>(a.x) + (size_t)mi * k + (size_t)c * 8);
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
                    unpack8(PRE_X    ? xv[PRE_X ? u : 0][PRE_X ? mi : 0]
                            : IN != IN_BF16 ? sx[c]
                                            : ld_cached16(static_cast<const bf16 *>(a.x) + (size_t)mi * k + (size_t)c * 8),
                            xf);
#pragma unroll
                    for (int r = 0; r < R; ++r)
#pragma unroll
                        for (int e = 0; e < 8; ++e) acc[mi][r] = fmaf(xf[e], wf[r][e], acc[mi][r]);
                }
            }
        }
        c0 = cn;
        if (db) {
#pragma unroll
            for (int u = 0; u < U; ++u)
#pragma unroll
                for (int r = 0; r < R; ++r) wv[u][r] = wn[DB ? u : 0][r];
        } else if (c0 < kv) {
            gemv_load_w<R, U>(wv, wr, c0, kv, pol);
        }
    }

    if constexpr (PAIR) {
        const float s0 = warp_sum(acc[0][0]) * scale, s1 = warp_sum(acc[0][R - 1]) * scale;
        if (lane == 0) gemv_pair_store<OUT>(a, gw, s0, s1, ri);
    } else {
#pragma unroll
        for (int mi = 0; mi < M; ++mi) {
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const float s = warp_sum(acc[mi][r]) * scale;
                const int row = row0 + r;
                if (lane == mi * R + r && row < n) {
                    const size_t o = (size_t)mi * n + row;
                    if (OUT == OUT_BF16)
                        static_cast<bf16 *>(a.out)[o] = __float2bfloat16_rn(s);
                    else if (OUT == OUT_F32)
                        static_cast<float *>(a.out)[o] = s;
                    else
                        static_cast<float *>(a.out)[o] += s;
                }
            }
        }
    }
}

// The weights are streamed once per step: mark them L2 evict-first so the KV cache and the
// activations stay in L2 between steps (INFER_L2_EF=0 turns it off for A/B timing).
static float gemv_evict_first() {
    static const float f = [] {
        const char *e = getenv("INFER_L2_EF");
        return e && e[0] == '0' ? 0.f : 1.f;
    }();
    return f;
}

// One instantiation: weight mode WM (GemvW) as chosen by launch_gemv_out.
template <int M, int R, int U, int IN, int WM>
static cudaError_t launch_gemv_wm(const GemvArgs &a, int out, cudaStream_t s) {
    static_assert(M * R <= 32, "one lane stores each output");
    static_assert(M == 1 || IN == IN_BF16, "fused inputs are formed for one row");
    const dim3 block(GEMV_THREADS);
    const size_t smem = IN == IN_BF16 ? 0 : (size_t)a.k * sizeof(bf16);  // <= 32 KB: checked by the launchers
    if (out == OUT_BF16 || out == OUT_F32 || out == OUT_ADD_F32) {
        const dim3 grid(infer_cdiv(a.n, GEMV_WARPS * R));
        switch (out) {
            case OUT_BF16: INFER_LAUNCH((gemv_kernel<M, R, U, IN, OUT_BF16, WM>), grid, block, smem, s, a); break;
            case OUT_F32: INFER_LAUNCH((gemv_kernel<M, R, U, IN, OUT_F32, WM>), grid, block, smem, s, a); break;
            default:
                if constexpr (M == 1)  // the residual epilogue is for one row
                    INFER_LAUNCH((gemv_kernel<1, R, U, IN, OUT_ADD_F32, WM>), grid, block, smem, s, a);
                else
                    return cudaErrorInvalidValue;
                break;
        }
        return cudaGetLastError();
    }
    // Paired outputs (one input row): one warp per output pair, always (R, U) = (2, 8).
    if constexpr (M == 1) {
        const dim3 grid(infer_cdiv(out == OUT_SWIGLU ? a.n : a.n / 2, GEMV_WARPS));
        if (out == OUT_SWIGLU)
            INFER_LAUNCH((gemv_kernel<1, 2, 8, IN, OUT_SWIGLU, WM>), grid, block, smem, s, a);
        else
            INFER_LAUNCH((gemv_kernel<1, 2, 8, IN, OUT_ROPE_KV, WM>), grid, block, smem, s, a);
        return cudaGetLastError();
    }
    return cudaErrorInvalidValue;
}

// m == 1: rows longer than one step of U loads per lane (k > 256 U; the paired modes always step
// by 8) double-buffer (INFER_GEMV_DB=0 turns it off: A/B timing).
template <int M, int R, int U, int IN>
static cudaError_t launch_gemv_out(const GemvArgs &args, int out, cudaStream_t s) {
    GemvArgs a = args;
    a.evict_first = gemv_evict_first();
    static const bool db_on = [] {
        const char *e = getenv("INFER_GEMV_DB");
        return !(e && e[0] == '0');
    }();
    const int step = 32 * (gemv_paired_mode(out) ? 8 : U);
    if constexpr (M == 1) {
        if (db_on && a.k / 8 > step) return launch_gemv_wm<M, R, U, IN, W_DB>(a, out, s);
    }
    return launch_gemv_wm<M, R, U, IN, W_REG>(a, out, s);
}

template <int M, int R, int U>
static cudaError_t launch_gemv(const GemvArgs &a, int in, int out, cudaStream_t s) {
    switch (in) {
        case IN_BF16: return launch_gemv_out<M, R, U, IN_BF16>(a, out, s);
        case IN_NORM: return launch_gemv_out<M, R, U, IN_NORM>(a, out, s);
        default: return launch_gemv_out<M, R, U, IN_SWIGLU>(a, out, s);
    }
}

// m in 1..8: rows per warp R grows with m so each x chunk (converted once) feeds more FMAs. m == 1
// keeps U*R = 16 loads in flight per lane (measured best on H100 with PDL: they are issued before
// the wait); m > 1 keeps 8 to bound registers. The fused input/output modes exist for m == 1 (the
// decode step); m > 1 takes plain bf16 x and writes bf16 or f32.
static cudaError_t gemv_dispatch(const GemvArgs &a, int m, int in, int out, cudaStream_t s) {
    if (m == 1) return launch_gemv<1, 2, 8>(a, in, out, s);
    if (in != IN_BF16 || out == OUT_ADD_F32) return cudaErrorInvalidValue;
    switch (m) {
        case 2: return launch_gemv_out<2, 2, 4, IN_BF16>(a, out, s);
        case 3: return launch_gemv_out<3, 2, 4, IN_BF16>(a, out, s);
        case 4: return launch_gemv_out<4, 2, 4, IN_BF16>(a, out, s);
        case 5: return launch_gemv_out<5, 4, 2, IN_BF16>(a, out, s);
        case 6: return launch_gemv_out<6, 4, 2, IN_BF16>(a, out, s);
        case 7: return launch_gemv_out<7, 4, 2, IN_BF16>(a, out, s);
        default: return launch_gemv_out<8, 4, 2, IN_BF16>(a, out, s);
    }
}

extern "C" cudaError_t infer_gemv_fused_bf16(const void *x, const void *w, const void *norm_weight, float eps,
                                             void *out, int m, int n, int k, int in_mode, int out_mode,
                                             cudaStream_t stream) {
    INFER_CHECK_ARG(m >= 1 && m <= 8 && n >= 1 && k >= 8 && k % 8 == 0);
    INFER_CHECK_ARG(m == 1 || (in_mode == IN_BF16 && out_mode != OUT_ADD_F32));
    INFER_CHECK_ARG(in_mode >= IN_BF16 && in_mode <= IN_SWIGLU && out_mode >= OUT_BF16 && out_mode <= OUT_SWIGLU);
    INFER_CHECK_ARG(out_mode != OUT_SWIGLU || m == 1);
    INFER_CHECK_ARG(x && w && out && infer_aligned16(x) && infer_aligned16(w));
    INFER_CHECK_ARG(in_mode != IN_NORM || (norm_weight && infer_aligned16(norm_weight)));
    INFER_CHECK_ARG(in_mode == IN_BF16 || k <= INFER_GEMV_FUSED_MAX_K);
    const GemvArgs a{x, static_cast<const bf16 *>(w), out, static_cast<const bf16 *>(norm_weight), eps, n, k};
    return gemv_dispatch(a, m, in_mode, out_mode, stream);
}

extern "C" cudaError_t infer_gemv_rope_kv_bf16(const void *x, const void *w, const void *norm_weight, float eps,
                                               void *q_out, void *k_cache, void *v_cache, const float *cos_sin,
                                               const int32_t *pos_dev, int n_heads, int n_kv_heads, int head_dim,
                                               int ctx, int k, int in_mode, cudaStream_t stream) {
    INFER_CHECK_ARG(n_heads >= 1 && n_kv_heads >= 1 && head_dim >= 2 && head_dim % 2 == 0 && ctx >= 1);
    INFER_CHECK_ARG(k >= 8 && k % 8 == 0 && k <= INFER_GEMV_FUSED_MAX_K && (in_mode == IN_BF16 || in_mode == IN_NORM));
    INFER_CHECK_ARG(x && w && q_out && k_cache && v_cache && cos_sin && pos_dev);
    INFER_CHECK_ARG(infer_aligned16(x) && infer_aligned16(w) && (reinterpret_cast<uintptr_t>(cos_sin) & 7u) == 0);
    INFER_CHECK_ARG((reinterpret_cast<uintptr_t>(v_cache) & 3u) == 0);
    INFER_CHECK_ARG(in_mode != IN_NORM || (norm_weight && infer_aligned16(norm_weight)));
    const int n = (n_heads + 2 * n_kv_heads) * head_dim;
    GemvArgs a{x, static_cast<const bf16 *>(w), q_out, static_cast<const bf16 *>(norm_weight), eps, n, k};
    a.k_cache = static_cast<bf16 *>(k_cache);
    a.v_cache = static_cast<bf16 *>(v_cache);
    a.cos_sin = cos_sin;
    a.pos = pos_dev;
    a.n_heads = n_heads;
    a.n_kv = n_kv_heads;
    a.head_dim = head_dim;
    a.ctx = ctx;
    if (in_mode == IN_NORM) return launch_gemv_out<1, 2, 8, IN_NORM>(a, OUT_ROPE_KV, stream);
    return launch_gemv_out<1, 2, 8, IN_BF16>(a, OUT_ROPE_KV, stream);
}

extern "C" cudaError_t infer_gemv_bf16(const void *x, const void *w, void *out, int m, int n, int k, int out_f32,
                                       cudaStream_t stream) {
    INFER_CHECK_ARG(m >= 1 && n >= 1 && k >= 8 && k % 8 == 0);
    INFER_CHECK_ARG(x && w && out && infer_aligned16(x) && infer_aligned16(w));
    const bf16 *xb = static_cast<const bf16 *>(x);
    const bf16 *wb = static_cast<const bf16 *>(w);
    const bool f32 = out_f32 != 0;
    if (m > 8) return infer_gemm_bf16_launch(xb, wb, out, m, n, k, f32, stream);
    const GemvArgs a{x, wb, out, nullptr, 0.f, n, k};
    return gemv_dispatch(a, m, IN_BF16, f32 ? OUT_F32 : OUT_BF16, stream);
}

// Tuning hook for kernels/tests (not part of the ABI, not in infer_kernels.h): m == 1 with an explicit
// (rows per warp, loads per lane) configuration. variant: 0 = (1,8), 1 = (2,4), 2 = (4,2),
// 3 = (1,16), 4 = (2,8) [the default for m == 1].
extern "C" cudaError_t infer_gemv_bf16_variant(const void *x, const void *w, void *out, int n, int k, int out_f32,
                                               int variant, cudaStream_t stream) {
    INFER_CHECK_ARG(n >= 1 && k >= 8 && k % 8 == 0 && x && w && out && infer_aligned16(x) && infer_aligned16(w));
    const GemvArgs a{x, static_cast<const bf16 *>(w), out, nullptr, 0.f, n, k};
    const int o = out_f32 ? OUT_F32 : OUT_BF16;
    switch (variant) {
        case 0: return launch_gemv<1, 1, 8>(a, IN_BF16, o, stream);
        case 1: return launch_gemv<1, 2, 4>(a, IN_BF16, o, stream);
        case 2: return launch_gemv<1, 4, 2>(a, IN_BF16, o, stream);
        case 3: return launch_gemv<1, 1, 16>(a, IN_BF16, o, stream);
        case 4: return launch_gemv<1, 2, 8>(a, IN_BF16, o, stream);
        default: return cudaErrorInvalidValue;
    }
}
