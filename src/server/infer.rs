//! The request path every generation endpoint shares (as text-embeddings-inference's
//! `core/src/infer.rs`): validate the inputs and parameters, admit the request into the
//! model's queue, tokenize, submit one [`Sequence`] per input, and await the answers.
//!
//! Order matters for a loaded server: everything that costs no CPU (validation, limits,
//! queue admission) comes before tokenization, so a refused request is refused cheaply,
//! and tokenization itself reads no more of a text than the input limit needs
//! ([`super::pool::LoadedModel::encode`]). The handlers (`api`) only pick the model and
//! shape the JSON.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::batcher::continuous::Budget;
use super::batcher::{Sequence, SequenceError, Ticket};
use super::config::{Batching, BatchingMode, Limits};
use super::error::{ApiError, ErrorKind};
use super::pool::{check_limits, Model};
use super::types::Timings;
use super::AppState;
use crate::engine::Generated;
use crate::generation::{GenerationConfig, GenerationOverrides};

/// A generation request, as the endpoints hand it over.
pub struct InferRequest {
    pub texts: Vec<String>,
    pub params: GenerationOverrides,
    /// When the request arrived: its deadline and `total_ms` count from here.
    pub started: Instant,
}

/// Every input's outputs (`num_return_sequences` of them, best first) and the timings.
pub struct Inference {
    pub outputs: Vec<Vec<Generated>>,
    pub timings: Timings,
}

/// Validates, admits, tokenizes, queues and waits.
pub async fn infer(
    state: &AppState,
    model: &Arc<Model>,
    req: InferRequest,
) -> Result<Inference, ApiError> {
    state.check_accepting()?;
    let limits = &state.config.limits;
    validate_inputs(&req.texts, limits)?;
    let cfg = model.defaults.with_overrides(&req.params)?;
    check_limits(&cfg, limits, model.max_length)?;
    let batching = &state.config.batching;
    let continuous = batching.mode == BatchingMode::Continuous;
    if continuous {
        check_budget(&cfg, 1, None, batching)?;
    }
    // Admission before any CPU is spent: a full queue refuses at once.
    let permit = model.queue.reserve(req.texts.len())?;

    let tokenize_started = Instant::now();
    let encoded = tokenize(model, req.texts, limits).await?;
    if continuous {
        for (i, ids) in encoded.iter().enumerate() {
            check_budget(&cfg, ids.len(), Some(i), batching)?;
        }
    }
    let tokenization = tokenize_started.elapsed();
    record_tokenization(state, model, &encoded, tokenization);

    let deadline = deadline(req.started, limits);
    let ticket = Arc::new(Ticket::new(req.started, deadline));
    let cfg = Arc::new(cfg);
    // The handler's span (request id, path): worker-side logs about these sequences.
    let span = tracing::Span::current();
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
                span: span.clone(),
            }
        })
        .collect();
    model.queue.submit(permit, seqs)?;
    // From here on, any way out but success (an error, the client gone) drops the
    // request's remaining work.
    let mut guard = CancelOnDrop {
        ticket,
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
        .map_err(|_| ApiError::deadline_exceeded())?;

    let mut timings = Timings {
        total_ms: 0.0,
        tokenization_ms: ms(tokenization),
        queue_ms: 0.0,
        inference_ms: 0.0,
        batch_size: 0,
    };
    let mut outputs = Vec::with_capacity(results.len());
    for result in results {
        // A reply channel closed unanswered: the batcher is shutting down.
        let finished = result.unwrap_or(Err(SequenceError::Dropped))?;
        timings.queue_ms = timings.queue_ms.max(ms(finished.queue_time));
        timings.inference_ms = timings.inference_ms.max(ms(finished.inference_time));
        timings.batch_size = timings.batch_size.max(finished.batch_size);
        outputs.push(finished.outputs);
    }
    guard.armed = false;
    timings.total_ms = ms(req.started.elapsed());
    Ok(Inference { outputs, timings })
}

/// Continuous batching: refuses work that could never join even an empty batch.
fn check_budget(
    cfg: &GenerationConfig,
    input_tokens: usize,
    input: Option<usize>,
    batching: &Batching,
) -> Result<(), ApiError> {
    Budget::of(input_tokens, cfg)
        .check(batching)
        .map_err(|why| {
            let which = input.map(|i| format!("inputs[{i}]: ")).unwrap_or_default();
            ApiError::new(ErrorKind::ExceedsBatchBudget, format!("{which}{why}"))
        })
}

/// Inputs a request may carry: at least one, at most the limit, none blank.
fn validate_inputs(texts: &[String], limits: &Limits) -> Result<(), ApiError> {
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
    Ok(())
}

/// Pre-processes and tokenizes every input off the async threads.
async fn tokenize(
    model: &Arc<Model>,
    texts: Vec<String>,
    limits: &Limits,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let overflow = limits.input_overflow;
    let model = model.clone();
    tokio::task::spawn_blocking(move || {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| model.encode(i, t, overflow))
            .collect::<Result<Vec<Vec<u32>>, ApiError>>()
    })
    .await
    .map_err(|e| ApiError::internal(format!("tokenization task failed: {e}")))?
}

fn record_tokenization(state: &AppState, model: &Model, encoded: &[Vec<u32>], took: Duration) {
    let name = [model.name()];
    let m = &state.metrics;
    m.tokenization_duration
        .with_label_values(&name)
        .observe(took.as_secs_f64());
    for ids in encoded {
        m.input_tokens
            .with_label_values(&name)
            .observe(ids.len() as f64);
        m.input_tokens_total
            .with_label_values(&name)
            .inc_by(ids.len() as u64);
    }
}

/// `started` + the request deadline; a deadline too far to represent means none.
fn deadline(started: Instant, limits: &Limits) -> Instant {
    const FAR: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
    let wait = Duration::from_millis(limits.request_deadline_ms).min(FAR);
    started.checked_add(wait).unwrap_or(started + FAR)
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
