//! AVX-512 packed prefill kernels (outer-product form, like BLIS).
//!
//! A panel of weight rows × `kl` k-elements is packed once into micro-panels of [`NR`] = 32
//! columns laid out k-major (`[kl][32]` f32, or `[kl/2][32]` bf16 pairs for `vdpbf16ps`), via
//! 16×16 in-register transposes. The micro-kernel then keeps an `R x 32` tile of outputs in
//! 2·R zmm accumulators (R <= [`MR`] = 12): each k step loads two weight vectors and
//! broadcasts one activation (or one bf16 pair) per row. No horizontal sums are needed and
//! the outputs are stored as full vectors (masked at the right edge of the matrix).

use std::arch::x86_64::*;

use half::bf16;

use super::avx512::{Avx512, Avx512Bf16, Load};
use super::kernel::padded_stride;

/// Columns per micro-panel (two zmm).
pub(crate) const NR: usize = 32;
/// Most activation rows per micro-kernel call (2·MR accumulators).
pub(crate) const MR: usize = 12;

/// Length of a packed panel of `cols` weight rows over `units` k-units (elements or pairs).
pub(crate) fn panel_len(cols: usize, units: usize) -> usize {
    cols.div_ceil(NR) * units * NR
}

/// Rounds the `[m, k]` f32 rows of `x` to bf16 (nearest even) as u32 pairs: row `r` of `out`
/// starts at `r * padded_stride(ceil(k / 2))`; an odd last pair gets a zero high half.
pub(crate) fn round_pairs(cpu: Avx512Bf16, x: &[f32], m: usize, k: usize, out: &mut [u32]) {
    let kp = k.div_ceil(2);
    for (src, dst) in x.chunks_exact(k).zip(out.chunks_mut(padded_stride(kp))).take(m) {
        let dst: &mut [bf16] = bytemuck::cast_slice_mut(&mut dst[..kp]);
        dst[k..].fill(bf16::ZERO);
        // SAFETY: `cpu` proves AVX-512 F/BW/VL + BF16 are available.
        unsafe { round_row(cpu, src, &mut dst[..k]) };
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(crate) fn round_row(_cpu: Avx512Bf16, src: &[f32], dst: &mut [bf16]) {
    let n = dst.len().min(src.len());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n <= both lengths; unaligned 64-byte load and 32-byte store of
        // same-size plain vector types.
        unsafe {
            let v: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr().add(i))));
            _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), v);
        }
        i += 16;
    }
    for (d, s) in dst[i..n].iter_mut().zip(&src[i..n]) {
        *d = bf16::from_f32(*s);
    }
}

/// Transposes a 16×16 block of 32-bit elements held in `r` (row `i` in `r[i]`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) fn transpose16(r: &mut [__m512i; 16]) {
    let mut a = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // b[4g + j], 128-bit lane L: column 4L + j of rows 4g..4g+4.
    let mut b = [_mm512_setzero_si512(); 16];
    for g in 0..4 {
        b[4 * g] = _mm512_unpacklo_epi64(a[4 * g], a[4 * g + 2]);
        b[4 * g + 1] = _mm512_unpackhi_epi64(a[4 * g], a[4 * g + 2]);
        b[4 * g + 2] = _mm512_unpacklo_epi64(a[4 * g + 1], a[4 * g + 3]);
        b[4 * g + 3] = _mm512_unpackhi_epi64(a[4 * g + 1], a[4 * g + 3]);
    }
    for j in 0..4 {
        let c_lo = _mm512_shuffle_i32x4::<0x88>(b[j], b[4 + j]);
        let c_hi = _mm512_shuffle_i32x4::<0xDD>(b[j], b[4 + j]);
        let d_lo = _mm512_shuffle_i32x4::<0x88>(b[8 + j], b[12 + j]);
        let d_hi = _mm512_shuffle_i32x4::<0xDD>(b[8 + j], b[12 + j]);
        r[j] = _mm512_shuffle_i32x4::<0x88>(c_lo, d_lo);
        r[4 + j] = _mm512_shuffle_i32x4::<0x88>(c_hi, d_hi);
        r[8 + j] = _mm512_shuffle_i32x4::<0xDD>(c_lo, d_lo);
        r[12 + j] = _mm512_shuffle_i32x4::<0xDD>(c_hi, d_hi);
    }
}

/// Mask of the first `n.min(16)` lanes.
#[inline]
fn mask16(n: usize) -> __mmask16 {
    if n >= 16 { u16::MAX } else { (1u16 << n) - 1 }
}

