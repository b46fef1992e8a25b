//! Quantized weight rows straight to bf16 for the dequantizing prefill (`quant_prefill`),
//! AVX-512 F/BW/VL + BF16. The portable route dequantizes to f32 (a scratch buffer per task) and
//! rounds to bf16 in a second pass; here each block is widened, scaled and rounded in registers,
//! with the scalar route's arithmetic (same operations in the same order), so the bf16 values
//! are bit for bit the portable route's (tested).
//!
//! * Interleaved Q4_K ([`DType::Q4_Kx8`](crate::tensor::DType), [`q4_k_x8_rows`]): the portable
//!   route also unpacks the group to GGUF Q4_K bytes first. Each 256-byte chunk of a group block
//!   (4 bytes of each of 8 rows, 8 times: `tensor::repack`) is transposed in registers to row
//!   order (one `vpermd` per 64 bytes, then two rounds of `vpermt2q`), its nibbles widened to
//!   f32 and scaled as ggml does (`d·sc · q - dmin·m`, a multiply then a subtract).
//! * Q6_K ([`q6_k_block`]): low nibbles and high bit pairs of 32 values at a time combined with
//!   byte masks and shifts, `(d·sc) · (q - 32)`.
//! * Q8_0, Q4_0, Q4_1 ([`block32`]): a block of 32 values per register pair, `d · q`,
//!   `d · (q - 8)`, `d · q + m`.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::avx512::Avx512Bf16;
use crate::tensor::DType;
use crate::tensor::repack::{GROUP, GROUP_BLOCK};

/// Dequantizes the rows of `k` values in `src` (whole blocks of `dtype`) into `dst` with the
/// kernel for `dtype`; false (nothing written) for a dtype without one (Q4_K in the file's
/// layout) or lengths that do not match.
pub(crate) fn rows(cpu: Avx512Bf16, dtype: DType, src: &[u8], k: usize, dst: &mut [bf16]) -> bool {
    let kernel: unsafe fn(Avx512Bf16, DType, &[u8], &mut [bf16]) = match dtype {
        DType::Q4_Kx8 => return q4_k_x8_rows(cpu, src, k, dst),
        DType::Q6_K => q6_k_block,
        DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => block32,
        _ => return false,
    };
    let (bb, bs) = (dtype.block_bytes(), dtype.block_size());
    if !src.len().is_multiple_of(bb) || dst.len() != src.len() / bb * bs {
        return false;
    }
    for (blk, out) in src.chunks_exact(bb).zip(dst.chunks_exact_mut(bs)) {
        // SAFETY: `cpu` proves AVX-512 F/BW/VL + BF16; `blk` is one whole block of `dtype` and
        // `out` its `block_size()` outputs (lengths checked above), as both kernels require.
        unsafe { kernel(cpu, dtype, blk, out) };
    }
    true
}

/// Dequantizes the whole groups of 8 interleaved rows of `k` values in `src` into `dst`
/// (row-major, `k` bf16 per row). False (nothing written) when the lengths are not whole groups
/// of whole 256-blocks.
fn q4_k_x8_rows(cpu: Avx512Bf16, src: &[u8], k: usize, dst: &mut [bf16]) -> bool {
    let nb = k / 256;
    if k == 0 || !k.is_multiple_of(256) || !src.len().is_multiple_of(nb * GROUP_BLOCK) {
        return false;
    }
    let groups = src.len() / (nb * GROUP_BLOCK);
    if dst.len() != groups * GROUP * k {
        return false;
    }
    for (grp, rows) in src.chunks_exact(nb * GROUP_BLOCK).zip(dst.chunks_exact_mut(GROUP * k)) {
        for (b, gb) in grp.chunks_exact(GROUP_BLOCK).enumerate() {
            // SAFETY: `cpu` proves AVX-512 F/BW/VL + BF16; `gb` is one whole group block and
            // `rows` holds 8 rows of k >= 256 (b + 1) values (checked above).
            unsafe { group_block(cpu, gb, rows, k, 256 * b) };
        }
    }
    true
}

