//! Per-model queue, batcher and workers (the router/core split of TEI/TGI).
//!
//! ```text
//!  HTTP handlers ──Command::Enqueue──▶ batcher task (tokio) ──WorkerMsg::Run──▶ worker threads (std)
//!        ▲              (bounded by          │  FIFO queue of Sequences,              │ engine.generate_ids
//!        └── oneshot per sequence ───────────┼──────────────────────────────────────────┘
//!                                            ◀──Command::WorkerIdle── (after each batch)
//! ```
//!
//! * The unit of queueing is a [`Sequence`]: one input of a request with its own reply
//!   channel, so a request's inputs may land in different batches.
//! * Admission is bounded: [`ModelQueue::reserve`] refuses (429) when the sequences
//!   waiting would exceed the queue capacity. A request reserves its slots before it is
//!   tokenized (a full queue costs a refused client no CPU) and [`ModelQueue::submit`]s
//!   its sequences into them.
//! * Each [`Sequence`] carries its request's [`tracing::Span`]: what the batcher and the
//!   workers log about a sequence is logged in that span, so it carries the request id.
//! * Static mode: the batcher hands a batch to an idle worker when it is full (`max_batch_size`
//!   sequences or `max_batch_tokens` padded tokens) or when its oldest sequence has waited
//!   `max_wait_ms`. A batch holds only sequences with equal [`GenerationConfig`]s, taken
//!   in arrival order behind the oldest one (FIFO).
//! * Cancellation: a [`Ticket`] per request carries its deadline and a "client gone"
//!   flag. Dead sequences leave the queue (the handler sends [`Command::Prune`] when it
//!   gives up) and, via the [`StepObserver`], the running batch at the next decode step.
//!
//! * Two modes (`batching.mode`). **Continuous** (the default, [`continuous`]): the
//!   batcher admits sequences into each worker's running batch within its budget
//!   (sequences, rows, key/value tokens) and sends them as [`WorkerMsg::Join`]; the
//!   worker adds them between two decode steps and reports what leaves with
//!   [`Command::Left`]. **Static**: the batcher hands a whole batch to an idle worker as
//!   [`WorkerMsg::Run`], which runs it to its end and reports [`Command::WorkerIdle`].

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntGauge};
use tokio::sync::{mpsc, oneshot};

use super::config::{Batching, BatchingMode};
use super::metrics::Metrics;
use continuous::Budget;

pub mod continuous;
use crate::engine::{Engine, Generated};
use crate::generation::{GenerationConfig, Hypothesis, StepObserver};

/// Request-level state shared by its sequences, the handler and the worker.
#[derive(Debug)]
pub struct Ticket {
    cancelled: AtomicBool,
    /// When the request arrived.
    pub arrived: Instant,
    pub deadline: Instant,
}

/// Why a sequence was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The client disconnected (the handler's future was dropped).
    Client,
    Deadline,
}

impl CancelReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::Client => "client",
            CancelReason::Deadline => "deadline",
        }
    }
}

impl Ticket {
    pub fn new(arrived: Instant, deadline: Instant) -> Self {
        Self {
            cancelled: AtomicBool::new(false),
            arrived,
            deadline,
        }
    }

    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// `Some(reason)` once the request's work should be dropped.
    pub fn dead(&self, now: Instant) -> Option<CancelReason> {
        if now >= self.deadline {
            Some(CancelReason::Deadline)
        } else if self.cancelled.load(Ordering::Relaxed) {
            Some(CancelReason::Client)
        } else {
            None
        }
    }
}

/// One input waiting for generation.
pub struct Sequence {
    pub ids: Vec<u32>,
    pub cfg: Arc<GenerationConfig>,
    pub ticket: Arc<Ticket>,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<SequenceResult>,
    /// The request's span (request id, path): worker-side logs about this sequence.
    pub span: tracing::Span,
}

pub type SequenceResult = Result<Finished, SequenceError>;

