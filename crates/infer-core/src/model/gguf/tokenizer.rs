//! The tokenizer and chat template stored in GGUF metadata.
//!
//! Supported: `tokenizer.ggml.model = "gpt2"` (byte-level BPE, as Llama 3, SmolLM and GPT-2 use).
//! The equivalent Hugging Face `tokenizer.json` is assembled from `tokenizer.ggml.tokens`,
//! `.merges`, `.token_type` (3 = control → special added token, 4 = user-defined → non-special
//! added token), `.bos_token_id`, `.eos_token_id`, `.add_bos_token`/`.add_eos_token` and the
//! pre-tokenizer named by `tokenizer.ggml.pre` (regexes as in llama.cpp's `llama-vocab.cpp`,
//! written the way the models' own `tokenizer.json` write them). Other tokenizer models
//! (`llama` SentencePiece, `bert`, …) are an error naming the model.

use serde_json::{Map, Value as Json, json};

use super::reader::Header;
use crate::base::{Error, Result};
use crate::model::chat::ChatTemplate;
use crate::model::tokenizer::HfTokenizer;

/// Llama 3's split regex (`tokenizer.ggml.pre` = `llama-bpe`).
pub(crate) const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Pre-tokenizer families by `tokenizer.ggml.pre` value.
enum Pre {
    /// `llama-bpe`: Llama 3's regex split, then byte-level mapping; merges ignored for whole words.
    Llama3,
    /// `smollm`, `starcoder`, `refact`, `codeshell`: every digit alone, then GPT-2's regex.
    DigitsThenGpt2,
    /// `default`, `gpt2`, `gpt-2`, `mpt`, `olmo`: GPT-2's regex.
    Gpt2,
}

/// The `tokenizer.ggml.pre` values this reader understands.
pub const SUPPORTED_PRE: &[&str] = &[
    "llama-bpe",
    "llama3",
    "llama-v3",
    "smollm",
    "starcoder",
    "refact",
    "codeshell",
    "default",
    "gpt2",
    "gpt-2",
    "mpt",
    "olmo",
];

fn pre_tokenizer(pre: &str) -> Option<Pre> {
    Some(match pre {
        "llama-bpe" | "llama3" | "llama-v3" => Pre::Llama3,
        "smollm" | "starcoder" | "refact" | "codeshell" => Pre::DigitsThenGpt2,
        "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" => Pre::Gpt2,
        _ => return None,
    })
}

/// The `tokenizer.json` text equivalent to the GGUF tokenizer metadata.
pub fn tokenizer_json(h: &Header) -> Result<String> {
    let err = |msg: String| Error::Gguf { path: h.path.clone(), msg };
    let model = h.get_str("tokenizer.ggml.model")?.ok_or_else(|| err("no `tokenizer.ggml.model` key".into()))?;
    if model != "gpt2" {
        return Err(err(format!("tokenizer model `{model}` is not supported (only `gpt2`, byte-level BPE, is)")));
    }
    let pre_name = h.get_str("tokenizer.ggml.pre")?.unwrap_or("default");
    let pre = pre_tokenizer(pre_name).ok_or_else(|| {
        err(format!("pre-tokenizer `{pre_name}` is not supported (supported: {})", SUPPORTED_PRE.join(", ")))
    })?;
    let tokens = h.get_str_array("tokenizer.ggml.tokens")?.ok_or_else(|| err("no `tokenizer.ggml.tokens`".into()))?;
    let merges = h.get_str_array("tokenizer.ggml.merges")?.unwrap_or_default();
    let types = h.get_i64_array("tokenizer.ggml.token_type")?.unwrap_or_default();
    if !types.is_empty() && types.len() != tokens.len() {
        return Err(err(format!(
            "`tokenizer.ggml.token_type` has {} entries for {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    let id = |key: &str| -> Result<Option<usize>> {
        match h.get_u64(key)? {
            Some(i) if (i as usize) < tokens.len() => Ok(Some(i as usize)),
            Some(i) => Err(err(format!("`{key}` = {i} is not a token id (vocabulary of {})", tokens.len()))),
            None => Ok(None),
        }
    };
    let (bos, eos) = (id("tokenizer.ggml.bos_token_id")?, id("tokenizer.ggml.eos_token_id")?);

    let mut vocab = Map::new();
    for (i, t) in tokens.iter().enumerate() {
        // A duplicated token string keeps its first id, as llama.cpp's token-to-id map does.
        vocab.entry(t.to_string()).or_insert(json!(i));
    }
    let added: Vec<Json> = types
        .iter()
        .enumerate()
        .filter(|(_, t)| matches!(**t, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
        .map(|(i, &t)| {
            json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": t == TOKEN_TYPE_CONTROL})
        })
        .collect();

    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    let pre_tokenizer = match pre {
        Pre::Llama3 => json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]}),
        Pre::DigitsThenGpt2 => {
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]})
        }
        Pre::Gpt2 => byte_level(true),
    };
    let is_llama3 = matches!(pre, Pre::Llama3);
    let add_bos = h.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(is_llama3);
    let add_eos = h.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let post_processor = post_processor(&tokens, bos.filter(|_| add_bos), eos.filter(|_| add_eos));

    let json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": is_llama3,
            "vocab": vocab,
            "merges": merges,
        },
    });
    Ok(json.to_string())
}

