//! AVX512_BF16 prefill kernel that reads the bf16 weights in place: no weight packing.
//!
//! The outer-product form of `avx512_gemm` with the roles swapped: the activations (m x k,
//! small, reused by every weight row) are packed once per call into blocks of [`LANES`] rows,
//! k-pair-major (`[p][16]` u32 bf16 pairs, see [`pack_acts`]); the micro-kernel keeps an
//! `R x V` tile of accumulators, `R <= WR` weight rows by `V <= VMAX` vectors of 16 activation
//! rows. Each k-pair step loads `V` activation vectors, broadcasts one bf16 pair of each of the
//! `R` weight rows (read sequentially from their rows, as stored) and issues `R x V`
//! `vdpbf16ps`. No horizontal sums: lane `l` of accumulator `(c, v)` is output row `16v + l`,
//! column `c`. Six weight rows at a time keep the rows a step touches within the ways of one
//! L1 set when the row stride is a multiple of 4 KiB (k = 2048, 8192 bf16).

use std::arch::x86_64::*;

use half::bf16;

use super::avx512::Avx512Bf16;
use super::avx512_gemm::{round_pairs, transpose16};
use super::kernel::padded_stride;

/// Activation rows per vector.
pub(crate) const LANES: usize = 16;
/// Most weight rows per micro-tile.
pub(crate) const WR: usize = 6;
/// Most activation vectors per micro-tile (6 x 4 = 24 accumulators + 4 activation vectors).
pub(crate) const VMAX: usize = 4;

/// Packs the `[m, k]` f32 rows of `x` (k even) as bf16 pairs in blocks of [`LANES`] rows:
/// pair `p` of row `16b + l` at `b * kp * 16 + p * 16 + l` (`kp = k / 2`); rows past `m` are zero.
/// Blocks are packed in parallel on the pool, each through a scratch of its 16 rows rounded.
pub(crate) fn pack_acts(cpu: Avx512Bf16, x: &[f32], m: usize, k: usize) -> Vec<u32> {
    let kp = k / 2;
    let stride = padded_stride(kp);
    let mut out = vec![0u32; m.div_ceil(LANES) * kp * LANES];
    if kp == 0 {
        return out;
    }
    super::pool::for_each_chunk(&mut out, kp * LANES, |b, dst| {
        let rl = LANES.min(m - b * LANES);
        let mut rows = vec![0u32; rl * stride];
        round_pairs(cpu, &x[b * LANES * k..(b * LANES + rl) * k], rl, k, &mut rows);
        let src = &rows[..(rl - 1) * stride + kp];
        // SAFETY: `cpu` proves AVX-512 F/BW/VL; `src` holds rows 0..rl of the block (stride
        // `stride`, kp pairs each) and `dst` holds kp * 16 u32.
        unsafe { pack_block(src, stride, rl, kp, dst) };
    });
    out
}

/// # Safety
/// AVX-512 F/BW/VL; `src` has `rl <= 16` rows of `kp` u32 at stride `stride`, `dst` has `kp * 16`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn pack_block(src: &[u32], stride: usize, rl: usize, kp: usize, dst: &mut [u32]) {
    assert!((1..=LANES).contains(&rl) && src.len() > (rl - 1) * stride + kp - 1 && dst.len() >= kp * LANES);
    for pb in (0..kp).step_by(16) {
        let left = kp - pb;
        let m: __mmask16 = if left >= 16 { u16::MAX } else { (1u16 << left) - 1 };
        let mut r = [_mm512_setzero_si512(); 16];
        for (i, v) in r.iter_mut().enumerate().take(rl) {
            // SAFETY: row i < rl, pairs pb.. under the mask are < kp (checked above).
            *v = unsafe { _mm512_maskz_loadu_epi32(m, src.as_ptr().add(i * stride + pb).cast()) };
        }
        transpose16(&mut r);
        for (p, v) in r.iter().enumerate().take(left.min(16)) {
            // SAFETY: (pb + p) * 16 + 16 <= kp * 16.
            unsafe { _mm512_storeu_si512(dst.as_mut_ptr().add((pb + p) * LANES).cast(), *v) };
        }
    }
}