#[derive(Debug)]
pub struct Finished {
    /// `num_return_sequences` outputs, best first.
    pub outputs: Vec<Generated>,
    pub queue_time: Duration,
    pub inference_time: Duration,
    pub batch_size: usize,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SequenceError {
    #[error("sequence cancelled ({})", .0.as_str())]
    Cancelled(CancelReason),
    /// The batcher or worker dropped the sequence unanswered (shutdown).
    #[error("sequence dropped unanswered")]
    Dropped,
    /// A bug (engine error or panic); the message says what.
    #[error("{0}")]
    Failed(String),
}

/// Messages to the batcher.
pub enum Command {
    Enqueue(Vec<Sequence>),
    /// A request gave up: drop its sequences from the queue now.
    Prune,
    /// Static: worker `n` finished its batch and takes another.
    WorkerIdle(usize),
    /// Continuous: sequences holding this much of worker `n`'s budget left its batch.
    Left(usize, Budget),
    /// Run what is queued without waiting, then stop the workers and exit.
    Shutdown,
}

/// Messages to a worker.
pub enum WorkerMsg {
    /// Static: run this batch to its end.
    Run(Vec<Sequence>),
    /// Continuous: add these to the running batch at the next step boundary.
    Join(Vec<Sequence>),
}

impl WorkerMsg {
    fn into_sequences(self) -> Vec<Sequence> {
        match self {
            WorkerMsg::Run(s) | WorkerMsg::Join(s) => s,
        }
    }
}

/// Why a submission was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("model `{model}` has {queued} of {capacity} sequences queued")]
    QueueFull {
        model: String,
        queued: usize,
        capacity: usize,
    },
    #[error("the model's queue is closed")]
    Closed,
}

/// The handlers' side of a model's queue.
pub struct ModelQueue {
    model: String,
    tx: mpsc::UnboundedSender<Command>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    queue_size: IntGauge,
}

/// Queue slots held for a request between admission and [`ModelQueue::submit`];
/// dropping it unsubmitted (a validation error, a client gone while tokenizing) frees
/// them. Reserved slots count as queued, in the accounting and in `encdec_queue_size`.
pub struct Permit<'a> {
    queue: &'a ModelQueue,
    n: usize,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.queue.release(self.n);
    }
}

impl ModelQueue {
    /// Admission: holds `n` slots, or refuses when the queue would exceed its capacity.
    pub fn reserve(&self, n: usize) -> Result<Permit<'_>, SubmitError> {
        if self.tx.is_closed() {
            return Err(SubmitError::Closed);
        }
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                q.checked_add(n).filter(|&total| total <= self.capacity)
            })
            .map_err(|queued| SubmitError::QueueFull {
                model: self.model.clone(),
                queued,
                capacity: self.capacity,
            })?;
        self.queue_size.add(n as i64);
        Ok(Permit { queue: self, n })
    }

    /// Queues `seqs` (all or none) into the slots `permit` holds (one per sequence).
    pub fn submit(&self, mut permit: Permit<'_>, seqs: Vec<Sequence>) -> Result<(), SubmitError> {
        assert!(
            std::ptr::eq(permit.queue, self) && permit.n == seqs.len(),
            "a permit for {} sequences of this queue, not {}",
            permit.n,
            seqs.len()
        );
        self.tx
            .send(Command::Enqueue(seqs))
            .map_err(|_| SubmitError::Closed)?;
        // The batcher owns the slots now and frees them as it dequeues.
        permit.n = 0;
        Ok(())
    }

    fn release(&self, n: usize) {
        if n > 0 {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            self.queue_size.sub(n as i64);
        }
    }

    /// Tells the batcher that some queued sequences may be dead.
    pub fn prune(&self) {
        let _ = self.tx.send(Command::Prune);
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
    }
}

/// The batcher task and the worker threads of one model, to wait for at shutdown.
pub struct Running {
    pub batcher: tokio::task::JoinHandle<()>,
    pub workers: Vec<std::thread::JoinHandle<()>>,
}

