//! Matmul drivers: `out[m, n] = x[m, k] · w[n, k]ᵀ` with f32 activations and f32/bf16/f16
//! weights read in place.
//!
//! Work is split over blocks of output columns (= weight rows) with rayon, so each thread
//! streams its own weight rows and writes its own columns of every output row.
//!
//! * [`gemv`] (decode, `m <= RMAX`): memory-bound. Each weight row is read once, widened to
//!   f32 in registers and multiplied with all `m` activation rows; several weight rows are
//!   in flight at once (independent accumulators, several DRAM streams).
//! * [`gemm`] (prefill): compute-bound. A panel of weight rows × `KC` columns is converted once
//!   into a cache-resident buffer (f32, or bf16 for the fast path), then every block of
//!   `RMAX` activation rows runs register tiles against it. Panels are contiguous, so the tile
//!   loads are sequential and TLB-friendly.

use rayon::prelude::*;

use super::kernel::{Kernel, MAX_TILE, Weight};

/// Maximum k elements per panel (the panel and an `RMAX x KC` activation block stay in L2/L1).
const KC: usize = 1024;
/// As [`KC`] for the packed AVX-512 f32 kernel.
#[cfg(target_arch = "x86_64")]
const KC_F32: usize = 512;
/// As [`KC`] for the packed AVX-512 bf16-pair kernel.
#[cfg(target_arch = "x86_64")]
const KC_BF16: usize = 1024;
/// Target bytes of one converted weight panel (fits in L2 alongside the activation block).
const PANEL_BYTES: usize = 128 * 1024;
/// Below this many multiply-adds a call runs on the calling thread.
const SERIAL_MACS: usize = 1 << 17;
/// Column blocks per thread, for load balance.
const BLOCKS_PER_THREAD: usize = 4;

/// How a gemm call is cut into blocks.
#[derive(Clone, Copy, Debug)]
struct Blocking {
    /// Activation rows per register tile.
    rmax: usize,
    /// Weight rows per register tile.
    cmax: usize,
    /// k elements per panel.
    kc: usize,
    /// Weight rows per panel (multiple of `cmax`).
    panel_rows: usize,
    /// Output columns per parallel task (multiple of `panel_rows`).
    block_cols: usize,
}

fn round_up(v: usize, to: usize) -> usize {
    v.div_ceil(to) * to
}

/// Columns per parallel task: about `BLOCKS_PER_THREAD` tasks per thread, at least `min_cols`,
/// a multiple of `unit`; the whole of `n` when the call is too small to be worth splitting.
fn block_cols(m: usize, n: usize, k: usize, unit: usize, min_cols: usize) -> usize {
    if m * n * k < SERIAL_MACS {
        return n.max(1);
    }
    let tasks = rayon::current_num_threads() * BLOCKS_PER_THREAD;
    round_up(n.div_ceil(tasks).max(min_cols), unit)
}

/// Splits `out` (`[m, n]` row-major) into blocks of `nb` columns and runs `f(col0, rows)` on
/// each in parallel, where `rows[r]` is output row `r` restricted to the block.
fn par_col_blocks<F>(out: &mut [f32], m: usize, n: usize, nb: usize, f: F)
where
    F: Fn(usize, &mut [&mut [f32]]) + Sync + Send,
{
    let mut blocks: Vec<Vec<&mut [f32]>> = (0..n.div_ceil(nb)).map(|_| Vec::with_capacity(m)).collect();
    for row in out.chunks_mut(n).take(m) {
        for (block, part) in blocks.iter_mut().zip(row.chunks_mut(nb)) {
            block.push(part);
        }
    }
    if blocks.len() == 1 {
        f(0, &mut blocks[0]);
    } else {
        blocks.into_par_iter().enumerate().for_each(|(i, mut rows)| f(i * nb, &mut rows));
    }
}

