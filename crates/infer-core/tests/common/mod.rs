//! Shared helpers for integration tests: fixture paths and the golden reference.
#![allow(dead_code)]

use std::path::PathBuf;

use serde::Deserialize;

/// `tests/fixtures` of the repo (`RUSTINFER_FIXTURES` overrides it, for test binaries run
/// from another checkout, e.g. on a GPU machine).
pub fn fixtures() -> PathBuf {
    match std::env::var_os("RUSTINFER_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures")),
    }
}

pub fn tiny_dir() -> PathBuf {
    fixtures().join("tiny-llama3")
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Deserialize)]
pub struct Case {
    pub name: String,
    pub kind: String,
    pub prompt: Option<String>,
    pub messages: Option<Vec<Message>>,
    pub date_string: Option<String>,
    pub rendered: Option<String>,
    pub ids: Vec<u32>,
    pub greedy_ids: Vec<u32>,
    pub greedy_text: String,
    pub top_ids: Vec<Vec<u32>>,
    pub top_logits: Vec<Vec<f64>>,
    pub logsumexp: Vec<f64>,
    pub min_top1_margin: f64,
}

#[derive(Debug, Deserialize)]
pub struct Golden {
    pub n_new: usize,
    pub cases: Vec<Case>,
}

pub fn golden() -> Golden {
    let text = std::fs::read_to_string(tiny_dir().join("golden.json")).expect("golden.json is in the repo");
    serde_json::from_str(&text).expect("golden.json parses")
}

/// `<case>.last_prompt_logits` from golden.safetensors.
pub fn last_prompt_logits(case: &str) -> Vec<f32> {
    let bytes = std::fs::read(tiny_dir().join("golden.safetensors")).expect("golden.safetensors is in the repo");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let t = st.tensor(&format!("{case}.last_prompt_logits")).expect("tensor present");
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// Checks logits against one teacher-forced reference step; returns the max abs error over the top-10.
pub fn check_step(case: &Case, step: usize, logits: &[f32], tol: f64) -> f64 {
    let (ids, want) = (&case.top_ids[step], &case.top_logits[step]);
    let mut worst = 0f64;
    for (j, (&id, &w)) in ids.iter().zip(want).enumerate() {
        let got = logits[id as usize] as f64;
        worst = worst.max((got - w).abs());
        assert!(
            (got - w).abs() <= tol,
            "{} step {step}: logit of top-{j} id {id} = {got}, want {w} (tol {tol})",
            case.name
        );
    }
    // Our ranking must agree wherever the reference gap to the next logit exceeds 2*tol.
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.select_nth_unstable_by(10, |&a, &b| logits[b].total_cmp(&logits[a]));
    order.truncate(10);
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    for j in 0..9 {
        if want[j] - want[j + 1] > 2.0 * tol {
            assert_eq!(order[j] as u32, ids[j], "{} step {step}: rank {j} differs", case.name);
        }
    }
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = m + logits.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
    assert!(
        (lse - case.logsumexp[step]).abs() <= tol,
        "{} step {step}: logsumexp {lse} vs {}",
        case.name,
        case.logsumexp[step]
    );
    worst
}

/// True when CUDA device 0 can be used; otherwise prints why the calling test is skipped.
#[cfg(feature = "cuda")]
pub fn gpu_available() -> bool {
    match infer_core::cuda::device(0) {
        Ok(_) => true,
        Err(e) => {
            println!("SKIPPED: no CUDA device: {e}");
            false
        }
    }
}
