//! The CUDA paged-KV ops (`rope_kv_paged`, `paged_attention`) against the CPU ops on random
//! inputs: several sequences with scattered block tables (block_size 16), batches that mix
//! prefill-chunk rows and decode rows of different sequences, GQA group 4 like Llama (32 q heads,
//! 8 KV heads, head_dim 64) and odd configurations (group 3 with head_dim 128, group 6 with
//! head_dim 32). Skips, with a printed reason, when no GPU is visible.
//!
//! Tolerances (|gpu - cpu| ≤ tol · (1 + |cpu|)); inputs are bf16-representable, so both sides
//! start from the same values:
//! - RoPE outputs (q, K/V pools): the GPU rounds its f32 result to bf16 once, a relative error of
//!   at most 2^-9 ≈ 2.0e-3; tol 4e-3.
//! - attention on the GPU's own bf16 q and pools (the CPU op run on the downloaded data): both
//!   accumulate in f32 (different order, exp2 vs exp: ~1e-6), the GPU rounds the output to bf16
//!   once (≤ 2^-9 relative); tol 4e-3.
//! - attention end to end (CPU: f32 q/K from f32 RoPE; GPU: bf16 q/K): scores q·k/√d carry the
//!   two bf16 roundings of q and k (≤ 2 · 2^-9 relative, scores here are O(1)), so the softmax
//!   weights move by ≲ 0.5%, plus the output rounding; tol 1e-2.
#![cfg(feature = "cuda")]

mod common;

use common::gpu_available;
use infer_core::cuda::paged::DevicePagedMeta;
use infer_core::model::config::LlamaConfig;
use infer_core::op::paged::PagedMeta;
use infer_core::op::paged_attention::paged_attention;
use infer_core::op::rope::RopeTable;
use infer_core::op::rope_kv_paged::rope_kv_paged;
use infer_core::{DType, DeviceType, Tensor};

