//! What the server answers from the moment it listens: `/health`, `/ready` with each
//! model's loading state, and — until every model is ready — 503 `model_loading` on the
//! model routes. Once the models are up, every other request goes to [`super::api`].
//! Also the access layers that cover every route: API key and CORS.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tower::ServiceExt;

use super::config::ServerConfig;
use super::error::{ApiError, ErrorKind};
use super::metrics::Metrics;
use super::pool::LoadPhase;

/// One model's state as `/ready` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    pub name: String,
    /// `pending`, `downloading`, `loading`, `warming_up`, `ready` or `failed`.
    pub state: &'static str,
    /// Seconds since this model's loading began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// While downloading: the file being fetched and its bytes so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    #[serde(skip)]
    started: Option<Instant>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub file: String,
    pub downloaded_bytes: u64,
    pub total_bytes: u64,
}

/// Shared by the start-up routes, the loader thread and `serve`.
pub struct Startup {
    models: Mutex<Vec<ModelStatus>>,
    /// The API once every model is ready.
    pub(super) app: OnceLock<Router>,
    pub(super) phase: Arc<AtomicU8>,
    pub(super) metrics: Arc<Metrics>,
}

/// Routes answered by the API once the models are loaded (503 `model_loading` before).
const MODEL_ROUTES: [&str; 8] = [
    "/summarize",
    "/split",
    "/fuse",
    "/translate",
    "/generate",
    "/info",
    "/openapi.json",
    "/docs",
];

/// Seconds for `Retry-After` while the models load.
const LOADING_RETRY_AFTER: u64 = 5;

impl Startup {
    pub fn new(names: Vec<String>, phase: Arc<AtomicU8>, metrics: Arc<Metrics>) -> Self {
        let models = names
            .into_iter()
            .map(|name| ModelStatus {
                name,
                state: "pending",
                seconds: None,
                message: None,
                progress: None,
                started: None,
            })
            .collect();
        Self {
            models: Mutex::new(models),
            app: OnceLock::new(),
            phase,
            metrics,
        }
    }

    fn set(&self, index: usize, state: &'static str, message: Option<String>) {
        let mut models = self.models.lock().expect("no panics under this lock");
        if let Some(m) = models.get_mut(index) {
            m.started.get_or_insert_with(Instant::now);
            m.state = state;
            m.message = message;
            if state != "downloading" {
                m.progress = None;
            }
        }
    }

    pub fn phase_of(&self, index: usize, phase: LoadPhase) {
        let state = match phase {
            LoadPhase::Downloading => "downloading",
            LoadPhase::Loading => "loading",
            LoadPhase::WarmingUp => "warming_up",
        };
        self.set(index, state, None);
    }

    /// A download sink for model `index` (see [`crate::hub::with_progress`]).
    pub fn download_progress(
        self: &Arc<Self>,
        index: usize,
    ) -> Arc<dyn crate::hub::DownloadProgress> {
        Arc::new(ModelDownload {
            startup: self.clone(),
            index,
        })
    }

    pub fn ready(&self, index: usize) {
        self.set(index, "ready", None);
    }

    pub fn failed(&self, index: usize, message: String) {
        self.set(index, "failed", Some(message));
    }

    fn snapshot(&self) -> Vec<ModelStatus> {
        let models = self.models.lock().expect("no panics under this lock");
        models
            .iter()
            .map(|m| ModelStatus {
                seconds: m.started.map(|t| t.elapsed().as_secs_f64()),
                ..m.clone()
            })
            .collect()
    }
}

struct ModelDownload {
    startup: Arc<Startup>,
    index: usize,
}

impl crate::hub::DownloadProgress for ModelDownload {
    fn started(&self, file: &str, total: u64) {
        let mut models = self
            .startup
            .models
            .lock()
            .expect("no panics under this lock");
        if let Some(m) = models.get_mut(self.index) {
            m.progress = Some(Progress {
                file: file.to_string(),
                downloaded_bytes: 0,
                total_bytes: total,
            });
        }
    }

    fn advanced(&self, bytes: u64) {
        let mut models = self
            .startup
            .models
            .lock()
            .expect("no panics under this lock");
        if let Some(p) = models.get_mut(self.index).and_then(|m| m.progress.as_mut()) {
            p.downloaded_bytes = p.downloaded_bytes.saturating_add(bytes);
        }
    }
}

