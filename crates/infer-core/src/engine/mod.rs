//! A serving engine: continuous batching over a paged KV cache.
//!
//! [`Engine::start`] moves a loaded [`Llama3`] onto a scheduler thread. Requests join the
//! running batch at step boundaries; every step runs one batched forward pass (decode rows of
//! every running sequence plus chunks of prompts, up to a token budget, see
//! [`EngineConfig::step_tokens`]), samples each sequence's next token on the host and streams
//! events to the request's sink. KV memory comes in blocks from one pool; full blocks are
//! shared between requests with the same prefix; a sequence that cannot get a block preempts
//! the most recently admitted one, which is recomputed later.

mod blocks;
mod scheduler;
mod sequence;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::base::{Error, Result};
use crate::model::chat::{ChatMessage, RenderOptions};
use crate::model::generate::FinishReason;
use crate::model::llama3::Llama3;
use crate::model::paged_kv::PagedKvCache;
use crate::model::sampler::SamplerConfig;
use crate::model::tokenizer::HfTokenizer;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most sequences running at once.
    pub max_batch: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Bytes for the KV pool (default: 1 GiB on the CPU, 8 GiB on a GPU; never more than
    /// `max_batch` full contexts need).
    pub kv_memory_bytes: Option<usize>,
    /// Waiting requests accepted before [`SubmitError::QueueFull`].
    pub max_queue: usize,
    /// Token budget of one step: decode rows first, then prompt chunks (chunked prefill).
    pub step_tokens: usize,
    /// Share full KV blocks between requests with equal prefixes.
    pub prefix_caching: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch: 32,
            block_size: 16,
            kv_memory_bytes: None,
            max_queue: 256,
            step_tokens: 512,
            prefix_caching: true,
        }
    }
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Stop strings (not part of the returned text).
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// `Some(k)`: the chosen token's log-probability and the `k` most likely (k <= 20).
    pub logprobs: Option<usize>,
}

/// Most alternatives [`EngineRequest::logprobs`] may ask for.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A candidate token and its log-probability (of the model's distribution, before sampling
/// settings).
#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    pub id: u32,
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// The chosen token's log-probability and the top alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<TopLogprob>,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Text not yet sent in `Token` events (held back for stop strings or characters).
    pub text: String,
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose K/V came from the prefix cache.
    pub cached_tokens: usize,
}

/// What a request's sink receives.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    /// One generated token; `text` is the newly complete text (may be empty).
    Token { id: u32, text: String, logprob: Option<TokenLogprob> },
    /// The final event of a finished request.
    Done(Completion),
    /// The final event of a failed request.
    Failed(String),
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    #[error("the request queue is full ({limit} waiting requests); retry later")]
    QueueFull { limit: usize },
    #[error(
        "the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds the context length ({context_length})"
    )]
    TooLong { prompt_tokens: usize, max_tokens: usize, context_length: usize },
    #[error("{0}")]
    Invalid(String),
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// Receives a request's events on the scheduler thread: must not block. Returning `false`
/// (the client is gone) cancels the request and frees its blocks.
pub type EventSink = Box<dyn FnMut(EngineEvent) -> bool + Send>;

/// Identifies a submitted request.
pub type RequestId = u64;

/// Counters and gauges of a running engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineMetrics {
    pub requests_total: u64,
    pub requests_running: u64,
    pub requests_waiting: u64,
    pub requests_finished: u64,
    pub requests_rejected: u64,
    pub requests_cancelled: u64,
    pub requests_preempted: u64,
    pub prompt_tokens_total: u64,
    pub generation_tokens_total: u64,
    pub prefix_cache_hit_tokens: u64,
    pub kv_blocks_total: u64,
    pub kv_blocks_used: u64,
    pub steps_total: u64,
    pub busy_seconds: f64,
}

/// Static facts about the served model.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    pub model_id: String,
    pub context_length: usize,
    pub vocab_size: usize,
    pub device: String,
    pub block_size: usize,
    pub kv_blocks: usize,
    pub max_batch: usize,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub requests_total: AtomicU64,
    pub requests_running: AtomicU64,
    pub requests_waiting: AtomicU64,
    pub requests_finished: AtomicU64,
    pub requests_rejected: AtomicU64,
    pub requests_cancelled: AtomicU64,
    pub requests_preempted: AtomicU64,
    pub prompt_tokens_total: AtomicU64,
    pub generation_tokens_total: AtomicU64,
    pub prefix_cache_hit_tokens: AtomicU64,
    pub kv_blocks_used: AtomicU64,
    pub steps_total: AtomicU64,
    pub busy_micros: AtomicU64,
}

