//! CUDA ops against the CPU ops on random inputs (odd sizes included). Skips, with a printed
//! reason, when the build has no `cuda` feature or no GPU is visible.
//! Tolerance: GPU activations are bf16 (8-bit mantissa, relative rounding 2^-9 ≈ 0.2%), with
//! f32 accumulation; outputs are compared with |gpu - cpu| ≤ 3e-2 · (1 + |cpu|) unless stated.
#![cfg(feature = "cuda")]

mod common;

use common::gpu_available;
use infer_core::cuda::fused::{GemvIn, GemvOut, gemv_fused};
use infer_core::model::config::LlamaConfig;
use infer_core::op::attention::attention;
use infer_core::op::rope::RopeTable;
use infer_core::op::{
    Positions, Precision, add_rms_norm::add_rms_norm, embedding::embedding, matmul::matmul, matmul_add::matmul_add,
    norm_linear::norm_linear, rope_kv::rope_kv, swiglu::swiglu, swiglu_matmul_add::swiglu_matmul_add,
};
use infer_core::{DType, DeviceType, Tensor};

const GPU: DeviceType = DeviceType::Cuda(0);

fn rand(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect()
}

/// A host f32 tensor whose values are exactly representable in bf16 (so CPU and GPU see the same inputs).
fn host(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let v = rand(shape.iter().product(), seed, scale).into_iter().map(|x| half::bf16::from_f32(x).to_f32()).collect();
    Tensor::from_f32(shape, v).unwrap()
}

fn to_gpu(t: &Tensor, dtype: DType) -> Tensor {
    t.to_device_as(GPU, dtype).unwrap()
}

fn assert_close(what: &str, gpu: &Tensor, cpu: &Tensor, rel: f32) {
    let (g, c) = (gpu.to_f32_vec().unwrap(), cpu.to_f32_vec().unwrap());
    assert_eq!(g.len(), c.len(), "{what}: lengths");
    let mut worst = 0f32;
    for (i, (a, b)) in g.iter().zip(&c).enumerate() {
        let err = (a - b).abs() / (1.0 + b.abs());
        worst = worst.max(err);
        assert!(err <= rel, "{what}[{i}]: gpu {a} vs cpu {b} (rel err {err} > {rel})");
    }
    println!("{what}: max rel err {worst:.2e}");
}

#[test]
fn matmul_gemv_and_gemm() {
    if !gpu_available() {
        return;
    }
    for &(m, n, k) in &[
        (1, 3, 8),
        (1, 1000, 2056),
        (1, 300, 8192),
        (3, 77, 264),
        (8, 64, 64),
        (9, 130, 72),
        (64, 300, 520),
        (130, 257, 64),
    ] {
        let (x, w) = (host(&[m, k], 1, 1.0), host(&[n, k], 2, 0.5));
        let mut want = Tensor::zeros(&[m, n], DType::F32);
        matmul(&x, &w, &mut want).unwrap();
        for out_dtype in [DType::BF16, DType::F32] {
            let mut out = Tensor::zeros_on(&[m, n], out_dtype, GPU).unwrap();
            matmul(&to_gpu(&x, DType::BF16), &to_gpu(&w, DType::BF16), &mut out).unwrap();
            // Sums of k products: compare relative to sqrt(k) scale.
            assert_close(&format!("matmul m{m} n{n} k{k} {out_dtype}"), &out, &want, 3e-2 * (k as f32).sqrt() / 4.0);
        }
    }
}

