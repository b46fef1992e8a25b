//! The serving engine on the tiny fixture: concurrent greedy requests reproduce the float64
//! reference ids and their single-request results exactly (isolation), also when a small KV
//! pool forces preemption; prefix caching; cancellation frees blocks; logprobs; stop strings;
//! typed refusals; shutdown. Every wait is bounded.

mod common;

use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use common::{golden, tiny_dir};
use infer_core::engine::{Completion, Engine, EngineConfig, EngineEvent, EngineRequest, SubmitError};
use infer_core::model::paged_kv::PagedKvCache;
use infer_core::{DeviceType, FinishReason, GenerateOptions, Llama3, LoadOptions, Precision, SamplerConfig};

const WAIT: Duration = Duration::from_secs(120);

fn load() -> Llama3 {
    let opts = LoadOptions { context_length: Some(1024), precision: Precision::Exact, ..LoadOptions::default() };
    Llama3::load(tiny_dir(), opts).unwrap()
}

fn engine(cfg: EngineConfig) -> Engine {
    Engine::start(load(), cfg).unwrap()
}

fn greedy(prompt: &[u32], max_tokens: usize) -> EngineRequest {
    EngineRequest {
        prompt_ids: prompt.to_vec(),
        max_tokens,
        sampler: SamplerConfig::greedy(),
        stop: Vec::new(),
        ignore_eos: true,
        logprobs: None,
    }
}

fn submit(e: &Engine, req: EngineRequest) -> Receiver<EngineEvent> {
    let (tx, rx) = channel();
    e.submit(req, Box::new(move |ev| tx.send(ev).is_ok())).unwrap();
    rx
}

/// Collects a request's events: (ids, streamed text + final text, completion).
fn collect(rx: &Receiver<EngineEvent>) -> (Vec<u32>, String, Completion) {
    let (mut ids, mut text) = (Vec::new(), String::new());
    loop {
        match rx.recv_timeout(WAIT).expect("event within the time limit") {
            EngineEvent::Token { id, text: t, .. } => {
                ids.push(id);
                text.push_str(&t);
            }
            EngineEvent::Done(c) => {
                text.push_str(&c.text);
                return (ids, text, c);
            }
            EngineEvent::Failed(m) => panic!("request failed: {m}"),
        }
    }
}

fn prompts() -> Vec<Vec<u32>> {
    let g = golden();
    let mut p: Vec<Vec<u32>> = g.cases.iter().map(|c| c.ids.clone()).collect();
    // more prompts of different lengths, sharing prefixes with the cases
    for (i, c) in g.cases.iter().enumerate() {
        p.push(c.ids[..c.ids.len() / 2 + 1].to_vec());
        p.push(c.ids.iter().chain(&[1000 + i as u32, 2000]).copied().collect());
    }
    p
}

