//! Request parameters → an [`EngineRequest`]: defaults, ranges, and the 400s for bad values.

use infer_core::SamplerConfig;
use infer_core::engine::EngineRequest;

use crate::errors::ApiError;
use crate::state::AppState;
use crate::types::CommonParams;

/// The most stop strings a request may give (OpenAI allows 4; vLLM more).
const MAX_STOPS: usize = 16;

/// What the handlers need besides the engine request.
pub struct Plan {
    pub request: EngineRequest,
    pub stream: bool,
    pub include_usage: bool,
}

/// Checks the model name: absent or the served name.
pub fn check_model(state: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if m != state.model_name => Err(ApiError::not_found(
            format!("The model `{m}` does not exist; this server serves `{}`.", state.model_name),
            "model_not_found",
        )),
        _ => Ok(()),
    }
}

/// Builds the engine request for `prompt_ids` from the shared parameters; `max_tokens` is the
/// value the endpoint read (chat also takes `max_completion_tokens`), `logprobs` the top-k count.
pub fn plan(
    state: &AppState,
    p: &CommonParams,
    prompt_ids: Vec<u32>,
    max_tokens: Option<i64>,
    logprobs: Option<usize>,
) -> Result<Plan, ApiError> {
    check_model(state, p.model.as_deref())?;
    if let Some(n) = p.n
        && n != 1
    {
        return Err(ApiError::invalid(format!("n = {n}: only n = 1 is supported"), Some("n")));
    }
    if p.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
        return Err(ApiError::invalid("logit_bias is not supported", Some("logit_bias")));
    }
    if p.stop.0.len() > MAX_STOPS {
        return Err(ApiError::invalid(format!("at most {MAX_STOPS} stop strings are allowed"), Some("stop")));
    }
    if p.stop.0.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop strings must not be empty", Some("stop")));
    }
    let context = state.engine.info().context_length;
    let room = context.saturating_sub(prompt_ids.len());
    let max_tokens = match max_tokens {
        None => room.max(1), // as vLLM: the rest of the context (an over-long prompt fails below)
        Some(n) if n < 1 => {
            return Err(ApiError::invalid(format!("max_tokens = {n}: must be at least 1"), Some("max_tokens")));
        }
        Some(n) if n as u64 > context as u64 => {
            return Err(ApiError {
                code: Some("context_length_exceeded"),
                ..ApiError::invalid(
                    format!("max_tokens = {n} exceeds the model's context length ({context} tokens)"),
                    Some("max_tokens"),
                )
            });
        }
        Some(n) => n as usize,
    };
    let stream = p.stream.unwrap_or(false);
    let include_usage = p.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    if p.stream_options.is_some() && !stream {
        return Err(ApiError::invalid("stream_options is only allowed with stream = true", Some("stream_options")));
    }
    Ok(Plan {
        request: EngineRequest {
            prompt_ids,
            max_tokens,
            sampler: sampler(state.engine.generation_defaults(), p)?,
            stop: p.stop.0.clone(),
            ignore_eos: p.ignore_eos.unwrap_or(false),
            logprobs,
        },
        stream,
        include_usage,
    })
}

/// The model's generation defaults overridden by each parameter given (as vLLM does: an absent
/// `temperature` is the model's, not OpenAI's 1.0); `temperature = 0` is greedy.
fn sampler(defaults: &SamplerConfig, p: &CommonParams) -> Result<SamplerConfig, ApiError> {
    let mut s = defaults.clone();
    if let Some(t) = p.temperature {
        s.temperature = t;
    }
    if let Some(v) = p.top_p {
        s.top_p = v;
    }
    if let Some(k) = p.top_k {
        // vLLM's convention: -1 (or 0) disables top-k.
        if k < -1 {
            return Err(ApiError::invalid(format!("top_k = {k}: must be -1, 0 or positive"), Some("top_k")));
        }
        s.top_k = usize::try_from(k).unwrap_or(0);
    }
    if let Some(v) = p.min_p {
        s.min_p = v;
    }
    if let Some(v) = p.repetition_penalty {
        s.repetition_penalty = v;
    }
    for (name, v) in [("presence_penalty", p.presence_penalty), ("frequency_penalty", p.frequency_penalty)] {
        if let Some(v) = v
            && !(-2.0..=2.0).contains(&v)
        {
            return Err(ApiError::invalid(format!("{name} = {v}: must be in [-2, 2]"), Some(name)));
        }
    }
    if let Some(v) = p.presence_penalty {
        s.presence_penalty = v;
    }
    if let Some(v) = p.frequency_penalty {
        s.frequency_penalty = v;
    }
    if let Some(seed) = p.seed {
        s.seed = Some(seed as u64); // negative seeds are valid in OpenAI's API: reinterpret the bits
    }
    s.validate().map_err(|e| {
        let message = match e {
            infer_core::Error::InvalidArgument(m) => m,
            other => other.to_string(),
        };
        // The message starts with the parameter's name (`temperature = -1: must be ...`).
        let param = message.split(" = ").next().map(str::to_string);
        ApiError { param, ..ApiError::invalid(message.clone(), None) }
    })?;
    Ok(s)
}
