//! `config.json` of a Hugging Face Llama checkpoint, parsed once and validated.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::base::{Error, Result};

/// RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Llama 3.1+ three-band scaling of the inverse frequencies.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
    /// Positions divided by `factor`.
    Linear { factor: f64 },
}

/// The model hyper-parameters the engine uses.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    /// Every end-of-sequence id (`eos_token_id` may be an int or a list).
    pub eos_token_ids: Vec<u32>,
}

/// Keys of Llama configs that we read or that do not change the math.
const KNOWN_KEYS: &[&str] = &[
    "architectures",
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "hidden_act",
    "attention_bias",
    "mlp_bias",
    "attention_dropout",
    "initializer_range",
    "pretraining_tp",
    "use_cache",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "_name_or_path",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "is_encoder_decoder",
    "tokenizer_class",
];

/// Upper bound on any size in the config, so a corrupt file cannot ask for absurd allocations.
const MAX_DIM: usize = 1 << 22;

impl LlamaConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses the JSON text of a config; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let err = |msg: String| Error::Config { path: path.to_path_buf(), msg };
        let value: Value = serde_json::from_str(text).map_err(|e| err(format!("not valid JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| err("the top level is not a JSON object".into()))?;
        Parser { obj, path: path.to_path_buf() }.parse()
    }

    /// Query heads per KV head (GQA group size).
    pub fn gqa_group(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
}

struct Parser<'a> {
    obj: &'a Map<String, Value>,
    path: PathBuf,
}

impl Parser<'_> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Config { path: self.path.clone(), msg: msg.into() }
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.obj.get(key).ok_or_else(|| self.err(format!("missing key `{key}`")))?;
        let n = v.as_u64().ok_or_else(|| self.err(format!("`{key}` must be a positive integer, got {v}")))?;
        if n == 0 || n as usize > MAX_DIM {
            return Err(self.err(format!("`{key}` = {n} is out of range 1..={MAX_DIM}")));
        }
        Ok(n as usize)
    }

    fn f64_in(&self, obj: &Map<String, Value>, key: &str, default: Option<f64>) -> Result<f64> {
        match obj.get(key) {
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| self.err(format!("`{key}` must be a number, got {v}"))),
            None => default.ok_or_else(|| self.err(format!("missing key `{key}`"))),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.err(format!("`{key}` must be true or false, got {v}"))),
        }
    }

    fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        let one = |v: &Value| v.as_u64().and_then(|x| u32::try_from(x).ok());
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::Array(a)) => {
                a.iter().map(|v| one(v).ok_or_else(|| self.err(format!("`{key}` has a non-integer id {v}")))).collect()
            }
            Some(v) => {
                one(v).map(|x| vec![x]).ok_or_else(|| self.err(format!("`{key}` must be an id or a list, got {v}")))
            }
        }
    }

    fn check_keys(&self) -> Result<()> {
        if let Some(k) = self.obj.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
            return Err(self.err(format!("unknown key `{k}` (this engine does not know what it changes)")));
        }
        if let Some(mt) = self.obj.get("model_type").and_then(Value::as_str).filter(|m| *m != "llama") {
            return Err(self.err(format!("model_type `{mt}` is not supported (expected `llama`)")));
        }
        if let Some(act) = self.obj.get("hidden_act").and_then(Value::as_str).filter(|a| *a != "silu") {
            return Err(self.err(format!("hidden_act `{act}` is not supported (expected `silu`)")));
        }
        for key in ["attention_bias", "mlp_bias"] {
            if self.bool_or(key, false)? {
                return Err(self.err(format!("`{key}: true` is not supported (Llama 3 has no biases)")));
            }
        }
        Ok(())
    }

    /// `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5, which also holds rope_theta).
    fn rope(&self) -> Result<(f64, Option<RopeScaling>)> {
        let params = match (self.obj.get("rope_scaling"), self.obj.get("rope_parameters")) {
            (Some(Value::Object(m)), _) | (_, Some(Value::Object(m))) => Some(m),
            (None | Some(Value::Null), None | Some(Value::Null)) => None,
            (Some(v), _) | (_, Some(v)) => return Err(self.err(format!("rope scaling must be an object, got {v}"))),
        };
        let theta_src = params.filter(|p| p.contains_key("rope_theta")).unwrap_or(self.obj);
        let theta = self.f64_in(theta_src, "rope_theta", Some(10000.0))?;
        if theta <= 0.0 {
            return Err(self.err(format!("`rope_theta` must be positive, got {theta}")));
        }
        let Some(p) = params else { return Ok((theta, None)) };
        let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default");
        let scaling = match kind {
            "default" => None,
            "linear" => Some(RopeScaling::Linear { factor: self.f64_in(p, "factor", None)? }),
            "llama3" => {
                let s = RopeScaling::Llama3 {
                    factor: self.f64_in(p, "factor", None)?,
                    low_freq_factor: self.f64_in(p, "low_freq_factor", None)?,
                    high_freq_factor: self.f64_in(p, "high_freq_factor", None)?,
                    original_max_position_embeddings: self.f64_in(p, "original_max_position_embeddings", None)?,
                };
                if let RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, .. } = s
                    && (factor <= 0.0 || high_freq_factor <= low_freq_factor)
                {
                    return Err(self.err("llama3 rope scaling needs factor > 0 and high_freq_factor > low_freq_factor"));
                }
                Some(s)
            }
            other => return Err(self.err(format!("rope scaling type `{other}` is not supported"))),
        };
        Ok((theta, scaling))
    }

    fn parse(&self) -> Result<LlamaConfig> {
        self.check_keys()?;
        let hidden_size = self.usize("hidden_size")?;
        let num_attention_heads = self.usize("num_attention_heads")?;
        let num_key_value_heads = match self.obj.get("num_key_value_heads") {
            Some(_) => self.usize("num_key_value_heads")?,
            None => num_attention_heads,
        };
        let head_dim = match self.obj.get("head_dim") {
            Some(Value::Null) | None => hidden_size / num_attention_heads,
            Some(_) => self.usize("head_dim")?,
        };
        if !num_attention_heads.is_multiple_of(num_key_value_heads) {
            return Err(self.err(format!(
                "num_attention_heads ({num_attention_heads}) is not a multiple of num_key_value_heads ({num_key_value_heads})"
            )));
        }
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(self.err(format!("head_dim must be even and positive, got {head_dim}")));
        }
        let rms_norm_eps = self.f64_in(self.obj, "rms_norm_eps", Some(1e-6))?;
        if rms_norm_eps <= 0.0 {
            return Err(self.err(format!("`rms_norm_eps` must be positive, got {rms_norm_eps}")));
        }
        let (rope_theta, rope_scaling) = self.rope()?;
        let bos = self.token_ids("bos_token_id")?;
        Ok(LlamaConfig {
            hidden_size,
            intermediate_size: self.usize("intermediate_size")?,
            num_hidden_layers: self.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: self.usize("vocab_size")?,
            max_position_embeddings: self.usize("max_position_embeddings")?,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: self.bool_or("tie_word_embeddings", false)?,
            bos_token_id: bos.first().copied(),
            eos_token_ids: self.token_ids("eos_token_id")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<LlamaConfig> {
        LlamaConfig::from_json_str(s, Path::new("config.json"))
    }

    const TINY: &str = include_str!("../../../../tests/fixtures/tiny-llama3/config.json");

    #[test]
    fn tiny_fixture() {
        let c = parse(TINY).unwrap();
        assert_eq!((c.hidden_size, c.head_dim, c.num_key_value_heads, c.gqa_group()), (64, 16, 2, 2));
        assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
        assert!(c.tie_word_embeddings);
        assert!(matches!(c.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0));
    }

    #[test]
    fn rejects_bad_configs() {
        let cases = [
            ("{", "not valid JSON"),
            ("[1]", "not a JSON object"),
            (r#"{"hidden_size": 64}"#, "missing key `num_attention_heads`"),
            (&TINY.replace("\"hidden_size\": 64", "\"hidden_size\": -1"), "`hidden_size` must be a positive integer"),
            (
                &TINY.replace("\"use_cache\": true", "\"use_cache\": true, \"frobnicate\": 1"),
                "unknown key `frobnicate`",
            ),
            (&TINY.replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3"), "not a multiple"),
            (&TINY.replace("\"llama3\"", "\"yarn\""), "rope scaling type `yarn`"),
            (&TINY.replace("\"attention_bias\": false", "\"attention_bias\": true"), "attention_bias"),
            (&TINY.replace("\"hidden_size\": 64", "\"hidden_size\": 100000000000"), "out of range"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("config.json"), "{e:?} should mention {want:?}");
        }
    }

    #[test]
    fn transformers5_rope_parameters_and_int_eos() {
        let text = TINY
            .replace("\"rope_scaling\"", "\"rope_parameters\"")
            .replace("\"eos_token_id\": [\n    128001,\n    128008,\n    128009\n  ]", "\"eos_token_id\": 128009");
        let c = parse(&text).unwrap();
        assert_eq!(c.eos_token_ids, vec![128009]);
        assert!(c.rope_scaling.is_some());
    }
}