/// Starts a model's batcher (on the current tokio runtime) and `replicas` worker threads.
pub fn start(
    model: &str,
    engine: Arc<Engine>,
    replicas: usize,
    batching: Batching,
    capacity: usize,
    metrics: Arc<Metrics>,
) -> std::io::Result<(ModelQueue, Running)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let queue_size = metrics.queue_size.with_label_values(&[model]);
    queue_size.set(0);
    let mut senders = Vec::with_capacity(replicas);
    let mut workers = Vec::with_capacity(replicas);
    for n in 0..replicas {
        let (wtx, wrx) = std::sync::mpsc::channel::<WorkerMsg>();
        let worker = Worker::new(n, model, engine.clone(), tx.clone(), &metrics);
        let limits = batching.clone();
        let handle = std::thread::Builder::new()
            .name(format!("encdec-{model}-{n}"))
            .spawn(move || match limits.mode {
                BatchingMode::Continuous => worker.run_continuous(wrx, limits),
                BatchingMode::Static => worker.run(wrx),
            })?;
        senders.push(wtx);
        workers.push(handle);
    }
    let batcher = Batcher {
        model: model.to_string(),
        batching,
        queue: VecDeque::new(),
        workers: senders,
        idle: (0..replicas).rev().collect(),
        used: vec![Budget::default(); replicas],
        queued: queued.clone(),
        queue_size: queue_size.clone(),
        metrics,
        draining: false,
    };
    let batcher = tokio::spawn(batcher.run(rx));
    Ok((
        ModelQueue {
            model: model.to_string(),
            tx,
            queued,
            capacity,
            queue_size,
        },
        Running { batcher, workers },
    ))
}

struct Batcher {
    model: String,
    batching: Batching,
    queue: VecDeque<Sequence>,
    workers: Vec<std::sync::mpsc::Sender<WorkerMsg>>,
    /// Static: workers without a batch.
    idle: Vec<usize>,
    /// Continuous: what each worker's running batch holds.
    used: Vec<Budget>,
    queued: Arc<AtomicUsize>,
    queue_size: IntGauge,
    metrics: Arc<Metrics>,
    draining: bool,
}

