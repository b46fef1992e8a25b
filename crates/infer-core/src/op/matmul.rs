//! Matrix multiplication against a Linear layer's weights: `out = x · wᵀ`.
//!
//! Weights use the PyTorch Linear layout `[out_features, in_features]` and are read in place
//! (f32, bf16, f16 or GGML block-quantized, possibly a read-only memory map): never widened or
//! dequantized as a whole. The kernels
//! live in [`op::cpu`](super::cpu); the active instruction set is [`cpu::isa`].

use super::{Op, OpContext, Precision, cpu};
use crate::base::{Error, Result};
use crate::tensor::{DType, Tensor};

const NAME: &str = "matmul";

/// `out[.., j] = Σ_l x[.., l] · w[j, l]`.
///
/// * `x`: f32 `[.., k]` (usually `[m, k]`; leading dims are flattened into `m` rows),
/// * `w`: `[n, k]`, f32/bf16/f16, or block-quantized (Q8_0/Q4_0/Q4_1/Q4_K/Q6_K; `k` whole
///   blocks): [`Precision::Fast`] quantizes `x` to 8 bits per block and uses integer dot
///   kernels (see [`cpu::quant`]), [`Precision::Exact`] dots f32 `x` with dequantized rows,
/// * `out`: f32 with `x`'s shape but the last dim `n`.
///
/// All three must be contiguous. Accumulation is in f32; on the default path the result
/// matches an f64 reference to about 1e-6 of `Σ_l |x·w|` for float weights. For quantized
/// weights the default (fast) path errs by the 8-bit rounding of `x`: at most
/// `Σ_l |w_l| · amax(x's block of l) / 254` (typically ~0.3% of `Σ_l |x·w|`).
pub fn matmul(x: &Tensor, w: &Tensor, out: &mut Tensor) -> Result<()> {
    matmul_with_precision(x, w, out, Precision::default())
}

/// [`matmul`] with an explicit CPU [`Precision`] (ignored on a GPU).
pub fn matmul_with_precision(x: &Tensor, w: &Tensor, out: &mut Tensor, precision: Precision) -> Result<()> {
    let (n, k) =
        w.dims2(NAME).map_err(|_| Error::op(NAME, format!("weight must be 2-D [n, k], got {:?}", w.shape())))?;
    let (xs, os, ws) = (x.shape(), out.shape(), w.shape());
    let Some((&xk, lead)) = xs.split_last() else {
        return Err(Error::op(NAME, format!("x must have at least 1 dim, got shape {xs:?}")));
    };
    if xk != k {
        return Err(Error::op(NAME, format!("x {xs:?} · wᵀ with w {ws:?}: inner dims {xk} and {k} differ")));
    }
    if os.split_last().is_none_or(|(&on, olead)| on != n || olead != lead) {
        let mut want = lead.to_vec();
        want.push(n);
        return Err(Error::op(NAME, format!("out has shape {os:?}, expected {want:?} for x {xs:?} and w {ws:?}")));
    }
    #[cfg(feature = "cuda")]
    if x.is_cuda() {
        return crate::cuda::ops::matmul(x, w, out);
    }
    if x.dtype() != DType::F32 || out.dtype() != DType::F32 {
        return Err(Error::op(
            NAME,
            format!("x and out must be f32, got x {} {xs:?} and out {} {os:?}", x.dtype(), out.dtype()),
        ));
    }
    for (what, t) in [("x", x), ("w", w), ("out", &*out)] {
        if !t.is_contiguous() {
            return Err(Error::op(
                NAME,
                format!("{what} {:?} must be contiguous (strides {:?})", t.shape(), t.strides()),
            ));
        }
    }
    let m: usize = lead.iter().product();
    let x = x.as_f32()?;
    let w = w.data()?;
    let os = os.to_vec();
    let out = out.as_f32_mut().map_err(|e| Error::op(NAME, format!("out {os:?}: {e}")))?;
    cpu::matmul_nt(x, w, out, m, n, k, precision)
}

/// [`Op`] form: inputs `[x, w]`, outputs `[out]`.
pub struct MatMul;

