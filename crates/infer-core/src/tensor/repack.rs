//! Q4_K rows interleaved by eights ([`DType::Q4_Kx8`]): the CPU decode layout of Q4_K weights.
//!
//! A GGUF Q4_K row is a run of 144-byte blocks, and a dot kernel over one row at a time must
//! scale every 32-value sub-block by its own 6-bit scale before the sums can meet. With eight
//! rows side by side, an i32 lane per row, one `vpdpbusd` multiplies 4 values of each of the 8
//! rows by the same 4 activations (broadcast), and the sub-block scale of each row is applied
//! once per 8 rows with one vector multiply (llama.cpp's `block_q4_Kx8` idea; our layout also
//! stores the scales decoded). Rows `8g..8g + 8` and block `b` of each form one
//! [`GROUP_BLOCK`]-byte group block, at `(g · k/256 + b) · GROUP_BLOCK`:
//!
//! | bytes | content |
//! |---|---|
//! | 0..16 | the 8 rows' `d` (f16) |
//! | 16..32 | the 8 rows' `dmin` (f16) |
//! | 32..96 | scales: byte `8j + l` = sub-block `j`'s 6-bit scale in row `l` |
//! | 96..160 | mins: byte `8j + l` = sub-block `j`'s 6-bit min in row `l` |
//! | 160..1184 | packed nibbles: 32 bytes per (`c` in 0..4, `t` in 0..8), 4 per row `l`: bytes `32c + 4t..+4` of row `l`'s 128 |
//!
//! 148 bytes per row and block instead of 144 (the decoded scales). [`unpack_rows`] restores
//! the GGUF bytes exactly, so dequantization and the portable kernel reuse the Q4_K code.

use super::DType;
use crate::base::{Error, Result};
use crate::tensor::quant::scale_min_k4;

/// Rows per group.
pub const GROUP: usize = 8;
/// Bytes of one group block (8 rows × 256 values).
pub const GROUP_BLOCK: usize = 1184;
const Q4K: usize = 144;

fn bad(msg: String) -> Error {
    Error::InvalidArgument(format!("q4_k_x8: {msg}"))
}

/// Checks that `bytes` of `dtype` hold whole groups of rows of `k` values; returns the group count.
fn groups(dtype: DType, bytes: usize, k: usize) -> Result<usize> {
    let row =
        dtype.bytes_for(k).filter(|&r| r > 0).ok_or_else(|| bad(format!("rows of {k} values are not whole blocks")))?;
    if !bytes.is_multiple_of(row * GROUP) {
        return Err(bad(format!("{bytes} bytes of {dtype} are not whole groups of {GROUP} rows of {k} values")));
    }
    Ok(bytes / (row * GROUP))
}

