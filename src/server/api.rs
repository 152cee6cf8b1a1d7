//! HTTP endpoints and the OpenAPI document. The generation endpoints are thin: each
//! picks its model and hands the request to [`infer`](super::infer), then shapes the JSON
//! ([`super::types`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use super::config::Task;
use super::error::{ApiError, ErrorBody, ErrorKind};
use super::infer::{infer, InferRequest, Inference};
use super::pool::{Model, Pool};
use super::types::{
    GenerateRequest, GeneratedText, GenerationResponse, Info, Inputs, ModelInfo, Output, Status,
    TaskRequest, Timings, TranslateRequest,
};
use super::AppState;
use crate::generation::GenerationOverrides;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "encdec",
        description = "Inference server for warm-started encoder-decoder models"
    ),
    paths(
        summarize, split, fuse, translate, generate, health, ready, info, metrics
    ),
    components(schemas(
        // `types`: request and response bodies.
        TaskRequest,
        TranslateRequest,
        GenerateRequest,
        GenerationOverrides,
        Inputs,
        GenerationResponse,
        Output,
        GeneratedText,
        Timings,
        ErrorBody,
        Status,
        Info,
        ModelInfo
    ))
)]
pub struct ApiDoc;

/// Every route, with request ids, access logs and the body limit.
pub fn router(state: Arc<AppState>) -> Router {
    with_request_layers(routes(state))
}

/// Every route with the body limit (the server wraps them in [`with_request_layers`]
/// together with its start-up routes).
pub fn routes(state: Arc<AppState>) -> Router {
    let limit = state.config.limits.max_payload_bytes;
    Router::new()
        .route("/summarize", post(summarize))
        .route("/split", post(split))
        .route("/fuse", post(fuse))
        .route("/translate", post(translate))
        .route("/generate", post(generate))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Request ids (`x-request-id`, generated unless sent) and access logs.
pub fn with_request_layers(router: Router) -> Router {
    router.layer(
        tower::ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(|req: &axum::http::Request<_>| {
                        let id = req
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        tracing::info_span!(
                            "request",
                            method = %req.method(),
                            path = %req.uri().path(),
                            request_id = %id,
                        )
                    })
                    .on_response(
                        DefaultOnResponse::new()
                            .level(tracing::Level::INFO)
                            .latency_unit(tower_http::LatencyUnit::Millis),
                    ),
            )
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(axum::middleware::from_fn(super::error::scope_request_id)),
    )
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorKind::NotFound, "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        "method not allowed on this endpoint",
    )
}

/// Records a request's outcome in the metrics, also when the client goes away (drop).
struct RequestRecord {
    state: Arc<AppState>,
    task: &'static str,
    model: String,
    started: Instant,
    done: bool,
}

impl RequestRecord {
    fn new(state: &Arc<AppState>, task: &'static str) -> Self {
        Self {
            state: state.clone(),
            task,
            model: String::new(),
            started: Instant::now(),
            done: false,
        }
    }

    fn count(&self, error: Option<ErrorKind>) {
        let m = &self.state.metrics;
        let labels = [self.task, self.model.as_str()];
        m.requests.with_label_values(&labels).inc();
        match error {
            None => {
                m.requests_success.with_label_values(&labels).inc();
                m.request_duration
                    .with_label_values(&labels)
                    .observe(self.started.elapsed().as_secs_f64());
            }
            Some(kind) => m
                .requests_failed
                .with_label_values(&[self.task, self.model.as_str(), kind.code()])
                .inc(),
        }
    }

    fn finish(mut self, result: Result<GenerationResponse, ApiError>) -> Response {
        self.done = true;
        self.count(result.as_ref().err().map(|e| e.kind));
        match result {
            Ok(body) => Json(body).into_response(),
            Err(e) => e.into_response(),
        }
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        if !self.done {
            tracing::info!(task = self.task, model = %self.model, "client went away");
            self.count(Some(ErrorKind::Cancelled));
        }
    }
}