const GPU: DeviceType = DeviceType::Cuda(0);
const BS: usize = 16;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-scale, scale), rounded to bf16.
    fn bf16(&mut self, scale: f32) -> f32 {
        let x = ((self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale;
        half::bf16::from_f32(x).to_f32()
    }
}

fn config(head_dim: usize) -> LlamaConfig {
    let text = include_str!("../../../tests/fixtures/tiny-llama3/config.json")
        .replace("\"head_dim\": 16", &format!("\"head_dim\": {head_dim}"));
    LlamaConfig::from_json_str(&text, std::path::Path::new("config.json")).unwrap()
}

/// Max of |gpu - cpu| / (1 + |cpu|); panics past `tol`.
fn check(what: &str, gpu: &[f32], cpu: &[f32], tol: f32) -> f32 {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    let mut worst = 0f32;
    for (i, (a, b)) in gpu.iter().zip(cpu).enumerate() {
        let err = (a - b).abs() / (1.0 + b.abs());
        assert!(err.is_finite() && err <= tol, "{what}[{i}]: gpu {a} vs cpu {b} (rel err {err} > {tol})");
        worst = worst.max(err);
    }
    println!("{what}: max rel err {worst:.2e}");
    worst
}

/// One batched step's metadata, owned.
struct Step {
    positions: Vec<i32>,
    slots: Vec<i32>,
    row_seq: Vec<i32>,
}

impl Step {
    fn meta<'a>(&'a self, tables: &'a [i32], max_blocks: usize) -> PagedMeta<'a> {
        PagedMeta {
            block_size: BS,
            positions: &self.positions,
            slots: &self.slots,
            row_seq: &self.row_seq,
            block_tables: tables,
            max_blocks,
            device: None,
        }
    }
}

/// CPU (f32) and GPU (bf16) copies of one layer's pools.
struct Pools {
    cpu_k: Tensor,
    cpu_v: Tensor,
    gpu_k: Tensor,
    gpu_v: Tensor,
}

struct Model {
    nh: usize,
    nkv: usize,
    hd: usize,
    table: RopeTable,
}

/// Runs one step on both devices (RoPE + K/V write, then attention) and compares every output;
/// returns the GPU attention output.
fn run_step(what: &str, m: &Model, pools: &mut Pools, meta: &PagedMeta, rng: &mut Rng) -> Vec<f32> {
    let rows = meta.rows();
    let (q_dim, width) = (m.nh * m.hd, (m.nh + 2 * m.nkv) * m.hd);
    let qkv = Tensor::from_f32(&[rows, width], (0..rows * width).map(|_| rng.bf16(1.0)).collect()).unwrap();
    let mut q = Tensor::zeros(&[rows, q_dim], DType::F32);
    rope_kv_paged(&qkv, &mut q, &mut pools.cpu_k, &mut pools.cpu_v, meta, &m.table).unwrap();
    let mut qg = Tensor::zeros_on(&[rows, q_dim], DType::BF16, GPU).unwrap();
    let qkv_g = qkv.to_device_as(GPU, DType::BF16).unwrap();
    rope_kv_paged(&qkv_g, &mut qg, &mut pools.gpu_k, &mut pools.gpu_v, meta, &m.table).unwrap();
    check(&format!("{what}: rope q"), &qg.to_f32_vec().unwrap(), &q.to_f32_vec().unwrap(), 4e-3);
    let (kg, vg) = (pools.gpu_k.to_f32_vec().unwrap(), pools.gpu_v.to_f32_vec().unwrap());
    check(&format!("{what}: k pool"), &kg, &pools.cpu_k.to_f32_vec().unwrap(), 4e-3);
    check(&format!("{what}: v pool"), &vg, &pools.cpu_v.to_f32_vec().unwrap(), 4e-3);

    let mut out = Tensor::zeros(&[rows, q_dim], DType::F32);
    paged_attention(&q, &pools.cpu_k, &pools.cpu_v, meta, m.nh, &mut out).unwrap();
    let mut outg = Tensor::zeros_on(&[rows, q_dim], DType::BF16, GPU).unwrap();
    paged_attention(&qg, &pools.gpu_k, &pools.gpu_v, meta, m.nh, &mut outg).unwrap();
    let got = outg.to_f32_vec().unwrap();
    check(&format!("{what}: attention end to end"), &got, &out.to_f32_vec().unwrap(), 1e-2);

    // The CPU op on the GPU's own bf16 inputs isolates the attention kernel's error.
    let shape = pools.gpu_k.shape().to_vec();
    let (qf, kf, vf) = (
        Tensor::from_f32(&[rows, q_dim], qg.to_f32_vec().unwrap()).unwrap(),
        Tensor::from_f32(&shape, kg).unwrap(),
        Tensor::from_f32(&shape, vg).unwrap(),
    );
    let mut same = Tensor::zeros(&[rows, q_dim], DType::F32);
    paged_attention(&qf, &kf, &vf, meta, m.nh, &mut same).unwrap();
    check(&format!("{what}: attention on the same bf16 inputs"), &got, &same.to_f32_vec().unwrap(), 4e-3);

    // The caller's device copy of the metadata gives the same bits as the op's own upload.
    let mut dm = DevicePagedMeta::new(&infer_core::cuda::device(0).unwrap()).unwrap();
    dm.upload(meta).unwrap();
    let with_dev = PagedMeta { device: Some(&dm), ..*meta };
    let mut outd = Tensor::zeros_on(&[rows, q_dim], DType::BF16, GPU).unwrap();
    paged_attention(&qg, &pools.gpu_k, &pools.gpu_v, &with_dev, m.nh, &mut outd).unwrap();
    assert_eq!(outd.to_f32_vec().unwrap(), got, "{what}: device metadata changes the result");
    got
}

/// Sequences given as (history length, rows in the mixed step). Step 1 writes every history
/// (one big batch of prefill rows), step 2 mixes each sequence's new rows (a prefill chunk when
/// more than one, a decode row otherwise) in an interleaved order, step 3 decodes one more token
/// of every sequence.
fn scenario(name: &str, nh: usize, nkv: usize, hd: usize, seqs: &[(usize, usize)], seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1);
    let total: Vec<usize> = seqs.iter().map(|&(h, n)| h + n + 1).collect();
    // One spare column per table: unused entries hold some valid block id.
    let max_blocks = total.iter().map(|t| t.div_ceil(BS)).max().unwrap() + 1;
    let need: usize = total.iter().map(|t| t.div_ceil(BS)).sum();
    let nb = need + 5; // spare blocks stay zero
    // Scatter: a random permutation of the pool's blocks, handed out in order.
    let mut ids: Vec<i32> = (0..nb as i32).collect();
    for i in (1..nb).rev() {
        ids.swap(i, rng.next() as usize % (i + 1));
    }
    let mut tables = vec![0i32; seqs.len() * max_blocks];
    let mut next = 0;
    for (s, t) in total.iter().enumerate() {
        for b in 0..max_blocks {
            tables[s * max_blocks + b] = if b < t.div_ceil(BS) {
                next += 1;
                ids[next - 1]
            } else {
                ids[nb - 1 - (b % 5)]
            };
        }
    }
    let slot = |s: usize, p: usize| tables[s * max_blocks + p / BS] * BS as i32 + (p % BS) as i32;
    let step = |rows: &[(usize, usize)]| Step {
        positions: rows.iter().map(|&(_, p)| p as i32).collect(),
        slots: rows.iter().map(|&(s, p)| slot(s, p)).collect(),
        row_seq: rows.iter().map(|&(s, _)| s as i32).collect(),
    };
    let max_pos = total.iter().max().unwrap() + 1;
    let m = Model { nh, nkv, hd, table: RopeTable::new(&config(hd), max_pos) };
    let shape = [nb, nkv, BS, hd];
    let mut pools = Pools {
        cpu_k: Tensor::zeros(&shape, DType::F32),
        cpu_v: Tensor::zeros(&shape, DType::F32),
        gpu_k: Tensor::zeros_on(&shape, DType::BF16, GPU).unwrap(),
        gpu_v: Tensor::zeros_on(&shape, DType::BF16, GPU).unwrap(),
    };

    let hist: Vec<(usize, usize)> =
        seqs.iter().enumerate().flat_map(|(s, &(h, _))| (0..h).map(move |p| (s, p))).collect();
    if !hist.is_empty() {
        let st = step(&hist);
        run_step(
            &format!("{name} step 1 ({} history rows)", hist.len()),
            &m,
            &mut pools,
            &st.meta(&tables, max_blocks),
            &mut rng,
        );
    }
    // Interleave: odd sequences first (reversed), then even ones, each with its rows in order.
    let mut order: Vec<usize> = (0..seqs.len()).filter(|s| s % 2 == 1).rev().collect();
    order.extend((0..seqs.len()).filter(|s| s % 2 == 0));
    let mixed: Vec<(usize, usize)> =
        order.iter().flat_map(|&s| (seqs[s].0..seqs[s].0 + seqs[s].1).map(move |p| (s, p))).collect();
    let st = step(&mixed);
    run_step(
        &format!("{name} step 2 ({} mixed rows)", mixed.len()),
        &m,
        &mut pools,
        &st.meta(&tables, max_blocks),
        &mut rng,
    );
    let decode: Vec<(usize, usize)> = seqs.iter().enumerate().map(|(s, &(h, n))| (s, h + n)).collect();
    let st = step(&decode);
    run_step(
        &format!("{name} step 3 ({} decode rows)", decode.len()),
        &m,
        &mut pools,
        &st.meta(&tables, max_blocks),
        &mut rng,
    );
}

