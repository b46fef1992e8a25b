//! Matmul micro-benchmark on the Llama-3.2-1B shapes with bf16 weights (ignored by default):
//!
//! ```text
//! cargo test --release -p infer-core --test matmul_bench -- --ignored --nocapture
//! ```
//!
//! Decode (m = 1) reports GB/s of bf16 weights read, both with the matrix hot in cache
//! (same matrix every call) and streamed from DRAM (rotating over copies larger than L3, as
//! a real forward pass does), next to a plain 2-thread read of 256 MiB measured in the same
//! run (the VM's bandwidth drifts). Prefill (m = 64, 128) reports GFLOP/s (2·m·n·k per call).
//! Both precisions: `Exact` (f32 activations) and `Fast` (bf16 activations with AVX512_BF16).
//! `MATMUL_BENCH_FILTER=gate` runs only the shapes whose name contains the string.
//!
//! `bench_quantized_matmul` does the same for block-quantized weights on one 2048×8192 matrix
//! (Llama-3.2-1B's down projection): GB/s of quantized weights at m = 1 and GFLOP/s at m = 64,
//! fast (m = 1: 8-bit activations with a residual pass, integer dots; m = 64: weight rows
//! dequantized to bf16 or f32 for the float GEMM, `op/cpu/quant_prefill.rs`) against exact
//! (dequantized rows, f32 dots), timed interleaved so that machine noise hits both alike.

use std::time::{Duration, Instant};

use half::bf16;
use infer_core::op::Precision;
use infer_core::op::cpu;
use infer_core::op::matmul::matmul_with_precision;
use infer_core::tensor::quantize::quantize_to_vec;
use infer_core::{DType, Tensor};

/// `[n (out_features), k (in_features)]`.
const SHAPES: &[(&str, usize, usize)] = &[
    ("q/o_proj [2048x2048]", 2048, 2048),
    ("gate/up [8192x2048]", 8192, 2048),
    ("down [2048x8192]", 2048, 8192),
    ("lm_head [128256x2048]", 128256, 2048),
];

/// Bytes of weights to rotate over for the streamed decode figure (> 32 MiB L3).
const STREAM_BYTES: usize = 256 << 20;

fn fill(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

fn weights(n: usize, k: usize, seed: u64) -> Tensor {
    let v = fill(n * k, seed).into_iter().map(bf16::from_f32).collect();
    Tensor::from_bf16(&[n, k], v).expect("weights")
}

/// Best of 5 timings of `f` (after one warm-up call).
fn best_of_5(mut f: impl FnMut()) -> Duration {
    f();
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// GB/s of a plain read of `buf` split in one contiguous half per rayon thread (summing u64
/// words): the memory bandwidth the machine gives right now, for comparison.
fn read_bandwidth(buf: &[u64]) -> f64 {
    use rayon::prelude::*;
    let half = buf.len().div_ceil(rayon::current_num_threads());
    let t = best_of_5(|| {
        let s: u64 = buf.par_chunks(half).map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b))).sum();
        std::hint::black_box(s);
    });
    (buf.len() * 8) as f64 / t.as_secs_f64() / 1e9
}

#[test]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
fn bench_matmul_shapes() {
    println!(
        "matmul bench: isa={} (detected {}), avx512_bf16={}, threads={}",
        cpu::isa(),
        cpu::simd::detected().name(),
        cpu::simd::has_avx512_bf16(),
        rayon::current_num_threads()
    );
    let filter = std::env::var("MATMUL_BENCH_FILTER").unwrap_or_default();
    let mem: Vec<u64> = (0..STREAM_BYTES / 8).map(|i| i as u64).collect();
    println!("plain 2-thread read: {:.1} GB/s", read_bandwidth(&mem));
    drop(mem);
    let mm = |x: &Tensor, w: &Tensor, o: &mut Tensor, p| matmul_with_precision(x, w, o, p).expect("matmul");
    for &(name, n, k) in SHAPES.iter().filter(|s| s.0.contains(filter.as_str())) {
        let w = weights(n, k, (n + k) as u64);
        let wbytes = (n * k * 2) as f64;
        let copies = STREAM_BYTES.div_ceil(n * k * 2).max(2);
        let extra: Vec<Tensor> = (1..copies).map(|i| weights(n, k, i as u64)).collect();
        let all: Vec<&Tensor> = std::iter::once(&w).chain(&extra).collect();
        let x1 = Tensor::from_f32(&[1, k], fill(k, 7)).expect("x");
        let mut o1 = Tensor::zeros(&[1, n], DType::F32);
        for p in [Precision::Exact, Precision::Fast] {
            // Decode, hot: the same matrix every call; streamed: rotate over copies (> L3).
            let hot = best_of_5(|| mm(&x1, &w, &mut o1, p));
            let stream = best_of_5(|| all.iter().for_each(|wi| mm(&x1, wi, &mut o1, p))) / all.len() as u32;
            let mut line = format!(
                "{name:24} {p:?} m=1 decode hot {:6.1} GB/s streamed {:5.1} GB/s ({:7.1} us)",
                wbytes / hot.as_secs_f64() / 1e9,
                wbytes / stream.as_secs_f64() / 1e9,
                stream.as_secs_f64() * 1e6
            );
            for m in [64, 128] {
                let x = Tensor::from_f32(&[m, k], fill(m * k, m as u64)).expect("x");
                let mut o = Tensor::zeros(&[m, n], DType::F32);
                let t = best_of_5(|| mm(&x, &w, &mut o, p));
                let flop = 2.0 * (m * n * k) as f64;
                line += &format!(" | m={m} {:5.1} GFLOP/s", flop / t.as_secs_f64() / 1e9);
            }
            println!("{line}");
        }
    }
}

