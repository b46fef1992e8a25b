//! Next-token sampling: repetition / presence / frequency penalties, then greedy argmax or
//! temperature + top-k + top-p + min-p filtering and a seeded draw (ChaCha8).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::base::{Error, Result};

/// Sampling parameters. `Default` is greedy decoding with every filter and penalty off.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SamplerConfig {
    /// Softmax temperature; `0` selects greedy decoding (argmax, ties to the lowest id).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` disables.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose cumulative probability is >= `top_p`; `1.0` disables.
    pub top_p: f32,
    /// Drop tokens whose probability is < `min_p * p_max`; `0` disables.
    pub min_p: f32,
    /// HF/CTRL penalty over tokens seen in prompt + output: positive logits are divided by it,
    /// negative ones multiplied; `1.0` disables.
    pub repetition_penalty: f32,
    /// OpenAI presence penalty, subtracted once from each token generated so far.
    pub presence_penalty: f32,
    /// OpenAI frequency penalty, subtracted once per occurrence of each generated token.
    pub frequency_penalty: f32,
    /// RNG seed; `None` seeds from entropy.
    pub seed: Option<u64>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding, every filter and penalty off (same as `Default`).
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Whether sampling reduces to argmax (`temperature == 0`).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Whether the next id is the argmax of the raw logits (greedy, no penalty): then no logits
    /// need to leave a GPU.
    pub fn is_plain_greedy(&self) -> bool {
        self.is_greedy()
            && self.repetition_penalty == 1.0
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
    }

    /// Checks every parameter's range; the error names the parameter and its value.
    pub fn validate(&self) -> Result<()> {
        let (t, p, m, r) = (self.temperature, self.top_p, self.min_p, self.repetition_penalty);
        let checks = [
            ("temperature", t, t.is_finite() && t >= 0.0, "finite and >= 0"),
            ("top_p", p, p > 0.0 && p <= 1.0, "in (0, 1]"),
            ("min_p", m, (0.0..=1.0).contains(&m), "in [0, 1]"),
            ("repetition_penalty", r, r.is_finite() && r > 0.0, "finite and > 0"),
            ("presence_penalty", self.presence_penalty, self.presence_penalty.is_finite(), "finite"),
            ("frequency_penalty", self.frequency_penalty, self.frequency_penalty.is_finite(), "finite"),
        ];
        match checks.iter().find(|c| !c.2) {
            Some((name, v, _, want)) => Err(Error::InvalidArgument(format!("{name} = {v}: must be {want}"))),
            None => Ok(()),
        }
    }
}

/// Reads a Hugging Face `generation_config.json`; `Ok(None)` when the file does not exist.
///
/// As in HF, a missing or false `do_sample` means greedy; `repetition_penalty` applies either way.
/// When sampling, `temperature` defaults to 1 and `top_p`/`top_k`/`min_p` are read when present
/// (absent ones stay off, as in vLLM). Unknown keys and `null` values are ignored. Malformed JSON,
/// wrongly typed or out-of-range values give [`Error::Config`] naming the file.
pub fn from_generation_config(path: &Path) -> Result<Option<SamplerConfig>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let bad = |msg: String| Error::Config { path: path.to_path_buf(), msg };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("malformed JSON: {e}")))?;
    let obj = json.as_object().ok_or_else(|| bad("expected a JSON object".into()))?;
    let get = |key: &str| obj.get(key).filter(|v| !v.is_null());
    let num = |key: &str| -> Result<Option<f64>> {
        get(key).map(|v| v.as_f64().ok_or_else(|| bad(format!("`{key}` must be a number, got {v}")))).transpose()
    };
    let do_sample = match get("do_sample") {
        None => false,
        Some(v) => v.as_bool().ok_or_else(|| bad(format!("`do_sample` must be a boolean, got {v}")))?,
    };
    let mut cfg = SamplerConfig::default();
    if let Some(r) = num("repetition_penalty")? {
        cfg.repetition_penalty = r as f32;
    }
    if do_sample {
        cfg.temperature = num("temperature")?.unwrap_or(1.0) as f32;
        cfg.top_p = num("top_p")?.map_or(cfg.top_p, |p| p as f32);
        cfg.min_p = num("min_p")?.map_or(cfg.min_p, |p| p as f32);
        if let Some(v) = get("top_k") {
            let k = v.as_u64().ok_or_else(|| bad(format!("`top_k` must be a non-negative integer, got {v}")))?;
            cfg.top_k = usize::try_from(k).map_err(|_| bad(format!("`top_k` = {k} is too large")))?;
        }
    }
    cfg.validate().map_err(|e| bad(e.to_string()))?;
    Ok(Some(cfg))
}

