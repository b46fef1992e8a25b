//! Every quantized dtype × every kernel family this CPU runs × odd shapes, against an f64
//! reference on the dequantized weights and the same 8-bit activations.

use super::*;
use crate::op::cpu::simd;
use crate::tensor::quant::dequantize;
use crate::tensor::quantize::quantize_to_vec;

const TYPES: [DType; 5] = [DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q4_K, DType::Q6_K];

fn fill(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

/// Weights `[n, k]` of `dtype` (quantized from varied-scale values, so every nibble and
/// scale pattern occurs) and their exact f32 values.
fn weights(dtype: DType, n: usize, k: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let v: Vec<f32> = fill(n * k, seed).iter().enumerate().map(|(i, v)| v * (1.0 + (i / 32 % 7) as f32)).collect();
    let q = quantize_to_vec(dtype, &v).unwrap();
    let mut wf = vec![0.0; n * k];
    dequantize(dtype, &q, &mut wf).unwrap();
    (q, wf)
}

/// Activations with a zero block and a large outlier, as real hidden states have.
fn acts(m: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut x = fill(m * k, seed);
    x[..32].fill(0.0);
    if x.len() > 40 {
        x[40] = 25.0;
    }
    x
}

/// The activations the integer kernels see: `d · q` per element.
fn dequant_acts(a: &QActs, m: usize) -> Vec<f32> {
    (0..m * a.k).map(|i| a.d[i / a.block] * f32::from(a.qs[i])).collect()
}

/// f64 `x·wᵀ` and `Σ|x·w|` per output.
fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut want, mut scale) = (vec![0.0; m * n], vec![0.0; m * n]);
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

const SHAPES: &[(usize, usize, usize)] = &[(1, 7, 256), (3, 33, 768), (17, 5, 512), (1, 1, 1024), (4, 9, 256)];

#[test]
fn integer_kernels_match_f64_on_the_same_8bit_activations() {
    for isa in simd::available() {
        for dtype in TYPES {
            let mut shapes = SHAPES.to_vec();
            if dtype.block_size() == 32 {
                shapes.extend([(3, 11, 96), (17, 3, 32), (1, 5, 352), (5, 3, 800)]);
            }
            for (m, n, k) in shapes {
                let (w, wf) = weights(dtype, n, k, (n * 31 + k) as u64);
                let x = acts(m, k, (m * 7 + k) as u64);
                let qa = QActs::quantize_refined(&x, k, QActs::block_for(dtype));
                let (want, scale) = reference(&refined_acts(&qa, m, k), &wf, m, n, k);
                let mut out = vec![f32::NAN; m * n];
                matmul_fast(isa, dtype, &w, &x, &mut out, m, n, k).unwrap();
                for (i, ((g, w), s)) in out.iter().zip(&want).zip(&scale).enumerate() {
                    let err = (f64::from(*g) - w).abs();
                    assert!(
                        err <= 1e-5 * s + 1e-30,
                        "{} {dtype} m={m} n={n} k={k} [{i}]: got {g}, want {w}, err {err:e} vs scale {s:e}",
                        kernel_name(isa)
                    );
                }
            }
        }
    }
}

#[test]
fn simd_kernels_agree_with_scalar() {
    let (m, n, k) = (5, 13, 1280); // rows 4 + 1: both the multi-row and the one-row kernels
    for dtype in TYPES {
        let (w, wf) = weights(dtype, n, k, 5);
        let x = acts(m, k, 9);
        let qa = QActs::quantize(&x, k, QActs::block_for(dtype));
        let (_, scale) = reference(&dequant_acts(&qa, m), &wf, m, n, k);
        let mut want = vec![0.0; m * n];
        matmul_fast(Isa::Scalar, dtype, &w, &x, &mut want, m, n, k).unwrap();
        for isa in simd::available() {
            let mut got = vec![0.0; m * n];
            matmul_fast(isa, dtype, &w, &x, &mut got, m, n, k).unwrap();
            for (i, ((g, w), s)) in got.iter().zip(&want).zip(&scale).enumerate() {
                let err = f64::from((g - w).abs());
                assert!(err <= 1e-6 * s + 1e-30, "{} {dtype} [{i}]: {g} vs scalar {w}", kernel_name(isa));
            }
        }
    }
}

