// Timing part of kernels_test: Llama-3.2-1B / 3.1-8B shapes. Each row prints the median of 20 single
// launches (cudaEvent pair around one launch) and the mean of 100 back-to-back launches. Inputs rotate
// over enough copies (>= 256 MB in all) that weights / KV caches come from HBM, not L2, as in a real
// decode step where every layer has its own weights.
#include <algorithm>
#include "../include/infer_kernels.h"
#include "test_util.h"

#include <string>

static const double kPeakGBs = 3000.0;  // achievable HBM3 read bandwidth used for the % column
static cudaStream_t g_s;                // non-blocking stream for all timed launches (as the engine uses)

static int copies_for(size_t bytes) {
    size_t c = (256ull << 20) / std::max<size_t>(bytes, 1) + 1;
    return (int)std::min<size_t>(std::max<size_t>(c, 1), 64);
}

static double bench_gemv(int m, int n, int k, bool f32, const char *label) {
    const size_t wel = (size_t)n * k;
    const int nc = copies_for(wel * 2);
    Dev<uint16_t> w(wel * nc), x((size_t)m * k);
    Dev<float> out((size_t)m * n);
    CK(cudaMemset(w.p, 0x3c, wel * nc * 2));
    CK(cudaMemset(x.p, 0x3c, (size_t)m * k * 2));
    Timing t = time_it(g_s, [&](int i) { CK(infer_gemv_bf16(x.p, w.p + (i % nc) * wel, out.p, m, n, k, f32, g_s)); });
    const double gb = wel * 2 / 1e9;
    if (m <= 8)
        printf("gemv m=%d %-22s [%6dx%5d] %s: median %7.2f us %6.0f GB/s (%3.0f%%) | back-to-back %7.2f us %6.0f GB/s (%3.0f%%)\n",
               m, label, n, k, f32 ? "f32 " : "bf16", t.median_us, gb / t.median_us * 1e6,
               gb / t.median_us * 1e6 / kPeakGBs * 100, t.stream_us, gb / t.stream_us * 1e6,
               gb / t.stream_us * 1e6 / kPeakGBs * 100);
    else
        printf("gemm m=%d %-22s [%6dx%5d] %s: median %7.2f us %6.1f TFLOP/s | back-to-back %7.2f us %6.1f TFLOP/s\n", m,
               label, n, k, f32 ? "f32 " : "bf16", t.median_us, 2.0 * m * n * k / t.median_us / 1e6, t.stream_us,
               2.0 * m * n * k / t.stream_us / 1e6);
    return t.stream_us;
}

extern "C" cudaError_t infer_gemv_bf16_variant(const void *x, const void *w, void *out, int n, int k, int out_f32,
                                               int variant, cudaStream_t stream);

// m == 1 configuration sweep (rows per warp R, loads per lane U) on one shape; back-to-back GB/s.
static void sweep_gemv(int n, int k, bool f32) {
    const size_t wel = (size_t)n * k;
    const int nc = copies_for(wel * 2);
    Dev<uint16_t> w(wel * nc), x(k);
    Dev<float> out(n);
    CK(cudaMemset(w.p, 0x3c, wel * nc * 2));
    CK(cudaMemset(x.p, 0x3c, (size_t)k * 2));
    printf("  sweep [%6dx%5d]:", n, k);
    const char *names[] = {"R1U8", "R2U4", "R4U2", "R1U16", "R2U8"};
    for (int v = 0; v < 5; ++v) {
        Timing t = time_it(g_s, [&](int i) { CK(infer_gemv_bf16_variant(x.p, w.p + (i % nc) * wel, out.p, n, k, f32, v, g_s)); });
        printf("  %s %.2fus/%.0f/%.0fGB/s", names[v], t.stream_us, wel * 2 / t.median_us / 1e3, wel * 2 / t.stream_us / 1e3);
    }
    printf("   (median/back-to-back)\n");
}

extern "C" void infer_decode_step_profile(unsigned long long *buf);  // decode_step.cu (harness hook)
extern "C" void infer_decode_step_debug(int flags);                 // decode_step.cu (harness hook)

