//! The MLP's second half added to the residual stream: `x += (silu(gate) ⊙ up) · w_downᵀ`.
//!
//! On a GPU decode step (one row) SwiGLU is formed inside the down-projection GEMV and the add
//! is its epilogue (one kernel); elsewhere SwiGLU is written to `act` and [`matmul_add`] runs.

use super::{Op, OpContext, Precision, check_shape, matmul_add::matmul_add, swiglu::swiglu};
use crate::base::{Error, Result};
use crate::tensor::Tensor;

const NAME: &str = "swiglu_matmul_add";

/// * `gate_up`: `[rows, 2 inter]` laid out `[gate | up]`, `w`: `[n, inter]`,
/// * `act`: `[rows, inter]` scratch, `scratch`: `[rows, n]` scratch (both unused when fused),
/// * `x`: `[rows, n]` f32, updated in place.
pub fn swiglu_matmul_add(
    gate_up: &Tensor,
    w: &Tensor,
    act: &mut Tensor,
    scratch: &mut Tensor,
    x: &mut Tensor,
    precision: Precision,
) -> Result<()> {
    let (rows, two_inter) = gate_up.dims2(NAME)?;
    let (n, inter) = w.dims2(NAME)?;
    if two_inter != 2 * inter {
        return Err(Error::op(NAME, format!("gate_up {:?} does not fit w {:?}", gate_up.shape(), w.shape())));
    }
    check_shape(NAME, "act", act, &[rows, inter])?;
    check_shape(NAME, "x", x, &[rows, n])?;
    #[cfg(feature = "cuda")]
    if gate_up.is_cuda()
        && rows == 1
        && w.dtype() == crate::tensor::DType::BF16
        && inter <= crate::cuda::fused::FUSED_MAX_K
        && crate::cuda::fused::enabled(crate::cuda::fused::Fusion::SwiGlu)
        && crate::cuda::fused::enabled(crate::cuda::fused::Fusion::Add)
    {
        use crate::cuda::fused::{GemvIn, GemvOut, gemv_fused};
        return gemv_fused(gate_up, w, GemvIn::SwiGlu, x, GemvOut::Accumulate);
    }
    swiglu(gate_up, act)?;
    matmul_add(act, w, scratch, x, precision)
}

/// [`Op`] form: inputs `[gate_up, w]`, outputs `[act, scratch, x]` (`x` is read and updated).
pub struct SwiGluMatMulAdd;

impl Op for SwiGluMatMulAdd {
    fn name(&self) -> &'static str {
        NAME
    }

    fn forward(&self, ctx: &mut OpContext) -> Result<()> {
        let (gate_up, w) = (ctx.input(NAME, 0)?, ctx.input(NAME, 1)?);
        let [act, scratch, x] = ctx.outputs else {
            return Err(Error::op(NAME, "expected outputs [act, scratch, x]"));
        };
        swiglu_matmul_add(gate_up, w, act, scratch, x, Precision::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_swiglu_then_matmul_add() {
        let gu = Tensor::from_f32(&[1, 4], vec![1.0, -2.0, 3.0, 0.5]).unwrap();
        let w = Tensor::from_f32(&[1, 2], vec![2.0, 1.0]).unwrap();
        let mut x = Tensor::from_f32(&[1, 1], vec![1.0]).unwrap();
        let (mut act, mut scratch) = (Tensor::zeros(&[1, 2], x.dtype()), Tensor::zeros(&[1, 1], x.dtype()));
        swiglu_matmul_add(&gu, &w, &mut act, &mut scratch, &mut x, Precision::Exact).unwrap();
        let silu = |v: f32| v / (1.0 + (-v).exp());
        let want = 1.0 + 2.0 * silu(1.0) * 3.0 + silu(-2.0) * 0.5;
        assert!((x.as_f32().unwrap()[0] - want).abs() < 1e-5);
    }
}
