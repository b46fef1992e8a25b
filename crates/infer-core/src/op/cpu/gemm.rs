//! Matmul drivers: `out[m, n] = x[m, k] · w[n, k]ᵀ` with f32 activations and f32/bf16/f16
//! weights read in place.
//!
//! Work is split over blocks of output columns (= weight rows) with rayon, so each thread
//! streams its own weight rows and writes its own columns of every output row.
//!
//! * [`gemv`] (decode, a few rows): memory-bound. Each weight row is read once, widened to f32
//!   in registers and dotted with all `m` activation rows; several weight rows are in flight
//!   (independent accumulators, several DRAM streams).
//! * [`gemm`] (a few to a few dozen rows, or no AVX-512): a panel of weight rows × `KC` is
//!   widened once into an f32 buffer, then register tiles of dot products run against it.
//! * [`gemm_bf16_wbcast`] (fast bf16 prefill with AVX512_BF16, even k): the activations are
//!   packed 16 rows per vector, the weights are read in place and broadcast, a pair at a time;
//!   see `avx512_wgemm`.
//! * [`gemm_packed_f32`] / [`gemm_packed_bf16dot`] (other prefill on AVX-512): panels are
//!   packed k-major (transposed) once, and an outer-product micro-kernel keeps a 12 × 32
//!   output tile in registers, BLIS style; see `avx512_gemm`.
//!
//! Activation copies and panels use [`padded_stride`] so the rows a tile reads together do
//! not alias in L1 (a 4 KiB row stride, as for k = 1024 f32 or 2048 bf16, would).

use rayon::prelude::*;

use super::kernel::{Kernel, MAX_TILE, Weight, padded_stride};

/// k elements per f32 panel in [`gemm`].
const KC: usize = 1024;
/// k elements per panel of the packed f32 kernel.
#[cfg(target_arch = "x86_64")]
const KC_PACKED_F32: usize = 1024;
/// k elements per panel of the packed bf16-pair kernel.
#[cfg(target_arch = "x86_64")]
const KC_PACKED_BF16: usize = 2048;
/// Target bytes of one converted weight panel (stays in L2 while every row block uses it).
const PANEL_BYTES: usize = 256 * 1024;
/// Below this many multiply-adds a call runs on the calling thread.
const SERIAL_MACS: usize = 1 << 17;
/// Calls with at most this many activation rows (decode) always run on the spinning pool (larger
/// ones too unless [`Knob::PrefillOnPool`](super::tuning::Knob) is 0).
const DECODE_ROWS: usize = 4;
/// Column blocks per thread, for load balance.
const BLOCKS_PER_THREAD: usize = 4;

/// A drivers' output matrix: `m` rows of `n` columns, row `r` starting at `data[r * ld]`
/// (`ld >= n`; `ld > n` writes a column range of a wider matrix, e.g. one part of a fused
/// projection, in place).
pub(crate) struct Out<'a> {
    pub data: &'a mut [f32],
    pub ld: usize,
}

impl<'a> Out<'a> {
    /// A dense `[m, n]` output (`ld = n`).
    #[cfg(test)]
    pub fn dense(data: &'a mut [f32], n: usize) -> Self {
        Out { data, ld: n.max(1) }
    }

    /// Whether `m` rows of `n` columns fit.
    fn holds(&self, m: usize, n: usize) -> bool {
        self.ld >= n && (m == 0 || self.data.len() >= (m - 1) * self.ld + n)
    }
}

fn round_up(v: usize, to: usize) -> usize {
    v.div_ceil(to) * to
}

/// Columns per parallel task: about `BLOCKS_PER_THREAD` tasks per thread, a multiple of `unit`
/// (at least one); the whole of `n` when the call is too small to be worth splitting.
fn block_cols(m: usize, n: usize, k: usize, unit: usize) -> usize {
    if m * n * k < SERIAL_MACS {
        return n.max(1);
    }
    let tasks = rayon::current_num_threads() * BLOCKS_PER_THREAD;
    round_up(n.div_ceil(tasks).max(1), unit)
}

