//! RMSNorm followed by a linear layer: `out = rms_norm(x) · [w₀; w₁; …]ᵀ` (the attention and
//! MLP inputs of a decoder layer).
//!
//! On a GPU decode step (one row, one fused weight matrix) the norm is folded into the GEMV:
//! it scales `x ⊙ weight` by `rsqrt(mean(x²) + eps)` after the dot product, so the normed row
//! is never written. Everywhere else the norm is written to `h` and the linear layer reads it.

use std::borrow::Borrow;

use super::{Op, OpContext, Precision, check_shape, linear::linear_with_precision, rms_norm::rms_norm};
use crate::base::{Error, Result};
use crate::tensor::Tensor;

const NAME: &str = "norm_linear";

/// * `x`: `[rows, dim]` f32 residual stream (read only),
/// * `norm_weight`: `[dim]`, `eps` > 0,
/// * `ws`: the linear layer's matrices, each `[nᵢ, dim]`,
/// * `h`: `[rows, dim]` scratch for the normed rows (left untouched when the norm is fused),
/// * `out`: `[rows, Σnᵢ]`.
#[allow(clippy::too_many_arguments)]
pub fn norm_linear<W: Borrow<Tensor>>(
    x: &Tensor,
    norm_weight: &Tensor,
    eps: f32,
    ws: &[W],
    h: &mut Tensor,
    out: &mut Tensor,
    precision: Precision,
) -> Result<()> {
    let (rows, dim) = x.dims2(NAME)?;
    check_shape(NAME, "norm weight", norm_weight, &[dim])?;
    check_shape(NAME, "h", h, &[rows, dim])?;
    if !(eps.is_finite() && eps > 0.0) {
        return Err(Error::op(NAME, format!("eps must be positive, got {eps}")));
    }
    #[cfg(feature = "cuda")]
    if let ([w], true, 1) = (ws, x.is_cuda(), rows)
        && w.borrow().dtype() == crate::tensor::DType::BF16
        && dim <= crate::cuda::fused::FUSED_MAX_K
        && crate::cuda::fused::enabled(crate::cuda::fused::Fusion::Norm)
    {
        let w = w.borrow();
        check_shape(NAME, "weight", w, &[w.shape()[0], dim])?;
        check_shape(NAME, "output", out, &[1, w.shape()[0]])?;
        use crate::cuda::fused::{GemvIn, GemvOut, gemv_fused};
        return gemv_fused(x, w, GemvIn::Norm(norm_weight, eps), out, GemvOut::Store);
    }
    rms_norm(x, norm_weight, eps, h)?;
    linear_with_precision(h, ws, out, precision)
}

/// [`Op`] form: inputs `[x, norm_weight, w₀, w₁, …]`, outputs `[h, out]`.
pub struct NormLinear {
    pub eps: f32,
}

impl Op for NormLinear {
    fn name(&self) -> &'static str {
        NAME
    }

    fn forward(&self, ctx: &mut OpContext) -> Result<()> {
        let (x, g) = (ctx.input(NAME, 0)?, ctx.input(NAME, 1)?);
        let ws = ctx.inputs.get(2..).unwrap_or_default();
        let [h, out] = ctx.outputs else {
            return Err(Error::op(NAME, "expected outputs [h, out]"));
        };
        norm_linear(x, g, self.eps, ws, h, out, Precision::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::matmul::matmul;

    #[test]
    fn equals_rms_norm_then_matmul() {
        let (rows, dim, n) = (3, 16, 5);
        let x = Tensor::from_f32(&[rows, dim], (0..rows * dim).map(|i| (i as f32 * 0.37).sin()).collect()).unwrap();
        let g = Tensor::from_f32(&[dim], (0..dim).map(|i| 0.5 + i as f32 / 16.0).collect()).unwrap();
        let w = Tensor::from_f32(&[n, dim], (0..n * dim).map(|i| (i as f32 * 0.11).cos()).collect()).unwrap();
        let (mut h, mut out) = (Tensor::zeros(&[rows, dim], x.dtype()), Tensor::zeros(&[rows, n], x.dtype()));
        norm_linear(&x, &g, 1e-5, &[&w], &mut h, &mut out, Precision::Exact).unwrap();
        let (mut h2, mut want) = (Tensor::zeros(&[rows, dim], x.dtype()), Tensor::zeros(&[rows, n], x.dtype()));
        rms_norm(&x, &g, 1e-5, &mut h2).unwrap();
        matmul(&h2, &w, &mut want).unwrap();
        assert_eq!(out.as_f32().unwrap(), want.as_f32().unwrap());
        let e = norm_linear(&x, &g, 0.0, &[&w], &mut h, &mut out, Precision::Exact).unwrap_err();
        assert!(e.to_string().contains("eps"), "{e}");
    }
}
