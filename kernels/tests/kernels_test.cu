// Standalone correctness + timing harness for the RustInfer CUDA kernels (kernels/include/infer_kernels.h).
// Every case builds random inputs from a fixed seed, runs the kernel and compares with a double-precision
// CPU reference. Tolerances: bf16 outputs |err| <= ~4e-3..2e-2 * |ref| + a small absolute term scaled to
// the data; f32 outputs tighter (see each test). Exit status is non-zero if any case FAILs.
// Usage: kernels_test [--no-bench | --decode-only]   (INFER_NO_PDL=1 disables programmatic dependent launch)
#include "../include/infer_kernels.h"
#include "test_util.h"

#include <cuda_fp16.h>

// ------------------------------------------------------------------------------------------------
static void test_embedding(int ntok, int hidden, int vocab) {
    Rng r(1 + hidden);
    auto table = rand_bf16((size_t)vocab * hidden, r);
    std::vector<int32_t> ids(ntok);
    for (int i = 0; i < ntok; ++i) ids[i] = (int)(r.next() % vocab);
    if (ntok > 1) ids[1] = -1;
    if (ntok > 2) ids[2] = vocab;  // out of range -> zeros
    Dev<uint16_t> dt(table);
    Dev<int32_t> di(ids);
    Dev<float> dout((size_t)ntok * hidden);
    CK(infer_embedding_bf16(di.p, dt.p, dout.p, ntok, hidden, vocab, 0));
    auto out = dout.down();
    Cmp c;
    for (int i = 0; i < ntok; ++i)
        for (int j = 0; j < hidden; ++j) {
            const bool ok = ids[i] >= 0 && ids[i] < vocab;
            c.add((size_t)i * hidden + j, out[(size_t)i * hidden + j], ok ? bf2f(table[(size_t)ids[i] * hidden + j]) : 0.0, 1e-30);
        }
    c.done("embedding ntok=" + std::to_string(ntok) + " hidden=" + std::to_string(hidden));
}

static void test_rmsnorm(int rows, int dim, bool delta) {
    Rng r(7 + dim * 3 + rows);
    std::vector<float> x((size_t)rows * dim);
    for (auto &v : x) v = r.uni(-2.f, 2.f);
    auto d = rand_bf16((size_t)rows * dim, r), w = rand_bf16(dim, r, 0.5f, 1.5f);
    Dev<float> dx(x);
    Dev<uint16_t> dd(d), dw(w), dout((size_t)rows * dim);
    const float eps = 1e-5f;
    CK(infer_add_rms_norm_bf16(dx.p, delta ? dd.p : nullptr, dw.p, dout.p, rows, dim, eps, 0));
    auto xo = dx.down();
    auto out = dout.down();
    Cmp cx, co;
    for (int i = 0; i < rows; ++i) {
        double ss = 0;
        std::vector<double> xr(dim);
        for (int j = 0; j < dim; ++j) {
            xr[j] = delta ? (double)(float)(x[(size_t)i * dim + j] + bf2f(d[(size_t)i * dim + j])) : x[(size_t)i * dim + j];
            ss += xr[j] * xr[j];
        }
        const double inv = 1.0 / std::sqrt(ss / dim + eps);
        for (int j = 0; j < dim; ++j) {
            cx.add((size_t)i * dim + j, xo[(size_t)i * dim + j], xr[j], 1e-6 * std::fabs(xr[j]) + 1e-12);
            const double ref = xr[j] * inv * bf2f(w[j]);
            co.add((size_t)i * dim + j, bf2f(out[(size_t)i * dim + j]), ref, 8e-3 * std::fabs(ref) + 1e-4);
        }
    }
    const std::string n = "rms_norm rows=" + std::to_string(rows) + " dim=" + std::to_string(dim) + (delta ? " +delta" : "");
    cx.done(n + " [x]");
    co.done(n + " [out]");
}

