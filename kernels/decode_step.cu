// Whole decode step of a Llama-3 model (batch 1, bf16 weights) as ONE persistent kernel.
//
// Why: a decode step streams ~2.5 GB of weights through ~80 small kernels (Llama-3.2-1B). Each
// kernel boundary costs a ramp and a tail (the SMs drain, the next grid fills, its loads start
// late), 3-6 us apiece even with programmatic dependent launch: ~35% of the step on an H200.
// Weights do not depend on activations, so nothing forces the weight stream to stop at a boundary.
//
// Structure (one block per SM, grid = SM count, cooperative launch so all blocks are resident):
//  - The last warp of each block is the PRODUCER: one lane walks the block's whole tile sequence
//    for the step (every layer's qkv, o_proj, gate_up, down row slices, then the LM head slice) and
//    copies 16 KB tiles into a shared-memory ring with TMA bulk copies (cp.async.bulk, L2
//    evict-first), gated only by ring slots being free: it runs ahead across phase boundaries and
//    grid barriers.
//  - The other 12 warps are CONSUMERS: they run the phases in order, separated by grid barriers:
//      embed | per layer: [rmsnorm + qkv] [rope + kv write + attention] [o_proj + residual]
//                         [rmsnorm + gate_up + swiglu] [down + residual] | [final norm + LM head + argmax]
//    In a GEMV phase each block owns a contiguous row range of the matrix (balanced in bytes); a
//    tile is 16 slices of 512 consecutive elements (1 KB of one row, k % 512 == 0); a group of 4
//    warps takes a tile, each warp dots 4 slices with the phase input held in shared memory (bf16)
//    and stores one partial per slice, so row sums are formed in a fixed order: the result is
//    deterministic (no atomics on data).
//  - Attention: (kv head, split) units over blocks; the unit holding the newest position rotates
//    k, writes k / v into the caches; the last split of a kv head (atomic ticket) merges the splits.
//    The cached rows of a unit's first batch are requested before q / k / v (overlapping round trips).
//  - Grid barrier: thread 0 of each block adds 1 to a global counter (release) and spins until it
//    reaches (barrier number) x (grid size) (acquire). The counters are left at zero on exit. A
//    wait longer than 2 s traps (an error for the host, not a hang).
// Data written during the kernel by other blocks is read with ld.global.cg (L2), never through the
// non-coherent / L1 paths.
//
// Status (H200, kernel harness `kernels_test --decode-step`, graph replay, same weights as the
// per-op step, session 9): Llama-3.2-1B 842-851 vs 901-906 us per step at position 144 (1.07x),
// 901-917 vs 945-951 at 1023, 933-949 vs 952-956 at 2047, 1,022-1,033 vs 974-980 at 4095 (0.96x);
// Llama-3.1-8B shapes 4,031-4,100 vs 4,547-4,616 at 1023 (1.14x), 4,340-4,406 vs 4,659-4,715 at
// 4095. On an H100 (session 12, same harness) it loses: 1,081 vs 1,038 us at 144 (0.96x), 0.95x at
// 1023, 0.94x at 2047, 0.89x at 4095, 8B shapes 1.02x / 0.99x: the weight stream alone takes 793 us,
// the latency chain alone 272, the step their sum (the ring holds ~8 us of the slower stream, less
// than a layer's attention gap). The engine picks it below a context length on GPUs with a DRAM
// peak of at least 4 TB/s (DecodeKernel::Auto, AUTO_MIN_PEAK_BW).
// Where the time goes (BENCH_DS_PROF=0 in the harness: per-phase clock64 breakdown, producer stalls by
// kind; Llama-3.2-1B at 144, means over blocks, us per step): the producer waits ~420 us for a free
// slot, always with the oldest tile landed (the consumers are behind, not the stream), and ~125-135
// us with every ring tile landed (nothing in flight for the SM), ~100 of them from the qkv barrier
// to the o_proj input; per-block tile and barrier sums are uniform across SMs (331-341 / 196-217 us),
// so no block is a systematic straggler. Per layer: qkv norm 1.1, o / down input copy 0.3 / 0.6,
// barrier waits 2.3-4.7 (1.1 in the latency chain alone), attention 5.9 on 8 blocks.
// Experiment switches DS_DBG_* (Llama-3.2-1B at 144): the weight stream alone
// (no math, no barriers, no attention) takes 563 us (4.4 TB/s); with the consumers' math 588 us;
// the latency chain alone (barriers, norms, epilogues, attention; no weights) 271-283 us, of it
// attention ~100 us. The whole step is close to stream + chain: the 192 KB ring holds little more
// than the bandwidth-delay product (6 stages stream at 591 us, 12 at 564), so a stall of the
// consumers stops the stream. Measured and dropped: one warp per tile (1.5x slower: a tile's
// latency sits on the phase's critical path), one 1 KB slice per warp with 16 warps (96 registers),
// L2 prefetch of weight tiles while the ring is full (cp.async.bulk.prefetch.L2, 8 / 24 tiles
// ahead: 1.1-1.3x slower) or of the attention unit's k / v rows (no gain), every block merging the
// attention splits itself (16 splits x 132 blocks of L2 reads: 2.3% slower at 4095), the
// __threadfence before the barrier's release add (1.6% slower), the query heads of a kv head spread
// over blocks (no merge; attention instantiated per heads-per-unit): 842 vs 857 us at 144 but 3-10%
// slower at 1023-4095 and on 8B shapes (register spills of the whole kernel: 330-460 bytes); per kv
// head ready counters instead of the qkv grid barrier (each attention unit waits for the ~18 blocks
// producing its rows): no gain at 144 / 1023, 1-3% slower at 2047 / 4095 (the qkv rows arrive at
// the stream's pace, the wait is not a straggler effect); more registers (__maxnreg__ 152): 13 warps
// do not fit (4 warps on one scheduler x 152 x 32 > its 16K registers, the launch fails); skipping
// the scores of row-less steps too (ptxas spills 120-230 bytes: 2.3-2.8% slower); a short context
// spread over up to 4 units per kv head whose partials every block merges while loading the o_proj
// input (3-6% slower at 144: 132 blocks read 34 KB of partials each right after the barrier). What
// made it faster than the per-op
// step: every device function inlined (called functions read the shared-memory ring through
// generic loads and spilled around the calls), branch-free tiles with two accumulators per slice
// (math 119 -> 25 us over the stream), splits of one load batch of rows (192) so short contexts need
// no cross-block merge, the residual rows a block owns kept in shared memory, one online-softmax
// update per batch of 4 rows (attention's scores + softmax + P.V 3.9 -> 2.9 us per layer at 144,
// per-block clock64 profile: BENCH_DS_PROF=0), P.V skipping the steps of a ragged last batch that
// hold no row (0.75-0.9% at 144, 1023 and on 8B shapes at 1023).
#include "common.cuh"

#include <limits.h>

// 12 consumer warps in 3 groups of 4 (+ one producer warp: 13 warps, 128 registers per thread).
// Tile i lands in ring slot i % stages and is consumed by group i % 3, each warp of the group taking
// 4 of its 16 slices. stages is a multiple of 3, so a group's next tile in a slot is the one after
// its own previous tile there: a parity wait can never see a phase two rounds old.
#define DS_MAX_CWARPS 12
#define DS_WPT 4                                   // warps per tile
#define DS_GROUPS (DS_MAX_CWARPS / DS_WPT)
#define DS_MAX_THREADS ((DS_MAX_CWARPS + 1) * 32)
#define DS_NW DS_MAX_CWARPS                        // consumer warps
#define DS_NT (DS_NW * 32)                         // consumer threads
#define DS_SLICE 512                      // elements per slice (1 KB)
#define DS_TILE_SLICES 16
#define DS_TILE (DS_TILE_SLICES * DS_SLICE * 2)  // bytes per ring stage
#define DS_P_FLOATS 4096                  // per-slice partials of one row chunk
#define DS_MAX_GROUP 8                    // GQA group (query heads per kv head)
#define DS_MIN_STAGES 6
#define DS_XO 64                          // rows of x a block may own
#define DS_MAX_SPLITS 16                  // attention splits per kv head

