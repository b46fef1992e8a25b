// RoPE (Hugging Face rotate_half layout) on the fused QKV projection, scattering K and V into the caches.
// Decomposition: grid (ceil(units / 256), seq); row i (position p = *pos_dev + i) has one unit per
// rotation pair (head, j < head_dim/2) of the n_heads + n_kv_heads q/k heads, then one unit per v
// element. Consecutive threads take consecutive j, so every access is coalesced. Rows whose position
// falls outside [0, ctx) write zeros to q_out and leave the caches alone (the host bounds pos; this
// only keeps a bad device-side position from writing out of bounds).
#include "common.cuh"

__global__ void __launch_bounds__(256)
rope_kv_kernel(const bf16 *__restrict__ qkv, bf16 *__restrict__ q_out, bf16 *__restrict__ k_cache,
               bf16 *__restrict__ v_cache, const float *__restrict__ cos_sin, const int32_t *__restrict__ pos_dev,
               int n_heads, int n_kv_heads, int head_dim, int ctx) {
    pdl_launch_dependents();
    pdl_wait();  // every input may come from the previous kernel
    const int i = blockIdx.y;
    const int half = head_dim / 2;
    const int rot_units = (n_heads + n_kv_heads) * half;
    const int units = rot_units + n_kv_heads * head_dim;
    const int u = blockIdx.x * blockDim.x + threadIdx.x;
    if (u >= units) return;
    const int p = *pos_dev + i;
    const bool pos_ok = p >= 0 && p < ctx;
    const int width = (n_heads + 2 * n_kv_heads) * head_dim;
    const bf16 *row = qkv + (size_t)i * width;

    if (u < rot_units) {
        const int head = u / half, j = u - head * half;
        float o1 = 0.f, o2 = 0.f;
        if (pos_ok) {
            const float x1 = __bfloat162float(row[head * head_dim + j]);
            const float x2 = __bfloat162float(row[head * head_dim + j + half]);
            const float2 o = rope_pair(x1, x2, cos_sin, p, half, j);
            o1 = o.x;
            o2 = o.y;
        }
        if (head < n_heads) {
            bf16 *dst = q_out + ((size_t)i * n_heads + head) * head_dim;
            dst[j] = __float2bfloat16_rn(o1);
            dst[j + half] = __float2bfloat16_rn(o2);
        } else if (pos_ok) {
            bf16 *dst = k_cache + ((size_t)(head - n_heads) * ctx + p) * head_dim;
            dst[j] = __float2bfloat16_rn(o1);
            dst[j + half] = __float2bfloat16_rn(o2);
        }
    } else if (pos_ok) {
        const int e = u - rot_units;  // index into the v part of the row
        const int kvh = e / head_dim, d = e - kvh * head_dim;
        v_cache[((size_t)kvh * ctx + p) * head_dim + d] = row[(n_heads + n_kv_heads) * head_dim + e];
    }
}

extern "C" cudaError_t infer_rope_kv_bf16(const void *qkv, void *q_out, void *k_cache, void *v_cache,
                                          const float *cos_sin, const int32_t *pos_dev, int seq, int n_heads,
                                          int n_kv_heads, int head_dim, int ctx, cudaStream_t stream) {
    INFER_CHECK_ARG(seq >= 1 && n_heads >= 1 && n_kv_heads >= 1 && n_heads % n_kv_heads == 0);
    INFER_CHECK_ARG(head_dim >= 2 && head_dim % 2 == 0 && ctx >= 1 && seq <= ctx && seq <= 65535);
    INFER_CHECK_ARG(qkv && q_out && k_cache && v_cache && cos_sin && pos_dev);
    INFER_CHECK_ARG((reinterpret_cast<uintptr_t>(cos_sin) & 7u) == 0);
    const int units = (n_heads + n_kv_heads) * (head_dim / 2) + n_kv_heads * head_dim;
    const dim3 grid(infer_cdiv(units, 256), seq);
    INFER_LAUNCH(rope_kv_kernel, grid, dim3(256), 0, stream, static_cast<const bf16 *>(qkv), static_cast<bf16 *>(q_out),
                 static_cast<bf16 *>(k_cache), static_cast<bf16 *>(v_cache), cos_sin, pos_dev, n_heads, n_kv_heads,
                 head_dim, ctx);
    return cudaGetLastError();
}
