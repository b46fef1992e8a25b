//! Tensor parallelism simulated on the CPU: the tiny fixture (4 heads, 2 KV heads, intermediate
//! 192) split over 2 ranks (threads joined by `CpuComm`) against the unsharded model.
//!
//! Tolerance: both run f32 math over the same bf16 weights (`Precision::Exact`); the only
//! difference is the order of the sums in o_proj and down_proj (each rank sums its half of the
//! inner dimension, then the halves are added). That is a rounding-level change (~1e-7
//! relative per product) carried through 3 layers to logits of 30-45: ~1e-5 absolute. We
//! require 1e-4 (and print the measured error); a wrong shard (a misplaced head or column)
//! errs by the logit scale.

mod common;

use common::{check_step, golden, tiny_dir};
use infer_core::model::batch::BatchItem;
use infer_core::parallel::{ShardError, ShardPlan};
use infer_core::{Error, GenerateOptions, Llama3, LlamaConfig, LoadOptions, Precision, SamplerConfig};

const TOL: f32 = 1e-4;

fn opts(precision: Precision) -> LoadOptions {
    LoadOptions { context_length: Some(1024), progress: false, precision, ..LoadOptions::default() }
}

fn max_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn tiny_config() -> LlamaConfig {
    LlamaConfig::from_file(&tiny_dir().join("config.json")).unwrap()
}

#[test]
fn world_sizes_and_typed_errors() {
    let c = tiny_config();
    let p1 = ShardPlan::new(&c, 1).unwrap();
    assert_eq!((p1.heads, p1.kv_heads, p1.intermediate), (4, 2, 192));
    let p2 = ShardPlan::new(&c, 2).unwrap();
    assert_eq!((p2.heads, p2.kv_heads, p2.intermediate), (2, 1, 96));
    let l = p2.local_config(&c);
    assert_eq!((l.num_attention_heads, l.num_key_value_heads, l.intermediate_size, l.hidden_size), (2, 1, 96, 64));
    let e3 = ShardPlan::new(&c, 3).unwrap_err();
    assert_eq!(e3, ShardError::NotDivisible { what: "num_attention_heads", value: 4, world_size: 3 });
    assert_eq!(ShardPlan::new(&c, 0).unwrap_err(), ShardError::EmptyWorld);
    // KV heads are split too: 4 ranks would leave a rank without a KV head.
    let e4 = ShardPlan::new(&c, 4).unwrap_err();
    assert_eq!(e4, ShardError::NotDivisible { what: "num_key_value_heads", value: 2, world_size: 4 });
    let odd = LlamaConfig { intermediate_size: 191, ..c.clone() };
    let e = ShardPlan::new(&odd, 2).unwrap_err();
    assert_eq!(e, ShardError::NotDivisible { what: "intermediate_size", value: 191, world_size: 2 });
    // Loading with an invalid world size is the same typed error, before any thread starts.
    let err = Llama3::load_tensor_parallel(tiny_dir(), opts(Precision::Exact), 3).unwrap_err();
    assert!(matches!(err, Error::TensorParallel(ShardError::NotDivisible { world_size: 3, .. })), "{err}");
    println!("world size 3: {err}");
}

#[test]
fn bytes_per_rank_of_the_8b_shape() {
    // Llama-3.1-8B: hidden 4096, 32 layers, 32/8 heads of 128, intermediate 14336, vocab 128256, untied.
    let c = LlamaConfig {
        hidden_size: 4096,
        intermediate_size: 14336,
        num_hidden_layers: 32,
        num_attention_heads: 32,
        num_key_value_heads: 8,
        head_dim: 128,
        vocab_size: 128256,
        tie_word_embeddings: false,
        ..tiny_config()
    };
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    let total = ShardPlan::new(&c, 1).unwrap().bytes_per_rank(&c, 2, false);
    assert!((gib(total) - 14.96).abs() < 0.01, "{}", gib(total)); // 8.03e9 parameters in bf16
    for n in [2, 4, 8] {
        let p = ShardPlan::new(&c, n).unwrap();
        let (rep, vp) = (p.bytes_per_rank(&c, 2, false), p.bytes_per_rank(&c, 2, true));
        println!(
            "8B bf16, {n} ranks: {:.2} GiB per rank replicated vocab, {:.2} GiB vocab-parallel",
            gib(rep),
            gib(vp)
        );
        assert!(rep > vp && rep < total);
    }
}

#[test]
fn one_rank_is_the_unsharded_model_exactly() {
    let mut plain = Llama3::load(tiny_dir(), opts(Precision::Exact)).unwrap();
    let mut tp = Llama3::load_tensor_parallel(tiny_dir(), opts(Precision::Exact), 1).unwrap();
    assert_eq!(tp.tensor_parallel_size(), 1);
    let case = &golden().cases[0];
    let a = plain.forward_tokens(&case.ids, 0, true).unwrap().as_f32().unwrap().to_vec();
    let b = tp.forward_tokens(&case.ids, 0, true).unwrap().as_f32().unwrap().to_vec();
    assert_eq!(a, b, "1 rank: the same products and adds in the same order");
}