// gemv / gemm: out[m,n] = x[m,k] . w[n,k]^T. `sample` > 0 checks that many random entries only.
static void test_gemv(int m, int n, int k, bool f32, int sample = 0) {
    Rng r(11 + m * 131 + n * 7 + k);
    auto x = rand_bf16((size_t)m * k, r), w = rand_bf16((size_t)n * k, r);
    Dev<uint16_t> dx(x), dw(w);
    Dev<float> of((size_t)m * n);
    Dev<uint16_t> ob((size_t)m * n);
    CK(infer_gemv_bf16(dx.p, dw.p, f32 ? (void *)of.p : (void *)ob.p, m, n, k, f32 ? 1 : 0, 0));
    std::vector<float> outf;
    std::vector<uint16_t> outb;
    if (f32) outf = of.down(); else outb = ob.down();
    Cmp c;
    const size_t total = (size_t)m * n, checks = sample > 0 ? (size_t)sample : total;
    for (size_t s = 0; s < checks; ++s) {
        const size_t idx = sample > 0 ? (size_t)r.next() * 65537u % total : s;
        const int i = (int)(idx / n), j = (int)(idx % n);
        double ref = 0, mag = 0;
        for (int t = 0; t < k; ++t) {
            const double p = (double)bf2f(x[(size_t)i * k + t]) * bf2f(w[(size_t)j * k + t]);
            ref += p;
            mag += std::fabs(p);
        }
        const double got = f32 ? outf[idx] : bf2f(outb[idx]);
        c.add(idx, got, ref, (f32 ? 0.0 : 4e-3 * std::fabs(ref)) + 2e-5 * mag + 1e-6);
    }
    char name[128];
    snprintf(name, sizeof name, "%s m=%d n=%d k=%d %s%s", m > 8 ? "gemm" : "gemv", m, n, k, f32 ? "f32" : "bf16",
             sample ? " (sampled)" : "");
    c.done(name);
}

static std::vector<float> make_cos_sin(int ctx, int D) {
    std::vector<float> cs((size_t)ctx * D);
    for (int p = 0; p < ctx; ++p)
        for (int j = 0; j < D / 2; ++j) {
            const double a = p * std::pow(500000.0, -2.0 * j / D);
            cs[((size_t)p * (D / 2) + j) * 2] = (float)std::cos(a);
            cs[((size_t)p * (D / 2) + j) * 2 + 1] = (float)std::sin(a);
        }
    return cs;
}

static void test_rope(int seq, int H, int KV, int D, int ctx, int pos0) {
    Rng r(23 + seq * 5 + D + pos0);
    const int W = (H + 2 * KV) * D, half = D / 2;
    auto qkv = rand_bf16((size_t)seq * W, r);
    auto cs = make_cos_sin(ctx, D);
    const uint16_t sentinel = f2bf(3.0f);
    std::vector<uint16_t> cache((size_t)KV * ctx * D, sentinel);
    Dev<uint16_t> dqkv(qkv), dq((size_t)seq * H * D), dk(cache), dv(cache);
    Dev<float> dcs(cs);
    Dev<int32_t> dpos(std::vector<int32_t>{pos0});
    CK(infer_rope_kv_bf16(dqkv.p, dq.p, dk.p, dv.p, dcs.p, dpos.p, seq, H, KV, D, ctx, 0));
    auto q = dq.down(), k = dk.down(), v = dv.down();
    Cmp c;
    for (int i = 0; i < seq; ++i) {
        const int p = pos0 + i;
        for (int hd = 0; hd < H + KV; ++hd)
            for (int j = 0; j < half; ++j) {
                const double x1 = bf2f(qkv[(size_t)i * W + hd * D + j]), x2 = bf2f(qkv[(size_t)i * W + hd * D + j + half]);
                const double co = cs[((size_t)p * half + j) * 2], si = cs[((size_t)p * half + j) * 2 + 1];
                const double o1 = x1 * co - x2 * si, o2 = x2 * co + x1 * si;
                const uint16_t *dst = hd < H ? &q[((size_t)i * H + hd) * D] : &k[((size_t)(hd - H) * ctx + p) * D];
                c.add(0, bf2f(dst[j]), o1, 8e-3 * std::fabs(o1) + 1e-5);
                c.add(1, bf2f(dst[j + half]), o2, 8e-3 * std::fabs(o2) + 1e-5);
            }
    }
    // v copied exactly; cache rows outside [pos0, pos0 + seq) untouched.
    size_t bad = 0;
    for (int h = 0; h < KV; ++h)
        for (int t = 0; t < ctx; ++t)
            for (int d = 0; d < D; ++d) {
                const size_t idx = ((size_t)h * ctx + t) * D + d;
                const bool in = t >= pos0 && t < pos0 + seq;
                if (in && v[idx] != qkv[(size_t)(t - pos0) * W + (H + KV) * D + h * D + d]) ++bad;
                if (!in && (v[idx] != sentinel || k[idx] != sentinel)) ++bad;
            }
    c.add(2, (double)bad, 0.0, 0.5);
    char name[128];
    snprintf(name, sizeof name, "rope seq=%d H=%d KV=%d D=%d ctx=%d pos0=%d", seq, H, KV, D, ctx, pos0);
    c.done(name);
}

