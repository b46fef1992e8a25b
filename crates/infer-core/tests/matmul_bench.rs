//! Matmul micro-benchmark on the Llama-3.2-1B shapes with bf16 weights (ignored by default):
//!
//! ```text
//! cargo test --release -p infer-core --test matmul_bench -- --ignored --nocapture
//! ```
//!
//! Decode (m = 1) reports GB/s of bf16 weights read, both with the matrix hot in cache
//! (same matrix every call) and streamed from DRAM (rotating over copies larger than L3, as
//! a real forward pass does). Prefill (m = 64, 128) reports GFLOP/s (2·m·n·k per call) on the
//! default f32 path and, when the CPU has AVX512_BF16, on the opt-in fast bf16 path.

use std::time::{Duration, Instant};

use half::bf16;
use infer_core::op::cpu;
use infer_core::op::matmul::matmul;
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
    let fast_available = cpu::simd::has_avx512_bf16();
    for &(name, n, k) in SHAPES {
        let w = weights(n, k, (n + k) as u64);
        let wbytes = (n * k * 2) as f64;

        // Decode, hot: the same matrix every call.
        let x1 = Tensor::from_f32(&[1, k], fill(k, 7)).expect("x");
        let mut o1 = Tensor::zeros(&[1, n], DType::F32);
        let hot = best_of_5(|| matmul(&x1, &w, &mut o1).expect("matmul"));

        // Decode, streamed: rotate over copies so every call reads DRAM.
        let copies = STREAM_BYTES.div_ceil(n * k * 2).max(2);
        let extra: Vec<Tensor> = (1..copies).map(|i| weights(n, k, i as u64)).collect();
        let all: Vec<&Tensor> = std::iter::once(&w).chain(&extra).collect();
        let stream = best_of_5(|| {
            for wi in &all {
                matmul(&x1, wi, &mut o1).expect("matmul");
            }
        }) / all.len() as u32;
        drop(extra);
        println!(
            "{name:24} m=1    decode  hot {:7.1} GB/s ({:8.1} us)   streamed {:6.1} GB/s ({:8.1} us)",
            wbytes / hot.as_secs_f64() / 1e9,
            hot.as_secs_f64() * 1e6,
            wbytes / stream.as_secs_f64() / 1e9,
            stream.as_secs_f64() * 1e6
        );

        for m in [64, 128] {
            let x = Tensor::from_f32(&[m, k], fill(m * k, m as u64)).expect("x");
            let mut o = Tensor::zeros(&[m, n], DType::F32);
            let flop = 2.0 * (m * n * k) as f64;
            cpu::set_fast_bf16(false);
            let t = best_of_5(|| matmul(&x, &w, &mut o).expect("matmul"));
            let mut line = format!(
                "{name:24} m={m:<4} prefill f32 {:6.1} GFLOP/s ({:7.2} ms)",
                flop / t.as_secs_f64() / 1e9,
                t.as_secs_f64() * 1e3
            );
            if fast_available {
                cpu::set_fast_bf16(true);
                let t = best_of_5(|| matmul(&x, &w, &mut o).expect("matmul"));
                cpu::set_fast_bf16(false);
                line += &format!(
                    "   bf16dot {:6.1} GFLOP/s ({:7.2} ms)",
                    flop / t.as_secs_f64() / 1e9,
                    t.as_secs_f64() * 1e3
                );
            }
            println!("{line}");
        }
    }
}
