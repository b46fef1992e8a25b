//! Vector kernels used by attention ([`dot_f32`], [`axpy_f32`]) and the MLP ([`silu_mul_f32`]),
//! dispatched at runtime to AVX-512, AVX2 or portable code (see [`simd`](super::simd)).

use super::kernel::dot_scalar;
use super::simd::{self, Isa};

/// `Σ a[i]·b[i]` over the shorter of the two slices, accumulated in f32 with several
/// independent partial sums.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    dot_with(simd::active(), a, b)
}

/// `y[i] += alpha · x[i]` over the shorter of the two slices.
pub fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    axpy_with(simd::active(), alpha, &x[..n], &mut y[..n])
}

/// `out[i] = silu(gate[i]) · up[i]` with `silu(x) = x / (1 + e^-x)`, over the shortest of the
/// three slices. The SIMD paths evaluate `e^-x` with a degree-5 polynomial after range reduction
/// (Cephes `expf`: relative error below 2e-7, i.e. within 2 ulp of `f32::exp`; tested).
pub fn silu_mul_f32(gate: &[f32], up: &[f32], out: &mut [f32]) {
    silu_mul_with(simd::active(), gate, up, out)
}

/// `x[i] = e^(x[i] - m)` in place (softmax's numerators, `m` the row's maximum); returns their
/// sum, accumulated in f64. On AVX-512 the exponential is the Cephes polynomial of
/// [`silu_mul_f32`] (within 2 ulp of `f32::exp`); shifted inputs below -88 give 0 (`f32::exp`
/// gives subnormals under 1.2e-38 there, and 0 for -inf, as here).
pub fn exp_shift_sum(x: &mut [f32], m: f32) -> f64 {
    exp_shift_sum_with(simd::active(), x, m)
}

/// [`exp_shift_sum`] on a given kernel family.
pub(crate) fn exp_shift_sum_with(isa: Isa, x: &mut [f32], m: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx512 && simd::detected() >= Isa::Avx512 {
        // SAFETY: AVX-512 F/BW/VL were detected at runtime just above.
        return unsafe { x86::exp_shift_sum_avx512(x, m) };
    }
    let _ = isa;
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = (*v - m).exp();
        sum += f64::from(*v);
    }
    sum
}

/// [`silu_mul_f32`] on a given kernel family.
pub(crate) fn silu_mul_with(isa: Isa, gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = gate.len().min(up.len()).min(out.len());
    let (gate, up, out) = (&gate[..n], &up[..n], &mut out[..n]);
    #[cfg(target_arch = "x86_64")]
    {
        if isa >= Isa::Avx512 && simd::detected() >= Isa::Avx512 {
            // SAFETY: AVX-512 F/BW/VL were detected at runtime just above.
            return unsafe { x86::silu_mul_avx512(gate, up, out) };
        }
        if isa >= Isa::Avx2 && simd::detected() >= Isa::Avx2 {
            // SAFETY: AVX2/FMA/F16C were detected at runtime just above.
            return unsafe { x86::silu_mul_avx2(gate, up, out) };
        }
    }
    let _ = isa;
    silu_mul_scalar(gate, up, out);
}

fn silu_mul_scalar(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &x), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = x / (1.0 + (-x).exp()) * u;
    }
}

/// [`dot_f32`] on a given kernel family (equal lengths); falls back to portable code when
/// the CPU lacks `isa`.
pub(crate) fn dot_with(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if isa >= Isa::Avx512 && simd::detected() >= Isa::Avx512 {
            // SAFETY: AVX-512 F/BW/VL were detected at runtime just above.
            return unsafe { x86::dot_avx512(a, b) };
        }
        if isa >= Isa::Avx2 && simd::detected() >= Isa::Avx2 {
            // SAFETY: AVX2/FMA/F16C were detected at runtime just above.
            return unsafe { x86::dot_avx2(a, b) };
        }
    }
    let _ = isa;
    dot_scalar(a, b)
}