/// Packs `w` rows `row0..row0 + cols` (row stride `k`), elements `k0..k0 + kl`, widened to f32,
/// into micro-panels: `panel[j*kl*32 + kk*32 + c] = w[row0 + 32j + c][k0 + kk]`, zero-padded.
pub(crate) fn pack_f32<W: Load>(
    _cpu: Avx512,
    w: &[W],
    k: usize,
    (row0, cols): (usize, usize),
    (k0, kl): (usize, usize),
    panel: &mut [f32],
) {
    assert!(k0 + kl <= k && (row0 + cols) * k <= w.len() && panel.len() >= panel_len(cols, kl), "bad f32 pack");
    // SAFETY: `_cpu` proves AVX-512 F/BW/VL; the bounds were checked just above.
    unsafe { pack_f32_impl(w, k, row0, cols, k0, kl, panel) }
}

/// # Safety
/// AVX-512 F/BW/VL must be available and the bounds asserted by [`pack_f32`] must hold.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn pack_f32_impl<W: Load>(w: &[W], k: usize, row0: usize, cols: usize, k0: usize, kl: usize, panel: &mut [f32]) {
    let dst = panel.as_mut_ptr();
    for cb in (0..cols).step_by(16) {
        let base = (cb / NR) * kl * NR + cb % NR;
        for kb in (0..kl).step_by(16) {
            let m = mask16(kl - kb);
            let mut r = [_mm512_setzero_si512(); 16];
            for (i, v) in r.iter_mut().enumerate() {
                // Rows past `cols` load nothing (zero mask) from a clamped, valid address.
                let (row, mi) = if cb + i < cols { (cb + i, m) } else { (cols - 1, 0) };
                // SAFETY: row0 + row < row0 + cols and the selected elements k0 + kb .. < k0 + kl
                // <= k lie inside `w` (checked by `pack_f32`); masked lanes are not read.
                *v = _mm512_castps_si512(unsafe { W::load_mask(w.as_ptr().add((row0 + row) * k + k0 + kb), mi) });
            }
            transpose16(&mut r);
            for (kk, v) in r.iter().enumerate() {
                if kb + kk < kl {
                    // SAFETY: offset base + (kb + kk) * 32 + 16 <= panel_len(cols, kl).
                    unsafe { _mm512_storeu_si512(dst.add(base + (kb + kk) * NR).cast(), *v) };
                }
            }
        }
    }
}

/// Packs bf16 pairs: `panel[j*kp*32 + p*32 + c]` = the two bf16 `w[row0 + 32j + c][k0 + 2p ..
/// + 2]` as one u32 (low half first), `kp = ceil(kl / 2)`; an odd last pair has a zero high half.
pub(crate) fn pack_bf16_pairs(
    _cpu: Avx512Bf16,
    w: &[bf16],
    k: usize,
    (row0, cols): (usize, usize),
    (k0, kl): (usize, usize),
    panel: &mut [u32],
) {
    let kp = kl.div_ceil(2);
    assert!(k0 + kl <= k && (row0 + cols) * k <= w.len() && panel.len() >= panel_len(cols, kp), "bad bf16 pack");
    // SAFETY: `_cpu` proves AVX-512 F/BW/VL (+BF16); the bounds were checked just above.
    unsafe { pack_pairs_impl(w, k, row0, cols, k0, kl, panel) }
}

/// # Safety
/// AVX-512 F/BW/VL must be available and the bounds asserted by [`pack_bf16_pairs`] must hold.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn pack_pairs_impl(w: &[bf16], k: usize, row0: usize, cols: usize, k0: usize, kl: usize, panel: &mut [u32]) {
    let kp = kl.div_ceil(2);
    let dst = panel.as_mut_ptr();
    for cb in (0..cols).step_by(16) {
        let base = (cb / NR) * kp * NR + cb % NR;
        for pb in (0..kp).step_by(16) {
            let left = kl - 2 * pb;
            let m: __mmask32 = if left >= 32 { u32::MAX } else { (1u32 << left) - 1 };
            let mut r = [_mm512_setzero_si512(); 16];
            for (i, v) in r.iter_mut().enumerate() {
                // Rows past `cols` load nothing (zero mask) from a clamped, valid address.
                let (row, mi) = if cb + i < cols { (cb + i, m) } else { (cols - 1, 0) };
                // SAFETY: the row is inside `w` and the mask selects elements below k0 + kl <= k
                // (checked by `pack_bf16_pairs`); masked lanes are not read.
                *v = unsafe { _mm512_maskz_loadu_epi16(mi, w.as_ptr().add((row0 + row) * k + k0 + 2 * pb).cast()) };
            }
            transpose16(&mut r);
            for (p, v) in r.iter().enumerate() {
                if pb + p < kp {
                    // SAFETY: offset base + (pb + p) * 32 + 16 <= panel_len(cols, kp).
                    unsafe { _mm512_storeu_si512(dst.add(base + (pb + p) * NR).cast(), *v) };
                }
            }
        }
    }
}

