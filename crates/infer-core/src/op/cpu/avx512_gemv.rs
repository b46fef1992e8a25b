//! AVX512_BF16 decode kernels ([`Precision::Fast`](crate::op::Precision), bf16 weights, a few
//! activation rows): the activations are rounded to bf16 pairs once per call, then each k step
//! loads a full 64-byte line (32 bf16) of every weight row in the tile and multiplies it with
//! `vdpbf16ps` against the matching 32 activations: one load and one instruction per 32
//! multiply-adds, no widening. Tiles are `R x 8` for `R <= 2` (8 weight rows stream at once,
//! 8 independent accumulators per row) and `R x 4` up to 4 rows. A software prefetch runs
//! [`PREFETCH_BYTES`] ahead in every weight row, so the DRAM streams stay busy across the
//! tile's row switches.

use std::arch::x86_64::*;

use half::bf16;

use super::avx512::{Avx512Bf16, store_tile};

/// Weight rows per tile for at most 2 activation rows.
pub(crate) const WIDE: usize = 8;
/// Weight rows per tile for 3 or 4 activation rows.
pub(crate) const NARROW: usize = 4;
/// Most activation rows.
pub(crate) const RMAX: usize = 4;
/// How far ahead of the loads each weight row is prefetched.
const PREFETCH_BYTES: usize = 1024;

/// `R x C` tile: `out[r * C + c] = Σ_i x[r][i] · w[c][i]` over `k` bf16 elements, with `x[r]`
/// holding `ceil(k / 2)` bf16 pairs (an odd last pair has a zero high half).
///
/// # Safety
/// AVX-512 F/BW/VL + BF16 must be available; every `w[c]` has `k` readable bf16 and every
/// `x[r]` has `ceil(k / 2)` readable u32; `out` has `R * C` f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn tile<const R: usize, const C: usize>(x: &[*const u32; R], w: &[*const bf16; C], k: usize, out: &mut [f32]) {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    // SAFETY: same-size plain vector types.
    let mut wv: [__m512bh; C] = [unsafe { std::mem::transmute::<__m512, __m512bh>(_mm512_setzero_ps()) }; C];
    let mut i = 0;
    while i + 32 <= k {
        for c in 0..C {
            // SAFETY: i + 32 <= k elements of row c; the prefetch address is never
            // dereferenced (prefetches do not fault), hence `wrapping_add`.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(w[c].cast::<i8>().wrapping_add(2 * i + PREFETCH_BYTES));
                wv[c] = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(w[c].add(i).cast()));
            }
        }
        for r in 0..R {
            // SAFETY: pairs i/2 .. i/2 + 16 <= ceil(k / 2); same-size vector transmute.
            let xv = unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(x[r].add(i / 2).cast())) };
            for c in 0..C {
                acc[r][c] = _mm512_dpbf16_ps(acc[r][c], xv, wv[c]);
            }
        }
        i += 32;
    }
    if i < k {
        let left = k - i; // 1..=31 elements, ceil(left / 2) pairs
        let mw: __mmask32 = (1u32 << left) - 1;
        let mx: __mmask16 = ((1u32 << left.div_ceil(2)) - 1) as __mmask16;
        for c in 0..C {
            // SAFETY: the mask selects the `left` elements left in the row.
            wv[c] =
                unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi16(mw, w[c].add(i).cast())) };
        }
        for r in 0..R {
            // SAFETY: the mask selects the ceil(left / 2) pairs left in the row.
            let xv = unsafe {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi32(mx, x[r].add(i / 2).cast()))
            };
            for c in 0..C {
                acc[r][c] = _mm512_dpbf16_ps(acc[r][c], xv, wv[c]);
            }
        }
    }
    store_tile(&acc, out);
}

/// Bounds-checks and runs one `R x C` tile (`C = w.len()`, full width or one row at a time).
fn run<const R: usize>(_cpu: Avx512Bf16, x: &[&[u32]], w: &[&[bf16]], k: usize, out: &mut [f32]) {
    let cols = w.len();
    let width = if R <= 2 { WIDE } else { NARROW };
    assert!(x.len() == R && (1..=width).contains(&cols) && out.len() >= R * cols, "bad bf16dot tile");
    let mut xp = [std::ptr::null::<u32>(); R];
    for (p, row) in xp.iter_mut().zip(x) {
        *p = row[..k.div_ceil(2)].as_ptr();
    }
    if cols == width {
        let mut wp = [std::ptr::null::<bf16>(); WIDE];
        for (p, row) in wp.iter_mut().zip(w) {
            *p = row[..k].as_ptr();
        }
        if R <= 2 {
            let wp: [*const bf16; WIDE] = wp;
            // SAFETY: `_cpu` proves the CPU features; every row was sliced to its length above.
            unsafe { tile::<R, WIDE>(&xp, &wp, k, out) };
        } else {
            let wp = [wp[0], wp[1], wp[2], wp[3]];
            // SAFETY: as above.
            unsafe { tile::<R, NARROW>(&xp, &wp, k, out) };
        }
    } else {
        let mut one = [0.0f32; RMAX];
        for (c, row) in w.iter().enumerate() {
            // SAFETY: as above.
            unsafe { tile::<R, 1>(&xp, &[row[..k].as_ptr()], k, &mut one) };
            for r in 0..R {
                out[r * cols + c] = one[r];
            }
        }
    }
}

/// `out[r * C + c] = Σ_i x[r][i] · w[c][i]` for `x.len() <= RMAX` rows of bf16 pairs and
/// `C = w.len()` weight rows (at most [`WIDE`] when `x.len() <= 2`, else [`NARROW`]).
pub(crate) fn dots(cpu: Avx512Bf16, x: &[&[u32]], w: &[&[bf16]], k: usize, out: &mut [f32]) {
    match x.len() {
        1 => run::<1>(cpu, x, w, k, out),
        2 => run::<2>(cpu, x, w, k, out),
        3 => run::<3>(cpu, x, w, k, out),
        4 => run::<4>(cpu, x, w, k, out),
        r => panic!("bf16dot decode tile with {r} rows"),
    }
}
