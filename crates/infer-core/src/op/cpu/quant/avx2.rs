//! AVX2 integer dot kernels: `mul_sum` is `vpmaddubsw` (u8 × i8 pairs → i16) then `vpmaddwd`
//! with ones (pairs of i16 → i32). The i16 step cannot saturate here: weights are at most 63
//! (4/6-bit) or 128 (|Q8_0|, against |a| <= 127), so a pair sums to at most 32512.

use std::arch::x86_64::*;

use super::{ActRow, Kern, RowsKern, X8Kern};
use crate::op::cpu::simd::{self, Isa};
use crate::tensor::DType;

/// Eight i32 lanes: lane `i` = `Σ_{j<4} u[4i+j]·s[4i+j]` (u unsigned, s signed bytes).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_sum(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// `acc + Σ` of the i16 products `p · s` in pairs (`vpmaddwd`, then an add).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot16(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(p, s))
}

/// `acc +` [`mul_sum`]`(u, s)`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_add_epi32(acc, mul_sum(u, s))
}

mod k {
    use super::super::x86::dm8_scalar as dm8;
    use super::{dot16, dpbusd, mul_sum};
    super::super::x86::quant_kernels!("avx2,fma,f16c");
}

/// The AVX2 kernels, when the CPU has AVX2/FMA/F16C.
pub(super) fn kernels() -> Option<(Kern, RowsKern)> {
    (simd::detected() >= Isa::Avx2).then_some((run as Kern, run_rows as RowsKern))
}

fn run(dtype: DType, w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    if simd::detected() >= Isa::Avx2 {
        // SAFETY: AVX2, FMA and F16C were detected at runtime just above.
        unsafe { k::run(dtype, w, acts, out) }
    }
}

fn run_rows(dtype: DType, w: &[u8], row_bytes: usize, acts: &[ActRow<'_>], out: &mut [f32]) {
    if simd::detected() >= Isa::Avx2 {
        // SAFETY: AVX2, FMA and F16C were detected at runtime just above.
        if unsafe { k::rows_pair(dtype, w, row_bytes, acts, out) } {
            return;
        }
    }
    super::rows_via(run, dtype, w, row_bytes, acts, out);
}

/// The interleaved-Q4_K kernel ([`X8Kern`]).
pub(super) fn x8_kernel() -> Option<X8Kern> {
    (simd::detected() >= Isa::Avx2).then_some(x8 as X8Kern)
}

fn x8(w: &[u8], row_bytes: usize, acts: &[ActRow<'_>], out: &mut [f32]) -> bool {
    if simd::detected() >= Isa::Avx2 {
        // SAFETY: AVX2, FMA and F16C were detected at runtime just above.
        return unsafe { k::rows_x8(w, row_bytes, acts, out) };
    }
    false
}
