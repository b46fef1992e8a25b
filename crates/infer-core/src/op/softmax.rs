//! Numerically stable softmax over the last dimension, in place.

use super::{Op, OpContext};
use crate::base::{Error, Result};
use crate::tensor::Tensor;

const NAME: &str = "softmax";

/// Softmax of one row in place; returns log-sum-exp of the input.
pub fn softmax_row(x: &mut [f32]) -> f32 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    let sum = crate::op::cpu::exp_shift_sum(x, max);
    let inv = (1.0 / sum) as f32;
    x.iter_mut().for_each(|v| *v *= inv);
    max + (sum as f32).ln()
}

/// Softmax over the last dimension of an f32 tensor, in place.
pub fn softmax(x: &mut Tensor) -> Result<()> {
    let last = *x.shape().last().ok_or_else(|| Error::op(NAME, "cannot take the softmax of a scalar"))?;
    if last == 0 {
        return Err(Error::op(NAME, "last dimension is empty"));
    }
    x.as_f32_mut()?.chunks_mut(last).for_each(|r| {
        softmax_row(r);
    });
    Ok(())
}

/// [`Op`] form: outputs `[x]` (in place), no inputs.
pub struct Softmax;

impl Op for Softmax {
    fn name(&self) -> &'static str {
        NAME
    }

    fn forward(&self, ctx: &mut OpContext) -> Result<()> {
        softmax(ctx.output(NAME, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sum_to_one() {
        let mut t = Tensor::from_f32(&[2, 3], vec![1., 2., 3., 1000., 1000., f32::NEG_INFINITY]).unwrap();
        softmax(&mut t).unwrap();
        let v = t.as_f32().unwrap();
        let e: f64 = (1f64).exp() + (2f64).exp() + (3f64).exp();
        assert!((v[2] as f64 - (3f64).exp() / e).abs() < 1e-6);
        assert_eq!(&v[3..], &[0.5, 0.5, 0.0]);
        let mut r = [0.0f32, 0.0];
        assert!((softmax_row(&mut r) - 2f32.ln()).abs() < 1e-6);
    }
}
