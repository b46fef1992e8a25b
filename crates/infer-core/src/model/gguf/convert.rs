//! Hugging Face safetensors Llama directory → GGUF v3 file, laid out as llama.cpp's
//! `convert_hf_to_gguf.py` (+ `llama-quantize`) would: `general.*` and `llama.*` hyper-parameters,
//! the tokenizer and chat template ([`super::hf_vocab`]), Q/K rows permuted for llama.cpp's RoPE
//! (our loader un-permutes them), norms and `rope_freqs.weight` in F32, every matrix (the
//! embeddings included) in the requested type.
//!
//! A matrix whose rows are not whole blocks of the requested type falls back to Q8_0 when its
//! rows are whole 32-element blocks, else to BF16 (the usual source type, stored exactly) and the
//! report says so. Tensors are converted one at a time straight into the file: memory stays
//! O(largest tensor) (its f32 copy and its encoded bytes).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use half::{bf16, f16};

use super::names::{RopeRows, hf_to_gguf, permute_rows, rope_rows};
use super::reader::Value;
use super::writer::{GgufWriter, StreamedTensor};
use crate::base::{Error, Result};
use crate::model::config::{LlamaConfig, RopeScaling};
use crate::model::safetensors::WeightStore;
use crate::op::rope::inv_frequencies;
use crate::tensor::DType;
use crate::tensor::quantize::quantize_to_vec;

/// What to convert to.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Type of the 2-D weights (norms are always F32).
    pub dtype: DType,
    /// `tokenizer.ggml.pre`; `None` recognizes it from `tokenizer.json`.
    pub pre: Option<String>,
    /// Print a line per tensor on stderr (only when stderr is a terminal).
    pub progress: bool,
}

/// One tensor as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertedTensor {
    /// GGUF name.
    pub name: String,
    /// Row-major shape.
    pub shape: Vec<usize>,
    pub dtype: DType,
    /// The requested type, when this tensor could not use it (rows not whole blocks).
    pub fallback_from: Option<DType>,
}

/// What [`convert_hf_to_gguf`] wrote.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    pub path: PathBuf,
    pub tensors: Vec<ConvertedTensor>,
    /// `tokenizer.ggml.pre` as written.
    pub pre: String,
    pub file_bytes: u64,
}

impl ConvertReport {
    /// The tensors stored in another type than requested.
    pub fn fallbacks(&self) -> impl Iterator<Item = &ConvertedTensor> {
        self.tensors.iter().filter(|t| t.fallback_from.is_some())
    }
}

/// The type names `--type` accepts, in [`parse_type`]'s spelling.
pub const TYPE_NAMES: [&str; 8] = ["f32", "bf16", "f16", "q8_0", "q4_0", "q4_1", "q4_k", "q6_k"];

/// A dtype from its name (`q4_k`, `Q4_K`, `bf16`, …); the error lists the valid names.
pub fn parse_type(name: &str) -> Result<DType> {
    let lower = name.to_ascii_lowercase();
    DType::ALL.into_iter().find(|d| d.to_string() == lower).ok_or_else(|| {
        Error::InvalidArgument(format!("unsupported type `{name}` (valid types: {})", TYPE_NAMES.join(", ")))
    })
}

/// llama.cpp's `general.file_type` (`llama_ftype`) for a file of mostly `dtype`.
pub fn file_type(dtype: DType) -> u32 {
    match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q4_1 => 3,
        DType::Q8_0 => 7,
        DType::Q4_K | DType::Q4_Kx8 => 14, // MOSTLY_Q4_K_S: every matrix Q4_K
        DType::Q6_K => 18,
        DType::BF16 => 32,
    }
}

/// The type a matrix with rows of `row_len` elements is stored in, and whether that is a fallback.
fn matrix_type(want: DType, row_len: usize) -> (DType, Option<DType>) {
    if row_len.is_multiple_of(want.block_size()) {
        (want, None)
    } else if row_len.is_multiple_of(DType::Q8_0.block_size()) {
        (DType::Q8_0, Some(want))
    } else {
        (DType::BF16, Some(want))
    }
}

/// One tensor to write: where its data comes from.
struct Plan {
    out: StreamedTensor,
    /// Hugging Face name in the store; `None` for `rope_freqs.weight`.
    hf_name: Option<String>,
    /// Heads whose rows llama.cpp's RoPE layout interleaves (Q and K projections).
    permute_heads: Option<usize>,
    fallback_from: Option<DType>,
}

