//! Block-quantized weights on the GPU (decode GEMV on the blocks, prefill through bf16 +
//! cuBLASLt, embedding rows) against the CPU's exact path (f32 activations × exactly
//! dequantized blocks). Skips without a GPU. Tolerance: GPU activations are bf16 (relative
//! rounding 2^-9) with f32 accumulation, and the prefill path also rounds the dequantized
//! weights to bf16; random blocks give sums with heavy cancellation, so errors are measured
//! against the output's largest magnitude: max |gpu - cpu| ≤ 1e-2 · max |cpu|.
#![cfg(feature = "cuda")]

mod common;

use common::gpu_available;
use infer_core::op::embedding::embedding;
use infer_core::op::{Precision, matmul::matmul_with_precision};
use infer_core::{DType, DeviceType, Tensor};

const GPU: DeviceType = DeviceType::Cuda(0);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Random but valid blocks: random quants, f16 scales in a sane range (no inf/NaN).
fn random_blocks(dtype: DType, rows: usize, cols: usize, seed: u64) -> Tensor {
    let mut rng = Rng(seed | 1);
    let bytes = dtype.bytes_for(rows * cols).unwrap();
    let mut b: Vec<u8> = (0..bytes).map(|_| rng.next() as u8).collect();
    let scale_offsets: &[usize] = match dtype {
        DType::Q8_0 | DType::Q4_0 => &[0],
        DType::Q4_1 | DType::Q4_K => &[0, 2],
        DType::Q6_K => &[208],
        _ => unreachable!(),
    };
    for blk in b.chunks_exact_mut(dtype.block_bytes()) {
        for &o in scale_offsets {
            let v = half::f16::from_f32(0.002 + 0.01 * rng.unit());
            blk[o..o + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    Tensor::from_quantized(&[rows, cols], dtype, b).unwrap()
}

/// f32 values exactly representable in bf16.
fn acts(rows: usize, cols: usize, seed: u64) -> Tensor {
    let mut rng = Rng(seed | 1);
    let v = (0..rows * cols).map(|_| half::bf16::from_f32(rng.unit() * 2.0 - 1.0).to_f32()).collect();
    Tensor::from_f32(&[rows, cols], v).unwrap()
}

fn assert_close(what: &str, gpu: &Tensor, cpu: &Tensor, rel: f32) {
    let (g, c) = (gpu.to_f32_vec().unwrap(), cpu.to_f32_vec().unwrap());
    assert_eq!(g.len(), c.len(), "{what}: lengths");
    let scale = c.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let worst = g.iter().zip(&c).map(|(a, b)| (a - b).abs() / scale).fold(0f32, f32::max);
    assert!(worst <= rel, "{what}: max err {worst} of the largest |output| > {rel}");
    println!("{what}: max err {worst:.2e} of the largest |output|");
}

#[test]
fn quantized_matmul_and_embedding_match_the_cpu() {
    if !gpu_available() {
        return;
    }
    for dtype in [DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q4_K, DType::Q6_K] {
        let (n, k) = (77, 512);
        let w = random_blocks(dtype, n, k, 7 + dtype.ggml_type() as u64);
        let wg = w.to_device_as(GPU, dtype).unwrap();
        assert_eq!(wg.dtype(), dtype, "blocks stay quantized on the GPU");
        for m in [1, 3, 8, 20] {
            let x = acts(m, k, 3 + m as u64);
            let mut want = Tensor::zeros(&[m, n], DType::F32);
            matmul_with_precision(&x, &w, &mut want, Precision::Exact).unwrap();
            for out_dtype in [DType::BF16, DType::F32] {
                let mut out = Tensor::zeros_on(&[m, n], out_dtype, GPU).unwrap();
                let xg = x.to_device_as(GPU, DType::BF16).unwrap();
                matmul_with_precision(&xg, &wg, &mut out, Precision::Fast).unwrap();
                assert_close(&format!("{dtype} matmul m{m} n{n} k{k} {out_dtype}"), &out, &want, 1e-2);
            }
        }
        let ids = [3u32, 76, 0, 3];
        let mut want = Tensor::zeros(&[4, k], DType::F32);
        embedding(&ids, &w, &mut want).unwrap();
        let mut out = Tensor::zeros_on(&[4, k], DType::F32, GPU).unwrap();
        embedding(&ids, &wg, &mut out).unwrap();
        assert_close(&format!("{dtype} embedding"), &out, &want, 1e-6);
    }
}
