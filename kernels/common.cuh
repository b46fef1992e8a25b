// Shared device helpers for the RustInfer kernels: bf16 <-> f32 packing, 16-byte vector loads,
// warp / block reductions, mma.sync / ldmatrix / cp.async wrappers and launcher argument checks.
// Plain CUDA C++ (sm_80+); nothing here needs Hopper-only instructions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stddef.h>

#include "include/infer_kernels.h"

typedef __nv_bfloat16 bf16;
typedef __nv_bfloat162 bf162;

// ---------------------------------------------------------------------------------------------
// Launcher-side helpers
// ---------------------------------------------------------------------------------------------
// Launch through infer_launch(); on failure clear the runtime's last error and return it.
#define INFER_LAUNCH(...)                                                                              \
    do {                                                                                               \
        cudaError_t e_ = infer_launch(__VA_ARGS__);                                                    \
        if (e_ != cudaSuccess) {                                                                       \
            (void)cudaGetLastError();                                                                  \
            return e_;                                                                                 \
        }                                                                                              \
    } while (0)

#define INFER_CHECK_ARG(cond)                                                                          \
    do {                                                                                               \
        if (!(cond)) return cudaErrorInvalidValue;                                                     \
    } while (0)

// ---------------------------------------------------------------------------------------------
// Programmatic dependent launch (PDL, sm_90+). Every kernel here is launched with
// cudaLaunchAttributeProgrammaticStreamSerialization, so it may start while the previous kernel in
// the stream is still finishing. Contract followed by every kernel:
//   - pdl_launch_dependents() early (lets the next kernel's blocks get scheduled once ours all run);
//   - pdl_wait() in every thread before reading anything an earlier kernel wrote, before writing
//     anything an earlier kernel may still read, and before any early exit (so completion of this
//     grid always implies completion of its predecessors: the guarantee chains along the stream).
//   Only weights may be read before pdl_wait() (gemv / gemm do, to start streaming early); the
//   kernels that write weights (dtype conversions) trigger dependents only after their stores.
//   Also safe before the wait: constant tables uploaded by copies (RoPE cos/sin) and values a copy
//   or an earlier graph launch wrote before the step's first kernel (the decode position, which the
//   previous step's infer_decode_advance advances): copies and graph launches are not PDL edges, so
//   the first kernel after one starts after it completes, and each later kernel starts after its
//   predecessor started.
// On sm_80 the instructions are compiled out and the attribute is not set. INFER_NO_PDL=1 in the
// environment disables the attribute (read once) for A/B timing.
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// For kernels whose output may be read by a successor before its pdl_wait() (weights): every thread
// fences its stores, the block synchronises, then the block lets dependents launch. No early returns.
__device__ __forceinline__ void pdl_trigger_after_stores() {
    __threadfence();
    __syncthreads();
    pdl_launch_dependents();
}

// Kernel timeline probe (kernel harness only: the harness built with -DINFER_KPROF; compiled out
// of the library). A block's thread 0 appends one record of 5 u64 to g_kprof (set by
// infer_kprof_set; [0] counts records): tag | smid << 16 | blockIdx.x << 32, then %globaltimer (ns)
// at entry, after the PDL wait, when its first weight load has landed (0 if none), at exit.
#ifdef INFER_KPROF
#define KPROF_MAX 400000ull
extern __device__ unsigned long long *g_kprof;
__device__ __forceinline__ unsigned long long kprof_now() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
struct KprofScope {  // records at scope exit (every return path)
    int tag;
    unsigned long long t0, t1 = 0, tl = 0;
    __device__ explicit KprofScope(int tg) : tag(tg), t0(kprof_now()) {}
    __device__ void waited() { t1 = kprof_now(); }
    __device__ void landed(uint32_t v) {  // v: a register of the first weight load (waits for it)
        asm volatile("" ::"r"(v));
        uint32_t d;
        asm volatile("mov.u32 %0, %1;" : "=r"(d) : "r"(v));
        asm volatile("" ::"r"(d));
        tl = kprof_now();
    }
    __device__ ~KprofScope() {
        unsigned long long *b = g_kprof;
        if (!b || threadIdx.x != 0) return;
        const unsigned long long t2 = kprof_now();
        unsigned smid;
        asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
        const unsigned long long i = atomicAdd(b, 1ull);
        if (i >= KPROF_MAX) return;
        unsigned long long *r = b + 8 + i * 5;
        r[0] = (unsigned long long)tag | (unsigned long long)smid << 16 | (unsigned long long)blockIdx.x << 32;
        r[1] = t0;
        r[2] = t1;
        r[3] = tl;
        r[4] = t2;
    }
};
#define KPROF_SCOPE(tag) KprofScope kprof_scope(tag)
#define KPROF_WAITED() kprof_scope.waited()
#define KPROF_LANDED(v) \
    if (threadIdx.x == 0) kprof_scope.landed(v)
#else
#define KPROF_SCOPE(tag)
#define KPROF_WAITED()
#define KPROF_LANDED(v)
#endif

bool infer_pdl_enabled();  // common.cu: device compute capability >= 9.0 and INFER_NO_PDL unset
int infer_num_sms();       // common.cu: multiprocessor count of the current device (cached)

