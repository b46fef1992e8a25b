//! Residual add fused with RMSNorm: `x += delta; out = x / sqrt(mean(x²) + eps) * weight`.
//! The residual stream `x` stays f32 on every device; `out` is the device's activation dtype.

use super::{Op, OpContext, add::add_inplace, check_shape, rms_norm::rms_norm};
use crate::base::Result;
use crate::tensor::Tensor;

const NAME: &str = "add_rms_norm";

/// `x` `[rows, dim]` f32 (updated in place when `delta` is given), `delta` `[rows, dim]`,
/// `weight` `[dim]`, `out` `[rows, dim]`.
pub fn add_rms_norm(x: &mut Tensor, delta: Option<&Tensor>, weight: &Tensor, eps: f32, out: &mut Tensor) -> Result<()> {
    if let Some(d) = delta {
        check_shape(NAME, "delta", d, x.shape())?;
    }
    #[cfg(feature = "cuda")]
    if x.is_cuda() {
        return crate::cuda::ops::add_rms_norm(x, delta, weight, eps, out);
    }
    if let Some(d) = delta {
        add_inplace(x, d)?;
    }
    rms_norm(x, weight, eps, out)
}

/// [`Op`] form: inputs `[delta, weight]`, outputs `[x, out]` (`x` is read and updated).
pub struct AddRmsNorm {
    pub eps: f32,
}

impl Op for AddRmsNorm {
    fn name(&self) -> &'static str {
        NAME
    }

    fn forward(&self, ctx: &mut OpContext) -> Result<()> {
        let (delta, weight) = (ctx.input(NAME, 0)?, ctx.input(NAME, 1)?);
        let [x, out] = ctx.outputs else {
            return Err(crate::base::Error::op(NAME, "expected outputs [x, out]"));
        };
        add_rms_norm(x, Some(delta), weight, self.eps, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    #[test]
    fn adds_then_normalises() {
        let mut x = Tensor::from_f32(&[1, 3], vec![1., 2., 3.]).unwrap();
        let d = Tensor::from_f32(&[1, 3], vec![1., 0., -1.]).unwrap();
        let w = Tensor::from_f32(&[3], vec![1., 1., 2.]).unwrap();
        let mut out = Tensor::zeros(&[1, 3], DType::F32);
        AddRmsNorm { eps: 1e-6 }.forward(&mut OpContext::new(&[&d, &w], &mut [&mut x, &mut out])).unwrap();
        assert_eq!(x.as_f32().unwrap(), &[2., 2., 2.]);
        for (got, want) in out.as_f32().unwrap().iter().zip([1., 1., 2.]) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        assert!(add_rms_norm(&mut x, Some(&Tensor::zeros(&[1, 2], DType::F32)), &w, 1e-6, &mut out).is_err());
    }
}