// Reference causal GQA attention in double. Returns [seq][H][D].
static std::vector<float> to_f32(const std::vector<uint16_t> &v) {
    std::vector<float> f(v.size());
    for (size_t i = 0; i < v.size(); ++i) f[i] = bf2f(v[i]);
    return f;
}
static std::vector<double> ref_attention(const std::vector<uint16_t> &qb, const std::vector<uint16_t> &kb,
                                         const std::vector<uint16_t> &vb, int seq, int H, int KV, int D, int ctx,
                                         int pos0) {
    const std::vector<float> q = to_f32(qb), kc = to_f32(kb), vc = to_f32(vb);
    const int G = H / KV, Lk = std::min(pos0 + seq, ctx);
    const double scale = 1.0 / std::sqrt((double)D);
    std::vector<double> out((size_t)seq * H * D, 0.0), s;
    for (int i = 0; i < seq; ++i)
        for (int h = 0; h < H; ++h) {
            const int kvh = h / G, last = std::min(pos0 + i, Lk - 1);
            s.assign(last + 1, 0.0);
            double mx = -1e300;
            for (int t = 0; t <= last; ++t) {
                double acc = 0;
                for (int d = 0; d < D; ++d)
                    acc += (double)q[((size_t)i * H + h) * D + d] * kc[((size_t)kvh * ctx + t) * D + d];
                s[t] = acc * scale;
                mx = std::max(mx, s[t]);
            }
            double sum = 0;
            for (int t = 0; t <= last; ++t) sum += (s[t] = std::exp(s[t] - mx));
            double *o = &out[((size_t)i * H + h) * D];
            for (int t = 0; t <= last; ++t)
                for (int d = 0; d < D; ++d) o[d] += s[t] / sum * vc[((size_t)kvh * ctx + t) * D + d];
        }
    return out;
}

struct AttnCase {
    std::vector<uint16_t> q, kc, vc;
};
static AttnCase make_attn(int seq, int H, int KV, int D, int ctx, int pos0, uint64_t seed) {
    Rng r(seed);
    AttnCase a{rand_bf16((size_t)seq * H * D, r), rand_bf16((size_t)KV * ctx * D, r), rand_bf16((size_t)KV * ctx * D, r)};
    // Poison cache rows past the valid length: any masking leak shows up as a large error.
    for (int h = 0; h < KV; ++h)
        for (int t = pos0 + seq; t < ctx; ++t)
            for (int d = 0; d < D; ++d) {
                a.kc[((size_t)h * ctx + t) * D + d] = f2bf(30.f);
                a.vc[((size_t)h * ctx + t) * D + d] = f2bf(1000.f);
            }
    return a;
}
static void check_attn(const char *tag, const std::vector<uint16_t> &out, const AttnCase &a, int seq, int H, int KV,
                       int D, int ctx, int pos0) {
    auto ref = ref_attention(a.q, a.kc, a.vc, seq, H, KV, D, ctx, pos0);
    Cmp c;
    for (size_t i = 0; i < ref.size(); ++i) c.add(i, bf2f(out[i]), ref[i], 2e-2 * std::fabs(ref[i]) + 5e-3);
    char name[160];
    snprintf(name, sizeof name, "%s seq=%d H=%d KV=%d D=%d ctx=%d pos0=%d", tag, seq, H, KV, D, ctx, pos0);
    c.done(name);
}

// bound > 0: through infer_attention_bound_bf16 with that length bound (a hint: results must not
// depend on it, also for lengths past it).
static void test_attention(int seq, int H, int KV, int D, int ctx, int pos0, int bound = 0) {
    AttnCase a = make_attn(seq, H, KV, D, ctx, pos0, 31 + seq * 17 + H + D * 3 + ctx + pos0);
    Dev<uint16_t> dq(a.q), dk(a.kc), dv(a.vc), dout((size_t)seq * H * D);
    Dev<int32_t> dpos(std::vector<int32_t>{pos0});
    const size_t wsb = infer_attention_workspace_bytes(H, D, ctx);
    Dev<float> ws(wsb / sizeof(float) + 1);
    if (bound > 0)
        CK(infer_attention_bound_bf16(dq.p, dk.p, dv.p, dout.p, dpos.p, seq, H, KV, D, ctx, bound, ws.p, wsb, 0));
    else
        CK(infer_attention_bf16(dq.p, dk.p, dv.p, dout.p, dpos.p, seq, H, KV, D, ctx, ws.p, wsb, 0));
    check_attn(seq == 1 ? (bound > 0 ? "attn-decode-bound" : "attn-decode") : "attn-prefill", dout.down(), a, seq, H,
               KV, D, ctx, pos0);
}

