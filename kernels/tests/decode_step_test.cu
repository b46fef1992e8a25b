// Correctness of the one-kernel decode step (decode_step.cu) against the per-op fused kernels the
// engine runs otherwise (the same sequence kernels_bench.cu times): random weights, random past
// KV cache, several consecutive greedy steps. Both paths use bf16 activations with f32 accumulation
// but sum in different orders, so an activation rounded to bf16 may differ by one ulp between them;
// the logits are compared with a tolerance relative to their RMS (a wrong row, head or position
// gives errors of the order of the RMS itself), the caches element-wise, and the greedy ids exactly
// whenever the reference's top-1 margin exceeds the logit tolerance.
#include "../include/infer_kernels.h"
#include "test_util.h"

#include <cuda_bf16.h>

// Uniform in [-scale, scale] from a hash of (i, seed), as bf16.
__global__ void fill_bf16_kernel(uint16_t *p, size_t n, uint32_t seed, float scale, float offset) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ (uint32_t)(i >> 32) * 40503u ^ seed * 2246822519u;
        h ^= h >> 15; h *= 2246822519u; h ^= h >> 13; h *= 3266489917u; h ^= h >> 16;
        const float u = (h & 0xffffff) / 16777216.f * 2.f - 1.f;
        const __nv_bfloat16 b = __float2bfloat16_rn(offset + scale * u);
        p[i] = *reinterpret_cast<const uint16_t *>(&b);
    }
}
static void fill(uint16_t *p, size_t n, uint32_t seed, float scale, float offset = 0.f) {
    fill_bf16_kernel<<<1024, 256>>>(p, n, seed, scale, offset);
    CK(cudaGetLastError());
}

struct DsCfg {
    const char *name;
    int hidden, H, KV, D, inter, layers, vocab, ctx;
};