impl Batcher {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        loop {
            let wake = match self.batching.mode {
                BatchingMode::Static => self.dispatch(),
                BatchingMode::Continuous => {
                    self.admit();
                    None
                }
            };
            let workers_done = match self.batching.mode {
                BatchingMode::Static => self.idle.len() == self.workers.len(),
                BatchingMode::Continuous => self.used.iter().all(|u| *u == Budget::default()),
            };
            if self.draining && self.queue.is_empty() && workers_done {
                break;
            }
            let cmd = match wake {
                Some(at) => tokio::select! {
                    cmd = rx.recv() => cmd,
                    _ = tokio::time::sleep_until(at.into()) => continue,
                },
                None => rx.recv().await,
            };
            match cmd {
                Some(Command::Enqueue(seqs)) => self.queue.extend(seqs),
                Some(Command::Prune) => {}
                Some(Command::WorkerIdle(n)) => self.idle.push(n),
                Some(Command::Left(n, freed)) => self.used[n] = self.used[n].minus(freed),
                Some(Command::Shutdown) | None => self.draining = true,
            }
        }
        tracing::debug!(model = %self.model, "batcher stopped");
        // Dropping `self.workers` ends the worker threads.
    }

    /// Removes `n` sequences from the queue's accounting.
    fn dequeued(&self, n: usize) {
        if n > 0 {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            self.queue_size.sub(n as i64);
        }
    }

    /// Drops dead sequences from the queue.
    fn prune(&mut self) {
        let now = Instant::now();
        let before = self.queue.len();
        let mut kept = VecDeque::with_capacity(before);
        for seq in self.queue.drain(..) {
            match seq.ticket.dead(now) {
                None => kept.push_back(seq),
                Some(reason) => {
                    self.metrics
                        .sequences_cancelled
                        .with_label_values(&[self.model.as_str(), reason.as_str()])
                        .inc();
                    seq.span.in_scope(|| {
                        tracing::debug!(model = %self.model, reason = reason.as_str(), "sequence dropped from the queue");
                    });
                    let _ = seq.reply.send(Err(SequenceError::Cancelled(reason)));
                }
            }
        }
        self.queue = kept;
        self.dequeued(before - self.queue.len());
    }

    /// Continuous: sends every queued sequence that fits a worker's budget to it.
    fn admit(&mut self) {
        self.prune();
        if self.queue.is_empty() {
            return;
        }
        let joins = continuous::admit(&self.queue, &mut self.used, &self.batching, Instant::now());
        let mut to: Vec<Option<usize>> = vec![None; self.queue.len()];
        for (w, picked) in joins.iter().enumerate() {
            for &i in picked {
                to[i] = Some(w);
            }
        }
        let mut batches: Vec<Vec<Sequence>> = (0..self.workers.len()).map(|_| Vec::new()).collect();
        let mut rest = VecDeque::with_capacity(self.queue.len());
        for (seq, to) in self.queue.drain(..).zip(to) {
            match to {
                Some(w) => batches[w].push(seq),
                None => rest.push_back(seq),
            }
        }
        self.queue = rest;
        for (w, batch) in batches.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            self.dequeued(batch.len());
            if let Err(std::sync::mpsc::SendError(msg)) =
                self.workers[w].send(WorkerMsg::Join(batch))
            {
                for seq in msg.into_sequences() {
                    self.used[w] = self.used[w].minus(Budget::of(seq.ids.len(), &seq.cfg));
                    seq.span.in_scope(|| {
                        tracing::error!(model = %self.model, worker = w, "worker thread is gone");
                    });
                    let _ = seq
                        .reply
                        .send(Err(SequenceError::Failed("worker thread is gone".into())));
                }
            }
        }
    }

    /// Static: hands out every batch that is due; returns when the next one will be.
    fn dispatch(&mut self) -> Option<Instant> {
        self.prune();
        while !self.queue.is_empty() {
            let worker = *self.idle.last()?;
            let (picked, full) = plan(&self.queue, &self.batching);
            if !(full || self.draining) {
                let due = self.queue[0].enqueued + Duration::from_millis(self.batching.max_wait_ms);
                if Instant::now() < due {
                    return Some(due);
                }
            }
            self.idle.pop();
            let mut batch = Vec::with_capacity(picked.len());
            let mut rest = VecDeque::with_capacity(self.queue.len() - picked.len());
            let mut next = picked.iter().peekable();
            for (i, seq) in self.queue.drain(..).enumerate() {
                if next.peek() == Some(&&i) {
                    next.next();
                    batch.push(seq);
                } else {
                    rest.push_back(seq);
                }
            }
            self.queue = rest;
            self.dequeued(batch.len());
            if let Err(std::sync::mpsc::SendError(msg)) =
                self.workers[worker].send(WorkerMsg::Run(batch))
            {
                for seq in msg.into_sequences() {
                    seq.span.in_scope(|| {
                        tracing::error!(model = %self.model, worker, "worker thread is gone");
                    });
                    let _ = seq
                        .reply
                        .send(Err(SequenceError::Failed("worker thread is gone".into())));
                }
            }
        }
        None
    }
}

/// Which queued sequences form the next batch (indices, ascending) and whether the
/// batch is full. The oldest sequence always goes; the others follow in arrival order
/// if their parameters equal its own, until a limit would be passed.
fn plan(queue: &VecDeque<Sequence>, limits: &Batching) -> (Vec<usize>, bool) {
    let head = &queue[0];
    let beams = head.cfg.num_beams.max(1);
    let mut picked = vec![0];
    let mut longest = head.ids.len();
    for (i, seq) in queue.iter().enumerate().skip(1) {
        if picked.len() >= limits.max_batch_size {
            return (picked, true);
        }
        if !(Arc::ptr_eq(&seq.cfg, &head.cfg) || *seq.cfg == *head.cfg) {
            continue;
        }
        let l = longest.max(seq.ids.len());
        if l * (picked.len() + 1) * beams > limits.max_batch_tokens {
            return (picked, true);
        }
        picked.push(i);
        longest = l;
    }
    // Full when not even a row no longer than the longest so far would still fit.
    let full = picked.len() >= limits.max_batch_size
        || longest * (picked.len() + 1) * beams > limits.max_batch_tokens;
    (picked, full)
}

