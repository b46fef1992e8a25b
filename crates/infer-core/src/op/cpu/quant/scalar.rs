//! Portable integer dot kernels (the reference the SIMD kernels are tested against).

use half::f16;

use super::ActRow;
#[cfg(doc)]
use super::Kern;
use crate::tensor::DType;
use crate::tensor::quant::scale_min_k4;

/// The portable kernels ([`Kern`]); float dtypes leave `out` untouched.
pub(super) fn run(dtype: DType, w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    match dtype {
        DType::Q8_0 => q8_0(w, acts, out),
        DType::Q4_0 => q4_0(w, acts, out),
        DType::Q4_1 => q4_1(w, acts, out),
        DType::Q4_K => q4_k(w, acts, out),
        DType::Q6_K => q6_k(w, acts, out),
        DType::F32 | DType::BF16 | DType::F16 => {}
    }
}

#[inline]
pub(super) fn f16le(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// `Σ w[i]·a[i]` over two equal-length integer slices.
#[inline]
fn idot(w: impl Iterator<Item = i32>, a: &[i8]) -> i32 {
    w.zip(a).map(|(w, &a)| w * i32::from(a)).sum()
}

pub(super) fn q8_0(w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    for (o, a) in out.iter_mut().zip(acts) {
        let mut s = 0.0f32;
        for (b, blk) in w.chunks_exact(34).enumerate() {
            let dot = idot(blk[2..34].iter().map(|&q| i32::from(q as i8)), &a.qs[32 * b..32 * b + 32]);
            s += f16le(blk, 0) * a.d[b] * dot as f32;
        }
        *o = s;
    }
}

/// `Σ nibble·a` of a 32-element 4-bit block (low nibbles: elements 0..16, high: 16..32).
#[inline]
fn nibble_dot(q: &[u8], a: &[i8]) -> i32 {
    idot(q[..16].iter().map(|&q| i32::from(q & 0x0f)), &a[..16])
        + idot(q[..16].iter().map(|&q| i32::from(q >> 4)), &a[16..32])
}

pub(super) fn q4_0(w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    for (o, a) in out.iter_mut().zip(acts) {
        let mut s = 0.0f32;
        for (b, blk) in w.chunks_exact(18).enumerate() {
            // Σ (q - 8)·a = Σ q·a - 8·Σ a.
            let dot = nibble_dot(&blk[2..18], &a.qs[32 * b..32 * b + 32]) - 8 * a.sums[b];
            s += f16le(blk, 0) * a.d[b] * dot as f32;
        }
        *o = s;
    }
}

pub(super) fn q4_1(w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    for (o, a) in out.iter_mut().zip(acts) {
        let mut s = 0.0f32;
        for (b, blk) in w.chunks_exact(20).enumerate() {
            // Σ (d·q + m)·a = d·Σ q·a + m·Σ a.
            let dot = nibble_dot(&blk[4..20], &a.qs[32 * b..32 * b + 32]);
            s += a.d[b] * (f16le(blk, 0) * dot as f32 + f16le(blk, 2) * a.sums[b] as f32);
        }
        *o = s;
    }
}

pub(super) fn q4_k(w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    for (o, a) in out.iter_mut().zip(acts) {
        let mut s = 0.0f32;
        for (b, blk) in w.chunks_exact(144).enumerate() {
            let (qs, aq, sums) = (&blk[16..144], &a.qs[256 * b..256 * b + 256], &a.sums[16 * b..16 * b + 16]);
            let (mut sumi, mut summ) = (0i32, 0i32);
            for j in 0..8 {
                let (sc, mn) = scale_min_k4(j, &blk[4..16]);
                // Sub-block j: the low (even j) or high (odd j) nibbles of 32 bytes.
                let q = &qs[32 * (j / 2)..32 * (j / 2) + 32];
                let shift = 4 * (j % 2);
                let dot = idot(q.iter().map(|&q| i32::from((q >> shift) & 0x0f)), &aq[32 * j..32 * j + 32]);
                sumi += i32::from(sc) * dot;
                summ += i32::from(mn) * (sums[2 * j] + sums[2 * j + 1]);
            }
            s += a.d[b] * (f16le(blk, 0) * sumi as f32 - f16le(blk, 2) * summ as f32);
        }
        *o = s;
    }
}

/// The 6-bit value (0..64, before the -32 offset) of element `e` of a Q6_K block.
#[inline]
fn q6_at(blk: &[u8], e: usize) -> i32 {
    let (h, l) = (e / 128, e % 128);
    let (t, i) = (l / 32, l % 32);
    let ql = blk[64 * h + i + 32 * (t & 1)];
    let lo = if t < 2 { ql & 0x0f } else { ql >> 4 };
    let hi = (blk[128 + 32 * h + i] >> (2 * t)) & 3;
    i32::from(lo | (hi << 4))
}

pub(super) fn q6_k(w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    for (o, a) in out.iter_mut().zip(acts) {
        let mut s = 0.0f32;
        for (b, blk) in w.chunks_exact(210).enumerate() {
            let aq = &a.qs[256 * b..256 * b + 256];
            let mut sumi = 0i32;
            for g in 0..16 {
                let dot = idot((16 * g..16 * g + 16).map(|e| q6_at(blk, e) - 32), &aq[16 * g..16 * g + 16]);
                sumi += i32::from(blk[192 + g] as i8) * dot;
            }
            s += f16le(blk, 208) * a.d[b] * sumi as f32;
        }
        *o = s;
    }
}
