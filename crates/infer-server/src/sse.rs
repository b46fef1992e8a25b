//! Server-sent events: engine events → `data: {chunk}` lines → `data: [DONE]`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use infer_core::FinishReason;
use infer_core::engine::{Completion, EngineEvent, TokenLogprob};
use serde_json::Value;

use crate::run::{Running, failure};
use crate::state::AppState;

/// How one endpoint shapes its chunks (chat: `delta`, completions: `text`).
pub trait Chunks: Send + 'static {
    /// Chunks sent before any token (chat: the one with the assistant role).
    fn start(&mut self) -> Option<Value>;
    /// New text with the logprobs of the tokens that produced it (may be none).
    fn delta(&mut self, text: &str, logprobs: &[TokenLogprob]) -> Value;
    /// The last chunk of the choice, with its `finish_reason`.
    fn finish(&mut self, reason: FinishReason) -> Value;
    /// The usage-only chunk (`stream_options.include_usage`).
    fn usage(&mut self, completion: &Completion) -> Value;
}

struct State<C> {
    app: Arc<AppState>,
    run: Running,
    chunks: C,
    include_usage: bool,
    out: VecDeque<String>,
    done: bool,
}

impl<C: Chunks> State<C> {
    fn push(&mut self, mut v: Value) {
        if self.include_usage
            && let Some(obj) = v.as_object_mut()
        {
            obj.entry("usage").or_insert(Value::Null);
        }
        self.out.push_back(v.to_string());
    }

    /// Awaits engine events until there is something to send (or the stream ends).
    async fn fill(&mut self) {
        while self.out.is_empty() && !self.done {
            match self.run.next().await {
                Some(EngineEvent::Token { text, logprob, .. }) => {
                    if !text.is_empty() || logprob.is_some() {
                        let lps: Vec<TokenLogprob> = logprob.into_iter().collect();
                        let chunk = self.chunks.delta(&text, &lps);
                        self.push(chunk);
                    }
                }
                Some(EngineEvent::Done(c)) => {
                    if !c.text.is_empty() {
                        let chunk = self.chunks.delta(&c.text, &[]);
                        self.push(chunk);
                    }
                    let chunk = self.chunks.finish(c.reason);
                    self.push(chunk);
                    if self.include_usage {
                        let chunk = self.chunks.usage(&c);
                        self.out.push_back(chunk.to_string());
                    }
                    self.finish();
                }
                Some(EngineEvent::Failed(m)) => {
                    self.out.push_back(failure(&self.app, m).body_json());
                    self.finish();
                }
                None => {
                    self.out.push_back(failure(&self.app, "the engine dropped the request".into()).body_json());
                    self.finish();
                }
            }
        }
    }

    fn finish(&mut self) {
        self.out.push_back("[DONE]".into());
        self.done = true;
    }
}

/// The SSE response for a submitted request. When the client disconnects, hyper drops this
/// stream, which drops [`Running`]: the engine cancels the request and frees its blocks.
pub fn respond<C: Chunks>(app: Arc<AppState>, run: Running, mut chunks: C, include_usage: bool) -> Response {
    let first = chunks.start();
    let mut state = State { app, run, chunks, include_usage, out: VecDeque::new(), done: false };
    if let Some(v) = first {
        state.push(v);
    }
    let events = stream::unfold(state, |mut st| async move {
        st.fill().await;
        let data = st.out.pop_front()?;
        Some((Ok::<Event, Infallible>(Event::default().data(data)), st))
    });
    Sse::new(events).into_response()
}
