//! `GET /metrics`: the engine's counters and gauges in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::state::AppState;

/// The Prometheus text exposition of [`infer_core::engine::EngineMetrics`]; tokens/s is the
/// generation rate since the previous scrape (the first scrape reports the mean while busy).
pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let m = state.engine.metrics();
    let now = Instant::now();
    let rate = {
        let mut last = state.last_scrape.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            // Scraped again within half a second: report the previous rate.
            Some((t, _, rate)) if now.duration_since(t).as_secs_f64() < 0.5 => rate,
            prev => {
                let rate = match prev {
                    Some((t, tokens, _)) => {
                        m.generation_tokens_total.saturating_sub(tokens) as f64 / now.duration_since(t).as_secs_f64()
                    }
                    None if m.busy_seconds > 0.0 => m.generation_tokens_total as f64 / m.busy_seconds,
                    None => 0.0,
                };
                *last = Some((now, m.generation_tokens_total, rate));
                rate
            }
        }
    };
    let usage = if m.kv_blocks_total > 0 { m.kv_blocks_used as f64 / m.kv_blocks_total as f64 } else { 0.0 };
    let rows: [(&str, &str, &str, f64); 18] = [
        ("requests_total", "counter", "Requests accepted by the engine.", m.requests_total as f64),
        (
            "requests_finished_total",
            "counter",
            "Requests finished (done, failed or cancelled).",
            m.requests_finished as f64,
        ),
        ("requests_rejected_total", "counter", "Requests rejected at admission.", m.requests_rejected as f64),
        ("requests_cancelled_total", "counter", "Requests cancelled (client gone).", m.requests_cancelled as f64),
        (
            "requests_preempted_total",
            "counter",
            "Preemptions (a sequence's KV freed, recomputed later).",
            m.requests_preempted as f64,
        ),
        ("requests_running", "gauge", "Sequences in the running batch.", m.requests_running as f64),
        ("queue_depth", "gauge", "Requests waiting to be scheduled.", m.requests_waiting as f64),
        ("prompt_tokens_total", "counter", "Prompt tokens of accepted requests.", m.prompt_tokens_total as f64),
        ("generation_tokens_total", "counter", "Tokens generated.", m.generation_tokens_total as f64),
        ("generation_tokens_per_second", "gauge", "Generated tokens per second since the previous scrape.", rate),
        (
            "prefix_cache_hit_tokens_total",
            "counter",
            "Prompt tokens served from the prefix cache.",
            m.prefix_cache_hit_tokens as f64,
        ),
        ("kv_cache_blocks_total", "gauge", "KV-cache blocks in the pool.", m.kv_blocks_total as f64),
        ("kv_cache_blocks_used", "gauge", "KV-cache blocks in use.", m.kv_blocks_used as f64),
        ("kv_cache_usage_ratio", "gauge", "Fraction of KV-cache blocks in use.", usage),
        ("engine_steps_total", "counter", "Scheduler steps run.", m.steps_total as f64),
        ("engine_busy_seconds_total", "counter", "Seconds the engine spent computing.", m.busy_seconds),
        ("max_batch", "gauge", "Most sequences in one batch.", state.engine.info().max_batch as f64),
        ("context_length", "gauge", "Context length in tokens.", state.engine.info().context_length as f64),
    ];
    let mut out = String::with_capacity(4096);
    for (name, kind, help, value) in rows {
        // Writing into a String cannot fail.
        let _ =
            write!(out, "# HELP rustinfer_{name} {help}\n# TYPE rustinfer_{name} {kind}\nrustinfer_{name} {value}\n");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out)
}
