//! Sampling on the GPU (`cuda::sample::DeviceSampler`) against the CPU sampler's rules: greedy
//! and penalties give the same ids; top-k / top-p / min-p keep exactly the expected sets; and
//! stratified uniforms reproduce the expected probabilities. Skips without a GPU.
#![cfg(feature = "cuda")]

mod common;

use common::gpu_available;
use infer_core::cuda::{DeviceI32, device, sample::DeviceSampler};
use infer_core::model::sampler::Sampler;
use infer_core::{DType, DeviceType, SamplerConfig, Tensor};

struct Gpu {
    sampler: DeviceSampler,
    logits: Tensor,
    out: DeviceI32,
}

impl Gpu {
    fn new(logits: &[f32]) -> Self {
        let dev = device(0).unwrap();
        let host = Tensor::from_f32(&[1, logits.len()], logits.to_vec()).unwrap();
        Gpu {
            sampler: DeviceSampler::new(&dev, logits.len()).unwrap(),
            logits: host.to_device_as(DeviceType::Cuda(0), DType::F32).unwrap(),
            out: DeviceI32::new(&dev, &[0]).unwrap(),
        }
    }

    fn start(&mut self, cfg: &SamplerConfig, context: &[u32], generated: &[u32]) {
        self.sampler.start(cfg, context, generated).unwrap();
    }

    fn draw(&mut self, u: f64) -> i32 {
        self.sampler.set_uniform(u).unwrap();
        self.sampler.launch(&self.logits, &mut self.out).unwrap();
        self.out.first().unwrap()
    }
}

fn cfg(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> SamplerConfig {
    SamplerConfig { temperature, top_k, top_p, min_p, seed: Some(1), ..SamplerConfig::default() }
}

/// The first and the last kept id in index order (u = 0 and u → 1).
fn ends(g: &mut Gpu, c: &SamplerConfig) -> (i32, i32) {
    g.start(c, &[], &[]);
    let lo = g.draw(0.0);
    g.start(c, &[], &[]);
    (lo, g.draw(1.0 - 1e-12))
}

#[test]
fn filters_keep_the_expected_sets() {
    if !gpu_available() {
        return;
    }
    // exp(l - 3): [0.050, 1, 0.135, 0.607, 0.018, 0.905]
    let logits = [0.0, 3.0, 1.0, 2.5, -1.0, 2.9];
    let mut g = Gpu::new(&logits);
    assert_eq!(ends(&mut g, &cfg(1.0, 3, 1.0, 0.0)), (1, 5), "top-k 3 keeps {{1, 3, 5}}");
    assert_eq!(ends(&mut g, &cfg(1.0, 1, 1.0, 0.0)), (1, 1), "top-k 1 is greedy");
    assert_eq!(ends(&mut g, &cfg(1.0, 0, 0.6, 0.0)), (1, 5), "top-p 0.6 keeps {{1, 5}}");
    assert_eq!(ends(&mut g, &cfg(1.0, 0, 0.3, 0.0)), (1, 1), "top-p 0.3 keeps the max only");
    assert_eq!(ends(&mut g, &cfg(1.0, 0, 1.0, 0.5)), (1, 5), "min-p 0.5 keeps {{1, 3, 5}}");
    assert_eq!(ends(&mut g, &cfg(1.0, 0, 1.0, 0.0)), (0, 5), "no filter keeps all");
    // Within top-p {1, 5}: masses 1 and 0.905 → u = 0.5 is id 1, u = 0.6 is id 5.
    let c = cfg(1.0, 0, 0.6, 0.0);
    g.start(&c, &[], &[]);
    assert_eq!(g.draw(0.5), 1);
    assert_eq!(g.draw(0.6), 5);
    // NaN and -inf are never chosen; all of them → -1.
    let mut g = Gpu::new(&[f32::NAN, f32::NEG_INFINITY, 0.5]);
    assert_eq!(ends(&mut g, &cfg(1.0, 0, 1.0, 0.0)), (2, 2));
    let mut g = Gpu::new(&[f32::NAN, f32::NEG_INFINITY]);
    g.start(&cfg(1.0, 0, 1.0, 0.0), &[], &[]);
    assert_eq!(g.draw(0.3), -1);
}

#[test]
fn greedy_with_penalties_matches_the_cpu_sampler() {
    if !gpu_available() {
        return;
    }
    let n = 3001;
    let logits: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 / 100.0) - 5.0).collect();
    let context: Vec<u32> = (0..200).map(|i| (i * 37 % n) as u32).collect();
    for (rp, pp, fp) in [(1.3, 0.0, 0.0), (1.0, 0.7, 0.3), (1.2, 0.5, 0.5)] {
        let c = SamplerConfig {
            temperature: 0.0,
            repetition_penalty: rp,
            presence_penalty: pp,
            frequency_penalty: fp,
            ..SamplerConfig::default()
        };
        let mut cpu = Sampler::new(c.clone()).unwrap();
        let mut g = Gpu::new(&logits);
        g.start(&c, &context, &[]);
        let mut ctx = context.clone();
        for step in 0..8 {
            let want = cpu.sample(&mut logits.clone(), &ctx).unwrap();
            let got = g.draw(0.5);
            assert_eq!(got, want as i32, "penalties ({rp}, {pp}, {fp}) step {step}");
            ctx.push(want);
        }
    }
}

#[test]
fn stratified_draws_follow_the_distribution() {
    if !gpu_available() {
        return;
    }
    let n = 5000;
    let logits: Vec<f32> = (0..n).map(|i| (i as f32 * 0.61).sin() * 4.0).collect();
    let (t, top_k, top_p) = (0.7f32, 50usize, 0.9f32);
    // Expected kept set and probabilities, in f64, by the CPU sampler's rules.
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let top: Vec<usize> = idx[..top_k].to_vec();
    let max = f64::from(logits[top[0]]);
    let w: Vec<f64> = top.iter().map(|&i| ((f64::from(logits[i]) - max) / f64::from(t)).exp()).collect();
    let total: f64 = w.iter().sum();
    let (mut cum, mut keep) = (0.0, 0);
    while keep < top_k && cum < f64::from(top_p) * total {
        cum += w[keep];
        keep += 1;
    }
    let draws = 2000;
    let mut g = Gpu::new(&logits);
    let c = cfg(t, top_k, top_p, 0.0);
    g.start(&c, &[], &[]);
    let mut counts = vec![0usize; n];
    for i in 0..draws {
        let id = g.draw((i as f64 + 0.5) / draws as f64);
        assert!(id >= 0);
        counts[id as usize] += 1;
    }
    for (j, &i) in top.iter().enumerate() {
        let want = if j < keep { w[j] / cum * draws as f64 } else { 0.0 };
        let got = counts[i] as f64;
        assert!((got - want).abs() <= 2.0, "id {i} (rank {j}): {got} draws, expected {want:.1}");
    }
    let outside: usize = (0..n).filter(|i| !top[..keep].contains(i)).map(|i| counts[i]).sum();
    assert_eq!(outside, 0, "draws outside the nucleus");
}
