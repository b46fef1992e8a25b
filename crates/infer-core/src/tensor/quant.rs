//! GGML block formats: exact (reference) dequantization, block by block.
//!
//! Layouts follow ggml-quants.c. Every function takes whole blocks; callers check sizes.

use half::f16;

use super::DType;
use crate::base::{Error, Result};

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantizes whole blocks of `dtype` from `bytes` into `out` (`out.len()` elements).
pub fn dequantize(dtype: DType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let (bs, bb) = (dtype.block_size(), dtype.block_bytes());
    if dtype == DType::Q4_Kx8 {
        return Err(Error::InvalidArgument(
            "dequantize q4_k_x8: rows are interleaved, use tensor::repack::dequantize_rows (needs the row length)"
                .into(),
        ));
    }
    if !dtype.is_quantized() || !out.len().is_multiple_of(bs) || out.len() / bs * bb != bytes.len() {
        return Err(Error::InvalidArgument(format!(
            "dequantize {dtype}: {} bytes do not hold {} elements as whole blocks",
            bytes.len(),
            out.len()
        )));
    }
    for (blk, o) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(bs)) {
        match dtype {
            DType::Q8_0 => block_q8_0(blk, o),
            DType::Q4_0 => block_q4_0(blk, o),
            DType::Q4_1 => block_q4_1(blk, o),
            DType::Q4_K => block_q4_k(blk, o),
            DType::Q6_K => block_q6_k(blk, o),
            DType::F32 | DType::BF16 | DType::F16 | DType::Q4_Kx8 => unreachable!("checked above"),
        }
    }
    Ok(())
}

fn block_q8_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (i, v) in o.iter_mut().enumerate() {
        *v = d * f32::from(b[2 + i] as i8);
    }
}

fn block_q4_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        o[j] = d * (f32::from(q & 0x0f) - 8.0);
        o[j + 16] = d * (f32::from(q >> 4) - 8.0);
    }
}

fn block_q4_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..16 {
        let q = b[4 + j];
        o[j] = d * f32::from(q & 0x0f) + m;
        o[j + 16] = d * f32::from(q >> 4) + m;
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block's 12 packed bytes.
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

fn block_q4_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for c in 0..4 {
        // 64 elements per chunk: low nibbles then high nibbles of 32 bytes.
        let q = &qs[c * 32..c * 32 + 32];
        let (s0, m0) = scale_min_k4(2 * c, scales);
        let (s1, m1) = scale_min_k4(2 * c + 1, scales);
        let (d0, mn0) = (d * f32::from(s0), dmin * f32::from(m0));
        let (d1, mn1) = (d * f32::from(s1), dmin * f32::from(m1));
        for l in 0..32 {
            o[c * 64 + l] = d0 * f32::from(q[l] & 0x0f) - mn0;
            o[c * 64 + 32 + l] = d1 * f32::from(q[l] >> 4) - mn1;
        }
    }
}

fn block_q6_k(b: &[u8], o: &mut [f32]) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for n in 0..2 {
        // 128 elements per half.
        let (ql, qh, sc, o) = (&ql[n * 64..], &qh[n * 32..], &sc[n * 8..], &mut o[n * 128..]);
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            o[l] = d * f32::from(sc[is] as i8) * q1 as f32;
            o[l + 32] = d * f32::from(sc[is + 2] as i8) * q2 as f32;
            o[l + 64] = d * f32::from(sc[is + 4] as i8) * q3 as f32;
            o[l + 96] = d * f32::from(sc[is + 6] as i8) * q4 as f32;
        }
    }
}