/// What the shared handler body needs from a generation request.
trait GenerationRequest {
    fn into_parts(self) -> (Inputs, GenerationOverrides, bool);
}

impl GenerationRequest for TaskRequest {
    fn into_parts(self) -> (Inputs, GenerationOverrides, bool) {
        (self.inputs, self.parameters, false)
    }
}

impl GenerationRequest for TranslateRequest {
    fn into_parts(self) -> (Inputs, GenerationOverrides, bool) {
        (self.inputs, self.parameters, false)
    }
}

impl GenerationRequest for GenerateRequest {
    fn into_parts(self) -> (Inputs, GenerationOverrides, bool) {
        (self.inputs, self.parameters, self.return_token_ids)
    }
}

/// The one body of every generation endpoint: parse, route to a model, infer, shape.
async fn handle<R: GenerationRequest>(
    state: Arc<AppState>,
    endpoint: &'static str,
    body: Result<Json<R>, JsonRejection>,
    route: impl FnOnce(&Pool, &R) -> Result<Arc<Model>, ApiError>,
) -> Response {
    let mut record = RequestRecord::new(&state, endpoint);
    let result = async {
        let Json(req) = body?;
        let model = route(&state.pool, &req)?;
        record.model = model.name().to_string();
        let (inputs, params, details) = req.into_parts();
        let request = InferRequest {
            texts: inputs.into_vec(),
            params,
            started: record.started,
        };
        let inference = infer(&state, &model, request).await?;
        Ok(respond(&model, inference, details))
    }
    .await;
    record.finish(result)
}

/// Summarize text.
#[utoipa::path(post, path = "/summarize", request_body = TaskRequest,
    responses(
        (status = 200, body = GenerationResponse),
        (status = 422, description = "Validation error", body = ErrorBody),
        (status = 413, description = "Payload too large", body = ErrorBody),
        (status = 429, description = "Queue full (see Retry-After)", body = ErrorBody),
        (status = 503, description = "Shutting down (see Retry-After)", body = ErrorBody),
        (status = 504, description = "Request deadline exceeded", body = ErrorBody),
    ))]
async fn summarize(
    State(state): State<Arc<AppState>>,
    body: Result<Json<TaskRequest>, JsonRejection>,
) -> Response {
    task_endpoint(state, Task::Summarize, body).await
}

/// Split a sentence into several.
#[utoipa::path(post, path = "/split", request_body = TaskRequest,
    responses((status = 200, body = GenerationResponse), (status = 422, body = ErrorBody)))]
async fn split(
    State(state): State<Arc<AppState>>,
    body: Result<Json<TaskRequest>, JsonRejection>,
) -> Response {
    task_endpoint(state, Task::Split, body).await
}

/// Fuse sentences into one.
#[utoipa::path(post, path = "/fuse", request_body = TaskRequest,
    responses((status = 200, body = GenerationResponse), (status = 422, body = ErrorBody)))]
async fn fuse(
    State(state): State<Arc<AppState>>,
    body: Result<Json<TaskRequest>, JsonRejection>,
) -> Response {
    task_endpoint(state, Task::Fuse, body).await
}

async fn task_endpoint(
    state: Arc<AppState>,
    task: Task,
    body: Result<Json<TaskRequest>, JsonRejection>,
) -> Response {
    handle(state, task.as_str(), body, |pool, req| {
        pool.for_task(task, req.model.as_deref()).cloned()
    })
    .await
}

/// Translate text between the languages of a configured pair.
#[utoipa::path(post, path = "/translate", request_body = TranslateRequest,
    responses((status = 200, body = GenerationResponse), (status = 422, body = ErrorBody)))]
async fn translate(
    State(state): State<Arc<AppState>>,
    body: Result<Json<TranslateRequest>, JsonRejection>,
) -> Response {
    handle(state, Task::Translate.as_str(), body, |pool, req| {
        pool.for_translation(
            req.model.as_deref(),
            req.source_lang.as_deref(),
            req.target_lang.as_deref(),
        )
        .cloned()
    })
    .await
}

