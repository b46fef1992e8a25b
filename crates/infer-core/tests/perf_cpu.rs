//! The seed's CPU benchmark test (ignored by default; a benchmark, not a timed assertion):
//!   cargo test --release test_llama3_cpu_loading_and_generation -- --ignored --show-output
//! Model: `RUSTINFER_MODEL`, or a random Llama-3.2-1B-shaped checkpoint made on first use with
//! scripts/make_random_llama.py (numpy). Prints load time, prefill tok/s (64- and 128-token
//! prompts) and decode tok/s, plus one JSON line for scripts/bench_cpu.sh.
//! `RUSTINFER_PRECISION=exact` measures `Precision::Exact` (f32 activations) instead of the
//! default `Precision::Fast`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use infer_core::{GenerateOptions, Llama3, LoadOptions, Precision, SamplerConfig};

fn model_dir() -> PathBuf {
    if let Ok(p) = std::env::var("RUSTINFER_MODEL") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let dir = root.join("target/models/llama-3.2-1b-random");
    if !dir.join("model.safetensors").is_file() {
        let status = Command::new("python3")
            .arg(root.join("scripts/make_random_llama.py"))
            .args(["--out", dir.to_str().unwrap(), "--shape", "llama-3.2-1b", "--tokenizer-from"])
            .arg(common::tiny_dir())
            .status()
            .expect("python3 runs scripts/make_random_llama.py");
        assert!(status.success(), "make_random_llama.py failed (needs numpy)");
    }
    dir
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
#[ignore = "benchmark: needs a 1B-shaped model (2.5 GB) and minutes of CPU"]
fn test_llama3_cpu_loading_and_generation() {
    let dir = model_dir();
    let t0 = Instant::now();
    let precision = match std::env::var("RUSTINFER_PRECISION").as_deref() {
        Ok("exact") => Precision::Exact,
        _ => Precision::Fast,
    };
    let opts = LoadOptions { context_length: Some(1024), precision, ..LoadOptions::default() };
    let mut model = Llama3::load(&dir, opts).unwrap();
    let load_s = t0.elapsed().as_secs_f64();
    println!(
        "model: {} ({} layers, hidden {})",
        dir.display(),
        model.config().num_hidden_layers,
        model.config().hidden_size
    );
    println!("load: {load_s:.2} s, precision {precision:?}, isa {}", infer_core::op::cpu::isa());
    // Weights are memory-mapped in their stored dtype: resident memory stays near the file size.
    let (rss, files) = (rss_bytes(), model_bytes(&dir));
    println!(
        "resident memory after load: {:.2} GB = {:.3} x the weight files ({:.2} GB)",
        rss / 1e9,
        rss / files,
        files / 1e9
    );
    assert!(rss <= 1.15 * files, "resident memory {rss} exceeds 1.15 x the weights {files}");
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(40);
    let all = model.tokenize(&text, true).unwrap();
    let mut prefill = Vec::new();
    for n in [64usize, 128] {
        let runs: Vec<f64> = (0..3)
            .map(|_| {
                model.reset();
                let t = Instant::now();
                let logits = model.forward_tokens(&all[..n], 0, false).unwrap();
                assert!(logits.as_f32().unwrap().iter().all(|x| x.is_finite()));
                n as f64 / t.elapsed().as_secs_f64()
            })
            .collect();
        let tps = median(runs);
        println!("prefill {n} tokens: {tps:.1} tok/s");
        prefill.push((n, tps));
    }
    let opts = GenerateOptions {
        max_new_tokens: 129,
        sampler: SamplerConfig::greedy(),
        ignore_eos: true,
        ..Default::default()
    };
    model.reset();
    let g = model.generate_ids(&all[..16], &opts, &mut |_| {}).unwrap();
    assert_eq!(g.ids.len(), 129);
    let decode = g.decode_tokens_per_s();
    let gbps = decode * model_bytes(&dir) / 1e9;
    println!("decode: {decode:.2} tok/s ({} tokens, {gbps:.1} GB/s of weights)", g.decode_tokens);
    println!(
        "BENCH_JSON {{\"load_s\": {load_s:.3}, \"pp64\": {:.2}, \"pp128\": {:.2}, \"tg\": {decode:.3}, \"isa\": \"{}\", \"precision\": \"{precision:?}\"}}",
        prefill[0].1,
        prefill[1].1,
        infer_core::op::cpu::isa()
    );
}

fn model_bytes(dir: &std::path::Path) -> f64 {
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len() as f64)
                .sum()
        })
        .unwrap_or(0.0)
}

