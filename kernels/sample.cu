// Token sampling on the device for one row of f32 logits, so that only the chosen id crosses to the
// host: repetition / presence / frequency penalties, then greedy, or temperature + top-k + min-p +
// top-p and a draw with a uniform number the host supplies (seeded RNG on the host: same seed, same
// tokens). Semantics follow the CPU sampler (model/sampler.rs):
//   l_i     = penalised logit (NaN -> -inf: never chosen)
//   top-k   keeps the k largest l (ties at the k-th value are all kept)
//   w_i     = exp((l_i - max) / T), total = sum of w over the top-k set
//   min-p   keeps w_i >= min_p;  top-p keeps the largest w whose sum reaches top_p * total
//   draw    r = u * (kept mass); the id is the first kept index (in index order) where the running
//           kept mass exceeds r.
// Decomposition: ONE block of 1024 threads (the vocab is ~10^5: a handful of passes over ~0.5 MB,
// which stays in L2). Thresholds (k-th largest logit, top-p weight) are found exactly by 4-pass radix
// selection on order-preserving 32-bit keys, with 256-bin shared-memory histograms of counts (top-k)
// or of probability mass (top-p). Masses are fixed-point u64 (w * 2^40), so every sum is exact and
// independent of the order of the atomics: the result is deterministic.
#include "common.cuh"
#include "include/infer_kernels.h"

#define SAMPLE_THREADS 1024
#define MASS_ONE 1099511627776.0  // 2^40: fixed-point unit of probability mass

typedef unsigned long long u64;

// Order-preserving key of a float (larger float -> larger key).
__device__ __forceinline__ uint32_t fkey(float f) {
    const uint32_t b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ u64 mass_of(float w) { return (u64)((double)w * MASS_ONE); }

struct SampleCtx {
    const float *work;  // penalised logits [n]
    int n;
    float maxv, inv_t;
    bool use_k;         // top-k active
    uint32_t kkey;      // keep key(l) >= kkey
    bool use_p;         // top-p active
    uint32_t pkey;      // keep key(w) >= pkey
    float min_p;
};

__device__ __forceinline__ float weight(const SampleCtx &c, float l) {
    return l == c.maxv ? 1.f : __expf((l - c.maxv) * c.inv_t);
}

// In the top-k set (selectable and at or above the k-th value)?
__device__ __forceinline__ bool in_topk(const SampleCtx &c, float l) {
    return l != -INFINITY && (!c.use_k || fkey(l) >= c.kkey);
}

// Radix selection over 4 x 8 bits. COUNT: finds the largest key kth such that count(key >= kth) >=
// target (top-k). !COUNT: same with probability mass instead of counts (top-p).
template <bool COUNT>
__device__ __forceinline__ uint32_t radix_select(const SampleCtx &c, u64 target, u64 *hist) {
    uint32_t prefix = 0, mask = 0;
    u64 above = 0;  // count / mass strictly above the current prefix range
    __shared__ uint32_t s_prefix;
    __shared__ u64 s_above;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += SAMPLE_THREADS) hist[b] = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < c.n; i += SAMPLE_THREADS) {
            const float l = c.work[i];
            if (!in_topk(c, l)) continue;
            uint32_t key;
            u64 add;
            if (COUNT) {
                key = fkey(l);
                add = 1;
            } else {
                const float w = weight(c, l);
                key = fkey(w);
                add = mass_of(w);
            }
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], add);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int b = 255;
            for (; b > 0; --b) {
                if (above + hist[b] >= target) break;
                above += hist[b];
            }
            s_prefix = prefix | ((uint32_t)b << shift);
            s_above = above;
        }
        __syncthreads();
        prefix = s_prefix;
        above = s_above;
        mask |= 255u << shift;
    }
    return prefix;
}

__device__ __forceinline__ bool kept(const SampleCtx &c, float l) {
    if (!in_topk(c, l)) return false;
    const float w = weight(c, l);
    return w > 0.f && w >= c.min_p && (!c.use_p || fkey(w) >= c.pkey);
}