/// Single-request results through the library's ordinary generation path.
fn alone(prompts: &[Vec<u32>], n: usize) -> Vec<Vec<u32>> {
    let mut m = load();
    let opts =
        GenerateOptions { max_new_tokens: n, sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
    prompts.iter().map(|p| m.generate_ids(p, &opts, &mut |_| {}).unwrap().ids).collect()
}

fn run_all(e: &Engine, prompts: &[Vec<u32>], n: usize) -> Vec<(Vec<u32>, String, Completion)> {
    let rxs: Vec<_> = prompts.iter().map(|p| submit(e, greedy(p, n))).collect();
    rxs.iter().map(collect).collect()
}

#[test]
fn concurrent_greedy_matches_reference_and_single_runs() {
    let g = golden();
    let ps = prompts();
    let want = alone(&ps, g.n_new);
    // Small step budget: prompts are prefilled in chunks next to other sequences' decode rows.
    let e = engine(EngineConfig { max_batch: 8, step_tokens: 7, ..EngineConfig::default() });
    let got = run_all(&e, &ps, g.n_new);
    for (i, (ids, text, c)) in got.iter().enumerate() {
        assert_eq!(ids, &want[i], "prompt {i}: batched ids differ from the single run");
        assert_eq!(c.completion_tokens, g.n_new);
        assert_eq!(c.reason, FinishReason::Length);
        if let Some(case) = g.cases.get(i) {
            assert_eq!(ids, &case.greedy_ids, "{}: reference greedy ids", case.name);
            assert_eq!(text, &case.greedy_text, "{}: reference text", case.name);
        }
    }
    let m = e.metrics();
    assert_eq!(m.requests_finished, ps.len() as u64);
    assert_eq!(m.kv_blocks_used, 0);
    assert!(m.prefix_cache_hit_tokens > 0, "prompts sharing prefixes hit the prefix cache: {m:?}");
}

#[test]
fn a_small_pool_preempts_and_still_matches() {
    let g = golden();
    let ps = prompts();
    let want = alone(&ps, g.n_new);
    // Room for one full context (512 tokens = 32 blocks) and a little more, while the nine
    // sequences need ~90 blocks: sequences wait, or get preempted and recomputed.
    let opts = LoadOptions { context_length: Some(512), precision: Precision::Exact, ..LoadOptions::default() };
    let m = Llama3::load(tiny_dir(), opts).unwrap();
    let per_block = PagedKvCache::block_bytes(m.config(), 16, DeviceType::Cpu);
    let cfg =
        EngineConfig { max_batch: 8, kv_memory_bytes: Some(40 * per_block), step_tokens: 64, ..Default::default() };
    let e = Engine::start(m, cfg).unwrap();
    assert_eq!(e.info().kv_blocks, 40);
    let got = run_all(&e, &ps, g.n_new);
    for (i, (ids, _, _)) in got.iter().enumerate() {
        assert_eq!(ids, &want[i], "prompt {i}");
    }
    assert!(e.metrics().requests_preempted > 0, "{:?}", e.metrics());
    assert_eq!(e.metrics().kv_blocks_used, 0);
}

#[test]
fn prefix_cache_reports_cached_tokens_and_keeps_results() {
    let case = &golden().cases[0];
    let e = engine(EngineConfig { block_size: 4, ..Default::default() });
    let (first, _, c1) = collect(&submit(&e, greedy(&case.ids, 5)));
    let (second, _, c2) = collect(&submit(&e, greedy(&case.ids, 5)));
    assert_eq!(first, second);
    assert_eq!(c1.cached_tokens, 0);
    assert_eq!(c2.cached_tokens, (case.ids.len() - 1) / 4 * 4, "every full block but the last token's");
}

#[test]
fn cancellation_frees_blocks_and_others_continue() {
    let case = &golden().cases[0];
    let e = engine(EngineConfig::default());
    let (tx, rx) = channel();
    let mut left = 3;
    // This client goes away after three tokens.
    e.submit(
        greedy(&case.ids, 200),
        Box::new(move |ev| {
            left -= 1;
            tx.send(ev).is_ok() && left > 0
        }),
    )
    .unwrap();
    let other = submit(&e, greedy(&case.ids, 20));
    let (ids, _, _) = collect(&other);
    assert_eq!(ids.len(), 20);
    let n = rx.try_iter().count();
    assert_eq!(n, 3, "no events after the client left");
    let t0 = std::time::Instant::now();
    while e.metrics().kv_blocks_used != 0 {
        assert!(t0.elapsed() < WAIT, "blocks never freed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(e.metrics().requests_running, 0);
    // explicit cancel of a queued/running request
    let (tx, rx) = channel();
    let id = e.submit(greedy(&case.ids, 500), Box::new(move |ev| tx.send(ev).is_ok())).unwrap();
    e.cancel(id);
    let t0 = std::time::Instant::now();
    while e.metrics().requests_cancelled < 1 || e.metrics().requests_running != 0 {
        assert!(t0.elapsed() < WAIT, "cancel never applied");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(rx.try_iter().count() < 500);
}

#[test]
fn logprobs_and_stop_strings() {
    let case = &golden().cases[0];
    let e = engine(EngineConfig::default());
    let mut req = greedy(&case.ids, 8);
    req.logprobs = Some(5);
    let rx = submit(&e, req);
    let mut n = 0;
    while let EngineEvent::Token { id, logprob, .. } = rx.recv_timeout(WAIT).unwrap() {
        let lp = logprob.expect("logprobs asked for");
        assert_eq!(lp.id, id);
        assert_eq!(lp.top.len(), 5);
        assert_eq!(lp.top[0].id, id, "greedy picks the most likely token");
        assert!((lp.top[0].logprob - lp.logprob).abs() < 1e-6);
        assert!(lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        assert!(lp.top.iter().map(|t| t.logprob.exp()).sum::<f32>() <= 1.0 + 1e-4);
        n += 1;
    }
    assert_eq!(n, 8);
    // Stop at a piece of the reference text: the text ends right before it.
    let text = &case.greedy_text;
    let cut = text.char_indices().nth(text.chars().count() / 2).map(|(i, _)| i).unwrap();
    let stop: String = text[cut..].chars().take(3).collect();
    let mut req = greedy(&case.ids, golden().n_new);
    req.stop = vec![stop.clone()];
    let (_, got, c) = collect(&submit(&e, req));
    assert_eq!(c.reason, FinishReason::Stop);
    assert_eq!(got, text[..text.find(&stop).unwrap()]);
}

#[test]
fn refusals_are_typed() {
    let e = engine(EngineConfig { max_batch: 1, max_queue: 1, ..Default::default() });
    let sink = || -> infer_core::engine::EventSink { Box::new(|_| true) };
    assert!(matches!(e.submit(greedy(&[], 4), sink()), Err(SubmitError::Invalid(_))));
    assert!(matches!(e.submit(greedy(&[1], 0), sink()), Err(SubmitError::Invalid(_))));
    assert!(matches!(e.submit(greedy(&[u32::MAX], 1), sink()), Err(SubmitError::Invalid(_))));
    assert!(matches!(e.submit(greedy(&[1; 1000], 100), sink()), Err(SubmitError::TooLong { .. })));
    let mut bad = greedy(&[1], 4);
    bad.sampler.temperature = -1.0;
    assert!(matches!(e.submit(bad, sink()), Err(SubmitError::Invalid(_))));
    let mut bad = greedy(&[1], 4);
    bad.logprobs = Some(21);
    assert!(matches!(e.submit(bad, sink()), Err(SubmitError::Invalid(_))));
    // one running + one waiting fill the engine
    let a = submit(&e, greedy(&[1, 2, 3], 1000));
    let b = submit(&e, greedy(&[1, 2, 3], 1000));
    assert!(matches!(e.submit(greedy(&[1], 4), sink()), Err(SubmitError::QueueFull { limit: 1 })));
    assert!(e.metrics().requests_rejected >= 7);
    // shutdown: no new requests; in-flight ones fail once the grace period is over
    e.shutdown(Duration::from_millis(50));
    assert!(matches!(e.submit(greedy(&[1], 4), sink()), Err(SubmitError::ShuttingDown)));
    e.join();
    for rx in [a, b] {
        let last = rx.try_iter().last().expect("events");
        assert!(matches!(last, EngineEvent::Failed(ref m) if m.contains("shutting down")), "{last:?}");
    }
}
