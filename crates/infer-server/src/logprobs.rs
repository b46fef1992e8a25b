//! Log-probabilities in OpenAI's two formats: chat (`content: [{token, logprob, bytes,
//! top_logprobs}]`) and the legacy completions one (`tokens`, `token_logprobs`, `top_logprobs`,
//! `text_offset`).

use infer_core::engine::TokenLogprob;
use serde_json::{Map, Value, json};

/// A log-probability as JSON: the shortest decimal of the f32 (not its widened f64 digits);
/// `-inf` as OpenAI writes it, -9999.0.
pub fn number(x: f32) -> Value {
    let x = if x.is_finite() { x } else { -9999.0 };
    let shortest: f64 = format!("{x}").parse().unwrap_or(f64::from(x));
    json!(shortest)
}

/// The chat `logprobs` object of a choice or chunk.
pub fn chat(lps: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = lps
        .iter()
        .map(|t| {
            let top: Vec<Value> = t
                .top
                .iter()
                .map(|a| json!({"token": a.token, "logprob": number(a.logprob), "bytes": a.bytes}))
                .collect();
            json!({"token": t.token, "logprob": number(t.logprob), "bytes": t.bytes, "top_logprobs": top})
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// The legacy completions `logprobs` object; `offset` is the text offset (in characters) of the
/// first token, advanced past these tokens.
pub fn legacy(lps: &[TokenLogprob], offset: &mut usize) -> Value {
    let mut tokens = Vec::with_capacity(lps.len());
    let mut token_logprobs = Vec::with_capacity(lps.len());
    let mut top_logprobs = Vec::with_capacity(lps.len());
    let mut text_offset = Vec::with_capacity(lps.len());
    for t in lps {
        tokens.push(json!(t.token));
        token_logprobs.push(number(t.logprob));
        let top: Map<String, Value> = t.top.iter().map(|a| (a.token.clone(), number(a.logprob))).collect();
        top_logprobs.push(Value::Object(top));
        text_offset.push(json!(*offset));
        *offset += t.token.chars().count();
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": text_offset})
}