/// Stores (or adds, if `acc_out`) an `R x 32` tile to `out[r][..cols]`.
///
/// # Safety
/// AVX-512 F/BW/VL must be available and each `out[r]` must have `cols <= 32` writable f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn store<const R: usize>(acc: &[[__m512; 2]; R], out: &[*mut f32; R], cols: usize, acc_out: bool) {
    let (m0, m1) = (mask16(cols), mask16(cols.saturating_sub(16)));
    for r in 0..R {
        // SAFETY: the caller guarantees `cols` writable f32 at out[r]; lanes beyond are masked.
        unsafe {
            let (p0, p1) = (out[r], out[r].add(16));
            let (mut v0, mut v1) = (acc[r][0], acc[r][1]);
            if acc_out {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, p0));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, p1));
            }
            _mm512_mask_storeu_ps(p0, m0, v0);
            _mm512_mask_storeu_ps(p1, m1, v1);
        }
    }
}

/// f32 micro-kernel: `out[r][c] (+)= Σ_kk x[kk*R + r] · panel[kk*32 + c]`.
///
/// # Safety
/// AVX-512 F/BW/VL + FMA; `x` has `kl * R` readable f32, `panel` has `kl * 32`, `out[r]` has
/// `cols <= 32` writable f32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn ukernel_f32<const R: usize>(
    x: *const f32,
    panel: *const f32,
    kl: usize,
    out: &[*mut f32; R],
    cols: usize,
    acc_out: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for kk in 0..kl {
        // SAFETY: kk < kl, so panel[kk*32 .. kk*32 + 32] and x[kk*R .. kk*R + R] are in bounds.
        unsafe {
            let w0 = _mm512_loadu_ps(panel.add(kk * NR));
            let w1 = _mm512_loadu_ps(panel.add(kk * NR + 16));
            for (r, a) in acc.iter_mut().enumerate() {
                let xb = _mm512_set1_ps(*x.add(kk * R + r));
                a[0] = _mm512_fmadd_ps(xb, w0, a[0]);
                a[1] = _mm512_fmadd_ps(xb, w1, a[1]);
            }
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe { store(&acc, out, cols, acc_out) }
}

/// bf16-pair micro-kernel: `out[r][c] (+)= Σ_p dot2(x[p*R + r], panel[p*32 + c])`.
///
/// # Safety
/// AVX-512 F/BW/VL + BF16; `x` has `kp * R` readable u32 pairs, `panel` has `kp * 32`,
/// `out[r]` has `cols <= 32` writable f32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn ukernel_bf16<const R: usize>(
    x: *const u32,
    panel: *const u32,
    kp: usize,
    out: &[*mut f32; R],
    cols: usize,
    acc_out: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for p in 0..kp {
        // SAFETY: p < kp, so panel[p*32 .. p*32 + 32] and x[p*R .. p*R + R] are in bounds; the
        // vector transmutes are between same-size plain vector types.
        unsafe {
            let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(panel.add(p * NR).cast()));
            let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(panel.add(p * NR + 16).cast()));
            for (r, a) in acc.iter_mut().enumerate() {
                let xb: __m512bh = std::mem::transmute(_mm512_set1_epi32(*x.add(p * R + r) as i32));
                a[0] = _mm512_dpbf16_ps(a[0], xb, w0);
                a[1] = _mm512_dpbf16_ps(a[1], xb, w1);
            }
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe { store(&acc, out, cols, acc_out) }
}

/// Checks the slices and returns the raw pointers (`x` holds `units * R` elements, out rows
/// are `cols` long).
fn ptrs<const R: usize, X>(x: &[X], units: usize, out: &mut [&mut [f32]], cols: usize) -> (*const X, [*mut f32; R]) {
    assert!(x.len() >= units * R && out.len() == R && cols <= NR, "bad micro-kernel tile");
    let mut op = [std::ptr::null_mut(); R];
    for r in 0..R {
        op[r] = out[r][..cols].as_mut_ptr();
    }
    (x.as_ptr(), op)
}

