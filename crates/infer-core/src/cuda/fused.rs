//! Device implementations of the fused decode ops (`op::norm_linear`, `op::matmul_add`,
//! `op::swiglu_matmul_add`) and the plain kernels their unfused (prefill) forms need.
//! One GEMV kernel (`infer_gemv_fused_bf16`) covers every fusion: its input mode picks how the
//! input row is formed, its output mode where the result goes.

use std::sync::OnceLock;

use super::ffi;
use super::ops::{dev_of, expect, int, ptr, ptr_mut};
use crate::base::{Error, Result};
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
}

/// Whether `f` is on. Default: norm and add (mask 5). SwiGLU inside the down GEMV measured
/// slower on an H100 (846 vs 907 tok/s for Llama-3.2-1B: every warp recomputes silu over the
/// whole 8192-wide row), so it is opt-in. `INFER_FUSE=<bitmask>` (1 norm, 2 swiglu, 4 add;
/// 0 = none) chooses, read once per process.
pub fn enabled(f: Fusion) -> bool {
    static MASK: OnceLock<u32> = OnceLock::new();
    let mask = *MASK.get_or_init(|| std::env::var("INFER_FUSE").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(5));
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
}

/// One decode-step GEMV `out[1, n] (=|+=) in(x) · w[n, k]ᵀ` with the fusions above.
pub fn gemv_fused(x: &Tensor, w: &Tensor, input: GemvIn, out: &mut Tensor, output: GemvOut) -> Result<()> {
    const OP: &str = "gemv_fused";
    let dev = dev_of(OP, x)?;
    let (n, k) = w.dims2(OP)?;
    expect(OP, "w", w, DType::BF16, &dev)?;
    let (in_mode, x_dtype, x_len, norm) = match input {
        GemvIn::Plain => (0, DType::BF16, k, None),
        GemvIn::Norm(g, eps) => (1, DType::F32, k, Some((g, eps))),
        GemvIn::SwiGlu => (2, DType::BF16, 2 * k, None),
    };
    expect(OP, "x", x, x_dtype, &dev)?;
    if x.numel() != x_len {
        return Err(Error::op(OP, format!("x {:?} must hold one row of {x_len} for w {:?}", x.shape(), w.shape())));
    }
    let out_mode = match (output, out.dtype()) {
        (GemvOut::Store, DType::BF16) => 0,
        (GemvOut::Store, DType::F32) => 1,
        (GemvOut::Accumulate, DType::F32) => 2,
        (_, d) => return Err(Error::op(OP, format!("output dtype {d} does not fit {output:?}"))),
    };
    expect(OP, "out", out, out.dtype(), &dev)?;
    if out.numel() != n {
        return Err(Error::op(OP, format!("out {:?} must hold {n} values", out.shape())));
    }
    let (g, eps) = match norm {
        Some((g, eps)) => {
            expect(OP, "norm weight", g, DType::BF16, &dev)?;
            if g.numel() != k {
                return Err(Error::op(OP, format!("norm weight {:?} must hold {k} values", g.shape())));
            }
            (ptr(g)?, eps)
        }
        None => (std::ptr::null(), 0.0),
    };
    // SAFETY: x holds one row in the mode's dtype and length, w [n, k] bf16, g [k] bf16 (or NULL
    // when unused), out n values of the checked dtype; all on this device's stream. The kernel
    // checks k % 8 and 16-byte alignment.
    let st = unsafe {
        ffi::infer_gemv_fused_bf16(
            ptr(x)?,
            ptr(w)?,
            g,
            eps,
            ptr_mut(out)?,
            1,
            int(OP, n)?,
            int(OP, k)?,
            in_mode,
            out_mode,
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
