//! State shared by the handlers.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use infer_core::engine::Engine;

/// The engine handle, the served model name and the server's own bookkeeping.
pub struct AppState {
    pub engine: Engine,
    /// The name clients pass as `model` (and see in `/v1/models`).
    pub model_name: String,
    /// Unix seconds at start (`created` of the model object).
    pub started: u64,
    /// Set when shutdown begins: `/health` answers 503, new requests 503.
    pub shutting_down: AtomicBool,
    /// Generation-token counter and time at the previous `/metrics` scrape, for tokens/s.
    pub(crate) last_scrape: Mutex<Option<(Instant, u64, f64)>>,
    next_id: AtomicU64,
}

impl AppState {
    pub fn new(engine: Engine, model_name: Option<String>) -> Arc<Self> {
        let model_name = model_name.unwrap_or_else(|| engine.info().model_id.clone());
        Arc::new(Self {
            engine,
            model_name,
            started: unix_now(),
            shutting_down: AtomicBool::new(false),
            last_scrape: Mutex::new(None),
            next_id: AtomicU64::new(0),
        })
    }

    /// A fresh response id, `prefix` + 24 hex digits (process-random high bits + a counter).
    pub fn response_id(&self, prefix: &str) -> String {
        use std::hash::{BuildHasher, RandomState};
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let salt = RandomState::new().hash_one(n);
        format!("{prefix}{salt:016x}{n:08x}")
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
