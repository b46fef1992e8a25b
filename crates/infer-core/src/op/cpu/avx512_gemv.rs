//! AVX512_BF16 decode kernels ([`Precision::Fast`](crate::op::Precision), bf16 weights, a few
//! activation rows): the activations are rounded to bf16 pairs once per call, then each step
//! loads full 64-byte lines (32 bf16) of a weight row and multiplies them with `vdpbf16ps`
//! against the matching 32 activations: one load and one instruction per 32 multiply-adds, no
//! widening. The default kernel (`row`) takes one weight row at a time with 4 accumulators, so
//! each thread reads its block of rows as one sequential stream; the older tile kernel (`R x 8`
//! rows for `R <= 2`, `R x 4` up to 4, a software prefetch [`PREFETCH_BYTES`] ahead in every
//! row) interleaves 8 streams and is kept for A/B timing (see [`row_at_a_time`]).

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

/// One weight row against `R` activation rows with 4 independent accumulators per activation
/// row (128 bf16 per step): the thread reads its weight rows as one sequential stream, which
/// the hardware prefetchers follow without software prefetches.
///
/// # Safety
/// AVX-512 F/BW/VL + BF16 must be available; `w` has `k` readable bf16 and every `x[r]` has
/// `ceil(k / 2)` readable u32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn row<const R: usize, const PF: bool>(
    x: &[*const u32; R],
    w: *const bf16,
    k: usize,
    pf: usize,
    out: &mut [f32; RMAX],
) {
    const U: usize = 4;
    let mut acc = [[_mm512_setzero_ps(); U]; R];
    let mut i = 0;
    while i + 32 * U <= k {
        if PF {
            for u in 0..U {
                // Prefetches never fault, hence `wrapping_add` (the address may lie past the row).
                _mm_prefetch::<_MM_HINT_T0>(w.cast::<i8>().wrapping_add(2 * (i + 32 * u) + pf));
            }
        }
        // SAFETY: i + 128 <= k elements of the row; same-size plain vector transmutes.
        let wv: [__m512bh; U] = std::array::from_fn(|u| unsafe {
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(w.add(i + 32 * u).cast()))
        });
        for r in 0..R {
            for (u, wu) in wv.iter().enumerate() {
                // SAFETY: pairs (i + 32u)/2 .. +16 <= ceil(k / 2).
                let xv = unsafe {
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(x[r].add((i + 32 * u) / 2).cast()))
                };
                acc[r][u] = _mm512_dpbf16_ps(acc[r][u], xv, *wu);
            }
        }
        i += 32 * U;
    }
    while i < k {
        let left = (k - i).min(32);
        let mw: __mmask32 = if left == 32 { u32::MAX } else { (1u32 << left) - 1 };
        let mx: __mmask16 = if left == 32 { u16::MAX } else { ((1u32 << left.div_ceil(2)) - 1) as __mmask16 };
        // SAFETY: the masks select the `left` elements / ceil(left / 2) pairs left in the rows.
        let wv = unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi16(mw, w.add(i).cast())) };
        for r in 0..R {
            // SAFETY: as above.
            let xv = unsafe {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi32(mx, x[r].add(i / 2).cast()))
            };
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], xv, wv);
        }
        i += left;
    }
    for r in 0..R {
        let [a, b, c, d] = [acc[r][0], acc[r][1], acc[r][2], acc[r][3]];
        out[r] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(c, d)));
    }
}

fn run_rows<const R: usize>(_cpu: Avx512Bf16, x: &[&[u32]], w: &[&[bf16]], k: usize, out: &mut [f32]) {
    let cols = w.len();
    assert!(x.len() == R && out.len() >= R * cols, "bad bf16dot rows");
    let mut xp = [std::ptr::null::<u32>(); R];
    for (p, xr) in xp.iter_mut().zip(x) {
        *p = xr[..k.div_ceil(2)].as_ptr();
    }
    let mut one = [0.0f32; RMAX];
    let pf = super::tuning::Knob::GemvPrefetchBytes.get();
    for (c, wr) in w.iter().enumerate() {
        // SAFETY: `_cpu` proves the CPU features; the rows were sliced to their lengths.
        unsafe {
            if pf == 0 {
                row::<R, false>(&xp, wr[..k].as_ptr(), k, 0, &mut one)
            } else {
                row::<R, true>(&xp, wr[..k].as_ptr(), k, pf, &mut one)
            }
        };
        for r in 0..R {
            out[r * cols + c] = one[r];
        }
    }
}

