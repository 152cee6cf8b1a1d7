//! HTTP endpoints, their JSON types and the OpenAPI document.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::{OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

use super::batcher::{CancelReason, Sequence, SequenceError, SubmitError, Ticket};
use super::config::{Batching, LanguagePair, Limits, Postprocess, Preprocess, Task};
use super::error::{ApiError, ErrorBody, ErrorKind};
use super::pool::{check_limits, family_name, Model};
use super::AppState;
use crate::generation::GenerationOverrides;

/// One text or several.
#[derive(Debug, ToSchema)]
#[serde(untagged)]
pub enum Inputs {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for Inputs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Inputs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Inputs, E> {
                Ok(Inputs::One(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Inputs, E> {
                Ok(Inputs::One(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Inputs, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(Inputs::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl Inputs {
    fn into_vec(self) -> Vec<String> {
        match self {
            Inputs::One(s) => vec![s],
            Inputs::Many(v) => v,
        }
    }
}

/// `/summarize`, `/split`, `/fuse`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    pub inputs: Inputs,
    #[serde(default)]
    pub parameters: GenerationOverrides,
    /// A model serving this task; default the first one.
    #[serde(default)]
    pub model: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TranslateRequest {
    pub inputs: Inputs,
    #[serde(default)]
    pub parameters: GenerationOverrides,
    #[serde(default)]
    pub model: Option<String>,
    /// e.g. `en`; routes to the model serving the pair.
    #[serde(default)]
    pub source_lang: Option<String>,
    /// e.g. `de`.
    #[serde(default)]
    pub target_lang: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    pub inputs: Inputs,
    #[serde(default)]
    pub parameters: GenerationOverrides,
    /// Any model by name; default the first one.
    #[serde(default)]
    pub model: Option<String>,
    /// Also return decoder token ids and per-token log-probabilities.
    #[serde(default)]
    pub return_token_ids: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GeneratedText {
    pub text: String,
    /// Beam search: sum of log-probs / length^length_penalty; greedy: sum of log-probs.
    pub score: f32,
    /// `/generate` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generated_tokens: Option<usize>,
    /// Decoder ids, start token first (`return_token_ids`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_logprobs: Option<Vec<f32>>,
}

/// One output per input: an object, or a list of them when `num_return_sequences` > 1.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Output {
    One(GeneratedText),
    Many(Vec<GeneratedText>),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Timings {
    pub total_ms: f64,
    pub tokenization_ms: f64,
    /// Longest wait of any input in the queue.
    pub queue_ms: f64,
    /// Longest generation (batch) time of any input.
    pub inference_ms: f64,
    /// Largest batch any input ran in.
    pub batch_size: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GenerationResponse {
    pub outputs: Vec<Output>,
    pub model: String,
    pub timings: Timings,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelInfo {
    pub name: String,
    pub source: String,
    pub revision: Option<String>,
    pub tasks: Vec<Task>,
    pub translation: Option<LanguagePair>,
    pub encoder: String,
    pub decoder: String,
    pub device: String,
    pub dtype: String,
    pub replicas: usize,
    /// Inputs are truncated (or rejected) beyond this many tokens.
    pub max_input_tokens: usize,
    /// Longest `max_length` the decoder allows.
    pub max_length: usize,
    /// Generation defaults (checkpoint, then config).
    #[schema(value_type = Object)]
    pub defaults: serde_json::Value,
    pub preprocess: Preprocess,
    pub postprocess: Postprocess,
    pub load_seconds: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Info {
    pub version: String,
    pub ready: bool,
    pub models: Vec<ModelInfo>,
    pub limits: Limits,
    pub batching: Batching,
}

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
            .layer(PropagateRequestIdLayer::x_request_id()),
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

/// Summarize text.
#[utoipa::path(post, path = "/summarize", request_body = TaskRequest,
    responses(
        (status = 200, body = GenerationResponse),
        (status = 422, description = "Validation error", body = ErrorBody),
        (status = 413, description = "Payload too large", body = ErrorBody),
        (status = 429, description = "Queue full (see Retry-After)", body = ErrorBody),
        (status = 503, description = "Shutting down", body = ErrorBody),
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
    let mut record = RequestRecord::new(&state, task.as_str());
    let result = async {
        let Json(req) = body?;
        let model = state.pool.for_task(task, req.model.as_deref())?.clone();
        record.model = model.name().to_string();
        run(
            &state,
            &model,
            req.inputs,
            req.parameters,
            false,
            record.started,
        )
        .await
    }
    .await;
    record.finish(result)
}

/// Translate text between the languages of a configured pair.
#[utoipa::path(post, path = "/translate", request_body = TranslateRequest,
    responses((status = 200, body = GenerationResponse), (status = 422, body = ErrorBody)))]
async fn translate(
    State(state): State<Arc<AppState>>,
    body: Result<Json<TranslateRequest>, JsonRejection>,
) -> Response {
    let mut record = RequestRecord::new(&state, Task::Translate.as_str());
    let result = async {
        let Json(req) = body?;
        let model = state
            .pool
            .for_translation(
                req.model.as_deref(),
                req.source_lang.as_deref(),
                req.target_lang.as_deref(),
            )?
            .clone();
        record.model = model.name().to_string();
        run(
            &state,
            &model,
            req.inputs,
            req.parameters,
            false,
            record.started,
        )
        .await
    }
    .await;
    record.finish(result)
}

/// Generate with any model and raw generation parameters.
#[utoipa::path(post, path = "/generate", request_body = GenerateRequest,
    responses((status = 200, body = GenerationResponse), (status = 422, body = ErrorBody)))]
async fn generate(
    State(state): State<Arc<AppState>>,
    body: Result<Json<GenerateRequest>, JsonRejection>,
) -> Response {
    let mut record = RequestRecord::new(&state, "generate");
    let result = async {
        let Json(req) = body?;
        let model = state.pool.any(req.model.as_deref())?.clone();
        record.model = model.name().to_string();
        run(
            &state,
            &model,
            req.inputs,
            req.parameters,
            req.return_token_ids,
            record.started,
        )
        .await
    }
    .await;
    record.finish(result)
}

/// Cancels a request's queued and running sequences unless it completed.
struct CancelOnDrop<'a> {
    ticket: Arc<Ticket>,
    model: &'a Model,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.ticket.cancel();
            self.model.queue.prune();
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Validates, tokenizes, queues and waits: the path every generation endpoint shares.
async fn run(
    state: &Arc<AppState>,
    model: &Arc<Model>,
    inputs: Inputs,
    params: GenerationOverrides,
    details: bool,
    started: Instant,
) -> Result<GenerationResponse, ApiError> {
    state.check_accepting()?;
    let limits = &state.config.limits;
    let texts = inputs.into_vec();
    if texts.is_empty() {
        return Err(ApiError::new(
            ErrorKind::EmptyInput,
            "inputs is an empty list",
        ));
    }
    if texts.len() > limits.max_inputs_per_request {
        return Err(ApiError::new(
            ErrorKind::TooManyInputs,
            format!(
                "{} inputs; at most {} per request",
                texts.len(),
                limits.max_inputs_per_request
            ),
        ));
    }
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(ApiError::new(
            ErrorKind::EmptyInput,
            format!("inputs[{i}] is empty or whitespace"),
        ));
    }
    let cfg = model
        .defaults
        .with_overrides(&params)
        .map_err(|e| ApiError::validation(format!("parameters: {e}")))?;
    check_limits(&cfg, limits, model.max_length)
        .map_err(|e| ApiError::validation(format!("parameters: {e}")))?;

    let tokenize_started = Instant::now();
    let overflow = limits.input_overflow;
    let encoder = model.clone();
    let encoded = tokio::task::spawn_blocking(move || {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| encoder.encode(i, t, overflow))
            .collect::<Result<Vec<Vec<u32>>, ApiError>>()
    })
    .await
    .map_err(|e| ApiError::internal(format!("tokenization task failed: {e}")))??;
    let tokenization = tokenize_started.elapsed();
    let name = [model.name()];
    let m = &state.metrics;
    m.tokenization_duration
        .with_label_values(&name)
        .observe(tokenization.as_secs_f64());
    for ids in &encoded {
        m.input_tokens
            .with_label_values(&name)
            .observe(ids.len() as f64);
        m.input_tokens_total
            .with_label_values(&name)
            .inc_by(ids.len() as u64);
    }

    let deadline = started + Duration::from_millis(limits.request_deadline_ms);
    let ticket = Arc::new(Ticket::new(deadline));
    let cfg = Arc::new(cfg);
    let now = Instant::now();
    let mut replies = Vec::with_capacity(encoded.len());
    let seqs: Vec<Sequence> = encoded
        .into_iter()
        .map(|ids| {
            let (tx, rx) = oneshot::channel();
            replies.push(rx);
            Sequence {
                ids,
                cfg: cfg.clone(),
                ticket: ticket.clone(),
                enqueued: now,
                reply: tx,
            }
        })
        .collect();
    model.queue.submit(seqs).map_err(|e| match e {
        SubmitError::QueueFull { queued, capacity } => ApiError::new(
            ErrorKind::QueueFull,
            format!(
                "model `{}` has {queued} of {capacity} sequences queued; retry later",
                model.name()
            ),
        )
        .with_retry_after(1),
        SubmitError::Closed => {
            ApiError::new(ErrorKind::ShuttingDown, "the server is shutting down")
        }
    })?;
    let mut guard = CancelOnDrop {
        ticket: ticket.clone(),
        model,
        armed: true,
    };

    let wait = async {
        let mut out = Vec::with_capacity(replies.len());
        for rx in replies {
            out.push(rx.await);
        }
        out
    };
    let results = tokio::time::timeout_at(deadline.into(), wait)
        .await
        .map_err(|_| deadline_error(limits))?;
    guard.armed = false;
    drop(guard);

    let post = &model.config.postprocess;
    let mut timings = Timings {
        total_ms: 0.0,
        tokenization_ms: ms(tokenization),
        queue_ms: 0.0,
        inference_ms: 0.0,
        batch_size: 0,
    };
    let mut outputs = Vec::with_capacity(results.len());
    for result in results {
        let finished = match result {
            Err(_) => {
                // The batcher dropped the sequence without an answer: it is shutting down.
                ticket.cancel();
                return Err(ApiError::new(
                    ErrorKind::ShuttingDown,
                    "the server is shutting down",
                ));
            }
            Ok(Err(SequenceError::Cancelled(CancelReason::Deadline))) => {
                return Err(deadline_error(limits))
            }
            Ok(Err(SequenceError::Cancelled(CancelReason::Client))) => {
                return Err(ApiError::new(ErrorKind::Cancelled, "request cancelled"))
            }
            Ok(Err(SequenceError::Failed(msg))) => {
                ticket.cancel();
                return Err(ApiError::internal(msg));
            }
            Ok(Ok(f)) => f,
        };
        timings.queue_ms = timings.queue_ms.max(ms(finished.queue_time));
        timings.inference_ms = timings.inference_ms.max(ms(finished.inference_time));
        timings.batch_size = timings.batch_size.max(finished.batch_size);
        let mut texts: Vec<GeneratedText> = finished
            .outputs
            .into_iter()
            .map(|g| {
                GeneratedText {
                    text: post.apply(g.text),
                    score: g.hypothesis.score,
                    generated_tokens: details.then(|| g.hypothesis.ids.len().saturating_sub(1)),
                    ids: None,
                    token_logprobs: None,
                }
                .with_details(details, g.hypothesis)
            })
            .collect();
        outputs.push(if texts.len() == 1 {
            Output::One(texts.remove(0))
        } else {
            Output::Many(texts)
        });
    }
    timings.total_ms = ms(started.elapsed());
    Ok(GenerationResponse {
        outputs,
        model: model.name().to_string(),
        timings,
    })
}

impl GeneratedText {
    fn with_details(mut self, details: bool, h: crate::generation::Hypothesis) -> Self {
        if details {
            self.ids = Some(h.ids);
            self.token_logprobs = Some(h.token_logprobs);
        }
        self
    }
}

fn deadline_error(limits: &Limits) -> ApiError {
    ApiError::new(
        ErrorKind::DeadlineExceeded,
        format!(
            "request not answered within the {} ms deadline",
            limits.request_deadline_ms
        ),
    )
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
                source: c.source.clone(),
                revision: c.revision.clone(),
                tasks: c.tasks.clone(),
                translation: c.translation.clone(),
                encoder: family_name(ec.encoder.family).into(),
                decoder: family_name(ec.decoder.family).into(),
                device: c.device.clone(),
                dtype: c.dtype.clone(),
                replicas: c.replicas,
                max_input_tokens: m.max_input_tokens,
                max_length: m.max_length,
                defaults: serde_json::to_value(&m.defaults).unwrap_or_default(),
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
            _ => Err(
                ApiError::new(ErrorKind::ShuttingDown, "the server is shutting down")
                    .with_retry_after(1),
            ),
        }
    }

    pub fn check_accepting(&self) -> Result<(), ApiError> {
        match self.phase.load(Ordering::Acquire) {
            super::PHASE_DRAINING => Err(ApiError::new(
                ErrorKind::ShuttingDown,
                "the server is shutting down",
            )
            .with_retry_after(1)),
            _ => Ok(()),
        }
    }
}
