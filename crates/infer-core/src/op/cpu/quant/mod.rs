//! Fast CPU matmul on GGML block-quantized weights, llama.cpp style.
//!
//! The activations are quantized once per call to 8-bit blocks ([`QActs`]): 32-element
//! blocks with an f32 scale and the block sum for Q8_0/Q4_0/Q4_1 weights (ggml's Q8_0 and
//! Q8_1), 256-element blocks with an f32 scale and 16-element partial sums for Q4_K/Q6_K
//! (ggml's Q8_K). Each weight block is then dotted with the activation blocks in integers
//! (u8 × i8 products summed into i32 lanes), scaled once per block in f32:
//!
//! * AVX-512 VNNI (`vpdpbusd`, 256-bit with AVX512VL) when the CPU has it ([`avx512`]),
//! * AVX2 (`vpmaddubsw` + `vpmaddwd`) otherwise ([`avx2`]; both share `x86.rs`),
//! * portable Rust ([`scalar`]).
//!
//! A kernel reads one weight row and dots it with up to [`ROWS`] activation rows, so a
//! prefill chunk loads each weight row once per [`ROWS`] tokens. The driver here is safe code:
//! rayon over chunks of weight rows (the decode pool, `super::pool`, for one activation row).
//!
//! Residual refinement: 8-bit activations alone lose up to 1/254 of each block's largest value,
//! enough to flip a greedy choice whose logit margin is ~0.1 (llama.cpp answers SmolLM2's
//! "capital of France" with "L'Étoile" for this reason). So every activation row is quantized
//! twice: the value, then its rounding residual (`x - d·q`, again to 8 bits), and both rows are
//! dotted with each weight row in the same kernel call (one weight load). The error drops to
//! ~1/254² of the block maximum (about 15 bits), at twice the integer work.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod matvec;
mod scalar;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

use rayon::prelude::*;

pub(crate) use matvec::matvec_parts;

use super::simd::Isa;
use crate::base::{Error, Result};
use crate::tensor::DType;

/// Activation rows per kernel call (one weight row load serves this many rows).
pub(crate) const ROWS: usize = 4;