/// A `TemplateProcessing` that adds BOS and/or EOS around the text (null when neither).
fn post_processor(tokens: &[&str], bos: Option<usize>, eos: Option<usize>) -> Json {
    if bos.is_none() && eos.is_none() {
        return Json::Null;
    }
    let special = |i: usize, type_id: u32| json!({"SpecialToken": {"id": tokens[i], "type_id": type_id}});
    let seq = |name: &str, type_id: u32| json!({"Sequence": {"id": name, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = Map::new();
    for i in [bos, eos].into_iter().flatten() {
        specials.insert(tokens[i].to_string(), json!({"id": tokens[i], "ids": [i], "tokens": [tokens[i]]}));
    }
    if let Some(b) = bos {
        single.push(special(b, 0));
        pair.push(special(b, 0));
    }
    single.push(seq("A", 0));
    pair.push(seq("A", 0));
    if let Some(e) = eos {
        single.push(special(e, 0));
        pair.push(special(e, 0));
    }
    if let Some(b) = bos {
        pair.push(special(b, 1));
    }
    pair.push(seq("B", 1));
    if let Some(e) = eos {
        pair.push(special(e, 1));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}

/// The tokenizer of a GGUF file.
pub fn hf_tokenizer(h: &Header) -> Result<HfTokenizer> {
    let json = tokenizer_json(h)?;
    HfTokenizer::from_bytes_named(json.as_bytes(), h.path.clone())
}

/// The string of token `key`'s id (`tokenizer.ggml.bos_token_id` → `"<|im_start|>"`), or "".
fn token_text(h: &Header, key: &str) -> Result<String> {
    let Some(id) = h.get_u64(key)? else { return Ok(String::new()) };
    let tokens = h.get("tokenizer.ggml.tokens").and_then(|t| t.as_array()).unwrap_or_default();
    Ok(tokens.get(id as usize).and_then(|t| t.as_str()).unwrap_or_default().to_string())
}

/// `tokenizer.chat_template` with the BOS/EOS token strings, or `None` if the file has none.
pub fn chat_template(h: &Header) -> Result<Option<ChatTemplate>> {
    let Some(source) = h.get_str("tokenizer.chat_template")? else { return Ok(None) };
    let bos = token_text(h, "tokenizer.ggml.bos_token_id")?;
    let eos = token_text(h, "tokenizer.ggml.eos_token_id")?;
    match ChatTemplate::new(source, &bos, &eos) {
        Ok(t) => Ok(Some(t)),
        Err(Error::Template(msg)) => {
            Err(Error::Template(format!("{} (tokenizer.chat_template): {msg}", h.path.display())))
        }
        Err(e) => Err(e),
    }
}

/// Every id that ends generation: the GGUF's EOS (and EOT/EOM) ids plus the Llama 3 / ChatML
/// end tokens present in the vocabulary (`<|eot_id|>`, `<|eom_id|>`, `<|end_of_text|>`, `<|im_end|>`).
pub fn eos_ids(h: &Header, tok: &HfTokenizer) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        if let Some(id) = h.get_u64(key)?.and_then(|i| u32::try_from(i).ok()) {
            ids.push(id);
        }
    }
    for special in ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>"] {
        ids.extend(tok.token_to_id(special));
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}
