//! [`LlamaConfig`] from GGUF metadata (`general.architecture = llama`, `llama.*` keys).
//!
//! The keys are translated to their `config.json` names and go through the same parser and
//! validation as a Hugging Face checkpoint ([`LlamaConfig::from_json_str`]).
//!
//! RoPE scaling supported: none; `llama.rope.scaling.type = linear` (`.factor`, or the older
//! `llama.rope.scale_linear`); and Llama 3.1-style scaling, which llama.cpp's converter stores as
//! a `rope_freqs.weight` tensor of per-frequency divisors: the llama3 parameters (factor,
//! low/high frequency factors, original context) are recovered from it and the recovered
//! parameters are checked to reproduce every stored divisor (relative 1e-4), else it is an error.
//! YaRN and other scaling types are rejected with an error naming them.

use serde_json::{Map, Value as Json, json};

use super::reader::Header;
use crate::base::{Error, Result};
use crate::model::config::{LlamaConfig, RopeScaling};

/// Reads the Llama hyper-parameters of a GGUF file. `rope_freqs` is the `rope_freqs.weight`
/// tensor if the file has one; `has_output` says whether it has `output.weight` (else the
/// embeddings are tied).
pub fn llama_config(h: &Header, rope_freqs: Option<&[f32]>, has_output: bool) -> Result<LlamaConfig> {
    let err = |msg: String| Error::Gguf { path: h.path.clone(), msg };
    let arch = h.get_str("general.architecture")?.ok_or_else(|| err("no `general.architecture` key".into()))?;
    if arch != "llama" {
        return Err(err(format!("general.architecture is `{arch}`; only `llama` is supported")));
    }
    let req = |key: &str| -> Result<u64> {
        h.get_u64(&format!("llama.{key}"))?.ok_or_else(|| err(format!("missing metadata key `llama.{key}`")))
    };
    let opt = |key: &str| h.get_u64(&format!("llama.{key}"));
    if let Some(n) = opt("expert_count")?.filter(|&n| n > 0) {
        return Err(err(format!("`llama.expert_count` = {n}: mixture-of-experts models are not supported")));
    }
    let hidden = req("embedding_length")?;
    let heads = req("attention.head_count")?;
    if heads == 0 {
        return Err(err("`llama.attention.head_count` is 0".into()));
    }
    let kv_heads = opt("attention.head_count_kv")?.unwrap_or(heads);
    let head_dim = opt("attention.key_length")?.unwrap_or(hidden / heads);
    if let Some(v) = opt("attention.value_length")?.filter(|&v| v != head_dim) {
        return Err(err(format!("`llama.attention.value_length` {v} differs from the key length {head_dim}")));
    }
    if let Some(r) = opt("rope.dimension_count")?.filter(|&r| r != head_dim) {
        return Err(err(format!(
            "`llama.rope.dimension_count` {r} differs from head_dim {head_dim} (partial RoPE is not supported)"
        )));
    }
    let vocab = match opt("vocab_size")? {
        Some(v) => v,
        None => h.get("tokenizer.ggml.tokens").and_then(|t| t.as_array()).map(|t| t.len() as u64).ok_or_else(|| {
            err("neither `llama.vocab_size` nor `tokenizer.ggml.tokens` gives the vocabulary size".into())
        })?,
    };
    let theta = float(h, "llama.rope.freq_base")?.unwrap_or(10000.0);
    let eps = float(h, "llama.attention.layer_norm_rms_epsilon")?
        .ok_or_else(|| err("missing metadata key `llama.attention.layer_norm_rms_epsilon`".into()))?;
    let rope_scaling = rope_scaling(h, rope_freqs, head_dim as usize, theta)?;

    let mut c = Map::new();
    c.insert("model_type".into(), json!("llama"));
    c.insert("hidden_size".into(), json!(hidden));
    c.insert("intermediate_size".into(), json!(req("feed_forward_length")?));
    c.insert("num_hidden_layers".into(), json!(req("block_count")?));
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert("num_key_value_heads".into(), json!(kv_heads));
    c.insert("head_dim".into(), json!(head_dim));
    c.insert("vocab_size".into(), json!(vocab));
    c.insert("max_position_embeddings".into(), json!(req("context_length")?));
    c.insert("rms_norm_eps".into(), json!(eps));
    c.insert("rope_theta".into(), json!(theta));
    c.insert("rope_scaling".into(), rope_scaling);
    c.insert("tie_word_embeddings".into(), json!(!has_output));
    if let Some(bos) = h.get_u64("tokenizer.ggml.bos_token_id")? {
        c.insert("bos_token_id".into(), json!(bos));
    }
    if let Some(eos) = h.get_u64("tokenizer.ggml.eos_token_id")? {
        c.insert("eos_token_id".into(), json!(eos));
    }
    LlamaConfig::from_json_str(&Json::Object(c).to_string(), &h.path)
}

