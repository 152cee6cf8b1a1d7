//! API errors: `{"error": code, "message": …, "request_id": …}` with one table from
//! error kind to code and HTTP status (TEI/TGI conventions), and the conversions of the
//! request path's typed errors into it.
//!
//! The request id reaches every error body through a task-local set by
//! [`scope_request_id`] (a middleware), so errors built anywhere below it (extractor
//! rejections, fallbacks, the infer path) carry it without threading it through.

use std::borrow::Cow;

use axum::extract::rejection::JsonRejection;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::batcher::{CancelReason, SequenceError, SubmitError};
use super::pool::LimitExceeded;
use crate::generation::InvalidParameters;

/// Longest client-supplied value quoted back in a message (characters).
const MAX_ECHO_CHARS: usize = 64;
/// Longest message in an error body (characters); serde's messages quote the offending
/// field name or value, which a client controls.
const MAX_MESSAGE_CHARS: usize = 512;

/// Every way a request can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Unknown field, wrong type, parameters outside limits or not valid together.
    Validation,
    UnknownModel,
    UnknownTask,
    EmptyInput,
    InputTooLong,
    TooManyInputs,
    /// One input's work can never fit a running batch (`batching.max_batch_rows`,
    /// `batching.max_batch_kv_tokens`).
    ExceedsBatchBudget,
    InvalidJson,
    UnsupportedMediaType,
    PayloadTooLarge,
    QueueFull,
    NotReady,
    ShuttingDown,
    DeadlineExceeded,
    /// The client went away; never sent, only counted.
    Cancelled,
    NotFound,
    MethodNotAllowed,
    /// Request head over `server.max_header_bytes` / `server.max_headers` (431).
    HeadersTooLarge,
    /// Request head or body not received in time (408).
    RequestTimeout,
    /// Missing or wrong `Authorization: Bearer` key (401).
    Unauthorized,
    /// The server is up but its models are still downloading or loading (503).
    ModelLoading,
    Internal,
}

impl ErrorKind {
    /// The table: kind → (code, status).
    pub fn code_and_status(self) -> (&'static str, StatusCode) {
        use ErrorKind::*;
        match self {
            Validation => ("validation", StatusCode::UNPROCESSABLE_ENTITY),
            UnknownModel => ("unknown_model", StatusCode::UNPROCESSABLE_ENTITY),
            UnknownTask => ("unknown_task", StatusCode::UNPROCESSABLE_ENTITY),
            EmptyInput => ("empty_input", StatusCode::UNPROCESSABLE_ENTITY),
            InputTooLong => ("input_too_long", StatusCode::UNPROCESSABLE_ENTITY),
            TooManyInputs => ("too_many_inputs", StatusCode::UNPROCESSABLE_ENTITY),
            ExceedsBatchBudget => ("exceeds_batch_budget", StatusCode::UNPROCESSABLE_ENTITY),
            InvalidJson => ("invalid_json", StatusCode::BAD_REQUEST),
            UnsupportedMediaType => ("unsupported_media_type", StatusCode::UNSUPPORTED_MEDIA_TYPE),
            PayloadTooLarge => ("payload_too_large", StatusCode::PAYLOAD_TOO_LARGE),
            QueueFull => ("queue_full", StatusCode::TOO_MANY_REQUESTS),
            NotReady => ("not_ready", StatusCode::SERVICE_UNAVAILABLE),
            ShuttingDown => ("shutting_down", StatusCode::SERVICE_UNAVAILABLE),
            DeadlineExceeded => ("deadline_exceeded", StatusCode::GATEWAY_TIMEOUT),
            // nginx's "client closed request"; the client is gone and never sees it.
            Cancelled => (
                "cancelled",
                StatusCode::from_u16(499).expect("499 is a valid status"),
            ),
            NotFound => ("not_found", StatusCode::NOT_FOUND),
            MethodNotAllowed => ("method_not_allowed", StatusCode::METHOD_NOT_ALLOWED),
            HeadersTooLarge => (
                "headers_too_large",
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ),
            RequestTimeout => ("request_timeout", StatusCode::REQUEST_TIMEOUT),
            Unauthorized => ("unauthorized", StatusCode::UNAUTHORIZED),
            ModelLoading => ("model_loading", StatusCode::SERVICE_UNAVAILABLE),
            Internal => ("internal", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    pub fn code(self) -> &'static str {
        self.code_and_status().0
    }

    pub fn status(self) -> StatusCode {
        self.code_and_status().1
    }
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code: validation, unknown_model, unknown_task, empty_input,
    /// input_too_long, too_many_inputs, invalid_json, unsupported_media_type,
    /// payload_too_large, queue_full, not_ready, shutting_down, deadline_exceeded,
    /// not_found, method_not_allowed, headers_too_large, request_timeout, unauthorized,
    /// model_loading, internal.
    pub error: String,
    pub message: String,
    /// The request's `x-request-id` (generated when the client sent none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// Seconds for `Retry-After` (429 / 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: truncated(message.into(), MAX_MESSAGE_CHARS),
            retry_after: None,
        }
    }

