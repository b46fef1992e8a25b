//! RMSNorm: `y = x / sqrt(mean(x²) + eps) * weight`, row by row.

use super::{Op, OpContext, check_shape};
use crate::base::{Error, Result};
use crate::tensor::Tensor;

const NAME: &str = "rms_norm";

/// `x` `[rows, dim]` f32, `weight` `[dim]` (f32/bf16/f16), `out` `[rows, dim]` f32 (bf16 on a GPU).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32, out: &mut Tensor) -> Result<()> {
    let (rows, dim) = x.dims2(NAME)?;
    check_shape(NAME, "weight", weight, &[dim])?;
    check_shape(NAME, "output", out, &[rows, dim])?;
    if !(eps.is_finite() && eps > 0.0) {
        return Err(Error::op(NAME, format!("eps must be positive, got {eps}")));
    }
    #[cfg(feature = "cuda")]
    if x.is_cuda() {
        return crate::cuda::ops::rms_norm(x, weight, eps, out);
    }
    let mut w = vec![0f32; dim];
    weight.data()?.copy_to_f32(0, &mut w)?;
    let x = x.as_f32()?;
    let out = out.as_f32_mut()?;
    crate::op::cpu::pool::for_each_chunk(out, dim, |r, o| {
        let xr = &x[r * dim..(r + 1) * dim];
        // Accumulate in f64: the mean of squares over thousands of elements is the one
        // reduction here whose rounding shows up in the logits.
        let ss: f64 = xr.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let inv = (1.0 / (ss / dim as f64 + eps as f64).sqrt()) as f32;
        for ((o, &xv), &wv) in o.iter_mut().zip(xr).zip(&w) {
            *o = xv * inv * wv;
        }
    });
    Ok(())
}

/// [`Op`] form: inputs `[x, weight]`, outputs `[out]`.
pub struct RmsNorm {
    pub eps: f32,
}

impl Op for RmsNorm {
    fn name(&self) -> &'static str {
        NAME
    }

    fn forward(&self, ctx: &mut OpContext) -> Result<()> {
        let (x, w) = (ctx.input(NAME, 0)?, ctx.input(NAME, 1)?);
        rms_norm(x, w, self.eps, ctx.output(NAME, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;
    use ndarray::Array2;

    #[test]
    fn matches_reference_on_odd_sizes() {
        for &(rows, dim) in &[(1, 1), (3, 17), (5, 67)] {
            let xs: Vec<f32> = (0..rows * dim).map(|i| ((i * 7919 % 113) as f32 - 56.0) / 13.0).collect();
            let ws: Vec<f32> = (0..dim).map(|i| 0.5 + (i % 5) as f32 * 0.25).collect();
            let x = Tensor::from_f32(&[rows, dim], xs.clone()).unwrap();
            let w = Tensor::from_f32(&[dim], ws.clone()).unwrap();
            let mut out = Tensor::zeros(&[rows, dim], DType::F32);
            RmsNorm { eps: 1e-5 }.forward(&mut OpContext::new(&[&x, &w], &mut [&mut out])).unwrap();
            let xa = Array2::from_shape_vec((rows, dim), xs.iter().map(|&v| v as f64).collect()).unwrap();
            for (r, row) in xa.rows().into_iter().enumerate() {
                let inv = 1.0 / (row.mapv(|v| v * v).mean().unwrap() + 1e-5).sqrt();
                for c in 0..dim {
                    let want = row[c] * inv * ws[c] as f64;
                    let got = out.as_f32().unwrap()[r * dim + c] as f64;
                    assert!((got - want).abs() < 1e-5 * (1.0 + want.abs()), "{rows}x{dim} [{r},{c}] {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn rejects_wrong_weight() {
        let x = Tensor::zeros(&[2, 4], DType::F32);
        let w = Tensor::zeros(&[3], DType::F32);
        let mut out = Tensor::zeros(&[2, 4], DType::F32);
        assert!(rms_norm(&x, &w, 1e-5, &mut out).unwrap_err().to_string().contains("weight has shape [3]"));
    }
}
