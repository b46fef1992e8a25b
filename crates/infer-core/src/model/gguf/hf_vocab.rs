//! GGUF tokenizer metadata from a Hugging Face model directory (`tokenizer.json`,
//! `tokenizer_config.json`, chat template), as llama.cpp's `convert_hf_to_gguf.py` writes it for
//! byte-level BPE (`gpt2`) vocabularies.
//!
//! Token types follow llama.cpp: 1 = normal, 3 = control (special added tokens), 4 =
//! user-defined (other added tokens), 5 = unused (ids the tokenizer does not fill, named
//! `[PAD{id}]`). The pre-tokenizer name (`tokenizer.ggml.pre`) is recognized from the structure of
//! `tokenizer.json`'s `pre_tokenizer` (llama.cpp hashes a test string's tokenization instead), or
//! given by the caller.

use std::path::Path;

use serde_json::Value as Json;

use super::reader::{Value, ValueType};
use super::tokenizer::{LLAMA3_REGEX, SUPPORTED_PRE};
use super::writer::GgufWriter;
use crate::base::{Error, Result};
use crate::model::chat::ChatTemplate;
use crate::model::config::LlamaConfig;

const TOKEN_TYPE_NORMAL: i32 = 1;
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;
const TOKEN_TYPE_UNUSED: i32 = 5;

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Tokenizer(format!("{}: not valid JSON: {e}", path.display())))
}

/// The `tokenizer.ggml.pre` name of a `tokenizer.json` pre-tokenizer, if it is one we know.
pub fn detect_pre(pre_tokenizer: &Json) -> Option<&'static str> {
    let ty = |v: &Json| v.get("type").and_then(Json::as_str).unwrap_or_default().to_string();
    let byte_level_regex = |v: &Json| ty(v) == "ByteLevel" && v.get("use_regex").and_then(Json::as_bool) != Some(false);
    if byte_level_regex(pre_tokenizer) {
        return Some("gpt2");
    }
    let seq =
        pre_tokenizer.get("pretokenizers").and_then(Json::as_array).filter(|_| ty(pre_tokenizer) == "Sequence")?;
    match &seq[..] {
        [split, bl] if ty(split) == "Split" && ty(bl) == "ByteLevel" => {
            let re = split.pointer("/pattern/Regex").and_then(Json::as_str)?;
            (re == LLAMA3_REGEX).then_some("llama-bpe")
        }
        [digits, bl] if ty(digits) == "Digits" && byte_level_regex(bl) => {
            (digits.get("individual_digits").and_then(Json::as_bool) == Some(true)).then_some("smollm")
        }
        _ => None,
    }
}

/// A special token's text in `tokenizer_config.json` (`"<s>"` or `{"content": "<s>", ...}`).
fn token_text(v: Option<&Json>) -> Option<&str> {
    match v? {
        Json::String(s) => Some(s),
        Json::Object(o) => o.get("content").and_then(Json::as_str),
        _ => None,
    }
}