/// [`axpy_f32`] on a given kernel family (equal lengths).
pub(crate) fn axpy_with(isa: Isa, alpha: f32, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if isa >= Isa::Avx512 && simd::detected() >= Isa::Avx512 {
            // SAFETY: AVX-512 F/BW/VL were detected at runtime just above.
            return unsafe { x86::axpy_avx512(alpha, x, y) };
        }
        if isa >= Isa::Avx2 && simd::detected() >= Isa::Avx2 {
            // SAFETY: AVX2/FMA/F16C were detected at runtime just above.
            return unsafe { x86::axpy_avx2(alpha, x, y) };
        }
    }
    let _ = isa;
    y.iter_mut().zip(x).for_each(|(y, x)| *y += alpha * x);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::avx2::hsum;

    /// Cephes `expf` constants: `x = n ln2 + r`, `|r| <= ln2 / 2`, `e^r ≈ 1 + r + r² P(r)`.
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];
    /// Inputs are clamped to ±EXP_MAX (e^88 is finite in f32); silu's error from the clamp is
    /// below 1e-35 in absolute value.
    const EXP_MAX: f32 = 88.0;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    fn exp512(x: __m512) -> __m512 {
        let x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(EXP_MAX)), _mm512_set1_ps(-EXP_MAX));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(LOG2E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(P[0]);
        for c in &P[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        let e = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0));
        _mm512_scalef_ps(e, n)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    pub(super) fn silu_mul_avx512(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = gate.len().min(up.len()).min(out.len());
        let (pg, pu, po) = (gate.as_ptr(), up.as_ptr(), out.as_mut_ptr());
        let one = _mm512_set1_ps(1.0);
        let mut i = 0;
        while i < n {
            let m: __mmask16 = if n - i >= 16 { u16::MAX } else { (1u16 << (n - i)) - 1 };
            // SAFETY: the mask selects min(16, n - i) lanes, all inside the three slices; `out`
            // is exclusively borrowed, so the store aliases neither input.
            unsafe {
                let x = _mm512_maskz_loadu_ps(m, pg.add(i));
                let u = _mm512_maskz_loadu_ps(m, pu.add(i));
                let d = _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), x)));
                _mm512_mask_storeu_ps(po.add(i), m, _mm512_mul_ps(_mm512_div_ps(x, d), u));
            }
            i += 16;
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    pub(super) fn exp_shift_sum_avx512(x: &mut [f32], m: f32) -> f64 {
        let n = x.len();
        let (p, vm, floor) = (x.as_mut_ptr(), _mm512_set1_ps(m), _mm512_set1_ps(-EXP_MAX));
        let (mut lo, mut hi) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        let mut i = 0;
        while i < n {
            let k: __mmask16 = if n - i >= 16 { u16::MAX } else { (1u16 << (n - i)) - 1 };
            // SAFETY: the mask selects min(16, n - i) lanes, all inside `x`.
            unsafe {
                let d = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, p.add(i)), vm);
                // Lanes past the row and shifted inputs below -88 (-inf included) give 0.
                let keep = k & _mm512_cmp_ps_mask::<_CMP_GE_OQ>(d, floor);
                let e = _mm512_maskz_mov_ps(keep, exp512(d));
                _mm512_mask_storeu_ps(p.add(i), k, e);
                lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
                hi = _mm512_add_pd(
                    hi,
                    _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(e)))),
                );
            }
            i += 16;
        }
        _mm512_reduce_add_pd(_mm512_add_pd(lo, hi))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn exp256(x: __m256) -> __m256 {
        let x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(EXP_MAX)), _mm256_set1_ps(-EXP_MAX));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(LOG2E),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(P[0]);
        for c in &P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let e = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
        // 2^n: n in [-127, 127] after the clamp, so (n + 127) << 23 is a normal float's bits.
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        _mm256_mul_ps(e, pow2)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn silu_mul_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = gate.len().min(up.len()).min(out.len());
        let (pg, pu, po) = (gate.as_ptr(), up.as_ptr(), out.as_mut_ptr());
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n, inside the three slices; `out` is exclusively borrowed.
            unsafe {
                let x = _mm256_loadu_ps(pg.add(i));
                let u = _mm256_loadu_ps(pu.add(i));
                let d = _mm256_add_ps(one, exp256(_mm256_sub_ps(_mm256_setzero_ps(), x)));
                _mm256_storeu_ps(po.add(i), _mm256_mul_ps(_mm256_div_ps(x, d), u));
            }
            i += 8;
        }
        super::silu_mul_scalar(&gate[i..n], &up[i..n], &mut out[i..n]);
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    pub(super) fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for (j, s) in acc.iter_mut().enumerate() {
                // SAFETY: i + 64 <= n, so the 16 lanes at i + 16j are inside both slices.
                *s = unsafe {
                    _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i + 16 * j)), _mm512_loadu_ps(pb.add(i + 16 * j)), *s)
                };
            }
            i += 64;
        }
        while i < n {
            let m: __mmask16 = if n - i >= 16 { u16::MAX } else { (1u16 << (n - i)) - 1 };
            // SAFETY: the mask selects min(16, n - i) lanes, all inside both slices.
            acc[0] = unsafe {
                _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, pa.add(i)), _mm512_maskz_loadu_ps(m, pb.add(i)), acc[0])
            };
            i += 16;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    pub(super) fn axpy_avx512(alpha: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let va = _mm512_set1_ps(alpha);
        let mut i = 0;
        while i < n {
            let m: __mmask16 = if n - i >= 16 { u16::MAX } else { (1u16 << (n - i)) - 1 };
            // SAFETY: the mask selects min(16, n - i) lanes, all inside both slices; `y` is
            // exclusively borrowed, so the store does not alias `x`.
            unsafe {
                let v = _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, px.add(i)), _mm512_maskz_loadu_ps(m, py.add(i)));
                _mm512_mask_storeu_ps(py.add(i), m, v);
            }
            i += 16;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, s) in acc.iter_mut().enumerate() {
                // SAFETY: i + 32 <= n, so the 8 lanes at i + 8j are inside both slices.
                *s = unsafe {
                    _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8 * j)), _mm256_loadu_ps(pb.add(i + 8 * j)), *s)
                };
            }
            i += 32;
        }
        while i + 8 <= n {
            // SAFETY: i + 8 <= n.
            acc[0] = unsafe { _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]) };
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
        for j in i..n {
            s += a[j] * b[j];
        }
        s
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn axpy_avx2(alpha: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let va = _mm256_set1_ps(alpha);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n, inside both slices; `y` is exclusively borrowed.
            unsafe {
                _mm256_storeu_ps(py.add(i), _mm256_fmadd_ps(va, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i))))
            };
            i += 8;
        }
        for j in i..n {
            y[j] += alpha * x[j];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::test_fill as fill;

    #[test]
    fn dot_and_axpy_match_f64_on_every_isa() {
        for isa in simd::available() {
            for n in [0, 1, 7, 8, 15, 16, 17, 63, 64, 65, 100, 128, 1000] {
                let (a, b) = (fill(n, 1 + n as u64), fill(n, 99 + n as u64));
                let want: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
                let scale: f64 = a.iter().zip(&b).map(|(x, y)| f64::from((x * y).abs())).sum::<f64>() + 1e-30;
                let got = f64::from(dot_with(isa, &a, &b));
                assert!((got - want).abs() <= 1e-6 * scale, "{isa:?} n={n}: {got} vs {want}");

                let mut y = b.clone();
                axpy_with(isa, 0.75, &a, &mut y);
                for i in 0..n {
                    let want = f64::from(b[i]) + 0.75 * f64::from(a[i]);
                    assert!((f64::from(y[i]) - want).abs() <= 1e-6, "{isa:?} axpy n={n} i={i}");
                }
            }
        }
        // Public entry points clip to the shorter slice.
        assert_eq!(dot_f32(&[1.0, 2.0, 3.0], &[4.0, 5.0]), 14.0);
        let mut y = vec![1.0; 2];
        axpy_f32(2.0, &[1.0, 2.0, 3.0], &mut y);
        assert_eq!(y, [3.0, 5.0]);
    }

    /// Every ISA's softmax numerators and their sum against f64 (odd lengths, -inf, deep tails).
    #[test]
    fn exp_shift_sum_matches_f64_on_every_isa() {
        let mut x: Vec<f32> = (0..301).map(|i| (i as f32 - 250.0) * 0.37).collect(); // -92.5 ..= 18.5
        x.extend([f32::NEG_INFINITY, -87.9, -88.1, 0.0, 18.5]);
        for isa in simd::available() {
            for n in [0, 1, 15, 16, 17, 33, x.len()] {
                let mut got = x[..n].to_vec();
                let sum = exp_shift_sum_with(isa, &mut got, 18.5);
                let mut want_sum = 0f64;
                for (g, v) in got.iter().zip(&x[..n]) {
                    let want = f64::from(*v - 18.5).exp(); // of the f32 difference, as the kernels take it
                    want_sum += want;
                    assert!((f64::from(*g) - want).abs() <= 1e-6 * want + 1e-37, "{isa:?} x={v}: {g} vs {want}");
                }
                assert!((sum - want_sum).abs() <= 1e-6 * want_sum + 1e-36, "{isa:?} n={n}: sum {sum} vs {want_sum}");
            }
        }
    }

    /// Every ISA's `silu(g) · u` against f64 over the whole f32 range of interest (saturated
    /// tails, zero, tiny and odd lengths): relative error within 1e-6 (a few ulp).
    #[test]
    fn silu_mul_matches_f64_on_every_isa() {
        let mut g: Vec<f32> = (0..4001).map(|i| (i as f32 - 2000.0) / 20.0).collect(); // -100 ..= 100
        g.extend([0.0, -0.0, 1e-30, -1e-30, 87.9, -87.9, 88.5, -88.5, 500.0, -500.0, f32::MIN_POSITIVE]);
        let u: Vec<f32> = (0..g.len()).map(|i| ((i % 13) as f32 - 6.0) * 0.37).collect();
        for isa in simd::available() {
            for n in [0, 1, 7, 8, 9, 15, 16, 17, 33, g.len()] {
                let mut out = vec![f32::NAN; n];
                silu_mul_with(isa, &g[..n], &u[..n], &mut out);
                for i in 0..n {
                    let x = f64::from(g[i]);
                    let want = x / (1.0 + (-x).exp()) * f64::from(u[i]);
                    let err = (f64::from(out[i]) - want).abs();
                    assert!(err <= 1e-6 * want.abs() + 1e-35, "{isa:?} n={n} x={x}: {} vs {want}", out[i]);
                }
            }
        }
    }
}