/// The fused decode ops (one row: norm in the GEMV, SwiGLU in the GEMV, residual add in the
/// epilogue) and their unfused GPU forms (several rows) against the CPU ops.
#[test]
fn fused_norm_linear_matmul_add_swiglu() {
    if !gpu_available() {
        return;
    }
    for &(rows, dim, n, inter) in &[(1, 2048, 3072, 8192), (1, 64, 40, 24), (5, 64, 40, 24), (20, 256, 72, 96)] {
        let tol = 3e-2 * (dim.max(inter) as f32).sqrt() / 4.0;
        let (x, g, w) = (host(&[rows, dim], 11, 2.0), host(&[dim], 12, 1.0), host(&[n, dim], 13, 0.5));
        let (mut h, mut want) = (Tensor::zeros(&[rows, dim], DType::F32), Tensor::zeros(&[rows, n], DType::F32));
        norm_linear(&x, &g, 1e-5, &[&w], &mut h, &mut want, Precision::Exact).unwrap();
        let mut hg = Tensor::zeros_on(&[rows, dim], DType::BF16, GPU).unwrap();
        for out_dtype in [DType::BF16, DType::F32] {
            let mut out = Tensor::zeros_on(&[rows, n], out_dtype, GPU).unwrap();
            let (xg, gg, wg) = (to_gpu(&x, DType::F32), to_gpu(&g, DType::BF16), to_gpu(&w, DType::BF16));
            norm_linear(&xg, &gg, 1e-5, &[&wg], &mut hg, &mut out, Precision::Fast).unwrap();
            assert_close(&format!("norm_linear {rows}x{dim}x{n} {out_dtype}"), &out, &want, tol);
        }
        // x[rows, dim] += a[rows, n] · w2[dim, n]ᵀ
        let (a, w2) = (host(&[rows, n], 14, 1.0), host(&[dim, n], 15, 0.5));
        let (mut xc, mut sc) = (x.clone(), Tensor::zeros(&[rows, dim], DType::F32));
        matmul_add(&a, &w2, &mut sc, &mut xc, Precision::Exact).unwrap();
        let mut xg = to_gpu(&x, DType::F32);
        let mut sg = Tensor::zeros_on(&[rows, dim], DType::BF16, GPU).unwrap();
        matmul_add(&to_gpu(&a, DType::BF16), &to_gpu(&w2, DType::BF16), &mut sg, &mut xg, Precision::Fast).unwrap();
        assert_close(&format!("matmul_add {rows}x{n}->{dim}"), &xg, &xc, tol);
        // x[rows, dim] += swiglu(gu[rows, 2 inter]) · w3[dim, inter]ᵀ
        let (gu, w3) = (host(&[rows, 2 * inter], 16, 3.0), host(&[dim, inter], 17, 0.5));
        let (mut xc, mut ac) = (x.clone(), Tensor::zeros(&[rows, inter], DType::F32));
        swiglu_matmul_add(&gu, &w3, &mut ac, &mut sc, &mut xc, Precision::Exact).unwrap();
        let mut xg = to_gpu(&x, DType::F32);
        let mut ag = Tensor::zeros_on(&[rows, inter], DType::BF16, GPU).unwrap();
        let (gug, w3g) = (to_gpu(&gu, DType::BF16), to_gpu(&w3, DType::BF16));
        swiglu_matmul_add(&gug, &w3g, &mut ag, &mut sg, &mut xg, Precision::Fast).unwrap();
        assert_close(&format!("swiglu_matmul_add {rows}x{inter}->{dim}"), &xg, &xc, tol);
        if rows == 1 {
            // The SwiGLU-input GEMV directly (opt-in by default, see cuda::fused::enabled).
            let mut xg = to_gpu(&x, DType::F32);
            gemv_fused(&gug, &w3g, GemvIn::SwiGlu, &mut xg, GemvOut::Accumulate).unwrap();
            assert_close(&format!("gemv swiglu-in {inter}->{dim}"), &xg, &xc, tol);
        }
    }
}

#[test]
fn add_rms_norm_swiglu_embedding() {
    if !gpu_available() {
        return;
    }
    for &(rows, dim) in &[(1, 64), (3, 2048), (5, 100)] {
        let (x, d, w) = (host(&[rows, dim], 3, 2.0), host(&[rows, dim], 4, 1.0), host(&[dim], 5, 1.0));
        let (mut xc, mut oc) = (x.clone(), Tensor::zeros(&[rows, dim], DType::F32));
        add_rms_norm(&mut xc, Some(&d), &w, 1e-5, &mut oc).unwrap();
        let mut xg = to_gpu(&x, DType::F32);
        let mut og = Tensor::zeros_on(&[rows, dim], DType::BF16, GPU).unwrap();
        add_rms_norm(&mut xg, Some(&to_gpu(&d, DType::BF16)), &to_gpu(&w, DType::BF16), 1e-5, &mut og).unwrap();
        assert_close(&format!("add_rms_norm x {rows}x{dim}"), &xg, &xc, 1e-5);
        assert_close(&format!("add_rms_norm out {rows}x{dim}"), &og, &oc, 2e-2);
    }
    let gu = host(&[3, 2 * 193], 6, 4.0);
    let mut want = Tensor::zeros(&[3, 193], DType::F32);
    swiglu(&gu, &mut want).unwrap();
    let mut out = Tensor::zeros_on(&[3, 193], DType::BF16, GPU).unwrap();
    swiglu(&to_gpu(&gu, DType::BF16), &mut out).unwrap();
    assert_close("swiglu", &out, &want, 2e-2);
    let table = host(&[50, 24], 7, 1.0);
    let mut want = Tensor::zeros(&[4, 24], DType::F32);
    embedding(&[3, 49, 0, 3], &table, &mut want).unwrap();
    let mut out = Tensor::zeros_on(&[4, 24], DType::F32, GPU).unwrap();
    embedding(&[3, 49, 0, 3], &to_gpu(&table, DType::BF16), &mut out).unwrap();
    assert_close("embedding", &out, &want, 0.0);
    assert!(
        embedding(&[50], &to_gpu(&table, DType::BF16), &mut Tensor::zeros_on(&[1, 24], DType::F32, GPU).unwrap())
            .is_err()
    );
}

