//! Portable integer dot kernels (the reference the SIMD kernels are tested against).

use half::f16;

use super::ActRow;
#[cfg(doc)]
use super::Kern;
use crate::tensor::DType;
use crate::tensor::quant::scale_min_k4;

/// The portable kernels ([`Kern`]); float dtypes leave `out` untouched.
pub(super) fn run(dtype: DType, w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    match dtype {
        DType::Q8_0 => q8_0(w, acts, out),
        DType::Q4_0 => q4_0(w, acts, out),
        DType::Q4_1 => q4_1(w, acts, out),
        DType::Q4_K => q4_k(w, acts, out),
        DType::Q6_K => q6_k(w, acts, out),
        // One row of interleaved groups does not exist: the drivers send Q4_Kx8 only to the
        // row-range kernels (`run_rows`). NaN makes a wrong route visible in any result.
        DType::Q4_Kx8 => out.fill(f32::NAN),
        DType::F32 | DType::BF16 | DType::F16 => {}
    }
}

/// [`RowsKern`](super::RowsKern) over [`run`].
pub(super) fn run_rows(dtype: DType, w: &[u8], row_bytes: usize, acts: &[ActRow<'_>], out: &mut [f32]) {
    super::rows_via(run, dtype, w, row_bytes, acts, out);
}

/// The row-range kernel of interleaved Q4_K (whole groups, `row_bytes` per row) on any CPU: each
/// group unpacked to Q4_K rows, then the portable Q4_K kernel.
pub(super) fn rows_x8_unpacked(w: &[u8], row_bytes: usize, acts: &[ActRow<'_>], out: &mut [f32]) {
    use crate::tensor::repack::{GROUP, unpack_rows};
    let nb = row_bytes / DType::Q4_Kx8.block_bytes(); // blocks per row
    let (k, q4_row) = (nb * 256, nb * DType::Q4_K.block_bytes());
    let mut rows = vec![0u8; GROUP * q4_row];
    for (grp, o) in w.chunks_exact(GROUP * row_bytes).zip(out.chunks_mut(GROUP)) {
        if unpack_rows(grp, k, &mut rows).is_err() {
            o.fill(f32::NAN); // cannot happen: a whole group of whole blocks, sized above
            continue;
        }
        super::rows_via(run, DType::Q4_K, &rows, q4_row, acts, o);
    }
}

#[inline]
pub(super) fn f16le(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// `Σ w[i]·a[i]` over `N` values (fixed length: the compiler vectorizes it).
#[inline]
fn idot<const N: usize>(w: &[i8], a: &[i8]) -> i32 {
    w[..N].iter().zip(&a[..N]).map(|(&w, &a)| i32::from(w) * i32::from(a)).sum()
}

/// Walks the `bb`-byte blocks of `w`; `unpack` writes block `b`'s integer values (offset
/// included where the format has one) and returns its per-block data; `dot` then adds block
/// `b`'s contribution for one activation row to that row's sum. Each block is unpacked once
/// for all rows.
#[inline]
fn blocks<const N: usize, D: Copy>(
    w: &[u8],
    bb: usize,
    acts: &[ActRow<'_>],
    out: &mut [f32],
    unpack: impl Fn(&[u8], &mut [i8; N]) -> D,
    dot: impl Fn(&[i8; N], D, &ActRow<'_>, usize) -> f32,
) {
    let mut q = [0i8; N];
    out.fill(0.0);
    for (b, blk) in w.chunks_exact(bb).enumerate() {
        let data = unpack(blk, &mut q);
        for (o, a) in out.iter_mut().zip(acts) {
            *o += dot(&q, data, a, b);
        }
    }
}

/// The values of a 32-element 4-bit block: low nibbles are elements 0..16, high 16..32.
#[inline]
fn nibbles(q: &[u8], offset: i8, out: &mut [i8; 32]) {
    for j in 0..16 {
        out[j] = (q[j] & 0x0f) as i8 - offset;
        out[j + 16] = (q[j] >> 4) as i8 - offset;
    }
}

pub(super) fn q8_0(w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    let unpack = |blk: &[u8], q: &mut [i8; 32]| {
        q.iter_mut().zip(&blk[2..34]).for_each(|(q, &v)| *q = v as i8);
        f16le(blk, 0)
    };
    blocks(w, 34, acts, out, unpack, |q, dw, a, b| dw * a.d[b] * idot::<32>(q, &a.qs[32 * b..]) as f32);
}

pub(super) fn q4_0(w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    let unpack = |blk: &[u8], q: &mut [i8; 32]| {
        nibbles(&blk[2..18], 8, q);
        f16le(blk, 0)
    };
    blocks(w, 18, acts, out, unpack, |q, dw, a, b| dw * a.d[b] * idot::<32>(q, &a.qs[32 * b..]) as f32);
}

pub(super) fn q4_1(w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    let unpack = |blk: &[u8], q: &mut [i8; 32]| {
        nibbles(&blk[4..20], 0, q);
        (f16le(blk, 0), f16le(blk, 2))
    };
    // Σ (d·q + m)·a = d·Σ q·a + m·Σ a.
    let dot = |q: &[i8; 32], (dw, mw): (f32, f32), a: &ActRow<'_>, b: usize| {
        a.d[b] * (dw * idot::<32>(q, &a.qs[32 * b..]) as f32 + mw * a.sums[b] as f32)
    };
    blocks(w, 20, acts, out, unpack, dot);
}

pub(super) fn q4_k(w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    let unpack = |blk: &[u8], q: &mut [i8; 256]| {
        // 64 values per 32 bytes: the low nibbles (sub-block 2c), then the high ones (2c + 1).
        for (q, bytes) in q.chunks_exact_mut(64).zip(blk[16..144].chunks_exact(32)) {
            let (lo, hi) = q.split_at_mut(32);
            for ((lo, hi), &v) in lo.iter_mut().zip(hi).zip(bytes) {
                (*lo, *hi) = ((v & 0x0f) as i8, (v >> 4) as i8);
            }
        }
        let (mut sc, mut mn) = ([0i32; 8], [0i32; 8]);
        for j in 0..8 {
            let (s, m) = scale_min_k4(j, &blk[4..16]);
            (sc[j], mn[j]) = (i32::from(s), i32::from(m));
        }
        (f16le(blk, 0), f16le(blk, 2), sc, mn)
    };
    let dot = |q: &[i8; 256], (dw, dmin, sc, mn): (f32, f32, [i32; 8], [i32; 8]), a: &ActRow<'_>, b: usize| {
        let (aq, sums) = (&a.qs[256 * b..256 * b + 256], &a.sums[16 * b..16 * b + 16]);
        let (mut sumi, mut summ) = (0i32, 0i32);
        for j in 0..8 {
            sumi += sc[j] * idot::<32>(&q[32 * j..], &aq[32 * j..]);
            summ += mn[j] * (sums[2 * j] + sums[2 * j + 1]);
        }
        a.d[b] * (dw * sumi as f32 - dmin * summ as f32)
    };
    blocks(w, 144, acts, out, unpack, dot);
}

pub(super) fn q6_k(w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    let unpack = |blk: &[u8], q: &mut [i8; 256]| {
        // Each half (128 values): 4 runs of 32, from the low/high nibbles of 64 bytes of ql
        // and 2-bit fields of 32 bytes of qh.
        for h in 0..2 {
            let (ql, qh) = (&blk[64 * h..64 * h + 64], &blk[128 + 32 * h..160 + 32 * h]);
            for t in 0..4 {
                let (lo, shift) = (&ql[32 * (t & 1)..32 * (t & 1) + 32], 4 * (t / 2));
                let run = &mut q[128 * h + 32 * t..128 * h + 32 * t + 32];
                for i in 0..32 {
                    let v = ((lo[i] >> shift) & 0x0f) | (((qh[i] >> (2 * t)) & 3) << 4);
                    run[i] = v as i8 - 32;
                }
            }
        }
        let sc: [i32; 16] = std::array::from_fn(|g| i32::from(blk[192 + g] as i8));
        (f16le(blk, 208), sc)
    };
    let dot = |q: &[i8; 256], (dw, sc): (f32, [i32; 16]), a: &ActRow<'_>, b: usize| {
        let aq = &a.qs[256 * b..256 * b + 256];
        let mut sumi = 0i32;
        for g in 0..16 {
            sumi += sc[g] * idot::<16>(&q[16 * g..], &aq[16 * g..]);
        }
        dw * a.d[b] * sumi as f32
    };
    blocks(w, 210, acts, out, unpack, dot);
}
