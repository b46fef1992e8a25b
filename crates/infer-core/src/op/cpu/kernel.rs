//! The interface every instruction set implements ([`Kernel`]), the weight element types
//! ([`Weight`]), and the portable [`Scalar`] kernel.
//!
//! A kernel computes a register tile of dot products: for `R = x.len()` activation rows and
//! `C = w.len()` weight rows, `out[r * C + c] = Σ_i x[r][i] · w[c][i]` over `i < k`, with f32
//! accumulation. Both operands are contiguous along `k` (PyTorch Linear layout), so no
//! transposition is ever needed; the weight rows are widened to f32 in registers.

use half::{bf16, f16};

/// Upper bound on `RMAX * CMAX` over all kernels (size of the tile result buffers).
pub(crate) const MAX_TILE: usize = 32;

/// One instruction set's tile kernels.
pub(crate) trait Kernel: Copy + Send + Sync {
    /// Most activation rows per tile.
    const RMAX: usize;
    /// Weight rows per full tile (smaller tiles are allowed too).
    const CMAX: usize;

    /// Weight rows per tile in the decode kernel for `m` activation rows (`m * cols <=
    /// MAX_TILE`; `dots_*` accept up to this many rows when `x.len() == m`).
    fn gemv_cols(m: usize) -> usize {
        let _ = m;
        Self::CMAX
    }

    /// Tile of dot products with f32 weights (see the module doc). Requires
    /// `1 <= x.len() <= RMAX`, `1 <= w.len() <= CMAX`, every slice at least `k` long and
    /// `out.len() >= x.len() * w.len()`; panics otherwise.
    fn dots_f32(self, x: &[&[f32]], w: &[&[f32]], k: usize, out: &mut [f32]);
    /// As [`Kernel::dots_f32`] with bf16 weights widened on the fly.
    fn dots_bf16(self, x: &[&[f32]], w: &[&[bf16]], k: usize, out: &mut [f32]);
    /// As [`Kernel::dots_f32`] with f16 weights widened on the fly.
    fn dots_f16(self, x: &[&[f32]], w: &[&[f16]], k: usize, out: &mut [f32]);
    /// `dst[i] = src[i]` widened, for `i < dst.len()` (panics if `src` is shorter).
    fn widen_bf16(self, src: &[bf16], dst: &mut [f32]);
    /// `dst[i] = src[i]` widened, for `i < dst.len()` (panics if `src` is shorter).
    fn widen_f16(self, src: &[f16], dst: &mut [f32]);
}

/// A weight element type the kernels read in place.
pub(crate) trait Weight: Copy + Send + Sync + 'static {
    /// Dispatches to the matching `Kernel::dots_*`.
    fn dots<K: Kernel>(kern: K, x: &[&[f32]], w: &[&[Self]], k: usize, out: &mut [f32]);
    /// Widens `dst.len()` elements of `src` into `dst`.
    fn widen<K: Kernel>(kern: K, src: &[Self], dst: &mut [f32]);
    /// One element as f32.
    fn to_f32(self) -> f32;
}

impl Weight for f32 {
    #[inline]
    fn dots<K: Kernel>(kern: K, x: &[&[f32]], w: &[&[f32]], k: usize, out: &mut [f32]) {
        kern.dots_f32(x, w, k, out)
    }
    fn widen<K: Kernel>(_: K, src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(&src[..dst.len()]);
    }
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Weight for bf16 {
    #[inline]
    fn dots<K: Kernel>(kern: K, x: &[&[f32]], w: &[&[bf16]], k: usize, out: &mut [f32]) {
        kern.dots_bf16(x, w, k, out)
    }
    fn widen<K: Kernel>(kern: K, src: &[bf16], dst: &mut [f32]) {
        kern.widen_bf16(src, dst)
    }
    #[inline]
    fn to_f32(self) -> f32 {
        // bf16 is the upper half of an f32: exact widening.
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
}

impl Weight for f16 {
    #[inline]
    fn dots<K: Kernel>(kern: K, x: &[&[f32]], w: &[&[f16]], k: usize, out: &mut [f32]) {
        kern.dots_f16(x, w, k, out)
    }
    fn widen<K: Kernel>(kern: K, src: &[f16], dst: &mut [f32]) {
        kern.widen_f16(src, dst)
    }
    #[inline]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

/// Portable kernel: 8 independent lanes per dot product so the compiler can vectorise it at
/// the target's baseline (SSE2, NEON) without reassociating floating-point sums itself.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Scalar;

const LANES: usize = 8;

fn dot_lanes<W: Weight>(x: &[f32], w: &[W], k: usize) -> f32 {
    let (x, w) = (&x[..k], &w[..k]);
    let mut acc = [0.0f32; LANES];
    let (xc, wc) = (x.chunks_exact(LANES), w.chunks_exact(LANES));
    let (xt, wt) = (xc.remainder(), wc.remainder());
    for (xs, ws) in xc.zip(wc) {
        for l in 0..LANES {
            acc[l] += xs[l] * ws[l].to_f32();
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (a, b) in xt.iter().zip(wt) {
        s += a * b.to_f32();
    }
    s
}

fn scalar_dots<W: Weight>(x: &[&[f32]], w: &[&[W]], k: usize, out: &mut [f32]) {
    let c = w.len();
    for (r, xr) in x.iter().enumerate() {
        for (j, wr) in w.iter().enumerate() {
            out[r * c + j] = dot_lanes(xr, wr, k);
        }
    }
}

impl Kernel for Scalar {
    const RMAX: usize = 4;
    const CMAX: usize = 4;

    fn dots_f32(self, x: &[&[f32]], w: &[&[f32]], k: usize, out: &mut [f32]) {
        scalar_dots(x, w, k, out)
    }
    fn dots_bf16(self, x: &[&[f32]], w: &[&[bf16]], k: usize, out: &mut [f32]) {
        scalar_dots(x, w, k, out)
    }
    fn dots_f16(self, x: &[&[f32]], w: &[&[f16]], k: usize, out: &mut [f32]) {
        scalar_dots(x, w, k, out)
    }
    fn widen_bf16(self, src: &[bf16], dst: &mut [f32]) {
        let n = dst.len();
        dst.iter_mut().zip(&src[..n]).for_each(|(d, s)| *d = s.to_f32());
    }
    fn widen_f16(self, src: &[f16], dst: &mut [f32]) {
        let n = dst.len();
        dst.iter_mut().zip(&src[..n]).for_each(|(d, s)| *d = s.to_f32());
    }
}

/// Row stride (in 4-byte elements) for copies of rows `len` long: an odd multiple of 64 bytes,
/// so the rows a tile reads together map to distinct L1 sets (a 4 KiB multiple would alias).
pub(crate) fn padded_stride(len: usize) -> usize {
    let s = len.div_ceil(16) * 16;
    if (s / 16).is_multiple_of(2) { s + 16 } else { s }
}

/// Portable dot product with 8 independent accumulators (over the shorter slice).
pub(crate) fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b, a.len().min(b.len()))
}