/// `n` rows of `k` values in GGUF Q4_K blocks (`src`) in the interleaved layout. `n` must be a
/// multiple of [`GROUP`] and `k` of 256.
pub fn repack_q4_k(src: &[u8], k: usize) -> Result<Vec<u8>> {
    let ng = groups(DType::Q4_K, src.len(), k)?;
    let (nb, row) = (k / 256, k / 256 * Q4K);
    let mut out = vec![0u8; ng * nb * GROUP_BLOCK];
    for (rows, dst) in src.chunks_exact(GROUP * row).zip(out.chunks_exact_mut(nb * GROUP_BLOCK)) {
        for (b, gb) in dst.chunks_exact_mut(GROUP_BLOCK).enumerate() {
            for l in 0..GROUP {
                let blk = &rows[l * row + b * Q4K..][..Q4K];
                gb[2 * l..2 * l + 2].copy_from_slice(&blk[0..2]);
                gb[16 + 2 * l..16 + 2 * l + 2].copy_from_slice(&blk[2..4]);
                for j in 0..8 {
                    let (s, m) = scale_min_k4(j, &blk[4..16]);
                    gb[32 + 8 * j + l] = s;
                    gb[96 + 8 * j + l] = m;
                }
                for c in 0..4 {
                    for t in 0..8 {
                        let o = 160 + (8 * c + t) * 32 + 4 * l;
                        gb[o..o + 4].copy_from_slice(&blk[16 + 32 * c + 4 * t..][..4]);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The GGUF Q4_K bytes of the whole groups of rows of `k` values in `src` (interleaved), into
/// `dst` (the same number of rows in Q4_K: `src.len() / 148 · 144` bytes).
pub fn unpack_rows(src: &[u8], k: usize, dst: &mut [u8]) -> Result<()> {
    let ng = groups(DType::Q4_Kx8, src.len(), k)?;
    let (nb, row) = (k / 256, k / 256 * Q4K);
    if dst.len() != ng * GROUP * row {
        return Err(bad(format!("{} output bytes for {} rows of {k} values", dst.len(), ng * GROUP)));
    }
    for (grp, rows) in src.chunks_exact(nb * GROUP_BLOCK).zip(dst.chunks_exact_mut(GROUP * row)) {
        for (b, gb) in grp.chunks_exact(GROUP_BLOCK).enumerate() {
            for l in 0..GROUP {
                let blk = &mut rows[l * row + b * Q4K..][..Q4K];
                blk[0..2].copy_from_slice(&gb[2 * l..2 * l + 2]);
                blk[2..4].copy_from_slice(&gb[16 + 2 * l..16 + 2 * l + 2]);
                let sc: [u8; 8] = std::array::from_fn(|j| gb[32 + 8 * j + l]);
                let mn: [u8; 8] = std::array::from_fn(|j| gb[96 + 8 * j + l]);
                blk[4..16].copy_from_slice(&pack_scales(&sc, &mn));
                for c in 0..4 {
                    for t in 0..8 {
                        let o = 160 + (8 * c + t) * 32 + 4 * l;
                        blk[16 + 32 * c + 4 * t..][..4].copy_from_slice(&gb[o..o + 4]);
                    }
                }
            }
        }
    }
    Ok(())
}

/// The 12 packed bytes of eight 6-bit scales and mins (the inverse of [`scale_min_k4`]).
fn pack_scales(sc: &[u8; 8], mn: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        q[j + 4] = (mn[j] & 63) | ((mn[j + 4] >> 4) << 6);
        q[j + 8] = (sc[j + 4] & 0x0f) | ((mn[j + 4] & 0x0f) << 4);
    }
    q
}

/// [`unpack_rows`] into a new buffer: the GGUF Q4_K bytes of `src`'s rows of `k` values.
pub fn to_q4_k(src: &[u8], k: usize) -> Result<Vec<u8>> {
    let mut q4 = vec![0u8; src.len() / DType::Q4_Kx8.block_bytes() * Q4K];
    unpack_rows(src, k, &mut q4)?;
    Ok(q4)
}

/// Dequantizes whole groups of rows of `k` values (interleaved) into `out` (row-major f32).
pub fn dequantize_rows(src: &[u8], k: usize, out: &mut [f32]) -> Result<()> {
    super::quant::dequantize(DType::Q4_K, &to_q4_k(src, k)?, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::quantize::quantize_to_vec;

    #[test]
    fn repack_round_trips_and_dequantizes_alike() {
        let (n, k) = (24, 768);
        let x: Vec<f32> =
            (0..n * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i / 32 % 5) as f32)).collect();
        let q = quantize_to_vec(DType::Q4_K, &x).unwrap();
        let r = repack_q4_k(&q, k).unwrap();
        assert_eq!(r.len(), n * k / 256 * 148);
        let mut back = vec![0u8; q.len()];
        unpack_rows(&r, k, &mut back).unwrap();
        assert_eq!(back, q, "unpack(repack(q)) == q byte for byte");
        let (mut a, mut b) = (vec![0.0; n * k], vec![0.0; n * k]);
        crate::tensor::quant::dequantize(DType::Q4_K, &q, &mut a).unwrap();
        dequantize_rows(&r, k, &mut b).unwrap();
        assert_eq!(a, b);
        // Every 6-bit scale / min pattern survives the packing.
        let sc: [u8; 8] = [0, 63, 17, 32, 48, 1, 62, 15];
        let mn: [u8; 8] = [63, 0, 5, 60, 16, 31, 47, 2];
        let p = pack_scales(&sc, &mn);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &p), (sc[j], mn[j]));
        }
    }

    #[test]
    fn rejects_partial_groups() {
        let q = vec![0u8; 7 * 144]; // 7 rows of 256
        assert!(repack_q4_k(&q, 256).is_err());
        assert!(repack_q4_k(&q[..8 * 144 - 144], 300).is_err());
        let mut out = vec![0u8; 8 * 144];
        assert!(unpack_rows(&[0u8; 8 * 148], 256, &mut out).is_ok());
        assert!(unpack_rows(&[0u8; 8 * 148], 256, &mut out[..100]).is_err());
        assert!(dequantize_rows(&[0u8; 100], 256, &mut [0.0; 256]).is_err());
    }
}