/// Metric handles a worker updates, resolved once.
struct WorkerMetrics {
    batch_size: Histogram,
    batch_tokens: Histogram,
    queue_duration: Histogram,
    inference_duration: Histogram,
    decode_step: Histogram,
    generated_hist: Histogram,
    generated_total: prometheus::IntCounter,
    running: IntGauge,
    rows: IntGauge,
    kv_tokens: IntGauge,
    joins: prometheus::IntCounter,
    leaves_finished: prometheus::IntCounter,
    leaves_cancelled: prometheus::IntCounter,
    leaves_failed: prometheus::IntCounter,
    time_to_first_step: Histogram,
    cancelled_client: prometheus::IntCounter,
    cancelled_deadline: prometheus::IntCounter,
}

struct Worker {
    n: usize,
    model: String,
    engine: Arc<Engine>,
    done: mpsc::UnboundedSender<Command>,
    m: WorkerMetrics,
}

/// Lets the engine drop dead sequences at step boundaries, times each step, and answers
/// each request as soon as its own sequence finishes.
struct Observer<'a> {
    worker: &'a Worker,
    tickets: Vec<Arc<Ticket>>,
    enqueued: Vec<Instant>,
    /// Taken when the reply is sent; what is left after generation had no answer yet.
    replies: Vec<std::sync::Mutex<Option<oneshot::Sender<SequenceResult>>>>,
    spans: Vec<tracing::Span>,
    started: Instant,
    batch_size: usize,
}

impl Observer<'_> {
    fn take_reply(&self, input: usize) -> Option<oneshot::Sender<SequenceResult>> {
        self.replies[input]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

impl StepObserver for Observer<'_> {
    fn is_cancelled(&self, input: usize) -> bool {
        self.tickets[input].dead(Instant::now()).is_some()
    }

    fn on_step(&self, _rows: usize, elapsed: Duration) {
        self.worker.m.decode_step.observe(elapsed.as_secs_f64());
    }

    fn on_finished(&self, input: usize, hypotheses: &[Hypothesis]) {
        let Some(reply) = self.take_reply(input) else {
            return;
        };
        let _span = self.spans[input].enter();
        let result = match self.worker.engine.with_texts(hypotheses.to_vec()) {
            Ok(outputs) => {
                for g in &outputs {
                    let generated = g.hypothesis.ids.len().saturating_sub(1);
                    self.worker.m.generated_hist.observe(generated as f64);
                    self.worker.m.generated_total.inc_by(generated as u64);
                }
                tracing::debug!(
                    model = %self.worker.model,
                    worker = self.worker.n,
                    inference_ms = self.started.elapsed().as_secs_f64() * 1000.0,
                    "sequence finished"
                );
                Ok(Finished {
                    outputs,
                    queue_time: self.started.duration_since(self.enqueued[input]),
                    inference_time: self.started.elapsed(),
                    batch_size: self.batch_size,
                })
            }
            Err(e) => Err(SequenceError::Failed(format!("decoding failed: {e:#}"))),
        };
        let _ = reply.send(result);
    }
}

