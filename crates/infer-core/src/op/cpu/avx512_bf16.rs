//! Opt-in fast prefill kernel on AVX512_BF16 (`vdpbf16ps`), used only when
//! [`set_fast_bf16`](super::simd::set_fast_bf16) is on and the weights are bf16.
//!
//! Activations are rounded once to bf16 (round-to-nearest-even); each `vdpbf16ps` then does 32
//! multiply-adds (pairs of adjacent k summed into one f32 lane), twice the f32 FMA rate. Both
//! operands keep their natural k-contiguous layout, so weights are read in place with no packing.
//! Tiles are `R x 4` with `R <= 6`, as in the f32 kernel.

use std::arch::x86_64::*;

use half::bf16;

use super::avx512::{Avx512Bf16, CT, RT, store_tile};

/// Most activation rows per tile.
pub(crate) const RMAX: usize = RT;
/// Weight rows per full tile.
pub(crate) const CMAX: usize = CT;

/// `dst[i] = bf16(src[i])` (round to nearest even) for `i < dst.len()`; panics if `src` is shorter.
pub(crate) fn round_to_bf16(cpu: Avx512Bf16, src: &[f32], dst: &mut [bf16]) {
    // SAFETY: `cpu` proves AVX-512 F/BW/VL + BF16 are available.
    unsafe { round_impl(cpu, src, dst) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
fn round_impl(_cpu: Avx512Bf16, src: &[f32], dst: &mut [bf16]) {
    let n = dst.len();
    let src = &src[..n];
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n = src.len() = dst.len(); unaligned 64-byte load, 32-byte store.
        unsafe {
            let v: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr().add(i))));
            _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), v);
        }
        i += 16;
    }
    for (d, s) in dst[i..].iter_mut().zip(&src[i..]) {
        *d = bf16::from_f32(*s);
    }
}

/// Loads the 32 bf16 selected by `m` at `p` (zero elsewhere).
///
/// # Safety
/// AVX-512 BW must be available and the selected elements readable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn load_bh(p: *const bf16, m: __mmask32) -> __m512bh {
    // SAFETY: masked-off lanes are not accessed (caller guarantees the selected ones);
    // `__m512i` and `__m512bh` are both 64-byte plain vector types.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi16(m, p.cast())) }
}

/// `R x C` tile of bf16 dot products over `k` elements, accumulated in f32.
///
/// # Safety
/// AVX-512 F/BW/VL + BF16 must be available and every pointer must have `k` readable elements.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn tile<const R: usize, const C: usize>(x: &[*const bf16; R], w: &[*const bf16; C], k: usize, out: &mut [f32]) {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    // SAFETY: all-zero bits are a valid `__m512bh` (both are plain 64-byte vectors).
    let mut wv = [unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512()) }; C];
    let mut i = 0;
    while i < k {
        let m: __mmask32 = if k - i >= 32 { u32::MAX } else { (1u32 << (k - i)) - 1 };
        for c in 0..C {
            // SAFETY: the mask selects min(32, k - i) elements, all within the row.
            wv[c] = unsafe { load_bh(w[c].add(i), m) };
        }
        for r in 0..R {
            // SAFETY: as above for the activation rows.
            let xv = unsafe { load_bh(x[r].add(i), m) };
            for c in 0..C {
                acc[r][c] = _mm512_dpbf16_ps(acc[r][c], xv, wv[c]);
            }
        }
        i += 32;
    }
    store_tile(&acc, out);
}

fn run<const R: usize>(_cpu: Avx512Bf16, x: &[&[bf16]], w: &[&[bf16]], k: usize, out: &mut [f32]) {
    let c_all = w.len();
    assert!(x.len() == R && (1..=CT).contains(&c_all) && out.len() >= R * c_all, "bad bf16 tile");
    let mut xp = [std::ptr::null::<bf16>(); R];
    for (p, row) in xp.iter_mut().zip(x) {
        *p = row[..k].as_ptr();
    }
    if c_all == CT {
        let wp = [w[0][..k].as_ptr(), w[1][..k].as_ptr(), w[2][..k].as_ptr(), w[3][..k].as_ptr()];
        // SAFETY: `_cpu` proves the CPU features; every row was sliced to `k` elements above.
        unsafe { tile::<R, CT>(&xp, &wp, k, out) };
    } else {
        let mut one = [0.0f32; RT];
        for (c, row) in w.iter().enumerate() {
            // SAFETY: as above.
            unsafe { tile::<R, 1>(&xp, &[row[..k].as_ptr()], k, &mut one) };
            for r in 0..R {
                out[r * c_all + c] = one[r];
            }
        }
    }
}

/// `out[r * C + c] = Σ_i x[r][i] · w[c][i]` for `R = x.len() <= RMAX`, `C = w.len() <= CMAX`.
pub(crate) fn dots(cpu: Avx512Bf16, x: &[&[bf16]], w: &[&[bf16]], k: usize, out: &mut [f32]) {
    match x.len() {
        1 => run::<1>(cpu, x, w, k, out),
        2 => run::<2>(cpu, x, w, k, out),
        3 => run::<3>(cpu, x, w, k, out),
        4 => run::<4>(cpu, x, w, k, out),
        5 => run::<5>(cpu, x, w, k, out),
        6 => run::<6>(cpu, x, w, k, out),
        r => panic!("bf16 tile with {r} rows"),
    }
}