/// A number; an f32 is read as its shortest decimal form (llama.cpp stores `1e-5` as an f32,
/// which is the f64 `1e-5` again, as in `config.json`, instead of `9.99999974e-6`).
fn float(h: &Header, key: &str) -> Result<Option<f64>> {
    match h.get(key) {
        Some(super::reader::Value::F32(v)) => Ok(Some(
            format!("{v:e}")
                .parse::<f64>()
                .map_err(|e| Error::Gguf { path: h.path.clone(), msg: format!("metadata `{key}` = {v}: {e}") })?,
        )),
        _ => h.get_f64(key),
    }
}

/// The `rope_scaling` object (or null) of the config, from the metadata and `rope_freqs`.
fn rope_scaling(h: &Header, rope_freqs: Option<&[f32]>, head_dim: usize, theta: f64) -> Result<Json> {
    let err = |msg: String| Error::Gguf { path: h.path.clone(), msg };
    let kind = h.get_str("llama.rope.scaling.type")?;
    let factor = match float(h, "llama.rope.scaling.factor")? {
        Some(f) => Some(f),
        None => float(h, "llama.rope.scale_linear")?,
    };
    let linear = |f: f64| json!({"type": "linear", "factor": f});
    match (kind, rope_freqs) {
        (Some("none") | None, None) => Ok(match factor.filter(|&f| f != 1.0 && kind.is_none()) {
            Some(f) => linear(f),
            None => Json::Null,
        }),
        (Some("linear"), None) => {
            factor.map(linear).ok_or_else(|| err("linear rope scaling without `llama.rope.scaling.factor`".into()))
        }
        (Some(other), None) => Err(err(format!("rope scaling type `{other}` is not supported (none, linear, llama3)"))),
        (Some("none") | None, Some(f)) => {
            let orig = h.get_f64("llama.rope.scaling.original_context_length")?.unwrap_or(8192.0);
            llama3_from_factors(f, head_dim, theta, orig).map_err(err)
        }
        (Some(other), Some(_)) => Err(err(format!(
            "both `llama.rope.scaling.type` = `{other}` and a `rope_freqs.weight` tensor; only one kind of scaling is supported"
        ))),
    }
}

/// Snaps `x` to a value with at most 4 significant digits when that is within 1e-5 relative
/// (the parameters were round numbers before llama.cpp stored their effect as f32).
fn snap(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(3 - x.abs().log10().floor() as i32);
    let r = (x * scale).round() / scale;
    if ((r - x) / x).abs() < 1e-5 { r } else { x }
}