/// Columns per decode task: about [`Knob::DecodeTaskBytes`](super::tuning::Knob) of
/// weight rows, a multiple of `unit`, with at least `BLOCKS_PER_THREAD` tasks per thread when
/// the matrix allows; the whole of `n` when the call is too small to be worth splitting.
fn decode_cols(m: usize, n: usize, k: usize, row_bytes: usize, unit: usize) -> usize {
    if m * n * k < SERIAL_MACS {
        return n.max(1);
    }
    let by_bytes = super::tuning::Knob::DecodeTaskBytes.get() / row_bytes.max(1);
    let by_threads = n.div_ceil(rayon::current_num_threads() * BLOCKS_PER_THREAD);
    round_up(by_bytes.min(by_threads).max(1), unit)
}

/// Splits `out` (`[m, n]` row-major) into blocks of `nb` columns and runs `f(col0, rows)` on
/// each in parallel, where `rows[r]` is output row `r` restricted to the block.
fn par_col_blocks<F>(out: Out<'_>, m: usize, n: usize, nb: usize, f: F)
where
    F: Fn(usize, &mut [&mut [f32]]) + Sync + Send,
{
    let mut blocks: Vec<Vec<&mut [f32]>> = (0..n.div_ceil(nb)).map(|_| Vec::with_capacity(m)).collect();
    for row in out.data.chunks_mut(out.ld).take(m) {
        for (block, part) in blocks.iter_mut().zip(row[..n].chunks_mut(nb)) {
            block.push(part);
        }
    }
    if m <= DECODE_ROWS || (blocks.len() > 1 && super::tuning::Knob::PrefillOnPool.get() != 0) {
        // Short loops, many per forward pass: the spinning pool (see `pool`).
        super::pool::for_each_mut(&mut blocks, |i, rows| f(i * nb, rows));
    } else if blocks.len() == 1 {
        f(0, &mut blocks[0]);
    } else {
        blocks.into_par_iter().enumerate().for_each(|(i, mut rows)| f(i * nb, &mut rows));
    }
}

/// `(stride, copy)`: the `[m, k]` rows of `x` copied with row stride [`padded_stride`]`(k)`.
fn pad_rows(x: &[f32], m: usize, k: usize) -> (usize, Vec<f32>) {
    let stride = padded_stride(k);
    let mut out = vec![0.0; m * stride];
    for (src, dst) in x.chunks_exact(k).zip(out.chunks_exact_mut(stride)).take(m) {
        dst[..k].copy_from_slice(src);
    }
    (stride, out)
}

/// Decode: `m <= K::RMAX` rows, weights widened in registers. `x` is `[m, k]`, `w` is `[n, k]`,
/// `out` is `[m, n]`.
pub(crate) fn gemv<K: Kernel, W: Weight>(kern: K, x: &[f32], w: &[W], out: Out<'_>, m: usize, n: usize, k: usize) {
    debug_assert!(m <= K::RMAX && x.len() >= m * k && w.len() >= n * k && out.holds(m, n));
    let row_bytes = k * size_of::<W>();
    let cols = K::gemv_cols(m);
    let nb = decode_cols(m, n, k, row_bytes, cols);
    let mut xr: [&[f32]; MAX_TILE] = [&[]; MAX_TILE];
    for (r, slot) in xr.iter_mut().enumerate().take(m) {
        *slot = &x[r * k..(r + 1) * k];
    }
    let xr = &xr[..m];
    par_col_blocks(out, m, n, nb, |c0, rows| {
        let ncols = rows.first().map_or(0, |r| r.len());
        let mut acc = [0.0f32; MAX_TILE];
        let mut wr: [&[W]; MAX_TILE] = [&[]; MAX_TILE];
        for cg in (0..ncols).step_by(cols) {
            let cl = cols.min(ncols - cg);
            for (j, slot) in wr.iter_mut().enumerate().take(cl) {
                let row = c0 + cg + j;
                *slot = &w[row * k..(row + 1) * k];
            }
            W::dots(kern, xr, &wr[..cl], k, &mut acc);
            for (r, out_row) in rows.iter_mut().enumerate() {
                out_row[cg..cg + cl].copy_from_slice(&acc[r * cl..(r + 1) * cl]);
            }
        }
    });
}

/// Fast decode (AVX512_BF16): `m <= 4` rows rounded to bf16 pairs once, bf16 weights dotted
/// with `vdpbf16ps` on full 64-byte lines (see `avx512_gemv`).
#[cfg(target_arch = "x86_64")]
pub(crate) fn gemv_bf16dot(
    cpu: super::avx512::Avx512Bf16,
    x: &[f32],
    w: &[half::bf16],
    out: Out<'_>,
    m: usize,
    n: usize,
    k: usize,
) {
    use super::avx512_gemv::{NARROW, RMAX, WIDE, dots, dots_rows, row_at_a_time};
    debug_assert!(m <= RMAX && x.len() >= m * k && w.len() >= n * k && out.holds(m, n));
    let stride = padded_stride(k.div_ceil(2));
    let mut xp = vec![0u32; m * stride];
    super::avx512_gemm::round_pairs(cpu, x, m, k, &mut xp);
    let cols = if m <= 2 { WIDE } else { NARROW };
    let nb = decode_cols(m, n, k, 2 * k, cols);
    let mut xr: [&[u32]; RMAX] = [&[]; RMAX];
    for (r, slot) in xr.iter_mut().enumerate().take(m) {
        *slot = &xp[r * stride..r * stride + k.div_ceil(2)];
    }
    let xr = &xr[..m];
    par_col_blocks(out, m, n, nb, |c0, rows| {
        let ncols = rows.first().map_or(0, |r| r.len());
        let mut acc = [0.0f32; RMAX * WIDE];
        let mut wr: [&[half::bf16]; WIDE] = [&[]; WIDE];
        for cg in (0..ncols).step_by(cols) {
            let cl = cols.min(ncols - cg);
            for (j, slot) in wr.iter_mut().enumerate().take(cl) {
                let row = c0 + cg + j;
                *slot = &w[row * k..(row + 1) * k];
            }
            if row_at_a_time() {
                dots_rows(cpu, xr, &wr[..cl], k, &mut acc);
            } else {
                dots(cpu, xr, &wr[..cl], k, &mut acc);
            }
            for (r, out_row) in rows.iter_mut().enumerate() {
                out_row[cg..cg + cl].copy_from_slice(&acc[r * cl..(r + 1) * cl]);
            }
        }
    });
}

/// Fast bf16 prefill (AVX512_BF16, k even) with the weights read in place: activations packed
/// once in blocks of 16 rows, `6 x (16 x 4)` outer-product tiles that broadcast weight pairs
/// (see `avx512_wgemm`). Each 6-row weight tile comes from DRAM once and is reused from L1/L2
/// by every group of 64 activation rows.
#[cfg(target_arch = "x86_64")]
pub(crate) fn gemm_bf16_wbcast(
    cpu: super::avx512::Avx512Bf16,
    x: &[f32],
    w: &[half::bf16],
    out: Out<'_>,
    m: usize,
    n: usize,
    k: usize,
) {
    debug_assert!(k.is_multiple_of(2) && x.len() >= m * k);
    let xp = super::avx512_wgemm::pack_acts(cpu, x, m, k);
    gemm_bf16_packed(cpu, &xp, w, out, m, n, k);
}

/// [`gemm_bf16_wbcast`] on activations already packed by `avx512_wgemm::pack_acts` (`xp`, for
/// `m` rows of `k`): callers that multiply the same rows by several weight blocks pack once.
#[cfg(target_arch = "x86_64")]
pub(crate) fn gemm_bf16_packed(
    cpu: super::avx512::Avx512Bf16,
    xp: &[u32],
    w: &[half::bf16],
    out: Out<'_>,
    m: usize,
    n: usize,
    k: usize,
) {
    use super::avx512_wgemm::{LANES, VMAX, WR, micro};
    debug_assert!(k.is_multiple_of(2) && xp.len() >= m.div_ceil(LANES) * k / 2 * LANES);
    debug_assert!(w.len() >= n * k && out.holds(m, n));
    let block = k / 2 * LANES; // u32 per packed block of 16 rows
    let blocks = m.div_ceil(LANES);
    let nb = block_cols(m, n, k, WR);
    par_col_blocks(out, m, n, nb, |c0, rows| {
        let ncols = rows.first().map_or(0, |r| r.len());
        for cg in (0..ncols).step_by(WR) {
            let cl = WR.min(ncols - cg);
            let mut wr: [&[half::bf16]; WR] = [&[]; WR];
            for (j, slot) in wr.iter_mut().enumerate().take(cl) {
                let at = (c0 + cg + j) * k;
                *slot = &w[at..at + k];
            }
            // The first activation group prefetches the next weight tile (clamped to rows of this
            // block: prefetch addresses are never dereferenced).
            let next: [*const u32; WR] = std::array::from_fn(|j| {
                let row = c0 + (cg + WR + j).min(ncols - 1);
                w[row * k..].as_ptr().cast()
            });
            for b0 in (0..blocks).step_by(VMAX) {
                let bl = VMAX.min(blocks - b0);
                let mut xs: [&[u32]; VMAX] = [&[]; VMAX];
                for (v, slot) in xs.iter_mut().enumerate().take(bl) {
                    *slot = &xp[(b0 + v) * block..(b0 + v + 1) * block];
                }
                let r0 = b0 * LANES;
                let rl = (bl * LANES).min(m - r0);
                let next = (b0 == 0 && prefetch_next()).then_some(&next);
                micro(cpu, &xs[..bl], &wr[..cl], &mut rows[r0..r0 + rl], cg, next);
            }
        }
    });
}

/// `INFER_CPU_PF=0` turns off the next-tile prefetch of [`gemm_bf16_wbcast`] (A/B timing).
#[cfg(target_arch = "x86_64")]
fn prefetch_next() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("INFER_CPU_PF").map_or(true, |v| v.trim() != "0"))
}

