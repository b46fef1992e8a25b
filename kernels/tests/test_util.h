// Helpers for kernels_test.cu: device buffers, bf16 host conversion, RNG, comparison and timing.
#pragma once
#include <cuda_runtime.h>
#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#define CK(x)                                                                                          \
    do {                                                                                               \
        cudaError_t e_ = (x);                                                                          \
        if (e_ != cudaSuccess) {                                                                       \
            fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, __LINE__, #x); \
            exit(2);                                                                                   \
        }                                                                                              \
    } while (0)

static int g_fail = 0, g_pass = 0;

// ---- bf16 on the host (round to nearest even, NaN kept quiet) ----
static inline uint16_t f2bf(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float bf2f(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// ---- deterministic RNG ----
struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
    uint32_t next() {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        return (uint32_t)(s >> 16);
    }
    float uni(float lo = -1.f, float hi = 1.f) { return lo + (hi - lo) * (next() & 0xffffff) / 16777216.f; }
};
static inline std::vector<uint16_t> rand_bf16(size_t n, Rng &r, float lo = -1.f, float hi = 1.f) {
    std::vector<uint16_t> v(n);
    for (auto &x : v) x = f2bf(r.uni(lo, hi));
    return v;
}

// ---- device buffer ----
template <class T>
struct Dev {
    T *p = nullptr;
    size_t n = 0;
    Dev() {}
    explicit Dev(size_t n_) : n(n_) { CK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T))); }
    explicit Dev(const std::vector<T> &h) : Dev(h.size()) { up(h); }
    ~Dev() { if (p) cudaFree(p); }
    Dev(const Dev &) = delete;
    Dev &operator=(const Dev &) = delete;
    void up(const std::vector<T> &h) { CK(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice)); }
    std::vector<T> down() const {
        std::vector<T> h(n);
        CK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
        return h;
    }
};

// ---- reporting ----
static void report(const std::string &name, bool ok, const char *fmt = "", ...) {
    char extra[256] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(extra, sizeof extra, fmt, ap);
    va_end(ap);
    printf("%s  %-58s %s\n", ok ? "PASS" : "FAIL", name.c_str(), extra);
    fflush(stdout);
    (ok ? g_pass : g_fail)++;
}

// Element-wise |got - ref| <= atol[i] + rtol * |ref|; NaN anywhere fails. Prints the worst element.
struct Cmp {
    size_t bad = 0, worst = 0;
    double worst_ratio = 0, max_abs = 0;
    void add(size_t i, double got, double ref, double tol) {
        const double err = std::fabs(got - ref);
        const double ratio = std::isfinite(got) ? err / tol : 1e30;
        if (!(ratio <= 1.0)) ++bad;
        if (!(ratio <= worst_ratio)) { worst_ratio = ratio; worst = i; }
        if (std::isfinite(err)) max_abs = std::max(max_abs, err);
    }
    bool ok() const { return bad == 0; }
    void done(const std::string &name) {
        report(name, ok(), "max_abs=%.3g worst_err/tol=%.3f bad=%zu (at %zu)", max_abs, worst_ratio, bad, worst);
    }
};

// ---- timing ----
struct Timing {
    double median_us, stream_us;
};
// launch(i) must enqueue one call on stream `s` (i selects a rotating input copy).
static inline Timing time_it(cudaStream_t s, const std::function<void(int)> &launch, int iters = 20,
                             int stream_iters = 100) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int i = 0; i < 3; ++i) launch(i);
    CK(cudaDeviceSynchronize());
    std::vector<float> ts;
    for (int i = 0; i < iters; ++i) {
        CK(cudaEventRecord(a, s));
        launch(i);
        CK(cudaEventRecord(b, s));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        ts.push_back(ms);
    }
    std::sort(ts.begin(), ts.end());
    CK(cudaEventRecord(a, s));
    for (int i = 0; i < stream_iters; ++i) launch(i);
    CK(cudaEventRecord(b, s));
    CK(cudaEventSynchronize(b));
    float total;
    CK(cudaEventElapsedTime(&total, a, b));
    CK(cudaGetLastError());
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return Timing{ts[ts.size() / 2] * 1e3, total * 1e3 / stream_iters};
}