#[test]
fn activation_quantization_is_within_half_a_step() {
    let k = 512;
    let x = acts(2, k, 3);
    for block in [32, 256] {
        let a = QActs::quantize(&x, k, block);
        let back = dequant_acts(&a, 2);
        for (b, (xs, ys)) in x.chunks(block).zip(back.chunks(block)).enumerate() {
            let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (v, y) in xs.iter().zip(ys) {
                assert!((v - y).abs() <= amax / 254.0 * 1.0001, "block {block} #{b}: {v} -> {y}");
            }
            assert!(a.qs.iter().all(|&q| q >= -127));
        }
        let per = if block == 256 { 16 } else { 32 };
        for (s, q) in a.sums.iter().zip(a.qs.chunks(per)) {
            assert_eq!(*s, q.iter().map(|&v| i32::from(v)).sum::<i32>());
        }
    }
    // Q8_K keeps ggml's sign convention: the largest-magnitude value maps to -127·d exactly.
    let a = QActs::quantize(&x[..256], 256, 256);
    let i = x[..256].iter().enumerate().fold(0, |b, (i, v)| if v.abs() > x[b].abs() { i } else { b });
    assert_eq!(a.qs[i], -127);
}

/// The activations the driver effectively uses: value row + residual row.
fn refined_acts(qa: &QActs, m: usize, k: usize) -> Vec<f32> {
    let d = dequant_acts(qa, 2 * m);
    d.chunks_exact(2 * k).flat_map(|r| r[..k].iter().zip(&r[k..]).map(|(a, b)| a + b).collect::<Vec<_>>()).collect()
}

#[test]
fn refined_activations_are_within_a_quarter_step_squared() {
    let k = 512;
    let x = acts(2, k, 5);
    for block in [32, 256] {
        let eff = refined_acts(&QActs::quantize_refined(&x, k, block), 2, k);
        for (xs, ys) in x.chunks(block).zip(eff.chunks(block)) {
            let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (v, y) in xs.iter().zip(ys) {
                assert!((v - y).abs() <= amax / (254.0 * 127.0) * 1.01, "block {block}: {v} -> {y}");
            }
        }
    }
}

#[test]
fn rejects_bad_lengths_and_handles_empty() {
    let w = vec![0u8; 34 * 4];
    let mut out = vec![0.0; 4];
    assert!(matmul_fast(Isa::Scalar, DType::Q8_0, &w, &[0.0; 33], &mut out, 1, 4, 33).is_err());
    assert!(matmul_fast(Isa::Scalar, DType::Q8_0, &w[1..], &[0.0; 32], &mut out, 1, 4, 32).is_err());
    assert!(matmul_fast(Isa::Scalar, DType::F16, &w, &[0.0; 32], &mut out, 1, 4, 32).is_err());
    assert!(matmul_fast(Isa::Scalar, DType::Q8_0, &[], &[], &mut [], 0, 0, 32).is_ok());
    matmul_fast(simd::active(), DType::Q8_0, &w, &[1.0; 32], &mut out, 1, 4, 32).unwrap();
    assert_eq!(out, [0.0; 4]);
}

#[test]
fn round_half_away_matches_f32_round() {
    let mut vals =
        vec![0.0f32, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.5, -126.5, 127.49, -127.5, 0.49999997, -0.49999997];
    vals.extend([1.0e9f32, -1.0e9, 2.1e9, -2.1e9, f32::MIN_POSITIVE, -f32::MIN_POSITIVE]);
    let mut s = 12345u64;
    for _ in 0..100_000 {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let v = ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 300.0; // [-150, 150)
        vals.extend([v, v.trunc() + 0.5, v.trunc() - 0.5]);
    }
    for v in vals {
        assert_eq!(round_half_away(v), v.round() as i32, "{v}");
    }
    assert_eq!(round_half_away(f32::NAN), 0);
}

#[test]
fn round_ties_even_small_matches_std() {
    let mut v = -130.0f32;
    while v <= 130.0 {
        for x in [v, v + 0.5, v + 0.25, v + 0.75, v + 0.499_999_97, v + 0.500_000_06] {
            assert_eq!(round_ties_even_small(x), x.round_ties_even(), "{x}");
        }
        v += 1.0;
    }
    for x in [0.0f32, -0.0, 4_194_304.5, -4_194_303.5, 1e-30] {
        assert_eq!(round_ties_even_small(x), x.round_ties_even(), "{x}");
    }
}

