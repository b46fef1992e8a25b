//! Element-wise addition (the residual connections).

use super::{Op, OpContext, check_shape};
use crate::base::Result;
use crate::tensor::Tensor;

const NAME: &str = "add";

/// `acc += x`, both f32 of the same shape.
pub fn add_inplace(acc: &mut Tensor, x: &Tensor) -> Result<()> {
    check_shape(NAME, "x", x, acc.shape())?;
    let x = x.as_f32()?;
    acc.as_f32_mut()?.iter_mut().zip(x).for_each(|(a, b)| *a += b);
    Ok(())
}

/// `out = a + b`, all f32 of the same shape.
pub fn add(a: &Tensor, b: &Tensor, out: &mut Tensor) -> Result<()> {
    check_shape(NAME, "b", b, a.shape())?;
    check_shape(NAME, "output", out, a.shape())?;
    let (a, b) = (a.as_f32()?, b.as_f32()?);
    out.as_f32_mut()?.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (x, y))| *o = x + y);
    Ok(())
}

/// [`Op`] form: inputs `[a, b]`, outputs `[out]`.
pub struct Add;

impl Op for Add {
    fn name(&self) -> &'static str {
        NAME
    }

    fn forward(&self, ctx: &mut OpContext) -> Result<()> {
        let (a, b) = (ctx.input(NAME, 0)?, ctx.input(NAME, 1)?);
        add(a, b, ctx.output(NAME, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    #[test]
    fn adds() {
        let a = Tensor::from_f32(&[3], vec![1., 2., 3.]).unwrap();
        let b = Tensor::from_f32(&[3], vec![0.5, -2., 10.]).unwrap();
        let mut out = Tensor::zeros(&[3], DType::F32);
        Add.forward(&mut OpContext::new(&[&a, &b], &mut [&mut out])).unwrap();
        assert_eq!(out.as_f32().unwrap(), &[1.5, 0., 13.]);
        let mut acc = a.clone();
        add_inplace(&mut acc, &b).unwrap();
        assert_eq!(acc.as_f32().unwrap(), &[1.5, 0., 13.]);
        assert!(add_inplace(&mut acc, &Tensor::zeros(&[2], DType::F32)).is_err());
    }
}