enum DsPhase { PH_QKV = 0, PH_O = 1, PH_GU = 2, PH_DOWN = 3, PH_HEAD = 4 };

// Workspace layout (bytes), shared by the launcher and the kernel.
struct DsLayout {
    size_t ctr, x, qkv, attn, act, part_ml, part_acc, cand_v, cand_i, total;
    int splits_max;
};
static __host__ __device__ inline size_t ds_align(size_t v) { return (v + 255) & ~(size_t)255; }
static __host__ __device__ inline DsLayout ds_layout(const InferDecodeModel &m, int grid) {
    DsLayout L;
    const int group = m.n_heads / m.n_kv_heads;
    L.splits_max = min(DS_MAX_SPLITS, grid / m.n_kv_heads);
    size_t o = 0;
    L.ctr = o; o = ds_align(o + sizeof(unsigned) * (4 + m.n_kv_heads));
    L.x = o; o = ds_align(o + sizeof(float) * m.hidden);
    L.qkv = o; o = ds_align(o + 2 * (size_t)(m.n_heads + 2 * m.n_kv_heads) * m.head_dim);
    L.attn = o; o = ds_align(o + 2 * (size_t)m.n_heads * m.head_dim);
    L.act = o; o = ds_align(o + 2 * (size_t)m.inter);
    // attention split partials: [n_kv_heads][splits_max][group] (max, sum) and [...][head_dim] acc
    L.part_ml = o; o = ds_align(o + sizeof(float) * 2 * (size_t)m.n_kv_heads * L.splits_max * group);
    L.part_acc = o; o = ds_align(o + sizeof(float) * (size_t)m.n_kv_heads * L.splits_max * group * m.head_dim);
    L.cand_v = o; o = ds_align(o + sizeof(float) * grid);
    L.cand_i = o; o = ds_align(o + sizeof(int) * grid);
    L.total = o;
    return L;
}
// Counters (unsigned, at L.ctr): [0] grid barrier, [1] exit, [2] argmax tickets, [4 + h] attention tickets.

struct DsArgs {
    InferDecodeModel m;
    const int32_t *id;
    const int32_t *pos;
    float *logits;
    int32_t *next_id;
    char *ws;
    DsLayout L;
    int stages;
    int in_elems;   // shared input buffer (bf16 elements)
    unsigned long long *prof;  // profiling (kernel harness only): see infer_decode_step_profile
    int dbg;                   // experiment switches (kernel harness only): DS_DBG_* below
};
// Experiment switches (kernel harness only, see infer_decode_step_debug); results are garbage with
// the first two, they bound the step: weight stream alone, and the latency chain alone.
#define DS_DBG_NO_MATH 1    // consumers wait for and release tiles without reading them
#define DS_DBG_NO_STREAM 2  // no weight tiles at all (producer idle, GEMV phases only do epilogues)
#define DS_DBG_FENCE 4      // grid barrier with a __threadfence before the release add
#define DS_DBG_NO_ATTN 8    // skip the attention phase
#define DS_DBG_NO_SYNC 16   // no grid barriers (with 1 | 8: the weight stream alone)
#define DS_DBG_STAGES6 32   // ring of 6 stages instead of as many as fit
// Profile slots (per block, u64): producer stall ns by the consumers' phase (DS_PH_*): the oldest tile
// in flight (M) or landed and waiting for the consumers (C).
#define DS_PROF_STRIDE 256
#define DS_PROF_STALL_M 96
#define DS_PROF_STALL_C 102
#define DS_PROF_STALL_I 116  // ... of which every tile of the ring had landed: nothing in flight for this SM
// clock64 cycles of thread 0 per GEMV phase (PH_*): input (norm / copy), tiles, epilogue, barrier.
#define DS_PROF_BRK 128
#define DS_PROF_SMID 160
// Accumulators for slots [0, DS_PROF_ACCS) live in shared memory while the kernel runs (a global
// read-modify-write per mark would add an L2 round trip to the path it measures); thread 0 adds them
// to the buffer at exit. The per-barrier time marks (slots 2..94) are plain global stores.
#define DS_PROF_ACCS 160
enum DsConsumerPhase { DS_PH_QKV = 0, DS_PH_ATTN = 1, DS_PH_O = 2, DS_PH_GU = 3, DS_PH_DOWN = 4, DS_PH_EDGE = 5 };

// One GEMV phase: rows [0, n) of each of nseg segments (segment s starts seg_stride elements after w).
struct DsMat {
    const bf16 *w;
    int n, k, nseg;
    size_t seg_stride;
};
__device__ __forceinline__ DsMat ds_mat(const DsArgs &a, int layer, int ph) {
    const InferDecodeModel &m = a.m;
    if (ph == PH_HEAD) return DsMat{static_cast<const bf16 *>(m.lm_head), m.vocab, m.hidden, 1, 0};
    const InferDecodeLayerW &l = m.layers[layer];
    switch (ph) {
        case PH_QKV: return DsMat{static_cast<const bf16 *>(l.qkv), (m.n_heads + 2 * m.n_kv_heads) * m.head_dim, m.hidden, 1, 0};
        case PH_O: return DsMat{static_cast<const bf16 *>(l.o), m.hidden, m.n_heads * m.head_dim, 1, 0};
        case PH_GU: return DsMat{static_cast<const bf16 *>(l.gate_up), m.inter, m.hidden, 2, (size_t)m.inter * m.hidden};
        default: return DsMat{static_cast<const bf16 *>(l.down), m.hidden, m.inter, 1, 0};
    }
}
// This block's rows [r0, r1) and the rows per chunk (the partials of one chunk fit DS_P_FLOATS).
__device__ __forceinline__ void ds_rows(const DsMat &d, int &r0, int &r1, int &ch) {
    r0 = (int)((long long)blockIdx.x * d.n / gridDim.x);
    r1 = (int)((long long)(blockIdx.x + 1) * d.n / gridDim.x);
    ch = DS_P_FLOATS / (d.nseg * (d.k / DS_SLICE));
}

// The device code below needs sm_90 (mbarrier transaction counts, TMA bulk copies); for older
// targets the kernel is an empty shell that the launcher never starts.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
// ---------------------------------------------------------------------------------------------
// mbarrier / bulk-copy / ordering primitives (sm_90)
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count));
}
// Watchdog: a wait that lasts longer than this is a bug (or a device fault); the kernel traps so the
// host gets an error instead of a hang.
#define DS_WATCHDOG_NS 2000000000ull
__device__ __forceinline__ uint64_t globaltimer() {
    uint64_t t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}
