//! Submitting a request to the engine and receiving its events.

use infer_core::engine::{Completion, Engine, EngineEvent, EngineRequest, RequestId, TokenLogprob};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::errors::ApiError;
use crate::state::AppState;

/// A submitted request. Dropping it (e.g. the client went away) closes the channel, so the
/// engine's next event returns `false` from the sink, and cancels it right away as well.
pub struct Running {
    rx: UnboundedReceiver<EngineEvent>,
    engine: Engine,
    id: RequestId,
    finished: bool,
}

impl Running {
    /// Submits `req`; the engine's admission errors become 400/429/503.
    pub fn submit(state: &AppState, req: EngineRequest) -> Result<Self, ApiError> {
        if state.is_shutting_down() {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        let (tx, rx) = unbounded_channel();
        // Runs on the engine thread: an unbounded send never blocks; an error means the
        // receiver is gone, and `false` tells the engine to cancel the request.
        let sink = Box::new(move |ev: EngineEvent| tx.send(ev).is_ok());
        let id = state.engine.submit(req, sink)?;
        Ok(Self { rx, engine: state.engine.clone(), id, finished: false })
    }

    /// The next event; `None` once a final event was seen, or if the engine dropped the sink.
    pub async fn next(&mut self) -> Option<EngineEvent> {
        if self.finished {
            return None;
        }
        let ev = self.rx.recv().await;
        if matches!(ev, None | Some(EngineEvent::Done(_) | EngineEvent::Failed(_))) {
            self.finished = true;
        }
        ev
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.finished {
            self.engine.cancel(self.id);
        }
    }
}

/// A whole non-streamed generation.
pub struct Collected {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub completion: Completion,
}

/// The error for a request the engine failed (503 while shutting down, else 500).
pub fn failure(state: &AppState, message: String) -> ApiError {
    if state.is_shutting_down() { ApiError::unavailable(message) } else { ApiError::internal(message) }
}

/// Waits for the whole generation.
pub async fn collect(state: &AppState, mut run: Running) -> Result<Collected, ApiError> {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    loop {
        match run.next().await {
            Some(EngineEvent::Token { text: t, logprob, .. }) => {
                text.push_str(&t);
                logprobs.extend(logprob);
            }
            Some(EngineEvent::Done(completion)) => {
                text.push_str(&completion.text);
                return Ok(Collected { text, logprobs, completion });
            }
            Some(EngineEvent::Failed(m)) => return Err(failure(state, m)),
            None => return Err(failure(state, "the engine dropped the request".into())),
        }
    }
}

/// OpenAI's `finish_reason` string.
pub fn finish_reason(r: infer_core::FinishReason) -> &'static str {
    match r {
        infer_core::FinishReason::Stop => "stop",
        infer_core::FinishReason::Length => "length",
    }
}

/// OpenAI's `usage` object.
pub fn usage(c: &Completion) -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": c.cached_tokens},
    })
}