// Decode attention captured once in a CUDA graph, replayed at two positions written to device memory.
static void test_attention_graph() {
    const int H = 32, KV = 8, D = 64, ctx = 1024;
    AttnCase a = make_attn(1, H, KV, D, ctx, ctx - 1, 99);
    Dev<uint16_t> dq(a.q), dk(a.kc), dv(a.vc), dout((size_t)H * D);
    Dev<int32_t> dpos(std::vector<int32_t>{0});
    const size_t wsb = infer_attention_workspace_bytes(H, D, ctx);
    Dev<float> ws(wsb / sizeof(float) + 1);
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    CK(infer_attention_bf16(dq.p, dk.p, dv.p, dout.p, dpos.p, 1, H, KV, D, ctx, ws.p, wsb, s));
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    for (int pos : {200, 777}) {
        dpos.up(std::vector<int32_t>{pos});
        CK(cudaGraphLaunch(ge, s));
        CK(cudaStreamSynchronize(s));
        check_attn("attn-decode graph-replay", dout.down(), a, 1, H, KV, D, ctx, pos);
    }
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    cudaStreamDestroy(s);
}

static void test_swiglu(int rows, int inter) {
    Rng r(41 + inter);
    auto gu = rand_bf16((size_t)rows * 2 * inter, r, -4.f, 4.f);
    Dev<uint16_t> dg(gu), dout((size_t)rows * inter);
    CK(infer_swiglu_bf16(dg.p, dout.p, rows, inter, 0));
    auto out = dout.down();
    Cmp c;
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < inter; ++j) {
            const double g = bf2f(gu[(size_t)i * 2 * inter + j]), u = bf2f(gu[(size_t)i * 2 * inter + inter + j]);
            const double ref = g / (1.0 + std::exp(-g)) * u;
            c.add((size_t)i * inter + j, bf2f(out[(size_t)i * inter + j]), ref, 8e-3 * std::fabs(ref) + 1e-4);
        }
    c.done("swiglu rows=" + std::to_string(rows) + " inter=" + std::to_string(inter));
}

static void test_argmax(const std::string &name, const std::vector<float> &x, int expect) {
    const int n = (int)x.size();
    Dev<float> dx(x);
    Dev<int32_t> dout(1);
    Dev<uint8_t> ws(infer_argmax_workspace_bytes(n));
    CK(infer_argmax_f32(dx.p, n, dout.p, ws.p, 0));
    const int got = dout.down()[0];
    report("argmax " + name, got == expect, "got=%d expect=%d", got, expect);
}
static void argmax_cases() {
    Rng r(5);
    std::vector<float> x(128256);
    for (auto &v : x) v = r.uni(-10.f, 10.f);
    x[1000] = x[90000] = 50.f;
    test_argmax("n=128256 tie -> first", x, 1000);
    x[128255] = 51.f;
    test_argmax("n=128256 max at end", x, 128255);
    x[5] = NAN;
    x[6] = 52.f;
    test_argmax("n=128256 with NaN", x, 6);
    test_argmax("n=1", {-3.f}, 0);
    test_argmax("n=7 NaN first", {NAN, 1.f, 2.f, 7.f, 7.f, -INFINITY, 0.f}, 3);
    test_argmax("n=100 all -inf", std::vector<float>(100, -INFINITY), 0);
    test_argmax("n=9 all NaN", std::vector<float>(9, NAN), 0);
    std::vector<float> y(2049, 0.f);
    y[2048] = 1.f;
    test_argmax("n=2049 max in 2nd block", y, 2048);
}

// Decode step end: argmax into a device id, then infer_decode_advance publishes it to the mapped
// host slot of the new position's parity and advances the position; two steps in a graph replay
// (as the engine runs them) alternate the slots.
static void test_decode_advance() {
    int32_t *host = nullptr, *hdev = nullptr;
    CK(cudaHostAlloc(&host, 2 * sizeof(int32_t), cudaHostAllocMapped));
    CK(cudaHostGetDevicePointer((void **)&hdev, host, 0));
    host[0] = host[1] = -1;
    Dev<float> logits(std::vector<float>{0.f, 3.f, 9.f, 1.f});
    Dev<int32_t> id(1), pos(std::vector<int32_t>{5});
    Dev<uint8_t> ws(infer_argmax_workspace_bytes(4));
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    CK(infer_argmax_f32(logits.p, 4, id.p, ws.p, s));
    CK(infer_decode_advance(id.p, pos.p, hdev, hdev + 1, s));
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    CK(cudaGraphLaunch(ge, s));
    CK(cudaStreamSynchronize(s));
    const int p1 = pos.down()[0], a0 = host[0];
    CK(cudaMemcpy(logits.p + 3, std::vector<float>{10.f}.data(), 4, cudaMemcpyHostToDevice));
    CK(cudaGraphLaunch(ge, s));
    CK(cudaStreamSynchronize(s));
    const int p2 = pos.down()[0], b1 = host[1], b0 = host[0];
    report("decode_advance: id to slot (pos+1)&1, pos+1, two replays", p1 == 6 && a0 == 2 && p2 == 7 && b1 == 3 && b0 == 2,
           "pos %d %d slots %d %d %d", p1, p2, a0, b0, b1);
    report("decode_advance rejects null pointers", infer_decode_advance(id.p, nullptr, hdev, hdev + 1, s) == cudaErrorInvalidValue, "");
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    cudaStreamDestroy(s);
    cudaFreeHost(host);
}