impl Op for MatMul {
    fn name(&self) -> &'static str {
        NAME
    }

    fn forward(&self, ctx: &mut OpContext) -> Result<()> {
        let (x, w) = (ctx.input(NAME, 0)?, ctx.input(NAME, 1)?);
        matmul(x, w, ctx.output(NAME, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};

    use super::*;
    use crate::op::cpu::simd;

    fn fill(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Weights of each dtype, plus their exact f32 values for the reference.
    fn weights(dtype: DType, n: usize, k: usize, seed: u64) -> (Tensor, Vec<f32>) {
        let v = fill(n * k, seed);
        let t = match dtype {
            DType::F32 => Tensor::from_f32(&[n, k], v),
            DType::BF16 => Tensor::from_bf16(&[n, k], v.iter().map(|&f| bf16::from_f32(f)).collect()),
            DType::F16 => Tensor::from_f16(&[n, k], v.iter().map(|&f| f16::from_f32(f)).collect()),
            q => panic!("test weights are float dtypes, got {q}"),
        }
        .unwrap();
        let exact = t.to_f32_vec().unwrap();
        (t, exact)
    }

    /// Reference in f64; also returns `Σ_l |x·w|` per output (the error scale).
    fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
        let mut want = vec![0.0; m * n];
        let mut scale = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for l in 0..k {
                    let p = f64::from(x[i * k + l]) * f64::from(w[j * k + l]);
                    want[i * n + j] += p;
                    scale[i * n + j] += p.abs();
                }
            }
        }
        (want, scale)
    }

    /// Tolerance: |got - f64 reference| <= `rel` · Σ_l |x·w| (+ a tiny absolute floor for
    /// all-zero rows). f32 accumulation over k terms errs by ~sqrt(k)·2^-24 of that sum.
    fn check(got: &[f32], want: &[f64], scale: &[f64], rel: f64, what: &str) {
        for (i, ((g, w), s)) in got.iter().zip(want).zip(scale).enumerate() {
            let err = (f64::from(*g) - w).abs();
            assert!(err <= rel * s + 1e-30, "{what}: element {i}: got {g}, want {w}, err {err:e} > {rel:e} * {s}");
        }
    }

    const SHAPES: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (1, 5, 37),
        (2, 33, 100),
        (3, 13, 45),
        (4, 9, 64),
        (1, 19, 2049),
        (7, 131, 77),
        (65, 17, 517),
        (7, 300, 1030),
        (65, 131, 2053),
        (130, 70, 4100),
        (20, 7, 96),
    ];

    #[test]
    fn matches_f64_reference_on_every_isa_and_dtype() {
        for isa in simd::available() {
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                for &(m, n, k) in SHAPES {
                    let x = fill(m * k, (m * 1000 + k) as u64);
                    let (w, wf) = weights(dtype, n, k, (n * 7 + k) as u64);
                    let (want, scale) = reference(&x, &wf, m, n, k);
                    let mut out = vec![f32::NAN; m * n];
                    cpu::matmul_with(isa, false, &x, w.data().unwrap(), &mut out, m, n, k);
                    check(&out, &want, &scale, 1e-5, &format!("{isa:?} {dtype} m={m} n={n} k={k}"));
                }
            }
        }
    }

    #[test]
    fn fast_bf16_path_is_close() {
        // Activations are rounded to bf16 (relative error <= 2^-9 each, products exact, f32
        // sums): |err| <= 2^-9 · Σ|x·w| + f32 accumulation error; allow 4e-3 of Σ|x·w|.
        // Covers the decode kernel (m <= 4: both tile widths, odd k, k tails), the weight-
        // broadcast prefill kernel (even k: partial 16-row blocks, a second group of 64 rows,
        // fewer than 6 weight rows left) and the packed kernel (odd k: several k blocks, a
        // partial last row block, prefetch across panels).
        // Without AVX512_BF16 (or on another ISA) Fast must equal Exact bit for bit.
        for isa in simd::available() {
            for &(m, n, k) in SHAPES {
                let x = fill(m * k, (m + k) as u64);
                let (w, wf) = weights(DType::BF16, n, k, (n + k) as u64);
                let (want, scale) = reference(&x, &wf, m, n, k);
                let mut out = vec![f32::NAN; m * n];
                cpu::matmul_with(isa, true, &x, w.data().unwrap(), &mut out, m, n, k);
                check(&out, &want, &scale, 4e-3, &format!("{isa:?} fast m={m} n={n} k={k}"));
                if isa < simd::Isa::Avx512 || !simd::has_avx512_bf16() {
                    let mut exact = vec![f32::NAN; m * n];
                    cpu::matmul_with(isa, false, &x, w.data().unwrap(), &mut exact, m, n, k);
                    assert_eq!(out, exact, "{isa:?} m={m} n={n} k={k}: fast differs without AVX512_BF16");
                }
            }
        }
    }

    #[test]
    fn fast_bf16_path_is_exact_on_bf16_inputs() {
        // Activations already bf16-representable and small integers: every product and sum is
        // exact in f32, so the fast kernels must match the reference exactly.
        for &(m, n, k) in SHAPES {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 + 3) % 9) as f32 - 4.0).collect();
            let wv: Vec<bf16> = (0..n * k).map(|i| bf16::from_f32(((i * 5 + 1) % 7) as f32 - 3.0)).collect();
            let w = Tensor::from_bf16(&[n, k], wv).unwrap();
            let (want, _) = reference(&x, &w.to_f32_vec().unwrap(), m, n, k);
            let mut out = vec![f32::NAN; m * n];
            cpu::matmul_with(simd::active(), true, &x, w.data().unwrap(), &mut out, m, n, k);
            for (i, (g, w)) in out.iter().zip(&want).enumerate() {
                assert_eq!(f64::from(*g), *w, "m={m} n={n} k={k} element {i}");
            }
        }
    }

    #[test]
    fn op_form_and_leading_dims() {
        let (m, n, k) = (6, 9, 40);
        let x = Tensor::from_f32(&[2, 3, k], fill(m * k, 3)).unwrap();
        // f16 weights: Precision::Fast (the default) only changes bf16 weights.
        let (w, wf) = weights(DType::F16, n, k, 4);
        let mut out = Tensor::zeros(&[2, 3, n], DType::F32);
        MatMul.forward(&mut OpContext::new(&[&x, &w], &mut [&mut out])).unwrap();
        let (want, scale) = reference(x.as_f32().unwrap(), &wf, m, n, k);
        check(out.as_f32().unwrap(), &want, &scale, 1e-5, "op form");

        // k = 0: the empty sum.
        let mut out = Tensor::from_f32(&[2, 3], vec![5.0; 6]).unwrap();
        matmul(&Tensor::zeros(&[2, 0], DType::F32), &Tensor::zeros(&[3, 0], DType::F16), &mut out).unwrap();
        assert_eq!(out.as_f32().unwrap(), &[0.0; 6]);
    }

    #[test]
    fn rejects_bad_shapes_and_dtypes() {
        let x = Tensor::zeros(&[2, 8], DType::F32);
        let w = Tensor::zeros(&[4, 8], DType::BF16);
        let msg = |r: Result<()>| r.unwrap_err().to_string();
        let e = msg(matmul(&x, &Tensor::zeros(&[4, 7], DType::BF16), &mut Tensor::zeros(&[2, 4], DType::F32)));
        assert!(e.contains("[2, 8]") && e.contains("[4, 7]") && e.contains("inner dims"), "{e}");
        let e = msg(matmul(&x, &w, &mut Tensor::zeros(&[2, 5], DType::F32)));
        assert!(e.contains("[2, 5]") && e.contains("expected [2, 4]"), "{e}");
        let e = msg(matmul(&x, &Tensor::zeros(&[4, 8, 1], DType::F32), &mut Tensor::zeros(&[2, 4], DType::F32)));
        assert!(e.contains("2-D"), "{e}");
        let e = msg(matmul(&Tensor::zeros(&[2, 8], DType::BF16), &w, &mut Tensor::zeros(&[2, 4], DType::F32)));
        assert!(e.contains("must be f32"), "{e}");
        let e = msg(matmul(&x, &w, &mut Tensor::zeros(&[2, 4], DType::F16)));
        assert!(e.contains("must be f32"), "{e}");
        let e = msg(cpu::matmul_nt(&[0.0; 3], w.data().unwrap(), &mut [0.0; 8], 2, 4, 8, Precision::Exact));
        assert!(e.contains("x has 3 elements"), "{e}");
    }
}
