//! Causal grouped-query attention of new queries over the KV cache.

use super::{Op, OpContext, Positions, check_shape};
use crate::base::{Error, Result};
use crate::op::cpu::attn_rows::{scores_f32, weighted_sum_f32};
use crate::op::cpu::axpy_f32;
use crate::op::softmax::softmax_row;
use crate::tensor::Tensor;

const NAME: &str = "attention";

/// GPU decode steps are captured as graphs per position range: below 512 positions, below 2,048,
/// and from 2,048 on ([`decode_range`]), so a graph's attention knows how long its cache rows can
/// get ([`decode_len_bound`]) and picks its work split by that (for Llama-3.2-1B one query head
/// per block below 512, two below 2,048, the whole group of four beyond: see
/// `kernels/attention.cu`).
pub const DECODE_RANGE_ENDS: [usize; 2] = [512, 2048];

/// The position range of a decode step at `start`: 0, 1 or 2 (see [`DECODE_RANGE_ENDS`]).
pub fn decode_range(start: usize) -> usize {
    DECODE_RANGE_ENDS.iter().take_while(|&&end| start >= end).count()
}

/// The longest cache length a decode step at `start` (and every step its graph serves) reads.
pub fn decode_len_bound(start: usize, ctx: usize) -> usize {
    DECODE_RANGE_ENDS.get(decode_range(start)).map_or(ctx, |&end| ctx.min(end))
}

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
        attend_spans(qh, n, n, |_| (kh, vh), scale, scores, o); // contiguous: one span
    };
    if seq == 1 {
        // Decode: (KV head, span of positions) tasks on the spinning pool (see `decode_spans`).
        // Measured in-process on SmolLM2-135M Q4_1 over 1,000 steps (contexts to ~1,000):
        // 1.05-1.10x one task per query head; Llama-3.2-1B bf16 at short contexts: same speed.
        let cache = Cache { k, v, ctx, hd, n_kv };
        decode_spans(q, &cache, pos0 + 1, n_heads, scale, out);
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

/// A contiguous KV cache: `k`, `v` `[n_kv, ctx, hd]`.
struct Cache<'a> {
    k: &'a [f32],
    v: &'a [f32],
    ctx: usize,
    hd: usize,
    n_kv: usize,
}

/// Fewest positions of a decode span (below that, one span per KV head).
const SPAN_MIN: usize = 64;

/// Decode attention of one query row `q` `[n_heads · hd]` over positions `0..n`: tasks are
/// (KV head, span of positions), about two per thread, each running the KV head's query heads
/// over its span (the span's K / V rows are read from cache once per head, not from memory), then
/// the spans merge by their log-sum-exp (flash-decoding). Balances two threads over 3 KV heads
/// (SmolLM2) where one task per query head left one thread a head more.
fn decode_spans(q: &[f32], c: &Cache<'_>, n: usize, n_heads: usize, scale: f32, out: &mut [f32]) {
    let (hd, group) = (c.hd, n_heads / c.n_kv);
    let threads = rayon::current_num_threads();
    let spans = (2 * threads).div_ceil(c.n_kv).min(n.div_ceil(SPAN_MIN)).max(1);
    let len = n.div_ceil(spans);
    // Per (KV head, span), per query head of the group: [lse, acc (hd, normalized)].
    let mut parts = vec![0.0f32; c.n_kv * spans * group * (hd + 1)];
    let mut items: Vec<&mut [f32]> = parts.chunks_mut(group * (hd + 1)).collect();
    crate::op::cpu::pool::for_each_mut(&mut items, |t, part| {
        let (kv, s) = (t / spans, t % spans);
        let (b, e) = (s * len, ((s + 1) * len).min(n));
        let base = kv * c.ctx * hd;
        let (kh, vh) = (&c.k[base + b * hd..base + e.max(b) * hd], &c.v[base + b * hd..base + e.max(b) * hd]);
        let mut scores = vec![0.0f32; e.saturating_sub(b)];
        for (h, p) in part.chunks_exact_mut(hd + 1).enumerate() {
            let (lse, acc) = p.split_at_mut(1);
            if scores.is_empty() {
                lse[0] = f32::NEG_INFINITY; // an empty span weighs nothing
                continue;
            }
            scores_f32(&q[(kv * group + h) * hd..][..hd], kh, scale, &mut scores);
            lse[0] = softmax_row(&mut scores);
            weighted_sum_f32(&scores, vh, acc);
        }
    });
    for (h, o) in out.chunks_exact_mut(hd).enumerate() {
        let (kv, g) = (h / group, h % group);
        let span = |s: usize| &parts[((kv * spans + s) * group + g) * (hd + 1)..][..hd + 1];
        let mx = (0..spans).map(|s| span(s)[0]).fold(f32::NEG_INFINITY, f32::max);
        let total: f32 = (0..spans).map(|s| (span(s)[0] - mx).exp()).sum();
        o.fill(0.0);
        for s in 0..spans {
            let w = (span(s)[0] - mx).exp() / total;
            if w > 0.0 {
                axpy_f32(w, &span(s)[1..], o);
            }
        }
    }
}

