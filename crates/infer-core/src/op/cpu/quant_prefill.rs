//! Prefill on block-quantized weights through the float GEMMs ([`Precision::Fast`](crate::op::Precision),
//! at least [`Knob::QuantPrefillRows`] rows).
//!
//! A prefill reuses every weight row for each of its `m` rows, so the integer kernels' work
//! (two 8-bit activation rows per row, block by block) grows with `m` while a matrix's
//! dequantization does not: here weight rows are dequantized a block of rows at a time
//! ([`BLOCK_BYTES`], on the pool) and multiplied by the activations with the GEMM of float
//! checkpoints: on CPUs with AVX512_BF16 rounded to bf16 for the `vdpbf16ps` GEMM, as bf16
//! checkpoints are (f32 sums); elsewhere kept f32 (the f32 GEMM: exact weights, f32 activations,
//! the reference precision). The block's copy is the only extra memory.

use std::sync::atomic::{AtomicBool, Ordering};

use half::bf16;

use super::avx512::Avx512Bf16;
use super::avx512_gemm::round_row;
use super::gemm::Out;
use super::tuning::Knob;
use crate::base::{Error, Result};
use crate::tensor::quant::dequantize;
use crate::tensor::repack::dequantize_rows;
use crate::tensor::{DType, TensorData};

/// Bytes of dequantized weight rows per GEMM call.
const BLOCK_BYTES: usize = 2 << 20;
/// Weight rows per dequantization task.
const TASK_ROWS: usize = 16;

/// The float type the weight rows are dequantized to.
#[derive(Clone, Copy, Debug)]
pub(super) enum Rows {
    /// bf16 for the `vdpbf16ps` GEMM (the CPU has AVX512_BF16).
    Bf16(Avx512Bf16),
    /// f32 for the f32 GEMM of the active instruction set.
    F32,
}

/// Whether a `[m, k]` × quantized matmul takes this path, and in which float type.
pub(super) fn applies(m: usize) -> Option<Rows> {
    let min = Knob::QuantPrefillRows.get();
    if min == 0 || m < min {
        return None;
    }
    Some(Avx512Bf16::new().map_or(Rows::F32, Rows::Bf16))
}

/// `out[i, col + j] = Σ_l x[i, l] · w[j, l]` (row stride `ld`) with `w` `[n, k]` in `dtype`
/// blocks, through `rows` (module docs).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    rows: Rows,
    dtype: DType,
    w: &[u8],
    x: &[f32],
    out: &mut [f32],
    ld: usize,
    col: usize,
    m: usize,
    n: usize,
    k: usize,
) -> Result<()> {
    let rb = dtype.bytes_for(k).filter(|_| dtype.is_quantized() && k > 0);
    let Some(rb) = rb.filter(|rb| w.len() == n * rb) else {
        return Err(Error::op("matmul", format!("{dtype} weights of {} bytes are not [{n}, {k}]", w.len())));
    };
    let failed = AtomicBool::new(false);
    // Dequantizes `dst.len() / k` rows from `src` into `dst` (f32); false on a length mismatch
    // (whole rows of whole blocks, checked above: cannot happen).
    let deq = |src: &[u8], dst: &mut [f32]| {
        // Interleaved Q4_K: tasks and blocks are whole groups of 8 rows (multiples of TASK_ROWS).
        let res = if dtype == DType::Q4_Kx8 { dequantize_rows(src, k, dst) } else { dequantize(dtype, src, dst) };
        if res.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
    };
    let gemm = |blk: TensorData<'_>, out: Out<'_>, nr: usize| {
        super::matmul_into(super::simd::active(), true, x, blk, out, m, nr, k);
    };
    // The bf16 GEMM reads activations packed in blocks of 16 rows: packed once here for every
    // block of weight rows (the GEMM would pack them per call). Where `matmul_into` would take
    // another kernel (odd k, a few rows, `INFER_CPU_GEMM=packed`, an ISA capped below AVX-512) it still does.
    let wbcast = super::simd::active() >= super::simd::Isa::Avx512 && m > super::GEMV_MAX_ROWS && !super::packed_bf16();
    let packed = match rows {
        Rows::Bf16(bf) if k.is_multiple_of(2) && wbcast => Some(super::avx512_wgemm::pack_acts(bf, x, m, k)),
        _ => None,
    };
    match rows {
        Rows::Bf16(bf) => by_blocks::<bf16>(
            n,
            k,
            rb,
            w,
            out,
            ld,
            col,
            |wb, dst| {
                // One pass to bf16 where `dequant_bf16` has the dtype (same values as the route below).
                if super::dequant_bf16::rows(bf, dtype, wb, k, dst) {
                    return;
                }
                let mut f = vec![0.0f32; dst.len()];
                deq(wb, &mut f);
                // SAFETY: `bf` proves AVX-512 F/BW/VL + BF16 are available.
                unsafe { round_row(bf, &f, dst) };
            },
            |blk, o, nr| match &packed {
                Some(xp) => super::gemm::gemm_bf16_packed(bf, xp, blk, o, m, nr, k),
                None => gemm(TensorData::BF16(blk), o, nr),
            },
        ),
        Rows::F32 => by_blocks::<f32>(n, k, rb, w, out, ld, col, deq, |blk, o, nr| gemm(TensorData::F32(blk), o, nr)),
    }
    if failed.load(Ordering::Relaxed) {
        return Err(Error::op("matmul", format!("{dtype} rows of {k} elements could not be dequantized")));
    }
    Ok(())
}

