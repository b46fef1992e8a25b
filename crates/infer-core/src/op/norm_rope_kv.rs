//! The attention input of a decoder layer: RMSNorm, the fused q/k/v projection, RoPE and the
//! KV-cache write (`rope_kv(norm_linear(x))`).
//!
//! On a GPU decode step (one row, one bf16 qkv matrix) a single GEMV does all of it: the norm in
//! its prologue, the rotation and the cache write in its epilogue (each warp owns a rotation pair
//! of rows), so neither the normed row nor the qkv row is written. Everywhere else
//! [`norm_linear`] then [`rope_kv`] run.

use std::borrow::Borrow;

use super::{Op, OpContext, Positions, Precision, norm_linear::norm_linear, rope::RopeTable, rope_kv::rope_kv};
use crate::base::{Error, Result};
use crate::tensor::Tensor;

const NAME: &str = "norm_rope_kv";

/// * `x`: `[rows, dim]` f32 residual stream, `norm_weight` `[dim]`, `eps` > 0,
/// * `ws`: the q/k/v matrices (one fused `[(n_heads + 2 n_kv) hd, dim]` on a GPU),
/// * `h` `[rows, dim]` and `qkv` `[rows, (n_heads + 2 n_kv) hd]`: scratch (untouched when fused),
/// * `q_out` `[rows, n_heads hd]`, caches `[n_kv, ctx, hd]`, rows at positions `pos.start + i`.
#[allow(clippy::too_many_arguments)]
pub fn norm_rope_kv<W: Borrow<Tensor>>(
    x: &Tensor,
    norm_weight: &Tensor,
    eps: f32,
    ws: &[W],
    h: &mut Tensor,
    qkv: &mut Tensor,
    q_out: &mut Tensor,
    caches: (&mut Tensor, &mut Tensor),
    pos: &Positions,
    table: &RopeTable,
    precision: Precision,
) -> Result<()> {
    let (k_cache, v_cache) = caches;
    #[cfg(feature = "cuda")]
    if let ([w], true, (1, dim)) = (ws, x.is_cuda(), x.dims2(NAME)?) {
        use crate::cuda::fused::{FUSED_MAX_K, Fusion, GemvIn, enabled, gemv_rope_kv};
        let w = w.borrow();
        if w.dtype() == crate::tensor::DType::BF16
            && dim <= FUSED_MAX_K
            && enabled(Fusion::Norm)
            && enabled(Fusion::RopeKv)
        {
            let n_heads = check_fused(x, norm_weight, eps, w, q_out, k_cache, v_cache, pos, table)?;
            return gemv_rope_kv(x, w, GemvIn::Norm(norm_weight, eps), q_out, k_cache, v_cache, pos, table, n_heads);
        }
    }
    norm_linear(x, norm_weight, eps, ws, h, qkv, precision)?;
    rope_kv(qkv, q_out, k_cache, v_cache, pos, table)
}

/// The checks of [`norm_linear`] and [`rope_kv`] for one row; returns the number of q heads.
#[cfg(feature = "cuda")]
#[allow(clippy::too_many_arguments)]
fn check_fused(
    x: &Tensor,
    norm_weight: &Tensor,
    eps: f32,
    w: &Tensor,
    q_out: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    pos: &Positions,
    table: &RopeTable,
) -> Result<usize> {
    let dim = x.dims2(NAME)?.1;
    super::check_shape(NAME, "norm weight", norm_weight, &[dim])?;
    if !(eps.is_finite() && eps > 0.0) {
        return Err(Error::op(NAME, format!("eps must be positive, got {eps}")));
    }
    let [n_kv, ctx, hd] = k_cache.shape()[..] else {
        return Err(Error::op(NAME, format!("k cache must be [n_kv_heads, ctx, head_dim], got {:?}", k_cache.shape())));
    };
    super::check_shape(NAME, "v cache", v_cache, k_cache.shape())?;
    let q_dim = q_out.dims2(NAME)?.1;
    let (width, wk) = w.dims2(NAME)?;
    if wk != dim || hd != table.head_dim() || width != q_dim + 2 * n_kv * hd || q_dim == 0 || !q_dim.is_multiple_of(hd)
    {
        return Err(Error::op(
            NAME,
            format!("w {:?} does not split into q {q_dim} + 2 x {n_kv} KV heads of {hd} over {dim}", w.shape()),
        ));
    }
    super::check_shape(NAME, "q output", q_out, &[1, q_dim])?;
    if pos.start + 1 > ctx.min(table.max_pos()) {
        return Err(Error::op(NAME, format!("position {} exceeds the cache length {ctx}", pos.start)));
    }
    Ok(q_dim / hd)
}