// Launch `kernel` on `stream` with the given launch attributes; returns the launch status.
template <typename... KArgs, typename... Args>
static inline cudaError_t infer_launch_attrs(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                                             cudaStream_t stream, cudaLaunchAttribute *attrs, unsigned n_attrs,
                                             Args... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cfg.attrs = attrs;
    cfg.numAttrs = n_attrs;
    return cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...);
}

// Launch `kernel` on `stream` with the PDL attribute (when enabled); returns the launch status.
template <typename... KArgs, typename... Args>
static inline cudaError_t infer_launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                                       cudaStream_t stream, Args... args) {
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    return infer_launch_attrs(kernel, grid, block, smem, stream, attr, infer_pdl_enabled() ? 1u : 0u, args...);
}

static inline bool infer_aligned16(const void *p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
static __host__ __device__ inline int infer_cdiv(int a, int b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------
// bf16 packing
// ---------------------------------------------------------------------------------------------
// bf16 -> f32 is exact: the bf16 bits are the high half of the f32.
// RoPE of one rotation pair (x1 = element j, x2 = element j + head_dim / 2 of a head) at position
// p, with cos_sin the [positions][head_dim / 2][2] (cos, sin) table: (x1 cos - x2 sin, x2 cos + x1 sin).
__device__ __forceinline__ float2 rope_rotate(float x1, float x2, float2 cs) {
    return make_float2(x1 * cs.x - x2 * cs.y, x2 * cs.x + x1 * cs.y);
}
__device__ __forceinline__ float2 rope_pair(float x1, float x2, const float *cos_sin, int p, int half, int j) {
    return rope_rotate(x1, x2, *reinterpret_cast<const float2 *>(cos_sin + ((size_t)p * half + j) * 2));
}

__device__ __forceinline__ float bf16_lo(uint32_t v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t v) { return __uint_as_float(v & 0xffff0000u); }

// 8 bf16 packed in a uint4 -> 8 floats.
__device__ __forceinline__ void unpack8(const uint4 &v, float f[8]) {
    f[0] = bf16_lo(v.x); f[1] = bf16_hi(v.x);
    f[2] = bf16_lo(v.y); f[3] = bf16_hi(v.y);
    f[4] = bf16_lo(v.z); f[5] = bf16_hi(v.z);
    f[6] = bf16_lo(v.w); f[7] = bf16_hi(v.w);
}

// Two floats -> packed bf16x2 (round to nearest even), lo in the low half.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    bf162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
}

__device__ __forceinline__ uint4 pack8(const float f[8]) {
    uint4 v;
    v.x = pack_bf16x2(f[0], f[1]);
    v.y = pack_bf16x2(f[2], f[3]);
    v.z = pack_bf16x2(f[4], f[5]);
    v.w = pack_bf16x2(f[6], f[7]);
    return v;
}

// ---------------------------------------------------------------------------------------------
// Global loads
// ---------------------------------------------------------------------------------------------
// Streamed once (weights, KV cache): read-only path, do not allocate in L1, ask L2 for 256B sectors.
__device__ __forceinline__ uint4 ld_stream16(const void *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}
// Weights streamed once per decode step: like ld_stream16, with an L2 cache policy (l2_policy_evict_first)
// that marks the lines evict-first, so the weight stream does not push out what is re-read from
// L2 (the KV cache, activations).
__device__ __forceinline__ uint4 ld_stream16_hint(const void *p, uint64_t policy) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4], %5;"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p), "l"(policy));
    return v;
}
// Policy for ld_stream16_hint: evict-first for the given fraction of accesses (1 = all, 0 = none,
// i.e. the normal replacement).
__device__ __forceinline__ uint64_t l2_policy_evict_first(float fraction) {
    uint64_t pol;
    asm volatile("createpolicy.fractional.L2::evict_first.L2::evict_unchanged.b64 %0, %1;" : "=l"(pol) : "f"(fraction));
    return pol;
}
// Re-used data (activations): read-only path, cached in L1. `volatile` keeps it behind the streamed
// loads issued before it, so the compiler cannot trade memory-level parallelism for registers.
__device__ __forceinline__ uint4 ld_cached16(const void *p) {
    uint4 v;
    asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

// ---------------------------------------------------------------------------------------------
// Reductions
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
// `scratch` needs 32 floats of shared memory; the function may be called repeatedly.
__device__ __forceinline__ float block_sum(float v, float *scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // protect scratch from a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < nw ? scratch[lane] : 0.f;
    return warp_sum(t);
}

// ---------------------------------------------------------------------------------------------
// Tensor-core helpers (sm_80+): ldmatrix, mma.sync m16n8k16 bf16 -> f32, cp.async
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_u32(const void *p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(smem_row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void *smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(smem_row)));
}

// d += a (16x16, row) * b (16x8, col), bf16 inputs, f32 accumulators.
__device__ __forceinline__ void mma_bf16_16816(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16-byte async copy global -> shared; src_bytes < 16 zero-fills the rest (0 = all zeros).
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_u32(smem)), "l"(gmem),
                 "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N));
}
