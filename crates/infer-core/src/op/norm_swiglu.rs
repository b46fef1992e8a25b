//! The MLP's first half: RMSNorm, the fused gate/up projection and SwiGLU
//! (`swiglu(norm_linear(x))`).
//!
//! On a GPU decode step (one row, one bf16 `[gate | up]` matrix) a single GEMV does all of it:
//! each warp owns gate row j and up row j and writes `silu(gate) * up` in its epilogue, so the
//! gate/up row is never written. Everywhere else [`norm_linear`] then [`swiglu`] run.

use std::borrow::Borrow;

use super::{Op, OpContext, Precision, norm_linear::norm_linear, swiglu::swiglu};
use crate::base::{Error, Result};
use crate::tensor::Tensor;

const NAME: &str = "norm_swiglu";

/// * `x`: `[rows, dim]` f32 residual stream, `norm_weight` `[dim]`, `eps` > 0,
/// * `ws`: the gate and up matrices (one fused `[2 inter, dim]` on a GPU),
/// * `h` `[rows, dim]` and `gate_up` `[rows, 2 inter]`: scratch (untouched when fused),
/// * `act`: `[rows, inter]` = `silu(gate) ⊙ up`.
#[allow(clippy::too_many_arguments)]
pub fn norm_swiglu<W: Borrow<Tensor>>(
    x: &Tensor,
    norm_weight: &Tensor,
    eps: f32,
    ws: &[W],
    h: &mut Tensor,
    gate_up: &mut Tensor,
    act: &mut Tensor,
    precision: Precision,
) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let ([w], true, (1, dim)) = (ws, x.is_cuda(), x.dims2(NAME)?) {
        use crate::cuda::fused::{FUSED_MAX_K, Fusion, GemvIn, GemvOut, enabled, gemv_fused};
        let w = w.borrow();
        if w.dtype() == crate::tensor::DType::BF16
            && dim <= FUSED_MAX_K
            && enabled(Fusion::Norm)
            && enabled(Fusion::SwiGluOut)
        {
            super::check_shape(NAME, "norm weight", norm_weight, &[dim])?;
            if !(eps.is_finite() && eps > 0.0) {
                return Err(Error::op(NAME, format!("eps must be positive, got {eps}")));
            }
            let (two_inter, wk) = w.dims2(NAME)?;
            if wk != dim || !two_inter.is_multiple_of(2) {
                return Err(Error::op(NAME, format!("w {:?} is not [2 inter, {dim}]", w.shape())));
            }
            super::check_shape(NAME, "act", act, &[1, two_inter / 2])?;
            return gemv_fused(x, w, GemvIn::Norm(norm_weight, eps), act, GemvOut::SwiGlu);
        }
    }
    norm_linear(x, norm_weight, eps, ws, h, gate_up, precision)?;
    swiglu(gate_up, act)
}

/// [`Op`] form: inputs `[x, norm_weight, w₀, w₁, …]`, outputs `[h, gate_up, act]`.
pub struct NormSwiGlu {
    pub eps: f32,
}

impl Op for NormSwiGlu {
    fn name(&self) -> &'static str {
        NAME
    }

    fn forward(&self, ctx: &mut OpContext) -> Result<()> {
        let (x, g) = (ctx.input(NAME, 0)?, ctx.input(NAME, 1)?);
        let ws = ctx.inputs.get(2..).unwrap_or_default();
        let [h, gate_up, act] = ctx.outputs else {
            return Err(Error::op(NAME, "expected outputs [h, gate_up, act]"));
        };
        norm_swiglu(x, g, self.eps, ws, h, gate_up, act, Precision::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::rms_norm::rms_norm;

    #[test]
    fn equals_norm_linear_then_swiglu() {
        let (dim, inter) = (8, 3);
        let x = Tensor::from_f32(&[1, dim], (0..dim).map(|i| (i as f32 * 0.7).sin()).collect()).unwrap();
        let g = Tensor::from_f32(&[dim], vec![1.0; dim]).unwrap();
        let gw = Tensor::from_f32(&[inter, dim], (0..inter * dim).map(|i| (i as f32 * 0.3).cos()).collect()).unwrap();
        let uw = Tensor::from_f32(&[inter, dim], (0..inter * dim).map(|i| (i as f32 * 0.2).sin()).collect()).unwrap();
        let (mut h, mut gu, mut act) = (
            Tensor::zeros(&[1, dim], x.dtype()),
            Tensor::zeros(&[1, 2 * inter], x.dtype()),
            Tensor::zeros(&[1, inter], x.dtype()),
        );
        norm_swiglu(&x, &g, 1e-5, &[&gw, &uw], &mut h, &mut gu, &mut act, Precision::Exact).unwrap();
        let mut hn = Tensor::zeros(&[1, dim], x.dtype());
        rms_norm(&x, &g, 1e-5, &mut hn).unwrap();
        let (hv, gwv, uwv) = (hn.as_f32().unwrap(), gw.as_f32().unwrap(), uw.as_f32().unwrap());
        for (j, &a) in act.as_f32().unwrap().iter().enumerate() {
            let dot = |w: &[f32]| w[j * dim..(j + 1) * dim].iter().zip(hv).map(|(a, b)| a * b).sum::<f32>();
            let (gv, uv) = (dot(gwv), dot(uwv));
            let want = gv / (1.0 + (-gv).exp()) * uv;
            assert!((a - want).abs() < 1e-5, "act[{j}] = {a}, want {want}");
        }
    }
}
