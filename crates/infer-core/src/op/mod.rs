//! Ops: one file each. Every op file offers a checked function the model calls (shapes,
//! dtypes and device are validated once at the top, then a kernel runs) and a small struct
//! implementing [`Op`] over it for generic callers.

pub mod add;
pub mod add_rms_norm;
pub mod argmax;
pub mod attention;
pub mod cpu;
pub mod embedding;
pub mod linear;
pub mod matmul;
pub mod matmul_add;
pub mod norm_linear;
pub mod norm_rope_kv;
pub mod norm_swiglu;
pub mod paged;
pub mod paged_attention;
pub mod rms_norm;
pub mod rope;
pub mod rope_kv;
pub mod rope_kv_paged;
pub mod softmax;
pub mod swiglu;
pub mod swiglu_matmul_add;

use crate::base::{Error, Result};
use crate::tensor::Tensor;

/// Inputs and outputs handed to [`Op::forward`].
pub struct OpContext<'a> {
    pub inputs: &'a [&'a Tensor],
    pub outputs: &'a mut [&'a mut Tensor],
}

impl<'a> OpContext<'a> {
    pub fn new(inputs: &'a [&'a Tensor], outputs: &'a mut [&'a mut Tensor]) -> Self {
        Self { inputs, outputs }
    }

    /// Input `i`, or an error naming the op.
    pub fn input(&self, op: &'static str, i: usize) -> Result<&'a Tensor> {
        self.inputs
            .get(i)
            .copied()
            .ok_or_else(|| Error::op(op, format!("expected at least {} inputs, got {}", i + 1, self.inputs.len())))
    }

    /// Output `i`, or an error naming the op.
    pub fn output(&mut self, op: &'static str, i: usize) -> Result<&mut Tensor> {
        let n = self.outputs.len();
        self.outputs
            .get_mut(i)
            .map(|t| &mut **t)
            .ok_or_else(|| Error::op(op, format!("expected at least {} outputs, got {n}", i + 1)))
    }
}

/// The device-memory copy of a position (an i32 that kernels read).
#[cfg(feature = "cuda")]
pub type DevicePositions = crate::cuda::DeviceI32;
/// Without the `cuda` feature there is no device copy.
#[cfg(not(feature = "cuda"))]
pub type DevicePositions = std::convert::Infallible;

/// Where a chunk of tokens starts in the sequence: the host value, and on a GPU optionally the
/// same value in device memory, which kernels read so that a captured CUDA graph can be
/// replayed at a new position (without it, GPU ops upload `start` themselves).
#[derive(Debug, Clone, Copy)]
pub struct Positions<'a> {
    pub start: usize,
    pub device: Option<&'a DevicePositions>,
}

impl Positions<'_> {
    /// Host-only positions (CPU ops).
    pub fn host(start: usize) -> Self {
        Positions { start, device: None }
    }
}

/// How a CPU matmul may round its inputs (GPU kernels always use bf16 activations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// The fastest kernels: activations may be rounded to bf16 (bf16 weights on CPUs with
    /// AVX512_BF16) or quantized to 8 bits per block plus a residual pass (quantized weights,
    /// fewer than 32 rows); 32+ rows on quantized weights dequantize them to bf16 (AVX512_BF16)
    /// or f32 for the float GEMM (`op::cpu::quant_prefill`).
    #[default]
    Fast,
    /// f32 activations against exactly widened or dequantized weights: the reference path.
    Exact,
}

/// A computation over tensors.
pub trait Op {
    /// The op's name, used in errors and logs.
    fn name(&self) -> &'static str;

    /// Reads `ctx.inputs`, writes `ctx.outputs`.
    fn forward(&self, ctx: &mut OpContext) -> Result<()>;
}

/// Checks that `t` has exactly `shape`.
pub(crate) fn check_shape(op: &'static str, what: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    if t.shape() != shape {
        return Err(Error::op(op, format!("{what} has shape {:?}, expected {shape:?}", t.shape())));
    }
    Ok(())
}

/// Deterministic pseudo-random values in [-0.5, 0.5) for op tests (an LCG seeded by `seed`).
#[cfg(test)]
pub(crate) fn test_fill(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect()
}
