//! Vector kernels used by attention: [`dot_f32`] and [`axpy_f32`], dispatched at runtime to
//! AVX-512, AVX2 or portable code (see [`simd`](super::simd)).

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
}