__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
    uint32_t ok;
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
        : "=r"(ok)
        : "r"(bar), "r"(parity)
        : "memory");
    return ok != 0;
}
// Non-blocking (mbarrier.try_wait may suspend the thread for a while before it returns false).
__device__ __forceinline__ bool mbar_test_wait(uint32_t bar, uint32_t parity) {
    uint32_t ok;
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
        : "=r"(ok)
        : "r"(bar), "r"(parity)
        : "memory");
    return ok != 0;
}
__device__ __forceinline__ bool mbar_try_wait_ns(uint32_t bar, uint32_t parity, uint32_t ns) {
    uint32_t ok;
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2, %3;\n selp.u32 %0, 1, 0, p;\n}"
        : "=r"(ok)
        : "r"(bar), "r"(parity), "r"(ns)
        : "memory");
    return ok != 0;
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    if (mbar_try_wait(bar, parity)) return;
    const uint64_t t0 = globaltimer();
    while (!mbar_try_wait(bar, parity))
        if (globaltimer() - t0 > DS_WATCHDOG_NS) __trap();
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.shared::cta.b64 st, [%0];\n}" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}" ::"r"(bar), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void bulk_g2s(uint32_t dst, const void *src, uint32_t bytes, uint32_t bar, uint64_t pol) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;" ::"r"(dst),
        "l"(src), "r"(bytes), "r"(bar), "l"(pol)
        : "memory");
}
__device__ __forceinline__ void consumer_sync() { asm volatile("bar.sync 1, %0;" ::"r"(DS_NT) : "memory"); }
__device__ __forceinline__ unsigned ld_acquire(const unsigned *p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void red_release_add(unsigned *p, unsigned v) {
    asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ unsigned atom_acq_rel_add(unsigned *p, unsigned v) {
    unsigned old;
    asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], %2;" : "=r"(old) : "l"(p), "r"(v) : "memory");
    return old;
}

// Consumers of every block: all stores before it are visible to every block after it. The block's
// stores are ordered before thread 0's release add by the CTA barrier (causality order is transitive
// through bar.sync and the gpu-scope release / acquire pair; CUTLASS's generic barrier relies on the
// same), so no __threadfence is needed (measured: 1.6% of the step).
__device__ __forceinline__ void grid_sync(unsigned *ctr, unsigned &target, int dbg) {
    consumer_sync();
    if (dbg & DS_DBG_NO_SYNC) return;
    target += gridDim.x;
    if (threadIdx.x == 0) {
        if (dbg & DS_DBG_FENCE) __threadfence();
        red_release_add(ctr, 1);
        const uint64_t t0 = globaltimer();
        while (ld_acquire(ctr) < target)
            if (globaltimer() - t0 > DS_WATCHDOG_NS) __trap();
    }
    consumer_sync();
}

// ---------------------------------------------------------------------------------------------
// Producer
// ---------------------------------------------------------------------------------------------
// The block's tile sequence for the whole step, as the producer walks it; the consumers walk the
// same phases / chunks / segments / tiles in ds_gemv.
struct TileIter {
    int p = -1, c0 = 0, r1 = 0, ch = 1, s = 0;
    size_t off = 0, total = 0;
    DsMat d;
    __device__ void start_chunk() {
        total = (size_t)(min(c0 + ch, r1) - c0) * d.k * 2;
        off = 0;
        s = 0;
    }
    __device__ void next_phase(const DsArgs &a, int n_ph) {
        for (++p; p < n_ph; ++p) {
            d = ds_mat(a, p / 4, p == n_ph - 1 ? PH_HEAD : p % 4);
            int r0;
            ds_rows(d, r0, r1, ch);
            if (r0 < r1) {
                c0 = r0;
                start_chunk();
                return;
            }
        }
    }
    __device__ const char *addr() const {
        return reinterpret_cast<const char *>(d.w + s * d.seg_stride + (size_t)c0 * d.k) + off;
    }
    __device__ uint32_t bytes() const { return (uint32_t)min((size_t)DS_TILE, total - off); }
    __device__ void advance(const DsArgs &a, int n_ph) {
        off += DS_TILE;
        if (off < total) return;
        off = 0;
        if (++s < d.nseg) return;
        c0 += ch;
        if (c0 < r1) return start_chunk();
        next_phase(a, n_ph);
    }
};

// Producer stalls (ring full) are of two kinds: the oldest tile is still in flight (the stream is the
// limit) or it has landed and waits for the consumers (they are busy with the latency chain). When
// the newest tile has landed too, nothing is in flight for this SM: its share of the stream stops.
// Profiling times the kinds by the consumers' phase when the stall began (*cph, see DsSmem::cph).
// Measured (1B, H200): stalls with nothing in flight take 135 us of the step at position 144, 185 at
// 1023, most of it from the qkv barrier to the o_proj input (the attention gap). Prefetching the
// tiles past the ring into L2 when that begins (cp.async.bulk.prefetch.L2 or prefetch.global.L2,
// 4-16 tiles) does not shorten the step (0.98-1.0x at depth 4-8, 0.9x at 16): the attention phase
// then waits longer for its q / k / v and cache rows and the gap grows by what the o_proj and gate_up
// phases gain.
__device__ __forceinline__ void ds_produce(const DsArgs &a, uint8_t *ring, uint32_t full0, uint32_t empty0, const volatile int *cph,
                                           unsigned long long *pacc) {
    const uint64_t pol = l2_policy_evict_first(1.f);
    const uint32_t ring_s = smem_u32(ring);
    const int n_ph = a.m.n_layers * 4 + 1;
    TileIter cur;
    if (a.dbg & DS_DBG_NO_STREAM) return;
    cur.next_phase(a, n_ph);
    for (uint32_t it = 0; cur.p < n_ph; ++it) {
        const uint32_t slot = it % a.stages, round = it / a.stages;
        if (round > 0) {
            const uint32_t eb = empty0 + 8 * slot, fb = full0 + 8 * slot, par = (round - 1) & 1;
            if (!a.prof) {
                mbar_wait(eb, par);
            } else if (!mbar_test_wait(eb, par)) {  // profiling: time the stall by kind
                // the newest tile in the ring (it - 1): when it has landed too, nothing is in flight
                const uint32_t nslot = slot == 0 ? a.stages - 1 : slot - 1, npar = ((it - 1) / a.stages) & 1;
                const uint64_t t0 = globaltimer();
                const int ph = *cph;  // what the consumers were doing when the stream stopped
                uint64_t t_land = 0, t_idle = 0;  // when the oldest / every tile was seen landed (0: not yet)
                for (;;) {
                    if (!t_land && mbar_test_wait(fb, par)) t_land = globaltimer();
                    if (t_land && !t_idle && mbar_test_wait(full0 + 8 * nslot, npar)) t_idle = globaltimer();
                    if (mbar_try_wait_ns(eb, par, 128)) break;  // polls finely: the stall kinds are timed
                    if (globaltimer() - t0 > DS_WATCHDOG_NS) __trap();
                }
                const uint64_t t1 = globaltimer();
                pacc[0] += t1 - t0;
                pacc[DS_PROF_STALL_M + ph] += (t_land ? t_land : t1) - t0;
                if (t_land) pacc[DS_PROF_STALL_C + ph] += t1 - t_land;
                if (t_idle) pacc[DS_PROF_STALL_I + ph] += t1 - t_idle;
            }
        }
        const uint32_t bytes = cur.bytes();
        mbar_expect_tx(full0 + 8 * slot, bytes);
        bulk_g2s(ring_s + slot * DS_TILE, cur.addr(), bytes, full0 + 8 * slot, pol);
        cur.advance(a, n_ph);
    }
}

// ---------------------------------------------------------------------------------------------
// Consumers
// ---------------------------------------------------------------------------------------------
struct DsSmem {
    uint8_t *ring;
    uint4 *in;    // phase input, bf16 (8 per uint4)
    float *part;  // [DS_P_FLOATS]
    float *red;   // [64] reductions
    float *xo;    // [DS_XO] this block's rows of the residual stream x (it owns them: embed, o, down)
    uint32_t full0, empty0;
    uint32_t it;  // consumer tile counter (same sequence as the producer's)
    uint32_t slot, par;  // it % stages and the parity of it / stages, kept incrementally
    long long tp;        // profiling: last clock64 mark (thread 0)
    volatile int *cph;   // the consumers' phase (DS_PH_*), read by the producer's profile
    unsigned long long *pacc;  // profile accumulators [DS_PROF_ACCS] (profiling only)
    __device__ __forceinline__ void phase(int ph) const {
        if (threadIdx.x == 0) *cph = ph;
    }
    __device__ __forceinline__ void next_tile(int stages) {
        ++it;
        if (++slot == (uint32_t)stages) {
            slot = 0;
            par ^= 1u;
        }
    }
};

// Profiling (kernel harness only): SM cycles since the last mark added to slot `s` of this block.
#define DS_PROF_ACC(s)                                                                               \
    do {                                                                                             \
        if (a.prof && threadIdx.x == 0) {                                                            \
            const long long now_ = clock64();                                                        \
            sm.pacc[s] += (unsigned long long)(now_ - sm.tp);                                        \
            sm.tp = now_;                                                                            \
        }                                                                                            \
    } while (0)

__device__ __forceinline__ float ldcg_bf16(const bf16 *p) {
    return __uint_as_float((uint32_t)__ldcg(reinterpret_cast<const unsigned short *>(p)) << 16);
}
__device__ __forceinline__ float ds_silu(float v) { return v / (1.f + __expf(-v)); }
__device__ __forceinline__ float ds_bf16r(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

// in = bf16(x * g) over the hidden size; returns rsqrt(mean(x^2) + eps) (every consumer thread).
__device__ __forceinline__ float ds_input_norm(const DsArgs &a, DsSmem &sm, const bf16 *g) {
    const float *x = reinterpret_cast<const float *>(a.ws + a.L.x);
    const int kv = a.m.hidden / 8;
    float ss = 0.f;
    for (int c = threadIdx.x; c < kv; c += DS_NT) {
        const float4 lo = __ldcg(reinterpret_cast<const float4 *>(x) + 2 * c), hi = __ldcg(reinterpret_cast<const float4 *>(x) + 2 * c + 1);
        float gf[8];
        unpack8(__ldg(reinterpret_cast<const uint4 *>(g) + c), gf);
        const float v[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
        float o[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            ss = fmaf(v[e], v[e], ss);
            o[e] = v[e] * gf[e];
        }
        sm.in[c] = pack8(o);
    }
    ss = warp_sum(ss);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) sm.red[warp] = ss;
    consumer_sync();
    float t = lane < DS_NW ? sm.red[lane] : 0.f;
    t = warp_sum(t);
    consumer_sync();  // red reusable, `in` complete
    return rsqrtf(t / (float)a.m.hidden + a.m.eps);
}

// in = src (bf16 written earlier in this kernel).
__device__ __forceinline__ void ds_input_copy(DsSmem &sm, const void *src, int elems) {
    for (int c = threadIdx.x; c < elems / 8; c += DS_NT) sm.in[c] = __ldcg(static_cast<const uint4 *>(src) + c);
    consumer_sync();
}

// Warp (warp % 4) of a group dots slices 4q .. 4q + 3 of the tile (the tile's ns <= 16 slices start
// at slice sl0 of the chunk) with the input and stores their partials; the 4 per-lane sums are
// reduced together (5 shuffles for the 4, not 4 x 5).
#define DS_SPW (DS_TILE_SLICES / DS_WPT)  // slices per warp
__device__ __forceinline__ void ds_tile_warp(const DsSmem &sm, uint32_t slot, int sl0, int ns, int spr, float *ps) {
    const int lane = threadIdx.x & 31, q = (threadIdx.x >> 5) % DS_WPT;
    const uint4 *t = reinterpret_cast<const uint4 *>(sm.ring + slot * DS_TILE) + q * DS_SPW * 64;
    // Branch-free: slices past ns (a chunk's last, partial tile) are computed on stale ring bytes and
    // not stored, so the 8 dot products (2 halves x 4 slices) are independent chains the compiler
    // interleaves. The input slice of each follows the chunk's row layout (one modulo per tile).
    int xs = (sl0 + q * DS_SPW) % spr;
    float v[DS_SPW];
#pragma unroll
    for (int j = 0; j < DS_SPW; ++j) {
        const uint4 *xi = sm.in + xs * (DS_SLICE / 8);
        xs = xs + 1 == spr ? 0 : xs + 1;
        float hv[2] = {0.f, 0.f};
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float wf[8], xf[8];
            unpack8(t[j * 64 + h * 32 + lane], wf);
            unpack8(xi[h * 32 + lane], xf);
#pragma unroll
            for (int e = 0; e < 8; ++e) hv[h] = fmaf(xf[e], wf[e], hv[h]);
        }
        v[j] = hv[0] + hv[1];
    }
    // Transpose-reduce: at the step with offset o each lane keeps half of its values (which half:
    // lane bit o) summed with its partner's; then the remaining lanes of a value are summed.
    int o = 16;
#pragma unroll
    for (int n = DS_SPW / 2; n >= 1; o >>= 1, n >>= 1) {
        const bool up = lane & o;
#pragma unroll
        for (int i = 0; i < n; ++i) {
            const float send = up ? v[i] : v[i + n], keep = up ? v[i + n] : v[i];
            v[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
        }
    }
    for (; o >= 1; o >>= 1) v[0] += __shfl_xor_sync(0xffffffffu, v[0], o);
    constexpr int SH = DS_SPW == 4 ? 3 : DS_SPW == 2 ? 4 : DS_SPW == 8 ? 2 : 1;  // 5 - log2(DS_SPW)
    const int idx = (lane >> SH) & (DS_SPW - 1);
    if ((lane & ((1 << SH) - 1)) == 0 && q * DS_SPW + idx < ns) ps[sl0 + q * DS_SPW + idx] = v[0];
}

struct ArgBest {
    float v = -INFINITY;
    int i = INT_MAX;
};
__device__ __forceinline__ bool ds_better(float v, int i, float bv, int bi) { return v > bv || (v == bv && i < bi); }

// One GEMV phase for this block: tiles from the ring, per-slice partials, then the epilogue per row.
__device__ __forceinline__ void ds_gemv(const DsArgs &a, DsSmem &sm, int layer, int ph, float scale, ArgBest &best) {
    const DsMat d = ds_mat(a, layer, ph);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int spr = d.k / DS_SLICE;
    int r0, r1, ch;
    ds_rows(d, r0, r1, ch);
    for (int c0 = r0; c0 < r1; c0 += ch) {
        const int c1 = min(c0 + ch, r1);
        for (int s = 0; s < d.nseg; ++s) {
            const int nsl = (c1 - c0) * spr;  // slices of this chunk and segment
            float *ps = sm.part + s * ch * spr;
            // Tiles go round robin over the warp groups; each warp dots 4 slices of its group's tile.
            for (int sl0 = 0; sl0 < nsl && !(a.dbg & DS_DBG_NO_STREAM); sl0 += DS_TILE_SLICES, sm.next_tile(a.stages)) {
                if (sm.it % DS_GROUPS != (uint32_t)(warp / DS_WPT)) continue;
                const uint32_t slot = sm.slot;
                const uint64_t t0 = a.prof && lane == 0 ? globaltimer() : 0;
                mbar_wait(sm.full0 + 8 * slot, sm.par);
                if (a.prof && lane == 0) atomicAdd(&a.prof[blockIdx.x * DS_PROF_STRIDE + 1], (unsigned long long)(globaltimer() - t0));
                if (!(a.dbg & DS_DBG_NO_MATH)) ds_tile_warp(sm, slot, sl0, min(DS_TILE_SLICES, nsl - sl0), spr, ps);
                __syncwarp();
                if (lane == 0) mbar_arrive(sm.empty0 + 8 * slot);
            }
        }
        consumer_sync();
        DS_PROF_ACC(DS_PROF_BRK + ph * 4 + 1);
        for (int i = threadIdx.x; i < c1 - c0; i += DS_NT) {
            float v[2] = {0.f, 0.f};
            for (int s = 0; s < d.nseg; ++s) {
                const float *pr = sm.part + (s * ch + i) * spr;
                float t = 0.f;
                for (int j = 0; j < spr; ++j) t += pr[j];
                v[s] = t * scale;
            }
            const int row = c0 + i;
            switch (ph) {
                case PH_QKV: reinterpret_cast<bf16 *>(a.ws + a.L.qkv)[row] = __float2bfloat16_rn(v[0]); break;
                case PH_O:
                case PH_DOWN: {  // this block owns x[row] in the embed, o and down phases alike
                    const float xn = sm.xo[row - r0] + v[0];
                    sm.xo[row - r0] = xn;
                    __stcg(reinterpret_cast<float *>(a.ws + a.L.x) + row, xn);
                    break;
                }
                case PH_GU:
                    reinterpret_cast<bf16 *>(a.ws + a.L.act)[row] = __float2bfloat16_rn(ds_silu(ds_bf16r(v[0])) * ds_bf16r(v[1]));
                    break;
                default:
                    a.logits[row] = v[0];
                    if (ds_better(v[0], row, best.v, best.i)) best = ArgBest{v[0], row};
            }
        }
        consumer_sync();  // partials reusable
        DS_PROF_ACC(DS_PROF_BRK + ph * 4 + 2);
    }
}

// Attention: (kv head, split) units over blocks (see DsAttnUnit). Each unit writes its split's
// (max, sum, acc) per query head; the last split of a kv head to finish (atomic ticket) merges them
// into attn; a single split writes attn itself. (Every block merging all splits itself while loading
// the o_proj input was measured slower: 1.2% at position 1023, 2.3% at 4095.)
// Lanes split a k / v row: TPR lanes of 8 dims each, so a warp takes RPW positions at once and UP
// such steps are loaded together. A split is one such batch of rows (192 for head_dim 64), so below
// that length one block per kv head writes attn directly, with no cross-block merge.
template <int D, int G>
struct DsAttnUnit {
    static constexpr int TPR = D / 8, RPW = 32 / TPR, UP = G <= 4 ? 4 : 1;
    int p, len, splits, kvh, sp, b, e;
    bool active;
    __device__ __forceinline__ DsAttnUnit(const DsArgs &a) {
        p = *a.pos;
        len = (p >= 0 && p < a.m.ctx) ? p + 1 : 0;
        const int rows = DS_NW * RPW * UP;
        splits = max(1, min(a.L.splits_max, (len + rows - 1) / rows));
        active = (int)blockIdx.x < a.m.n_kv_heads * splits;
        kvh = blockIdx.x / splits;
        sp = blockIdx.x % splits;
        const int chunk = (len + splits - 1) / splits;
        b = sp * chunk;
        e = min(len, b + chunk);
    }
};


template <int D, int G>  // G: GQA group bound (4 or 8), sizes the per-thread head arrays
__device__ __forceinline__ void ds_attention(const DsArgs &a, DsSmem &sm, int layer) {
    const InferDecodeModel &m = a.m;
    const int group = m.n_heads / m.n_kv_heads, half = D / 2;
    const DsAttnUnit<D, G> u(a);
    if (!u.active) return;
    // Scores reduce over the TPR lanes of a row (log2 TPR shuffles).
    constexpr int TPR = DsAttnUnit<D, G>::TPR, RPW = DsAttnUnit<D, G>::RPW, UP = DsAttnUnit<D, G>::UP;
    const int p = u.p, len = u.len, splits = u.splits, kvh = u.kvh, sp = u.sp, b = u.b, e = u.e;
    const InferDecodeLayerW &lw = m.layers[layer];
    bf16 *kc = static_cast<bf16 *>(lw.k_cache) + (size_t)kvh * m.ctx * D;
    bf16 *vc = static_cast<bf16 *>(lw.v_cache) + (size_t)kvh * m.ctx * D;
    const bf16 *qkv = reinterpret_cast<const bf16 *>(a.ws + a.L.qkv);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    // Shared scratch (in the input buffer, free during this phase): q [group][D], per-warp m / l /
    // acc, then the new position's rotated k and its v (bf16, D each).
    float *qs = reinterpret_cast<float *>(sm.in);
    float *wm = qs + group * D, *wl = wm + DS_MAX_CWARPS * group, *wacc = wl + DS_MAX_CWARPS * group;
    uint4 *knew = reinterpret_cast<uint4 *>(wacc + DS_MAX_CWARPS * group * D), *vnew = knew + D / 8;
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)D);
    const int sub = lane / TPR, dl = lane % TPR;
    const int step = DS_NW * RPW;
    // The cached rows of the first batch are requested before q / k / v (independent round trips).
    // Row p is not in the cache yet (its stale row is loaded, then replaced by knew / vnew at use).
    uint4 kw[UP], vw[UP];
    const int base0 = b + warp * RPW;
#pragma unroll
    for (int u = 0; u < UP; ++u) {
        const int t = max(0, min(base0 + u * step + sub, e - 1));  // clamped rows are loaded, not used
        kw[u] = __ldcg(reinterpret_cast<const uint4 *>(kc + (size_t)t * D) + dl);
        vw[u] = __ldcg(reinterpret_cast<const uint4 *>(vc + (size_t)t * D) + dl);
    }
    if (len > 0) {
        for (int t = threadIdx.x; t < group * half; t += DS_NT) {
            const int hh = t / half, j = t - hh * half;
            const bf16 *qr = qkv + (size_t)(kvh * group + hh) * D;
            const float2 o = rope_pair(ldcg_bf16(qr + j), ldcg_bf16(qr + j + half), m.cos_sin, p, half, j);
            qs[hh * D + j] = ds_bf16r(o.x) * scale_log2;
            qs[hh * D + j + half] = ds_bf16r(o.y) * scale_log2;
        }
        if (b < e && e == len) {  // this unit holds position p: rotate k; k and v into smem and the caches
            bf16 *ks = reinterpret_cast<bf16 *>(knew), *vs = reinterpret_cast<bf16 *>(vnew);
            const bf16 *kr = qkv + (size_t)(m.n_heads + kvh) * D, *vr = qkv + (size_t)(m.n_heads + m.n_kv_heads + kvh) * D;
            for (int j = threadIdx.x; j < half; j += DS_NT) {
                const float2 o = rope_pair(ldcg_bf16(kr + j), ldcg_bf16(kr + j + half), m.cos_sin, p, half, j);
                ks[j] = __float2bfloat16_rn(o.x);
                ks[j + half] = __float2bfloat16_rn(o.y);
                kc[(size_t)p * D + j] = ks[j];
                kc[(size_t)p * D + j + half] = ks[j + half];
            }
            for (int j = threadIdx.x; j < D; j += DS_NT) {
                vs[j] = __float2bfloat16_rn(ldcg_bf16(vr + j));
                vc[(size_t)p * D + j] = vs[j];
            }
        }
    }
    consumer_sync();
    DS_PROF_ACC(110);
    float q[G][8], acc[G][8], mx[G], l[G];
#pragma unroll
    for (int h = 0; h < G; ++h) {
        mx[h] = -INFINITY;
        l[h] = 0.f;
#pragma unroll
        for (int d = 0; d < 8; ++d) {
            q[h][d] = h < group ? qs[h * D + dl * 8 + d] : 0.f;
            acc[h][d] = 0.f;
        }
    }
    // One batch of UP steps: scores, online softmax, P.V (row p from knew / vnew).
    auto batch = [&](int base, const uint4 (&kb)[UP], const uint4 (&vb)[UP]) {
        // The UP rows of a lane group are one online-softmax update: all scores first (their
        // shuffles interleave), one max / rescale per head, then P.V. Rows past e weigh 0.
        // P.V skips a step u with base + u * step >= e, warp-uniformly: no lane holds a row there (sub 0
        // has the lowest). The last batch of a unit is often ragged (145 rows in 192 at position 144).
        // (Skipping the scores of such steps too made ptxas spill 120-230 bytes: 2.3-2.8% slower.)
        float sc[G][UP];
        bool valid[UP];
#pragma unroll
        for (int u = 0; u < UP; ++u) {
            const int t = min(base + u * step + sub, e - 1);
            valid[u] = base + u * step + sub < e;
#pragma unroll
            for (int h = 0; h < G; ++h) sc[h][u] = 0.f;
            uint4 kk = kb[u];  // (not `t == p ? knew[dl] : kb[u]`: an lvalue select puts kb in local memory)
            if (t == p) kk = knew[dl];
            float kf[8];
            unpack8(kk, kf);
#pragma unroll
            for (int h = 0; h < G; ++h)
#pragma unroll
                for (int d = 0; d < 8; ++d) sc[h][u] = fmaf(q[h][d], kf[d], sc[h][u]);
        }
#pragma unroll
        for (int o = TPR / 2; o > 0; o >>= 1)
#pragma unroll
            for (int h = 0; h < G; ++h)
#pragma unroll
                for (int u = 0; u < UP; ++u)
                    sc[h][u] += __shfl_xor_sync(0xffffffffu, sc[h][u], o);
#pragma unroll
        for (int h = 0; h < G; ++h) {
            float mn = mx[h];
#pragma unroll
            for (int u = 0; u < UP; ++u) mn = valid[u] ? fmaxf(mn, sc[h][u]) : mn;
            const float corr = mn == -INFINITY ? 1.f : exp2f(mx[h] - mn);
            float ps = 0.f;
#pragma unroll
            for (int u = 0; u < UP; ++u) {
                sc[h][u] = valid[u] ? exp2f(sc[h][u] - mn) : 0.f;  // now the weight p
                ps += sc[h][u];
            }
            l[h] = l[h] * corr + ps;
            mx[h] = mn;
#pragma unroll
            for (int d = 0; d < 8; ++d) acc[h][d] *= corr;
        }
#pragma unroll
        for (int u = 0; u < UP; ++u) {
            if (base + u * step >= e) continue;
            const int t = min(base + u * step + sub, e - 1);
            uint4 vv = vb[u];
            if (t == p) vv = vnew[dl];
            float vf[8];
            unpack8(vv, vf);
#pragma unroll
            for (int h = 0; h < G; ++h)
#pragma unroll
                for (int d = 0; d < 8; ++d) acc[h][d] = fmaf(sc[h][u], vf[d], acc[h][d]);
        }
    };
    if (base0 < e) batch(base0, kw, vw);                                // warp-uniform
    for (int base = base0 + step * UP; base < e; base += step * UP) {  // warp-uniform trip count
        uint4 kn[UP], vn[UP];
#pragma unroll
        for (int u = 0; u < UP; ++u) {
            const int t = min(base + u * step + sub, e - 1);
            kn[u] = __ldcg(reinterpret_cast<const uint4 *>(kc + (size_t)t * D) + dl);
            vn[u] = __ldcg(reinterpret_cast<const uint4 *>(vc + (size_t)t * D) + dl);
        }
        batch(base, kn, vn);
    }
    // Merge the RPW row groups of the warp (lanes dl, dl + TPR, ...), then store the warp's result.
#pragma unroll
    for (int h = 0; h < G; ++h) {
        if (h >= group) break;
        float M = mx[h];
#pragma unroll
        for (int o = TPR; o < 32; o <<= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
        const float wt = mx[h] == -INFINITY ? 0.f : exp2f(mx[h] - M);
        float L = l[h] * wt;
#pragma unroll
        for (int o = TPR; o < 32; o <<= 1) L += __shfl_xor_sync(0xffffffffu, L, o);
#pragma unroll
        for (int d = 0; d < 8; ++d) {
            float A = acc[h][d] * wt;
#pragma unroll
            for (int o = TPR; o < 32; o <<= 1) A += __shfl_xor_sync(0xffffffffu, A, o);
            if (sub == 0) wacc[(warp * group + h) * D + dl * 8 + d] = A;
        }
        if (lane == 0) {
            wm[warp * group + h] = M;
            wl[warp * group + h] = L;
        }
    }
    consumer_sync();
    DS_PROF_ACC(111);
    // Merge the warps: this split's (max, sum, acc) per head into the workspace (one split: attn).
    const size_t row0 = (size_t)kvh * a.L.splits_max * group;  // split s, head h: row row0 + s * group + h
    float *pml = reinterpret_cast<float *>(a.ws + a.L.part_ml);
    float *pacc = reinterpret_cast<float *>(a.ws + a.L.part_acc);
    bf16 *out = reinterpret_cast<bf16 *>(a.ws + a.L.attn) + (size_t)kvh * group * D;
    for (int t = threadIdx.x; t < group * D; t += DS_NT) {
        const int h = t / D, d = t - h * D;
        float M = -INFINITY;
        for (int w = 0; w < DS_NW; ++w) M = fmaxf(M, wm[w * group + h]);
        float L = 0.f, A = 0.f;
        for (int w = 0; w < DS_NW; ++w) {
            const float mw = wm[w * group + h], wt = mw == -INFINITY ? 0.f : exp2f(mw - M);
            L += wl[w * group + h] * wt;
            A += wacc[(w * group + h) * D + d] * wt;
        }
        if (splits == 1) {
            out[t] = __float2bfloat16_rn(L > 0.f ? A / L : 0.f);
            continue;
        }
        const size_t r = row0 + (size_t)sp * group + h;
        __stcg(pacc + r * D + d, A);
        if (d == 0) {
            __stcg(pml + 2 * r, M);
            __stcg(pml + 2 * r + 1, L);
        }
    }
    // Ticket: the last split of this kv head to finish merges all of them. The CTA barrier orders the
    // block's partial stores before thread 0's acq_rel add (release); the last block's reads come after
    // its acquire and the barrier (no __threadfence needed, as in grid_sync).
    if (splits == 1) {
        DS_PROF_ACC(112);
        return;
    }
    unsigned *tickets = reinterpret_cast<unsigned *>(a.ws + a.L.ctr) + 4;
    int &last = *reinterpret_cast<int *>(sm.red + 63);  // no static __shared__: see the kernel
    consumer_sync();
    if (threadIdx.x == 0) {
        last = atom_acq_rel_add(&tickets[kvh], 1u) == (unsigned)splits - 1;
        if (last) tickets[kvh] = 0;  // next used after a grid barrier
    }
    consumer_sync();
    if (!last) return;
    // (max, sum) of every split first (one round trip), then the accumulators, 8 dims per thread.
    constexpr int CPR = D / 8;
    for (int t = threadIdx.x; t < group * CPR; t += DS_NT) {
        const int h = t / CPR, d0 = (t - h * CPR) * 8;
        float ms[DS_MAX_SPLITS], M = -INFINITY;
#pragma unroll
        for (int s = 0; s < DS_MAX_SPLITS; ++s) {
            ms[s] = s < splits ? __ldcg(pml + 2 * (row0 + (size_t)s * group + h)) : -INFINITY;
            M = fmaxf(M, ms[s]);
        }
        float L = 0.f, A[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int s = 0; s < DS_MAX_SPLITS; ++s) {
            if (s >= splits) continue;
            const size_t r = row0 + (size_t)s * group + h;
            const float wt = ms[s] == -INFINITY ? 0.f : exp2f(ms[s] - M);
            const float4 *ap = reinterpret_cast<const float4 *>(pacc + r * D + d0);
            const float4 lo = __ldcg(ap), hi = __ldcg(ap + 1);
            L += __ldcg(pml + 2 * r + 1) * wt;
            A[0] += lo.x * wt; A[1] += lo.y * wt; A[2] += lo.z * wt; A[3] += lo.w * wt;
            A[4] += hi.x * wt; A[5] += hi.y * wt; A[6] += hi.z * wt; A[7] += hi.w * wt;
        }
        const float inv = L > 0.f ? 1.f / L : 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) A[e] *= inv;
        reinterpret_cast<uint4 *>(out + (size_t)h * D)[d0 / 8] = pack8(A);
    }
}