/// Best of 3 interleaved rounds of [`best_of_5`] for each closure (same noise for all).
fn interleaved<const N: usize>(mut fs: [&mut dyn FnMut(); N]) -> [Duration; N] {
    let mut best = [Duration::MAX; N];
    for _ in 0..3 {
        for (f, b) in fs.iter_mut().zip(&mut best) {
            *b = (*b).min(best_of_5(&mut *f));
        }
    }
    best
}

#[test]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
fn bench_quantized_matmul() {
    let (n, k) = (2048, 8192);
    println!(
        "quantized matmul bench [{n}x{k}]: isa={} int-dot={} threads={}",
        cpu::simd::active().name(),
        cpu::quant::kernel_name(cpu::simd::active()),
        rayon::current_num_threads()
    );
    let wf = fill(n * k, 1);
    for dtype in [DType::Q4_1, DType::Q8_0, DType::Q4_K, DType::Q4_0, DType::Q6_K] {
        let bytes = quantize_to_vec(dtype, &wf).expect("quantize");
        let wbytes = bytes.len() as f64;
        let w = Tensor::from_quantized(&[n, k], dtype, bytes.clone()).expect("weights");
        let run = |x: &Tensor, o: &mut Tensor, p: Precision| matmul_with_precision(x, &w, o, p).expect("matmul");

        let x1 = Tensor::from_f32(&[1, k], fill(k, 7)).expect("x");
        let (mut o1, mut o2) = (Tensor::zeros(&[1, n], DType::F32), Tensor::zeros(&[1, n], DType::F32));
        let [fast, exact] =
            interleaved([&mut || run(&x1, &mut o1, Precision::Fast), &mut || run(&x1, &mut o2, Precision::Exact)]);
        println!(
            "{dtype:5} m=1  decode (hot) fast {:6.1} GB/s ({:7.1} us)   exact {:6.1} GB/s ({:7.1} us)   {:4.1}x",
            wbytes / fast.as_secs_f64() / 1e9,
            fast.as_secs_f64() * 1e6,
            wbytes / exact.as_secs_f64() / 1e9,
            exact.as_secs_f64() * 1e6,
            exact.as_secs_f64() / fast.as_secs_f64()
        );
        // Streamed from DRAM, as in a real forward pass: rotate over copies larger than L3.
        let copies: Vec<Tensor> = (0..STREAM_BYTES.div_ceil(bytes.len()).max(2))
            .map(|_| Tensor::from_quantized(&[n, k], dtype, bytes.clone()).expect("copy"))
            .collect();
        let stream = best_of_5(|| {
            for c in &copies {
                matmul_with_precision(&x1, c, &mut o1, Precision::Fast).expect("matmul");
            }
        }) / copies.len() as u32;
        drop(copies);
        println!(
            "{dtype:5} m=1  decode (streamed from DRAM) fast {:6.1} GB/s ({:7.1} us)",
            wbytes / stream.as_secs_f64() / 1e9,
            stream.as_secs_f64() * 1e6
        );

        let m = 64;
        let x = Tensor::from_f32(&[m, k], fill(m * k, 9)).expect("x");
        let (mut o1, mut o2) = (Tensor::zeros(&[m, n], DType::F32), Tensor::zeros(&[m, n], DType::F32));
        let flop = 2.0 * (m * n * k) as f64;
        let [fast, exact] =
            interleaved([&mut || run(&x, &mut o1, Precision::Fast), &mut || run(&x, &mut o2, Precision::Exact)]);
        println!(
            "{dtype:5} m={m} prefill     fast {:6.1} GFLOP/s ({:6.2} ms) exact {:6.1} GFLOP/s ({:6.2} ms) {:4.1}x",
            flop / fast.as_secs_f64() / 1e9,
            fast.as_secs_f64() * 1e3,
            flop / exact.as_secs_f64() / 1e9,
            exact.as_secs_f64() * 1e3,
            exact.as_secs_f64() / fast.as_secs_f64()
        );
    }
}
