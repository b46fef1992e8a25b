//! GGML block formats against gguf-py (llama.cpp's Python reference), through the fixtures
//! of `scripts/make_quant_fixtures.py` in `tests/fixtures/quant/`:
//!
//! * dequantization of random valid blocks of every type is bit-exact;
//! * the Q8_0/Q4_0/Q4_1 quantizers are bit-exact (gguf-py has no K-quant quantizers, so Q4_K
//!   and Q6_K are checked by their round-trip error and stability);
//! * the public matmul on quantized weights: fast (8-bit activations, integer dots) against
//!   exact (f32 activations, dequantized rows), within the activation-rounding bound.

use infer_core::DType;
use infer_core::op::Precision;
use infer_core::op::cpu::matmul_nt;
use infer_core::tensor::TensorData;
use infer_core::tensor::quant::dequantize;
use infer_core::tensor::quantize::{quantize, quantize_to_vec};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/quant/");
const TYPES: [(DType, &str); 5] =
    [(DType::Q8_0, "q8_0"), (DType::Q4_0, "q4_0"), (DType::Q4_1, "q4_1"), (DType::Q4_K, "q4_k"), (DType::Q6_K, "q6_k")];

fn read(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}{name}")).unwrap_or_else(|e| panic!("{FIXTURES}{name}: {e}"))
}