#endif  // sm_90 device code

// Profiling: thread 0 of each block stamps the time after every grid barrier.
#define DS_PROF_MARK()                                                                                 \
    do {                                                                                               \
        if (a.prof && threadIdx.x == 0) a.prof[blockIdx.x * DS_PROF_STRIDE + 2 + (pmark < 92 ? pmark++ : pmark)] = globaltimer(); \
    } while (0)

template <int D, int G>
__global__ void __launch_bounds__(DS_MAX_THREADS, 1) decode_step_kernel(const DsArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    __trap();  // never launched: infer_decode_step_supported() requires compute capability 9.0
#else
    // Only dynamic shared memory (no static __shared__ anywhere in this kernel): with relocatable
    // device code (how `cc` builds the kernels for the crate) static variables are placed first
    // and the dynamic array's alignment is not guaranteed past them; the ring needs 16 bytes.
    extern __shared__ __align__(128) uint8_t smem[];
    DsSmem sm;
    sm.ring = smem;
    sm.in = reinterpret_cast<uint4 *>(smem + (size_t)a.stages * DS_TILE);
    sm.part = reinterpret_cast<float *>(reinterpret_cast<uint8_t *>(sm.in) + ((size_t)a.in_elems * 2 + 127) / 128 * 128);
    sm.red = sm.part + DS_P_FLOATS;
    sm.xo = sm.red + 64;
    uint64_t *bars = reinterpret_cast<uint64_t *>(sm.xo + DS_XO);
    sm.full0 = smem_u32(bars);
    sm.empty0 = smem_u32(bars + a.stages);
    sm.cph = reinterpret_cast<volatile int *>(bars + 2 * a.stages);
    sm.pacc = reinterpret_cast<unsigned long long *>(bars + 2 * a.stages + 2);  // profiling only (see the launcher)
    if (a.prof)
        for (int i = threadIdx.x; i < DS_PROF_ACCS; i += blockDim.x) sm.pacc[i] = 0;
    sm.it = 0;
    sm.slot = 0;
    sm.par = 0;
    if (threadIdx.x == 0) {
        for (int s = 0; s < a.stages; ++s) {
            mbar_init(sm.full0 + 8 * s, 1);
            mbar_init(sm.empty0 + 8 * s, DS_WPT);  // the warps of the group that consumed the tile
        }
        *sm.cph = DS_PH_EDGE;
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (warp == DS_NW) {
        if (lane == 0) ds_produce(a, sm.ring, sm.full0, sm.empty0, sm.cph, sm.pacc);
        return;
    }
    const InferDecodeModel &m = a.m;
    unsigned *ctr = reinterpret_cast<unsigned *>(a.ws + a.L.ctr);
    unsigned target = 0;
    int pmark = 0;
    if (a.prof && threadIdx.x == 0) a.prof[blockIdx.x * DS_PROF_STRIDE + 2 + pmark++] = globaltimer();
    // Embedding: this block's slice of x.
    {
        const int id = *a.id;
        float *x = reinterpret_cast<float *>(a.ws + a.L.x);
        const int i0 = (int)((long long)blockIdx.x * m.hidden / gridDim.x), i1 = (int)((long long)(blockIdx.x + 1) * m.hidden / gridDim.x);
        const bf16 *row = static_cast<const bf16 *>(m.embed) + (size_t)(id >= 0 && id < m.vocab ? id : 0) * m.hidden;
        for (int i = i0 + threadIdx.x; i < i1; i += DS_NT) {
            const float v = id >= 0 && id < m.vocab ? __bfloat162float(row[i]) : 0.f;
            x[i] = v;
            sm.xo[i - i0] = v;
        }
    }
    grid_sync(ctr, target, a.dbg);
    DS_PROF_MARK();
    if (a.prof && threadIdx.x == 0) {
        sm.tp = clock64();
        unsigned smid;
        asm volatile("mov.u32 %0, %smid;" : "=r"(smid));
        a.prof[blockIdx.x * DS_PROF_STRIDE + DS_PROF_SMID] = smid;
    }
    ArgBest best;
    for (int l = 0; l < m.n_layers; ++l) {
        const InferDecodeLayerW &lw = m.layers[l];
        sm.phase(DS_PH_QKV);
        float scale = ds_input_norm(a, sm, static_cast<const bf16 *>(lw.attn_norm));
        DS_PROF_ACC(DS_PROF_BRK + PH_QKV * 4);
        ds_gemv(a, sm, l, PH_QKV, scale, best);
        grid_sync(ctr, target, a.dbg);
        DS_PROF_ACC(DS_PROF_BRK + PH_QKV * 4 + 3);
        DS_PROF_MARK();
        sm.phase(DS_PH_ATTN);
        if (!(a.dbg & DS_DBG_NO_ATTN)) ds_attention<D, G>(a, sm, l);
        DS_PROF_ACC(113);  // the rest of attention (ticket, merge) when split
        grid_sync(ctr, target, a.dbg);
        DS_PROF_MARK();
        DS_PROF_ACC(114);  // barrier
        sm.phase(DS_PH_O);
        ds_input_copy(sm, a.ws + a.L.attn, m.n_heads * D);
        DS_PROF_ACC(115);  // o_proj input
        ds_gemv(a, sm, l, PH_O, 1.f, best);
        grid_sync(ctr, target, a.dbg);
        DS_PROF_ACC(DS_PROF_BRK + PH_O * 4 + 3);
        DS_PROF_MARK();
        sm.phase(DS_PH_GU);
        scale = ds_input_norm(a, sm, static_cast<const bf16 *>(lw.mlp_norm));
        DS_PROF_ACC(DS_PROF_BRK + PH_GU * 4);
        ds_gemv(a, sm, l, PH_GU, scale, best);
        grid_sync(ctr, target, a.dbg);
        DS_PROF_ACC(DS_PROF_BRK + PH_GU * 4 + 3);
        DS_PROF_MARK();
        sm.phase(DS_PH_DOWN);
        ds_input_copy(sm, a.ws + a.L.act, m.inter);
        DS_PROF_ACC(DS_PROF_BRK + PH_DOWN * 4);
        ds_gemv(a, sm, l, PH_DOWN, 1.f, best);
        grid_sync(ctr, target, a.dbg);
        DS_PROF_ACC(DS_PROF_BRK + PH_DOWN * 4 + 3);
        DS_PROF_MARK();
    }
    sm.phase(DS_PH_EDGE);
    const float scale = ds_input_norm(a, sm, static_cast<const bf16 *>(m.final_norm));
    DS_PROF_ACC(DS_PROF_BRK + PH_HEAD * 4);
    ds_gemv(a, sm, 0, PH_HEAD, scale, best);
    consumer_sync();
    DS_PROF_MARK();
    // Argmax: block candidates, then the last block to arrive reduces them.
    {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, best.v, o);
            const int oi = __shfl_xor_sync(0xffffffffu, best.i, o);
            if (ds_better(ov, oi, best.v, best.i)) best = ArgBest{ov, oi};
        }
        float *rv = sm.red;
        int *ri = reinterpret_cast<int *>(sm.red + 32);
        if (lane == 0) {
            rv[warp] = best.v;
            ri[warp] = best.i;
        }
        consumer_sync();
        int &last = *reinterpret_cast<int *>(sm.red + 63);
        if (threadIdx.x == 0) {
            ArgBest b;
            for (int w = 0; w < DS_NW; ++w)
                if (ds_better(rv[w], ri[w], b.v, b.i)) b = ArgBest{rv[w], ri[w]};
            reinterpret_cast<float *>(a.ws + a.L.cand_v)[blockIdx.x] = b.v;
            reinterpret_cast<int *>(a.ws + a.L.cand_i)[blockIdx.x] = b.i;
            __threadfence();
            last = atomicAdd(&ctr[2], 1u) == gridDim.x - 1;
            if (last) {
                __threadfence();
                ArgBest g;
                for (int i = 0; i < (int)gridDim.x; ++i) {
                    const float v = __ldcg(reinterpret_cast<const float *>(a.ws + a.L.cand_v) + i);
                    const int j = __ldcg(reinterpret_cast<const int *>(a.ws + a.L.cand_i) + i);
                    if (ds_better(v, j, g.v, g.i)) g = ArgBest{v, j};
                }
                if (a.next_id) *a.next_id = g.i == INT_MAX ? -1 : g.i;
                ctr[2] = 0;
            }
            if (a.prof)  // the producer's last update came before its last tile, consumed above
                for (int i = 0; i < DS_PROF_ACCS; ++i)
                    if (sm.pacc[i]) a.prof[blockIdx.x * DS_PROF_STRIDE + i] += sm.pacc[i];
            // Exit ticket: the last block out resets the barrier counter for the next launch.
            if (atomicAdd(&ctr[1], 1u) == gridDim.x - 1) {
                ctr[0] = 0;
                ctr[1] = 0;
            }
        }
    }