/// Recovers Llama 3 scaling parameters from llama.cpp's per-frequency divisors.
fn llama3_from_factors(f: &[f32], head_dim: usize, theta: f64, orig: f64) -> std::result::Result<Json, String> {
    if f.len() != head_dim / 2 {
        return Err(format!("rope_freqs.weight has {} values, expected head_dim / 2 = {}", f.len(), head_dim / 2));
    }
    if f.iter().any(|&x| !x.is_finite() || x < 1.0 - 1e-6) {
        return Err("rope_freqs.weight holds values below 1 or not finite (not llama3 scaling)".into());
    }
    let fmax = f.iter().fold(1f64, |m, &x| m.max(x.into()));
    let close = |a: f64, b: f64| ((a - b) / b).abs() < 1e-5;
    if close(fmax, 1.0) {
        return Ok(Json::Null);
    }
    if f.iter().all(|&x| close(x.into(), fmax)) {
        return Ok(json!({"type": "linear", "factor": snap(fmax)}));
    }
    // x = orig / wavelength; the smooth factor s(x) = (x - low) / (high - low) is linear in x.
    let xs: Vec<f64> = (0..f.len())
        .map(|i| orig / (2.0 * std::f64::consts::PI * theta.powf((2 * i) as f64 / head_dim as f64)))
        .collect();
    let s = |x: f32| (1.0 / f64::from(x) - 1.0 / fmax) / (1.0 - 1.0 / fmax);
    let mid: Vec<usize> = (0..f.len()).filter(|&i| !close(f[i].into(), 1.0) && !close(f[i].into(), fmax)).collect();
    let x_scaled = (0..f.len()).filter(|&i| close(f[i].into(), fmax)).map(|i| xs[i]).fold(f64::NAN, f64::max);
    let x_plain = (0..f.len()).filter(|&i| close(f[i].into(), 1.0)).map(|i| xs[i]).fold(f64::NAN, f64::min);
    let (low, high) = match mid[..] {
        [a, .., b] => {
            let span = (xs[b] - xs[a]) / (s(f[b]) - s(f[a]));
            let low = xs[a] - s(f[a]) * span;
            (low, low + span)
        }
        [m] if !x_scaled.is_nan() => (x_scaled, x_scaled + (xs[m] - x_scaled) / s(f[m])),
        [] if !x_scaled.is_nan() && !x_plain.is_nan() => (x_scaled, x_plain),
        _ => return Err("rope_freqs.weight: cannot recover llama3 scaling parameters".into()),
    };
    let params = |low: f64, high: f64| RopeScaling::Llama3 {
        factor: snap(fmax),
        low_freq_factor: low,
        high_freq_factor: high,
        original_max_position_embeddings: orig,
    };
    let mismatch = |scaling: &RopeScaling| -> Option<String> {
        let base = crate::op::rope::inv_frequencies(head_dim, theta, None);
        let scaled = crate::op::rope::inv_frequencies(head_dim, theta, Some(scaling));
        let (i, got, want) = base
            .iter()
            .zip(&scaled)
            .zip(f)
            .enumerate()
            .map(|(i, ((b, sc), &want))| (i, b / sc, f64::from(want)))
            .find(|(_, got, want)| ((got - want) / want).abs() > 1e-5)?;
        Some(format!("rope_freqs.weight[{i}] = {want} is not reproduced by llama3 scaling {scaling:?} (got {got})"))
    };
    // Llama 3.1's own low/high factors (1, 4) when they reproduce the divisors: with few
    // frequencies in the smooth band the fit below is not unique.
    let scaling = match params(1.0, 4.0) {
        s if mismatch(&s).is_none() => s,
        _ => params(snap(low), snap(high)),
    };
    if let Some(msg) = mismatch(&scaling) {
        return Err(msg);
    }
    let RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, .. } = scaling else {
        return Err("internal: llama3 scaling expected".into());
    };
    Ok(json!({
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low_freq_factor,
        "high_freq_factor": high_freq_factor,
        "original_max_position_embeddings": orig,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Divisors as llama.cpp's converter computes them (f32).
    fn factors(head_dim: usize, theta: f64, factor: f64, low: f64, high: f64, orig: f64) -> Vec<f32> {
        (0..head_dim / 2)
            .map(|i| {
                let wavelen = 2.0 * std::f64::consts::PI * theta.powf((2 * i) as f64 / head_dim as f64);
                if wavelen < orig / high {
                    1.0
                } else if wavelen > orig / low {
                    factor as f32
                } else {
                    let smooth = (orig / wavelen - low) / (high - low);
                    (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
                }
            })
            .collect()
    }

    #[test]
    fn llama3_parameters_are_recovered() {
        let llama31 = factors(128, 500000.0, 8.0, 1.0, 4.0, 8192.0);
        let want = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192.0});
        assert_eq!(llama3_from_factors(&llama31, 128, 500000.0, 8192.0).unwrap(), want);
        // Other parameters go through the fit (and snap back to the round numbers).
        let other = factors(128, 500000.0, 16.0, 2.0, 8.0, 8192.0);
        let got = llama3_from_factors(&other, 128, 500000.0, 8192.0).unwrap();
        assert_eq!((got["factor"].as_f64(), got["low_freq_factor"].as_f64()), (Some(16.0), Some(2.0)));
        assert_eq!(got["high_freq_factor"].as_f64(), Some(8.0));
        assert_eq!(llama3_from_factors(&[1.0; 64], 128, 500000.0, 8192.0).unwrap(), Json::Null);
        assert_eq!(llama3_from_factors(&[4.0; 64], 128, 500000.0, 8192.0).unwrap()["type"], "linear");
        let mut bad = llama31.clone();
        bad[40] *= 1.5;
        assert!(llama3_from_factors(&bad, 128, 500000.0, 8192.0).unwrap_err().contains("rope_freqs.weight["));
        assert!(llama3_from_factors(&llama31[..10], 128, 500000.0, 8192.0).is_err());
    }

    #[test]
    fn snap_keeps_odd_numbers() {
        assert_eq!(snap(3.9999999), 4.0);
        assert_eq!(snap(1.2345678), 1.2345678);
        assert_eq!(snap(0.0), 0.0);
    }
}
