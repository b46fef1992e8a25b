//! RoPE on the fused Q/K/V projection plus the KV-cache write, in one op (one kernel on GPU).

use super::rope::{RopeTable, rotate_rows};
use super::{Op, OpContext, Positions, check_shape};
use crate::base::{Error, Result};
use crate::tensor::Tensor;

const NAME: &str = "rope_kv";

/// `qkv` `[seq, (n_heads + 2 n_kv_heads) head_dim]` laid out `[q | k | v]` per row, row `i` at
/// position `pos.start + i`. Writes the rotated queries to `q_out` `[seq, n_heads head_dim]` and
/// the rotated keys and the values into `k_cache`/`v_cache` `[n_kv_heads, ctx, head_dim]`.
pub fn rope_kv(
    qkv: &Tensor,
    q_out: &mut Tensor,
    k_cache: &mut Tensor,
    v_cache: &mut Tensor,
    pos: &Positions,
    table: &RopeTable,
) -> Result<()> {
    let (seq, width) = qkv.dims2(NAME)?;
    let [n_kv, ctx, hd] = k_cache.shape()[..] else {
        return Err(Error::op(NAME, format!("k cache must be [n_kv_heads, ctx, head_dim], got {:?}", k_cache.shape())));
    };
    check_shape(NAME, "v cache", v_cache, k_cache.shape())?;
    let q_dim = q_out.dims2(NAME)?.1;
    if hd != table.head_dim() || width != q_dim + 2 * n_kv * hd || q_dim == 0 || !q_dim.is_multiple_of(hd) {
        return Err(Error::op(
            NAME,
            format!(
                "qkv width {width} does not split into q {q_dim} + 2 x {n_kv} KV heads of {hd} (rope head_dim {})",
                table.head_dim()
            ),
        ));
    }
    check_shape(NAME, "q output", q_out, &[seq, q_dim])?;
    if pos.start + seq > ctx.min(table.max_pos()) {
        return Err(Error::op(NAME, format!("positions up to {} exceed the cache length {ctx}", pos.start + seq)));
    }
    #[cfg(feature = "cuda")]
    if qkv.is_cuda() {
        return crate::cuda::ops::rope_kv(qkv, q_out, k_cache, v_cache, pos, table, q_dim / hd);
    }
    let kv_dim = n_kv * hd;
    let src = qkv.as_f32()?;
    let mut k_rows = vec![0f32; seq * kv_dim];
    {
        let q = q_out.as_f32_mut()?;
        for (i, row) in src.chunks_exact(width).enumerate() {
            q[i * q_dim..(i + 1) * q_dim].copy_from_slice(&row[..q_dim]);
            k_rows[i * kv_dim..(i + 1) * kv_dim].copy_from_slice(&row[q_dim..q_dim + kv_dim]);
        }
        rotate_rows(q, q_dim, pos.start, table);
    }
    rotate_rows(&mut k_rows, kv_dim, pos.start, table);
    let (kc, vc) = (k_cache.as_f32_mut()?, v_cache.as_f32_mut()?);
    for i in 0..seq {
        let v_row = &src[i * width + q_dim + kv_dim..(i + 1) * width];
        for h in 0..n_kv {
            let at = (h * ctx + pos.start + i) * hd;
            kc[at..at + hd].copy_from_slice(&k_rows[i * kv_dim + h * hd..][..hd]);
            vc[at..at + hd].copy_from_slice(&v_row[h * hd..(h + 1) * hd]);
        }
    }
    Ok(())
}

/// [`Op`] form: inputs `[qkv]`, outputs `[q_out, k_cache, v_cache]`.
pub struct RopeKv<'a> {
    pub table: &'a RopeTable,
    pub start: usize,
}

impl Op for RopeKv<'_> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn forward(&self, ctx: &mut OpContext) -> Result<()> {
        let qkv = ctx.input(NAME, 0)?;
        let [q, k, v] = ctx.outputs else {
            return Err(Error::op(NAME, "expected outputs [q_out, k_cache, v_cache]"));
        };
        rope_kv(qkv, q, k, v, &Positions::host(self.start), self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::LlamaConfig;
    use crate::op::rope::rope;
    use crate::tensor::DType;
    use std::path::Path;

    #[test]
    fn matches_separate_rope_and_cache_write() {
        let text = include_str!("../../../../tests/fixtures/tiny-llama3/config.json");
        let c = LlamaConfig::from_json_str(text, Path::new("config.json")).unwrap();
        let (hd, nh, nkv, ctx, seq, p0) = (c.head_dim, 4, 2, 9, 3, 5);
        let table = RopeTable::new(&c, ctx);
        let width = (nh + 2 * nkv) * hd;
        let data: Vec<f32> = (0..seq * width).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let qkv = Tensor::from_f32(&[seq, width], data.clone()).unwrap();
        let mut q = Tensor::zeros(&[seq, nh * hd], DType::F32);
        let mut kc = Tensor::zeros(&[nkv, ctx, hd], DType::F32);
        let mut vc = Tensor::zeros(&[nkv, ctx, hd], DType::F32);
        RopeKv { table: &table, start: p0 }
            .forward(&mut OpContext::new(&[&qkv], &mut [&mut q, &mut kc, &mut vc]))
            .unwrap();
        let pick =
            |lo: usize, n: usize| -> Vec<f32> { data.chunks(width).flat_map(|r| r[lo..lo + n].to_vec()).collect() };
        let mut want_q = Tensor::from_f32(&[seq, nh * hd], pick(0, nh * hd)).unwrap();
        rope(&mut want_q, p0, &table).unwrap();
        assert_eq!(q.as_f32().unwrap(), want_q.as_f32().unwrap());
        let mut want_k = Tensor::from_f32(&[seq, nkv * hd], pick(nh * hd, nkv * hd)).unwrap();
        rope(&mut want_k, p0, &table).unwrap();
        let v = pick((nh + nkv) * hd, nkv * hd);
        for i in 0..seq {
            for h in 0..nkv {
                let at = (h * ctx + p0 + i) * hd;
                assert_eq!(
                    &kc.as_f32().unwrap()[at..at + hd],
                    &want_k.as_f32().unwrap()[i * nkv * hd + h * hd..][..hd]
                );
                assert_eq!(&vc.as_f32().unwrap()[at..at + hd], &v[i * nkv * hd + h * hd..][..hd]);
            }
        }
        assert!(rope_kv(&qkv, &mut q, &mut kc, &mut vc, &Positions::host(7), &table).is_err());
    }
}
