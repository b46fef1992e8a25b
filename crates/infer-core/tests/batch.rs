//! Batched forward over a paged KV cache vs the float64 reference: the three golden cases run
//! side by side in one batch per step (their prefills chunked and staggered so that prefill
//! chunks and decode rows of other sequences share steps; blocks interleaved across sequences),
//! teacher-forced on the reference greedy ids.

mod common;

use common::{check_step, golden, last_prompt_logits, tiny_dir};
use infer_core::model::batch::BatchItem;
use infer_core::{Llama3, LoadOptions, Precision};

/// Same tolerance as the single-sequence golden test (f32 activations, exact weights).
const TOL: f64 = 1e-3;
const BLOCK: usize = 4;
const CHUNK: usize = 5;

struct Seq {
    tokens: Vec<u32>,
    prompt_len: usize,
    done: usize, // tokens whose K/V are cached
    blocks: Vec<u32>,
    start_step: usize,
}

#[test]
fn paged_batches_match_reference_logits() {
    let mut model = Llama3::load(
        tiny_dir(),
        LoadOptions { context_length: Some(1024), precision: Precision::Exact, ..LoadOptions::default() },
    )
    .unwrap();
    let cases = golden().cases;
    let mut cache = model.paged_cache(256, BLOCK).unwrap();
    let mut next_block = 0u32;
    let mut seqs: Vec<Seq> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| Seq {
            tokens: c.ids.iter().chain(&c.greedy_ids).copied().collect(),
            prompt_len: c.ids.len(),
            done: 0,
            blocks: Vec::new(),
            start_step: i * 2, // staggered arrivals
        })
        .collect();
    let mut checked = vec![0usize; cases.len()];
    for step in 0.. {
        // Each active sequence contributes its next chunk (prefill) or one token (decode).
        let mut plan = Vec::new();
        for (s, q) in seqs.iter_mut().enumerate() {
            if step < q.start_step || q.done >= q.tokens.len() - 1 {
                continue;
            }
            let n = if q.done < q.prompt_len { CHUNK.min(q.prompt_len - q.done) } else { 1 };
            while q.blocks.len() * BLOCK < q.done + n {
                q.blocks.push(next_block); // blocks of different sequences interleave
                next_block += 1;
            }
            plan.push((s, n));
        }
        if plan.is_empty() {
            break;
        }
        let items: Vec<BatchItem> = plan
            .iter()
            .map(|&(s, n)| {
                let q = &seqs[s];
                BatchItem {
                    ids: &q.tokens[q.done..q.done + n],
                    pos0: q.done,
                    blocks: &q.blocks,
                    logits: q.done + n >= q.prompt_len,
                }
            })
            .collect();
        let with_logits: Vec<usize> = plan.iter().zip(&items).filter(|(_, it)| it.logits).map(|(p, _)| p.0).collect();
        let logits = model.forward_batch(&mut cache, &items).unwrap().as_f32().unwrap().to_vec();
        let vocab = logits.len() / with_logits.len().max(1);
        for (row, &s) in with_logits.iter().enumerate() {
            let (q, case) = (&seqs[s], &cases[s]);
            let n = plan.iter().find(|p| p.0 == s).map(|p| p.1).unwrap();
            let gen_step = q.done + n - q.prompt_len; // logits predict token prompt_len + gen_step
            let l = &logits[row * vocab..(row + 1) * vocab];
            if gen_step == 0 {
                let want = last_prompt_logits(&case.name);
                let err = l.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!((err as f64) <= TOL, "{}: last prompt logits max abs error {err}", case.name);
            }
            check_step(case, gen_step, l, TOL);
            checked[s] += 1;
        }
        for &(s, n) in &plan {
            seqs[s].done += n;
        }
    }
    for (s, case) in cases.iter().enumerate() {
        assert_eq!(checked[s], case.greedy_ids.len(), "{}: every generated step checked", case.name);
    }
}

#[test]
fn bad_batches_are_errors() {
    let mut model =
        Llama3::load(tiny_dir(), LoadOptions { context_length: Some(64), ..LoadOptions::default() }).unwrap();
    let mut cache = model.paged_cache(4, BLOCK).unwrap();
    let ids = [1u32, 2, 3, 4, 5];
    let item = |blocks: &'static [u32], pos0| BatchItem { ids: &ids, pos0, blocks, logits: true };
    assert!(model.forward_batch(&mut cache, &[]).is_err());
    assert!(model.forward_batch(&mut cache, &[item(&[0], 0)]).is_err()); // 5 tokens, one block of 4
    assert!(model.forward_batch(&mut cache, &[item(&[0, 9], 0)]).is_err()); // block outside the pool
    assert!(model.forward_batch(&mut cache, &[item(&[0, 1], 62)]).is_err()); // past the context
    let bad_id = [u32::MAX];
    let it = BatchItem { ids: &bad_id, pos0: 0, blocks: &[0], logits: true };
    assert!(model.forward_batch(&mut cache, &[it]).is_err());
    assert_eq!(model.forward_batch(&mut cache, &[item(&[2, 3], 0)]).unwrap().shape()[0], 1);
}
