//! Handlers: chat and text completions, models, health, and the JSON 404/405.

pub mod chat;
pub mod completions;

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::errors::ApiError;
use crate::state::AppState;

fn model_object(state: &AppState) -> Value {
    json!({
        "id": state.model_name,
        "object": "model",
        "created": state.started,
        "owned_by": "rustinfer",
        "max_model_len": state.engine.info().context_length,
    })
}

/// `GET /v1/models`.
pub async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_object(&state)]}))
}

/// `GET /v1/models/{id}`.
pub async fn model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    crate::params::check_model(&state, Some(&id))?;
    Ok(Json(model_object(&state)))
}

/// `GET /health`: 200 while serving, 503 once shutdown began.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "shutting_down"}))).into_response()
    } else {
        Json(json!({"status": "ok"})).into_response()
    }
}

/// Any other path.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()), "not_found")
}

/// A known path with the wrong method.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        ..ApiError::invalid(format!("method {method} is not allowed on {}", uri.path()), None)
    }
}
