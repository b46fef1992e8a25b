//! RoPE on the fused Q/K/V projection plus the write of K/V into a paged cache, for a batch of
//! rows from different sequences (each row at its own position).

use super::paged::{PagedMeta, pool_dims};
use super::rope::{RopeTable, rotate_rows};
use super::{Op, OpContext, check_shape};
use crate::base::{Error, Result};
use crate::tensor::Tensor;

const NAME: &str = "rope_kv_paged";

/// `qkv` `[rows, (n_heads + 2 n_kv_heads) head_dim]` laid out `[q | k | v]` per row. Writes the
/// rotated queries to `q_out` `[rows, n_heads head_dim]` and row `r`'s rotated key and value to
/// slot `meta.slots[r]` of `k_pool`/`v_pool` `[num_blocks, n_kv_heads, block_size, head_dim]`.
pub fn rope_kv_paged(
    qkv: &Tensor,
    q_out: &mut Tensor,
    k_pool: &mut Tensor,
    v_pool: &mut Tensor,
    meta: &PagedMeta,
    table: &RopeTable,
) -> Result<()> {
    let (rows, width) = qkv.dims2(NAME)?;
    let [nb, n_kv, bs, hd] = pool_dims(NAME, k_pool, meta.block_size)?;
    check_shape(NAME, "v pool", v_pool, k_pool.shape())?;
    let q_dim = q_out.dims2(NAME)?.1;
    if hd != table.head_dim() || width != q_dim + 2 * n_kv * hd || q_dim == 0 || !q_dim.is_multiple_of(hd) {
        return Err(Error::op(
            NAME,
            format!("qkv width {width} does not split into q {q_dim} + 2 x {n_kv} KV heads of {hd}"),
        ));
    }
    check_shape(NAME, "q output", q_out, &[rows, q_dim])?;
    meta.validate(NAME, rows, nb)?;
    if let Some(p) = meta.positions.iter().find(|&&p| p as usize >= table.max_pos()) {
        return Err(Error::op(NAME, format!("position {p} beyond the RoPE table ({})", table.max_pos())));
    }
    #[cfg(feature = "cuda")]
    if qkv.is_cuda() {
        return crate::cuda::paged::rope_kv_paged(qkv, q_out, k_pool, v_pool, meta, table, q_dim / hd);
    }
    let kv_dim = n_kv * hd;
    let src = qkv.as_f32()?;
    let (q, kc, vc) = (q_out.as_f32_mut()?, k_pool.as_f32_mut()?, v_pool.as_f32_mut()?);
    let mut k_row = vec![0f32; kv_dim];
    for (r, row) in src.chunks_exact(width).enumerate() {
        let pos = meta.positions[r] as usize;
        let q_row = &mut q[r * q_dim..(r + 1) * q_dim];
        q_row.copy_from_slice(&row[..q_dim]);
        rotate_rows(q_row, q_dim, pos, table);
        k_row.copy_from_slice(&row[q_dim..q_dim + kv_dim]);
        rotate_rows(&mut k_row, kv_dim, pos, table);
        let v_row = &row[q_dim + kv_dim..];
        let (block, off) = (meta.slots[r] as usize / bs, meta.slots[r] as usize % bs);
        for h in 0..n_kv {
            let at = ((block * n_kv + h) * bs + off) * hd;
            kc[at..at + hd].copy_from_slice(&k_row[h * hd..(h + 1) * hd]);
            vc[at..at + hd].copy_from_slice(&v_row[h * hd..(h + 1) * hd]);
        }
    }
    Ok(())
}

/// [`Op`] form: inputs `[qkv]`, outputs `[q_out, k_pool, v_pool]`.
pub struct RopeKvPaged<'a> {
    pub table: &'a RopeTable,
    pub meta: PagedMeta<'a>,
}

impl Op for RopeKvPaged<'_> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn forward(&self, ctx: &mut OpContext) -> Result<()> {
        let qkv = ctx.input(NAME, 0)?;
        let [q_out, k_pool, v_pool] = ctx.outputs else {
            return Err(Error::op(NAME, "expected outputs [q_out, k_pool, v_pool]"));
        };
        rope_kv_paged(qkv, q_out, k_pool, v_pool, &self.meta, self.table)
    }
}