static void bench_decode_attn(int H, int KV, int D, int ctx, int L, const char *label) {
    const size_t cel = (size_t)KV * ctx * D;
    const int nc = copies_for(cel * 4);
    Dev<uint16_t> k(cel * nc), v(cel * nc), q((size_t)H * D), out((size_t)H * D);
    CK(cudaMemset(k.p, 0x3c, cel * nc * 2));
    CK(cudaMemset(v.p, 0x3c, cel * nc * 2));
    CK(cudaMemset(q.p, 0x3c, (size_t)H * D * 2));
    Dev<int32_t> pos(std::vector<int32_t>{L - 1});
    const size_t wsb = infer_attention_workspace_bytes(H, D, ctx);
    Dev<float> ws(wsb / 4 + 1);
    Timing t = time_it(g_s, [&](int i) {
        const size_t off = (i % nc) * cel;
        CK(infer_attention_bf16(q.p, k.p + off, v.p + off, out.p, pos.p, 1, H, KV, D, ctx, ws.p, wsb, g_s));
    });
    const double gb = 2.0 * KV * L * D * 2 / 1e9;
    printf("attn decode %-8s H=%d KV=%d D=%3d ctx=%d L=%5d: median %6.2f us %5.0f GB/s | back-to-back %6.2f us %5.0f GB/s\n",
           label, H, KV, D, ctx, L, t.median_us, gb / t.median_us * 1e6, t.stream_us, gb / t.stream_us * 1e6);
}

static void bench_prefill_attn(int seq, int H, int KV, int D, int ctx, int pos0) {
    const size_t cel = (size_t)KV * ctx * D;
    Dev<uint16_t> k(cel), v(cel), q((size_t)seq * H * D), out((size_t)seq * H * D);
    CK(cudaMemset(k.p, 0x3c, cel * 2));
    CK(cudaMemset(v.p, 0x3c, cel * 2));
    CK(cudaMemset(q.p, 0x3c, (size_t)seq * H * D * 2));
    Dev<int32_t> pos(std::vector<int32_t>{pos0});
    const size_t wsb = infer_attention_workspace_bytes(H, D, ctx);
    Dev<float> ws(wsb / 4 + 1);
    Timing t = time_it(g_s, [&](int) {
        CK(infer_attention_bf16(q.p, k.p, v.p, out.p, pos.p, seq, H, KV, D, ctx, ws.p, wsb, g_s));
    }, 20, 20);
    double pairs = 0;
    for (int i = 0; i < seq; ++i) pairs += pos0 + i + 1;
    const double flops = 4.0 * D * H * pairs;
    printf("attn prefill seq=%d H=%d KV=%d D=%3d pos0=%d: median %7.1f us %6.1f TFLOP/s (causal)\n", seq, H, KV, D,
           pos0, t.median_us, flops / t.median_us / 1e6);
}

// One whole decode step of a Llama-3 model built from these kernels (embedding, 9-10 kernels per layer,
// final norm, f32 LM head, argmax feeding the next step's embedding), captured in a CUDA graph and
// replayed. Weights are synthetic (constant bit pattern); every layer has its own weights and caches.
struct ModelCfg {
    const char *name;
    int hidden, H, KV, D, inter, layers, vocab;
};

// Calls f(v) for each integer of the space-separated list in environment variable `name` (if set).
template <class F>
static void for_each_env_int(const char *name, F f) {
    const char *s = getenv(name);
    for (const char *q = s ? s : ""; *q;) {
        char *end = nullptr;
        const long v = strtol(q, &end, 10);
        if (end == q) break;
        q = end;
        f((int)v);
    }
}

#ifdef INFER_KPROF
#define KPROF_MAX 400000ull  // as common.cuh
extern "C" cudaError_t infer_kprof_set(unsigned long long *buf);  // common.cu (probe builds only)
#endif

