//! The two loops of one attention row over the cache, as whole-row kernels: scores
//! ([`scores_f32`]: `scale · q·k_t` for every cached position `t`) and the weighted sum of the
//! value rows ([`weighted_sum_f32`]: `o = Σ_t p_t · v_t`).
//!
//! Per position, a call of [`dot_f32`] / [`axpy_f32`] costs a dispatch, a horizontal sum, and
//! (axpy) a load and store of the whole output row, whose next update waits on that store. Here,
//! on AVX-512 with `head_dim % 16 == 0`, four positions' dots run as independent chains and
//! are reduced together, and the output row stays in registers across all positions. Other
//! shapes and CPUs take the per-position calls.

use super::simd::{self, Isa};
use super::{axpy_f32, dot_f32};

/// `out[t] = scale · Σ_i q[i]·keys[t·hd + i]` for `t < out.len()`, `hd = q.len()`.
/// Panics when `keys` holds fewer than `out.len()` rows.
pub(crate) fn scores_f32(q: &[f32], keys: &[f32], scale: f32, out: &mut [f32]) {
    let hd = q.len();
    let keys = &keys[..out.len() * hd];
    #[cfg(target_arch = "x86_64")]
    if fused(hd) {
        // SAFETY: AVX-512 F/BW/VL were detected at runtime (`fused`).
        return unsafe { x86::scores_avx512(q, keys, scale, out) };
    }
    for (o, k) in out.iter_mut().zip(keys.chunks_exact(hd.max(1))) {
        *o = dot_f32(q, k) * scale;
    }
}

/// `o = Σ_t p[t] · vals[t·hd..(t + 1)·hd]` for `t < p.len()`, `hd = o.len()`. Panics when
/// `vals` holds fewer than `p.len()` rows.
pub(crate) fn weighted_sum_f32(p: &[f32], vals: &[f32], o: &mut [f32]) {
    let hd = o.len();
    let vals = &vals[..p.len() * hd];
    #[cfg(target_arch = "x86_64")]
    if fused(hd) {
        // SAFETY: AVX-512 F/BW/VL were detected at runtime (`fused`).
        return unsafe { x86::weighted_sum_avx512(p, vals, o) };
    }
    o.fill(0.0);
    for (&w, v) in p.iter().zip(vals.chunks_exact(hd.max(1))) {
        axpy_f32(w, v, o);
    }
}

/// Whether the AVX-512 row kernels serve rows of `hd` values.
#[cfg(target_arch = "x86_64")]
fn fused(hd: usize) -> bool {
    hd > 0
        && hd.is_multiple_of(16)
        && simd::active() >= Isa::Avx512
        && simd::detected() >= Isa::Avx512
        && super::tuning::Knob::AttnRowKernels.get() == 1
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Columns per register block of the weighted sum (8 zmm accumulators).
    const COLS: usize = 128;

    /// `[Σ a, Σ b, Σ c, Σ d]` of four vectors.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    fn sum4(v: [__m512; 4]) -> __m128 {
        let h = v.map(|x| {
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x)));
            _mm256_add_ps(_mm512_castps512_ps256(x), hi)
        });
        let s = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
        _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s))
    }

    /// [`super::scores_f32`] for `q.len() % 16 == 0`, `keys.len() == out.len() · q.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    pub(super) fn scores_avx512(q: &[f32], keys: &[f32], scale: f32, out: &mut [f32]) {
        let hd = q.len();
        let vs = _mm_set1_ps(scale);
        let mut quads = out.chunks_exact_mut(4);
        let mut rows = keys.chunks_exact(4 * hd);
        for (o, k4) in (&mut quads).zip(&mut rows) {
            let mut acc = [_mm512_setzero_ps(); 4];
            for (c, qc) in q.chunks_exact(16).enumerate() {
                // SAFETY: `qc` is 16 floats; row r of `k4` has hd = 16·(c + ..) floats, so the 16
                // at r·hd + 16c are inside `k4` (4·hd floats).
                unsafe {
                    let qv = _mm512_loadu_ps(qc.as_ptr());
                    for (r, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k4.as_ptr().add(r * hd + 16 * c)), *a);
                    }
                }
            }
            let s = _mm_mul_ps(sum4(acc), vs);
            // SAFETY: `o` is exactly 4 floats.
            unsafe { _mm_storeu_ps(o.as_mut_ptr(), s) };
        }
        for (o, k) in quads.into_remainder().iter_mut().zip(rows.remainder().chunks_exact(hd)) {
            let mut a = _mm512_setzero_ps();
            for (qc, kc) in q.chunks_exact(16).zip(k.chunks_exact(16)) {
                // SAFETY: both chunks are exactly 16 floats.
                a = unsafe { _mm512_fmadd_ps(_mm512_loadu_ps(qc.as_ptr()), _mm512_loadu_ps(kc.as_ptr()), a) };
            }
            *o = _mm512_reduce_add_ps(a) * scale;
        }
    }

    /// [`super::weighted_sum_f32`] for `o.len() % 16 == 0`, `vals.len() == p.len() · o.len()`:
    /// up to [`COLS`] output columns at a time held in registers over every position.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    pub(super) fn weighted_sum_avx512(p: &[f32], vals: &[f32], o: &mut [f32]) {
        let hd = o.len();
        for c0 in (0..hd).step_by(COLS) {
            let nc = (hd - c0).min(COLS) / 16; // vectors in this column block
            let mut acc = [_mm512_setzero_ps(); COLS / 16];
            for (&w, v) in p.iter().zip(vals.chunks_exact(hd)) {
                let wv = _mm512_set1_ps(w);
                for (j, a) in acc.iter_mut().enumerate().take(nc) {
                    // SAFETY: c0 + 16j + 16 <= c0 + 16·nc <= hd = v.len().
                    *a = unsafe { _mm512_fmadd_ps(wv, _mm512_loadu_ps(v.as_ptr().add(c0 + 16 * j)), *a) };
                }
            }
            for (j, a) in acc.iter().enumerate().take(nc) {
                // SAFETY: as above, for `o` (hd floats).
                unsafe { _mm512_storeu_ps(o.as_mut_ptr().add(c0 + 16 * j), *a) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::test_fill as fill;

    #[test]
    fn row_kernels_match_per_position_loops() {
        for (hd, n) in [(64, 1), (64, 7), (64, 600), (128, 33), (256, 5), (48, 9), (13, 6), (16, 0)] {
            let (q, keys, p) = (fill(hd, 1), fill(hd * n, 2), fill(n, 3));
            let mut got = vec![f32::NAN; n];
            scores_f32(&q, &keys, 0.125, &mut got);
            for (t, g) in got.iter().enumerate() {
                let want: f64 = q.iter().zip(&keys[t * hd..]).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
                assert!((f64::from(*g) - want * 0.125).abs() < 1e-5, "scores hd={hd} n={n} t={t}: {g} vs {want}");
            }
            let mut o = vec![f32::NAN; hd];
            weighted_sum_f32(&p, &keys, &mut o);
            for (i, g) in o.iter().enumerate() {
                let want: f64 = (0..n).map(|t| f64::from(p[t]) * f64::from(keys[t * hd + i])).sum();
                assert!((f64::from(*g) - want).abs() < 1e-4, "sum hd={hd} n={n} [{i}]: {g} vs {want}");
            }
        }
    }
}
