//! The serving path on a GPU: batched forward passes over the paged KV cache (mixed prefill
//! chunks and decode rows eagerly, decode-only steps as CUDA graphs per batch bucket) against
//! the float64 reference, and the engine's concurrent greedy requests against single runs.
//! Tolerances as in cuda_model.rs (bf16 activations): top-10 logits within 0.35, the argmax
//! equal wherever the reference's top-1 margin exceeds 0.7. Skips without a GPU.
#![cfg(feature = "cuda")]

mod common;

use std::sync::mpsc::channel;
use std::time::Duration;

use common::{golden, gpu_available, tiny_dir};
use infer_core::engine::{Engine, EngineConfig, EngineEvent, EngineRequest};
use infer_core::model::batch::BatchItem;
use infer_core::{DeviceType, Llama3, LoadOptions, SamplerConfig};

const TOL: f64 = 0.35;
const BLOCK: usize = 16;

fn load() -> Llama3 {
    let opts =
        LoadOptions { device: DeviceType::Cuda(0), context_length: Some(1024), progress: false, ..Default::default() };
    Llama3::load(tiny_dir(), opts).expect("model loads")
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as u32).unwrap_or(0)
}

#[test]
fn paged_batches_on_gpu_match_reference() {
    if !gpu_available() {
        return;
    }
    let mut model = load();
    let cases = golden().cases;
    let mut cache = model.paged_cache(128, BLOCK).unwrap();
    let seqs: Vec<Vec<u32>> = cases.iter().map(|c| c.ids.iter().chain(&c.greedy_ids).copied().collect()).collect();
    let mut done = vec![0usize; cases.len()];
    let mut blocks: Vec<Vec<u32>> = vec![Vec::new(); cases.len()];
    let mut next_block = 0u32;
    let (mut worst, mut graph_steps) = (0f64, 0);
    for step in 0.. {
        let mut plan = Vec::new();
        for s in 0..cases.len() {
            let (plen, total) = (cases[s].ids.len(), seqs[s].len());
            if step < 3 * s || done[s] >= total - 1 {
                continue;
            }
            let n = if done[s] < plen { 37.min(plen - done[s]) } else { 1 };
            while blocks[s].len() * BLOCK < done[s] + n {
                blocks[s].push(next_block);
                next_block += 1;
            }
            plan.push((s, n));
        }
        if plan.is_empty() {
            break;
        }
        let items: Vec<BatchItem> = plan
            .iter()
            .map(|&(s, n)| BatchItem {
                ids: &seqs[s][done[s]..done[s] + n],
                pos0: done[s],
                blocks: &blocks[s],
                logits: done[s] + n >= cases[s].ids.len(),
            })
            .collect();
        graph_steps += usize::from(items.iter().all(|it| it.ids.len() == 1));
        let want: Vec<usize> = plan.iter().zip(&items).filter(|(_, it)| it.logits).map(|(p, _)| p.0).collect();
        let logits = model.forward_batch(&mut cache, &items).unwrap().to_host().unwrap();
        let logits = logits.as_f32().unwrap();
        let vocab = model.config().vocab_size;
        for (row, &s) in want.iter().enumerate() {
            let n = plan.iter().find(|p| p.0 == s).map(|p| p.1).unwrap();
            let k = done[s] + n - cases[s].ids.len();
            let l = &logits[row * vocab..(row + 1) * vocab];
            let case = &cases[s];
            for (&id, &w) in case.top_ids[k].iter().zip(&case.top_logits[k]) {
                let err = (l[id as usize] as f64 - w).abs();
                worst = worst.max(err);
                assert!(err <= TOL, "{} step {k}: id {id}: {} vs {w}", case.name, l[id as usize]);
            }
            if case.top_logits[k][0] - case.top_logits[k][1] > 2.0 * TOL {
                assert_eq!(argmax(l), case.top_ids[k][0], "{} step {k}", case.name);
            }
        }
        for &(s, n) in &plan {
            done[s] += n;
        }
    }
    println!("paged GPU batches: worst top-10 logit error {worst:.3}, {graph_steps} decode-only (graph) steps");
    assert!(graph_steps > 10);
}

fn run(e: &Engine, prompt: &[u32], n: usize) -> std::sync::mpsc::Receiver<EngineEvent> {
    let (tx, rx) = channel();
    let req = EngineRequest {
        prompt_ids: prompt.to_vec(),
        max_tokens: n,
        sampler: SamplerConfig::greedy(),
        stop: Vec::new(),
        ignore_eos: true,
        logprobs: None,
    };
    e.submit(req, Box::new(move |ev| tx.send(ev).is_ok())).unwrap();
    rx
}

fn ids_of(rx: &std::sync::mpsc::Receiver<EngineEvent>) -> Vec<u32> {
    let mut ids = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(120)).expect("event in time") {
            EngineEvent::Token { id, .. } => ids.push(id),
            EngineEvent::Done(_) => return ids,
            EngineEvent::Failed(m) => panic!("failed: {m}"),
        }
    }
}

#[test]
fn engine_on_gpu_concurrent_equals_alone() {
    if !gpu_available() {
        return;
    }
    let g = golden();
    let e = Engine::start(load(), EngineConfig { max_batch: 8, ..Default::default() }).unwrap();
    let prompts: Vec<Vec<u32>> = g.cases.iter().map(|c| c.ids.clone()).collect();
    let alone: Vec<Vec<u32>> = prompts.iter().map(|p| ids_of(&run(&e, p, g.n_new))).collect();
    let rxs: Vec<_> = prompts.iter().map(|p| run(&e, p, g.n_new)).collect();
    for (i, rx) in rxs.iter().enumerate() {
        assert_eq!(ids_of(rx), alone[i], "{}: concurrent vs alone", g.cases[i].name);
    }
    // Against the reference up to the first near-tie of the reference.
    for (case, ids) in g.cases.iter().zip(&alone) {
        for (k, (&got, &want)) in ids.iter().zip(&case.greedy_ids).enumerate() {
            if case.top_logits[k][0] - case.top_logits[k][1] <= 2.0 * TOL {
                break;
            }
            assert_eq!(got, want, "{} step {k}", case.name);
        }
    }
    assert_eq!(e.metrics().kv_blocks_used, 0);
    e.shutdown(Duration::from_secs(1));
    e.join();
}
