//! f32 → GGML block formats: the reference quantizers of ggml-quants.c
//! (`quantize_row_{q8_0,q4_0,q4_1,q4_K,q6_K}_ref`), block by block, in the same f32 operation
//! order so that Q8_0/Q4_0/Q4_1 match ggml and gguf-py bit for bit. The K-quants follow
//! `make_qkx2_quants` (Q4_K) and `make_qx_quants` (Q6_K) without an importance matrix.
//!
//! Entry points: [`quantize`] (into a buffer), [`quantize_to_vec`] and [`quantize_tensor`].
//! Rows of a matrix are simply consecutive blocks, so a `[n, k]` tensor is quantized by
//! passing all `n·k` values (`k` a multiple of the block size), or any whole rows at a time.

use half::f16;
use rayon::prelude::*;

use super::quant::scale_min_k4;
use super::{DType, Tensor};
use crate::base::{Error, Result};

/// Blocks per rayon task (a block is independent of its neighbours).
const BLOCKS_PER_TASK: usize = 64;

/// Quantizes `src` (a whole number of `dtype` blocks) into `dst` (exactly
/// `dtype.bytes_for(src.len())` bytes). Parallel over blocks; the result does not depend on
/// the thread count.
pub fn quantize(dtype: DType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    let (bs, bb) = (dtype.block_size(), dtype.block_bytes());
    if !dtype.is_quantized() || dtype.bytes_for(src.len()) != Some(dst.len()) {
        return Err(Error::InvalidArgument(format!(
            "quantize {dtype}: {} values into {} bytes is not a whole number of {bs}-element blocks",
            src.len(),
            dst.len()
        )));
    }
    let block: fn(&[f32], &mut [u8]) = match dtype {
        DType::Q8_0 => block_q8_0,
        DType::Q4_0 => block_q4_0,
        DType::Q4_1 => block_q4_1,
        DType::Q4_K => block_q4_k,
        DType::Q6_K => block_q6_k,
        DType::Q4_Kx8 => {
            return Err(Error::InvalidArgument(
                "quantize q4_k_x8: quantize to q4_k, then tensor::repack::repack_q4_k (needs the row length)".into(),
            ));
        }
        DType::F32 | DType::BF16 | DType::F16 => unreachable!("checked is_quantized above"),
    };
    src.par_chunks(bs * BLOCKS_PER_TASK).zip(dst.par_chunks_mut(bb * BLOCKS_PER_TASK)).for_each(|(x, y)| {
        x.chunks_exact(bs).zip(y.chunks_exact_mut(bb)).for_each(|(x, y)| block(x, y));
    });
    Ok(())
}

/// [`quantize`] into a new buffer.
pub fn quantize_to_vec(dtype: DType, src: &[f32]) -> Result<Vec<u8>> {
    let len = dtype.bytes_for(src.len()).filter(|_| dtype.is_quantized()).ok_or_else(|| {
        Error::InvalidArgument(format!("quantize {dtype}: {} values are not whole blocks", src.len()))
    })?;
    let mut out = vec![0u8; len];
    quantize(dtype, src, &mut out)?;
    Ok(out)
}

/// A float tensor (f32/bf16/f16, or a quantized one, on the host or a GPU) quantized to
/// `dtype`, same shape; its last dim must be whole blocks. Widens to f32 first, so this needs
/// `4·numel` bytes of scratch: quantize very large tensors by whole rows with [`quantize`].
pub fn quantize_tensor(t: &Tensor, dtype: DType) -> Result<Tensor> {
    let shape = t.shape();
    if !dtype.is_quantized() || shape.last().is_none_or(|&k| !k.is_multiple_of(dtype.block_size())) {
        return Err(Error::InvalidArgument(format!(
            "cannot quantize a tensor of shape {shape:?} to {dtype}: its rows must be whole {}-element blocks",
            dtype.block_size()
        )));
    }
    let bytes = quantize_to_vec(dtype, &t.to_f32_vec()?)?;
    Tensor::from_quantized(shape, dtype, bytes)
}