static void test_conversions() {
    Rng r(77);
    const size_t n = 100003;
    std::vector<float> f(n);
    for (auto &v : f) v = r.uni(-1.f, 1.f) * std::pow(10.f, r.uni(-30.f, 30.f));
    const float sp[] = {0.f, -0.f, INFINITY, -INFINITY, NAN, 1e-40f, 3.4028235e38f, 1.00390625f, 1.01171875f};
    for (size_t i = 0; i < sizeof sp / sizeof sp[0]; ++i) f[i] = sp[i];
    Dev<float> df(f);
    Dev<uint16_t> db(n);
    CK(infer_f32_to_bf16(df.p, db.p, n, 0));
    auto b = db.down();
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i)
        if (std::isnan(f[i]) ? !std::isnan(bf2f(b[i])) : b[i] != f2bf(f[i])) ++bad;
    report("f32_to_bf16 n=100003 (RNE, specials)", bad == 0, "bad=%zu", bad);

    std::vector<uint16_t> h(n);
    for (auto &v : h) v = (uint16_t)r.next();
    Dev<uint16_t> dh(h), dhb(n);
    CK(infer_f16_to_bf16(dh.p, dhb.p, n, 0));
    auto hb = dhb.down();
    bad = 0;
    for (size_t i = 0; i < n; ++i) {
        __half_raw raw;
        raw.x = h[i];
        const float hf = __half2float(__half(raw));
        if (std::isnan(hf) ? !std::isnan(bf2f(hb[i])) : hb[i] != f2bf(hf)) ++bad;
    }
    report("f16_to_bf16 n=100003 (all bit patterns)", bad == 0, "bad=%zu", bad);

    Dev<float> dback(n);
    CK(infer_bf16_to_f32(dhb.p, dback.p, n, 0));
    auto back = dback.down();
    bad = 0;
    for (size_t i = 0; i < n; ++i)
        if (std::isnan(back[i]) ? !std::isnan(bf2f(hb[i])) : back[i] != bf2f(hb[i])) ++bad;
    report("bf16_to_f32 n=100003 (exact)", bad == 0, "bad=%zu", bad);
}

static void test_validation() {
    Dev<uint16_t> a(1 << 16), b(1 << 16);
    Dev<float> f(1 << 16);
    Dev<int32_t> pos(std::vector<int32_t>{0});
    const cudaError_t I = cudaErrorInvalidValue;
    struct {
        const char *what;
        cudaError_t got;
    } cases[] = {
        {"gemv k%8!=0", infer_gemv_bf16(a.p, b.p, f.p, 1, 16, 12, 1, 0)},
        {"gemv m=0", infer_gemv_bf16(a.p, b.p, f.p, 0, 16, 16, 1, 0)},
        {"gemv misaligned w", infer_gemv_bf16(a.p, b.p + 1, f.p, 1, 16, 16, 1, 0)},
        {"attention H%KV!=0", infer_attention_bf16(a.p, a.p, a.p, b.p, pos.p, 1, 6, 4, 64, 64, f.p, 1 << 18, 0)},
        {"attention D=12", infer_attention_bf16(a.p, a.p, a.p, b.p, pos.p, 1, 4, 2, 12, 64, f.p, 1 << 18, 0)},
        {"attention seq>ctx", infer_attention_bf16(a.p, a.p, a.p, b.p, pos.p, 65, 4, 2, 64, 64, f.p, 1 << 18, 0)},
        {"attention small ws", infer_attention_bf16(a.p, a.p, a.p, b.p, pos.p, 1, 4, 2, 64, 64, f.p, 16, 0)},
        {"rope odd D", infer_rope_kv_bf16(a.p, b.p, b.p, b.p, f.p, pos.p, 1, 4, 2, 15, 64, 0)},
        {"rms_norm dim=0", infer_add_rms_norm_bf16(f.p, nullptr, a.p, b.p, 1, 0, 1e-5f, 0)},
        {"embedding hidden=0", infer_embedding_bf16(pos.p, a.p, f.p, 1, 0, 10, 0)},
        {"argmax n=0", infer_argmax_f32(f.p, 0, pos.p, f.p, 0)},
        {"swiglu null", infer_swiglu_bf16(nullptr, b.p, 1, 8, 0)},
    };
    bool ok = true;
    for (auto &c : cases)
        if (c.got != I) {
            ok = false;
            printf("      %s returned %s\n", c.what, cudaGetErrorString(c.got));
        }
    ok = ok && cudaGetLastError() == cudaSuccess;
    report("launcher argument validation (12 cases, no sticky error)", ok);
}

