//! Causal grouped-query attention of a batch of rows (from different sequences, each at its own
//! position) over a paged KV cache.

use rayon::prelude::*;

use super::paged::{PagedMeta, pool_dims};
use super::{Op, OpContext, check_shape};
use crate::base::{Error, Result};
use crate::op::attention::attend_spans;
use crate::tensor::Tensor;

const NAME: &str = "paged_attention";

/// Attention of `q` `[rows, n_heads * head_dim]` (rotated) over `k_pool`, `v_pool`
/// `[num_blocks, n_kv_heads, block_size, head_dim]`: row `r` reads positions
/// `0..=meta.positions[r]` of sequence `meta.row_seq[r]` through its block table (those K/V
/// must be written already, the row's own included) and writes `out` `[rows, n_heads * head_dim]`.
pub fn paged_attention(
    q: &Tensor,
    k_pool: &Tensor,
    v_pool: &Tensor,
    meta: &PagedMeta,
    n_heads: usize,
    out: &mut Tensor,
) -> Result<()> {
    let (rows, width) = q.dims2(NAME)?;
    let [nb, n_kv, bs, hd] = pool_dims(NAME, k_pool, meta.block_size)?;
    check_shape(NAME, "v pool", v_pool, k_pool.shape())?;
    check_shape(NAME, "output", out, q.shape())?;
    if n_heads == 0 || width != n_heads * hd || !n_heads.is_multiple_of(n_kv) {
        return Err(Error::op(
            NAME,
            format!("q width {width} does not fit {n_heads} heads of {hd} over {n_kv} KV heads"),
        ));
    }
    meta.validate(NAME, rows, nb)?;
    #[cfg(feature = "cuda")]
    if q.is_cuda() {
        return crate::cuda::paged::paged_attention(q, k_pool, v_pool, meta, n_heads, out);
    }
    let group = n_heads / n_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    let (q, k, v) = (q.as_f32()?, k_pool.as_f32()?, v_pool.as_f32()?);
    let out = out.as_f32_mut()?;
    // One task per (row, head): out[r, h*hd..] depends only on q[r, h] and KV head h / group.
    out.par_chunks_mut(hd).enumerate().for_each_init(Vec::new, |scores: &mut Vec<f32>, (idx, o)| {
        let (r, h) = (idx / n_heads, idx % n_heads);
        let kv = h / group;
        let n = meta.positions[r] as usize + 1;
        let table = &meta.block_tables[meta.row_seq[r] as usize * meta.max_blocks..][..meta.max_blocks];
        let qh = &q[r * width + h * hd..][..hd];
        // Block i of the sequence: its `bs` positions' K / V rows are contiguous in the pool.
        let block = |i: usize| {
            let base = (table[i] as usize * n_kv + kv) * bs * hd;
            (&k[base..base + bs * hd], &v[base..base + bs * hd])
        };
        attend_spans(qh, n, bs, block, scale, scores, o);
    });
    Ok(())
}

/// [`Op`] form: inputs `[q, k_pool, v_pool]`, outputs `[out]`.
pub struct PagedAttention<'a> {
    pub n_heads: usize,
    pub meta: PagedMeta<'a>,
}