#[test]
fn matvec_parts_match_each_part_alone() {
    // Mixed block formats (32 and 256), odd row counts, several tasks per part and parts per task.
    let k = 512;
    let x = acts(1, k, 21);
    let specs = [(DType::Q4_1, 7), (DType::Q6_K, 3), (DType::Q8_0, 11), (DType::Q4_K, 1)];
    let parts: Vec<(DType, Vec<u8>)> =
        specs.iter().enumerate().map(|(i, &(t, n))| (t, weights(t, n, k, 40 + i as u64).0)).collect();
    let mut want = Vec::new();
    for (t, w) in &parts {
        let n = w.len() / t.bytes_for(k).unwrap();
        let mut o = vec![0.0; n];
        matmul_fast(simd::active(), *t, w, &x, &mut o, 1, n, k).unwrap();
        want.extend(o);
    }
    let refs: Vec<(DType, &[u8])> = parts.iter().map(|(t, w)| (*t, &w[..])).collect();
    for isa in simd::available() {
        let mut got = vec![f32::NAN; want.len()];
        matvec_parts(isa, &refs, &x, &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{} [{i}]: {g} vs {w}", kernel_name(isa));
        }
    }
    let mut short = vec![0.0; want.len() - 1];
    assert!(matvec_parts(simd::active(), &refs, &x, &mut short).is_err());
    assert!(matvec_parts(simd::active(), &[(DType::Q8_0, &refs[0].1[..5])], &x, &mut [0.0]).is_err());
    assert!(matvec_parts(simd::active(), &[], &x, &mut []).is_ok());
}

/// Decode matvec throughput per dtype, L2-resident (one 512 KiB-ish matrix, repeated) and
/// streamed from memory (256 MiB, past every cache), best of 9 timings: the gap says whether a
/// dtype's kernel is bound by compute or by bandwidth. `AB_KNOB=name AB_VALUES=a,b` alternates
/// a knob of `op::cpu::tuning` between timings (this VM's speed drifts within seconds) and
/// prints each value's best. `AB_TYPES=q4_k,q6_k` limits the dtypes.
///   cargo test --release -p infer-core --lib matvec_throughput -- --ignored --nocapture
#[test]
#[ignore = "benchmark: allocates 256 MiB per dtype and runs for seconds"]
fn matvec_throughput() {
    use crate::op::cpu::tuning::Knob;
    let knob = std::env::var("AB_KNOB").ok().map(|n| Knob::from_name(&n).expect("AB_KNOB names a knob"));
    let values: Vec<usize> = match (knob, std::env::var("AB_VALUES")) {
        (Some(_), Ok(v)) => v.split(',').map(|v| v.parse().expect("AB_VALUES: integers")).collect(),
        (Some(k), Err(_)) => vec![k.default_value()],
        (None, _) => vec![0],
    };
    let types = std::env::var("AB_TYPES").unwrap_or_default();
    let k = 2048;
    let x = acts(1, k, 5);
    let all = TYPES.into_iter().chain([DType::Q4_Kx8]);
    for dtype in all.filter(|t| types.is_empty() || types.split(',').any(|n| n == t.to_string())) {
        let rb = dtype.bytes_for(k).unwrap();
        let row: Vec<u8> = match dtype {
            DType::Q4_Kx8 => crate::tensor::repack::repack_q4_k(&weights(DType::Q4_K, 64, k, 9).0, k).unwrap(),
            _ => weights(dtype, 64, k, 9).0,
        };
        for (label, bytes) in [("hot", 512 << 10), ("cold", 256 << 20)] {
            let n = bytes / rb / 64 * 64;
            let w: Vec<u8> = row.iter().copied().cycle().take(n * rb).collect();
            let mut out = vec![0.0; n];
            let reps = if label == "hot" { 100 } else { 2 };
            matvec_parts(simd::active(), &[(dtype, &w)], &x, &mut out).unwrap();
            let mut best = vec![f64::INFINITY; values.len()];
            for _ in 0..9 {
                for (v, best) in values.iter().zip(&mut best) {
                    if let Some(knob) = knob {
                        knob.set(*v);
                    }
                    let t = std::time::Instant::now();
                    for _ in 0..reps {
                        matvec_parts(simd::active(), &[(dtype, &w)], &x, &mut out).unwrap();
                    }
                    *best = best.min(t.elapsed().as_secs_f64());
                }
            }
            for (v, s) in values.iter().zip(&best) {
                let gbs = (reps * n * rb) as f64 / s / 1e9;
                let blocks = (reps * n * k / dtype.block_size()) as f64 / s / 1e6;
                let tag = knob.map(|k| format!(" {}={v}", k.name())).unwrap_or_default();
                println!("{dtype} {label}{tag}: {gbs:.1} GB/s, {blocks:.0} M blocks/s ({n} rows of {rb} B)");
            }
        }
    }
    if let Some(knob) = knob {
        knob.set(knob.default_value());
    }
}

