//! Device implementations of the fused decode ops (`op::norm_linear`, `op::matmul_add`,
//! `op::swiglu_matmul_add`, `op::norm_rope_kv`, `op::norm_swiglu`) and the plain kernels their
//! unfused (prefill) forms need. One GEMV kernel (`infer_gemv_fused_bf16`, and
//! `infer_gemv_rope_kv_bf16` for the RoPE epilogue) covers every fusion: its input mode picks how
//! the input row is formed, its output mode where the result goes.

use std::sync::OnceLock;

use std::ffi::c_void;

use super::device::CudaDevice;
use super::ffi;
use super::ops::{dev_of, device_pos, expect, int, ptr, ptr_mut};
use crate::base::{Error, Result};
use crate::op::Positions;
use crate::op::rope::RopeTable;
use crate::tensor::{DType, Tensor};

/// Longest input row the fused input modes take (they stage it in shared memory).
pub const FUSED_MAX_K: usize = 16384;

/// A decode-step fusion that can be switched off for A/B timing with `INFER_FUSE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fusion {
    /// RMSNorm inside the next GEMV (`norm_linear`).
    Norm = 1,
    /// SwiGLU inside the down-projection GEMV (`swiglu_matmul_add`).
    SwiGlu = 2,
    /// Residual add as the GEMV epilogue (`matmul_add`, `swiglu_matmul_add`).
    Add = 4,
    /// SwiGLU as the gate/up GEMV's epilogue (`norm_swiglu`).
    SwiGluOut = 8,
    /// RoPE and the KV-cache write as the qkv GEMV's epilogue (`norm_rope_kv`).
    RopeKv = 16,
}

/// Whether `f` is on. Default: all but SwiGLU inside the down GEMV (mask 29), which measured
/// slower on an H100 (846 vs 907 tok/s for Llama-3.2-1B: every warp recomputes silu over the
/// whole 8192-wide row); SwiGLU as the gate/up epilogue replaces it. `INFER_FUSE=<bitmask>`
/// (1 norm, 2 swiglu in, 4 add, 8 swiglu out, 16 rope; 0 = none) chooses, read once per process.
pub fn enabled(f: Fusion) -> bool {
    static MASK: OnceLock<u32> = OnceLock::new();
    let mask = *MASK.get_or_init(|| std::env::var("INFER_FUSE").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(29));
    mask & f as u32 != 0
}

/// How the fused GEMV forms its input row (`in_mode` of `infer_gemv_fused_bf16`).
#[derive(Debug, Clone, Copy)]
pub enum GemvIn<'a> {
    /// bf16 `x [1, k]`.
    Plain,
    /// RMSNorm of the f32 residual `x [1, k]` with this weight and eps, fused in.
    Norm(&'a Tensor, f32),
    /// `silu(gate) * up` of a bf16 `gate_up [1, 2k]`.
    SwiGlu,
}

/// Where the fused GEMV's result goes (`out_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemvOut {
    /// Written as the output tensor's dtype (bf16 or f32).
    Store,
    /// Added to an f32 output (the residual stream).
    Accumulate,
    /// `w` is `[2n, k]` laid out `[gate | up]`; bf16 `out[1, n] = silu(gate) * up`.
    SwiGlu,
}

/// One decode-step GEMV `out[1, n] (=|+=) in(x) · w[n, k]ᵀ` with the fusions above.
pub fn gemv_fused(x: &Tensor, w: &Tensor, input: GemvIn, out: &mut Tensor, output: GemvOut) -> Result<()> {
    const OP: &str = "gemv_fused";
    let dev = dev_of(OP, x)?;
    let (n, k) = w.dims2(OP)?;
    expect(OP, "w", w, DType::BF16, &dev)?;
    let (in_mode, g, eps) = gemv_input(OP, &dev, x, k, input)?;
    let (out_mode, n_out) = match (output, out.dtype()) {
        (GemvOut::Store, DType::BF16) => (0, n),
        (GemvOut::Store, DType::F32) => (1, n),
        (GemvOut::Accumulate, DType::F32) => (2, n),
        (GemvOut::SwiGlu, DType::BF16) if n % 2 == 0 => (3, n / 2),
        (_, d) => return Err(Error::op(OP, format!("output dtype {d} does not fit {output:?} (w {:?})", w.shape()))),
    };
    expect(OP, "out", out, out.dtype(), &dev)?;
    if out.numel() != n_out {
        return Err(Error::op(OP, format!("out {:?} must hold {n_out} values", out.shape())));
    }
    // SAFETY: x holds one row in the mode's dtype and length, w [n, k] bf16, g [k] bf16 (or NULL
    // when unused), out n_out values of the checked dtype; all on this device's stream. The
    // kernel checks k % 8 and 16-byte alignment.
    let st = unsafe {
        ffi::infer_gemv_fused_bf16(
            ptr(x)?,
            ptr(w)?,
            g,
            eps,
            ptr_mut(out)?,
            1,
            int(OP, n_out)?,
            int(OP, k)?,
            in_mode,
            out_mode,
            dev.stream.cu_stream() as _,
        )
    };
    ffi::check(OP, st)
}