/// One weight row of the given dtype (whole blocks) dotted with `acts.len()` (1..=[`ROWS`])
/// activation rows of the matching [`QActs`] format; `out[r]` receives the dot with `acts[r]`.
/// Panics (never reads out of bounds) when a length does not match.
pub(crate) type Kern = fn(DType, &[u8], &[ActRow<'_>], &mut [f32]);

/// Consecutive weight rows (`out.len()` of `row_bytes` bytes each, whole blocks of the dtype)
/// dotted with 1..=[`ROWS`] activation rows; `out[j]` receives the sum over the activation rows
/// of row `j`'s dots (decode: a row and its refinement residual, which add up to the dot).
pub(crate) type RowsKern = fn(DType, &[u8], usize, &[ActRow<'_>], &mut [f32]);

/// Whole groups of 8 interleaved Q4_K rows ([`DType::Q4_Kx8`], `row_bytes` per row) against 1
/// or 2 refined activations (2 or 4 rows: value and residual of each): `out[P·j + p]` = weight
/// row `j` dotted with activation `p`. False (nothing written) for other activation counts.
pub(crate) type X8Kern = fn(&[u8], usize, &[ActRow<'_>], &mut [f32]) -> bool;

/// One quantized activation row: `qs` (k values), `d` (one scale per block), `sums` (the sum
/// of `qs` per 32-block for the 32-element format, per 16 values for the 256-element one) and
/// `ds = d · sum` per entry of `sums` (the mins and offsets of the weights multiply these).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ActRow<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub sums: &'a [i32],
    pub ds: &'a [f32],
}

/// `m` activation rows of `k` values quantized to 8 bits: value `i` of a row is
/// `d[i / block] * qs[i]`.
#[derive(Debug)]
pub(crate) struct QActs {
    /// 32 (Q8_0/Q8_1 style, `|q| <= 127`) or 256 (Q8_K style).
    pub block: usize,
    pub k: usize,
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub sums: Vec<i32>,
    /// `d · sum` per entry of `sums`.
    pub ds: Vec<f32>,
    /// Entries of `sums` per row.
    sums_per_row: usize,
}

impl QActs {
    /// The activation format that `dtype` weights are dotted with.
    pub(crate) fn block_for(dtype: DType) -> usize {
        if dtype.block_size() == 256 { 256 } else { 32 }
    }

    /// Rows `2i` and `2i + 1` hold row `i` of `x` quantized and its rounding residual quantized
    /// (see the module docs): their dots add up to the dot with `x` to ~15 bits. One pass per
    /// block: the residual of a block is formed and quantized while the block is in cache.
    pub(crate) fn quantize_refined(x: &[f32], k: usize, block: usize) -> QActs {
        Self::quantize_rows(x, k, block, true)
    }

    /// Quantizes the `m = x.len() / k` rows of `x` (`k` a multiple of `block`), in parallel over
    /// rows. 32-blocks: `d = amax/127`, `q = round(x/d)` (ggml's `quantize_row_q8_1_ref`, with
    /// an f32 scale). 256-blocks: ggml's `quantize_row_q8_K_ref`. (The matmuls quantize refined
    /// rows; the tests check this single-row form.)
    #[cfg(test)]
    pub(crate) fn quantize(x: &[f32], k: usize, block: usize) -> QActs {
        Self::quantize_rows(x, k, block, false)
    }

    /// [`QActs::quantize`], and with `refined` each row followed by its rounding residual
    /// (`x - d·q` per value) quantized the same way.
    fn quantize_rows(x: &[f32], k: usize, block: usize, refined: bool) -> QActs {
        let m = x.len().checked_div(k).unwrap_or(0);
        let per = if block == 256 { 16 } else { 32 }; // values per entry of `sums`
        let sums_per_row = k / per;
        let r = if refined { 2 } else { 1 }; // output rows per row of x
        let mut a = QActs {
            block,
            k,
            qs: vec![0; r * m * k],
            d: vec![0.0; r * m * k / block],
            sums: vec![0; r * m * sums_per_row],
            ds: Vec::new(),
            sums_per_row,
        };
        if m == 0 || k == 0 {
            return a;
        }
        let rows = a.qs.par_chunks_mut(r * k).zip(a.d.par_chunks_mut(r * k / block));
        let rows = rows.zip(a.sums.par_chunks_mut(r * sums_per_row)).zip(x.par_chunks(k));
        // A decode step's 1-2 rows run on the calling thread: a rayon loop costs more than them.
        rows.with_min_len(8 / r).for_each(|(((qs, d), sums), x)| {
            let (q0, q1) = qs.split_at_mut(k); // q1, d1, s1: the residual row (empty unless refined)
            let (d0, d1) = d.split_at_mut(k / block);
            let (s0, s1) = sums.split_at_mut(sums_per_row);
            let mut res = [0.0f32; 256];
            for (i, xb) in x.chunks_exact(block).enumerate() {
                let (vals, sums) = (i * block..(i + 1) * block, i * block / per..(i + 1) * block / per);
                d0[i] = quantize_block(xb, &mut q0[vals.clone()], &mut s0[sums.clone()]);
                if refined {
                    let (rb, qb, d) = (&mut res[..block], &q0[vals.clone()], d0[i]);
                    for ((r, v), &q) in rb.iter_mut().zip(xb).zip(qb) {
                        *r = v - d * f32::from(q);
                    }
                    d1[i] = quantize_block(rb, &mut q1[vals], &mut s1[sums]);
                }
            }
        });
        a.ds = if block == 32 {
            a.d.iter().zip(&a.sums).map(|(d, s)| d * *s as f32).collect()
        } else {
            // Entry e covers values 16e..16e + 16, in block e / 16 (16 sums per 256-block).
            a.sums.iter().enumerate().map(|(e, s)| a.d[e / 16] * *s as f32).collect()
        };
        a
    }

    /// Row `i`.
    pub(crate) fn row(&self, i: usize) -> ActRow<'_> {
        let (nd, ns) = (self.k / self.block, self.sums_per_row);
        ActRow {
            qs: &self.qs[i * self.k..(i + 1) * self.k],
            d: &self.d[i * nd..(i + 1) * nd],
            sums: &self.sums[i * ns..(i + 1) * ns],
            ds: if self.block == 32 { &self.ds[i * nd..(i + 1) * nd] } else { &self.ds[i * ns..(i + 1) * ns] },
        }
    }
}

/// One block of `x.len()` (32 or 256) values into `q`, with the sums of `q` per 32 (or per 16 for
/// 256-blocks) into `sums`; returns the scale.
fn quantize_block(x: &[f32], q: &mut [i8], sums: &mut [i32]) -> f32 {
    let d = if x.len() == 256 { quantize_q8_k(x, q) } else { quantize_q8_32(x, q) };
    let per = q.len() / sums.len();
    for (s, q) in sums.iter_mut().zip(q.chunks_exact(per)) {
        *s = q.iter().map(|&v| i32::from(v)).sum();
    }
    d
}

fn quantize_q8_32(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, v) in q.iter_mut().zip(x) {
        *q = round_half_away(v * id).clamp(-127, 127) as i8;
    }
    d
}

/// `v.round()` (halves away from zero, as `roundf`) for `|v| < 2^31`, without the libm call
/// that `f32::round` is on baseline x86-64 (no SSE4.1): truncate (`cvttss2si`, exact), then step
/// away from zero when the exact fraction is at least one half. Branch-free, so the callers'
/// loops vectorize. NaN gives 0, as `NaN.round() as i8` does.
#[inline]
fn round_half_away(v: f32) -> i32 {
    let t = v as i32; // saturating; exact truncation for |v| < 2^31
    let frac = v - t as f32; // exact: v and t share the integer part
    t + i32::from(frac >= 0.5) - i32::from(frac <= -0.5)
}

fn quantize_q8_k(x: &[f32], q: &mut [i8]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        q.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (q, v) in q.iter_mut().zip(x) {
        *q = round_ties_even_small((iscale * v).clamp(-127.0, 127.0)) as i8;
    }
    1.0 / iscale
}

/// `v.round_ties_even()` for `|v| <= 2^22`, without the libm call (`roundevenf`) that it is on
/// baseline x86-64: adding and subtracting 1.5·2^23 leaves the integer that round-to-nearest-even
/// picks (f32 has no fraction bits left at that magnitude). Branch-free, so the loop vectorizes.
#[inline]
fn round_ties_even_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    // `black_box`-free: Rust does not reassociate float adds, so this is not folded to `v`.
    (v + MAGIC) - MAGIC
}

/// The dot kernels on `isa`, capped to what the CPU supports (VNNI needs `isa >= Avx512` and
/// AVX512_VNNI, else AVX2, else portable): the per-row [`Kern`] and the row-range [`RowsKern`].
fn family(isa: Isa) -> (Kern, RowsKern) {
    #[cfg(target_arch = "x86_64")]
    {
        if isa >= Isa::Avx512
            && let Some(k) = avx512::kernels()
        {
            return k;
        }
        if isa >= Isa::Avx2
            && let Some(k) = avx2::kernels()
        {
            return k;
        }
    }
    let _ = isa;
    (scalar::run, scalar::run_rows)
}

/// The per-row dot kernel of [`family`].
pub(crate) fn kernel(isa: Isa) -> Kern {
    family(isa).0
}

/// [`family`]'s row-range entry (a loop inside the kernels' target features, no call per row).
pub(crate) fn rows_kernel(isa: Isa) -> RowsKern {
    family(isa).1
}

/// A [`RowsKern`] that calls the per-row kernel `kern` for each weight row (interleaved Q4_K,
/// which has no per-row kernel, goes to the portable row-range kernel: groups unpacked to Q4_K).
fn rows_via(kern: Kern, dtype: DType, w: &[u8], row_bytes: usize, acts: &[ActRow<'_>], out: &mut [f32]) {
    if dtype == DType::Q4_Kx8 {
        return scalar::rows_x8_unpacked(w, row_bytes, acts, out);
    }
    let mut part = [0.0f32; ROWS];
    let part = &mut part[..acts.len().min(ROWS)];
    for (o, wr) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
        kern(dtype, wr, acts, part);
        *o = part.iter().sum();
    }
}

/// The interleaved-Q4_K kernel of the family [`family`] picks on `isa` (none: portable).
fn x8_kernel(isa: Isa) -> Option<X8Kern> {
    #[cfg(target_arch = "x86_64")]
    {
        if isa >= Isa::Avx512
            && let Some(k) = avx512::x8_kernel()
        {
            return Some(k);
        }
        if isa >= Isa::Avx2 {
            return avx2::x8_kernel();
        }
    }
    let _ = isa;
    None
}

/// [`matmul_fast`] of 2+ activation rows on interleaved Q4_K: tasks of up to 8 groups (64
/// weight rows, in L2), each streamed past two activations at a time ([`X8Kern`]); without
/// an x86 family the rows are unpacked to Q4_K (a copy) and go the Q4_K way.
#[allow(clippy::too_many_arguments)]
fn matmul_x8(isa: Isa, w: &[u8], x: &[f32], out: &mut [f32], m: usize, n: usize, k: usize, rb: usize) -> Result<()> {
    use crate::tensor::repack::{GROUP, to_q4_k};
    let Some(kern) = x8_kernel(isa) else {
        return matmul_fast(isa, DType::Q4_K, &to_q4_k(w, k)?, x, out, m, n, k);
    };
    if !n.is_multiple_of(GROUP) {
        return Err(Error::op("matmul", format!("q4_k_x8 weights of {n} rows are not whole groups of {GROUP}")));
    }
    let acts = QActs::quantize_refined(x, k, 256);
    let rows: Vec<ActRow<'_>> = (0..2 * m).map(|i| acts.row(i)).collect();
    let per_task = (n / GROUP / (4 * rayon::current_num_threads())).clamp(1, 8) * GROUP;
    let mut cols = vec![0.0f32; n * m]; // [n, m]
    let failed = std::sync::atomic::AtomicBool::new(false);
    cols.par_chunks_mut(per_task * m).zip(w.par_chunks(per_task * rb)).for_each(|(c, w)| {
        let nr = c.len() / m;
        let mut buf = vec![0.0f32; 2 * nr];
        for (t, pair) in rows.chunks(4).enumerate() {
            let p = pair.len() / 2; // activations in this call
            if !kern(w, rb, pair, &mut buf[..p * nr]) {
                failed.store(true, std::sync::atomic::Ordering::Relaxed); // cannot happen: 2 or 4 rows
            }
            for (j, v) in buf[..p * nr].chunks_exact(p).enumerate() {
                c[j * m + 2 * t..j * m + 2 * t + p].copy_from_slice(v);
            }
        }
    });
    if failed.into_inner() {
        return Err(Error::op("matmul", "q4_k_x8 kernel refused its activation rows".to_string()));
    }
    for (j, c) in cols.chunks_exact(m).enumerate() {
        for (i, v) in c.iter().enumerate() {
            out[i * n + j] = *v;
        }
    }
    Ok(())
}

/// Whether the active kernel family reads [`DType::Q4_Kx8`] (interleaved Q4_K) in place, so
/// that loading should interleave Q4_K matrices: the x86 families (the portable one unpacks
/// each group back to Q4_K rows, slower than reading Q4_K).
pub fn interleaved_kernels() -> bool {
    kernel_name(super::simd::active()) != "scalar"
}

/// Name of the integer-dot family [`kernel`] picks on `isa`: `"avx512vnni"`, `"avx2"` or
/// `"scalar"`.
pub fn kernel_name(isa: Isa) -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if isa >= Isa::Avx512 && avx512::kernels().is_some() {
            return "avx512vnni";
        }
        if isa >= Isa::Avx2 && avx2::kernels().is_some() {
            return "avx2";
        }
    }
    let _ = isa;
    "scalar"
}