/// As [`dots`] with any number of weight rows, one row at a time (see `row`).
pub(crate) fn dots_rows(cpu: Avx512Bf16, x: &[&[u32]], w: &[&[bf16]], k: usize, out: &mut [f32]) {
    match x.len() {
        1 => run_rows::<1>(cpu, x, w, k, out),
        2 => run_rows::<2>(cpu, x, w, k, out),
        3 => run_rows::<3>(cpu, x, w, k, out),
        4 => run_rows::<4>(cpu, x, w, k, out),
        r => panic!("bf16dot decode rows with {r} rows"),
    }
}

/// Whether decode uses the row-at-a-time kernel (default) or the 8-row tile
/// (`INFER_CPU_GEMV=tile`, kept for A/B timing). Measured on a 2-core AMD EPYC VM (Zen 4),
/// Llama-3.2-1B decode, three interleaved rounds: rows 11.7 / 13.6 / 10.8 tok/s, tile 9.4 / 10.4 /
/// 9.6 tok/s: one sequential stream per thread is what the hardware prefetchers follow best
/// (a software prefetch in the row kernel, [`Knob::GemvPrefetchBytes`](super::tuning::Knob),
/// 0.5-8 KiB ahead, cost 6-7% in an in-process A/B: 0.943x / 0.932x / 0.938x at 512 / 2048 / 8192
/// bytes, 200 alternating decode steps).
pub(crate) fn row_at_a_time() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("INFER_CPU_GEMV").map(|v| v.trim() != "tile").unwrap_or(true))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The row-at-a-time kernel and the 8-row tile compute the same dots (their f32 sums are
    /// ordered differently: relative agreement 1e-5 of the sum of |products|), odd k included.
    #[test]
    fn rows_kernel_matches_tile() {
        let Some(cpu) = Avx512Bf16::new() else {
            println!("SKIPPED: no AVX512_BF16 on this CPU");
            return;
        };
        let mut s = 12345u64;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for k in [1usize, 5, 31, 32, 33, 100, 127, 128, 129, 300, 2048] {
            for r in 1..=RMAX {
                // Pairs (low = even element), an odd k's last high half zero.
                let x: Vec<Vec<u32>> = (0..r)
                    .map(|_| {
                        (0..k.div_ceil(2))
                            .map(|p| {
                                let lo = u32::from(bf16::from_f32(next()).to_bits());
                                let hi = if 2 * p + 1 < k { u32::from(bf16::from_f32(next()).to_bits()) } else { 0 };
                                lo | hi << 16
                            })
                            .collect()
                    })
                    .collect();
                let cols = if r <= 2 { WIDE } else { NARROW };
                let w: Vec<Vec<bf16>> = (0..cols).map(|_| (0..k).map(|_| bf16::from_f32(next())).collect()).collect();
                let xs: Vec<&[u32]> = x.iter().map(Vec::as_slice).collect();
                let ws: Vec<&[bf16]> = w.iter().map(Vec::as_slice).collect();
                let (mut a, mut b) = (vec![0.0; r * cols], vec![0.0; r * cols]);
                dots(cpu, &xs, &ws, k, &mut a);
                dots_rows(cpu, &xs, &ws, k, &mut b);
                for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                    let bound = 1e-5 * k as f32 * 0.25 + 1e-6;
                    assert!((p - q).abs() <= bound, "k={k} r={r} #{i}: tile {p} rows {q}");
                }
            }
        }
    }
}
