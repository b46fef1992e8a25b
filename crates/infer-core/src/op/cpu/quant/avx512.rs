//! AVX-512 VNNI integer dot kernels: `mul_sum` is one `vpdpbusd` (u8 × i8 quadruples summed
//! straight into i32 lanes, no i16 intermediate) on 256-bit vectors (AVX512VL), so the same
//! kernel bodies as AVX2 serve (`x86.rs`). Zen 4 runs 512-bit ops as two 256-bit halves, and
//! decode is bound by memory, so wider vectors would gain little for much more code.

use std::arch::x86_64::*;

use super::{ActRow, Kern, RowsKern, X8Kern};
use crate::op::cpu::simd;
use crate::tensor::DType;

/// Eight i32 lanes: lane `i` = `Σ_{j<4} u[4i+j]·s[4i+j]` (u unsigned, s signed bytes).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn mul_sum(u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
}

/// The f16 scales of the 8 blocks of type `T` (0: Q8_0, 1: Q4_0, 2: Q4_1) in `g` as f32, and
/// the term that multiplies the activation block sums (Q4_1 mins, Q4_0 `-8·d`, Q8_0 zeros): the
/// scales sit at even byte offsets (blocks of 34, 18, 20 bytes), so one two-source word permute
/// (`vpermt2w`) of two 64-byte loads collects 8 scales and 8 mins (two permutes and a blend for
/// Q8_0's longer blocks), instead of 8 scalar loads and word inserts per vector
/// (`x86::dm8_scalar`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn dm8<const T: u8>(g: &[u8]) -> (__m256, __m256) {
    // Word indices into (first load, second load) = words 0..32 and 32..64 of the permute.
    const Q8_LO: [i16; 32] = idx([0, 17, 34, 51, 0, 0, 0, 0], [0; 8]);
    const Q8_HI: [i16; 32] = idx([0, 0, 0, 0, 4, 21, 38, 55], [0; 8]);
    const Q4_0: [i16; 32] = idx([0, 9, 18, 27, 36, 45, 54, 63], [0; 8]);
    const Q4_1: [i16; 32] = idx([0, 10, 20, 30, 32, 42, 52, 62], [1, 11, 21, 31, 33, 43, 53, 63]);
    const fn idx(d: [i16; 8], m: [i16; 8]) -> [i16; 32] {
        let mut v = [0i16; 32];
        let mut j = 0;
        while j < 8 {
            v[j] = d[j];
            v[8 + j] = m[j];
            j += 1;
        }
        v
    }
    // 64 bytes at `off` of `g` (bounds-checked) and a permute index.
    let ld = |off: usize| {
        let s = &g[off..off + 64];
        // SAFETY: `s` has exactly 64 readable bytes; the load is unaligned.
        unsafe { _mm512_loadu_si512(s.as_ptr().cast()) }
    };
    let ix = |v: &[i16; 32]| {
        // SAFETY: `v` is 32 i16 = 64 readable bytes; the load is unaligned.
        unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
    };
    let words = match T {
        // 8 blocks of 34 bytes: scales at words 0, 17, .., 119 (bytes 0..256 in four loads).
        0 => _mm512_mask_blend_epi16(
            0x00f0,
            _mm512_permutex2var_epi16(ld(0), ix(&Q8_LO), ld(64)),
            _mm512_permutex2var_epi16(ld(128), ix(&Q8_HI), ld(192)),
        ),
        // 18 bytes: words 0, 9, .., 63 of bytes 0..128.
        1 => _mm512_permutex2var_epi16(ld(0), ix(&Q4_0), ld(64)),
        // 20 bytes: scale and min at words 10j and 10j + 1; blocks 4..8 from the load at byte 80.
        _ => _mm512_permutex2var_epi16(ld(0), ix(&Q4_1), ld(80)),
    };
    let w = _mm512_castsi512_si256(words);
    let d = _mm256_cvtph_ps(_mm256_castsi256_si128(w));
    let m = match T {
        0 => _mm256_setzero_ps(),
        1 => _mm256_mul_ps(d, _mm256_set1_ps(-8.0)),
        _ => _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(w)),
    };
    (d, m)
}

/// `acc + Σ` of the i16 products `p · s` in pairs (`vpdpwssd`: one instruction).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn dot16(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
    _mm256_dpwssd_epi32(acc, p, s)
}

/// `acc +` [`mul_sum`]`(u, s)` in one `vpdpbusd`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, u, s)
}

mod k {
    use super::{dm8, dot16, dpbusd, mul_sum};
    super::super::x86::quant_kernels!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni");
}

/// The VNNI kernels, when the CPU has AVX-512 F/BW/VL and AVX512_VNNI.
pub(super) fn kernels() -> Option<(Kern, RowsKern)> {
    simd::has_avx512_vnni().then_some((run as Kern, run_rows as RowsKern))
}

fn run(dtype: DType, w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    if simd::has_avx512_vnni() {
        // SAFETY: AVX-512 F/BW/VL, AVX512_VNNI, AVX2, FMA and F16C were detected at runtime
        // (`has_avx512_vnni` implies the detected Isa::Avx512, which includes AVX2/FMA/F16C).
        unsafe { k::run(dtype, w, acts, out) }
    }
}

fn run_rows(dtype: DType, w: &[u8], row_bytes: usize, acts: &[ActRow<'_>], out: &mut [f32]) {
    if simd::has_avx512_vnni() {
        // SAFETY: AVX-512 F/BW/VL, AVX512_VNNI, AVX2, FMA and F16C were detected at runtime
        // (`has_avx512_vnni` implies the detected Isa::Avx512, which includes AVX2/FMA/F16C).
        if unsafe { k::rows_pair(dtype, w, row_bytes, acts, out) } {
            return;
        }
    }
    super::rows_via(run, dtype, w, row_bytes, acts, out);
}

/// The interleaved-Q4_K kernel ([`X8Kern`]).
pub(super) fn x8_kernel() -> Option<X8Kern> {
    (simd::has_avx512_vnni()).then_some(x8 as X8Kern)
}

fn x8(w: &[u8], row_bytes: usize, acts: &[ActRow<'_>], out: &mut [f32]) -> bool {
    if simd::has_avx512_vnni() {
        // SAFETY: AVX-512 F/BW/VL, AVX512_VNNI, AVX2, FMA and F16C were detected at runtime
        // (`has_avx512_vnni` implies the detected Isa::Avx512, which includes AVX2/FMA/F16C).
        return unsafe { k::rows_x8(w, row_bytes, acts, out) };
    }
    false
}