    /// The one "shutting down" error: 503 with `Retry-After` (another replica, or this one
    /// after a restart, will answer).
    pub fn shutting_down() -> Self {
        Self::new(ErrorKind::ShuttingDown, "the server is shutting down").with_retry_after(1)
    }

    pub fn deadline_exceeded() -> Self {
        Self::new(
            ErrorKind::DeadlineExceeded,
            "request not answered within the server's deadline (limits.request_deadline_ms)",
        )
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Validation, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, status) = self.kind.code_and_status();
        if status.is_server_error() {
            tracing::error!(code, message = %self.message, "request failed");
        } else {
            tracing::debug!(code, message = %self.message, "request refused");
        }
        let body = ErrorBody {
            error: code.to_string(),
            message: self.message,
            request_id: REQUEST_ID.try_with(|id| id.clone()).ok(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let kind = match &rejection {
            JsonRejection::JsonDataError(_) => ErrorKind::Validation,
            JsonRejection::JsonSyntaxError(_) => ErrorKind::InvalidJson,
            JsonRejection::MissingJsonContentType(_) => ErrorKind::UnsupportedMediaType,
            _ if status == StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::PayloadTooLarge,
            _ if status.is_client_error() => ErrorKind::InvalidJson,
            _ => ErrorKind::Internal,
        };
        let message = match &rejection {
            // "Failed to deserialize the JSON body into the target type: parameters: unknown field ..."
            JsonRejection::JsonDataError(e) => e.body_text(),
            _ if kind == ErrorKind::PayloadTooLarge => "request body is too large".to_string(),
            other => other.body_text(),
        };
        ApiError::new(kind, message)
    }
}

impl From<InvalidParameters> for ApiError {
    fn from(e: InvalidParameters) -> Self {
        ApiError::validation(format!("parameters: {e}"))
    }
}

impl From<LimitExceeded> for ApiError {
    fn from(e: LimitExceeded) -> Self {
        ApiError::validation(format!("parameters: {e}"))
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::QueueFull { .. } => {
                ApiError::new(ErrorKind::QueueFull, format!("{e}; retry later")).with_retry_after(1)
            }
            SubmitError::Closed => ApiError::shutting_down(),
        }
    }
}

impl From<SequenceError> for ApiError {
    fn from(e: SequenceError) -> Self {
        match e {
            SequenceError::Cancelled(CancelReason::Deadline) => ApiError::deadline_exceeded(),
            SequenceError::Cancelled(CancelReason::Client) => {
                ApiError::new(ErrorKind::Cancelled, "request cancelled")
            }
            // The batcher dropped the sequence without an answer: it is shutting down.
            SequenceError::Dropped => ApiError::shutting_down(),
            SequenceError::Failed(msg) => ApiError::internal(msg),
        }
    }
}

/// A client-supplied value fit to quote in a message: at most [`MAX_ECHO_CHARS`]
/// characters, longer ones cut with `…` (a 100 KB model name is not sent back).
pub fn echo(value: &str) -> Cow<'_, str> {
    match value.char_indices().nth(MAX_ECHO_CHARS) {
        None => Cow::Borrowed(value),
        Some((at, _)) => Cow::Owned(format!("{}…", &value[..at])),
    }
}

fn truncated(mut s: String, max_chars: usize) -> String {
    if let Some((at, _)) = s.char_indices().nth(max_chars) {
        s.truncate(at);
        s.push('…');
    }
    s
}

tokio::task_local! {
    /// The request id of the request being handled (see [`scope_request_id`]).
    static REQUEST_ID: String;
}

/// Middleware (inside the layer that sets `x-request-id`): makes the request id available
/// to every [`ApiError`] built while handling the request.
pub async fn scope_request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    REQUEST_ID.scope(id, next.run(req)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_and_messages_are_bounded() {
        assert_eq!(echo("short"), "short");
        let long = "é".repeat(100_000);
        let e = echo(&long);
        assert_eq!(e.chars().count(), MAX_ECHO_CHARS + 1);
        assert!(e.ends_with('…'));
        let err = ApiError::validation(long);
        assert_eq!(err.message.chars().count(), MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn shutting_down_always_has_retry_after() {
        for e in [
            ApiError::shutting_down(),
            SubmitError::Closed.into(),
            SequenceError::Dropped.into(),
        ] {
            assert_eq!(e.kind, ErrorKind::ShuttingDown);
            assert_eq!(e.retry_after, Some(1));
        }
    }
}