/// For each block of weight rows: `fill(weight bytes, rows of T)` on the pool ([`TASK_ROWS`]
/// rows per task), then `gemm(block, output columns of the block, rows)`.
#[allow(clippy::too_many_arguments)]
fn by_blocks<T: Copy + Default + Send>(
    n: usize,
    k: usize,
    rb: usize,
    w: &[u8],
    out: &mut [f32],
    ld: usize,
    col: usize,
    fill: impl Fn(&[u8], &mut [T]) + Sync,
    mut gemm: impl FnMut(&[T], Out<'_>, usize),
) {
    let rows = (BLOCK_BYTES / (std::mem::size_of::<T>() * k)).div_ceil(TASK_ROWS).max(1) * TASK_ROWS;
    let mut buf = vec![T::default(); rows.min(n) * k];
    for r0 in (0..n).step_by(rows) {
        let nr = rows.min(n - r0);
        let (blk, wb) = (&mut buf[..nr * k], &w[r0 * rb..(r0 + nr) * rb]);
        super::pool::for_each_chunk(blk, TASK_ROWS * k, |i, dst| {
            fill(&wb[i * TASK_ROWS * rb..][..dst.len() / k * rb], dst);
        });
        gemm(blk, Out { data: &mut out[col + r0..], ld }, nr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::test_fill as fill;
    use crate::tensor::quantize::quantize_to_vec;

    #[test]
    fn dequantized_prefill_matches_f64() {
        // f32 rows: to f32 rounding; bf16 rows (CPUs with AVX512_BF16): to bf16 rounding of both
        // operands. Odd row counts; blocks of rows smaller than the matrix (k large); columns of a
        // wider output.
        let mut kinds = vec![(Rows::F32, 1e-5)];
        match Avx512Bf16::new() {
            Some(bf) => kinds.push((Rows::Bf16(bf), 1.0 / 128.0)),
            None => println!("no AVX512_BF16 on this CPU: the bf16 rows are not tested"),
        }
        for (rows, tol) in kinds {
            for (dtype, m, n, k) in [
                (DType::Q4_1, 40, 37, 256),
                (DType::Q8_0, 33, 300, 4096),
                (DType::Q6_K, 64, 9, 512),
                (DType::Q4_Kx8, 35, 24, 768),
            ] {
                let wf: Vec<f32> =
                    fill(n * k, 5).iter().enumerate().map(|(i, v)| v * (1 + i / 64 % 5) as f32).collect();
                let w = match dtype {
                    // Interleaved Q4_K: its own dequantization to bf16 (`dequant_bf16`).
                    DType::Q4_Kx8 => {
                        crate::tensor::repack::repack_q4_k(&quantize_to_vec(DType::Q4_K, &wf).unwrap(), k).unwrap()
                    }
                    _ => quantize_to_vec(dtype, &wf).unwrap(),
                };
                let mut wd = vec![0.0; n * k];
                if dtype == DType::Q4_Kx8 {
                    dequantize_rows(&w, k, &mut wd).unwrap();
                } else {
                    dequantize(dtype, &w, &mut wd).unwrap();
                }
                let x = fill(m * k, 6);
                let (ld, col) = (n + 5, 3);
                let mut out = vec![f32::NAN; m * ld];
                matmul(rows, dtype, &w, &x, &mut out, ld, col, m, n, k).unwrap();
                for i in 0..m {
                    for j in 0..n {
                        let (xr, wr) = (&x[i * k..][..k], &wd[j * k..][..k]);
                        let want: f64 = xr.iter().zip(wr).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
                        let scale: f64 = xr.iter().zip(wr).map(|(a, b)| (f64::from(*a) * f64::from(*b)).abs()).sum();
                        let got = f64::from(out[i * ld + col + j]);
                        assert!(
                            (got - want).abs() <= scale * tol,
                            "{rows:?} {dtype} m={m} n={n} k={k} [{i},{j}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
        assert!(matmul(Rows::F32, DType::Q8_0, &[0; 33], &[0.0; 32], &mut [0.0; 1], 1, 0, 1, 1, 32).is_err());
    }
}