#endif
}

static int ds_grid() { return infer_num_sms(); }


static bool ds_shape_ok(const InferDecodeModel *m) {
    if (!m || m->n_layers <= 0 || m->n_kv_heads <= 0 || m->n_heads % m->n_kv_heads != 0) return false;
    if (m->n_heads / m->n_kv_heads > DS_MAX_GROUP || (m->head_dim != 64 && m->head_dim != 128)) return false;
    if (m->hidden % DS_SLICE || m->inter % DS_SLICE || (m->n_heads * m->head_dim) % DS_SLICE) return false;
    if (m->vocab <= 0 || m->ctx <= 0 || !m->layers || !m->embed || !m->final_norm || !m->lm_head || !m->cos_sin) return false;
    if (ds_grid() / m->n_kv_heads < 1) return false;
    if ((m->hidden + ds_grid() - 1) / ds_grid() > DS_XO) return false;  // x rows per block (sm.xo)
    // the partials of at least one row of every matrix fit
    return DS_P_FLOATS / (2 * (m->hidden / DS_SLICE)) >= 1 && DS_P_FLOATS / (m->inter / DS_SLICE) >= 1;
}

static int ds_in_elems(const InferDecodeModel *m) {
    int e = m->hidden > m->inter ? m->hidden : m->inter;
    if (m->n_heads * m->head_dim > e) e = m->n_heads * m->head_dim;
    // attention scratch (f32): q [group][D], m / l [12][group], acc [12][group][D], new k and v (bf16 [D] each)
    const int g = m->n_heads / m->n_kv_heads;
    const int att = 2 * (g * m->head_dim + 2 * DS_MAX_CWARPS * g + DS_MAX_CWARPS * g * m->head_dim + m->head_dim);
    return e > att ? e : att;
}

