//! A linear layer made of one or more weight matrices whose outputs are concatenated per row
//! (`q_proj | k_proj | v_proj`, `gate_proj | up_proj`): one batched projection of the same input.

use std::borrow::Borrow;

use super::{Op, OpContext, Precision, check_shape, matmul::matmul_with_precision};
use crate::base::{Error, Result};
use crate::tensor::{DType, Tensor, TensorData};

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
        _ if !out.is_cuda() && !x.is_cuda() && x.dtype() == DType::F32 && out.dtype() == DType::F32 => {
            // Several parts (CPU keeps checkpoint tensors unfused, in place): each part's
            // matmul writes its own columns of `out` directly (row stride `total`).
            let k = x.dims2(NAME)?.1;
            if !x.is_contiguous() || !out.is_contiguous() {
                return Err(Error::op(NAME, "x and out must be contiguous"));
            }
            let (x, out) = (x.as_f32()?, out.as_f32_mut()?);
            let mut data = Vec::with_capacity(ws.len());
            for w in ws {
                let w = w.borrow();
                if w.dims2(NAME)?.1 != k {
                    return Err(Error::op(
                        NAME,
                        format!("x [{m}, {k}] · wᵀ with w {:?}: inner dims differ", w.shape()),
                    ));
                }
                if !w.is_contiguous() {
                    return Err(Error::op(NAME, format!("w {:?} must be contiguous", w.shape())));
                }
                data.push(w.data()?);
            }
            if m == 1 && k > 0 && precision == Precision::Fast {
                // Decode over block-quantized parts: the row is quantized once for all of them and
                // their rows share one pool dispatch (k = 0 keeps the per-part path: empty sums).
                let quant: Vec<(DType, &[u8])> = data
                    .iter()
                    .filter_map(|d| if let TensorData::Quant(t, b) = d { Some((*t, *b)) } else { None })
                    .collect();
                if quant.len() == data.len() {
                    return super::cpu::quant::matvec_parts(super::cpu::simd::active(), &quant, x, out);
                }
            }
            let mut col = 0;
            for (d, &n) in data.into_iter().zip(&widths) {
                super::cpu::matmul_nt_cols(x, d, out, total, col, m, n, k, precision)?;
                col += n;
            }
            Ok(())
        }
        _ => {
            // Several parts elsewhere: project into a scratch per part, then interleave the columns.
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

    /// Parts written in place (row stride = the total width) equal each part's own matmul,
    /// bit for bit, on every CPU path: decode (m <= 4), prefill kernels, odd k, f32 and bf16
    /// weights, both precisions.
    #[test]
    fn in_place_parts_equal_separate_matmuls() {
        use crate::op::test_fill as fill;
        for (m, k) in [(1, 64), (3, 33), (5, 64), (20, 96), (70, 33), (70, 128)] {
            let x = Tensor::from_f32(&[m, k], fill(m * k, 7 + m as u64)).unwrap();
            for bf16 in [false, true] {
                let parts: Vec<Tensor> = [37usize, 50, 8]
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| {
                        let v = fill(n * k, 100 + i as u64);
                        if bf16 {
                            Tensor::from_bf16(&[n, k], v.into_iter().map(half::bf16::from_f32).collect()).unwrap()
                        } else {
                            Tensor::from_f32(&[n, k], v).unwrap()
                        }
                    })
                    .collect();
                for p in [Precision::Fast, Precision::Exact] {
                    let mut out = Tensor::zeros(&[m, 95], DType::F32);
                    linear_with_precision(&x, &parts, &mut out, p).unwrap();
                    let mut col = 0;
                    for w in &parts {
                        let n = w.shape()[0];
                        let mut one = Tensor::zeros(&[m, n], DType::F32);
                        crate::op::matmul::matmul_with_precision(&x, w, &mut one, p).unwrap();
                        for r in 0..m {
                            let got = &out.as_f32().unwrap()[r * 95 + col..r * 95 + col + n];
                            assert_eq!(
                                got,
                                &one.as_f32().unwrap()[r * n..(r + 1) * n],
                                "m={m} k={k} bf16={bf16} {p:?}"
                            );
                        }
                        col += n;
                    }
                }
            }
        }
    }
}
