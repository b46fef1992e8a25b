//! SwiGLU activation of the Llama MLP: `out = silu(gate) * up`.

use rayon::prelude::*;

use super::{Op, OpContext, check_shape};
use crate::base::Result;
use crate::tensor::Tensor;

const NAME: &str = "swiglu";

/// `gate`, `up`, `out`: `[rows, intermediate]` f32.
pub fn swiglu(gate: &Tensor, up: &Tensor, out: &mut Tensor) -> Result<()> {
    check_shape(NAME, "up", up, gate.shape())?;
    check_shape(NAME, "output", out, gate.shape())?;
    let (g, u) = (gate.as_f32()?, up.as_f32()?);
    out.as_f32_mut()?.par_chunks_mut(4096).enumerate().for_each(|(c, o)| {
        let base = c * 4096;
        for (i, o) in o.iter_mut().enumerate() {
            let x = g[base + i];
            *o = x / (1.0 + (-x).exp()) * u[base + i];
        }
    });
    Ok(())
}

/// [`Op`] form: inputs `[gate, up]`, outputs `[out]`.
pub struct SwiGlu;

impl Op for SwiGlu {
    fn name(&self) -> &'static str {
        NAME
    }

    fn forward(&self, ctx: &mut OpContext) -> Result<()> {
        let (g, u) = (ctx.input(NAME, 0)?, ctx.input(NAME, 1)?);
        swiglu(g, u, ctx.output(NAME, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    #[test]
    fn matches_reference() {
        let n = 9001;
        let g: Vec<f32> = (0..n).map(|i| (i as f32 - 4500.0) / 500.0).collect();
        let u: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
        let (gt, ut) = (Tensor::from_f32(&[1, n], g.clone()).unwrap(), Tensor::from_f32(&[1, n], u.clone()).unwrap());
        let mut out = Tensor::zeros(&[1, n], DType::F32);
        swiglu(&gt, &ut, &mut out).unwrap();
        for i in 0..n {
            let x = g[i] as f64;
            let want = x / (1.0 + (-x).exp()) * u[i] as f64;
            assert!((out.as_f32().unwrap()[i] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()));
        }
        assert!(swiglu(&gt, &Tensor::zeros(&[1, 3], DType::F32), &mut out).is_err());
    }
}