/// Checks the input row `x` of a decode GEMV with `k` columns; returns the kernel's input mode
/// and the norm weight pointer (NULL unless fused) and eps.
fn gemv_input(
    op: &'static str,
    dev: &CudaDevice,
    x: &Tensor,
    k: usize,
    input: GemvIn,
) -> Result<(i32, *const c_void, f32)> {
    let (in_mode, x_dtype, x_len) = match input {
        GemvIn::Plain => (0, DType::BF16, k),
        GemvIn::Norm(..) => (1, DType::F32, k),
        GemvIn::SwiGlu => (2, DType::BF16, 2 * k),
    };
    expect(op, "x", x, x_dtype, dev)?;
    if x.numel() != x_len {
        return Err(Error::op(op, format!("x {:?} must hold one row of {x_len}", x.shape())));
    }
    match input {
        GemvIn::Norm(g, eps) => {
            expect(op, "norm weight", g, DType::BF16, dev)?;
            if g.numel() != k {
                return Err(Error::op(op, format!("norm weight {:?} must hold {k} values", g.shape())));
            }
            Ok((in_mode, ptr(g)?, eps))
        }
        _ => Ok((in_mode, std::ptr::null(), 0.0)),
    }
}

/// The decode qkv projection with RoPE and the KV-cache write as its epilogue: one row of
/// `in(x) · w[(n_heads + 2 n_kv) hd, k]ᵀ` at position `pos.start`, handled as `op::rope_kv`
/// handles a qkv row (rotated q into `q_out [1, n_heads hd]`, rotated k and v into the caches
/// `[n_kv, ctx, hd]`). The caller checked the shapes against each other and the table.
#[allow(clippy::too_many_arguments)]
pub fn gemv_rope_kv(
    x: &Tensor,
    w: &Tensor,
    input: GemvIn,
    q_out: &mut Tensor,
    k_cache: &mut Tensor,
    v_cache: &mut Tensor,
    pos: &Positions,
    table: &RopeTable,
    n_heads: usize,
) -> Result<()> {
    const OP: &str = "gemv_rope_kv";
    let dev = dev_of(OP, x)?;
    let (n, k) = w.dims2(OP)?;
    let [n_kv, ctx, hd] = k_cache.shape()[..] else { return Err(Error::op(OP, "bad cache shape")) };
    if n != (n_heads + 2 * n_kv) * hd || q_out.numel() != n_heads * hd || v_cache.shape() != k_cache.shape() {
        return Err(Error::op(
            OP,
            format!("w {:?} / q {:?} do not fit the caches {:?}", w.shape(), q_out.shape(), [n_kv, ctx, hd]),
        ));
    }
    for (what, t) in [("w", w), ("q_out", &*q_out), ("k_cache", &*k_cache), ("v_cache", &*v_cache)] {
        expect(OP, what, t, DType::BF16, &dev)?;
    }
    let (in_mode, g, eps) = gemv_input(OP, &dev, x, k, input)?;
    let cos_sin = table.device_cos_sin(&dev)?;
    let mut tmp = None;
    let p = device_pos(pos, &dev, &mut tmp)?;
    // SAFETY: x one input row (checked), w [n, k] bf16, g [k] bf16 or NULL, q_out [n_heads hd]
    // and caches [n_kv, ctx, hd] bf16, cos_sin [table positions, hd / 2, 2] f32 (the caller
    // bounds pos by the table and ctx), p one device i32; all on this device's stream.
    let st = unsafe {
        ffi::infer_gemv_rope_kv_bf16(
            ptr(x)?,
            ptr(w)?,
            g,
            eps,
            ptr_mut(q_out)?,
            ptr_mut(k_cache)?,
            ptr_mut(v_cache)?,
            cos_sin.ptr() as *const f32,
            p,
            int(OP, n_heads)?,
            int(OP, n_kv)?,
            int(OP, hd)?,
            int(OP, ctx)?,
            int(OP, k)?,
            in_mode,
            dev.stream.cu_stream() as _,
        )
    };
    ffi::check(OP, st)
}

/// `x += f32(delta)`: x f32, delta bf16 of the same length (residual add after a GEMM).
pub fn add_bf16_to_f32(x: &mut Tensor, delta: &Tensor) -> Result<()> {
    const OP: &str = "add";
    let dev = dev_of(OP, x)?;
    expect(OP, "x", x, DType::F32, &dev)?;
    expect(OP, "delta", delta, DType::BF16, &dev)?;
    if x.numel() != delta.numel() {
        return Err(Error::op(OP, format!("x {:?} and delta {:?} differ in size", x.shape(), delta.shape())));
    }
    let n = x.numel();
    // SAFETY: x holds n f32 and delta n bf16 on this device (checked above).
    let st =
        unsafe { ffi::infer_add_bf16_to_f32(ptr_mut(x)? as *mut f32, ptr(delta)?, n, dev.stream.cu_stream() as _) };
    ffi::check(OP, st)
}
