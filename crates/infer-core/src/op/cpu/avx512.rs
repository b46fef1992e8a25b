//! AVX-512 dot-product kernels (F + BW + VL, FMA) for decode and small batches, plus the CPU
//! feature tokens (the packed prefill kernels are in `avx512_gemm`).
//!
//! Tiles are `R x 4` (R <= 6 activation rows, 4 weight rows): 24 zmm accumulators, each k step
//! loads 6 + 4 vectors for 24 FMAs; with at most 2 rows (decode) tiles are `R x 8`, so 8
//! weight rows stream from DRAM at once. Each group of 4 accumulators of a row is reduced
//! together into one `__m128` (4 adjacent outputs). Weight vectors are widened in registers:
//! bf16 by zero-extension and a 16-bit shift, f16 by `vcvtph2ps`. The k tail uses masked
//! loads, which never touch memory past the mask.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::kernel::{Kernel, MAX_TILE};
use super::simd::{self, Isa};

/// Proof that the CPU supports AVX-512 F/BW/VL and FMA (only built after runtime detection).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512 {
    _detected: (),
}

impl Avx512 {
    /// `Some` when the CPU supports the kernels (ignores the `RUSTINFER_ISA` cap).
    pub(crate) fn new() -> Option<Self> {
        (simd::detected() >= Isa::Avx512).then_some(Avx512 { _detected: () })
    }
}

/// Proof that the CPU also has AVX512_BF16 (`vdpbf16ps`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512Bf16 {
    _detected: (),
}

impl Avx512Bf16 {
    pub(crate) fn new() -> Option<Self> {
        simd::has_avx512_bf16().then_some(Avx512Bf16 { _detected: () })
    }
}

/// Row tile height; the width is 4.
const RT: usize = 6;
const CT: usize = 4;
/// Weight rows per decode tile when at most 2 activation rows (more DRAM streams in flight).
const WIDE: usize = 8;

/// Weight element loads widened to 16 f32 lanes.
pub(crate) trait Load: Copy + Sync {
    /// Loads 16 elements at `p`. Caller: AVX-512 F/BW/VL available, `p..p+16` readable.
    unsafe fn load(p: *const Self) -> __m512;
    /// Loads the elements selected by `m` (zero elsewhere). Caller: as `load` for selected lanes.
    unsafe fn load_mask(p: *const Self, m: __mmask16) -> __m512;
}

impl Load for f32 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: the caller guarantees 16 readable f32 at `p`.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load_mask(p: *const f32, m: __mmask16) -> __m512 {
        // SAFETY: masked-off lanes are not accessed; the caller guarantees the selected ones.
        unsafe { _mm512_maskz_loadu_ps(m, p) }
    }
}

impl Load for bf16 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load(p: *const bf16) -> __m512 {
        // SAFETY: the caller guarantees 16 readable bf16 (32 bytes) at `p`; unaligned load.
        let v = unsafe { _mm256_loadu_si256(p.cast()) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)))
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load_mask(p: *const bf16, m: __mmask16) -> __m512 {
        // SAFETY: masked-off lanes are not accessed; the caller guarantees the selected ones.
        let v = unsafe { _mm256_maskz_loadu_epi16(m, p.cast()) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)))
    }
}

impl Load for f16 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load(p: *const f16) -> __m512 {
        // SAFETY: the caller guarantees 16 readable f16 (32 bytes) at `p`; unaligned load.
        let v = unsafe { _mm256_loadu_si256(p.cast()) };
        _mm512_cvtph_ps(v)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load_mask(p: *const f16, m: __mmask16) -> __m512 {
        // SAFETY: masked-off lanes are not accessed; the caller guarantees the selected ones.
        let v = unsafe { _mm256_maskz_loadu_epi16(m, p.cast()) };
        _mm512_cvtph_ps(v)
    }
}

/// Sums each of `a, b, c, d` into one lane: `[Σa, Σb, Σc, Σd]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn hsum4(a: __m512, b: __m512, c: __m512, d: __m512) -> __m128 {
    // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3], then [Σa, Σb, Σc, Σd] of that lane.
    let ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    let cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    let s = _mm512_add_ps(_mm512_shuffle_ps::<0x44>(ab, cd), _mm512_shuffle_ps::<0xEE>(ab, cd));
    let lo = _mm512_castps512_ps256(s);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(s)));
    let s = _mm256_add_ps(lo, hi);
    _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s))
}