impl Op for PagedAttention<'_> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn forward(&self, ctx: &mut OpContext) -> Result<()> {
        let (q, k, v) = (ctx.input(NAME, 0)?, ctx.input(NAME, 1)?, ctx.input(NAME, 2)?);
        paged_attention(q, k, v, &self.meta, self.n_heads, ctx.output(NAME, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::Positions;
    use crate::op::attention::attention;
    use crate::op::rope::RopeTable;
    use crate::op::rope_kv::rope_kv;
    use crate::op::rope_kv_paged::rope_kv_paged;
    use crate::op::test_fill as fill;
    use crate::tensor::DType;

    /// Two sequences with scattered blocks, one mid-prefill (3 rows) and one decoding (1 row),
    /// give exactly what the contiguous cache + attention give for each sequence alone.
    #[test]
    fn matches_contiguous_attention_per_sequence() {
        let text = include_str!("../../../../tests/fixtures/tiny-llama3/config.json");
        let c = crate::model::config::LlamaConfig::from_json_str(text, std::path::Path::new("config.json")).unwrap();
        let (nh, nkv, hd, bs, nb) = (6, 2, c.head_dim, 3, 12);
        let table = RopeTable::new(&c, 64);
        let width = (nh + 2 * nkv) * hd;
        // sequence 0: positions 0..7 (prefilled 0..4 earlier, rows 4,5,6 now); sequence 1: 0..5, row 5 now
        let lens = [7usize, 6];
        let tables: [&[i32]; 2] = [&[7, 2, 9], &[4, 11, 0]];
        let mut kp = Tensor::zeros(&[nb, nkv, bs, hd], DType::F32);
        let mut vp = Tensor::zeros(&[nb, nkv, bs, hd], DType::F32);
        let max_blocks = 3;
        let flat: Vec<i32> = tables.iter().flat_map(|t| t.iter().copied()).collect();
        let mut want_rows = Vec::new();
        let mut batch_q = Vec::new();
        let mut batch_meta = (Vec::new(), Vec::new(), Vec::new());
        for (s, &len) in lens.iter().enumerate() {
            let data = fill(len * width, 17 + s as u64);
            // contiguous reference for the whole sequence
            let qkv = Tensor::from_f32(&[len, width], data.clone()).unwrap();
            let mut q = Tensor::zeros(&[len, nh * hd], DType::F32);
            let mut kc = Tensor::zeros(&[nkv, 16, hd], DType::F32);
            let mut vc = Tensor::zeros(&[nkv, 16, hd], DType::F32);
            rope_kv(&qkv, &mut q, &mut kc, &mut vc, &Positions::host(0), &table).unwrap();
            let mut o = Tensor::zeros(&[len, nh * hd], DType::F32);
            attention(&q, &kc, &vc, &Positions::host(0), nh, &mut o).unwrap();
            // paged: earlier positions written in one step, the rest batched below
            let split = if s == 0 { 4 } else { 5 };
            let slot = |p: usize| tables[s][p / bs] * bs as i32 + (p % bs) as i32;
            let pre: Vec<i32> = (0..split as i32).collect();
            let pre_slots: Vec<i32> = (0..split).map(slot).collect();
            let meta = PagedMeta {
                block_size: bs,
                positions: &pre,
                slots: &pre_slots,
                row_seq: &vec![s as i32; split],
                block_tables: &flat,
                max_blocks,
                device: None,
            };
            let qkv_pre = Tensor::from_f32(&[split, width], data[..split * width].to_vec()).unwrap();
            let mut q_pre = Tensor::zeros(&[split, nh * hd], DType::F32);
            rope_kv_paged(&qkv_pre, &mut q_pre, &mut kp, &mut vp, &meta, &table).unwrap();
            batch_q.extend_from_slice(&data[split * width..]);
            for p in split..len {
                batch_meta.0.push(p as i32);
                batch_meta.1.push(slot(p));
                batch_meta.2.push(s as i32);
                want_rows.extend_from_slice(&o.as_f32().unwrap()[p * nh * hd..(p + 1) * nh * hd]);
            }
        }
        let rows = batch_meta.0.len();
        let meta = PagedMeta {
            block_size: bs,
            positions: &batch_meta.0,
            slots: &batch_meta.1,
            row_seq: &batch_meta.2,
            block_tables: &flat,
            max_blocks,
            device: None,
        };
        let qkv = Tensor::from_f32(&[rows, width], batch_q).unwrap();
        let mut q = Tensor::zeros(&[rows, nh * hd], DType::F32);
        rope_kv_paged(&qkv, &mut q, &mut kp, &mut vp, &meta, &table).unwrap();
        let mut out = Tensor::zeros(&[rows, nh * hd], DType::F32);
        PagedAttention { n_heads: nh, meta }.forward(&mut OpContext::new(&[&q, &kp, &vp], &mut [&mut out])).unwrap();
        let got = out.as_f32().unwrap();
        let err = got.iter().zip(&want_rows).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 1e-5, "max abs error {err}");
    }

    #[test]
    fn rejects_slots_outside_the_table() {
        let (nh, nkv, hd, bs) = (2, 1, 4, 2);
        let kp = Tensor::zeros(&[2, nkv, bs, hd], DType::F32);
        let q = Tensor::zeros(&[1, nh * hd], DType::F32);
        let mut out = Tensor::zeros(&[1, nh * hd], DType::F32);
        let meta = |pos: &'static [i32], slots: &'static [i32]| PagedMeta {
            block_size: bs,
            positions: pos,
            slots,
            row_seq: &[0],
            block_tables: &[1, 0],
            max_blocks: 2,
            device: None,
        };
        assert!(paged_attention(&q, &kp, &kp, &meta(&[1], &[3]), nh, &mut out).is_ok());
        assert!(paged_attention(&q, &kp, &kp, &meta(&[1], &[1]), nh, &mut out).is_err()); // wrong block
        assert!(paged_attention(&q, &kp, &kp, &meta(&[4], &[0]), nh, &mut out).is_err()); // beyond table
        assert!(paged_attention(&q, &kp, &kp, &meta(&[-1], &[0]), nh, &mut out).is_err());
    }
}