/// Resident set size of this process (Linux), in bytes.
fn rss_bytes() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb * 1024.0)
        .unwrap_or(0.0)
}

/// In-process A/B of decode variants (ignored; a benchmark): one knob of `op::cpu::tuning`
/// (`AB_KNOB`, default `decode_task_bytes`) changes between single-token steps, round robin over
/// the values of `AB_VALUES` (comma-separated), so that the VM's bandwidth drift hits every
/// variant alike. Prints the median step time and tok/s per value; `AB_TRACE=1` prints each step;
/// `AB_PREFILL=N` times prefills of N tokens instead (per-token figures).
///   RAYON_NUM_THREADS=2 AB_KNOB=gemv_prefetch_bytes AB_VALUES=0,1024 \
///     cargo test --release -p infer-core --test perf_cpu decode_ab -- --ignored --nocapture
#[test]
#[ignore = "benchmark: needs a 1B-shaped model (2.5 GB) and minutes of CPU"]
fn decode_ab() {
    use infer_core::op::cpu::tuning::Knob;
    let name = std::env::var("AB_KNOB").unwrap_or_else(|_| Knob::DecodeTaskBytes.name().into());
    let knob = Knob::from_name(&name).unwrap_or_else(|| panic!("AB_KNOB: no knob {name}, see op::cpu::tuning"));
    let variants: Vec<usize> = std::env::var("AB_VALUES")
        .map(|v| {
            v.split(',').map(|x| x.trim().parse::<usize>().expect("AB_VALUES: comma-separated integers")).collect()
        })
        .unwrap_or_else(|_| vec![knob.default_value()]);
    let steps: usize = std::env::var("AB_STEPS").ok().and_then(|v| v.parse().ok()).unwrap_or(120);
    let trace = std::env::var("AB_TRACE").is_ok();
    let dir = model_dir();
    let opts = LoadOptions { context_length: Some(1024), ..LoadOptions::default() };
    let mut model = Llama3::load(&dir, opts).unwrap();
    let prompt = model.tokenize("The quick brown fox jumps over the lazy dog.", true).unwrap();
    model.forward_tokens(&prompt, 0, false).unwrap();
    // AB_PREFILL=N: each step is a prefill of N tokens from an empty cache instead.
    let prefill: Option<usize> = std::env::var("AB_PREFILL").ok().and_then(|v| v.parse().ok());
    let long: Vec<u32> = (0..prefill.unwrap_or(0)).map(|i| prompt[i % prompt.len()]).collect();
    let mut times = vec![Vec::new(); variants.len()];
    for s in 0..steps + variants.len() {
        let v = s % variants.len();
        knob.set(variants[v]);
        let t = Instant::now();
        if prefill.is_some() {
            model.reset();
            model.forward_tokens(&long, 0, false).unwrap();
        } else {
            model.forward_tokens(&[prompt[s % prompt.len()]], prompt.len() + s, false).unwrap();
        }
        let dt = t.elapsed().as_secs_f64() / prefill.unwrap_or(1) as f64;
        if s >= variants.len() {
            times[v].push(dt);
        }
        if trace {
            eprint!("{:.1} ", dt * 1e3);
        }
    }
    knob.set(knob.default_value());
    let base = median(times[0].clone());
    for (v, t) in variants.iter().zip(times) {
        let mean = t.len() as f64 / t.iter().sum::<f64>();
        let med = median(t);
        println!(
            "{name} = {v}: median step {:.2} ms = {:.2} tok/s ({:.3}x the first), mean {mean:.2} tok/s",
            med * 1e3,
            1.0 / med,
            base / med
        );
    }
}
