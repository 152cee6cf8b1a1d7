//! API errors: `{"error": code, "message": …}` with one table from error kind to code
//! and HTTP status (TEI/TGI conventions).

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

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
            message: message.into(),
            retry_after: None,
        }
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