/// [`Op`] form: inputs `[x, norm_weight, w₀, w₁, …]`, outputs `[h, qkv, q, k_cache, v_cache]`
/// (the caches are updated in place); position `start`.
pub struct NormRopeKv<'a> {
    pub eps: f32,
    pub start: usize,
    pub table: &'a RopeTable,
}

impl Op for NormRopeKv<'_> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn forward(&self, ctx: &mut OpContext) -> Result<()> {
        let (x, g) = (ctx.input(NAME, 0)?, ctx.input(NAME, 1)?);
        let ws = ctx.inputs.get(2..).unwrap_or_default();
        let [h, qkv, q, kc, vc] = ctx.outputs else {
            return Err(Error::op(NAME, "expected outputs [h, qkv, q, k_cache, v_cache]"));
        };
        let pos = Positions::host(self.start);
        norm_rope_kv(x, g, self.eps, ws, h, qkv, q, (kc, vc), &pos, self.table, Precision::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::LlamaConfig;

    #[test]
    fn equals_norm_linear_then_rope_kv() {
        let text = include_str!("../../../../tests/fixtures/tiny-llama3/config.json");
        let cfg = LlamaConfig::from_json_str(text, std::path::Path::new("config.json")).unwrap();
        let (hd, nh, nkv, ctx, dim, start) = (cfg.head_dim, 2, 1, 8, 16, 3);
        let table = RopeTable::new(&cfg, ctx);
        let width = (nh + 2 * nkv) * hd;
        let x = Tensor::from_f32(&[1, dim], (0..dim).map(|i| (i as f32 * 0.7).sin()).collect()).unwrap();
        let g = Tensor::from_f32(&[dim], (0..dim).map(|i| 0.5 + i as f32 / 32.0).collect()).unwrap();
        let w = Tensor::from_f32(&[width, dim], (0..width * dim).map(|i| (i as f32 * 0.13).cos()).collect()).unwrap();
        let pos = Positions::host(start);
        let run = |fused: bool| {
            let mut h = Tensor::zeros(&[1, dim], x.dtype());
            let mut qkv = Tensor::zeros(&[1, width], x.dtype());
            let mut q = Tensor::zeros(&[1, nh * hd], x.dtype());
            let mut kc = Tensor::zeros(&[nkv, ctx, hd], x.dtype());
            let mut vc = Tensor::zeros(&[nkv, ctx, hd], x.dtype());
            if fused {
                norm_rope_kv(
                    &x,
                    &g,
                    1e-5,
                    &[&w],
                    &mut h,
                    &mut qkv,
                    &mut q,
                    (&mut kc, &mut vc),
                    &pos,
                    &table,
                    Precision::Exact,
                )
                .unwrap();
            } else {
                norm_linear(&x, &g, 1e-5, &[&w], &mut h, &mut qkv, Precision::Exact).unwrap();
                rope_kv(&qkv, &mut q, &mut kc, &mut vc, &pos, &table).unwrap();
            }
            [q, kc, vc].map(|t| t.as_f32().unwrap().to_vec())
        };
        assert_eq!(run(true), run(false));
    }
}