/// `res[c][16v + l] = Σ_p dot2(w[c][p], x[v][p * 16 + l])` over `kp` pairs (lanes are
/// activation rows). With `next`, one 64-byte line of each of those rows (the next tile's
/// weights) is prefetched per 16 pairs, at the offset this tile reads, so the next tile's rows
/// arrive from DRAM while this one computes.
///
/// # Safety
/// AVX-512 F/BW/VL + BF16; every `w[c]` has `kp` readable u32 (bf16 pairs), every `x[v]` has
/// `kp * 16`. `next` addresses are only prefetched (never dereferenced).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn ukernel<const R: usize, const V: usize>(
    x: &[*const u32; V],
    w: &[*const u32; R],
    kp: usize,
    next: Option<&[*const u32; WR]>,
    res: &mut [[f32; LANES * VMAX]; WR],
) {
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for p in 0..kp {
        if p % 16 == 0
            && let Some(next) = next
        {
            for n in next {
                _mm_prefetch::<_MM_HINT_T0>(n.wrapping_add(p).cast());
            }
        }
        // SAFETY: p < kp: the loads stay inside the slices the caller vouched for; the
        // transmutes are between same-size plain vector types.
        unsafe {
            let xv: [__m512bh; V] =
                std::array::from_fn(|v| std::mem::transmute(_mm512_loadu_si512(x[v].add(p * LANES).cast())));
            for c in 0..R {
                let wb: __m512bh = std::mem::transmute(_mm512_set1_epi32(w[c].add(p).read_unaligned() as i32));
                for v in 0..V {
                    acc[c][v] = _mm512_dpbf16_ps(acc[c][v], xv[v], wb);
                }
            }
        }
    }
    for (c, accs) in acc.iter().enumerate() {
        for (v, a) in accs.iter().enumerate() {
            // SAFETY: 16 f32 at v * 16 + 16 <= LANES * VMAX (V <= VMAX).
            unsafe { _mm512_storeu_ps(res[c][v * LANES..].as_mut_ptr(), *a) };
        }
    }
}

/// One tile: weight rows `w` (`R` rows of `k` bf16, k even) against activation blocks `x`
/// (`V` blocks of [`pack_acts`]), written to `out[row][col..col + R]` for the `out.len()`
/// rows (<= 16 V).
fn tile<const R: usize, const V: usize>(
    _cpu: Avx512Bf16,
    x: &[&[u32]],
    w: &[&[bf16]],
    out: &mut [&mut [f32]],
    col: usize,
    next: Option<&[*const u32; WR]>,
) {
    let kp = w[0].len() / 2;
    assert!(x.len() == V && w.len() == R && out.len() <= V * LANES && V <= VMAX && R <= WR, "bad wbcast tile");
    let mut xp = [std::ptr::null::<u32>(); V];
    for (p, b) in xp.iter_mut().zip(x) {
        *p = b[..kp * LANES].as_ptr();
    }
    let mut wp = [std::ptr::null::<u32>(); R];
    for (p, row) in wp.iter_mut().zip(w) {
        *p = row[..2 * kp].as_ptr().cast();
    }
    let mut res = [[0.0f32; LANES * VMAX]; WR];
    // SAFETY: `_cpu` proves the features; the slices above hold kp pairs / kp * 16 u32.
    unsafe { ukernel::<R, V>(&xp, &wp, kp, next, &mut res) };
    for (r, row) in out.iter_mut().enumerate() {
        for (o, c) in row[col..col + R].iter_mut().zip(&res) {
            *o = c[r];
        }
    }
}

macro_rules! by_v {
    ($r:literal, $cpu:expr, $x:expr, $w:expr, $out:expr, $col:expr, $next:expr) => {
        match $x.len() {
            1 => tile::<$r, 1>($cpu, $x, $w, $out, $col, $next),
            2 => tile::<$r, 2>($cpu, $x, $w, $out, $col, $next),
            3 => tile::<$r, 3>($cpu, $x, $w, $out, $col, $next),
            4 => tile::<$r, 4>($cpu, $x, $w, $out, $col, $next),
            v => panic!("weight-broadcast tile with {v} activation vectors"),
        }
    };
}

/// `out[r][c] = Σ_i x[r][i] · w[c][i]` for `w.len() <= WR` weight rows (k even, read in place)
/// and `x.len() <= VMAX` blocks of 16 packed activation rows; `out` holds the `<= 16 x.len()`
/// output rows of these blocks; the tile's columns start at `col` in every `out` row. `next`:
/// rows to prefetch meanwhile (see `ukernel`).
pub(crate) fn micro(
    cpu: Avx512Bf16,
    x: &[&[u32]],
    w: &[&[bf16]],
    out: &mut [&mut [f32]],
    col: usize,
    next: Option<&[*const u32; WR]>,
) {
    match w.len() {
        1 => by_v!(1, cpu, x, w, out, col, next),
        2 => by_v!(2, cpu, x, w, out, col, next),
        3 => by_v!(3, cpu, x, w, out, col, next),
        4 => by_v!(4, cpu, x, w, out, col, next),
        5 => by_v!(5, cpu, x, w, out, col, next),
        6 => by_v!(6, cpu, x, w, out, col, next),
        r => panic!("weight-broadcast tile with {r} weight rows"),
    }
}