static size_t ds_fixed_smem(const InferDecodeModel *m) {
    return ((size_t)ds_in_elems(m) * 2 + 127) / 128 * 128 + DS_P_FLOATS * 4 + 64 * 4 + DS_XO * 4;
}

// Kernel-harness hook (not in the public header): when set, launches accumulate per block
// [0] producer ns waiting for a free slot, [1] consumer ns waiting for data (summed over warps),
// [2..] the time after each grid barrier; DS_PROF_STRIDE (256) u64 per block; the rest: DS_PROF_* slots. NULL turns it off.
static unsigned long long *g_ds_prof = nullptr;
extern "C" void infer_decode_step_profile(unsigned long long *buf) { g_ds_prof = buf; }
// Kernel-harness hook: DS_DBG_* experiment switches for the next launches (0 = normal).
static int g_ds_dbg = 0;
extern "C" void infer_decode_step_debug(int flags) { g_ds_dbg = flags; }

size_t infer_decode_step_workspace_bytes(const InferDecodeModel *m) {
    if (!ds_shape_ok(m)) return 0;
    return ds_layout(*m, ds_grid()).total;
}

// Stages that fit next to the fixed shared memory (0 = does not fit / unsupported device).
static int ds_stages(const InferDecodeModel *m) {
    int dev = 0, major = 0, optin = 0, coop = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess || major < 9) return 0;
    if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) return 0;
    if (cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev) != cudaSuccess || !coop) return 0;
    const size_t fixed = ds_fixed_smem(m) + 1024;  // + static shared memory
    if ((size_t)optin < fixed + 16 * (size_t)DS_MIN_STAGES + (size_t)DS_MIN_STAGES * DS_TILE) return 0;
    int st = (int)((optin - fixed) / (DS_TILE + 16));
    st = st > 12 ? 12 : st;
    return st - st % DS_GROUPS;  // a multiple of the groups (see DS_GROUPS)
}

