//! SwiGLU activation of the Llama MLP over the fused gate/up projection: `out = silu(gate) * up`.

use super::{Op, OpContext, check_shape};
use crate::base::{Error, Result};
use crate::tensor::Tensor;

const NAME: &str = "swiglu";

/// `gate_up` `[rows, 2 inter]` laid out `[gate | up]` per row; `out` `[rows, inter]`.
pub fn swiglu(gate_up: &Tensor, out: &mut Tensor) -> Result<()> {
    let (rows, width) = gate_up.dims2(NAME)?;
    if !width.is_multiple_of(2) {
        return Err(Error::op(NAME, format!("gate_up width {width} is odd")));
    }
    let inter = width / 2;
    check_shape(NAME, "output", out, &[rows, inter])?;
    #[cfg(feature = "cuda")]
    if gate_up.is_cuda() {
        return crate::cuda::ops::swiglu(gate_up, out);
    }
    let gu = gate_up.as_f32()?;
    super::cpu::pool::for_each_chunk(out.as_f32_mut()?, inter, |r, o| {
        let (g, u) = gu[r * width..(r + 1) * width].split_at(inter);
        super::cpu::silu_mul_f32(g, u, o);
    });
    Ok(())
}

/// [`Op`] form: inputs `[gate_up]`, outputs `[out]`.
pub struct SwiGlu;

impl Op for SwiGlu {
    fn name(&self) -> &'static str {
        NAME
    }

    fn forward(&self, ctx: &mut OpContext) -> Result<()> {
        let gu = ctx.input(NAME, 0)?;
        swiglu(gu, ctx.output(NAME, 0)?)
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
        let gu = Tensor::from_f32(&[1, 2 * n], [g.clone(), u.clone()].concat()).unwrap();
        let mut out = Tensor::zeros(&[1, n], DType::F32);
        SwiGlu.forward(&mut OpContext::new(&[&gu], &mut [&mut out])).unwrap();
        for i in 0..n {
            let x = g[i] as f64;
            let want = x / (1.0 + (-x).exp()) * u[i] as f64;
            assert!((out.as_f32().unwrap()[i] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()));
        }
        assert!(swiglu(&gu, &mut Tensor::zeros(&[1, 3], DType::F32)).is_err());
    }
}