/// Stateful sampler: the config, a ChaCha8 RNG and counts of the tokens generated so far.
/// Use one per generation (or call [`Sampler::reset`] between generations).
pub struct Sampler {
    cfg: SamplerConfig,
    rng: ChaCha8Rng,
    counts: HashMap<u32, u32>,
    /// Scratch: marks of context ids already penalised (all false between calls).
    seen: Vec<bool>,
    /// Scratch: `(id, logit)` candidates, then `(id, unnormalised probability)`.
    cand: Vec<(u32, f32)>,
}

impl Sampler {
    /// Validates `cfg` and seeds the RNG from `cfg.seed`, or from entropy when `None`.
    pub fn new(cfg: SamplerConfig) -> Result<Self> {
        cfg.validate()?;
        let rng = match cfg.seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(seed),
            None => ChaCha8Rng::from_rng(&mut rand::rng()),
        };
        Ok(Self { cfg, rng, counts: HashMap::new(), seen: Vec::new(), cand: Vec::new() })
    }

    /// The configuration this sampler was built with.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Counts one more generated occurrence of `id` (for presence/frequency penalties).
    /// [`Sampler::sample`] already records the id it returns; call this only for tokens
    /// generated without it (e.g. forced tokens).
    pub fn record(&mut self, id: u32) {
        *self.counts.entry(id).or_insert(0) += 1;
    }

    /// The next uniform number in [0, 1) of this sampler's RNG (for draws made elsewhere, e.g.
    /// on a GPU: the same seed gives the same sequence of draws).
    pub fn uniform(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    /// Forgets the generated-token counts (the RNG stream continues).
    pub fn reset(&mut self) {
        self.counts.clear();
    }

    /// Picks the next token from `logits` (one per vocab entry) and records it.
    ///
    /// `context` is prompt + generated ids so far (for the repetition penalty). The penalties are
    /// applied to `logits` in place; then greedy argmax, or temperature, top-k, softmax, top-p,
    /// min-p, renormalise and draw. NaN and `-inf` logits are never chosen. Errors on empty
    /// logits, when no logit is selectable, or on an id (context or recorded) outside the vocab.
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::InvalidArgument("sampler: empty logits".into()));
        }
        self.apply_penalties(logits, context)?;
        let id = if self.cfg.is_greedy() { argmax(logits) } else { self.draw(logits) };
        let id = id.ok_or_else(|| {
            Error::InvalidArgument(format!("sampler: none of the {} logits is selectable (NaN or -inf)", logits.len()))
        })?;
        self.record(id);
        Ok(id)
    }

    fn apply_penalties(&mut self, logits: &mut [f32], context: &[u32]) -> Result<()> {
        let n = logits.len();
        let out_of_range = |id: u32| Error::InvalidArgument(format!("sampler: token id {id} >= vocab size {n}"));
        let rp = self.cfg.repetition_penalty;
        if rp != 1.0 {
            if let Some(&id) = context.iter().find(|&&id| id as usize >= n) {
                return Err(out_of_range(id));
            }
            if self.seen.len() != n {
                self.seen = vec![false; n];
            }
            for &id in context {
                let (i, seen) = (id as usize, &mut self.seen[id as usize]);
                if !std::mem::replace(seen, true) {
                    logits[i] = if logits[i] > 0.0 { logits[i] / rp } else { logits[i] * rp };
                }
            }
            context.iter().for_each(|&id| self.seen[id as usize] = false);
        }
        let (pp, fp) = (self.cfg.presence_penalty, self.cfg.frequency_penalty);
        if pp != 0.0 || fp != 0.0 {
            for (&id, &count) in &self.counts {
                let l = logits.get_mut(id as usize).ok_or_else(|| out_of_range(id))?;
                *l -= pp + fp * count as f32;
            }
        }
        Ok(())
    }

    /// Temperature / top-k / top-p / min-p sampling; `None` when no logit is selectable.
    fn draw(&mut self, logits: &[f32]) -> Option<u32> {
        let (cfg, cand) = (&self.cfg, &mut self.cand);
        cand.clear();
        let selectable = |l: f32| !l.is_nan() && l != f32::NEG_INFINITY;
        cand.extend(logits.iter().enumerate().filter(|&(_, &l)| selectable(l)).map(|(i, &l)| (i as u32, l)));
        if cand.is_empty() {
            return None;
        }
        // Temperature scaling preserves order, so top-k can select on the raw logits: O(vocab).
        if cfg.top_k > 0 && cfg.top_k < cand.len() {
            cand.select_nth_unstable_by(cfg.top_k - 1, by_desc);
            cand.truncate(cfg.top_k);
        }
        // Softmax weights relative to the max (the max gets exactly 1, also when it is +inf).
        let max = cand.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.1));
        for c in cand.iter_mut() {
            c.1 = if c.1 == max { 1.0 } else { ((c.1 - max) / cfg.temperature).exp() };
        }
        let total: f64 = cand.iter().map(|c| f64::from(c.1)).sum();
        // Min-p (p >= min_p * p_max, i.e. weight >= min_p) and top-p both keep a prefix of the
        // descending order, so applying min-p first (O(vocab)) gives the same intersection while
        // shrinking what top-p has to sort; top-p still uses the pre-min-p normaliser `total`.
        cand.retain(|c| c.1 > 0.0 && c.1 >= cfg.min_p);
        if cfg.top_p < 1.0 {
            let keep = nucleus_len(cand, f64::from(cfg.top_p) * total);
            cand.truncate(keep);
        }
        let kept: f64 = cand.iter().map(|c| f64::from(c.1)).sum();
        let mut r = self.rng.random::<f64>() * kept;
        for c in cand.iter() {
            r -= f64::from(c.1);
            if r < 0.0 {
                return Some(c.0);
            }
        }
        cand.last().map(|c| c.0)
    }
}