int infer_decode_step_supported(const InferDecodeModel *m) {
    return ds_shape_ok(m) && ds_stages(m) >= DS_MIN_STAGES ? 1 : 0;
}

template <int D, int G>
static cudaError_t ds_launch(const DsArgs &a, size_t smem, cudaStream_t stream) {
    auto kern = decode_step_kernel<D, G>;
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return e;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeCooperative;  // all blocks resident: the grid barriers need it
    attr[0].val.cooperative = 1;
    return infer_launch_attrs(kern, dim3(ds_grid()), dim3(DS_MAX_THREADS), smem, stream, attr, 1u, a);
}

cudaError_t infer_decode_step_bf16(const InferDecodeModel *m, const int32_t *id_dev, const int32_t *pos_dev,
                                              float *logits, int32_t *next_id, void *workspace, size_t workspace_bytes,
                                              cudaStream_t stream) {
    INFER_CHECK_ARG(ds_shape_ok(m) && id_dev && pos_dev && logits && workspace);
    int stages = ds_stages(m);
    if (stages < DS_MIN_STAGES) return cudaErrorNotSupported;
    if (g_ds_dbg & DS_DBG_STAGES6) stages = 6;
    DsArgs a;
    a.m = *m;
    a.id = id_dev;
    a.pos = pos_dev;
    a.logits = logits;
    a.next_id = next_id;
    a.ws = static_cast<char *>(workspace);
    a.L = ds_layout(*m, ds_grid());
    INFER_CHECK_ARG(workspace_bytes >= a.L.total && infer_aligned16(workspace));
    a.stages = stages;
    a.in_elems = ds_in_elems(m);
    a.prof = g_ds_prof;
    a.dbg = g_ds_dbg;
    // + cph (16 bytes), + the profile accumulators when profiling
    const size_t smem = (size_t)stages * DS_TILE + ds_fixed_smem(m) + 16 * (size_t)stages + 16 + (a.prof ? 8 * DS_PROF_ACCS : 0);
    const bool g4 = m->n_heads / m->n_kv_heads <= 4;
    cudaError_t e = m->head_dim == 64 ? (g4 ? ds_launch<64, 4>(a, smem, stream) : ds_launch<64, 8>(a, smem, stream))
                                      : (g4 ? ds_launch<128, 4>(a, smem, stream) : ds_launch<128, 8>(a, smem, stream));
    if (e != cudaSuccess) (void)cudaGetLastError();
    return e;
}