// Block-wide exclusive prefix sum of one u64 per thread; also returns the total.
__device__ __forceinline__ u64 block_exclusive_scan(u64 v, u64 &total) {
    __shared__ u64 warp_tot[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    u64 inc = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u64 t = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += t;
    }
    if (lane == 31) warp_tot[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        u64 w = lane < (SAMPLE_THREADS / 32) ? warp_tot[lane] : 0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const u64 t = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += t;
        }
        warp_tot[lane] = w;  // inclusive over warps
    }
    __syncthreads();
    total = warp_tot[SAMPLE_THREADS / 32 - 1];
    const u64 before = warp == 0 ? 0 : warp_tot[warp - 1];
    __syncthreads();
    return before + inc - v;
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
sample_kernel(const float *__restrict__ logits, int n, const InferSampleParams *__restrict__ params,
              const double *__restrict__ u_dev, int32_t *__restrict__ counts, uint8_t *__restrict__ in_context,
              int32_t *__restrict__ out_id, float *__restrict__ work) {
    pdl_launch_dependents();
    pdl_wait();  // logits, counts and the uniform come from earlier work on the stream
    __shared__ u64 hist[256];
    __shared__ float s_max;
    __shared__ int s_arg, s_id;
    const InferSampleParams p = *params;

    // Pass 1: penalties, and the first index of the maximum.
    float bv = -INFINITY;
    int bi = n;
    for (int i = threadIdx.x; i < n; i += SAMPLE_THREADS) {
        float l = logits[i];
        if (isnan(l)) l = -INFINITY;
        if (p.repetition_penalty != 1.f && in_context[i]) l = l > 0.f ? l / p.repetition_penalty : l * p.repetition_penalty;
        const int cnt = counts[i];
        if (cnt > 0) l -= p.presence_penalty + p.frequency_penalty * (float)cnt;
        work[i] = l;
        if (l > bv || (l == bv && i < bi)) { bv = l; bi = i; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
    }
    {
        __shared__ float wv[32];
        __shared__ int wi[32];
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        if (lane == 0) { wv[warp] = bv; wi[warp] = bi; }
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < SAMPLE_THREADS / 32; ++w)
                if (wv[w] > bv || (wv[w] == bv && wi[w] < bi)) { bv = wv[w]; bi = wi[w]; }
            s_max = bv;
            s_arg = bv == -INFINITY ? -1 : bi;
        }
        __syncthreads();
    }
    __threadfence_block();
    const float maxv = s_max;
    int id = s_arg;
    const bool greedy = p.temperature <= 0.f || p.top_k == 1;
    if (id >= 0 && !greedy) {
        SampleCtx c{work, n, maxv, 1.f / p.temperature, false, 0u, false, 0u, p.min_p};
        if (p.top_k > 0) {
            // Selectable count: the top-k filter applies only when k is below it.
            u64 sel = 0;
            for (int i = threadIdx.x; i < n; i += SAMPLE_THREADS) sel += work[i] != -INFINITY;
            u64 total_sel;
            block_exclusive_scan(sel, total_sel);
            if ((u64)p.top_k < total_sel) {
                c.kkey = radix_select<true>(c, (u64)p.top_k, hist);
                c.use_k = true;
            }
        }
        if (p.top_p < 1.f) {
            u64 m = 0;
            for (int i = threadIdx.x; i < n; i += SAMPLE_THREADS) {
                const float l = work[i];
                if (in_topk(c, l)) m += mass_of(weight(c, l));
            }
            u64 total;
            block_exclusive_scan(m, total);
            const u64 target = (u64)((double)p.top_p * (double)total);
            c.pkey = radix_select<false>(c, target > 0 ? target : 1, hist);
            c.use_p = true;
        }
        // Draw: contiguous segments per thread, exclusive scan of their kept mass, then the thread
        // whose segment holds r walks it.
        const int seg = (n + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
        const int beg = min(n, (int)threadIdx.x * seg), end = min(n, beg + seg);
        u64 mine = 0;
        for (int i = beg; i < end; ++i) {
            const float l = work[i];
            if (kept(c, l)) mine += mass_of(weight(c, l));
        }
        u64 total;
        const u64 before = block_exclusive_scan(mine, total);
        if (threadIdx.x == 0) s_id = id;  // fallback: the maximum (always kept)
        __syncthreads();
        double u = *u_dev;
        u = u < 0.0 ? 0.0 : (u >= 1.0 ? 0.0 : u);
        u64 r = (u64)(u * (double)total);
        if (r >= total) r = total - 1;
        if (mine > 0 && before <= r && r < before + mine) {
            u64 acc = before;
            for (int i = beg; i < end; ++i) {
                const float l = work[i];
                if (!kept(c, l)) continue;
                acc += mass_of(weight(c, l));
                if (acc > r) { s_id = i; break; }
            }
        }
        __syncthreads();
        id = s_id;
    }
    if (threadIdx.x == 0) {
        *out_id = id;
        if (id >= 0) {
            counts[id] += 1;
            in_context[id] = 1;
        }
    }
}

extern "C" cudaError_t infer_sample_f32(const float *logits, int n, const InferSampleParams *params,
                                        const double *u_dev, int32_t *counts, uint8_t *in_context, int32_t *out_id,
                                        float *workspace, cudaStream_t stream) {
    INFER_CHECK_ARG(n >= 1 && logits && params && u_dev && counts && in_context && out_id && workspace);
    INFER_LAUNCH(sample_kernel, dim3(1), dim3(SAMPLE_THREADS), 0, stream, logits, n, params, u_dev, counts,
                 in_context, out_id, workspace);
    return cudaGetLastError();
}