/// Llama's GQA shape: 32 q heads over 8 KV heads of 64 (4 heads share each K/V load). Sequence
/// 2 is long (1000 tokens: the few-row steps split its keys across blocks and combine them);
/// sequence 3 starts fresh (a prefill chunk at position 0); sequence 4 crosses a block boundary.
#[test]
fn llama_gqa4_mixed_prefill_and_decode() {
    if !gpu_available() {
        return;
    }
    scenario("gqa4 hd64", 32, 8, 64, &[(40, 37), (17, 1), (1000, 1), (0, 5), (16, 1)], 1);
}

/// Odd shapes: group 3 (one head per block) with head_dim 128; group 6 (two heads per block)
/// with head_dim 32; a single sequence whose one row is its very first token.
#[test]
fn odd_groups_and_head_dims() {
    if !gpu_available() {
        return;
    }
    scenario("gqa3 hd128", 12, 4, 128, &[(33, 20), (300, 1), (0, 3)], 2);
    scenario("gqa6 hd32", 6, 1, 32, &[(5, 1), (70, 9)], 3);
    scenario("mha hd64 first token", 4, 4, 64, &[(0, 1)], 4);
}

/// A device copy uploaded for another batch shape is an error, not a silent misread.
#[test]
fn stale_device_metadata_is_an_error() {
    if !gpu_available() {
        return;
    }
    let (nh, nkv, hd) = (4, 2, 64);
    let kp = Tensor::zeros_on(&[2, nkv, BS, hd], DType::BF16, GPU).unwrap();
    let q = Tensor::zeros_on(&[2, nh * hd], DType::BF16, GPU).unwrap();
    let mut out = Tensor::zeros_on(&[2, nh * hd], DType::BF16, GPU).unwrap();
    let one = PagedMeta {
        block_size: BS,
        positions: &[3],
        slots: &[19],
        row_seq: &[0],
        block_tables: &[1, 0],
        max_blocks: 2,
        device: None,
    };
    let mut dm = DevicePagedMeta::new(&infer_core::cuda::device(0).unwrap()).unwrap();
    dm.upload(&one).unwrap();
    let two = PagedMeta { positions: &[3, 4], slots: &[19, 20], row_seq: &[0, 0], ..one };
    let e = paged_attention(&q, &kp, &kp, &PagedMeta { device: Some(&dm), ..two }, nh, &mut out).unwrap_err();
    assert!(e.to_string().contains("device paged metadata holds 1 rows"), "{e}");
    dm.upload(&two).unwrap();
    paged_attention(&q, &kp, &kp, &PagedMeta { device: Some(&dm), ..two }, nh, &mut out).unwrap();
    assert!(out.to_f32_vec().unwrap().iter().all(|&x| x == 0.0), "zero pools give zero rows");
}