static void bench_decode_step(const ModelCfg &c, int ctx, int pos) {
    const size_t hd = c.hidden, qkvn = (size_t)(c.H + 2 * c.KV) * c.D;
    const size_t per_layer = qkvn * hd + hd * (size_t)c.H * c.D + 2 * (size_t)c.inter * hd + hd * c.inter + 2 * hd;
    const size_t cache_el = (size_t)c.KV * ctx * c.D;
    Dev<uint16_t> wts(per_layer * c.layers + (size_t)c.vocab * hd + hd), caches(2 * cache_el * c.layers);
    CK(cudaMemset(wts.p, 0x3a, wts.n * 2));
    CK(cudaMemset(caches.p, 0x3a, caches.n * 2));
    Dev<float> x(hd), logits(c.vocab), cs((size_t)ctx * c.D);
    CK(cudaMemset(cs.p, 0, cs.n * 4));
    Dev<uint16_t> xn(hd), qkv(qkvn), q((size_t)c.H * c.D), attn((size_t)c.H * c.D), o(hd), gu(2 * (size_t)c.inter),
        act(c.inter), down(hd);
    Dev<int32_t> ids(std::vector<int32_t>{1}), posd(std::vector<int32_t>{pos});
    const size_t wsb = infer_attention_workspace_bytes(c.H, c.D, ctx);
    Dev<float> ws(wsb / 4 + 1);
    Dev<uint8_t> aws(infer_argmax_workspace_bytes(c.vocab));
    const uint16_t *lm = wts.p + per_layer * c.layers, *nf = lm + (size_t)c.vocab * hd;
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    const bool fused = getenv("BENCH_UNFUSED") == nullptr;  // the engine's fused decode path (default)
    // BENCH_SKIP=<stage> leaves one stage out of every layer (qkv, attn, o, gu, down) or the head
    // (head): the step's time difference is that stage's cost in place, overlap included.
    const char *skip_env = getenv("BENCH_SKIP");
    const std::string skip = skip_env ? skip_env : "";
    auto step_fused = [&]() {
        CK(infer_embedding_bf16(ids.p, lm, x.p, 1, c.hidden, c.vocab, s));
        for (int l = 0; l < c.layers; ++l) {
            const uint16_t *wq = wts.p + per_layer * l, *wo = wq + qkvn * hd, *wgu = wo + hd * (size_t)c.H * c.D,
                           *wd = wgu + 2 * (size_t)c.inter * hd, *n1 = wd + hd * c.inter, *n2 = n1 + hd;
            uint16_t *kc = caches.p + 2 * cache_el * l, *vc = kc + cache_el;
            if (skip != "qkv")
                CK(infer_gemv_rope_kv_bf16(x.p, wq, n1, 1e-5f, q.p, kc, vc, cs.p, posd.p, c.H, c.KV, c.D, ctx, c.hidden,
                                           1, s));
            // As the engine's graphs: those of positions below 512 and 2,048 bound the length
            // (op::attention::decode_len_bound, attention.cu).
            if (skip != "attn")
                CK(infer_attention_bound_bf16(q.p, kc, vc, attn.p, posd.p, 1, c.H, c.KV, c.D, ctx,
                                              pos < 512    ? std::min(ctx, 512)
                                              : pos < 2048 ? std::min(ctx, 2048)
                                                           : ctx,
                                              ws.p, wsb, s));
            if (skip != "o") CK(infer_gemv_fused_bf16(attn.p, wo, nullptr, 0.f, x.p, 1, c.hidden, c.H * c.D, 0, 2, s));
            if (skip != "gu") CK(infer_gemv_fused_bf16(x.p, wgu, n2, 1e-5f, act.p, 1, c.inter, c.hidden, 1, 3, s));
            if (skip != "down") CK(infer_gemv_fused_bf16(act.p, wd, nullptr, 0.f, x.p, 1, c.hidden, c.inter, 0, 2, s));
        }
        if (skip != "head") {
            CK(infer_add_rms_norm_bf16(x.p, nullptr, nf, xn.p, 1, c.hidden, 1e-5f, s));
            CK(infer_gemv_bf16(xn.p, lm, logits.p, 1, c.vocab, c.hidden, 1, s));
            CK(infer_argmax_f32(logits.p, c.vocab, ids.p, aws.p, s));
        }
    };
    auto step = [&]() {
        if (fused) return step_fused();
        CK(infer_embedding_bf16(ids.p, lm, x.p, 1, c.hidden, c.vocab, s));
        for (int l = 0; l < c.layers; ++l) {
            const uint16_t *wq = wts.p + per_layer * l, *wo = wq + qkvn * hd, *wgu = wo + hd * (size_t)c.H * c.D,
                           *wd = wgu + 2 * (size_t)c.inter * hd, *n1 = wd + hd * c.inter, *n2 = n1 + hd;
            uint16_t *kc = caches.p + 2 * cache_el * l, *vc = kc + cache_el;
            CK(infer_add_rms_norm_bf16(x.p, l ? down.p : nullptr, n1, xn.p, 1, c.hidden, 1e-5f, s));
            CK(infer_gemv_bf16(xn.p, wq, qkv.p, 1, (int)qkvn, c.hidden, 0, s));
            CK(infer_rope_kv_bf16(qkv.p, q.p, kc, vc, cs.p, posd.p, 1, c.H, c.KV, c.D, ctx, s));
            CK(infer_attention_bf16(q.p, kc, vc, attn.p, posd.p, 1, c.H, c.KV, c.D, ctx, ws.p, wsb, s));
            CK(infer_gemv_bf16(attn.p, wo, o.p, 1, c.hidden, c.H * c.D, 0, s));
            CK(infer_add_rms_norm_bf16(x.p, o.p, n2, xn.p, 1, c.hidden, 1e-5f, s));
            CK(infer_gemv_bf16(xn.p, wgu, gu.p, 1, 2 * c.inter, c.hidden, 0, s));
            CK(infer_swiglu_bf16(gu.p, act.p, 1, c.inter, s));
            CK(infer_gemv_bf16(act.p, wd, down.p, 1, c.hidden, c.inter, 0, s));
        }
        CK(infer_add_rms_norm_bf16(x.p, down.p, nf, xn.p, 1, c.hidden, 1e-5f, s));
        CK(infer_gemv_bf16(xn.p, lm, logits.p, 1, c.vocab, c.hidden, 1, s));
        CK(infer_argmax_f32(logits.p, c.vocab, ids.p, aws.p, s));
    };
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    step();
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    // us per replay of a graph: 3 warm-up launches, then 30 timed back to back.
    auto time_graph = [&](cudaGraphExec_t e) {
        const int iters = 30;
        for (int i = 0; i < 3; ++i) CK(cudaGraphLaunch(e, s));
        CK(cudaEventRecord(a, s));
        for (int i = 0; i < iters; ++i) CK(cudaGraphLaunch(e, s));
        CK(cudaEventRecord(b, s));
        CK(cudaEventSynchronize(b));
        float t_ms;
        CK(cudaEventElapsedTime(&t_ms, a, b));
        return t_ms * 1e3 / iters;
    };
    const double us = time_graph(ge);
    const double bytes = 2.0 * (per_layer * c.layers + (size_t)c.vocab * hd) + 4.0 * c.layers * c.KV * (pos + 1.0) * c.D;
    printf("decode step %-5s (graph, PDL %s, %s) pos=%5d: %8.1f us/token = %6.0f tok/s, %5.0f GB/s effective (%3.0f%% of %.0f)\n",
           c.name, getenv("INFER_NO_PDL") ? "off" : "on", fused ? "fused" : "unfused", pos, us, 1e6 / us, bytes / us / 1e3, bytes / us / 1e3 / kPeakGBs * 100,
           kPeakGBs);
#ifdef INFER_KPROF
    // BENCH_KPROF=<prefix>: one replay with the timeline probe on (see common.cuh), raw records
    // written to <prefix>_<pos>.bin (u64 count, then 5 u64 per block record).
    if (const char *kp = getenv("BENCH_KPROF")) {
        Dev<unsigned long long> buf(8 + 5 * KPROF_MAX);
        for (int rep = 0; rep < 2; ++rep) {  // the second replay is the one kept (warm)
            CK(cudaMemset(buf.p, 0, buf.n * 8));
            CK(cudaStreamSynchronize(s));
            CK(infer_kprof_set(buf.p));
            CK(cudaDeviceSynchronize());
            CK(cudaGraphLaunch(ge, s));
            CK(cudaStreamSynchronize(s));
            CK(infer_kprof_set(nullptr));
            CK(cudaDeviceSynchronize());
        }
        const std::vector<unsigned long long> h = buf.down();
        const unsigned long long nrec = std::min<unsigned long long>(h[0], KPROF_MAX);
        const std::string path = std::string(kp) + "_" + std::to_string(pos) + ".bin";
        if (FILE *f = fopen(path.c_str(), "wb")) {
            fwrite(&nrec, 8, 1, f);
            fwrite(h.data() + 8, 8, 5 * nrec, f);
            fclose(f);
        }
        printf("  kprof: %llu block records -> %s\n", nrec, path.c_str());
    }
#endif
    if (getenv("BENCH_NO_ONE_KERNEL")) {  // per-op step only (A/B runs of its switches)
        cudaEventDestroy(a);
        cudaEventDestroy(b);
        cudaGraphExecDestroy(ge);
        cudaGraphDestroy(g);
        cudaStreamDestroy(s);
        return;
    }
    // The same step as one persistent kernel (decode_step.cu), on the same weights and caches.
    std::vector<InferDecodeLayerW> lw(c.layers);
    for (int l = 0; l < c.layers; ++l) {
        const uint16_t *wq = wts.p + per_layer * l, *wo = wq + qkvn * hd, *wgu = wo + hd * (size_t)c.H * c.D,
                       *wd = wgu + 2 * (size_t)c.inter * hd, *n1 = wd + hd * c.inter, *n2 = n1 + hd;
        uint16_t *kc = caches.p + 2 * cache_el * l, *vc = kc + cache_el;
        lw[l] = InferDecodeLayerW{wq, wo, wgu, wd, n1, n2, kc, vc};
    }
    Dev<InferDecodeLayerW> lwd(c.layers);
    CK(cudaMemcpy(lwd.p, lw.data(), sizeof(InferDecodeLayerW) * c.layers, cudaMemcpyHostToDevice));
    InferDecodeModel md{c.layers, c.hidden, c.H, c.KV, c.D, c.inter, c.vocab, ctx, 1e-5f, lwd.p, lm, nf, lm, cs.p};
    if (infer_decode_step_supported(&md)) {
        const size_t mwsb = infer_decode_step_workspace_bytes(&md);
        Dev<uint8_t> mws(mwsb);
        CK(cudaMemset(mws.p, 0, mwsb));
        // The step captured as a graph (with experiment switches `flags`, DS_DBG_* in decode_step.cu),
        // replayed: us per step.
        auto time_one_kernel = [&](int flags) {
            cudaGraph_t g2;
            cudaGraphExec_t ge2;
            infer_decode_step_debug(flags);
            CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
            CK(infer_decode_step_bf16(&md, ids.p, posd.p, logits.p, ids.p, mws.p, mwsb, s));
            CK(cudaStreamEndCapture(s, &g2));
            CK(cudaGraphInstantiate(&ge2, g2, 0));
            infer_decode_step_debug(0);
            const double t_us = time_graph(ge2);
            cudaGraphExecDestroy(ge2);
            cudaGraphDestroy(g2);
            return t_us;
        };
        // One eager launch with the profile hook on (switches `flags`): phase sums of block 0, producer
        // stalls by kind and by the consumers' phase (means over blocks), attention breakdown of block 0.
        auto profile_one_kernel = [&](int flags) {
            const int nb = 132 * 4, S = 256;  // blocks (bound), u64 slots per block (DS_PROF_STRIDE)
            Dev<unsigned long long> prof((size_t)nb * S);
            CK(cudaMemset(prof.p, 0, prof.n * 8));
            infer_decode_step_profile(prof.p);
            infer_decode_step_debug(flags);
            CK(infer_decode_step_bf16(&md, ids.p, posd.p, logits.p, ids.p, mws.p, mwsb, s));
            CK(cudaStreamSynchronize(s));
            infer_decode_step_debug(0);
            infer_decode_step_profile(nullptr);
            const std::vector<unsigned long long> h = prof.down();
            int sms = 0;
            CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
            double pw = 0, cw = 0, stm[6] = {0, 0, 0, 0, 0, 0}, stc[6] = {0, 0, 0, 0, 0, 0}, sti[6] = {}, brk[20] = {}, att[6] = {};
            for (int bl = 0; bl < sms; ++bl) {
                pw += h[bl * S] / 1e3 / sms;
                cw += h[bl * S + 1] / 1e3 / sms / 12;
                for (int k = 0; k < 6; ++k) {
                    stm[k] += h[bl * S + 96 + k] / 1e3 / sms;
                    stc[k] += h[bl * S + 102 + k] / 1e3 / sms;
                    sti[k] += h[bl * S + 116 + k] / 1e3 / sms;
                }
                for (int k = 0; k < 20; ++k) brk[k] += h[bl * S + 128 + k] / 1980.0 / sms;
                for (int k = 0; k < 6; ++k) att[k] += h[bl * S + 110 + k] / 1980.0 / sms;
            }
            printf("  profile pos=%d switches %d: producer waits for a slot %.1f us, consumer warp waits for data %.1f us (means)\n",
                   pos, flags, pw, cw);
            printf("    producer stalls by consumer phase [qkv attn o gate_up down edge], us: tile in flight %.1f %.1f %.1f %.1f %.1f %.1f"
                   " | landed, consumers busy %.1f %.1f %.1f %.1f %.1f %.1f\n",
                   stm[0], stm[1], stm[2], stm[3], stm[4], stm[5], stc[0], stc[1], stc[2], stc[3], stc[4], stc[5]);
            printf("    of which every tile landed (nothing in flight): %.1f %.1f %.1f %.1f %.1f %.1f = %.1f us\n", sti[0], sti[1], sti[2],
                   sti[3], sti[4], sti[5], sti[0] + sti[1] + sti[2] + sti[3] + sti[4] + sti[5]);
            const char *phn[5] = {"qkv", "o", "gate_up", "down", "head"};
            printf("    GEMV phases, sums over layers, means over blocks (thread 0, cycles / 1.98 GHz), us [input tiles epilogue barrier]:");
            for (int k = 0; k < 5; ++k) printf(" %s %.1f %.1f %.1f %.1f |", phn[k], brk[4 * k], brk[4 * k + 1], brk[4 * k + 2], brk[4 * k + 3]);
            printf("\n    attention means over blocks, us: loads + rope %.1f | scores + PV %.1f | warp merge %.1f | ticket + merge %.1f | barrier %.1f | o input %.1f\n",
                   att[0], att[1], att[2], att[3], att[4], att[5]);
            if (getenv("BENCH_DS_BLOCKS")) {  // per block, by SM id: GEMV tile time and barrier waits (us, sums)
                std::vector<std::pair<unsigned long long, int>> order;
                for (int bl = 0; bl < sms; ++bl) order.push_back({h[bl * S + 160], bl});
                std::sort(order.begin(), order.end());
                printf("    per block (smid:tiles/barrier us):");
                for (const auto &o : order) {
                    double tl = 0, br = 0;
                    for (int k = 0; k < 4; ++k) {
                        tl += h[o.second * S + 128 + 4 * k + 1] / 1980.0;
                        br += h[o.second * S + 128 + 4 * k + 3] / 1980.0;
                    }
                    printf(" %llu:%.0f/%.0f", o.first, tl, br);
                }
                printf("\n");
            }
            if (c.layers * 5 + 3 > 92) return;  // the phase marks overflow their slots (8B)
            const unsigned long long *t = h.data() + 2;  // block 0's marks
            double ph[5] = {0, 0, 0, 0, 0};
            for (int l = 0; l < c.layers; ++l)
                for (int k = 0; k < 5; ++k) ph[k] += (t[2 + l * 5 + k] - t[1 + l * 5 + k]) / 1e3;
            const int last = 1 + c.layers * 5;
            printf("    total %.1f us | embed %.1f | qkv %.1f attn %.1f o %.1f gate_up %.1f down %.1f (sums over layers) | head %.1f\n",
                   (t[last + 1] - t[0]) / 1e3, (t[1] - t[0]) / 1e3, ph[0], ph[1], ph[2], ph[3], ph[4], (t[last + 1] - t[last]) / 1e3);
            const unsigned long long *c0 = h.data();  // block 0: attention unit (kv head 0, split 0)
            printf("    attention of block 0, us per layer (cycles / 1.98 GHz): loads + rope %.2f | scores + softmax + PV %.2f | "
                   "warp merge + store %.2f | ticket + merge %.2f | barrier %.2f | o_proj input %.2f\n",
                   c0[110] / 1980.0 / c.layers, c0[111] / 1980.0 / c.layers, c0[112] / 1980.0 / c.layers,
                   c0[113] / 1980.0 / c.layers, c0[114] / 1980.0 / c.layers, c0[115] / 1980.0 / c.layers);
        };
        const double us2 = time_one_kernel(0);
        printf("decode step %-5s (graph, one kernel) pos=%5d: %8.1f us/token = %6.0f tok/s, %5.0f GB/s effective (%3.0f%% of %.0f)\n",
               c.name, pos, us2, 1e6 / us2, bytes / us2 / 1e3, bytes / us2 / 1e3 / kPeakGBs * 100, kPeakGBs);
        // BENCH_DS_VARIANTS="1 2 10 25 24": the same step with experiment switches.
        for_each_env_int("BENCH_DS_VARIANTS", [&](int f) { printf("  one kernel, switches %d: %8.1f us/token\n", f, time_one_kernel(f)); });
        // BENCH_DS_PROF="0 2": where the one-kernel step spends its time (eager launch), with each
        // set of experiment switches listed.
        for_each_env_int("BENCH_DS_PROF", [&](int f) { profile_one_kernel(f); });
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    cudaStreamDestroy(s);
}

void run_decode_benchmarks() {
    const ModelCfg l1b{"1B", 2048, 32, 8, 64, 8192, 16, 128256};
    const ModelCfg l8b{"8B", 4096, 32, 8, 128, 14336, 32, 128256};
    bench_decode_step(l1b, 1024, 144);
    bench_decode_step(l1b, 1024, 511);
    bench_decode_step(l1b, 1024, 767);
    bench_decode_step(l1b, 4096, 1023);
    bench_decode_step(l1b, 4096, 2047);
    bench_decode_step(l1b, 4096, 4095);
    if (getenv("BENCH_ONLY_1B")) return;
    bench_decode_step(l8b, 4096, 1023);
    bench_decode_step(l8b, 4096, 4095);
}

void run_benchmarks() {
    CK(cudaStreamCreateWithFlags(&g_s, cudaStreamNonBlocking));
    printf("== timings (H100 target: %.0f GB/s) ==\n", kPeakGBs);
    double layer = 0;
    layer += bench_gemv(1, 3072, 2048, false, "qkv (1B)");
    layer += bench_gemv(1, 2048, 2048, false, "o_proj (1B)");
    layer += bench_gemv(1, 16384, 2048, false, "gate_up (1B)");
    layer += bench_gemv(1, 2048, 8192, false, "down (1B)");
    const double head = bench_gemv(1, 128256, 2048, true, "lm_head (1B)");
    printf("  -> 1B decode weights estimate: 16 layers x %.1f us + lm_head %.1f us = %.0f us/token (gemv only)\n", layer,
           head, 16 * layer + head);
    sweep_gemv(3072, 2048, false);
    sweep_gemv(2048, 2048, false);
    sweep_gemv(2048, 8192, false);
    bench_gemv(1, 6144, 4096, false, "qkv (8B)");
    bench_gemv(1, 28672, 4096, false, "gate_up (8B)");
    bench_gemv(1, 4096, 14336, false, "down (8B)");
    for (int m : {2, 4, 8}) bench_gemv(m, 2048, 2048, false, "o_proj (1B)");
    for (int m : {2, 4, 8}) bench_gemv(m, 16384, 2048, false, "gate_up (1B)");
    bench_gemv(512, 3072, 2048, false, "qkv prefill");
    bench_gemv(512, 2048, 2048, false, "o_proj prefill");
    bench_gemv(512, 16384, 2048, false, "gate_up prefill");
    bench_gemv(512, 2048, 8192, false, "down prefill");
    bench_gemv(512, 14336 * 2, 4096, false, "gate_up 8B prefill");
    bench_decode_attn(32, 8, 64, 1024, 100, "1B");
    bench_decode_attn(32, 8, 64, 1024, 272, "1B");
    bench_decode_attn(32, 8, 64, 4096, 1024, "1B");
    bench_decode_attn(32, 8, 64, 4096, 4096, "1B");
    bench_decode_attn(32, 8, 128, 4096, 4096, "8B");
    bench_decode_attn(32, 8, 128, 32768, 32768, "8B");
    bench_prefill_attn(512, 32, 8, 64, 4096, 0);
    bench_prefill_attn(512, 32, 8, 128, 4096, 0);
    bench_prefill_attn(512, 32, 8, 64, 4096, 3584);
    run_decode_benchmarks();
}