fn config(head_dim: usize) -> LlamaConfig {
    let text = include_str!("../../../tests/fixtures/tiny-llama3/config.json")
        .replace("\"head_dim\": 16", &format!("\"head_dim\": {head_dim}"));
    LlamaConfig::from_json_str(&text, std::path::Path::new("config.json")).unwrap()
}

#[test]
fn rope_kv_and_attention_prefill_then_decode() {
    if !gpu_available() {
        return;
    }
    for &(hd, nh, nkv, ctx, p0, seq) in
        &[(16, 4, 2, 40, 0, 7), (64, 8, 2, 600, 3, 300), (128, 4, 4, 64, 10, 1), (64, 32, 8, 300, 257, 1)]
    {
        let table = RopeTable::new(&config(hd), ctx);
        let width = (nh + 2 * nkv) * hd;
        // Fill positions 0..p0 first with a prefix, then the chunk under test.
        let mut cpu_k = Tensor::zeros(&[nkv, ctx, hd], DType::F32);
        let mut cpu_v = Tensor::zeros(&[nkv, ctx, hd], DType::F32);
        let mut gpu_k = Tensor::zeros_on(&[nkv, ctx, hd], DType::BF16, GPU).unwrap();
        let mut gpu_v = Tensor::zeros_on(&[nkv, ctx, hd], DType::BF16, GPU).unwrap();
        for (start, n, seed) in [(0, p0, 10), (p0, seq, 11)] {
            if n == 0 {
                continue;
            }
            let qkv = host(&[n, width], seed, 1.0);
            let pos = Positions::host(start);
            let mut q = Tensor::zeros(&[n, nh * hd], DType::F32);
            rope_kv(&qkv, &mut q, &mut cpu_k, &mut cpu_v, &pos, &table).unwrap();
            let mut qg = Tensor::zeros_on(&[n, nh * hd], DType::BF16, GPU).unwrap();
            rope_kv(&to_gpu(&qkv, DType::BF16), &mut qg, &mut gpu_k, &mut gpu_v, &pos, &table).unwrap();
            assert_close(&format!("rope q hd{hd} start{start} n{n}"), &qg, &q, 2e-2);
            let mut att = Tensor::zeros(&[n, nh * hd], DType::F32);
            attention(&q, &cpu_k, &cpu_v, &pos, nh, &mut att).unwrap();
            let mut attg = Tensor::zeros_on(&[n, nh * hd], DType::BF16, GPU).unwrap();
            attention(&qg, &gpu_k, &gpu_v, &pos, nh, &mut attg).unwrap();
            assert_close(&format!("attention hd{hd} nh{nh} nkv{nkv} start{start} n{n}"), &attg, &att, 3e-2);
        }
        assert_close(&format!("k cache hd{hd}"), &gpu_k, &cpu_k, 2e-2);
        assert_close(&format!("v cache hd{hd}"), &gpu_v, &cpu_v, 2e-2);
    }
}

#[test]
fn mixed_devices_are_errors() {
    if !gpu_available() {
        return;
    }
    let x = host(&[1, 8], 1, 1.0);
    let mut out = Tensor::zeros_on(&[1, 4], DType::F32, GPU).unwrap();
    let e = matmul(&to_gpu(&x, DType::BF16), &host(&[4, 8], 2, 1.0), &mut out).unwrap_err();
    assert!(e.to_string().contains("w must be on cuda:0"), "{e}");
}