/// llama.cpp's `rope_freqs.weight` for Llama 3 scaling: the divisor of each inverse frequency
/// (the unscaled inverse frequency over the scaled one, from [`inv_frequencies`]).
fn llama3_rope_freqs(c: &LlamaConfig) -> Option<(Vec<f32>, f64)> {
    let scaling = c.rope_scaling.as_ref();
    let Some(&RopeScaling::Llama3 { original_max_position_embeddings: orig, .. }) = scaling else {
        return None;
    };
    let base = inv_frequencies(c.head_dim, c.rope_theta, None);
    let scaled = inv_frequencies(c.head_dim, c.rope_theta, scaling);
    Some((base.iter().zip(&scaled).map(|(b, s)| (b / s) as f32).collect(), orig))
}

/// `general.*` and `llama.*` keys.
fn write_hparams(w: &mut GgufWriter, c: &LlamaConfig, name: &str, dtype: DType) {
    let u = |x: usize| Value::U32(x as u32);
    w.set_str("general.architecture", "llama")
        .set_str("general.name", name)
        .set("general.file_type", Value::U32(file_type(dtype)))
        .set("general.quantization_version", Value::U32(2))
        .set("llama.block_count", u(c.num_hidden_layers))
        .set("llama.context_length", u(c.max_position_embeddings))
        .set("llama.embedding_length", u(c.hidden_size))
        .set("llama.feed_forward_length", u(c.intermediate_size))
        .set("llama.attention.head_count", u(c.num_attention_heads))
        .set("llama.attention.head_count_kv", u(c.num_key_value_heads))
        .set("llama.attention.key_length", u(c.head_dim))
        .set("llama.attention.value_length", u(c.head_dim))
        .set("llama.rope.dimension_count", u(c.head_dim))
        .set("llama.vocab_size", u(c.vocab_size))
        .set("llama.rope.freq_base", Value::F32(c.rope_theta as f32))
        .set("llama.attention.layer_norm_rms_epsilon", Value::F32(c.rms_norm_eps as f32));
    match c.rope_scaling {
        Some(RopeScaling::Linear { factor }) => {
            w.set_str("llama.rope.scaling.type", "linear").set("llama.rope.scaling.factor", Value::F32(factor as f32));
        }
        Some(RopeScaling::Llama3 { original_max_position_embeddings: orig, .. }) => {
            w.set("llama.rope.scaling.original_context_length", Value::U32(orig as u32));
        }
        None => {}
    }
}

/// The tensors of the file, in llama.cpp's order, checked against the store's shapes.
fn plan(store: &WeightStore, c: &LlamaConfig, want: DType) -> Result<Vec<Plan>> {
    let (h, i, q, kv, v) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim(), c.vocab_size);
    let mut hf: Vec<(String, Vec<usize>)> = vec![("model.embed_tokens.weight".into(), vec![v, h])];
    for l in 0..c.num_hidden_layers {
        let p = |s: &str| format!("model.layers.{l}.{s}.weight");
        hf.extend([
            (p("input_layernorm"), vec![h]),
            (p("self_attn.q_proj"), vec![q, h]),
            (p("self_attn.k_proj"), vec![kv, h]),
            (p("self_attn.v_proj"), vec![kv, h]),
            (p("self_attn.o_proj"), vec![h, q]),
            (p("post_attention_layernorm"), vec![h]),
            (p("mlp.gate_proj"), vec![i, h]),
            (p("mlp.up_proj"), vec![i, h]),
            (p("mlp.down_proj"), vec![h, i]),
        ]);
    }
    hf.push(("model.norm.weight".into(), vec![h]));
    if !c.tie_word_embeddings {
        hf.push(("lm_head.weight".into(), vec![v, h]));
    }
    let mut plans = Vec::with_capacity(hf.len() + 1);
    if let Some((freqs, _)) = llama3_rope_freqs(c) {
        let out = StreamedTensor { name: "rope_freqs.weight".into(), dtype: DType::F32, shape: vec![freqs.len()] };
        plans.push(Plan { out, hf_name: None, permute_heads: None, fallback_from: None });
    }
    for (name, shape) in hf {
        store.get(&name, &shape)?; // present, right shape, float dtype (zero copy)
        let gguf = hf_to_gguf(&name).ok_or_else(|| Error::InvalidArgument(format!("no GGUF name for `{name}`")))?;
        let (dtype, fallback_from) = match shape[..] {
            [_, row] => matrix_type(want, row),
            _ => (DType::F32, None),
        };
        let permute_heads = match rope_rows(&name) {
            Some(RopeRows::Query) => Some(c.num_attention_heads),
            Some(RopeRows::Key) => Some(c.num_key_value_heads),
            None => None,
        };
        let out = StreamedTensor { name: gguf, dtype, shape };
        plans.push(Plan { out, hf_name: Some(name), permute_heads, fallback_from });
    }
    Ok(plans)
}