// Race check for programmatic dependent launch: two Llama-3.2-1B-shaped layers (+ final norm, LM head,
// argmax) run back-to-back on one stream must match, bit for bit, the same chain run with a device
// synchronisation after every launcher (all kernels are deterministic). seq > 8 takes the GEMM and
// flash-attention paths.
static void test_pdl_chain(int seq, int pos0) {
    const int hd = 2048, H = 32, KV = 8, D = 64, inter = 8192, layers = 2, vocab = 32768, ctx = 1024;
    const size_t qkvn = (size_t)(H + 2 * KV) * D;
    const size_t per_layer = qkvn * hd + (size_t)hd * hd + 2 * (size_t)inter * hd + (size_t)hd * inter + 2 * hd;
    Rng r(1234 + seq);
    auto wts_h = rand_bf16(per_layer * layers + (size_t)vocab * hd + hd, r, -0.05f, 0.05f);
    for (int l = 0; l < layers; ++l)  // norm weights around 1
        for (size_t i = 0; i < 2 * (size_t)hd; ++i) wts_h[per_layer * l + per_layer - 2 * hd + i] = f2bf(r.uni(0.8f, 1.2f));
    std::vector<float> x0((size_t)seq * hd);
    for (auto &v : x0) v = r.uni(-1.f, 1.f);
    auto cache0 = rand_bf16(2 * (size_t)KV * ctx * D * layers, r);
    Dev<uint16_t> wts(wts_h), caches(cache0), xn((size_t)seq * hd), qkv(seq * qkvn), q((size_t)seq * H * D),
        attn((size_t)seq * H * D), o((size_t)seq * hd), gu((size_t)seq * 2 * inter), act((size_t)seq * inter),
        down((size_t)seq * hd);
    Dev<float> x(x0), logits(vocab), cs(make_cos_sin(ctx, D));
    Dev<int32_t> posd(std::vector<int32_t>{pos0}), id(1);
    const size_t wsb = infer_attention_workspace_bytes(H, D, ctx);
    Dev<float> ws(wsb / 4 + 1);
    Dev<uint8_t> aws(infer_argmax_workspace_bytes(vocab));
    const uint16_t *lm = wts.p + per_layer * layers, *nf = lm + (size_t)vocab * hd;
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    auto run = [&](bool sync) {
        x.up(x0);
        caches.up(cache0);
        CK(cudaDeviceSynchronize());
        auto S = [&](cudaError_t e) { CK(e); if (sync) CK(cudaDeviceSynchronize()); };
        for (int l = 0; l < layers; ++l) {
            const uint16_t *wq = wts.p + per_layer * l, *wo = wq + qkvn * hd, *wgu = wo + (size_t)hd * hd,
                           *wd = wgu + 2 * (size_t)inter * hd, *n1 = wd + (size_t)hd * inter, *n2 = n1 + hd;
            uint16_t *kc = caches.p + 2 * (size_t)KV * ctx * D * l, *vc = kc + (size_t)KV * ctx * D;
            S(infer_add_rms_norm_bf16(x.p, l ? down.p : nullptr, n1, xn.p, seq, hd, 1e-5f, st));
            S(infer_gemv_bf16(xn.p, wq, qkv.p, seq, (int)qkvn, hd, 0, st));
            S(infer_rope_kv_bf16(qkv.p, q.p, kc, vc, cs.p, posd.p, seq, H, KV, D, ctx, st));
            S(infer_attention_bf16(q.p, kc, vc, attn.p, posd.p, seq, H, KV, D, ctx, ws.p, wsb, st));
            S(infer_gemv_bf16(attn.p, wo, o.p, seq, hd, H * D, 0, st));
            S(infer_add_rms_norm_bf16(x.p, o.p, n2, xn.p, seq, hd, 1e-5f, st));
            S(infer_gemv_bf16(xn.p, wgu, gu.p, seq, 2 * inter, hd, 0, st));
            S(infer_swiglu_bf16(gu.p, act.p, seq, inter, st));
            S(infer_gemv_bf16(act.p, wd, down.p, seq, hd, inter, 0, st));
        }
        S(infer_add_rms_norm_bf16(x.p, down.p, nf, xn.p, seq, hd, 1e-5f, st));
        S(infer_gemv_bf16(xn.p + (size_t)(seq - 1) * hd, lm, logits.p, 1, vocab, hd, 1, st));
        S(infer_argmax_f32(logits.p, vocab, id.p, aws.p, st));
        CK(cudaDeviceSynchronize());
        auto lg = logits.down();
        auto xs = x.down();
        lg.insert(lg.end(), xs.begin(), xs.end());
        lg.push_back((float)id.down()[0]);
        return lg;
    };
    const auto ref = run(true);
    size_t bad = 0, nonfinite = 0;
    for (int rep = 0; rep < 3; ++rep) {
        const auto got = run(false);
        for (size_t i = 0; i < ref.size(); ++i) {
            if (memcmp(&got[i], &ref[i], 4) != 0) ++bad;
            if (!std::isfinite(got[i])) ++nonfinite;
        }
    }
    cudaStreamDestroy(st);
    char name[128];
    snprintf(name, sizeof name, "PDL chain 2x1B-layer seq=%d pos0=%d: back-to-back == synced", seq, pos0);
    report(name, bad == 0 && nonfinite == 0, "mismatches=%zu nonfinite=%zu argmax=%d", bad, nonfinite, (int)ref.back());
}