#[test]
fn two_ranks_match_the_unsharded_model() {
    let mut plain = Llama3::load(tiny_dir(), opts(Precision::Exact)).unwrap();
    let mut tp = Llama3::load_tensor_parallel(tiny_dir(), opts(Precision::Exact), 2).unwrap();
    assert_eq!(tp.tensor_parallel_size(), 2);
    assert_eq!(tp.config(), plain.config(), "rank 0 reports the full model's config");
    let vocab = plain.config().vocab_size;
    let mut worst = 0f32;
    for case in golden().cases {
        // Teacher-forced over every position in one batched pass.
        let all: Vec<u32> = case.ids.iter().chain(&case.greedy_ids).copied().collect();
        let a = plain.forward_tokens(&all, 0, true).unwrap().as_f32().unwrap().to_vec();
        let b = tp.forward_tokens(&all, 0, true).unwrap().as_f32().unwrap().to_vec();
        let e = max_err(&a, &b);
        assert!(e <= TOL, "{}: batched logits differ by {e}", case.name);
        println!("{}: batched {e:.2e}", case.name);
        worst = worst.max(e);
        for step in 0..case.greedy_ids.len() {
            let row = case.ids.len() - 1 + step;
            check_step(&case, step, &b[row * vocab..(row + 1) * vocab], 1e-3); // the float64 reference
        }
        // Teacher-forced decode: prompt, then one token at a time (each rank's own KV cache).
        let mut la = plain.forward_tokens(&case.ids, 0, false).unwrap().as_f32().unwrap().to_vec();
        let mut lb = tp.forward_tokens(&case.ids, 0, false).unwrap().as_f32().unwrap().to_vec();
        for (step, &next) in case.greedy_ids.iter().enumerate() {
            let e = max_err(&la, &lb);
            assert!(e <= TOL, "{} step {step}: decode logits differ by {e}", case.name);
            worst = worst.max(e);
            let pos = case.ids.len() + step;
            la = plain.forward_tokens(&[next], pos, false).unwrap().as_f32().unwrap().to_vec();
            lb = tp.forward_tokens(&[next], pos, false).unwrap().as_f32().unwrap().to_vec();
        }
    }
    println!("2 ranks vs unsharded: max abs logit difference {worst:.2e} (tolerance {TOL:.0e})");
}

#[test]
fn two_ranks_greedy_generation_reproduces_reference() {
    let mut tp = Llama3::load_tensor_parallel(tiny_dir(), opts(Precision::Exact), 2).unwrap();
    let g = golden();
    for case in &g.cases {
        let o = GenerateOptions {
            max_new_tokens: g.n_new,
            sampler: SamplerConfig::greedy(),
            ignore_eos: true,
            ..GenerateOptions::default()
        };
        let out = tp.generate_ids(&case.ids, &o, &mut |_| {}).unwrap();
        assert_eq!(out.ids, case.greedy_ids, "{}: greedy ids", case.name);
        assert_eq!(out.text, case.greedy_text, "{}: greedy text", case.name);
    }
}

#[test]
fn two_ranks_fast_precision_tracks_one_rank() {
    // Precision::Fast rounds activations to bf16 (on AVX512_BF16 CPUs): every rank rounds its
    // columns of the same activations identically, so only the sum order differs again.
    let mut plain = Llama3::load(tiny_dir(), opts(Precision::Fast)).unwrap();
    let mut tp = Llama3::load_tensor_parallel(tiny_dir(), opts(Precision::Fast), 2).unwrap();
    let case = &golden().cases[0];
    let a = plain.forward_tokens(&case.ids, 0, true).unwrap().as_f32().unwrap().to_vec();
    let b = tp.forward_tokens(&case.ids, 0, true).unwrap().as_f32().unwrap().to_vec();
    let e = max_err(&a, &b);
    println!("fast precision, 2 ranks vs unsharded: {e:.2e}");
    assert!(e <= 1e-3, "{e}");
}

#[test]
fn paged_cache_is_refused_with_two_ranks() {
    let mut tp = Llama3::load_tensor_parallel(tiny_dir(), opts(Precision::Exact), 2).unwrap();
    let mut cache = tp.paged_cache(8, 16).unwrap();
    let blocks = [0u32];
    let items = [BatchItem { ids: &[791, 6864], pos0: 0, blocks: &blocks, logits: true }];
    let e = tp.forward_batch(&mut cache, &items).unwrap_err().to_string();
    assert!(e.contains("tensor parallelism"), "{e}");
    // The group is still usable afterwards (nothing was sent to the other rank).
    let case = &golden().cases[0];
    assert!(tp.forward_tokens(&case.ids, 0, false).is_ok());
}