pub(crate) enum Command {
    Submit(RequestId, EngineRequest, EventSink),
    Cancel(RequestId),
}

/// State shared by the handle and the scheduler thread.
pub(crate) struct Shared {
    pub inbox: Mutex<Vec<Command>>,
    pub wake: Condvar,
    pub counters: Counters,
    pub shutting_down: AtomicBool,
    /// Set by [`Engine::shutdown`]: requests still running at this instant are failed.
    pub deadline: Mutex<Option<Instant>>,
    next_id: AtomicU64,
}

impl Shared {
    pub fn send(&self, c: Command) {
        // A poisoned lock means the scheduler panicked; the command is dropped (the sink with it).
        if let Ok(mut inbox) = self.inbox.lock() {
            inbox.push(c);
            self.wake.notify_one();
        }
    }
}

/// A handle to a running engine (cheap to clone, `Send + Sync`).
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    info: Arc<EngineInfo>,
    front: Arc<Frontend>,
    max_queue: usize,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

/// What the handle keeps of the model for request preparation.
struct Frontend {
    tokenizer: HfTokenizer,
    chat: Option<crate::model::chat::ChatTemplate>,
    defaults: SamplerConfig,
}

impl Engine {
    /// Allocates the KV pool and starts the scheduler thread.
    pub fn start(mut model: Llama3, cfg: EngineConfig) -> Result<Engine> {
        if cfg.max_batch == 0 || cfg.block_size == 0 || cfg.step_tokens == 0 {
            return Err(Error::InvalidArgument("max_batch, block_size and step_tokens must be positive".into()));
        }
        let c = model.config();
        let ctx = model.context_length();
        let per_block = PagedKvCache::block_bytes(c, cfg.block_size, model.device());
        let budget = cfg.kv_memory_bytes.unwrap_or(if model.device().is_cpu() { 1 << 30 } else { 8 << 30 });
        let need = cfg.max_batch * ctx.div_ceil(cfg.block_size);
        let num_blocks = (budget / per_block).min(need);
        if num_blocks < ctx.div_ceil(cfg.block_size).min(need).max(1) {
            return Err(Error::InvalidArgument(format!(
                "a KV budget of {budget} bytes holds {num_blocks} blocks of {} tokens ({per_block} bytes each): \
                 not one full context of {ctx} tokens; raise the budget or lower the context length",
                cfg.block_size
            )));
        }
        let cache = model.paged_cache(num_blocks, cfg.block_size)?;
        let info = EngineInfo {
            model_id: model_id(model.model_dir()),
            context_length: ctx,
            vocab_size: c.vocab_size,
            device: model.device().to_string(),
            block_size: cfg.block_size,
            kv_blocks: num_blocks,
            max_batch: cfg.max_batch,
        };
        let front = Frontend {
            tokenizer: model.hf_tokenizer().clone(),
            chat: model.chat_template().cloned(),
            defaults: model.generation_defaults().clone(),
        };
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            counters: Counters::default(),
            shutting_down: AtomicBool::new(false),
            deadline: Mutex::new(None),
            next_id: AtomicU64::new(1),
        });
        let max_queue = cfg.max_queue;
        model.reserve_batch_rows(cfg.step_tokens.max(cfg.max_batch))?;
        let sched = scheduler::Scheduler::new(model, cache, cfg, shared.clone());
        let thread = std::thread::Builder::new()
            .name("rustinfer-engine".into())
            .spawn(move || sched.run())
            .map_err(|e| Error::InvalidArgument(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            shared,
            info: Arc::new(info),
            front: Arc::new(front),
            max_queue,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// Validates and queues a request; its events go to `sink`.
    pub fn submit(&self, req: EngineRequest, sink: EventSink) -> std::result::Result<RequestId, SubmitError> {
        let c = &self.shared.counters;
        let refuse = |e: SubmitError| {
            c.requests_rejected.fetch_add(1, Ordering::Relaxed);
            Err(e)
        };
        if self.shared.shutting_down.load(Ordering::Acquire) {
            return refuse(SubmitError::ShuttingDown);
        }
        if let Err(e) = self.validate(&req) {
            return refuse(e);
        }
        let limit = self.info.max_batch + self.max_queue();
        if c.requests_waiting.load(Ordering::Acquire) + c.requests_running.load(Ordering::Acquire) >= limit as u64 {
            return refuse(SubmitError::QueueFull { limit: self.max_queue() });
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        c.requests_total.fetch_add(1, Ordering::Relaxed);
        c.requests_waiting.fetch_add(1, Ordering::AcqRel);
        self.shared.send(Command::Submit(id, req, sink));
        Ok(id)
    }

    fn max_queue(&self) -> usize {
        self.max_queue
    }

    fn validate(&self, req: &EngineRequest) -> std::result::Result<(), SubmitError> {
        let invalid = |m: String| Err(SubmitError::Invalid(m));
        let (ctx, vocab) = (self.info.context_length, self.info.vocab_size);
        if req.prompt_ids.is_empty() {
            return invalid("the prompt is empty".into());
        }
        if req.max_tokens == 0 {
            return invalid("max_tokens must be at least 1".into());
        }
        if let Some(bad) = req.prompt_ids.iter().find(|&&id| id as usize >= vocab) {
            return invalid(format!("prompt token id {bad} is outside the vocabulary ({vocab})"));
        }
        if req.prompt_ids.len().saturating_add(req.max_tokens) > ctx {
            return Err(SubmitError::TooLong {
                prompt_tokens: req.prompt_ids.len(),
                max_tokens: req.max_tokens,
                context_length: ctx,
            });
        }
        if let Some(k) = req.logprobs
            && k > MAX_TOP_LOGPROBS
        {
            return invalid(format!("top logprobs {k} exceeds the maximum of {MAX_TOP_LOGPROBS}"));
        }
        req.sampler.validate().or_else(|e| invalid(e.to_string()))
    }

    /// Cancels a request (its sink gets no more events; its blocks are freed).
    pub fn cancel(&self, id: RequestId) {
        self.shared.send(Command::Cancel(id));
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> EngineMetrics {
        let c = &self.shared.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EngineMetrics {
            requests_total: g(&c.requests_total),
            requests_running: g(&c.requests_running),
            requests_waiting: g(&c.requests_waiting),
            requests_finished: g(&c.requests_finished),
            requests_rejected: g(&c.requests_rejected),
            requests_cancelled: g(&c.requests_cancelled),
            requests_preempted: g(&c.requests_preempted),
            prompt_tokens_total: g(&c.prompt_tokens_total),
            generation_tokens_total: g(&c.generation_tokens_total),
            prefix_cache_hit_tokens: g(&c.prefix_cache_hit_tokens),
            kv_blocks_total: self.info.kv_blocks as u64,
            kv_blocks_used: g(&c.kv_blocks_used),
            steps_total: g(&c.steps_total),
            busy_seconds: g(&c.busy_micros) as f64 / 1e6,
        }
    }

    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// Token ids of `text`.
    pub fn tokenize(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.front.tokenizer.encode_ids(text, add_special_tokens)
    }

    /// Prompt ids of a chat through the model's template (which emits BOS itself).
    pub fn chat_prompt_ids(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let t = self.front.chat.as_ref().ok_or_else(|| {
            Error::InvalidArgument("the model has no chat template; use the completions endpoint".into())
        })?;
        let text = t.render(messages, &RenderOptions { add_generation_prompt: true, ..Default::default() })?;
        self.tokenize(&text, false)
    }

    /// Sampling defaults of the model's generation_config.json.
    pub fn generation_defaults(&self) -> &SamplerConfig {
        &self.front.defaults
    }

    /// Stops accepting requests; running and queued ones may finish within `grace`, then the
    /// rest fail with "server shutting down" and the scheduler thread exits.
    pub fn shutdown(&self, grace: Duration) {
        if let Ok(mut d) = self.shared.deadline.lock() {
            *d = Some(Instant::now() + grace);
        }
        self.shared.shutting_down.store(true, Ordering::Release);
        if let Ok(_inbox) = self.shared.inbox.lock() {
            self.shared.wake.notify_one();
        }
    }

    /// Waits for the scheduler thread to exit (after [`Engine::shutdown`]).
    pub fn join(&self) {
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn model_id(path: &std::path::Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}
