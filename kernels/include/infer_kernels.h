/* RustInfer CUDA kernels: the only ABI between Rust and the .cu sources (bound with bindgen).
 *
 * Conventions
 * - bf16 tensors are passed as `void*` / `const void*` (device pointers to __nv_bfloat16), row-major.
 * - The residual stream is f32; everything else (normed activations, projections, KV cache) is bf16,
 *   with f32 accumulation inside every kernel.
 * - Positions and token ids that change every decode step are read from DEVICE memory
 *   (`const int32_t* pos_dev`, `ids`), so one decode step can be captured in a CUDA graph and
 *   replayed; grid sizes never depend on them.
 * - Every launcher checks its arguments (returns cudaErrorInvalidValue on nonsense sizes), launches
 *   on `stream`, never synchronises, never allocates, and returns cudaGetLastError().
 * - Shapes: n_heads query heads and n_kv_heads KV heads of head_dim each (GQA group
 *   n_heads / n_kv_heads); KV caches are [n_kv_heads, ctx, head_dim]; the fused QKV projection
 *   output is [seq, (n_heads + 2 * n_kv_heads) * head_dim] laid out as [q | k | v] per row.
 */
#ifndef INFER_KERNELS_H
#define INFER_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* out[i, :] = f32(table[ids[i], :]); ids [n_tokens] int32 on device (out-of-range ids give zeros). */
cudaError_t infer_embedding_bf16(const int32_t *ids, const void *table, float *out, int n_tokens, int hidden,
                                 int vocab, cudaStream_t stream);

/* RMSNorm with an optional residual add, row by row over [rows, dim]:
 *   if delta != NULL: x += f32(delta)      (x is the f32 residual stream, updated in place)
 *   out = bf16(x / sqrt(mean(x^2) + eps) * weight)       weight [dim] bf16. */
cudaError_t infer_add_rms_norm_bf16(float *x, const void *delta, const void *weight, void *out, int rows, int dim,
                                    float eps, cudaStream_t stream);

/* Skinny matmul for decode: out[m, n] = x[m, k] . w[n, k]^T, bf16 inputs, f32 accumulation,
 * any m >= 1 (m > 8 runs a tensor-core GEMM). out is bf16, or f32 when out_f32 != 0 (LM head logits). k % 8 == 0 and 16-byte aligned x, w required
 * (16-byte vector loads). Must reach most of HBM bandwidth for n*k*2 bytes of weights. */
cudaError_t infer_gemv_bf16(const void *x, const void *w, void *out, int m, int n, int k, int out_f32,
                            cudaStream_t stream);

/* Decode GEMV (m == 1, or m <= 8 in the plain modes) with fusions, out[m, n] from w[n, k] bf16:
 *   in_mode 0: x bf16 [m, k]
 *   in_mode 1: RMSNorm fused in: x f32 [m, k] (residual stream), norm_weight bf16 [k]:
 *              out = (x * norm_weight) . w^T * rsqrt(mean(x^2) + eps)   (= rms_norm(x) . w^T)
 *   in_mode 2: SwiGLU fused in: x = gate_up bf16 [m, 2k] laid out [gate | up]: silu(gate) * up
 *   out_mode 0: out bf16;  1: out f32;  2: out f32 += result (residual add, m == 1)
 *   out_mode 3: SwiGLU epilogue (m == 1): w is [2n, k] laid out [gate | up] and
 *               out bf16 [n] = bf16(silu(g) * u) with g, u the bf16-rounded gate / up results
 * Modes 1, 2 and out_modes 2, 3 need m == 1; modes 1 and 2 need k <= 16384 (the block forms the input
 * row once in shared memory). Same alignment rules as infer_gemv_bf16. */
cudaError_t infer_gemv_fused_bf16(const void *x, const void *w, const void *norm_weight, float eps, void *out, int m,
                                  int n, int k, int in_mode, int out_mode, cudaStream_t stream);

/* Decode qkv projection with RoPE and the KV-cache write as its epilogue (one row, position *pos_dev):
 * the result of x . w^T (in_mode 0 or 1 as in infer_gemv_fused_bf16; w [(n_heads + 2 n_kv_heads)
 * head_dim, k]) is rounded to bf16 and handled exactly as infer_rope_kv_bf16 handles one qkv row:
 * rotated q -> q_out [n_heads head_dim], rotated k and v -> the caches [n_kv_heads, ctx, head_dim]. */
