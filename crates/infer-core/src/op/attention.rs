//! Causal grouped-query attention of new queries over the KV cache.

use super::{Op, OpContext, Positions, check_shape};
use crate::base::{Error, Result};
use crate::op::cpu::attn_rows::{scores_f32, weighted_sum_f32};
use crate::op::cpu::{axpy_f32, dot_f32};
use crate::op::softmax::softmax_row;
use crate::tensor::Tensor;

const NAME: &str = "attention";

/// Attention of `q` `[seq, n_heads * head_dim]` (already rotated; row `i` at position `pos.start + i`)
/// over the cached `k`, `v` `[n_kv_heads, ctx, head_dim]` (positions `0..pos0 + seq` filled),
/// writing `out` `[seq, n_heads * head_dim]`. Query head `h` reads KV head `h / (n_heads / n_kv_heads)`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, pos: &Positions, n_heads: usize, out: &mut Tensor) -> Result<()> {
    let pos0 = pos.start;
    let (seq, width) = q.dims2(NAME)?;
    let [n_kv, ctx, hd] = k.shape()[..] else {
        return Err(Error::op(NAME, format!("k cache must be [n_kv_heads, ctx, head_dim], got {:?}", k.shape())));
    };
    check_shape(NAME, "v cache", v, k.shape())?;
    check_shape(NAME, "output", out, q.shape())?;
    if n_heads == 0 || width != n_heads * hd || !n_heads.is_multiple_of(n_kv) {
        return Err(Error::op(
            NAME,
            format!("q width {width} does not fit {n_heads} heads of {hd} over {n_kv} KV heads"),
        ));
    }
    if pos0 + seq > ctx {
        return Err(Error::op(NAME, format!("positions up to {} exceed the cache length {ctx}", pos0 + seq)));
    }
    #[cfg(feature = "cuda")]
    if q.is_cuda() {
        return crate::cuda::ops::attention(q, k, v, pos, n_heads, out);
    }
    let group = n_heads / n_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    let (q, k, v) = (q.as_f32()?, k.as_f32()?, v.as_f32()?);
    let out = out.as_f32_mut()?;
    // One task per (row, head): out[i, h*hd..] depends only on q[i, h] and KV head h / group.
    let head = |idx: usize, o: &mut [f32], scores: &mut Vec<f32>| {
        let (i, h) = (idx / n_heads, idx % n_heads);
        let kv = h / group;
        let n = pos0 + i + 1; // causal: positions 0..=pos0+i
        let qh = &q[i * width + h * hd..][..hd];
        let (kh, vh) = (&k[kv * ctx * hd..][..n * hd], &v[kv * ctx * hd..][..n * hd]);
        // Contiguous cache rows: the whole-row kernels (scores, then the weighted sum of values).
        scores.clear();
        scores.resize(n, 0.0);
        scores_f32(qh, kh, scale, scores);
        softmax_row(scores);
        weighted_sum_f32(scores, vh, o);
    };
    if seq == 1 {
        // Decode: one short loop per layer, on the spinning pool like the matvecs around it.
        let mut heads: Vec<&mut [f32]> = out.chunks_mut(hd).collect();
        crate::op::cpu::pool::for_each_mut(&mut heads, |idx, o| head(idx, o, &mut Vec::new()));
    } else {
        // Prefill: one task per query row, its heads one after the other.
        crate::op::cpu::pool::for_each_chunk(out, width, |i, row| {
            let mut scores = Vec::new();
            for (h, o) in row.chunks_mut(hd).enumerate() {
                head(i * n_heads + h, o, &mut scores);
            }
        });
    }
    Ok(())
}

/// One query head over `n` cached positions: `o = softmax(q · k_t · scale) · v_t`, with the
/// position `t`'s key and value rows given by `key(t)` and `value(t)` (contiguous or paged).
pub(crate) fn attend_row<'a>(
    q: &[f32],
    n: usize,
    key: impl Fn(usize) -> &'a [f32],
    value: impl Fn(usize) -> &'a [f32],
    scale: f32,
    scores: &mut Vec<f32>,
    o: &mut [f32],
) {
    scores.clear();
    scores.extend((0..n).map(|t| dot_f32(q, key(t)) * scale));
    softmax_row(scores);
    o.fill(0.0);
    for (t, &p) in scores.iter().enumerate() {
        axpy_f32(p, value(t), o);
    }
}

/// [`Op`] form: inputs `[q, k_cache, v_cache]`, outputs `[out]`.
pub struct Attention {
    pub pos0: usize,
    pub n_heads: usize,
}

impl Op for Attention {
    fn name(&self) -> &'static str {
        NAME
    }

    fn forward(&self, ctx: &mut OpContext) -> Result<()> {
        let (q, k, v) = (ctx.input(NAME, 0)?, ctx.input(NAME, 1)?, ctx.input(NAME, 2)?);
        attention(q, k, v, &Positions::host(self.pos0), self.n_heads, ctx.output(NAME, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::test_fill as fill;
    use crate::tensor::DType;

    #[test]
    fn matches_naive_gqa_on_odd_sizes() {
        let (n_heads, n_kv, hd, ctx, pos0, seq) = (6, 2, 13, 11, 3, 5);
        let qv = fill(seq * n_heads * hd, 1);
        let (kv_, vv) = (fill(n_kv * ctx * hd, 2), fill(n_kv * ctx * hd, 3));
        let q = Tensor::from_f32(&[seq, n_heads * hd], qv.clone()).unwrap();
        let k = Tensor::from_f32(&[n_kv, ctx, hd], kv_.clone()).unwrap();
        let v = Tensor::from_f32(&[n_kv, ctx, hd], vv.clone()).unwrap();
        let mut out = Tensor::zeros(&[seq, n_heads * hd], DType::F32);
        Attention { pos0, n_heads }.forward(&mut OpContext::new(&[&q, &k, &v], &mut [&mut out])).unwrap();
        let got = out.as_f32().unwrap();
        for i in 0..seq {
            for h in 0..n_heads {
                let g = h / (n_heads / n_kv);
                let s: Vec<f64> = (0..=pos0 + i)
                    .map(|t| {
                        (0..hd)
                            .map(|d| qv[i * n_heads * hd + h * hd + d] as f64 * kv_[(g * ctx + t) * hd + d] as f64)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for d in 0..hd {
                    let want: f64 =
                        s.iter().enumerate().map(|(t, x)| (x - m).exp() / z * vv[(g * ctx + t) * hd + d] as f64).sum();
                    let gotv = got[i * n_heads * hd + h * hd + d] as f64;
                    assert!((gotv - want).abs() < 1e-5, "i{i} h{h} d{d}: {gotv} vs {want}");
                }
            }
        }
        assert!(attention(&q, &k, &v, &Positions::host(7), n_heads, &mut out).is_err());
    }
}
