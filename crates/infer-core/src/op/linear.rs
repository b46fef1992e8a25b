//! A linear layer made of one or more weight matrices whose outputs are concatenated per row
//! (`q_proj | k_proj | v_proj`, `gate_proj | up_proj`): one batched projection of the same input.

use std::borrow::Borrow;

use super::{Op, OpContext, Precision, check_shape, matmul::matmul_with_precision};
use crate::base::{Error, Result};
use crate::tensor::{DType, Tensor};

const NAME: &str = "linear";

/// `out[m, Σnᵢ] = x[m, k] · [w₀; w₁; …]ᵀ`, each `wᵢ` `[nᵢ, k]` in the PyTorch Linear layout.
pub fn linear<W: Borrow<Tensor>>(x: &Tensor, ws: &[W], out: &mut Tensor) -> Result<()> {
    linear_with_precision(x, ws, out, Precision::default())
}

/// [`linear`] with an explicit CPU [`Precision`] (ignored on a GPU).
pub fn linear_with_precision<W: Borrow<Tensor>>(
    x: &Tensor,
    ws: &[W],
    out: &mut Tensor,
    precision: Precision,
) -> Result<()> {
    let (m, _) = x.dims2(NAME)?;
    let widths: Vec<usize> = ws.iter().map(|w| w.borrow().dims2(NAME).map(|d| d.0)).collect::<Result<_>>()?;
    let total: usize = widths.iter().sum();
    check_shape(NAME, "output", out, &[m, total])?;
    match ws {
        [] => Err(Error::op(NAME, "no weight matrices")),
        [w] => matmul_with_precision(x, w.borrow(), out, precision),
        _ => {
            // Several parts (CPU keeps checkpoint tensors unfused, in place): project into a
            // scratch per part, then interleave the columns.
            let mut col = 0;
            for (w, &n) in ws.iter().zip(&widths) {
                let mut part = Tensor::zeros(&[m, n], DType::F32);
                matmul_with_precision(x, w.borrow(), &mut part, precision)?;
                let (src, dst) = (part.as_f32()?, out.as_f32_mut()?);
                for r in 0..m {
                    dst[r * total + col..r * total + col + n].copy_from_slice(&src[r * n..(r + 1) * n]);
                }
                col += n;
            }
            Ok(())
        }
    }
}

/// [`Op`] form: inputs `[x, w₀, w₁, …]`, outputs `[out]`.
pub struct Linear;

impl Op for Linear {
    fn name(&self) -> &'static str {
        NAME
    }

    fn forward(&self, ctx: &mut OpContext) -> Result<()> {
        let x = ctx.input(NAME, 0)?;
        let ws = &ctx.inputs[1..];
        linear(x, ws, ctx.output(NAME, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenates_parts() {
        let x = Tensor::from_f32(&[2, 2], vec![1., 2., 3., 4.]).unwrap();
        let a = Tensor::from_f32(&[1, 2], vec![1., 0.]).unwrap();
        let b = Tensor::from_f32(&[2, 2], vec![0., 1., 1., 1.]).unwrap();
        let mut out = Tensor::zeros(&[2, 3], DType::F32);
        Linear.forward(&mut OpContext::new(&[&x, &a, &b], &mut [&mut out])).unwrap();
        assert_eq!(out.as_f32().unwrap(), &[1., 2., 3., 3., 4., 7.]);
        let mut wrong = Tensor::zeros(&[2, 2], DType::F32);
        assert!(linear(&x, &[a, b], &mut wrong).is_err());
    }
}