cudaError_t infer_gemv_rope_kv_bf16(const void *x, const void *w, const void *norm_weight, float eps, void *q_out,
                                    void *k_cache, void *v_cache, const float *cos_sin, const int32_t *pos_dev,
                                    int n_heads, int n_kv_heads, int head_dim, int ctx, int k, int in_mode,
                                    cudaStream_t stream);

/* x[i] += f32(delta[i]) for i < n: x f32, delta bf16 (residual add after a prefill GEMM). */
cudaError_t infer_add_bf16_to_f32(float *x, const void *delta, size_t n, cudaStream_t stream);

/* GGML block-quantized weights (ggml_type: 8 = Q8_0, 2 = Q4_0, 3 = Q4_1, 12 = Q4_K, 14 = Q6_K; w is
 * [n, k] as whole blocks per row, k a multiple of the block size):
 *   infer_gemv_quant: out[m, n] = x[m, k] . dequant(w)^T for m in 1..8, x bf16 (16-byte aligned),
 *                     out bf16 or f32 (out_f32 != 0), f32 accumulation.
 *   infer_dequant_bf16: out[rows, k] bf16 = dequant(w) (prefill: the GEMM then runs on cuBLASLt).
 *   infer_embedding_quant: out[i, :] = f32(dequant(table[ids[i], :])) (out-of-range ids give zeros). */
cudaError_t infer_gemv_quant(const void *x, const void *w, int ggml_type, void *out, int m, int n, int k, int out_f32,
                             cudaStream_t stream);
cudaError_t infer_dequant_bf16(const void *w, int ggml_type, void *out, int rows, int k, cudaStream_t stream);
cudaError_t infer_embedding_quant(const int32_t *ids, const void *table, int ggml_type, float *out, int n_tokens,
                                  int hidden, int vocab, cudaStream_t stream);

/* RoPE (Hugging Face rotate_half layout: pairs (j, j + head_dim/2)) on the fused projection
 * qkv [seq, (n_heads + 2 n_kv_heads) head_dim]; row i is at position pos0 + i with pos0 = *pos_dev.
 * Writes the rotated q to q_out [seq, n_heads head_dim], the rotated k and the v rows into the
 * caches at positions pos0 + i. cos_sin is [ctx, head_dim / 2, 2] f32 (cos, sin) precomputed on the host. */
cudaError_t infer_rope_kv_bf16(const void *qkv, void *q_out, void *k_cache, void *v_cache, const float *cos_sin,
                               const int32_t *pos_dev, int seq, int n_heads, int n_kv_heads, int head_dim, int ctx,
                               cudaStream_t stream);

/* Causal GQA attention of q [seq, n_heads head_dim] (rows at positions pos0 + i, pos0 = *pos_dev)
 * over the caches, which hold positions 0 .. pos0 + seq - 1: out [seq, n_heads head_dim] bf16,
 * softmax scale 1/sqrt(head_dim). seq == 1 uses split-KV (flash-decoding) with a grid sized by
 * `ctx` (splits past the current length exit early), so it is graph-capturable; seq > 1 uses a
 * tiled flash-attention kernel. head_dim in {64, 128} at least. workspace: f32 scratch of
 * infer_attention_workspace_bytes() bytes. */
cudaError_t infer_attention_bf16(const void *q, const void *k_cache, const void *v_cache, void *out,
                                 const int32_t *pos_dev, int seq, int n_heads, int n_kv_heads, int head_dim, int ctx,
                                 float *workspace, size_t workspace_bytes, cudaStream_t stream);
/* The same, for a launch (or captured graph) that only serves cache lengths *pos_dev + seq <= len_bound:
 * the decode kernel picks its work split by that bound (a performance hint: any length up to ctx is
 * still computed correctly). infer_attention_bf16 passes len_bound = ctx. */
cudaError_t infer_attention_bound_bf16(const void *q, const void *k_cache, const void *v_cache, void *out,
                                       const int32_t *pos_dev, int seq, int n_heads, int n_kv_heads, int head_dim,
                                       int ctx, int len_bound, float *workspace, size_t workspace_bytes,
                                       cudaStream_t stream);