/// One query head over `n` cached positions: `o = softmax(q · k_t · scale) · v_t`, the positions
/// in spans of `span` whose K / V rows are contiguous (`rows(i)`: span `i`'s keys and values,
/// `[≥ len, hd]` each; one span for a contiguous cache, a block each for a paged one), through
/// the whole-row kernels of `op::cpu::attn_rows`.
pub(crate) fn attend_spans<'a>(
    q: &[f32],
    n: usize,
    span: usize,
    rows: impl Fn(usize) -> (&'a [f32], &'a [f32]),
    scale: f32,
    scores: &mut Vec<f32>,
    o: &mut [f32],
) {
    let hd = o.len();
    scores.clear();
    scores.resize(n, 0.0);
    for (i, s) in scores.chunks_mut(span.max(1)).enumerate() {
        scores_f32(q, &rows(i).0[..s.len() * hd], scale, s);
    }
    softmax_row(scores);
    if n <= span {
        return weighted_sum_f32(scores, &rows(0).1[..n * hd], o);
    }
    o.fill(0.0);
    let mut part = vec![0.0f32; hd];
    for (i, p) in scores.chunks(span.max(1)).enumerate() {
        weighted_sum_f32(p, &rows(i).1[..p.len() * hd], &mut part);
        axpy_f32(1.0, &part, o);
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
    fn decode_len_bound_covers_every_position_of_its_range() {
        // A graph captured at `start` is replayed for every position of start's range: the bound
        // must cover their lengths (pos + 1) and never exceed the cache.
        assert_eq!([0, 511, 512, 2047, 2048, 9999].map(decode_range), [0, 0, 1, 1, 2, 2]);
        for ctx in [1, 100, 511, 512, 513, 2047, 2048, 2049, 4096, 131072] {
            for start in [0, 1, 99, 510, 511, 512, 513, 2046, 2047, 2048, 2049, 4095, 131071] {
                if start >= ctx {
                    continue;
                }
                let b = decode_len_bound(start, ctx);
                // Independent of DECODE_RANGE_ENDS: the ranges end at 512, 2,048 and the cache.
                let range_end = if start < 512 {
                    512.min(ctx)
                } else if start < 2048 {
                    2048.min(ctx)
                } else {
                    ctx
                };
                assert!(b <= ctx && b >= range_end && b > start, "ctx {ctx} start {start}: bound {b}");
            }
        }
    }

    #[test]
    fn matches_naive_gqa_on_odd_sizes() {
        // Prefill rows; decode rows over one or several spans per KV head (`decode_spans`).
        for cfg in [
            (6, 2, 13, 11, 3, 5),
            (9, 3, 64, 700, 650, 1),
            (6, 2, 13, 300, 200, 1),
            (4, 1, 32, 70, 0, 1),
            (8, 8, 16, 200, 199, 1),
        ] {
            check_against_f64(cfg);
        }
    }

    fn check_against_f64((n_heads, n_kv, hd, ctx, pos0, seq): (usize, usize, usize, usize, usize, usize)) {
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
        assert!(attention(&q, &k, &v, &Positions::host(ctx - seq + 1), n_heads, &mut out).is_err());
    }
}