/// `out[i, j] = Σ_l x[i, l] · w[j, l]` with `w` `[n, k]` in `dtype` blocks, activations
/// quantized to 8 bits ([`QActs`]). Errors when `k` is not whole blocks or a length is off.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_fast(
    isa: Isa,
    dtype: DType,
    w: &[u8],
    x: &[f32],
    out: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
) -> Result<()> {
    let bad = |msg: String| Err(Error::op("matmul", msg));
    let Some(row_bytes) = dtype.bytes_for(k).filter(|_| dtype.is_quantized()) else {
        return bad(format!("{dtype} weight rows of {k} elements are not whole blocks"));
    };
    if w.len() != n * row_bytes || x.len() != m * k || out.len() != m * n {
        return bad(format!(
            "{dtype} matmul [{m}, {k}] x [{n}, {k}]: lengths {} / {} / {}",
            x.len(),
            w.len(),
            out.len()
        ));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        out.fill(0.0); // the empty sum
        return Ok(());
    }
    if m == 1 {
        // Decode: quantized once, one row-range kernel call per task (see `matvec`).
        return matvec_parts(isa, &[(dtype, w)], x, out);
    }
    if dtype == DType::Q4_Kx8 {
        return matmul_x8(isa, w, x, out, m, n, k, row_bytes);
    }
    let kern = kernel(isa);
    // Rows 2i, 2i + 1: value and residual of activation row i (module docs).
    let acts = QActs::quantize_refined(x, k, QActs::block_for(dtype));
    let rows: Vec<ActRow<'_>> = (0..2 * m).map(|i| acts.row(i)).collect();
    // Weight rows per task: enough tasks to balance (4 per thread), at most 64 rows.
    let per_task = (n / (4 * rayon::current_num_threads())).clamp(1, 64);
    // [n, 2m]: each task writes the outputs of its weight rows, summed and transposed at the end.
    let m2 = 2 * m;
    let mut cols = vec![0.0f32; n * m2];
    // Activation groups outer: a group ([`ROWS`] rows) stays in L1 while the task's weight rows
    // (at most 64, in L2) stream past it, instead of every weight row re-reading all of `x`.
    cols.par_chunks_mut(per_task * m2).zip(w.par_chunks(per_task * row_bytes)).for_each(|(c, w)| {
        for (g, a) in rows.chunks(ROWS).enumerate() {
            let i0 = g * ROWS;
            for (c, w) in c.chunks_exact_mut(m2).zip(w.chunks_exact(row_bytes)) {
                kern(dtype, w, a, &mut c[i0..i0 + a.len()]);
            }
        }
    });
    for (j, c) in cols.chunks_exact(m2).enumerate() {
        for (i, v) in c.chunks_exact(2).enumerate() {
            out[i * n + j] = v[0] + v[1];
        }
    }
    Ok(())
}