/// Blocked dot-product matmul: weight panels are widened to f32 once per `KC` slice, then
/// `RMAX x CMAX` tiles of dot products run against them for every row block.
pub(crate) fn gemm<K: Kernel, W: Weight>(kern: K, x: &[f32], w: &[W], out: Out<'_>, m: usize, n: usize, k: usize) {
    debug_assert!(K::RMAX * K::CMAX <= MAX_TILE && x.len() >= m * k && w.len() >= n * k && out.holds(m, n));
    let (xs_stride, xp) = pad_rows(x, m, k);
    let kc = k.min(KC);
    let ps = padded_stride(kc);
    let panel_rows = round_up((PANEL_BYTES / (ps * 4)).max(1), K::CMAX);
    let nb = block_cols(m, n, k, panel_rows);
    par_col_blocks(out, m, n, nb, |c0, rows| {
        let ncols = rows.first().map_or(0, |r| r.len());
        let mut panel = vec![0.0f32; panel_rows.min(ncols) * ps];
        let mut acc = [0.0f32; MAX_TILE];
        let mut xs: [&[f32]; MAX_TILE] = [&[]; MAX_TILE];
        for k0 in (0..k).step_by(kc) {
            let kl = kc.min(k - k0);
            for p0 in (0..ncols).step_by(panel_rows) {
                let pl = panel_rows.min(ncols - p0);
                for (j, dst) in panel.chunks_exact_mut(ps).take(pl).enumerate() {
                    let row = c0 + p0 + j;
                    W::widen(kern, &w[row * k + k0..row * k + k0 + kl], &mut dst[..kl]);
                }
                let mut ws: [&[f32]; MAX_TILE] = [&[]; MAX_TILE];
                for r0 in (0..m).step_by(K::RMAX) {
                    let rl = K::RMAX.min(m - r0);
                    for (i, slot) in xs.iter_mut().enumerate().take(rl) {
                        let at = (r0 + i) * xs_stride + k0;
                        *slot = &xp[at..at + kl];
                    }
                    for cg in (0..pl).step_by(K::CMAX) {
                        let cl = K::CMAX.min(pl - cg);
                        for (j, slot) in ws.iter_mut().enumerate().take(cl) {
                            *slot = &panel[(cg + j) * ps..(cg + j) * ps + kl];
                        }
                        kern.dots_f32(&xs[..rl], &ws[..cl], kl, &mut acc);
                        let col = p0 + cg;
                        for (i, out_row) in rows[r0..r0 + rl].iter_mut().enumerate() {
                            let (dst, src) = (&mut out_row[col..col + cl], &acc[i * cl..(i + 1) * cl]);
                            if k0 == 0 {
                                dst.copy_from_slice(src);
                            } else {
                                dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                            }
                        }
                    }
                }
            }
        }
    });
}