/// Writes the `tokenizer.*` keys (and `tokenizer.chat_template`) for the model in `dir`.
/// `pre` overrides the detected pre-tokenizer. Returns the pre-tokenizer name written.
pub fn write_tokenizer(w: &mut GgufWriter, dir: &Path, config: &LlamaConfig, pre: Option<&str>) -> Result<String> {
    let tok_path = dir.join("tokenizer.json");
    let tok = read_json(&tok_path)?;
    let err = |msg: String| Error::Tokenizer(format!("{}: {msg}", tok_path.display()));
    let model = tok.get("model").ok_or_else(|| err("no `model`".into()))?;
    let kind = model.get("type").and_then(Json::as_str).unwrap_or("BPE");
    if kind != "BPE" || model.get("vocab").and_then(Json::as_object).is_none() {
        return Err(err(format!("tokenizer model `{kind}` is not supported (only byte-level BPE, GGUF `gpt2`)")));
    }
    let pre = match pre {
        Some(p) if SUPPORTED_PRE.contains(&p) => p.to_string(),
        Some(p) => return Err(err(format!("--pre `{p}` is not supported (supported: {})", SUPPORTED_PRE.join(", ")))),
        None => detect_pre(tok.get("pre_tokenizer").unwrap_or(&Json::Null))
            .ok_or_else(|| {
                err(format!(
                    "cannot recognize the pre-tokenizer; name it with --pre (one of: {})",
                    SUPPORTED_PRE.join(", ")
                ))
            })?
            .to_string(),
    };

    // Vocabulary: ids 0..vocab_size, added tokens on top, holes as unused `[PAD{id}]`.
    let n_vocab = config.vocab_size;
    let mut tokens: Vec<Option<String>> = vec![None; n_vocab];
    let mut types = vec![TOKEN_TYPE_NORMAL; n_vocab];
    let mut place = |id: Option<u64>, text: &str, ty: i32| -> Result<()> {
        let id = id
            .map(|i| i as usize)
            .filter(|&i| i < n_vocab)
            .ok_or_else(|| err(format!("token {text:?} has id {id:?}, outside the model's vocab_size {n_vocab}")))?;
        tokens[id] = Some(text.to_string());
        types[id] = ty;
        Ok(())
    };
    for (text, id) in model.get("vocab").and_then(Json::as_object).into_iter().flatten() {
        place(id.as_u64(), text, TOKEN_TYPE_NORMAL)?;
    }
    for a in tok.get("added_tokens").and_then(Json::as_array).into_iter().flatten() {
        let text =
            a.get("content").and_then(Json::as_str).ok_or_else(|| err("added token without `content`".into()))?;
        let special = a.get("special").and_then(Json::as_bool).unwrap_or(false);
        place(
            a.get("id").and_then(Json::as_u64),
            text,
            if special { TOKEN_TYPE_CONTROL } else { TOKEN_TYPE_USER_DEFINED },
        )?;
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = TOKEN_TYPE_UNUSED;
                format!("[PAD{i}]")
            })
        })
        .collect();
    let id_of = |text: &str| tokens.iter().position(|t| t == text).map(|i| i as u32);

    // Merges: "a b" strings (older files) or ["a", "b"] pairs (newer ones).
    let merges = model
        .get("merges")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(p) if p.len() == 2 && p.iter().all(Json::is_string) => {
                Ok(format!("{} {}", p[0].as_str().unwrap_or_default(), p[1].as_str().unwrap_or_default()))
            }
            other => Err(err(format!("merge {other} is neither \"a b\" nor [\"a\", \"b\"]"))),
        })
        .collect::<Result<Vec<_>>>()?;

    // Special ids and flags: tokenizer_config.json first (as llama.cpp's SpecialVocab), then config.json.
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.is_file() { read_json(&tc_path)? } else { Json::Null };
    let bos = token_text(tc.get("bos_token")).and_then(id_of).or(config.bos_token_id);
    let eos = token_text(tc.get("eos_token")).and_then(id_of).or(config.eos_token_ids.first().copied());
    let post = tok.get("post_processor").map(Json::to_string).unwrap_or_default();
    let bos_text = bos.and_then(|b| tokens.get(b as usize));
    let add_bos = tc
        .get("add_bos_token")
        .and_then(Json::as_bool)
        .unwrap_or_else(|| bos_text.is_some_and(|t| post.contains(&format!("\"{t}\""))));
    let add_eos = tc.get("add_eos_token").and_then(Json::as_bool).unwrap_or(false);

    w.set_str("tokenizer.ggml.model", "gpt2")
        .set_str("tokenizer.ggml.pre", &pre)
        .set_str_array("tokenizer.ggml.tokens", &tokens)
        .set("tokenizer.ggml.token_type", Value::Array(ValueType::I32, types.into_iter().map(Value::I32).collect()))
        .set_str_array("tokenizer.ggml.merges", &merges);
    if let Some(b) = bos {
        w.set("tokenizer.ggml.bos_token_id", Value::U32(b));
    }
    if let Some(e) = eos {
        w.set("tokenizer.ggml.eos_token_id", Value::U32(e));
    }
    w.set("tokenizer.ggml.add_bos_token", Value::Bool(add_bos))
        .set("tokenizer.ggml.add_eos_token", Value::Bool(add_eos));
    if let Some(t) = ChatTemplate::from_model_dir(dir)? {
        w.set_str("tokenizer.chat_template", t.source());
    }
    Ok(pre)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pre_tokenizers_are_recognized() {
        let bl = |re: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "use_regex": re});
        let llama = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated"}, bl(false)]});
        assert_eq!(detect_pre(&llama), Some("llama-bpe"));
        let smol =
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, bl(true)]});
        assert_eq!(detect_pre(&smol), Some("smollm"));
        assert_eq!(detect_pre(&bl(true)), Some("gpt2"));
        let other = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated"}, bl(false)]});
        assert_eq!(detect_pre(&other), None);
        assert_eq!(detect_pre(&Json::Null), None);
    }
}
