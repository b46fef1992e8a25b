//! AVX2 + FMA + F16C kernels (for x86-64 CPUs without AVX-512).
//!
//! Tiles are `R x 4` (R <= 2 activation rows, 4 weight rows): 8 ymm accumulators, enough to
//! keep two FMA ports busy, and 6 loads per 8 FMAs. Weights are widened in registers (bf16 by
//! zero-extension and a 16-bit shift, f16 by `vcvtph2ps`); the k tail (< 8) is scalar.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::kernel::{Kernel, MAX_TILE, Weight};
use super::simd::{self, Isa};

/// Proof that the CPU supports AVX2, FMA and F16C (only built after runtime detection).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2 {
    _detected: (),
}

impl Avx2 {
    /// `Some` when the CPU supports the kernels (ignores the `RUSTINFER_ISA` cap).
    pub(crate) fn new() -> Option<Self> {
        (simd::detected() >= Isa::Avx2).then_some(Avx2 { _detected: () })
    }
}

const RT: usize = 2;
const CT: usize = 4;

/// Weight element loads widened to 8 f32 lanes.
trait Load: Weight {
    /// Loads 8 elements at `p`. Caller: AVX2/FMA/F16C available, `p..p+8` readable.
    unsafe fn load(p: *const Self) -> __m256;
}

impl Load for f32 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: the caller guarantees 8 readable f32 at `p`; unaligned load.
        unsafe { _mm256_loadu_ps(p) }
    }
}

impl Load for bf16 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(p: *const bf16) -> __m256 {
        // SAFETY: the caller guarantees 8 readable bf16 (16 bytes) at `p`; unaligned load.
        let v = unsafe { _mm_loadu_si128(p.cast()) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)))
    }
}

impl Load for f16 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(p: *const f16) -> __m256 {
        // SAFETY: the caller guarantees 8 readable f16 (16 bytes) at `p`; unaligned load.
        let v = unsafe { _mm_loadu_si128(p.cast()) };
        _mm256_cvtph_ps(v)
    }
}

/// Sums each of `a, b, c, d` into one lane: `[Σa, Σb, Σc, Σd]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
    let ab = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
    let cd = _mm256_add_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
    let s = _mm256_add_ps(_mm256_shuffle_ps::<0x44>(ab, cd), _mm256_shuffle_ps::<0xEE>(ab, cd));
    _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s))
}

/// Sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum(a: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// `R x C` dot-product tile over `k` elements (see [`Kernel`]).
///
/// # Safety
/// AVX2/FMA/F16C must be available, and every pointer must have `k` readable elements.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const R: usize, const C: usize, W: Load>(
    x: &[*const f32; R],
    w: &[*const W; C],
    k: usize,
    out: &mut [f32],
) {
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut wv = [_mm256_setzero_ps(); C];
    let mut i = 0;
    while i + 8 <= k {
        for c in 0..C {
            // SAFETY: i + 8 <= k and each weight row has k readable elements.
            wv[c] = unsafe { W::load(w[c].add(i)) };
        }
        for r in 0..R {
            // SAFETY: i + 8 <= k and each activation row has k readable elements.
            let xv = unsafe { _mm256_loadu_ps(x[r].add(i)) };
            for c in 0..C {
                acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
            }
        }
        i += 8;
    }
    let out = &mut out[..R * C];
    for r in 0..R {
        if C == 4 {
            let mut v = [0.0f32; 4];
            // SAFETY: `v` holds 4 f32 = 16 bytes; unaligned store.
            unsafe { _mm_storeu_ps(v.as_mut_ptr(), hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3])) };
            out[r * C..r * C + 4].copy_from_slice(&v);
        } else {
            for c in 0..C {
                out[r * C + c] = hsum(acc[r][c]);
            }
        }
        for c in 0..C {
            for j in i..k {
                // SAFETY: j < k, within every row.
                out[r * C + c] += unsafe { *x[r].add(j) * (*w[c].add(j)).to_f32() };
            }
        }
    }
}

fn run<const R: usize, W: Load>(_cpu: Avx2, x: &[&[f32]], w: &[&[W]], k: usize, out: &mut [f32]) {
    let c_all = w.len();
    assert!(x.len() == R && (1..=CT).contains(&c_all) && out.len() >= R * c_all, "bad avx2 tile");
    let mut xp = [std::ptr::null::<f32>(); R];
    for (p, row) in xp.iter_mut().zip(x) {
        *p = row[..k].as_ptr();
    }
    if c_all == CT {
        let wp = [w[0][..k].as_ptr(), w[1][..k].as_ptr(), w[2][..k].as_ptr(), w[3][..k].as_ptr()];
        // SAFETY: `_cpu` proves the CPU features (tokens are only built after detection);
        // every row was sliced to `k` elements above.
        unsafe { tile::<R, CT, W>(&xp, &wp, k, out) };
    } else {
        let mut one = [0.0f32; RT];
        for (c, row) in w.iter().enumerate() {
            // SAFETY: as above.
            unsafe { tile::<R, 1, W>(&xp, &[row[..k].as_ptr()], k, &mut one) };
            for r in 0..R {
                out[r * c_all + c] = one[r];
            }
        }
    }
}

fn dots<W: Load>(cpu: Avx2, x: &[&[f32]], w: &[&[W]], k: usize, out: &mut [f32]) {
    match x.len() {
        1 => run::<1, W>(cpu, x, w, k, out),
        2 => run::<2, W>(cpu, x, w, k, out),
        r => panic!("avx2 tile with {r} rows"),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn widen<W: Load>(src: &[W], dst: &mut [f32]) {
    let n = dst.len();
    let src = &src[..n];
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n = src.len() = dst.len().
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(i), W::load(src.as_ptr().add(i))) };
        i += 8;
    }
    for (d, s) in dst[i..].iter_mut().zip(&src[i..]) {
        *d = s.to_f32();
    }
}

impl Kernel for Avx2 {
    const RMAX: usize = RT;
    const CMAX: usize = CT;

    fn dots_f32(self, x: &[&[f32]], w: &[&[f32]], k: usize, out: &mut [f32]) {
        dots(self, x, w, k, out)
    }
    fn dots_bf16(self, x: &[&[f32]], w: &[&[bf16]], k: usize, out: &mut [f32]) {
        dots(self, x, w, k, out)
    }
    fn dots_f16(self, x: &[&[f32]], w: &[&[f16]], k: usize, out: &mut [f32]) {
        dots(self, x, w, k, out)
    }
    fn widen_bf16(self, src: &[bf16], dst: &mut [f32]) {
        // SAFETY: `self` proves AVX2/FMA/F16C are available.
        unsafe { widen(src, dst) }
    }
    fn widen_f16(self, src: &[f16], dst: &mut [f32]) {
        // SAFETY: `self` proves AVX2/FMA/F16C are available.
        unsafe { widen(src, dst) }
    }
}

const _: () = assert!(RT * CT <= MAX_TILE);