/// Prefill on AVX-512 with f32 activations: weight panels widened to f32 and packed once,
/// outer-product micro-kernel.
#[cfg(target_arch = "x86_64")]
pub(crate) fn gemm_packed_f32<W: super::avx512::Load>(
    cpu: super::avx512::Avx512,
    x: &[f32],
    w: &[W],
    out: Out<'_>,
    m: usize,
    n: usize,
    k: usize,
) {
    use super::avx512_gemm::{interleave_rows, micro_f32, pack_f32};
    let xp = interleave_rows(x, k, m, k);
    let x = Rows { x: &xp, units: k, per_unit: 1 };
    packed(
        x,
        out,
        (m, n, k),
        KC_PACKED_F32,
        size_of::<f32>(),
        |rows, ks, panel| pack_f32(cpu, w, k, rows, ks, panel),
        |xs, p, u, o, acc| micro_f32(cpu, xs, p, u, o, acc),
    );
}

/// Fast bf16 prefill (AVX512_BF16): activations rounded to bf16 once, bf16 weight panels
/// packed as k-pairs (no widening) and multiplied with `vdpbf16ps`.
#[cfg(target_arch = "x86_64")]
pub(crate) fn gemm_packed_bf16dot(
    cpu: super::avx512::Avx512Bf16,
    x: &[f32],
    w: &[half::bf16],
    out: Out<'_>,
    m: usize,
    n: usize,
    k: usize,
) {
    use super::avx512_gemm::{interleave_rows, micro_bf16, pack_bf16_pairs, round_pairs};
    let stride = padded_stride(k.div_ceil(2));
    let mut xp = vec![0u32; m * stride];
    round_pairs(cpu, x, m, k, &mut xp);
    let xp = interleave_rows(&xp, stride, m, k.div_ceil(2));
    let x = Rows { x: &xp, units: k.div_ceil(2), per_unit: 2 };
    packed(
        x,
        out,
        (m, n, k),
        KC_PACKED_BF16,
        size_of::<half::bf16>(),
        |rows, ks, panel| pack_bf16_pairs(cpu, w, k, rows, ks, panel),
        |xs, p, u, o, acc| micro_bf16(cpu, xs, p, u, o, acc),
    );
}