/// Decode: `m <= K::RMAX` rows, weights widened in registers. `x` is `[m, k]`, `w` is `[n, k]`,
/// `out` is `[m, n]`.
pub(crate) fn gemv<K: Kernel, W: Weight>(kern: K, x: &[f32], w: &[W], out: &mut [f32], m: usize, n: usize, k: usize) {
    debug_assert!(m <= K::RMAX && x.len() >= m * k && w.len() >= n * k && out.len() >= m * n);
    let row_bytes = k * size_of::<W>();
    let nb = block_cols(m, n, k, K::CMAX, (64 * 1024usize).div_ceil(row_bytes.max(1)));
    let mut xr: [&[f32]; MAX_TILE] = [&[]; MAX_TILE];
    for (r, slot) in xr.iter_mut().enumerate().take(m) {
        *slot = &x[r * k..(r + 1) * k];
    }
    let xr = &xr[..m];
    par_col_blocks(out, m, n, nb, |c0, rows| {
        let ncols = rows.first().map_or(0, |r| r.len());
        let mut acc = [0.0f32; MAX_TILE];
        let mut wr: [&[W]; MAX_TILE] = [&[]; MAX_TILE];
        for cg in (0..ncols).step_by(K::CMAX) {
            let cl = K::CMAX.min(ncols - cg);
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

/// Prefill with f32 activations: weight panels are converted to f32 once, then reused by all
/// `m` rows.
pub(crate) fn gemm<K: Kernel, W: Weight>(kern: K, x: &[f32], w: &[W], out: &mut [f32], m: usize, n: usize, k: usize) {
    let b = blocking(K::RMAX, K::CMAX, size_of::<f32>(), m, n, k);
    blocked(
        x,
        w,
        out,
        (m, n, k),
        b,
        |src, dst| W::widen(kern, src, dst),
        |xs, ws, kl, acc| kern.dots_f32(xs, ws, kl, acc),
    );
}

fn blocking(rmax: usize, cmax: usize, elem_bytes: usize, m: usize, n: usize, k: usize) -> Blocking {
    let env = |n: &str, d: usize| std::env::var(n).ok().and_then(|v| v.parse().ok()).unwrap_or(d); // TUNE
    let kc = k.min(env("T_KC", KC) / elem_bytes * 4).max(1);
    let panel_rows = round_up((env("T_PB", PANEL_BYTES) / (kc * elem_bytes)).max(1), cmax);
    let block_cols = block_cols(m, n, k, panel_rows, panel_rows);
    Blocking { rmax, cmax, kc, panel_rows, block_cols }
}

/// Generic blocked driver. `conv` copies/converts one weight row segment into the panel
/// buffer; `tile(xs, ws, kl, acc)` computes `acc[r * ws.len() + c] = Σ xs[r]·ws[c]` over `kl`.
fn blocked<X, W, V, Conv, Tile>(
    x: &[X],
    w: &[W],
    out: &mut [f32],
    (m, n, k): (usize, usize, usize),
    b: Blocking,
    conv: Conv,
    tile: Tile,
) where
    X: Sync,
    W: Sync,
    V: Copy + Default + Send,
    Conv: Fn(&[W], &mut [V]) + Sync + Send,
    Tile: Fn(&[&[X]], &[&[V]], usize, &mut [f32]) + Sync + Send,
{
    debug_assert!(b.rmax * b.cmax <= MAX_TILE && x.len() >= m * k && w.len() >= n * k && out.len() >= m * n);
    par_col_blocks(out, m, n, b.block_cols, |c0, rows| {
        let ncols = rows.first().map_or(0, |r| r.len());
        let mut panel = vec![V::default(); b.panel_rows.min(ncols) * b.kc];
        let mut acc = [0.0f32; MAX_TILE];
        let mut xs: [&[X]; MAX_TILE] = [&[]; MAX_TILE];
        for k0 in (0..k).step_by(b.kc) {
            let kl = b.kc.min(k - k0);
            for p0 in (0..ncols).step_by(b.panel_rows) {
                let pl = b.panel_rows.min(ncols - p0);
                for (j, dst) in panel.chunks_exact_mut(kl).take(pl).enumerate() {
                    let row = c0 + p0 + j;
                    conv(&w[row * k + k0..row * k + k0 + kl], dst);
                }
                let mut ws: [&[V]; MAX_TILE] = [&[]; MAX_TILE];
                for r0 in (0..m).step_by(b.rmax) {
                    let rl = b.rmax.min(m - r0);
                    for (i, slot) in xs.iter_mut().enumerate().take(rl) {
                        let row = r0 + i;
                        *slot = &x[row * k + k0..row * k + k0 + kl];
                    }
                    for cg in (0..pl).step_by(b.cmax) {
                        let cl = b.cmax.min(pl - cg);
                        for (j, slot) in ws.iter_mut().enumerate().take(cl) {
                            *slot = &panel[(cg + j) * kl..(cg + j + 1) * kl];
                        }
                        tile(&xs[..rl], &ws[..cl], kl, &mut acc);
                        let col = p0 + cg;
                        for (i, out_row) in rows[r0..r0 + rl].iter_mut().enumerate() {
                            let dst = &mut out_row[col..col + cl];
                            let src = &acc[i * cl..(i + 1) * cl];
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
/// outer-product micro-kernel (see `avx512_gemm`).
#[cfg(target_arch = "x86_64")]
pub(crate) fn gemm_packed_f32<W: super::avx512::Load>(
    cpu: super::avx512::Avx512,
    x: &[f32],
    w: &[W],
    out: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
) {
    use super::avx512_gemm::{micro_f32, pack_f32, pad_rows, padded_stride};
    let stride = padded_stride(k);
    let mut xp = vec![0.0f32; m * stride];
    pad_rows(x, m, k, &mut xp);
    let b = packed_blocking(m, n, k, KC_F32, size_of::<f32>());
    packed(
        &xp,
        stride,
        1,
        w,
        out,
        (m, n, k),
        b,
        |rows, ks, panel| pack_f32(cpu, w, k, rows, ks, panel),
        |xs, p, u, o, acc| micro_f32(cpu, xs, p, u, o, acc),
    );
}

/// Fast bf16 prefill (AVX512_BF16): activations rounded to bf16 once, bf16 weight panels
/// packed as pairs (no widening) and multiplied with `vdpbf16ps`.
#[cfg(target_arch = "x86_64")]
pub(crate) fn gemm_packed_bf16dot(
    cpu: super::avx512::Avx512Bf16,
    x: &[f32],
    w: &[half::bf16],
    out: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
) {
    use super::avx512_gemm::{micro_bf16, pack_bf16_pairs, padded_stride, round_pairs};
    let stride = padded_stride(k.div_ceil(2));
    let mut xp = vec![0u32; m * stride];
    round_pairs(cpu, x, m, k, &mut xp);
    let b = packed_blocking(m, n, k, KC_BF16, size_of::<half::bf16>());
    packed(
        &xp,
        stride,
        2,
        w,
        out,
        (m, n, k),
        b,
        |rows, ks, panel| pack_bf16_pairs(cpu, w, k, rows, ks, panel),
        |xs, p, u, o, acc| micro_bf16(cpu, xs, p, u, o, acc),
    );
}

#[cfg(target_arch = "x86_64")]
fn packed_blocking(m: usize, n: usize, k: usize, kc: usize, elem_bytes: usize) -> Blocking {
    use super::avx512_gemm::{MR, NR};
    let env = |n: &str, d: usize| std::env::var(n).ok().and_then(|v| v.parse().ok()).unwrap_or(d); // TUNE
    let kc = k.min(env(if elem_bytes == 4 { "T_KC" } else { "T_KCB" }, kc)).max(1);
    let kc = round_up(kc, 2);
    let panel_rows = round_up((env("T_PB", PANEL_BYTES) / (kc * elem_bytes)).max(1), NR);
    let block_cols = block_cols(m, n, k, panel_rows, panel_rows);
    Blocking { rmax: MR, cmax: NR, kc, panel_rows, block_cols }
}

/// Packed driver: `pack((row0, cols), (k0, kl), panel)` packs weight rows into micro-panels of
/// `NR` columns over `units = ceil(kl / per_unit)` k-units; `micro(xs, panel, units, out, acc)`
/// runs one `xs.len() x out[0].len()` tile. `x` rows have `x_stride` units.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn packed<X, W, P, Pack, Micro>(
    x: &[X],
    x_stride: usize,
    per_unit: usize,
    w: &[W],
    out: &mut [f32],
    (m, n, k): (usize, usize, usize),
    b: Blocking,
    pack: Pack,
    micro: Micro,
) where
    X: Sync,
    P: Copy + Default + Send,
    Pack: Fn((usize, usize), (usize, usize), &mut [P]) + Sync + Send,
    Micro: Fn(&[&[X]], &[P], usize, &mut [&mut [f32]], bool) + Sync + Send,
{
    use super::avx512_gemm::{MR, NR, panel_len};
    debug_assert!(w.len() >= n * k && x.len() >= m * x_stride && out.len() >= m * n);
    par_col_blocks(out, m, n, b.block_cols, |c0, rows| {
        let ncols = rows.first().map_or(0, |r| r.len());
        let mut panel = vec![P::default(); panel_len(b.panel_rows.min(ncols), b.kc.div_ceil(per_unit))];
        let mut xs: [&[X]; MR] = [&[]; MR];
        for k0 in (0..k).step_by(b.kc) {
            let kl = b.kc.min(k - k0);
            let (u0, units) = (k0 / per_unit, kl.div_ceil(per_unit));
            for p0 in (0..ncols).step_by(b.panel_rows) {
                let pl = b.panel_rows.min(ncols - p0);
                if std::env::var("T_NOPACK").is_err() || (p0 == 0 && k0 == 0) {
                    pack((c0 + p0, pl), (k0, kl), &mut panel);
                } // TUNE
                if std::env::var("T_NOMICRO").is_ok() {
                    continue;
                } // TUNE
                for r0 in (0..m).step_by(MR) {
                    let rl = MR.min(m - r0);
                    for (i, slot) in xs.iter_mut().enumerate().take(rl) {
                        *slot = &x[(r0 + i) * x_stride + u0..(r0 + i) * x_stride + u0 + units];
                    }
                    for j in (0..pl).step_by(NR) {
                        let cl = NR.min(pl - j);
                        let mut outs: [&mut [f32]; MR] = Default::default();
                        for (o, row) in outs.iter_mut().zip(rows[r0..r0 + rl].iter_mut()) {
                            *o = &mut row[p0 + j..p0 + j + cl];
                        }
                        micro(&xs[..rl], &panel[(j / NR) * units * NR..], units, &mut outs[..rl], k0 > 0);
                    }
                }
            }
        }
    });
}