/// One group block `gb` ([`GROUP_BLOCK`] bytes) into values `at..at + 256` of the 8 rows of
/// `rows` (stride `k`).
///
/// # Safety
/// AVX-512 F/BW/VL + BF16; `gb.len() >= GROUP_BLOCK`, `rows.len() >= 7k + at + 256`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn group_block(_cpu: Avx512Bf16, gb: &[u8], rows: &mut [bf16], k: usize, at: usize) {
    assert!(gb.len() >= GROUP_BLOCK && rows.len() >= 7 * k + at + 256, "whole group block");
    // Per (sub-block j, row l): d·sc and dmin·m, as the portable dequantization computes them.
    let mut dsc = [[0.0f32; GROUP]; 8];
    let mut dmn = [[0.0f32; GROUP]; 8];
    for l in 0..GROUP {
        let d = f16::from_le_bytes([gb[2 * l], gb[2 * l + 1]]).to_f32();
        let dmin = f16::from_le_bytes([gb[16 + 2 * l], gb[17 + 2 * l]]).to_f32();
        for j in 0..8 {
            dsc[j][l] = d * f32::from(gb[32 + 8 * j + l]);
            dmn[j][l] = dmin * f32::from(gb[96 + 8 * j + l]);
        }
    }
    // Dword 2l + h of a vpermd output = dword 8h + l of the input (row l, t even / odd).
    let pair = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
    // Qword rounds: (A, B) -> [A0 B0 A1 B1 A2 B2 A3 B3] and the upper half; then
    // (AB, CD) -> [A0 B0 C0 D0 A1 B1 C1 D1] (rows 2i, 2i + 1) and the upper half.
    let (lo4, hi4) = (_mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11), _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15));
    let (lo2, hi2) = (_mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15));
    let m4 = _mm512_set1_epi8(0x0f);
    for c in 0..4 {
        let base = 160 + 256 * c;
        // SAFETY: base + 256 <= 160 + 1024 = GROUP_BLOCK; unaligned loads.
        let v: [__m512i; 4] = std::array::from_fn(|i| unsafe {
            _mm512_permutexvar_epi32(pair, _mm512_loadu_si512(gb.as_ptr().add(base + 64 * i).cast()))
        });
        let (ab_lo, ab_hi) = (_mm512_permutex2var_epi64(v[0], lo4, v[1]), _mm512_permutex2var_epi64(v[0], hi4, v[1]));
        let (cd_lo, cd_hi) = (_mm512_permutex2var_epi64(v[2], lo4, v[3]), _mm512_permutex2var_epi64(v[2], hi4, v[3]));
        // Row pairs (0,1), (2,3), (4,5), (6,7): 32 bytes of each row, in its order.
        let pairs = [
            _mm512_permutex2var_epi64(ab_lo, lo2, cd_lo),
            _mm512_permutex2var_epi64(ab_lo, hi2, cd_lo),
            _mm512_permutex2var_epi64(ab_hi, lo2, cd_hi),
            _mm512_permutex2var_epi64(ab_hi, hi2, cd_hi),
        ];
        for (p, bytes) in pairs.into_iter().enumerate() {
            let nib = [_mm512_and_si512(bytes, m4), _mm512_and_si512(_mm512_srli_epi16::<4>(bytes), m4)];
            for r in 0..2 {
                let l = 2 * p + r;
                for (h, nib) in nib.iter().enumerate() {
                    // Sub-block 2c + h: 32 values of row l (bytes 32r.. of the pair vector).
                    let (d, m) = (_mm512_set1_ps(dsc[2 * c + h][l]), _mm512_set1_ps(dmn[2 * c + h][l]));
                    let q = if r == 0 {
                        _mm512_extracti64x4_epi64::<0>(*nib)
                    } else {
                        _mm512_extracti64x4_epi64::<1>(*nib)
                    };
                    let (f0, f1) =
                        (scale16(_mm256_castsi256_si128(q), d, m), scale16(_mm256_extracti128_si256::<1>(q), d, m));
                    store32(&mut rows[l * k + at + 64 * c + 32 * h..], f0, f1);
                }
            }
        }
    }
}

