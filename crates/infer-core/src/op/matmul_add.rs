//! A projection added to the residual stream: `x += a · wᵀ` (o_proj and down_proj outputs).
//!
//! On a GPU decode step (one row) the add is the GEMV's epilogue; elsewhere the product goes to
//! a scratch tensor first and is then added.

use super::{Op, OpContext, Precision, add::add_inplace, check_shape, matmul::matmul_with_precision};
use crate::base::{Error, Result};
use crate::tensor::Tensor;

const NAME: &str = "matmul_add";

/// * `a`: `[rows, k]` activations, `w`: `[n, k]`,
/// * `scratch`: `[rows, n]` in the activation dtype (holds the product when not fused),
/// * `x`: `[rows, n]` f32, updated in place.
pub fn matmul_add(a: &Tensor, w: &Tensor, scratch: &mut Tensor, x: &mut Tensor, precision: Precision) -> Result<()> {
    let (rows, k) = a.dims2(NAME)?;
    let (n, wk) = w.dims2(NAME)?;
    if wk != k {
        return Err(Error::op(NAME, format!("a {:?} · wᵀ with w {:?}: inner dims differ", a.shape(), w.shape())));
    }
    check_shape(NAME, "x", x, &[rows, n])?;
    check_shape(NAME, "scratch", scratch, &[rows, n])?;
    #[cfg(feature = "cuda")]
    if a.is_cuda() {
        use crate::cuda::fused::{Fusion, GemvIn, GemvOut, add_bf16_to_f32, enabled, gemv_fused};
        if rows == 1 && enabled(Fusion::Add) && w.dtype() == crate::tensor::DType::BF16 {
            return gemv_fused(a, w, GemvIn::Plain, x, GemvOut::Accumulate);
        }
        matmul_with_precision(a, w, scratch, precision)?;
        return add_bf16_to_f32(x, scratch);
    }
    matmul_with_precision(a, w, scratch, precision)?;
    add_inplace(x, scratch)
}

/// [`Op`] form: inputs `[a, w]`, outputs `[scratch, x]` (`x` is read and updated).
pub struct MatMulAdd;

impl Op for MatMulAdd {
    fn name(&self) -> &'static str {
        NAME
    }

    fn forward(&self, ctx: &mut OpContext) -> Result<()> {
        let (a, w) = (ctx.input(NAME, 0)?, ctx.input(NAME, 1)?);
        let [scratch, x] = ctx.outputs else {
            return Err(Error::op(NAME, "expected outputs [scratch, x]"));
        };
        matmul_add(a, w, scratch, x, Precision::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_the_product() {
        let a = Tensor::from_f32(&[2, 3], vec![1.0, 2.0, 3.0, -1.0, 0.5, 2.0]).unwrap();
        let w = Tensor::from_f32(&[2, 3], vec![1.0, 0.0, 1.0, 0.0, 2.0, 0.0]).unwrap();
        let mut x = Tensor::from_f32(&[2, 2], vec![10.0, 20.0, 30.0, 40.0]).unwrap();
        let mut scratch = Tensor::zeros(&[2, 2], x.dtype());
        matmul_add(&a, &w, &mut scratch, &mut x, Precision::Exact).unwrap();
        assert_eq!(x.as_f32().unwrap(), &[14.0, 24.0, 31.0, 41.0]);
        let mut bad = Tensor::zeros(&[2, 3], x.dtype());
        assert!(matmul_add(&a, &w, &mut scratch, &mut bad, Precision::Exact).is_err());
    }
}