static void test_decode_step(const DsCfg &c, int pos0, int steps) {
    const size_t hd = c.hidden, qkvn = (size_t)(c.H + 2 * c.KV) * c.D, cache_el = (size_t)c.KV * c.ctx * c.D;
    struct LayerBufs {
        Dev<uint16_t> qkv, o, gu, down, n1, n2, kc, vc, kc2, vc2;
    };
    std::vector<LayerBufs *> L;
    std::vector<InferDecodeLayerW> lw(c.layers);
    for (int l = 0; l < c.layers; ++l) {
        LayerBufs *b = new LayerBufs{Dev<uint16_t>(qkvn * hd), Dev<uint16_t>(hd * c.H * c.D), Dev<uint16_t>(2 * (size_t)c.inter * hd),
                                     Dev<uint16_t>(hd * c.inter), Dev<uint16_t>(hd), Dev<uint16_t>(hd), Dev<uint16_t>(cache_el),
                                     Dev<uint16_t>(cache_el), Dev<uint16_t>(cache_el), Dev<uint16_t>(cache_el)};
        fill(b->qkv.p, b->qkv.n, 100 + l, 1.7f / sqrtf((float)hd));
        fill(b->o.p, b->o.n, 200 + l, 1.f / sqrtf((float)c.H * c.D));
        fill(b->gu.p, b->gu.n, 300 + l, 1.7f / sqrtf((float)hd));
        fill(b->down.p, b->down.n, 400 + l, 1.f / sqrtf((float)c.inter));
        fill(b->n1.p, hd, 500 + l, 0.2f, 1.f);
        fill(b->n2.p, hd, 600 + l, 0.2f, 1.f);
        fill(b->kc.p, cache_el, 700 + l, 2.f);  // past positions: random keys / values
        fill(b->vc.p, cache_el, 800 + l, 1.f);
        CK(cudaMemcpy(b->kc2.p, b->kc.p, cache_el * 2, cudaMemcpyDeviceToDevice));
        CK(cudaMemcpy(b->vc2.p, b->vc.p, cache_el * 2, cudaMemcpyDeviceToDevice));
        lw[l] = InferDecodeLayerW{b->qkv.p, b->o.p, b->gu.p, b->down.p, b->n1.p, b->n2.p, b->kc2.p, b->vc2.p};
        L.push_back(b);
    }
    Dev<uint16_t> embed((size_t)c.vocab * hd), nf(hd);
    fill(embed.p, embed.n, 900, 1.f);
    fill(nf.p, hd, 901, 0.2f, 1.f);
    std::vector<float> cs_h((size_t)c.ctx * c.D);
    for (int p = 0; p < c.ctx; ++p)
        for (int j = 0; j < c.D / 2; ++j) {
            const double f = p * std::pow(500000.0, -2.0 * j / c.D);
            cs_h[((size_t)p * c.D / 2 + j) * 2] = (float)std::cos(f);
            cs_h[((size_t)p * c.D / 2 + j) * 2 + 1] = (float)std::sin(f);
        }
    Dev<float> cs(cs_h);
    Dev<InferDecodeLayerW> lwd(c.layers);
    CK(cudaMemcpy(lwd.p, lw.data(), sizeof(InferDecodeLayerW) * c.layers, cudaMemcpyHostToDevice));
    InferDecodeModel m{c.layers, c.hidden, c.H, c.KV, c.D, c.inter, c.vocab, c.ctx, 1e-5f, lwd.p, embed.p, nf.p, embed.p, cs.p};
    char name[160];
    snprintf(name, sizeof name, "decode_step %s pos %d..%d", c.name, pos0, pos0 + steps - 1);
    if (!infer_decode_step_supported(&m)) {
        report(name, false, "not supported on this device");
        return;
    }
    const size_t wsb = infer_decode_step_workspace_bytes(&m);
    Dev<uint8_t> ws(wsb);
    CK(cudaMemset(ws.p, 0, wsb));
    // Reference path buffers.
    Dev<float> x(hd), logits_ref(c.vocab), logits(c.vocab);
    Dev<uint16_t> xn(hd), q((size_t)c.H * c.D), attn((size_t)c.H * c.D), act(c.inter);
    const size_t awsb = infer_attention_workspace_bytes(c.H, c.D, c.ctx);
    Dev<float> aws(awsb / 4 + 1);
    Dev<uint8_t> mws(infer_argmax_workspace_bytes(c.vocab));
    Dev<int32_t> ids_ref(std::vector<int32_t>{7}), ids(std::vector<int32_t>{7}), posd(std::vector<int32_t>{pos0});
    bool ok = true;
    double worst = 0;
    int id_checked = 0;
    for (int st = 0; st < steps; ++st) {
        const int32_t pos = pos0 + st;
        CK(cudaMemcpy(posd.p, &pos, 4, cudaMemcpyHostToDevice));
        CK(infer_embedding_bf16(ids_ref.p, embed.p, x.p, 1, c.hidden, c.vocab, 0));
        for (int l = 0; l < c.layers; ++l) {
            LayerBufs *b = L[l];
            CK(infer_gemv_rope_kv_bf16(x.p, b->qkv.p, b->n1.p, 1e-5f, q.p, b->kc.p, b->vc.p, cs.p, posd.p, c.H, c.KV, c.D, c.ctx,
                                       c.hidden, 1, 0));
            CK(infer_attention_bf16(q.p, b->kc.p, b->vc.p, attn.p, posd.p, 1, c.H, c.KV, c.D, c.ctx, aws.p, awsb, 0));
            CK(infer_gemv_fused_bf16(attn.p, b->o.p, nullptr, 0.f, x.p, 1, c.hidden, c.H * c.D, 0, 2, 0));
            CK(infer_gemv_fused_bf16(x.p, b->gu.p, b->n2.p, 1e-5f, act.p, 1, c.inter, c.hidden, 1, 3, 0));
            CK(infer_gemv_fused_bf16(act.p, b->down.p, nullptr, 0.f, x.p, 1, c.hidden, c.inter, 0, 2, 0));
        }
        CK(infer_add_rms_norm_bf16(x.p, nullptr, nf.p, xn.p, 1, c.hidden, 1e-5f, 0));
        CK(infer_gemv_bf16(xn.p, embed.p, logits_ref.p, 1, c.vocab, c.hidden, 1, 0));
        CK(infer_argmax_f32(logits_ref.p, c.vocab, ids_ref.p, mws.p, 0));
        CK(infer_decode_step_bf16(&m, ids.p, posd.p, logits.p, ids.p, ws.p, wsb, 0));
        CK(cudaDeviceSynchronize());
        const std::vector<float> r = logits_ref.down(), g = logits.down();
        double ss = 0;
        for (float v : r) ss += (double)v * v;
        const double rms = std::sqrt(ss / r.size()), tol = 0.02 * rms;
        double err = 0;
        for (size_t i = 0; i < r.size(); ++i) err = std::max(err, std::isfinite(g[i]) ? std::fabs((double)g[i] - r[i]) : 1e30);
        worst = std::max(worst, err / rms);
        if (!(err <= tol)) ok = false;
        // greedy id: equal whenever the reference's top-1 beats its runner-up by more than 2 tol
        std::vector<float> srt(r);
        std::partial_sort(srt.begin(), srt.begin() + 2, srt.end(), std::greater<float>());
        const int32_t idr = ids_ref.down()[0], idg = ids.down()[0];
        if (srt[0] - srt[1] > 2 * tol) {
            ++id_checked;
            if (idr != idg) ok = false;
        }
        if (idr != idg) CK(cudaMemcpy(ids.p, ids_ref.p, 4, cudaMemcpyDeviceToDevice));  // keep the inputs equal
    }
    // KV caches: every position written (and the untouched ones) equal within one bf16 ulp-ish.
    double cache_err = 0;
    for (int l = 0; l < c.layers; ++l) {
        const std::vector<uint16_t> a = L[l]->kc.down(), b = L[l]->kc2.down(), av = L[l]->vc.down(), bv = L[l]->vc2.down();
        for (size_t i = 0; i < a.size(); ++i) {
            cache_err = std::max(cache_err, (double)std::fabs(bf2f(a[i]) - bf2f(b[i])) / (std::fabs(bf2f(a[i])) + 0.05));
            cache_err = std::max(cache_err, (double)std::fabs(bf2f(av[i]) - bf2f(bv[i])) / (std::fabs(bf2f(av[i])) + 0.05));
        }
    }
    if (!(cache_err <= 0.1)) ok = false;
    report(name, ok, "max|dlogit|/rms=%.4f (tol 0.02) cache rel=%.4f ids checked %d/%d", worst, cache_err, id_checked, steps);
    for (auto *b : L) delete b;
}

