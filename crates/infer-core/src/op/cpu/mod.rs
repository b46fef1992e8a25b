//! CPU kernels: the matmul that dominates inference ([`matmul_nt`]) and the vector helpers
//! attention uses ([`dot_f32`], [`axpy_f32`]).
//!
//! Kernel families are picked at runtime ([`simd`]): AVX-512 (F/BW/VL + FMA), AVX2 (+ FMA,
//! F16C), or portable Rust; non-x86 targets compile the portable path only. All `unsafe`
//! (intrinsics) lives in the ISA files `avx512.rs`, `avx512_gemm.rs`, `avx512_gemv.rs`,
//! `avx512_wgemm.rs`, `avx2.rs` and `vec.rs` (and `quant/{x86,avx2,avx512}.rs`), plus the job
//! hand-off of the decode thread pool (`pool.rs`); the drivers in `gemm.rs` and `quant/mod.rs`
//! are safe code over bounds-checked slices.
//!
//! Block-quantized weights go to [`quant`] (integer dots on 8-bit activations) under
//! [`Precision::Fast`], or are dequantized one row at a time under [`Precision::Exact`].

pub(crate) mod attn_rows;
mod gemm;
mod kernel;
pub(crate) mod pool;
pub mod quant;
#[cfg(target_arch = "x86_64")]
mod quant_prefill;
pub mod simd;
pub mod tuning;
mod vec;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_gemm;
#[cfg(target_arch = "x86_64")]
mod avx512_gemv;
#[cfg(target_arch = "x86_64")]
mod avx512_wgemm;
#[cfg(target_arch = "x86_64")]
mod dequant_bf16;

pub use simd::{Isa, isa};
pub use vec::{axpy_f32, dot_f32, exp_shift_sum, silu_mul_f32};

use super::Precision;
use crate::base::{Error, Result};
use crate::tensor::{DType, TensorData};
use gemm::Out;
use kernel::{Kernel, Scalar, Weight};

/// Row counts up to this use the decode kernel (weights widened in registers, no panel).
const GEMV_MAX_ROWS: usize = 4;
/// From this many rows on, the f32 path on AVX-512 uses the packed outer-product kernel (below,
/// transposing the weight panels costs about what it saves). The opt-in bf16 path packs from
/// `GEMV_MAX_ROWS + 1` rows, its doubled FLOP rate pays for the packing.
#[cfg(target_arch = "x86_64")]
const PACKED_MIN_ROWS: usize = 64;

/// `out[i, j] = Σ_l x[i, l] · w[j, l]`: `x` is `[m, k]` f32, `w` is `[n, k]` (f32, bf16, f16 or
/// block-quantized, read in place, never widened as a whole), `out` is `[m, n]` f32; all
/// row-major. `precision` picks the fast or exact path for bf16 and quantized weights.
///
/// Runs on the active kernel family ([`isa`]) in parallel over blocks of `n` (on the spinning
/// pool, see `pool`). Errors (naming the sizes) when a slice length does not match its shape.
pub fn matmul_nt(
    x: &[f32],
    w: TensorData<'_>,
    out: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    precision: Precision,
) -> Result<()> {
    matmul_nt_cols(x, w, out, n, 0, m, n, k, precision)
}