/// Generate with any model and raw generation parameters.
#[utoipa::path(post, path = "/generate", request_body = GenerateRequest,
    responses((status = 200, body = GenerationResponse), (status = 422, body = ErrorBody)))]
async fn generate(
    State(state): State<Arc<AppState>>,
    body: Result<Json<GenerateRequest>, JsonRejection>,
) -> Response {
    handle(state, "generate", body, |pool, req| {
        pool.any(req.model.as_deref()).cloned()
    })
    .await
}

/// The JSON of an inference: post-processed texts, and token details on request.
fn respond(model: &Model, inference: Inference, details: bool) -> GenerationResponse {
    let post = &model.config.postprocess;
    let Inference { outputs, timings } = inference;
    let outputs = outputs
        .into_iter()
        .map(|generated| {
            let mut texts: Vec<GeneratedText> = generated
                .into_iter()
                .map(|g| {
                    let h = g.hypothesis;
                    GeneratedText {
                        text: post.apply(g.text),
                        score: h.score,
                        generated_tokens: details.then(|| h.ids.len().saturating_sub(1)),
                        token_logprobs: details.then_some(h.token_logprobs),
                        ids: details.then_some(h.ids),
                    }
                })
                .collect();
            if texts.len() == 1 {
                Output::One(texts.remove(0))
            } else {
                Output::Many(texts)
            }
        })
        .collect();
    GenerationResponse {
        outputs,
        model: model.name().to_string(),
        timings,
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Status)))]
async fn health() -> Json<Status> {
    Json(Status {
        status: "ok".into(),
    })
}

/// Readiness: every model loaded and warmed up, and not shutting down.
#[utoipa::path(get, path = "/ready", responses(
    (status = 200, body = Status),
    (status = 503, description = "Not ready or shutting down", body = ErrorBody)))]
async fn ready(State(state): State<Arc<AppState>>) -> Result<Json<Status>, ApiError> {
    state.check_ready()?;
    Ok(Json(Status {
        status: "ready".into(),
    }))
}

/// Models, tasks, defaults, limits and version.
#[utoipa::path(get, path = "/info", responses((status = 200, body = Info)))]
async fn info(State(state): State<Arc<AppState>>) -> Json<Info> {
    let models = state
        .pool
        .models
        .iter()
        .map(|m| {
            let c = &m.config;
            let ec = m.engine.config();
            ModelInfo {
                name: c.name.clone(),
                source: m.public_source(),
                revision: c.revision.clone(),
                tasks: c.tasks.clone(),
                translation: c.translation.clone(),
                encoder: ec.encoder.family.model_type().into(),
                decoder: ec.decoder.family.model_type().into(),
                device: c.device.clone(),
                dtype: c.dtype.clone(),
                replicas: c.replicas,
                max_input_tokens: m.max_input_tokens,
                max_length: m.max_length,
                defaults: serde_json::to_value(&m.defaults).unwrap_or_default(),
                tokenizer: c.tokenizer.clone(),
                preprocess: c.preprocess.clone(),
                postprocess: c.postprocess.clone(),
                load_seconds: m.load_seconds,
            }
        })
        .collect();
    Json(Info {
        version: env!("CARGO_PKG_VERSION").into(),
        ready: state.check_ready().is_ok(),
        models,
        limits: state.config.limits.clone(),
        batching: state.config.batching.clone(),
        cpu_kernels: crate::model::kernel_choice(),
    })
}

/// Prometheus metrics (text format).
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain")))]
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

impl AppState {
    pub fn check_ready(&self) -> Result<(), ApiError> {
        match self.phase.load(Ordering::Acquire) {
            super::PHASE_READY => Ok(()),
            super::PHASE_STARTING => Err(ApiError::new(ErrorKind::NotReady, "models are loading")),
            _ => Err(ApiError::shutting_down()),
        }
    }

    pub fn check_accepting(&self) -> Result<(), ApiError> {
        match self.phase.load(Ordering::Acquire) {
            super::PHASE_DRAINING => Err(ApiError::shutting_down()),
            _ => Ok(()),
        }
    }
}