/// f32 values in `dtype`'s bytes.
fn encode(dtype: DType, x: &[f32]) -> Result<Vec<u8>> {
    Ok(match dtype {
        DType::F32 => bytemuck::cast_slice(x).to_vec(),
        DType::BF16 => x.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
        DType::F16 => x.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
        q => quantize_to_vec(q, x)?,
    })
}

/// The bytes of one planned tensor.
fn tensor_bytes(store: &WeightStore, c: &LlamaConfig, p: &Plan) -> Result<Vec<u8>> {
    let Some(hf_name) = &p.hf_name else {
        let freqs = llama3_rope_freqs(c).map(|(f, _)| f).unwrap_or_default();
        return encode(DType::F32, &freqs);
    };
    let x = store.get(hf_name, &p.out.shape)?.to_f32_vec()?;
    let bytes = encode(p.out.dtype, &x)?;
    drop(x);
    match p.permute_heads {
        // Whole rows move, so permuting the encoded rows equals encoding the permuted rows.
        Some(heads) => permute_rows(&bytes, p.out.shape[0], heads, false),
        None => Ok(bytes),
    }
}

/// Converts the Hugging Face Llama model in `dir` (config.json, safetensors, tokenizer.json) into
/// the GGUF file `out`. Errors: a missing directory, an unloadable config or checkpoint, a
/// tokenizer that is not byte-level BPE, an unwritable `out` (checked before any tensor is read).
pub fn convert_hf_to_gguf(dir: &Path, out: &Path, opts: &ConvertOptions) -> Result<ConvertReport> {
    if !dir.is_dir() {
        return Err(Error::ModelNotFound(dir.to_path_buf()));
    }
    let config = LlamaConfig::from_file(&dir.join("config.json"))?;
    let store = WeightStore::open(dir)?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut w = GgufWriter::new();
    write_hparams(&mut w, &config, &name, opts.dtype);
    let pre = super::hf_vocab::write_tokenizer(&mut w, dir, &config, opts.pre.as_deref())?;
    let plans = plan(&store, &config, opts.dtype)?;
    let specs: Vec<StreamedTensor> = plans.iter().map(|p| p.out.clone()).collect();
    let show = opts.progress && std::io::stderr().is_terminal();
    let n = plans.len();
    let file_bytes = w.write_streamed(out, &specs, |k| {
        let p = &plans[k];
        if show {
            eprintln!("[{:>3}/{n}] {:<28} {:?} {}", k + 1, p.out.name, p.out.shape, p.out.dtype);
        }
        tensor_bytes(&store, &config, p)
    })?;
    let tensors = plans
        .into_iter()
        .map(|p| ConvertedTensor {
            name: p.out.name,
            shape: p.out.shape,
            dtype: p.out.dtype,
            fallback_from: p.fallback_from,
        })
        .collect();
    Ok(ConvertReport { path: out.to_path_buf(), tensors, pre, file_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_and_fallbacks() {
        for (name, d) in TYPE_NAMES.iter().zip(DType::ALL) {
            assert_eq!(parse_type(name).unwrap(), d);
        }
        assert_eq!(parse_type("Q4_K").unwrap(), DType::Q4_K);
        let e = parse_type("q5_k").unwrap_err().to_string();
        assert!(e.contains("`q5_k`") && e.contains("q8_0, q4_0"), "{e}");
        assert_eq!(matrix_type(DType::Q4_K, 512), (DType::Q4_K, None));
        assert_eq!(matrix_type(DType::Q4_K, 576), (DType::Q8_0, Some(DType::Q4_K)));
        assert_eq!(matrix_type(DType::Q4_0, 48), (DType::BF16, Some(DType::Q4_0)));
        assert_eq!(matrix_type(DType::F16, 7), (DType::F16, None));
    }
}