/// [`matmul_nt`] into columns `col..col + n` of an `[m, ld]` output: one part of a projection
/// whose parts are separate checkpoint tensors (q/k/v, gate/up), written in place. Block-quantized
/// weights with `ld > n` go through a scratch `[m, n]` and a copy.
#[allow(clippy::too_many_arguments)]
pub fn matmul_nt_cols(
    x: &[f32],
    w: TensorData<'_>,
    out: &mut [f32],
    ld: usize,
    col: usize,
    m: usize,
    n: usize,
    k: usize,
    precision: Precision,
) -> Result<()> {
    check_len("x", x.len(), m, k)?;
    check_len("w", w.len(), n, k)?;
    check_len("out", out.len(), m, ld)?;
    if col.checked_add(n).is_none_or(|end| end > ld) {
        return Err(Error::op("matmul", format!("columns {col}..{col}+{n} exceed the output's {ld}")));
    }
    // Interleaved Q4_K (`tensor::repack`): the fast paths read it in place (the integer kernels,
    // the dequantizing prefill); the exact path takes its rows unpacked to Q4_K, a copy per call.
    if let (TensorData::Quant(DType::Q4_Kx8, bytes), Precision::Exact) = (w, precision) {
        let q4 = crate::tensor::repack::to_q4_k(bytes, k)?;
        return matmul_nt_cols(x, TensorData::Quant(DType::Q4_K, &q4), out, ld, col, m, n, k, precision);
    }
    #[cfg(target_arch = "x86_64")]
    if let (TensorData::Quant(dtype, bytes), Precision::Fast, Some(rows)) = (w, precision, quant_prefill::applies(m)) {
        return quant_prefill::matmul(rows, dtype, bytes, x, out, ld, col, m, n, k);
    }
    if let TensorData::Quant(dtype, bytes) = w
        && ld == n
    {
        return match precision {
            Precision::Fast => quant::matmul_fast(simd::active(), dtype, bytes, x, out, m, n, k),
            Precision::Exact => matmul_dequant_rows(dtype, bytes, x, out, m, n, k),
        };
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if let TensorData::Quant(..) = w {
        let mut part = vec![0.0; m * n];
        matmul_nt(x, w, &mut part, m, n, k, precision)?;
        for (dst, src) in out.chunks_mut(ld).zip(part.chunks_exact(n)) {
            dst[col..col + n].copy_from_slice(src);
        }
        return Ok(());
    }
    let out = Out { data: &mut out[col..], ld }; // row r starts at r * ld
    matmul_into(simd::active(), precision == Precision::Fast, x, w, out, m, n, k);
    Ok(())
}

/// Quantized weights, exact path: each weight row is dequantized into a per-task f32 buffer
/// and dotted with every row of `x` (SIMD f32 dot). Parallel over weight rows; the matrix is
/// never dequantized as a whole.
fn matmul_dequant_rows(
    dtype: crate::tensor::DType,
    w: &[u8],
    x: &[f32],
    out: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
) -> Result<()> {
    use rayon::prelude::*;
    let row_bytes = dtype
        .bytes_for(k)
        .ok_or_else(|| Error::op("matmul", format!("{dtype} weight rows of {k} elements are not whole blocks")))?;
    if w.len() != n * row_bytes {
        return Err(Error::op(
            "matmul",
            format!("{dtype} weights: {} bytes, expected {n} rows of {row_bytes}", w.len()),
        ));
    }
    if m == 0 || n == 0 || k == 0 {
        out.fill(0.0); // nothing to write, or the empty sum
        return Ok(());
    }
    let mut cols = vec![0.0f32; m * n]; // [n, m]: each task writes one weight row's outputs
    // One f32 row buffer per rayon task (reused across the rows the task takes).
    cols.par_chunks_mut(m).zip(w.par_chunks_exact(row_bytes)).with_min_len(4).try_for_each_init(
        || vec![0.0f32; k],
        |row, (o, wr)| {
            crate::tensor::quant::dequantize(dtype, wr, row)?;
            for (i, o) in o.iter_mut().enumerate() {
                *o = dot_f32(&x[i * k..(i + 1) * k], row);
            }
            Ok::<(), Error>(())
        },
    )?;
    for j in 0..n {
        for i in 0..m {
            out[i * n + j] = cols[j * m + i];
        }
    }
    Ok(())
}

fn check_len(what: &str, len: usize, rows: usize, cols: usize) -> Result<()> {
    if rows.checked_mul(cols) != Some(len) {
        return Err(Error::op("matmul", format!("{what} has {len} elements, expected [{rows}, {cols}]")));
    }
    Ok(())
}

/// [`matmul_nt`] on a given kernel family (capped to what the CPU supports); `fast` allows
/// bf16-rounded activations ([`Precision::Fast`]). Lengths must already be checked. Tests pin
/// the ISA with it; the library goes through `matmul_into`.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_with(
    isa: Isa,
    fast: bool,
    x: &[f32],
    w: TensorData<'_>,
    out: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
) {
    matmul_into(isa, fast, x, w, Out::dense(out, n), m, n, k)
}