// Weights converted by a kernel and used by the very next gemv (which streams weights before its PDL
// wait): the gemv must see the new weights. Rounds rewrite the same buffer with different values.
static void test_convert_then_gemv() {
    const int n = 4096, k = 2048;
    Dev<float> wf((size_t)n * k), out(n);
    Dev<uint16_t> wb((size_t)n * k), x(k);
    Rng r(4321);
    auto xh = rand_bf16(k, r);
    x.up(xh);
    cudaStream_t st;  // a non-blocking stream, as the engine uses (PDL applies to kernel -> kernel)
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    size_t bad = 0;
    for (int round = 0; round < 3; ++round) {
        std::vector<float> wh((size_t)n * k);
        for (auto &v : wh) v = r.uni(-1.f, 1.f) + (float)round;
        wf.up(wh);
        CK(cudaDeviceSynchronize());
        CK(infer_f32_to_bf16(wf.p, wb.p, wh.size(), st));
        CK(infer_gemv_bf16(x.p, wb.p, out.p, 1, n, k, 1, st));
        CK(cudaStreamSynchronize(st));
        auto o = out.down();
        for (int j = 0; j < n; ++j) {
            double ref = 0, mag = 0;
            for (int t = 0; t < k; ++t) {
                const double p = (double)bf2f(xh[t]) * bf2f(f2bf(wh[(size_t)j * k + t]));
                ref += p;
                mag += std::fabs(p);
            }
            if (!(std::fabs(o[j] - ref) <= 2e-5 * mag + 1e-6)) ++bad;
        }
    }
    cudaStreamDestroy(st);
    report("f32_to_bf16 -> gemv back-to-back (3 rounds, PDL weight prefetch)", bad == 0, "bad=%zu", bad);
}

void run_benchmarks();         // kernels_bench.cu
void run_decode_benchmarks();  // kernels_bench.cu
int run_decode_step_tests();  // decode_step_test.cu: returns its failures