size_t infer_attention_workspace_bytes(int n_heads, int head_dim, int ctx);

/* SwiGLU over the fused gate/up projection gate_up [rows, 2 inter] laid out [gate | up] per row:
 * out [rows, inter] = bf16(silu(gate) * up). */
cudaError_t infer_swiglu_bf16(const void *gate_up, void *out, int rows, int inter, cudaStream_t stream);

/* *out_id = argmax(logits[0..n]) (first index of the maximum; NaN ignored). workspace: at least
 * infer_argmax_workspace_bytes(n) bytes. */
cudaError_t infer_argmax_f32(const float *logits, int n, int32_t *out_id, void *workspace, cudaStream_t stream);
size_t infer_argmax_workspace_bytes(int n);
/* out_ids[r] = argmax(logits[r * n .. (r + 1) * n]) for every row r < rows (as infer_argmax_f32).
 * workspace: at least infer_argmax_rows_workspace_bytes(rows, n) bytes. */
cudaError_t infer_argmax_rows_f32(const float *logits, int rows, int n, int32_t *out_ids, void *workspace,
                                  cudaStream_t stream);
size_t infer_argmax_rows_workspace_bytes(int rows, int n);

/* End of a decode step: host_slot[(*pos_dev + 1) & 1] = *next_id, then *pos_dev += 1 (one thread,
 * after the step's last kernel). host_slot0/1: device-mapped page-locked host memory. */
cudaError_t infer_decode_advance(const int32_t *next_id, int32_t *pos_dev, int32_t *host_slot0, int32_t *host_slot1,
                                 cudaStream_t stream);

/* Sampling parameters (device memory, so a captured decode graph reads the current ones). */
typedef struct InferSampleParams {
    float temperature;        /* <= 0: greedy */
    int32_t top_k;            /* 0: off */
    float top_p;              /* >= 1: off */
    float min_p;              /* 0: off */
    float repetition_penalty; /* 1: off; applied to ids flagged in in_context */
    float presence_penalty;   /* applied to ids with counts > 0 */
    float frequency_penalty;  /* times counts */
} InferSampleParams;

/* Samples one id from logits[0..n] on the device (one block): penalties, then greedy or temperature /
 * top-k / min-p / top-p and a draw with the uniform *u_dev in [0, 1). Writes *out_id (-1 when no logit
 * is selectable), then counts[id] += 1 and in_context[id] = 1 (the generation's penalty state lives on
 * the device). workspace: n floats. Deterministic for given inputs. */
cudaError_t infer_sample_f32(const float *logits, int n, const InferSampleParams *params, const double *u_dev,
                             int32_t *counts, uint8_t *in_context, int32_t *out_id, float *workspace,
                             cudaStream_t stream);

/* Element conversions (used once at load for f32/f16 checkpoints, and by tests). */
cudaError_t infer_f32_to_bf16(const float *in, void *out, size_t n, cudaStream_t stream);
cudaError_t infer_f16_to_bf16(const void *in, void *out, size_t n, cudaStream_t stream);
cudaError_t infer_bf16_to_f32(const void *in, float *out, size_t n, cudaStream_t stream);

/* Paged KV cache (continuous batching; kernels/paged.cu). Pools are [num_blocks, n_kv_heads,
 * block_size, head_dim] bf16, one per layer for K and one for V. Row r of a batch is at position
 * positions[r] of sequence row_seq[r], whose block ids are block_tables[row_seq[r] * max_blocks ..
 * + max_blocks]; position p lives in block table[p / block_size] at offset p % block_size, i.e.
 * pool slot table[p / block_size] * block_size + p % block_size. positions, slots, row_seq and
 * block_tables are int32 in DEVICE memory (a captured graph replays with new values); grids depend
 * only on the sizes passed here. Values outside their ranges never cause an out-of-bounds access
 * (such rows give zeros / are not written); the host validates them anyway.
 *
 * infer_rope_kv_paged_bf16: RoPE as infer_rope_kv_bf16 on qkv [rows, (n_heads + 2 n_kv_heads)
 * head_dim], row r at position positions[r] (< max_pos, the rows of cos_sin [max_pos, head_dim / 2,
 * 2] f32): rotated q to q_out [rows, n_heads head_dim], rotated k and v to slot slots[r] of the pools.
 *
 * infer_paged_attention_bf16: causal GQA attention of q [rows, n_heads head_dim] (rotated): row r
 * attends to positions 0 ..= positions[r] of its sequence (all written already, its own included);
 * out [rows, n_heads head_dim] bf16, softmax scale 1/sqrt(head_dim), f32 accumulation.
 * head_dim in {16, 32, 64, 128, 256}; rows <= 65535; 16-byte aligned q, pools and out. workspace: f32
 * scratch of infer_paged_attention_workspace_bytes() bytes (0 when no split-KV is needed: then
 * workspace may be NULL). */
