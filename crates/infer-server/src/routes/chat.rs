//! `POST /v1/chat/completions`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use infer_core::engine::{Completion, TokenLogprob};
use infer_core::{ChatMessage, FinishReason};
use serde_json::{Value, json};

use crate::errors::{ApiError, parse_request};
use crate::params::plan;
use crate::run::{Running, collect, finish_reason, usage};
use crate::state::{AppState, unix_now};
use crate::types::{ChatRequest, CommonParams, Content, MessageIn};
use crate::{logprobs, sse};

/// The most alternatives `top_logprobs` may ask for.
const MAX_TOP_LOGPROBS: i64 = 20;

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (req, common): (ChatRequest, CommonParams) = parse_request(&body?)?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages must not be empty", Some("messages")));
    }
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::invalid("tools are not supported by this server", Some("tools")));
    }
    let top = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (_, Some(k)) if !(0..=MAX_TOP_LOGPROBS).contains(&k) => {
            let m = format!("top_logprobs = {k}: must be in [0, {MAX_TOP_LOGPROBS}]");
            return Err(ApiError::invalid(m, Some("top_logprobs")));
        }
        (false, Some(_)) => {
            return Err(ApiError::invalid("top_logprobs requires logprobs = true", Some("top_logprobs")));
        }
        (true, k) => Some(k.unwrap_or(0) as usize),
        (false, None) => None,
    };
    let messages = req.messages.into_iter().enumerate().map(convert).collect::<Result<Vec<_>, _>>()?;
    let engine = state.engine.clone();
    let prompt_ids = tokio::task::spawn_blocking(move || engine.chat_prompt_ids(&messages))
        .await
        .map_err(|e| ApiError::internal(format!("chat template task failed: {e}")))?
        .map_err(|e| ApiError::invalid(format!("cannot render the chat template: {e}"), Some("messages")))?;
    let max_tokens = req.max_completion_tokens.or(common.max_tokens);
    let plan = plan(&state, &common, prompt_ids, max_tokens, top)?;
    let run = Running::submit(&state, plan.request)?;
    let chunks =
        ChatChunks { id: state.response_id("chatcmpl-"), created: unix_now(), model: state.model_name.clone() };
    if plan.stream {
        return Ok(sse::respond(state, run, chunks, plan.include_usage));
    }
    let done = collect(&state, run).await?;
    let body = json!({
        "id": chunks.id,
        "object": "chat.completion",
        "created": chunks.created,
        "model": chunks.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": done.text, "refusal": null},
            "logprobs": top.map(|_| logprobs::chat(&done.logprobs)),
            "finish_reason": finish_reason(done.completion.reason),
        }],
        "usage": usage(&done.completion),
    });
    Ok(axum::Json(body).into_response())
}

/// An API message → the template's message (text parts joined by newlines).
fn convert((i, m): (usize, MessageIn)) -> Result<ChatMessage, ApiError> {
    let param = format!("messages[{i}]");
    let role = match m.role.as_str() {
        "system" | "user" | "assistant" | "tool" => m.role,
        "developer" => "system".to_string(),
        other => return Err(ApiError::invalid(format!("unknown role `{other}`"), Some(&format!("{param}.role")))),
    };
    let content = match m.content {
        None => String::new(),
        Some(Content::Text(s)) => s,
        Some(Content::Parts(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for p in parts {
                match (p.kind.as_str(), p.text) {
                    ("text", Some(t)) => texts.push(t),
                    (kind, _) => {
                        let msg = format!("content part of type `{kind}` is not supported (only `text`)");
                        return Err(ApiError::invalid(msg, Some(&format!("{param}.content"))));
                    }
                }
            }
            texts.join("\n")
        }
    };
    let mut msg = ChatMessage::new(role, content);
    if let Some(name) = m.name {
        msg.extra.insert("name".into(), Value::String(name));
    }
    Ok(msg)
}

/// Chat chunks: `chat.completion.chunk` objects with a `delta`.
struct ChatChunks {
    id: String,
    created: u64,
    model: String,
}

impl ChatChunks {
    fn chunk(&self, choices: Value) -> Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model, "choices": choices})
    }
}

impl sse::Chunks for ChatChunks {
    fn start(&mut self) -> Option<Value> {
        let choice =
            json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null});
        Some(self.chunk(json!([choice])))
    }

    fn delta(&mut self, text: &str, lps: &[TokenLogprob]) -> Value {
        let lp = if lps.is_empty() { Value::Null } else { logprobs::chat(lps) };
        self.chunk(json!([{"index": 0, "delta": {"content": text}, "logprobs": lp, "finish_reason": null}]))
    }

    fn finish(&mut self, reason: FinishReason) -> Value {
        self.chunk(json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish_reason(reason)}]))
    }

    fn usage(&mut self, c: &Completion) -> Value {
        let mut v = self.chunk(json!([]));
        v["usage"] = usage(c);
        v
    }
}