// Bad arguments are rejected, not launched.
static void test_decode_step_validation() {
    InferDecodeModel m{1, 500, 8, 2, 64, 1024, 100, 64, 1e-5f, nullptr, nullptr, nullptr, nullptr, nullptr};
    const bool shape_rejected = infer_decode_step_workspace_bytes(&m) == 0 && !infer_decode_step_supported(&m);
    const bool null_rejected = infer_decode_step_bf16(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, 0) == cudaErrorInvalidValue;
    report("decode_step rejects bad shapes / null model", shape_rejected && null_rejected);
}

int run_decode_step_tests() {
    test_decode_step_validation();
    test_decode_step(DsCfg{"small", 512, 8, 2, 64, 1024, 2, 1000, 256}, 0, 3);
    test_decode_step(DsCfg{"small", 512, 8, 2, 64, 1024, 2, 1000, 256}, 200, 4);
    test_decode_step(DsCfg{"d128 g8", 1024, 16, 2, 128, 1536, 2, 3000, 2048}, 1500, 3);
    test_decode_step(DsCfg{"g3", 1536, 12, 4, 128, 2048, 2, 2000, 600}, 40, 3);
    test_decode_step(DsCfg{"1B-shaped 3 layers", 2048, 32, 8, 64, 8192, 3, 128256, 4096}, 4000, 3);
    test_decode_step(DsCfg{"1B-shaped 3 layers", 2048, 32, 8, 64, 8192, 3, 128256, 4096}, 130, 2);
    return g_fail;  // this file's failures (test_util.h counters are per file)
}