impl Worker {
    fn new(
        n: usize,
        model: &str,
        engine: Arc<Engine>,
        done: mpsc::UnboundedSender<Command>,
        metrics: &Metrics,
    ) -> Self {
        let l = &[model];
        let m = WorkerMetrics {
            batch_size: metrics.batch_size.with_label_values(l),
            batch_tokens: metrics.batch_tokens.with_label_values(l),
            queue_duration: metrics.queue_duration.with_label_values(l),
            inference_duration: metrics.inference_duration.with_label_values(l),
            decode_step: metrics.decode_step_duration.with_label_values(l),
            generated_hist: metrics.generated_tokens_hist.with_label_values(l),
            generated_total: metrics.generated_tokens_total.with_label_values(l),
            running: metrics.running_sequences.with_label_values(l),
            rows: metrics.batch_rows.with_label_values(l),
            kv_tokens: metrics.kv_cache_tokens.with_label_values(l),
            joins: metrics.batch_joins.with_label_values(l),
            leaves_finished: metrics.batch_leaves.with_label_values(&[model, "finished"]),
            leaves_cancelled: metrics
                .batch_leaves
                .with_label_values(&[model, "cancelled"]),
            leaves_failed: metrics.batch_leaves.with_label_values(&[model, "failed"]),
            time_to_first_step: metrics.time_to_first_step.with_label_values(l),
            cancelled_client: metrics
                .sequences_cancelled
                .with_label_values(&[model, CancelReason::Client.as_str()]),
            cancelled_deadline: metrics
                .sequences_cancelled
                .with_label_values(&[model, CancelReason::Deadline.as_str()]),
        };
        Self {
            n,
            model: model.to_string(),
            engine,
            done,
            m,
        }
    }

    /// The static worker: one whole batch at a time.
    fn run(self, rx: std::sync::mpsc::Receiver<WorkerMsg>) {
        while let Ok(msg) = rx.recv() {
            self.run_batch(msg.into_sequences());
            if self.done.send(Command::WorkerIdle(self.n)).is_err() {
                break;
            }
        }
    }

    fn cancelled(&self, seq: Sequence, reason: CancelReason) {
        self.cancelled_reply(seq.reply, &seq.span, reason);
    }

    fn cancelled_reply(
        &self,
        reply: oneshot::Sender<SequenceResult>,
        span: &tracing::Span,
        reason: CancelReason,
    ) {
        span.in_scope(|| {
            tracing::debug!(model = %self.model, worker = self.n, reason = reason.as_str(), "sequence cancelled");
        });
        match reason {
            CancelReason::Client => self.m.cancelled_client.inc(),
            CancelReason::Deadline => self.m.cancelled_deadline.inc(),
        }
        let _ = reply.send(Err(SequenceError::Cancelled(reason)));
    }

    fn run_batch(&self, batch: Vec<Sequence>) {
        let started = Instant::now();
        let mut live = Vec::with_capacity(batch.len());
        for seq in batch {
            match seq.ticket.dead(started) {
                Some(reason) => self.cancelled(seq, reason),
                None => live.push(seq),
            }
        }
        if live.is_empty() {
            return;
        }
        let n = live.len();
        let cfg = live[0].cfg.clone();
        let longest = live.iter().map(|s| s.ids.len()).max().unwrap_or(0);
        self.m.batch_size.observe(n as f64);
        self.m
            .batch_tokens
            .observe((longest * n * cfg.num_beams) as f64);
        for s in &live {
            let waited = started.duration_since(s.enqueued);
            self.m.queue_duration.observe(waited.as_secs_f64());
            s.span.in_scope(|| {
                tracing::debug!(
                    model = %self.model,
                    worker = self.n,
                    batch_size = n,
                    queue_ms = waited.as_secs_f64() * 1000.0,
                    "sequence batched"
                );
            });
        }
        self.m.running.add(n as i64);
        let inputs: Vec<Vec<u32>> = live
            .iter_mut()
            .map(|s| std::mem::take(&mut s.ids))
            .collect();
        let mut tickets = Vec::with_capacity(n);
        let mut enqueued = Vec::with_capacity(n);
        let mut replies = Vec::with_capacity(n);
        let mut spans = Vec::with_capacity(n);
        for seq in live {
            tickets.push(seq.ticket);
            enqueued.push(seq.enqueued);
            replies.push(std::sync::Mutex::new(Some(seq.reply)));
            spans.push(seq.span);
        }
        let observer = Observer {
            worker: self,
            tickets,
            enqueued,
            replies,
            spans,
            started,
            batch_size: n,
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.engine.generate_ids(&inputs, &cfg, &observer)
        }));
        self.m.running.sub(n as i64);
        self.m
            .inference_duration
            .observe(started.elapsed().as_secs_f64());
        let failure = match result {
            Ok(Ok(outcomes)) if outcomes.len() == n => None,
            Ok(Ok(outcomes)) => Some(format!(
                "engine returned {} outcomes for {n} inputs",
                outcomes.len()
            )),
            Ok(Err(e)) => Some(format!("generation failed: {e:#}")),
            Err(panic) => Some(format!("generation panicked: {}", panic_message(&*panic))),
        };
        // Finished inputs were answered by `on_finished`; the rest were cancelled, or the
        // batch failed (logged once per sequence, in its request's span).
        let now = Instant::now();
        let mut failed = 0;
        for (input, ticket) in observer.tickets.iter().enumerate() {
            let Some(reply) = observer.take_reply(input) else {
                continue;
            };
            let span = &observer.spans[input];
            match &failure {
                Some(message) => {
                    failed += 1;
                    span.in_scope(|| {
                        tracing::error!(model = %self.model, worker = self.n, %message, "batch failed");
                    });
                    let _ = reply.send(Err(SequenceError::Failed(message.clone())));
                }
                None => {
                    let reason = ticket.dead(now).unwrap_or(CancelReason::Client);
                    self.cancelled_reply(reply, span, reason);
                }
            }
        }
        if let (Some(message), 0) = (&failure, failed) {
            tracing::error!(model = %self.model, worker = self.n, %message, "batch failed after answering every sequence");
        }
    }
}

