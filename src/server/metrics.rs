//! Prometheus metrics (prefix `encdec_`, durations in seconds). Each server owns its
//! registry, so several servers can live in one process (tests).

use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Requests received, by task and model (`model` is empty when routing failed).
    pub requests: IntCounterVec,
    pub requests_success: IntCounterVec,
    /// Failed requests by task, model and error code.
    pub requests_failed: IntCounterVec,
    /// Time to answer a successful request.
    pub request_duration: HistogramVec,
    /// Per sequence: enqueued → its batch starts.
    pub queue_duration: HistogramVec,
    /// Per request: pre-processing and tokenization of its inputs.
    pub tokenization_duration: HistogramVec,
    /// Per batch: generate (all decode steps) and detokenization.
    pub inference_duration: HistogramVec,
    pub decode_step_duration: HistogramVec,
    /// Sequences per batch.
    pub batch_size: HistogramVec,
    /// Padded tokens per batch: longest input × sequences × beams.
    pub batch_tokens: HistogramVec,
    pub input_tokens: HistogramVec,
    pub generated_tokens_hist: HistogramVec,
    pub input_tokens_total: IntCounterVec,
    pub generated_tokens_total: IntCounterVec,
    /// Sequences waiting in the model's queue.
    pub queue_size: IntGaugeVec,
    /// Sequences in running batches.
    pub running_sequences: IntGaugeVec,
    /// Continuous batching: decoder rows (sequences × beams) in running batches.
    pub batch_rows: IntGaugeVec,
    /// Continuous batching: key/value-cache tokens held (decoder positions, a prefix
    /// shared by beams counted once, and encoder positions).
    pub kv_cache_tokens: IntGaugeVec,
    /// Continuous batching: sequences that joined a running batch.
    pub batch_joins: IntCounterVec,
    /// Continuous batching: sequences that left a running batch, by reason
    /// (`finished`, `cancelled`, `failed`).
    pub batch_leaves: IntCounterVec,
    /// Continuous batching: request arrival → the first decode step of a sequence.
    pub time_to_first_step: HistogramVec,
    /// Sequences dropped before finishing, by reason (`client`, `deadline`).
    pub sequences_cancelled: IntCounterVec,
    /// 1 once the model is loaded and warmed up.
    pub model_loaded: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let gauge = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let hist = |name: &str,
                    help: &str,
                    labels: &[&str],
                    buckets: Vec<f64>|
         -> prometheus::Result<HistogramVec> {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        // 1 ms … 131 s; 50 µs … 1.6 s; 1 … 4096; 16 … 262144.
        let seconds = || exponential_buckets(0.001, 2.0, 18);
        let step = || exponential_buckets(0.000_05, 2.0, 16);
        let counts = || exponential_buckets(1.0, 2.0, 13);
        let tokens = || exponential_buckets(16.0, 2.0, 15);
        let tm = &["task", "model"];
        let m = &["model"];
        Ok(Self {
            requests: counter("encdec_requests_total", "Requests received", tm)?,
            requests_success: counter(
                "encdec_requests_success_total",
                "Requests answered successfully",
                tm,
            )?,
            requests_failed: counter(
                "encdec_requests_failed_total",
                "Requests that failed, by error code",
                &["task", "model", "code"],
            )?,
            request_duration: hist(
                "encdec_request_duration_seconds",
                "Time to answer a successful request",
                tm,
                seconds()?,
            )?,
            queue_duration: hist(
                "encdec_request_queue_duration_seconds",
                "Time a sequence waited in the queue",
                m,
                seconds()?,
            )?,
            tokenization_duration: hist(
                "encdec_request_tokenization_duration_seconds",
                "Pre-processing and tokenization time of a request",
                m,
                step()?,
            )?,
            inference_duration: hist(
                "encdec_batch_inference_duration_seconds",
                "Generation and detokenization time of a batch",
                m,
                seconds()?,
            )?,
            decode_step_duration: hist(
                "encdec_decode_step_duration_seconds",
                "Time of one decoder step of a batch",
                m,
                step()?,
            )?,
            batch_size: hist("encdec_batch_size", "Sequences per batch", m, counts()?)?,
            batch_tokens: hist(
                "encdec_batch_tokens",
                "Padded input tokens per batch (longest input x sequences x beams)",
                m,
                tokens()?,
            )?,
            input_tokens: hist(
                "encdec_request_input_tokens",
                "Input tokens per sequence (after truncation)",
                m,
                counts()?,
            )?,
            generated_tokens_hist: hist(
                "encdec_request_generated_tokens",
                "Generated tokens per returned sequence",
                m,
                counts()?,
            )?,
            input_tokens_total: counter(
                "encdec_input_tokens_total",
                "Input tokens of all sequences",
                m,
            )?,
            generated_tokens_total: counter(
                "encdec_generated_tokens_total",
                "Generated tokens of all returned sequences",
                m,
            )?,
            queue_size: gauge("encdec_queue_size", "Sequences waiting in the queue", m)?,
            running_sequences: gauge(
                "encdec_running_sequences",
                "Sequences in running batches",
                m,
            )?,
            batch_rows: gauge(
                "encdec_batch_rows",
                "Decoder rows (sequences x beams) in running batches",
                m,
            )?,
            kv_cache_tokens: gauge(
                "encdec_kv_cache_tokens",
                "Key/value-cache tokens held by running batches",
                m,
            )?,
            batch_joins: counter(
                "encdec_batch_joins_total",
                "Sequences that joined a running batch",
                m,
            )?,
            batch_leaves: counter(
                "encdec_batch_leaves_total",
                "Sequences that left a running batch, by reason",
                &["model", "reason"],
            )?,
            time_to_first_step: hist(
                "encdec_time_to_first_step_seconds",
                "Request arrival to the first decode step of a sequence",
                m,
                seconds()?,
            )?,
            sequences_cancelled: counter(
                "encdec_sequences_cancelled_total",
                "Sequences dropped before finishing (client gone, deadline passed)",
                &["model", "reason"],
            )?,
            model_loaded: gauge(
                "encdec_model_loaded",
                "1 when the model is loaded and warmed up",
                m,
            )?,
            registry,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding metrics into memory");
        String::from_utf8(buf).expect("metrics are UTF-8")
    }
}
