//! `POST /v1/completions` (legacy text completions).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use infer_core::FinishReason;
use infer_core::engine::{Completion, TokenLogprob};
use serde_json::{Value, json};

use crate::errors::{ApiError, parse_request};
use crate::params::plan;
use crate::run::{Running, collect, finish_reason, usage};
use crate::state::{AppState, unix_now};
use crate::types::{CommonParams, CompletionRequest, Prompt};
use crate::{logprobs, sse};

/// The most alternatives the legacy `logprobs` may ask for (as OpenAI).
const MAX_LOGPROBS: i64 = 5;

pub async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (req, common): (CompletionRequest, CommonParams) = parse_request(&body?)?;
    if req.echo.unwrap_or(false) {
        return Err(ApiError::invalid("echo = true is not supported", Some("echo")));
    }
    if let Some(b) = req.best_of
        && b != 1
    {
        return Err(ApiError::invalid(format!("best_of = {b}: only 1 is supported"), Some("best_of")));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid("suffix is not supported", Some("suffix")));
    }
    let top = match req.logprobs {
        Some(k) if !(0..=MAX_LOGPROBS).contains(&k) => {
            return Err(ApiError::invalid(format!("logprobs = {k}: must be in [0, {MAX_LOGPROBS}]"), Some("logprobs")));
        }
        k => k.map(|k| k as usize),
    };
    let prompt_ids = prompt_ids(&state, req.prompt).await?;
    let plan = plan(&state, &common, prompt_ids, common.max_tokens, top)?;
    let run = Running::submit(&state, plan.request)?;
    let chunks =
        TextChunks { id: state.response_id("cmpl-"), created: unix_now(), model: state.model_name.clone(), offset: 0 };
    if plan.stream {
        return Ok(sse::respond(state, run, chunks, plan.include_usage));
    }
    let done = collect(&state, run).await?;
    let body = json!({
        "id": chunks.id,
        "object": "text_completion",
        "created": chunks.created,
        "model": chunks.model,
        "choices": [{
            "index": 0,
            "text": done.text,
            "logprobs": top.map(|_| logprobs::legacy(&done.logprobs, &mut 0)),
            "finish_reason": finish_reason(done.completion.reason),
        }],
        "usage": usage(&done.completion),
    });
    Ok(axum::Json(body).into_response())
}

/// Text is tokenized with BOS (as the tokenizer adds it); token ids are taken as they are.
async fn prompt_ids(state: &AppState, prompt: Prompt) -> Result<Vec<u32>, ApiError> {
    let batch =
        |n: usize| ApiError::invalid(format!("a batch of {n} prompts is not supported: send one"), Some("prompt"));
    let text = match prompt {
        Prompt::Text(s) => s,
        Prompt::Texts(mut v) if v.len() == 1 => v.remove(0),
        Prompt::Texts(v) => return Err(batch(v.len())),
        Prompt::IdLists(mut v) if v.len() == 1 => return check_ids(state, v.remove(0)),
        Prompt::IdLists(v) => return Err(batch(v.len())),
        Prompt::Ids(ids) => return check_ids(state, ids),
    };
    if text.is_empty() {
        return Err(ApiError::invalid("the prompt is empty", Some("prompt")));
    }
    let engine = state.engine.clone();
    tokio::task::spawn_blocking(move || engine.tokenize(&text, true))
        .await
        .map_err(|e| ApiError::internal(format!("tokenizer task failed: {e}")))?
        .map_err(|e| ApiError::invalid(format!("cannot tokenize the prompt: {e}"), Some("prompt")))
}

fn check_ids(state: &AppState, ids: Vec<u32>) -> Result<Vec<u32>, ApiError> {
    let vocab = state.engine.info().vocab_size;
    if ids.is_empty() {
        return Err(ApiError::invalid("the prompt is empty", Some("prompt")));
    }
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(ApiError::invalid(format!("token id {bad} is outside the vocabulary ({vocab})"), Some("prompt")));
    }
    Ok(ids)
}

/// Completion chunks: `text_completion` objects with `text`.
struct TextChunks {
    id: String,
    created: u64,
    model: String,
    /// Text offset of the next token's logprobs.
    offset: usize,
}

impl TextChunks {
    fn chunk(&self, text: &str, lp: Value, reason: Value) -> Value {
        json!({
            "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "text": text, "logprobs": lp, "finish_reason": reason}],
        })
    }
}

impl sse::Chunks for TextChunks {
    fn start(&mut self) -> Option<Value> {
        None
    }

    fn delta(&mut self, text: &str, lps: &[TokenLogprob]) -> Value {
        let lp = if lps.is_empty() { Value::Null } else { logprobs::legacy(lps, &mut self.offset) };
        self.chunk(text, lp, Value::Null)
    }

    fn finish(&mut self, reason: FinishReason) -> Value {
        self.chunk("", Value::Null, json!(finish_reason(reason)))
    }

    fn usage(&mut self, c: &Completion) -> Value {
        json!({
            "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
            "choices": [], "usage": usage(c),
        })
    }
}