fn read_f32(name: &str) -> Vec<f32> {
    read(name).chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn fill(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

#[test]
fn dequantize_matches_gguf_py_bit_exactly() {
    for (dtype, name) in TYPES {
        let blocks = read(&format!("{name}.blocks"));
        let want = read_f32(&format!("{name}.dequant"));
        assert!(!blocks.is_empty() && want.len() == dtype.elems_in(blocks.len()), "{name}: fixture sizes");
        let mut got = vec![f32::NAN; want.len()];
        dequantize(dtype, &blocks, &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{name} element {i}: got {g:e}, gguf-py {w:e}");
        }
    }
}

#[test]
fn quantizers_match_gguf_py_bit_exactly() {
    let x = read_f32("quant_input.f32");
    for (dtype, name) in &TYPES[..3] {
        let want = read(&format!("{name}.quant"));
        let got = quantize_to_vec(*dtype, &x).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        let bb = dtype.block_bytes();
        for (b, (g, w)) in got.chunks(bb).zip(want.chunks(bb)).enumerate() {
            assert_eq!(g, w, "{name} block {b} differs from gguf-py");
        }
    }
}

/// RMS of `a - b` over RMS of `a`.
fn rel_rmse(a: &[f32], b: &[f32]) -> f64 {
    let err: f64 = a.iter().zip(b).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum();
    let norm: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum();
    (err / norm).sqrt()
}

fn round_trip(dtype: DType, x: &[f32]) -> Vec<f32> {
    let q = quantize_to_vec(dtype, x).unwrap();
    let mut y = vec![0.0; x.len()];
    dequantize(dtype, &q, &mut y).unwrap();
    y
}

#[test]
fn round_trip_error_is_within_llama_cpp_bounds_and_stable() {
    // Gaussian-ish weights (sum of uniforms) with a different scale per 256 values, as in a
    // real weight matrix; plus the fixture input (zero/constant/tie blocks).
    let mut x: Vec<f32> = (0..64 * 256)
        .map(|i| {
            let u = fill(4, i as u64 + 1);
            (u.iter().sum::<f32>()) * (1.0 + (i / 256) as f32 * 0.1)
        })
        .collect();
    x.extend(read_f32("quant_input.f32"));
    // Relative RMSE bounds: a uniform b-bit grid over a block's range errs by about
    // range / (2^b · sqrt(12)); measured here 0.005 (Q8_0), 0.08 (Q4_0), 0.076 (Q4_1),
    // 0.070 (Q4_K), 0.017 (Q6_K), in line with llama.cpp's quantize-stats on real weights.
    for (dtype, bound) in
        [(DType::Q8_0, 0.008), (DType::Q4_0, 0.12), (DType::Q4_1, 0.1), (DType::Q4_K, 0.1), (DType::Q6_K, 0.02)]
    {
        let y = round_trip(dtype, &x);
        let e1 = rel_rmse(&x, &y);
        assert!(e1 < bound, "{dtype}: relative RMSE {e1:.4} >= {bound}");
        // Re-quantizing values that are already on the grid changes them very little.
        let z = round_trip(dtype, &y);
        let e2 = rel_rmse(&y, &z);
        assert!(e2 < 0.25 * e1, "{dtype}: second round trip moved values by {e2:.4} (first: {e1:.4})");
        eprintln!("{dtype}: relative RMSE {e1:.5}, re-quantization {e2:.5}");
    }
    // Q8_0, Q4_0 and Q4_1 values on their grid are fixed points.
    for dtype in [DType::Q8_0, DType::Q4_1] {
        let y = round_trip(dtype, &x[..4096]);
        let z = round_trip(dtype, &y);
        let moved = y.iter().zip(&z).filter(|(a, b)| a != b).count();
        assert!(moved * 100 < y.len(), "{dtype}: {moved} of {} grid values moved", y.len());
    }
}

#[test]
fn quantize_is_independent_of_chunking() {
    // Parallel over blocks: quantizing a prefix gives the prefix of the whole.
    let x = fill(300 * 256, 7);
    for (dtype, _) in TYPES {
        let all = quantize_to_vec(dtype, &x).unwrap();
        let n = 37 * 256;
        let mut part = vec![0u8; dtype.bytes_for(n).unwrap()];
        quantize(dtype, &x[..n], &mut part).unwrap();
        assert_eq!(part[..], all[..part.len()], "{dtype}");
    }
}

/// Fast (8-bit activations) against exact (f32 activations) through the public entry point.
/// Each activation is off by at most half its block's step, `amax(block)/254`, so
/// `|fast - exact| <= Σ_l |w_l| · amax(block of l) / 254` (+ f32 summation error).
#[test]
fn fast_matmul_is_within_the_activation_rounding_bound_of_exact() {
    for (dtype, _) in TYPES {
        let (m, n, k) = (5, 19, 512);
        let wf = fill(n * k, 3);
        let w = quantize_to_vec(dtype, &wf).unwrap();
        let mut wd = vec![0.0; n * k];
        dequantize(dtype, &w, &mut wd).unwrap();
        let x = fill(m * k, 11);
        let (mut fast, mut exact) = (vec![0.0; m * n], vec![0.0; m * n]);
        matmul_nt(&x, TensorData::Quant(dtype, &w), &mut fast, m, n, k, Precision::Fast).unwrap();
        matmul_nt(&x, TensorData::Quant(dtype, &w), &mut exact, m, n, k, Precision::Exact).unwrap();
        let bs = if dtype.block_size() == 256 { 256 } else { 32 };
        for i in 0..m {
            let xr = &x[i * k..(i + 1) * k];
            let amax: Vec<f32> = xr.chunks(bs).map(|b| b.iter().fold(0.0f32, |a, v| a.max(v.abs()))).collect();
            for j in 0..n {
                let wr = &wd[j * k..(j + 1) * k];
                let bound: f64 = wr.iter().enumerate().map(|(l, w)| f64::from(w.abs() * amax[l / bs]) / 254.0).sum();
                let scale: f64 = wr.iter().zip(xr).map(|(w, x)| f64::from((w * x).abs())).sum();
                let (f, e) = (f64::from(fast[i * n + j]), f64::from(exact[i * n + j]));
                assert!((f - e).abs() <= bound * 1.001 + 1e-5 * scale, "{dtype} [{i},{j}]: fast {f}, exact {e}");
            }
        }
    }
}

#[test]
fn quantized_matmul_rejects_partial_blocks() {
    let w = vec![0u8; 34 * 2];
    let mut out = vec![0.0; 2];
    let e = matmul_nt(&[0.0; 48], TensorData::Quant(DType::Q8_0, &w), &mut out, 1, 2, 48, Precision::Fast);
    assert!(e.is_err());
}
