//! OpenAI-style error responses: `{"error": {"message", "type", "param", "code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use infer_core::engine::SubmitError;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// An error answered to the client with its HTTP status and OpenAI's error body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    /// 400 `invalid_request_error`, naming the offending parameter when known.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    /// 404 for an unknown route or model.
    pub fn not_found(message: impl Into<String>, code: &'static str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some(code),
        }
    }

    /// 500 for an engine failure while generating.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// 503 while the server shuts down.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: Some("service_unavailable"),
        }
    }

    /// The JSON body alone (also sent as an SSE event when a stream fails midway).
    pub fn body_json(&self) -> String {
        let body = Body {
            error: Inner { message: &self.message, kind: self.kind, param: self.param.as_deref(), code: self.code },
        };
        // Serializing plain strings and options into a String cannot fail.
        serde_json::to_string(&body).unwrap_or_default()
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        let message = e.to_string();
        match e {
            SubmitError::QueueFull { .. } => Self {
                status: StatusCode::TOO_MANY_REQUESTS,
                message,
                kind: "rate_limit_error",
                param: None,
                code: Some("queue_full"),
            },
            SubmitError::TooLong { .. } => {
                Self { code: Some("context_length_exceeded"), ..Self::invalid(message, Some("max_tokens")) }
            }
            SubmitError::Invalid(_) => Self::invalid(message, None),
            SubmitError::ShuttingDown => Self::unavailable(message),
        }
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    /// An unreadable body (too large, cut off): its status, OpenAI's body.
    fn from(e: axum::extract::rejection::BytesRejection) -> Self {
        Self { status: e.status(), ..Self::invalid(e.body_text(), None) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let headers = [(axum::http::header::CONTENT_TYPE, "application/json")];
        (self.status, headers, self.body_json()).into_response()
    }
}

/// Parses a JSON request body into an endpoint's own fields `A` and the shared fields `B`;
/// every failure (invalid UTF-8, syntax, wrong types, missing fields) is a 400 that names the
/// offending field (`param`) where there is one.
pub fn parse_request<A: DeserializeOwned, B: DeserializeOwned>(body: &[u8]) -> Result<(A, B), ApiError> {
    if std::str::from_utf8(body).is_err() {
        return Err(ApiError::invalid("the request body is not valid UTF-8", None));
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}"), None))?;
    if !value.is_object() {
        return Err(ApiError::invalid("the request body must be a JSON object", None));
    }
    Ok((typed(&value)?, typed(&value)?))
}

fn typed<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        match path.as_str() {
            "." | "" => ApiError::invalid(format!("invalid request body: {}", e.inner()), None),
            p => ApiError::invalid(format!("invalid value for `{p}`: {}", e.inner()), Some(p)),
        }
    })
}