fn put_f16(y: &mut [u8], at: usize, v: f32) {
    y[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

fn f16_round(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// ggml's `nearest_int`: round half to even (its magic-number trick, valid for |v| < 2^22;
/// larger values saturate here instead of being undefined).
#[inline]
fn nearest_int(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// `quantize_row_q8_0_ref`: d = amax/127, q = round(x/d) (half away from zero).
fn block_q8_0(x: &[f32], y: &mut [u8]) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    for (q, v) in y[2..34].iter_mut().zip(x) {
        *q = ((v * id).round() as i8) as u8;
    }
}

/// `quantize_row_q4_0_ref`: d = max/-8 (max = the value of largest magnitude, first one
/// wins), q = min(15, trunc(x/d + 8.5)).
fn block_q4_0(x: &[f32], y: &mut [u8]) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    for j in 0..16 {
        y[2 + j] = q(x[j]) | (q(x[16 + j]) << 4);
    }
}

/// `quantize_row_q4_1_ref`: d = (max-min)/15, m = min, q = min(15, trunc((x-min)/d + 0.5)).
fn block_q4_1(x: &[f32], y: &mut [u8]) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    put_f16(y, 2, min);
    let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
    for j in 0..16 {
        y[4 + j] = q(x[j]) | (q(x[16 + j]) << 4);
    }
}

/// `make_qkx2_quants`: scale and (negated) min of `n` values on levels `0..=nmax`, searching
/// `nstep + 1` candidate scales around the min/max fit for the lowest weighted squared error.
/// Writes the levels to `l`; returns `(scale, -min)`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = if x[i] < min { x[i] } else { min };
        max = if x[i] > max { x[i] } else { max };
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        l[i] = nearest_int(iscale * (x[i] - min)).clamp(0, nmax) as u8;
        let diff = scale * f32::from(l[i]) + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let li = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = li as u8;
            let (w, lf) = (weights[i], li as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(laux[i]) + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `quantize_row_q4_K_ref` for one 256-element block.
fn block_q4_k(x: &[f32], y: &mut [u8]) {
    let mut l = [0u8; 256];
    let mut laux = [0u8; 32];
    let mut weights = [0.0f32; 32];
    let (mut scales, mut mins) = ([0.0f32; 8], [0.0f32; 8]);
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2 = xs.iter().fold(0.0f32, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) =
            make_qkx2_quants(15, xs, &weights, &mut l[32 * j..32 * j + 32], &mut laux, -1.0, 0.1, 20);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let sc = &mut y[4..16];
    for j in 0..8 {
        // C: `uint8_t ls = nearest_int(..)` (modular conversion), then MIN(63, ls).
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    put_f16(y, 0, max_scale / 63.0);
    put_f16(y, 2, max_min / 63.0);
    let (d_all, dmin_all) = (f16_round(max_scale / 63.0), f16_round(max_min / 63.0));
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, &y[4..16]);
        let d = d_all * f32::from(s);
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * f32::from(m);
        for i in 0..32 {
            l[32 * j + i] = nearest_int((x[32 * j + i] + dm) / d).clamp(0, 15) as u8;
        }
    }
    let q = &mut y[16..144];
    for c in 0..4 {
        for i in 0..32 {
            q[32 * c + i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
        }
    }
}

/// `make_qx_quants` with `rmse_type = 1` and no importance weights (weights x²): a symmetric
/// scale for levels `-nmax..nmax-1`, refined over 18 candidate scales. Writes `level + nmax`
/// to `l`; returns the scale.
fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [u8]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < 1e-15 {
        l.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let lf = level(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * lf;
            suml2 += w * lf * lf;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(nmax as f32) / max;
    for (q, &v) in l.iter_mut().zip(x) {
        *q = (level(iscale, v) + nmax) as u8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (q, &v) in l.iter_mut().zip(x) {
                *q = (level(iscale, v) + nmax) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `quantize_row_q6_K_ref` for one 256-element block.
fn block_q6_k(x: &[f32], y: &mut [u8]) {
    let mut l = [0u8; 256];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for ib in 0..16 {
        let scale = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
        scales[ib] = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    if max_abs_scale < 1e-15 {
        y.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    put_f16(y, 208, 1.0 / iscale);
    let d_all = f16_round(1.0 / iscale);
    for ib in 0..16 {
        y[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    for j in 0..16 {
        let d = d_all * f32::from(y[192 + j] as i8);
        if d == 0.0 {
            continue;
        }
        for i in 0..16 {
            l[16 * j + i] = (nearest_int(x[16 * j + i] / d).clamp(-32, 31) + 32) as u8;
        }
    }
    for h in 0..2 {
        let (l, base) = (&l[128 * h..128 * h + 128], 64 * h);
        for i in 0..32 {
            let (q1, q2, q3, q4) = (l[i], l[i + 32], l[i + 64], l[i + 96]);
            y[base + i] = (q1 & 0x0f) | ((q3 & 0x0f) << 4);
            y[base + i + 32] = (q2 & 0x0f) | ((q4 & 0x0f) << 4);
            y[128 + 32 * h + i] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_partial_blocks_and_float_dtypes() {
        assert!(quantize_to_vec(DType::Q4_K, &[0.0; 100]).is_err());
        assert!(quantize_to_vec(DType::F32, &[0.0; 32]).is_err());
        assert!(quantize(DType::Q8_0, &[0.0; 32], &mut [0u8; 33]).is_err());
        assert_eq!(quantize_to_vec(DType::Q8_0, &[0.0; 64]).unwrap().len(), 68);
    }

    #[test]
    fn quantize_tensor_keeps_the_shape() {
        let t = Tensor::from_f32(&[2, 64], (0..128).map(|i| i as f32 / 64.0 - 1.0).collect()).unwrap();
        let q = quantize_tensor(&t, DType::Q8_0).unwrap();
        assert_eq!((q.shape(), q.dtype()), (&[2, 64][..], DType::Q8_0));
        let back = q.to_f32_vec().unwrap();
        assert!(back.iter().zip(t.as_f32().unwrap()).all(|(a, b)| (a - b).abs() < 0.005));
        assert!(quantize_tensor(&t, DType::Q4_K).is_err());
        assert!(quantize_tensor(&t, DType::F16).is_err());
    }

    #[test]
    fn zeros_quantize_to_zeros() {
        for dtype in [DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q4_K, DType::Q6_K] {
            let q = quantize_to_vec(dtype, &[0.0; 512]).unwrap();
            let mut back = vec![1.0; 512];
            super::super::quant::dequantize(dtype, &q, &mut back).unwrap();
            assert!(back.iter().all(|&v| v == 0.0), "{dtype}");
        }
    }
}