/// Activation rows for [`packed`], interleaved in blocks of `MR` rows (`interleave_rows`), each
/// row `units` long; one unit covers `per_unit` k elements (1 for f32, 2 for bf16 pairs).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Rows<'a, X> {
    x: &'a [X],
    units: usize,
    per_unit: usize,
}

/// Packed driver: `pack((row0, cols), (k0, kl), panel)` packs weight rows into micro-panels of
/// `NR` columns over `units = ceil(kl / per_unit)`; `micro(xs, panel, units, out, acc)` runs
/// one `xs.len() x out[0].len()` tile (adding to `out` when `acc`).
#[cfg(target_arch = "x86_64")]
fn packed<X, P, Pack, Micro>(
    x: Rows<'_, X>,
    out: Out<'_>,
    (m, n, k): (usize, usize, usize),
    kc: usize,
    elem_bytes: usize,
    pack: Pack,
    micro: Micro,
) where
    X: Sync,
    P: Copy + Default + Send,
    Pack: Fn((usize, usize), (usize, usize), &mut [P]) + Sync + Send,
    Micro: Fn(&[X], &[P], usize, &mut [&mut [f32]], bool) + Sync + Send,
{
    use super::avx512_gemm::{MR, NR, panel_len};
    let kc = round_up(k.min(kc), 2);
    let panel_cols = round_up((PANEL_BYTES / (kc * elem_bytes)).max(1), NR);
    let nb = block_cols(m, n, k, panel_cols);
    par_col_blocks(out, m, n, nb, |c0, rows| {
        let ncols = rows.first().map_or(0, |r| r.len());
        let mut panel = vec![P::default(); panel_len(panel_cols.min(ncols), kc.div_ceil(x.per_unit))];
        for k0 in (0..k).step_by(kc) {
            let kl = kc.min(k - k0);
            let (u0, units) = (k0 / x.per_unit, kl.div_ceil(x.per_unit));
            for p0 in (0..ncols).step_by(panel_cols) {
                let pl = panel_cols.min(ncols - p0);
                pack((c0 + p0, pl), (k0, kl), &mut panel);
                for r0 in (0..m).step_by(MR) {
                    let rl = MR.min(m - r0);
                    let at = r0 * x.units + u0 * rl;
                    let xs = &x.x[at..at + units * rl];
                    for j in (0..pl).step_by(NR) {
                        let cl = NR.min(pl - j);
                        let mut outs: [&mut [f32]; MR] = Default::default();
                        for (o, row) in outs.iter_mut().zip(rows[r0..r0 + rl].iter_mut()) {
                            *o = &mut row[p0 + j..p0 + j + cl];
                        }
                        micro(xs, &panel[(j / NR) * units * NR..], units, &mut outs[..rl], k0 > 0);
                    }
                }
            }
        }
    });
}