cudaError_t infer_rope_kv_paged_bf16(const void *qkv, void *q_out, void *k_pool, void *v_pool, const float *cos_sin,
                                     int max_pos, const int32_t *positions, const int32_t *slots, int rows,
                                     int n_heads, int n_kv_heads, int head_dim, int block_size, int num_blocks,
                                     cudaStream_t stream);
cudaError_t infer_paged_attention_bf16(const void *q, const void *k_pool, const void *v_pool, void *out,
                                       const int32_t *positions, const int32_t *row_seq, const int32_t *block_tables,
                                       int rows, int n_seqs, int max_blocks, int n_heads, int n_kv_heads,
                                       int head_dim, int block_size, int num_blocks, float *workspace,
                                       size_t workspace_bytes, cudaStream_t stream);
size_t infer_paged_attention_workspace_bytes(int rows, int n_heads, int n_kv_heads, int head_dim, int block_size,
                                             int max_blocks);


/* Whole decode step as one persistent kernel (kernels/decode_step.cu; sm_90+, bf16 weights, batch 1):
 * embedding of *id_dev, every layer (RMSNorm, qkv, RoPE + KV-cache write at *pos_dev, GQA attention,
 * o_proj + residual, RMSNorm, gate_up + SwiGLU, down + residual), final norm, LM head into logits
 * [vocab] f32 and, when next_id != NULL, its argmax (first index of the maximum, NaN ignored; -1 when
 * every logit is NaN). Numerics as the fused kernels: bf16 activations, f32 accumulation and residual.
 * Every weight pointer 16-byte aligned; hidden, inter and n_heads * head_dim multiples of 512;
 * head_dim 64 or 128; n_heads / n_kv_heads <= 8. infer_decode_step_supported() says whether this
 * device and shape can run it (else use the per-op kernels). The workspace
 * (infer_decode_step_workspace_bytes(), 0 = unsupported shape) must be zeroed once before the first
 * launch; every launch leaves its counters at zero. One launch at a time per workspace. */
typedef struct InferDecodeLayerW {
    const void *qkv;       /* [(n_heads + 2 n_kv_heads) head_dim, hidden], rows [q | k | v] */
    const void *o;         /* [hidden, n_heads head_dim] */
    const void *gate_up;   /* [2 inter, hidden], rows [gate | up] */
    const void *down;      /* [hidden, inter] */
    const void *attn_norm; /* [hidden] input_layernorm */
    const void *mlp_norm;  /* [hidden] post_attention_layernorm */
    void *k_cache;         /* [n_kv_heads, ctx, head_dim] */
    void *v_cache;
} InferDecodeLayerW;
typedef struct InferDecodeModel {
    int n_layers, hidden, n_heads, n_kv_heads, head_dim, inter, vocab, ctx;
    float eps;
    const InferDecodeLayerW *layers; /* DEVICE array [n_layers] */
    const void *embed;               /* [vocab, hidden] */
    const void *final_norm;          /* [hidden] */
    const void *lm_head;             /* [vocab, hidden] (the embedding when tied) */
    const float *cos_sin;            /* [ctx, head_dim / 2, 2] (cos, sin) */
} InferDecodeModel;
int infer_decode_step_supported(const InferDecodeModel *m);
size_t infer_decode_step_workspace_bytes(const InferDecodeModel *m);
cudaError_t infer_decode_step_bf16(const InferDecodeModel *m, const int32_t *id_dev, const int32_t *pos_dev,
                                   float *logits, int32_t *next_id, void *workspace, size_t workspace_bytes,
                                   cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif /* INFER_KERNELS_H */
