//! Prefill on block-quantized weights through the bf16 GEMM (CPUs with AVX512_BF16,
//! [`Precision::Fast`](crate::op::Precision), at least [`Knob::QuantPrefillRows`] rows).
//!
//! A prefill reuses every weight row for each of its `m` rows, so the integer kernels' work
//! (two 8-bit activation rows per row, block by block) grows with `m` while a matrix's
//! dequantization does not: here weight rows are dequantized, rounded to bf16, a block of
//! rows at a time ([`BLOCK_BYTES`] of bf16, on the pool), and multiplied by the activations
//! rounded to bf16 with the `vdpbf16ps` GEMM, as bf16 checkpoints are (f32 sums). The block's
//! bf16 copy is the only extra memory.

use std::sync::atomic::{AtomicBool, Ordering};

use half::bf16;

use super::avx512::Avx512Bf16;
use super::avx512_gemm::round_row;
use super::gemm::Out;
use super::tuning::Knob;
use crate::base::{Error, Result};
use crate::tensor::quant::dequantize;
use crate::tensor::{DType, TensorData};

/// bf16 bytes of weight rows dequantized per GEMM call.
const BLOCK_BYTES: usize = 2 << 20;
/// Weight rows per dequantization task.
const TASK_ROWS: usize = 16;

/// Whether a `[m, k]` × `dtype` matmul takes this path.
pub(super) fn applies(m: usize) -> Option<Avx512Bf16> {
    let min = Knob::QuantPrefillRows.get();
    if min == 0 || m < min { None } else { Avx512Bf16::new() }
}

/// `out[i, col + j] = Σ_l x[i, l] · w[j, l]` (row stride `ld`) with `w` `[n, k]` in `dtype`
/// blocks, through bf16 (module docs).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    bf: Avx512Bf16,
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
    let rows = (BLOCK_BYTES / (2 * k)).div_ceil(TASK_ROWS).max(1) * TASK_ROWS;
    let mut buf = vec![bf16::ZERO; rows.min(n) * k];
    let failed = AtomicBool::new(false);
    for r0 in (0..n).step_by(rows) {
        let nr = rows.min(n - r0);
        let (blk, wb) = (&mut buf[..nr * k], &w[r0 * rb..(r0 + nr) * rb]);
        super::pool::for_each_chunk(blk, TASK_ROWS * k, |i, dst| {
            let mut f = vec![0.0f32; dst.len()];
            let src = &wb[i * TASK_ROWS * rb..][..dst.len() / k * rb];
            if dequantize(dtype, src, &mut f).is_err() {
                failed.store(true, Ordering::Relaxed); // (whole rows of whole blocks: cannot happen)
            }
            // SAFETY: `bf` proves AVX-512 F/BW/VL + BF16 are available.
            unsafe { round_row(bf, &f, dst) };
        });
        if failed.load(Ordering::Relaxed) {
            return Err(Error::op("matmul", format!("{dtype} rows of {k} elements could not be dequantized")));
        }
        let out = Out { data: &mut out[col + r0..], ld };
        super::matmul_into(super::simd::active(), true, x, TensorData::BF16(blk), out, m, nr, k);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::test_fill as fill;
    use crate::tensor::quantize::quantize_to_vec;

    #[test]
    fn bf16_prefill_matches_f64_within_bf16_rounding() {
        let Some(bf) = Avx512Bf16::new() else {
            println!("SKIP: no AVX512_BF16 on this CPU");
            return;
        };
        // Odd row counts; blocks of rows smaller than the matrix (k large); columns of a wider output.
        for (dtype, m, n, k) in [(DType::Q4_1, 40, 37, 256), (DType::Q8_0, 33, 300, 4096), (DType::Q6_K, 64, 9, 512)] {
            let wf: Vec<f32> = fill(n * k, 5).iter().enumerate().map(|(i, v)| v * (1 + i / 64 % 5) as f32).collect();
            let w = quantize_to_vec(dtype, &wf).unwrap();
            let mut wd = vec![0.0; n * k];
            dequantize(dtype, &w, &mut wd).unwrap();
            let x = fill(m * k, 6);
            let (ld, col) = (n + 5, 3);
            let mut out = vec![f32::NAN; m * ld];
            matmul(bf, dtype, &w, &x, &mut out, ld, col, m, n, k).unwrap();
            for i in 0..m {
                for j in 0..n {
                    let (xr, wr) = (&x[i * k..][..k], &wd[j * k..][..k]);
                    let want: f64 = xr.iter().zip(wr).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
                    let scale: f64 = xr.iter().zip(wr).map(|(a, b)| (f64::from(*a) * f64::from(*b)).abs()).sum();
                    let got = f64::from(out[i * ld + col + j]);
                    assert!(
                        (got - want).abs() <= scale / 128.0,
                        "{dtype} m={m} n={n} k={k} [{i},{j}]: {got} vs {want}"
                    );
                }
            }
        }
        assert!(matmul(bf, DType::Q8_0, &[0; 33], &[0.0; 32], &mut [0.0; 1], 1, 0, 1, 1, 32).is_err());
    }
}