int main(int argc, char **argv) {
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs, L2 %d MB, sm_%d%d, PDL %s\n", prop.name, prop.multiProcessorCount,
           prop.l2CacheSize >> 20, prop.major, prop.minor, getenv("INFER_NO_PDL") ? "off (INFER_NO_PDL)" : "on");
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "--decode-step") {  // the one-kernel decode step: tests, then its timings
        const int f = run_decode_step_tests();
        run_decode_benchmarks();
        return f ? 1 : 0;
    }
    if (mode == "--decode-only") {
        run_decode_benchmarks();
        return 0;
    }

    test_embedding(5, 64, 50);
    test_embedding(3, 2048, 1000);
    test_embedding(4, 36, 20);
    test_rmsnorm(1, 2048, true);
    test_rmsnorm(3, 64, true);
    test_rmsnorm(3, 4096, false);
    test_rmsnorm(3, 8192, true);
    test_rmsnorm(2, 36, true);
    test_rmsnorm(1, 8200, true);
    for (int m : {1, 2, 3, 4, 5, 8}) {
        test_gemv(m, 1, 8, false);
        test_gemv(m, 3, 2056, m % 2 == 0);
        test_gemv(m, 67, 264, m % 2 == 1);
    }
    test_gemv(1, 2048, 2048, false);
    test_gemv(1, 3000, 8192, false);
    test_gemv(8, 2048, 2048, true);
    test_gemv(1, 128256, 2048, true, 4000);
    for (int m : {9, 17, 77, 130}) {
        test_gemv(m, 136, 2056, false);
        test_gemv(m, 200, 264, true);
        test_gemv(m, 3, 8, m % 2 == 0);
    }
    test_gemv(512, 2048, 2048, false, 3000);  // 64x64 tiles
    test_gemv(512, 3072, 2048, true, 3000);   // 64x128 tiles
    test_gemv(300, 16384, 2048, false, 3000);  // 128x128 tiles
    test_rope(1, 32, 8, 64, 4096, 300);
    test_rope(1, 4, 2, 16, 64, 0);
    test_rope(7, 4, 2, 16, 64, 5);
    test_rope(7, 32, 8, 128, 1024, 500);
    test_rope(64, 8, 8, 64, 512, 0);
    for (int pos0 : {0, 126, 127, 128, 299, 1000, 4095}) test_attention(1, 32, 8, 64, 4096, pos0);
    for (int pos0 : {0, 130, 2047}) test_attention(1, 32, 8, 128, 2048, pos0);
    test_attention(1, 4, 2, 16, 64, 0);
    test_attention(1, 4, 2, 16, 64, 63);
    test_attention(1, 8, 8, 64, 300, 257);     // group 1
    test_attention(1, 16, 2, 64, 1000, 600);   // group 8
    test_attention(1, 12, 4, 64, 512, 200);    // group 3 -> one head per block
    test_attention(1, 32, 8, 64, 20000, 19999);  // chunk 256, 79 splits
    test_attention(1, 32, 8, 64, 20000, 5000);
    test_attention(1, 4, 2, 96, 100, 50);      // head_dim 96: generic path
    test_attention(1, 8, 2, 256, 600, 555);    // head_dim 256, 3 splits
    test_attention(1, 16, 2, 256, 300, 299);   // head_dim 256, group 8 (HB halved to 4)
    test_attention(1, 8, 4, 32, 700, 650);     // head_dim 32
    test_attention(1, 32, 8, 64, 1024, 255);   // exactly one full split
    test_attention(1, 32, 8, 64, 1024, 256);   // one row into the second split
    // Graphs below 2,048 positions in a 4,096 cache (two query heads per block), and past the bound.
    for (int pos0 : {0, 300, 1023, 2047, 3000}) test_attention(1, 32, 8, 64, 4096, pos0, 2048);
    // Below 512 positions (one query head per block), also in a cache shorter than the bound.
    for (int pos0 : {0, 144, 511, 700}) test_attention(1, 32, 8, 64, 1024, pos0, 512);
    test_attention(1, 32, 8, 64, 300, 299, 512);
    test_attention(1, 32, 8, 128, 4096, 1500, 2048);  // 8B shape: the bound changes nothing
    test_attention_graph();
    test_attention(7, 4, 2, 16, 64, 5);
    test_attention(7, 32, 8, 64, 512, 13);
    test_attention(64, 8, 2, 64, 256, 0);
    test_attention(300, 8, 4, 128, 1024, 200);
    test_attention(300, 4, 4, 64, 512, 200);
    test_attention(65, 4, 1, 128, 65, 0);
    test_attention(300, 4, 2, 16, 512, 100);
    test_attention(2, 4, 2, 64, 8, 6);
    test_attention(512, 32, 8, 64, 4096, 0);
    test_attention(512, 8, 2, 128, 1024, 100);
    test_swiglu(1, 8192);
    test_swiglu(3, 192);
    test_swiglu(2, 36);
    argmax_cases();
    test_decode_advance();
    test_conversions();
    test_validation();
    test_convert_then_gemv();
    test_pdl_chain(1, 700);
    test_pdl_chain(5, 300);
    test_pdl_chain(64, 100);
    g_fail += run_decode_step_tests();
    CK(cudaDeviceSynchronize());
    printf("\ncorrectness: %d passed, %d failed\n\n", g_pass, g_fail);

    if (mode != "--no-bench") run_benchmarks();
    return g_fail ? 1 : 0;
}