/// One 32-value block of Q8_0 (`d`, 32 i8), Q4_0 (`d`, 16 bytes of nibbles, offset 8) or Q4_1
/// (`d`, `m`, 16 bytes of nibbles) into `out`, as the portable dequantization computes it.
///
/// # Safety
/// AVX-512 F/BW/VL + BF16; `b` holds one whole block of `dtype` (Q8_0/Q4_0/Q4_1), `out.len() >= 32`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn block32(_cpu: Avx512Bf16, dtype: DType, b: &[u8], out: &mut [bf16]) {
    let d = _mm512_set1_ps(f16::from_le_bytes([b[0], b[1]]).to_f32());
    let (f0, f1) = if dtype == DType::Q8_0 {
        assert!(b.len() >= 34, "whole Q8_0 block");
        // SAFETY: 32 bytes at 2 are inside the block.
        let q = unsafe { _mm256_loadu_si256(b.as_ptr().add(2).cast()) };
        let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)));
        let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256::<1>(q)));
        (_mm512_mul_ps(d, lo), _mm512_mul_ps(d, hi))
    } else {
        let at = if dtype == DType::Q4_1 { 4 } else { 2 };
        assert!(b.len() >= at + 16, "whole Q4_0 / Q4_1 block");
        // SAFETY: 16 bytes at `at` are inside the block.
        let q = unsafe { _mm_loadu_si128(b.as_ptr().add(at).cast()) };
        let m4 = _mm_set1_epi8(0x0f);
        let (lo, hi) = (_mm_and_si128(q, m4), _mm_and_si128(_mm_srli_epi16::<4>(q), m4));
        let (lo, hi) = (_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)), _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)));
        if dtype == DType::Q4_1 {
            let m = _mm512_set1_ps(f16::from_le_bytes([b[2], b[3]]).to_f32());
            (_mm512_add_ps(_mm512_mul_ps(d, lo), m), _mm512_add_ps(_mm512_mul_ps(d, hi), m))
        } else {
            let eight = _mm512_set1_ps(8.0);
            (_mm512_mul_ps(d, _mm512_sub_ps(lo, eight)), _mm512_mul_ps(d, _mm512_sub_ps(hi, eight)))
        }
    };
    store32(out, f0, f1);
}

/// One Q6_K block (ggml's layout: `ql[128]`, `qh[64]`, `scales[16]` i8, `d` f16) into `out`.
///
/// # Safety
/// AVX-512 F/BW/VL + BF16; `b.len() >= 210`, `out.len() >= 256`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn q6_k_block(_cpu: Avx512Bf16, _dtype: DType, b: &[u8], out: &mut [bf16]) {
    assert!(b.len() >= 210 && out.len() >= 256, "whole Q6_K block");
    let d = f16::from_le_bytes([b[208], b[209]]).to_f32();
    let (m4, m2) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x03));
    let off = _mm512_set1_epi32(32);
    for n in 0..2 {
        // SAFETY: ql (64 bytes at 64n), qh (32 bytes at 128 + 32n) lie inside the 210 bytes.
        let (lo, hi, qh) = unsafe {
            (
                _mm256_loadu_si256(b.as_ptr().add(64 * n).cast()),
                _mm256_loadu_si256(b.as_ptr().add(64 * n + 32).cast()),
                _mm256_loadu_si256(b.as_ptr().add(128 + 32 * n).cast()),
            )
        };
        // Quarter j: values 32j..32j + 32 of this half, as bytes 0..63 (ggml's q1..q4 + 32).
        let quarters = [
            _mm256_or_si256(_mm256_and_si256(lo, m4), high2(qh, m2)),
            _mm256_or_si256(_mm256_and_si256(hi, m4), high2(_mm256_srli_epi16::<2>(qh), m2)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(lo), m4), high2(_mm256_srli_epi16::<4>(qh), m2)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(hi), m4), high2(_mm256_srli_epi16::<6>(qh), m2)),
        ];
        for (j, q) in quarters.into_iter().enumerate() {
            // Values 0..16 use scale 2j, 16..32 scale 2j + 1 (of this half's 8): d·sc, then · q.
            let (s0, s1) = (b[192 + 8 * n + 2 * j] as i8, b[193 + 8 * n + 2 * j] as i8);
            let (s0, s1) = (_mm512_set1_ps(d * f32::from(s0)), _mm512_set1_ps(d * f32::from(s1)));
            let f0 = _mm512_mul_ps(s0, q6_values(_mm256_castsi256_si128(q), off));
            let f1 = _mm512_mul_ps(s1, q6_values(_mm256_extracti128_si256::<1>(q), off));
            store32(&mut out[128 * n + 32 * j..], f0, f1);
        }
    }
}