macro_rules! dispatch_rows {
    ($f:ident, $cpu:expr, $x:expr, $panel:expr, $units:expr, $out:expr, $acc:expr) => {
        match $out.len() {
            1 => $f::<1>($cpu, $x, $panel, $units, $out, $acc),
            2 => $f::<2>($cpu, $x, $panel, $units, $out, $acc),
            3 => $f::<3>($cpu, $x, $panel, $units, $out, $acc),
            4 => $f::<4>($cpu, $x, $panel, $units, $out, $acc),
            5 => $f::<5>($cpu, $x, $panel, $units, $out, $acc),
            6 => $f::<6>($cpu, $x, $panel, $units, $out, $acc),
            7 => $f::<7>($cpu, $x, $panel, $units, $out, $acc),
            8 => $f::<8>($cpu, $x, $panel, $units, $out, $acc),
            9 => $f::<9>($cpu, $x, $panel, $units, $out, $acc),
            10 => $f::<10>($cpu, $x, $panel, $units, $out, $acc),
            11 => $f::<11>($cpu, $x, $panel, $units, $out, $acc),
            12 => $f::<12>($cpu, $x, $panel, $units, $out, $acc),
            13 => $f::<13>($cpu, $x, $panel, $units, $out, $acc),
            14 => $f::<14>($cpu, $x, $panel, $units, $out, $acc),
            r => panic!("micro-kernel with {r} rows"),
        }
    };
}

fn run_f32<const R: usize>(_cpu: Avx512, x: &[f32], panel: &[f32], kl: usize, out: &mut [&mut [f32]], acc: bool) {
    let cols = out.first().map_or(0, |o| o.len());
    let (xp, op) = ptrs::<R, f32>(x, kl, out, cols);
    let panel = &panel[..kl * NR];
    // SAFETY: `_cpu` proves the features; `ptrs` and the slicing above checked every length.
    unsafe { ukernel_f32::<R>(xp, panel.as_ptr(), kl, &op, cols, acc) }
}

fn run_bf16<const R: usize>(_cpu: Avx512Bf16, x: &[u32], panel: &[u32], kp: usize, out: &mut [&mut [f32]], acc: bool) {
    let cols = out.first().map_or(0, |o| o.len());
    let (xp, op) = ptrs::<R, u32>(x, kp, out, cols);
    let panel = &panel[..kp * NR];
    // SAFETY: `_cpu` proves the features; `ptrs` and the slicing above checked every length.
    unsafe { ukernel_bf16::<R>(xp, panel.as_ptr(), kp, &op, cols, acc) }
}

/// `out[r][c] (+)= Σ_kk x[kk * R + r] · panel[kk*32 + c]` for `R = out.len() <= 14` rows (the
/// activations interleaved by [`interleave_rows`]), `c < out[r].len() <= 32` (all `out` rows
/// the same length); adds to `out` when `acc`, else overwrites.
pub(crate) fn micro_f32(cpu: Avx512, x: &[f32], panel: &[f32], kl: usize, out: &mut [&mut [f32]], acc: bool) {
    dispatch_rows!(run_f32, cpu, x, panel, kl, out, acc)
}

/// As [`micro_f32`] over `kp` bf16 pairs (`x` and `panel` hold pairs packed in u32).
pub(crate) fn micro_bf16(cpu: Avx512Bf16, x: &[u32], panel: &[u32], kp: usize, out: &mut [&mut [f32]], acc: bool) {
    dispatch_rows!(run_bf16, cpu, x, panel, kp, out, acc)
}

/// Interleaves `m` rows of `units` elements (row `r` at `src[r * stride..]`) in blocks of
/// [`MR`] rows: the block of rows `r0..r0 + rl` is stored at `r0 * units`, element `u` of its
/// row `r0 + r` at `r0 * units + u * rl + r`, so a micro-kernel reads one contiguous stream.
pub(crate) fn interleave_rows<X: Copy + Default>(src: &[X], stride: usize, m: usize, units: usize) -> Vec<X> {
    let mut out = vec![X::default(); m * units];
    for r0 in (0..m).step_by(MR) {
        let rl = MR.min(m - r0);
        let block = &mut out[r0 * units..(r0 + rl) * units];
        for r in 0..rl {
            let row = &src[(r0 + r) * stride..(r0 + r) * stride + units];
            for (u, v) in row.iter().enumerate() {
                block[u * rl + r] = *v;
            }
        }
    }
    out
}