/// Writes the `R x C` tile of accumulators, reduced, to `out[r * C + c]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) fn store_tile<const R: usize, const C: usize>(acc: &[[__m512; C]; R], out: &mut [f32]) {
    let out = &mut out[..R * C];
    for r in 0..R {
        if C.is_multiple_of(4) {
            for g in (0..C).step_by(4) {
                let s = hsum4(acc[r][g], acc[r][g + 1], acc[r][g + 2], acc[r][g + 3]);
                let mut v = [0.0f32; 4];
                // SAFETY: `v` has 4 f32 = 16 bytes; unaligned store.
                unsafe { _mm_storeu_ps(v.as_mut_ptr(), s) };
                out[r * C + g..r * C + g + 4].copy_from_slice(&v);
            }
        } else {
            for c in 0..C {
                out[r * C + c] = _mm512_reduce_add_ps(acc[r][c]);
            }
        }
    }
}

/// `R x C` dot-product tile over `k` elements (see [`Kernel`]).
///
/// # Safety
/// AVX-512 F/BW/VL and FMA must be available, and every pointer must have `k` readable elements.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn tile<const R: usize, const C: usize, W: Load>(
    x: &[*const f32; R],
    w: &[*const W; C],
    k: usize,
    out: &mut [f32],
) {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut wv = [_mm512_setzero_ps(); C];
    let mut i = 0;
    while i + 16 <= k {
        for c in 0..C {
            // SAFETY: i + 16 <= k and each weight row has k readable elements.
            wv[c] = unsafe { W::load(w[c].add(i)) };
        }
        for r in 0..R {
            // SAFETY: i + 16 <= k and each activation row has k readable elements.
            let xv = unsafe { _mm512_loadu_ps(x[r].add(i)) };
            for c in 0..C {
                acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
            }
        }
        i += 16;
    }
    if i < k {
        let m: __mmask16 = (1u16 << (k - i)) - 1;
        for c in 0..C {
            // SAFETY: the mask selects the k - i < 16 elements left in the row.
            wv[c] = unsafe { W::load_mask(w[c].add(i), m) };
        }
        for r in 0..R {
            // SAFETY: as above.
            let xv = unsafe { _mm512_maskz_loadu_ps(m, x[r].add(i)) };
            for c in 0..C {
                acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
            }
        }
    }
    store_tile(&acc, out);
}

/// Bounds-checks the rows and runs the `R x C` tile (`C` = 4 or 1 column at a time).
fn run<const R: usize, W: Load>(_cpu: Avx512, x: &[&[f32]], w: &[&[W]], k: usize, out: &mut [f32]) {
    let c_all = w.len();
    let cmax = if R <= 2 { WIDE } else { CT };
    assert!(x.len() == R && (1..=cmax).contains(&c_all) && out.len() >= R * c_all, "bad avx512 tile");
    let mut xp = [std::ptr::null::<f32>(); R];
    for (p, row) in xp.iter_mut().zip(x) {
        *p = row[..k].as_ptr();
    }
    if R <= 2 && c_all == WIDE {
        let mut wp = [std::ptr::null::<W>(); WIDE];
        for (p, row) in wp.iter_mut().zip(w) {
            *p = row[..k].as_ptr();
        }
        // SAFETY: `_cpu` proves the CPU features (tokens are only built after detection);
        // every row was sliced to `k` elements above.
        unsafe { tile::<R, WIDE, W>(&xp, &wp, k, out) };
    } else if c_all == CT {
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

fn dots<W: Load>(cpu: Avx512, x: &[&[f32]], w: &[&[W]], k: usize, out: &mut [f32]) {
    match x.len() {
        1 => run::<1, W>(cpu, x, w, k, out),
        2 => run::<2, W>(cpu, x, w, k, out),
        3 => run::<3, W>(cpu, x, w, k, out),
        4 => run::<4, W>(cpu, x, w, k, out),
        5 => run::<5, W>(cpu, x, w, k, out),
        6 => run::<6, W>(cpu, x, w, k, out),
        r => panic!("avx512 tile with {r} rows"),
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn widen<W: Load>(src: &[W], dst: &mut [f32]) {
    let n = dst.len();
    let src = &src[..n];
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n = src.len() = dst.len().
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add(i), W::load(src.as_ptr().add(i))) };
        i += 16;
    }
    if i < n {
        let m: __mmask16 = (1u16 << (n - i)) - 1;
        // SAFETY: the mask selects the n - i < 16 elements left in both slices.
        unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr().add(i), m, W::load_mask(src.as_ptr().add(i), m)) };
    }
}

impl Kernel for Avx512 {
    const RMAX: usize = RT;
    const CMAX: usize = CT;

    fn gemv_cols(m: usize) -> usize {
        if m <= 2 { WIDE } else { CT }
    }

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
        // SAFETY: `self` proves AVX-512 F/BW/VL are available.
        unsafe { widen(src, dst) }
    }
    fn widen_f16(self, src: &[f16], dst: &mut [f32]) {
        // SAFETY: `self` proves AVX-512 F/BW/VL are available.
        unsafe { widen(src, dst) }
    }
}

const _: () = assert!(RT * CT <= MAX_TILE && 2 * WIDE <= MAX_TILE);