/// Descending by value, ties to the lowest id (so filters agree with greedy argmax).
fn by_desc(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Index of the first maximum, skipping NaN; `None` when nothing is above `-inf`.
fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if l > f32::NEG_INFINITY && best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best.map(|(i, _)| i as u32)
}

/// Sorts `cand` descending only as far as needed and returns the length of the smallest prefix
/// whose weight sum reaches `target` (at least 1). Sorts growing chunks of the unsorted tail
/// (64, 128, ...) after an O(n) partial selection, so a peaked distribution costs O(n).
fn nucleus_len(cand: &mut [(u32, f32)], target: f64) -> usize {
    let (mut start, mut chunk, mut cum) = (0, 64, 0.0);
    while start < cand.len() {
        let rest = &mut cand[start..];
        let m = chunk.min(rest.len());
        if m < rest.len() {
            rest.select_nth_unstable_by(m - 1, by_desc);
        }
        rest[..m].sort_unstable_by(by_desc);
        for (i, c) in rest[..m].iter().enumerate() {
            cum += f64::from(c.1);
            if cum >= target {
                return start + i + 1;
            }
        }
        start += m;
        chunk *= 2;
    }
    cand.len().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(temperature: f32, seed: u64) -> SamplerConfig {
        SamplerConfig { temperature, seed: Some(seed), ..SamplerConfig::default() }
    }

    fn run(c: SamplerConfig, logits: &[f32], n: usize) -> Vec<u32> {
        let mut s = Sampler::new(c).unwrap();
        (0..n).map(|_| s.sample(&mut logits.to_vec(), &[]).unwrap()).collect()
    }

    const L: [f32; 6] = [0.5, 2.0, 1.9, -1.0, 1.5, 0.0];

    #[test]
    fn greedy_and_degenerate_filters() {
        assert_eq!(run(SamplerConfig::greedy(), &L, 3), vec![1; 3]);
        assert_eq!(run(SamplerConfig::greedy(), &[f32::NAN, 1.0, 3.0, 3.0], 1), vec![2]);
        for t in [0.5, 1.0, 5.0] {
            assert_eq!(run(SamplerConfig { top_k: 1, ..cfg(t, 1) }, &L, 50), vec![1; 50]);
            assert_eq!(run(SamplerConfig { top_p: 1e-6, ..cfg(t, 2) }, &L, 50), vec![1; 50]);
            assert_eq!(run(SamplerConfig { min_p: 1.0, ..cfg(t, 3) }, &L, 50), vec![1; 50]);
        }
        // top-p on a large vocab exercises the chunked partial sort: keep 1 and 2 only.
        let mut big = vec![-30.0f32; 128_256];
        (big[70_000], big[5]) = (10.0, 10.0 - 0.1);
        let ids = run(SamplerConfig { top_p: 0.6, ..cfg(1.0, 4) }, &big, 200);
        assert!(ids.iter().all(|&i| i == 70_000 || i == 5) && ids.contains(&5) && ids.contains(&70_000));
    }

    #[test]
    fn bad_logits_error() {
        let mut s = Sampler::new(cfg(1.0, 0)).unwrap();
        assert!(s.sample(&mut [], &[]).is_err());
        assert!(s.sample(&mut [f32::NAN; 4], &[]).is_err());
        assert!(Sampler::new(SamplerConfig::greedy()).unwrap().sample(&mut [f32::NAN; 4], &[]).is_err());
        let mut rp = Sampler::new(SamplerConfig { repetition_penalty: 1.2, ..cfg(1.0, 0) }).unwrap();
        assert!(rp.sample(&mut [1.0, 2.0], &[5]).is_err());
        assert_eq!(rp.sample(&mut [1.0, f32::INFINITY], &[]).unwrap(), 1);
    }

    #[test]
    fn repetition_penalty_flips_choice() {
        let c = SamplerConfig { repetition_penalty: 1.5, ..SamplerConfig::greedy() };
        let mut s = Sampler::new(c).unwrap();
        let mut pos = [2.0, 1.8];
        assert_eq!(s.sample(&mut pos, &[0, 0, 0]).unwrap(), 1);
        assert!((pos[0] - 2.0 / 1.5).abs() < 1e-6 && pos[1] == 1.8);
        let mut neg = [-1.0, -1.2];
        assert_eq!(s.sample(&mut neg, &[0]).unwrap(), 1);
        assert_eq!(neg[0], -1.5);
        assert_eq!(Sampler::new(SamplerConfig::greedy()).unwrap().sample(&mut [2.0, 1.8], &[0]).unwrap(), 0);
    }

    #[test]
    fn presence_frequency_penalties() {
        let c = SamplerConfig { presence_penalty: 0.5, frequency_penalty: 0.25, ..SamplerConfig::greedy() };
        let mut s = Sampler::new(c).unwrap();
        s.record(3);
        s.record(3);
        s.record(1);
        let mut logits = [0.0f32; 5];
        // Context is irrelevant to these penalties (generated tokens only).
        assert_eq!(s.sample(&mut logits, &[0, 2, 4]).unwrap(), 0);
        assert_eq!(logits, [0.0, -0.75, 0.0, -1.0, 0.0]);
        let mut logits = [0.0f32; 5];
        s.sample(&mut logits, &[]).unwrap(); // id 0 was recorded by the previous sample()
        assert_eq!(logits, [-0.75, -0.75, 0.0, -1.0, 0.0]);
    }

    #[test]
    fn seeded_determinism_and_frequencies() {
        let uniform = [0.0f32; 10];
        assert_eq!(run(cfg(1.0, 42), &uniform, 100), run(cfg(1.0, 42), &uniform, 100));
        assert_ne!(run(cfg(1.0, 42), &uniform, 100), run(cfg(1.0, 43), &uniform, 100));
        let logits = [1.0f32, 2.0, 0.5, -1.0];
        let n = 20_000;
        let mut hist = [0usize; 4];
        run(cfg(1.0, 7), &logits, n).into_iter().for_each(|i| hist[i as usize] += 1);
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        for (h, l) in hist.iter().zip(logits) {
            assert!((*h as f32 / n as f32 - l.exp() / z).abs() < 0.02, "{hist:?}");
        }
    }

    #[test]
    fn validation() {
        let base = SamplerConfig::default();
        assert!(base.validate().is_ok() && base.is_greedy());
        let b = || base.clone();
        for c in [
            SamplerConfig { temperature: -0.1, ..b() },
            SamplerConfig { temperature: f32::INFINITY, ..b() },
            SamplerConfig { top_p: 0.0, ..b() },
            SamplerConfig { top_p: 1.5, ..b() },
            SamplerConfig { min_p: -0.1, ..b() },
            SamplerConfig { repetition_penalty: 0.0, ..b() },
            SamplerConfig { frequency_penalty: f32::NAN, ..b() },
        ] {
            assert!(Sampler::new(c).is_err());
        }
        let msg = SamplerConfig { top_p: 1.5, ..base }.validate().unwrap_err().to_string();
        assert!(msg.contains("top_p") && msg.contains("1.5"), "{msg}");
    }

    #[test]
    fn generation_config() {
        let dir = std::env::temp_dir().join(format!("sampler-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, body: &str| {
            let p = dir.join(name);
            std::fs::write(&p, body).unwrap();
            from_generation_config(&p)
        };
        let c = write("a.json", r#"{"do_sample": true, "temperature": 0.6, "top_p": 0.9, "eos_token_id": [1,2]}"#);
        let c = c.unwrap().unwrap();
        assert_eq!((c.temperature, c.top_p, c.top_k, c.min_p), (0.6, 0.9, 0, 0.0));
        let c = write("b.json", r#"{"do_sample": false, "temperature": 0.6, "repetition_penalty": 1.1}"#);
        let c = c.unwrap().unwrap();
        assert!(c.is_greedy() && c.repetition_penalty == 1.1);
        assert!(
            matches!(write("c.json", "{\"do_sample\": tru"), Err(Error::Config { path, .. }) if path.ends_with("c.json"))
        );
        assert!(matches!(write("d.json", r#"{"do_sample": true, "top_p": 2}"#), Err(Error::Config { .. })));
        assert!(from_generation_config(&dir.join("missing.json")).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