/// The message a panic carried.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(len: usize, cfg: &Arc<GenerationConfig>) -> Sequence {
        Sequence {
            ids: vec![1; len],
            cfg: cfg.clone(),
            ticket: Arc::new(Ticket::new(
                Instant::now(),
                Instant::now() + Duration::from_secs(60),
            )),
            enqueued: Instant::now(),
            reply: oneshot::channel().0,
            span: tracing::Span::none(),
        }
    }

    fn cfg(num_beams: usize) -> Arc<GenerationConfig> {
        Arc::new(GenerationConfig {
            decoder_start_token_id: 0,
            eos_token_ids: vec![1],
            pad_token_id: Some(0),
            max_length: 10,
            min_length: 0,
            num_beams,
            length_penalty: 1.0,
            early_stopping: crate::generation::EarlyStopping::Bool(false),
            no_repeat_ngram_size: 0,
            repetition_penalty: 1.0,
            num_return_sequences: 1,
        })
    }

    #[test]
    fn plan_groups_equal_configs_fifo_within_limits() {
        let (a, b) = (cfg(1), cfg(2));
        let limits = Batching {
            max_batch_size: 3,
            max_batch_tokens: 100,
            max_wait_ms: 0,
            ..Batching::default()
        };
        let q: VecDeque<_> = [seq(5, &a), seq(5, &b), seq(5, &a), seq(5, &a), seq(5, &a)].into();
        assert_eq!(plan(&q, &limits), (vec![0, 2, 3], true));
        // Token budget: 20 × 2 rows = 40 fits, a third row (60) doesn't at 50.
        let limits = Batching {
            max_batch_tokens: 50,
            ..limits
        };
        let q: VecDeque<_> = [seq(10, &a), seq(20, &a), seq(1, &a)].into();
        assert_eq!(plan(&q, &limits), (vec![0, 1], true));
        // Beams count: 2 beams × 10 tokens × 3 rows = 60 > 50.
        let q: VecDeque<_> = [seq(10, &b), seq(10, &b), seq(10, &b)].into();
        assert_eq!(plan(&q, &limits), (vec![0, 1], true));
        // Not full: wait for company.
        let q: VecDeque<_> = [seq(3, &a), seq(3, &b)].into();
        assert_eq!(plan(&q, &limits), (vec![0], false));
        // An oversized head still goes alone.
        let q: VecDeque<_> = [seq(80, &a)].into();
        assert_eq!(plan(&q, &limits), (vec![0], true));
    }
}