/// Mean milliseconds of `f` over 20 calls after 3 warm-ups (CUDA events on the device's stream).
fn time_ms(mut f: impl FnMut()) -> f32 {
    let timer = infer_core::cuda::EventTimer::new(&infer_core::cuda::device(0).unwrap()).unwrap();
    for _ in 0..3 {
        f();
    }
    let dev = infer_core::cuda::device(0).unwrap();
    dev.synchronize().unwrap();
    let t0 = std::time::Instant::now();
    timer.start().unwrap();
    for _ in 0..20 {
        f();
    }
    let enqueue = t0.elapsed().as_secs_f64() * 1e3 / 20.0;
    let ms = timer.stop_ms().unwrap() / 20.0;
    if enqueue > 0.5 * ms as f64 {
        println!("  (host-bound? enqueue {:.1} us of {:.1} us per call)", enqueue * 1e3, ms * 1e3);
    }
    ms
}

/// Paged attention timings on Llama shapes (32 q / 8 KV heads): `rows` sequences decoding one
/// token at context `len` each (GB/s of K/V read), next to the contiguous-cache decode kernel
/// (`op::attention`, one row) at the same context; and a 512-row prefill chunk of one sequence
/// against the contiguous tiled prefill kernel. Pools are zeros (timing only), block tables are
/// scattered, the metadata is uploaded beforehand (`meta.device`). Build it with kernels
/// compiled without `-G` (the `test` profile has debuginfo, and `cc` then passes nvcc `-G`,
/// which makes the kernels ~100x slower):
///
/// ```text
/// cargo test --release -p infer-core --features cuda --test cuda_paged -- --ignored --nocapture bench
/// ```
///
/// Measured on an H100 (HBM3, d2d copy 3.0 TB/s): batched decode (64-256 rows) reads K/V at
/// 1.85-2.05 TB/s; one row matches the contiguous decode kernel (17.8 vs 19.7 µs at 8192, hd 64);
/// a 512-row prefill chunk costs 7-17x the tiled prefill kernel (1.38 ms vs 0.11 ms at
/// 3584..4096, hd 64).
#[test]
#[ignore = "benchmark: needs a GPU; run with -- --ignored --nocapture"]
fn bench_paged_attention() {
    use infer_core::op::Positions;
    use infer_core::op::attention::attention;
    if !gpu_available() {
        return;
    }
    let dev = infer_core::cuda::device(0).unwrap();
    let (nh, nkv) = (32, 8);
    for hd in [64, 128] {
        for &(rows, len) in &[(1, 1024), (1, 8192), (16, 2048), (64, 2048), (256, 1024), (256, 4096)] {
            let per = usize::div_ceil(len, BS);
            let nb = rows * per;
            let mut rng = Rng(7);
            let mut ids: Vec<i32> = (0..nb as i32).collect();
            for i in (1..nb).rev() {
                ids.swap(i, rng.next() as usize % (i + 1));
            }
            let pos: Vec<i32> = vec![len as i32 - 1; rows];
            let row_seq: Vec<i32> = (0..rows as i32).collect();
            let slots: Vec<i32> =
                (0..rows).map(|s| ids[s * per + (len - 1) / BS] * BS as i32 + ((len - 1) % BS) as i32).collect();
            let meta = PagedMeta {
                block_size: BS,
                positions: &pos,
                slots: &slots,
                row_seq: &row_seq,
                block_tables: &ids,
                max_blocks: per,
                device: None,
            };
            let mut dm = DevicePagedMeta::new(&dev).unwrap();
            dm.upload(&meta).unwrap();
            let meta = PagedMeta { device: Some(&dm), ..meta };
            let kp = Tensor::zeros_on(&[nb, nkv, BS, hd], DType::BF16, GPU).unwrap();
            let q = Tensor::zeros_on(&[rows, nh * hd], DType::BF16, GPU).unwrap();
            let mut out = Tensor::zeros_on(&[rows, nh * hd], DType::BF16, GPU).unwrap();
            let ms = time_ms(|| paged_attention(&q, &kp, &kp, &meta, nh, &mut out).unwrap());
            let gb = (rows * len * nkv * hd * 2 * 2) as f64 / 1e9;
            let mut line = format!(
                "paged decode hd{hd} rows {rows:3} ctx {len:5}: {:8.1} us, {:6.0} GB/s K/V",
                ms * 1e3,
                gb / (ms as f64 / 1e3)
            );
            if rows == 1 {
                let kc = Tensor::zeros_on(&[nkv, len, hd], DType::BF16, GPU).unwrap();
                let p = Positions::host(len - 1);
                let msc = time_ms(|| attention(&q, &kc, &kc, &p, nh, &mut out).unwrap());
                line += &format!(" | contiguous decode {:8.1} us, {:6.0} GB/s", msc * 1e3, gb / (msc as f64 / 1e3));
            }
            println!("{line}");
        }
        // A 512-row prefill chunk of one sequence at positions start..start + 512.
        for start in [0usize, 3584] {
            let (rows, len) = (512, start + 512);
            let per = len.div_ceil(BS);
            let ids: Vec<i32> = (0..per as i32).rev().collect();
            let pos: Vec<i32> = (start as i32..len as i32).collect();
            let slots: Vec<i32> = pos.iter().map(|&p| ids[p as usize / BS] * BS as i32 + p % BS as i32).collect();
            let row_seq = vec![0i32; rows];
            let meta = PagedMeta {
                block_size: BS,
                positions: &pos,
                slots: &slots,
                row_seq: &row_seq,
                block_tables: &ids,
                max_blocks: per,
                device: None,
            };
            let mut dm = DevicePagedMeta::new(&dev).unwrap();
            dm.upload(&meta).unwrap();
            let meta = PagedMeta { device: Some(&dm), ..meta };
            let kp = Tensor::zeros_on(&[per, nkv, BS, hd], DType::BF16, GPU).unwrap();
            let q = Tensor::zeros_on(&[rows, nh * hd], DType::BF16, GPU).unwrap();
            let mut out = Tensor::zeros_on(&[rows, nh * hd], DType::BF16, GPU).unwrap();
            let ms = time_ms(|| paged_attention(&q, &kp, &kp, &meta, nh, &mut out).unwrap());
            let kc = Tensor::zeros_on(&[nkv, len, hd], DType::BF16, GPU).unwrap();
            let p = Positions::host(start);
            let msc = time_ms(|| attention(&q, &kc, &kc, &p, nh, &mut out).unwrap());
            println!(
                "prefill chunk hd{hd} 512 rows at {start:4}..{len:4}: paged (per-row decode kernel) {:8.1} us | contiguous tiled prefill {:8.1} us",
                ms * 1e3,
                msc * 1e3
            );
        }
    }
}