#[derive(Serialize)]
struct Readiness {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    /// `loading`, `ready`, `failed` or `shutting_down`.
    status: &'static str,
    models: Vec<ModelStatus>,
}

/// The routes served from the start, in front of the API, with the access layers.
pub fn router(startup: Arc<Startup>, server: &ServerConfig) -> Router {
    let mut router = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .fallback(dispatch)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(startup);
    if let Some(key) = &server.api_key {
        let expected: Arc<str> = format!("Bearer {key}").into();
        router = router.layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let expected = expected.clone();
                async move { require_key(&expected, req, next).await }
            },
        ));
    }
    let router = super::api::with_request_layers(router);
    match cors(&server.cors_allow_origins) {
        // Outside the key check: browsers send preflights without credentials.
        Some(layer) => router.layer(layer),
        None => router,
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// 200 once every model is ready (and not shutting down); else 503 with each model's state.
async fn ready(State(s): State<Arc<Startup>>) -> Response {
    let models = s.snapshot();
    let phase = s.phase.load(Ordering::Acquire);
    let failed = models.iter().find(|m| m.state == "failed");
    let (status, kind, message, retry) = if phase >= super::PHASE_UNREADY {
        (
            "shutting_down",
            Some(ErrorKind::ShuttingDown),
            "the server is shutting down".to_string(),
            1,
        )
    } else if let Some(f) = failed {
        (
            "failed",
            Some(ErrorKind::NotReady),
            format!("model `{}` failed to load", f.name),
            LOADING_RETRY_AFTER,
        )
    } else if phase == super::PHASE_READY {
        ("ready", None, String::new(), 0)
    } else {
        let done = models.iter().filter(|m| m.state == "ready").count();
        (
            "loading",
            Some(ErrorKind::ModelLoading),
            format!("{done} of {} models ready", models.len()),
            LOADING_RETRY_AFTER,
        )
    };
    let body = Readiness {
        error: kind.map(ErrorKind::code),
        message: kind.map(|_| message),
        status,
        models,
    };
    match kind {
        None => Json(body).into_response(),
        Some(k) => {
            let mut r = (k.status(), Json(body)).into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry));
            r
        }
    }
}

/// Everything but `/health` and `/ready`: the API once it is up; until then
/// `model_loading` on its routes, the metrics, and JSON 404s.
async fn dispatch(State(s): State<Arc<Startup>>, req: Request) -> Response {
    if let Some(app) = s.app.get() {
        return match app.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
    }
    let path = req.uri().path();
    if path == "/metrics" && req.method() == Method::GET {
        return (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            s.metrics.render(),
        )
            .into_response();
    }
    if MODEL_ROUTES
        .iter()
        .any(|r| path == *r || path.starts_with(&format!("{r}/")))
    {
        return ApiError::new(
            ErrorKind::ModelLoading,
            "the models are still loading; see /ready",
        )
        .with_retry_after(LOADING_RETRY_AFTER)
        .into_response();
    }
    ApiError::new(ErrorKind::NotFound, "no such endpoint").into_response()
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        "method not allowed on this endpoint",
    )
}

/// `Authorization: Bearer <key>` on every route but `/health`.
async fn require_key(expected: &str, req: Request, next: Next) -> Response {
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if constant_time_eq(given, expected.as_bytes()) {
        return next.run(req).await;
    }
    let message = if given.is_empty() {
        "missing `Authorization: Bearer <key>` header"
    } else {
        "wrong API key"
    };
    let mut r = ApiError::new(ErrorKind::Unauthorized, message).into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// Compares without stopping at the first difference (the key's length may leak).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The CORS layer for `origins` (`*`: any), or none when empty.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                header::HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                header::HeaderName::from_static("x-request-id"),
                header::RETRY_AFTER,
            ])
            .max_age(std::time::Duration::from_secs(3600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_comparison() {
        assert!(constant_time_eq(b"Bearer k", b"Bearer k"));
        assert!(!constant_time_eq(b"Bearer j", b"Bearer k"));
        assert!(!constant_time_eq(b"Bearer", b"Bearer k"));
    }
}