/// `f0` (values 0..16) and `f1` (16..32) rounded to bf16 (nearest even) into `out[..32]`.
/// Panics when `out` is shorter.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
fn store32(out: &mut [bf16], f0: __m512, f1: __m512) {
    let out = &mut out[..32];
    // SAFETY: `out` holds exactly 32 bf16 (64 bytes), the store is unaligned; the transmute is
    // between same-size plain vector types.
    unsafe {
        let v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(f1, f0));
        _mm512_storeu_si512(out.as_mut_ptr().cast(), v);
    }
}

/// Bits 0..2 of every byte of `h` moved to bits 4..6 (the high pair of a six-bit value).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn high2(h: __m256i, m2: __m256i) -> __m256i {
    _mm256_slli_epi16::<4>(_mm256_and_si256(h, m2))
}

/// 16 six-bit values (bytes of `q`, 0..63) minus 32, as f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn q6_values(q: __m128i, off: __m512i) -> __m512 {
    _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(q), off))
}

/// 16 nibble values (bytes of `q`) as `d · q - m` in f32 (multiply, then subtract).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn scale16(q: __m128i, d: __m512, m: __m512) -> __m512 {
    _mm512_sub_ps(_mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q))), m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;
    use crate::tensor::quantize::quantize_to_vec;
    use crate::tensor::repack::{dequantize_rows, repack_q4_k};

    /// `x` quantized to `dtype` (file layout): `rows` gives the portable route's values rounded to
    /// bf16, bit for bit, and refuses a partial last block and a short output.
    fn assert_matches_portable(cpu: Avx512Bf16, dtype: DType, x: &[f32]) {
        let n = x.len();
        let q = quantize_to_vec(dtype, x).unwrap();
        let mut want = vec![0.0f32; n];
        crate::tensor::quant::dequantize(dtype, &q, &mut want).unwrap();
        let mut got = vec![bf16::ZERO; n];
        assert!(rows(cpu, dtype, &q, n, &mut got));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), bf16::from_f32(*w).to_bits(), "{dtype} value {i}: {g} vs {w}");
        }
        assert!(!rows(cpu, dtype, &q[..q.len() - 1], n, &mut got), "{dtype}: partial block");
        assert!(!rows(cpu, dtype, &q, n, &mut got[1..]), "{dtype}: short output");
    }

    #[test]
    fn q6_k_matches_the_portable_route_bit_for_bit() {
        let Some(cpu) = Avx512Bf16::new() else {
            println!("no AVX512_BF16 on this CPU: the kernel is not tested");
            return;
        };
        let x: Vec<f32> =
            (0..3 * 256).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i / 16 % 9) as f32)).collect();
        assert_matches_portable(cpu, DType::Q6_K, &x);
    }

    #[test]
    fn blocks32_match_the_portable_route_bit_for_bit() {
        let Some(cpu) = Avx512Bf16::new() else {
            println!("no AVX512_BF16 on this CPU: the kernel is not tested");
            return;
        };
        let x: Vec<f32> =
            (0..5 * 32).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i / 32) as f32)).collect();
        for dtype in [DType::Q8_0, DType::Q4_0, DType::Q4_1] {
            assert_matches_portable(cpu, dtype, &x);
        }
        assert!(
            !rows(cpu, DType::Q4_K, &[0; 144], 256, &mut [bf16::ZERO; 256]),
            "no kernel for Q4_K in the file layout"
        );
    }

    #[test]
    fn matches_the_portable_route_bit_for_bit() {
        let Some(cpu) = Avx512Bf16::new() else {
            println!("no AVX512_BF16 on this CPU: the kernel is not tested");
            return;
        };
        for (n, k) in [(8, 256), (24, 768), (16, 2048)] {
            let x: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i / 32 % 7) as f32) + (i / 256 % 3) as f32)
                .collect();
            let q = repack_q4_k(&quantize_to_vec(DType::Q4_K, &x).unwrap(), k).unwrap();
            let mut want = vec![0.0f32; n * k];
            dequantize_rows(&q, k, &mut want).unwrap();
            let mut got = vec![bf16::ZERO; n * k];
            assert!(rows(cpu, DType::Q4_Kx8, &q, k, &mut got));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), bf16::from_f32(*w).to_bits(), "n={n} k={k} [{}, {}]", i / k, i % k);
            }
            assert!(!rows(cpu, DType::Q4_Kx8, &q[..q.len() - 1], k, &mut got), "partial group");
            assert!(!rows(cpu, DType::Q4_Kx8, &q, k, &mut got[1..]), "short output");
        }
    }
}
