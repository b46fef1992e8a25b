//! RustInfer's HTTP server: the OpenAI API (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/models`) plus `/health` and Prometheus `/metrics`, over the continuous-batching
//! [`Engine`]. Handlers are async (axum on tokio); the engine computes on its own thread and
//! streams events back through an unbounded channel per request.
//!
//! ```no_run
//! # async fn f(engine: infer_core::engine::Engine) -> std::io::Result<()> {
//! let cfg = infer_server::ServerConfig::default();
//! let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port)).await?;
//! infer_server::serve(engine, listener, cfg, infer_server::shutdown_signal()).await
//! # }
//! ```

mod errors;
mod logprobs;
mod metrics;
mod params;
mod routes;
mod run;
mod sse;
mod state;
mod types;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use infer_core::engine::Engine;

pub use errors::ApiError;
pub use state::AppState;

/// Where to listen and how to present the model.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// The `model` name clients use [default: the engine's model id, the model file/dir name].
    pub model_name: Option<String>,
    /// On shutdown, how long running requests may take to finish before they are failed.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { host: "127.0.0.1".into(), port: 8000, model_name: None, shutdown_grace: Duration::from_secs(30) }
    }
}

/// The routes over `state` (tests drive it directly).
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(routes::chat::chat_completions))
        .route("/v1/completions", post(routes::completions::completions))
        .route("/v1/models", get(routes::models))
        .route("/v1/models/{id}", get(routes::model))
        .route("/health", get(routes::health))
        .route("/metrics", get(metrics::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .with_state(state)
}

/// Serves until `shutdown` resolves, then stops accepting connections, lets the engine finish
/// or fail what is in flight within `cfg.shutdown_grace`, waits for open responses to end, and
/// joins the engine thread.
pub async fn serve(
    engine: Engine,
    listener: tokio::net::TcpListener,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = AppState::new(engine.clone(), cfg.model_name.clone());
    let app = router(state.clone());
    let grace = cfg.shutdown_grace;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stopping = {
        let state = state.clone();
        async move {
            shutdown.await;
            state.shutting_down.store(true, Ordering::SeqCst);
            let _ = stop_tx.send(());
        }
    };
    // Once the signal came, the engine stops admitting while axum stops accepting connections;
    // in-flight streams end with Done or Failed (within `grace`), so the connections axum waits
    // for close by themselves.
    let engine_stop = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let _ = stop_rx.await; // the signal, or the server ended without one
            let _ = tokio::task::spawn_blocking(move || engine.shutdown(grace)).await;
        })
    };
    let served = axum::serve(listener, app).with_graceful_shutdown(stopping).await;
    // After an accept error the signal never came, but the sender is gone: the engine stops too.
    state.shutting_down.store(true, Ordering::SeqCst);
    let _ = engine_stop.await;
    let joined = tokio::task::spawn_blocking(move || engine.join());
    let _ = tokio::time::timeout(grace + Duration::from_secs(10), joined).await;
    served
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