#[test]
fn interleaved_q4_k_matches_q4_k_on_every_route() {
    use crate::op::Precision;
    use crate::op::cpu::matmul_nt_cols;
    use crate::tensor::TensorData;
    use crate::tensor::repack::repack_q4_k;
    let (n, k) = (40, 768);
    let (q4, wf) = weights(DType::Q4_K, n, k, 77);
    let x8 = repack_q4_k(&q4, k).unwrap();
    // Decode: the group kernel on every ISA (and the portable unpacking one) against the
    // row kernel on the same refined activations, alone and next to other parts.
    let x = acts(1, k, 3);
    let (q6, _) = weights(DType::Q6_K, 16, k, 78);
    for isa in simd::available() {
        for parts in [vec![(DType::Q4_K, &q4[..])], vec![(DType::Q6_K, &q6[..]), (DType::Q4_K, &q4[..])]] {
            let mut want = vec![0.0; parts.iter().map(|p| p.1.len() / p.0.bytes_for(k).unwrap()).sum()];
            matvec_parts(isa, &parts, &x, &mut want).unwrap();
            let swapped: Vec<(DType, &[u8])> =
                parts.iter().map(|&(t, w)| if t == DType::Q4_K { (DType::Q4_Kx8, &x8[..]) } else { (t, w) }).collect();
            let mut got = vec![f32::NAN; want.len()];
            matvec_parts(isa, &swapped, &x, &mut got).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{} [{i}]: {g} vs {w}", kernel_name(isa));
            }
        }
    }
    // A few rows (prefill chunks, batched decode): two activations per weight pass and one.
    for m in [2, 3, 5] {
        let x = acts(m, k, 11 + m as u64);
        let (_, scale) = reference(&x, &wf, m, n, k); // Σ|x·w|: the f32 summation-order scale
        for isa in simd::available() {
            let (mut want, mut got) = (vec![0.0; m * n], vec![f32::NAN; m * n]);
            matmul_fast(isa, DType::Q4_K, &q4, &x, &mut want, m, n, k).unwrap();
            matmul_fast(isa, DType::Q4_Kx8, &x8, &x, &mut got, m, n, k).unwrap();
            for (i, ((g, w), s)) in got.iter().zip(&want).zip(&scale).enumerate() {
                let err = f64::from((g - w).abs());
                assert!(err <= 1e-6 * s, "{} m={m} [{i}]: {g} vs {w} (scale {s})", kernel_name(isa));
            }
        }
    }
    // Other row counts and precisions through the matmul entry: the exact path (rows unpacked)
    // equals Q4_K's; the fast path stays within bf16 rounding of f64 on the exact weights.
    for m in [1, 5, 33] {
        let x = acts(m, k, 4 + m as u64);
        let (want, scale) = reference(&x, &wf, m, n, k);
        let mut exact = vec![0.0; m * n];
        matmul_nt_cols(&x, TensorData::Quant(DType::Q4_K, &q4), &mut exact, n, 0, m, n, k, Precision::Exact).unwrap();
        for precision in [Precision::Exact, Precision::Fast] {
            let mut got = vec![f32::NAN; m * (n + 3)];
            matmul_nt_cols(&x, TensorData::Quant(DType::Q4_Kx8, &x8), &mut got, n + 3, 2, m, n, k, precision).unwrap();
            for i in 0..m {
                for j in 0..n {
                    let (g, e) = (got[i * (n + 3) + 2 + j], exact[i * n + j]);
                    let (w, s) = (want[i * n + j], scale[i * n + j]);
                    match precision {
                        Precision::Exact => assert_eq!(g, e, "exact m={m} [{i}, {j}]"),
                        Precision::Fast => {
                            let err = (f64::from(g) - w).abs();
                            assert!(err <= s / 128.0, "fast m={m} [{i}, {j}]: {g} vs {w} (scale {s})");
                        }
                    }
                }
            }
        }
    }
    // Partial groups are refused, not misread.
    let mut out = vec![0.0; 7];
    assert!(matvec_parts(simd::active(), &[(DType::Q4_Kx8, &x8[..7 * 148 * 3])], &x, &mut out).is_err());
}