/// [`matmul_with`] into an output with row stride `out.ld` (see [`Out`]).
#[allow(clippy::too_many_arguments)]
fn matmul_into(isa: Isa, fast: bool, x: &[f32], w: TensorData<'_>, out: Out<'_>, m: usize, n: usize, k: usize) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for row in out.data.chunks_mut(out.ld).take(m) {
            row[..n].fill(0.0);
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx512
        && fast
        && m <= GEMV_MAX_ROWS
        && let (TensorData::BF16(w), Some(bf)) = (w, avx512::Avx512Bf16::new())
    {
        return gemm::gemv_bf16dot(bf, x, w, out, m, n, k);
    }
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx512
        && m > GEMV_MAX_ROWS
        && let Some(cpu) = avx512::Avx512::new()
    {
        let bf16dot = if fast { avx512::Avx512Bf16::new() } else { None };
        let packed = m >= PACKED_MIN_ROWS;
        match (w, bf16dot) {
            (TensorData::BF16(w), Some(bf)) if k.is_multiple_of(2) && !packed_bf16() => {
                return gemm::gemm_bf16_wbcast(bf, x, w, out, m, n, k);
            }
            (TensorData::BF16(w), Some(bf)) => return gemm::gemm_packed_bf16dot(bf, x, w, out, m, n, k),
            (TensorData::BF16(w), None) if packed => return gemm::gemm_packed_f32(cpu, x, w, out, m, n, k),
            (TensorData::F32(w), _) if packed => return gemm::gemm_packed_f32(cpu, x, w, out, m, n, k),
            (TensorData::F16(w), _) if packed => return gemm::gemm_packed_f32(cpu, x, w, out, m, n, k),
            _ => {}
        }
    }
    let _ = fast;
    match w {
        TensorData::F32(w) => dispatch(isa, x, w, out, m, n, k),
        TensorData::F16(w) => dispatch(isa, x, w, out, m, n, k),
        TensorData::BF16(w) => dispatch(isa, x, w, out, m, n, k),
        TensorData::Quant(..) => unreachable!("matmul_nt routes quantized weights before matmul_with"),
    }
}

/// Whether fast bf16 prefill packs weight panels (`INFER_CPU_GEMM=packed`, the older path kept
/// for A/B timing) instead of reading the weight rows in place (default).
#[cfg(target_arch = "x86_64")]
fn packed_bf16() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("INFER_CPU_GEMM").is_ok_and(|v| v.trim() == "packed"))
}

fn dispatch<W: Weight>(isa: Isa, x: &[f32], w: &[W], out: Out<'_>, m: usize, n: usize, k: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if isa >= Isa::Avx512
            && let Some(cpu) = avx512::Avx512::new()
        {
            return run(cpu, x, w, out, m, n, k);
        }
        if isa >= Isa::Avx2
            && let Some(cpu) = avx2::Avx2::new()
        {
            return run(cpu, x, w, out, m, n, k);
        }
    }
    let _ = isa;
    run(Scalar, x, w, out, m, n, k)
}

fn run<K: Kernel, W: Weight>(kern: K, x: &[f32], w: &[W], out: Out<'_>, m: usize, n: usize, k: usize) {
    if m <= GEMV_MAX_ROWS.min(K::RMAX) {
        gemm::gemv(kern, x, w, out, m, n, k)
    } else {
        gemm::gemm(kern, x, w, out, m, n, k)
    }
}
