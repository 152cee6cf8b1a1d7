//! `generate()`: greedy or beam search for encoded inputs, as transformers runs it.
//!
//! Every input owns its search state; the model sees one row per live beam of every
//! unfinished input ([`batch::RunningBatch`]). An input that finishes (or is cancelled)
//! leaves the batch at the next step boundary, and new inputs may join there, each with
//! its own parameters (the server's continuous batching).

pub mod batch;
pub mod beam;
pub mod config;
pub mod greedy;
pub mod processors;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::model::EncoderDecoderModel;
pub use batch::{EntryInfo, Joiner, RunningBatch, StepOutcome};
pub use config::{EarlyStopping, GenerationConfig, GenerationOverrides, InvalidParameters};

/// One returned sequence.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Hypothesis {
    /// Decoder ids, start token first, no padding.
    pub ids: Vec<u32>,
    /// Beam search: `Σ log p / L^length_penalty`; greedy: `Σ log p`.
    pub score: f32,
    /// Log-probability of each generated token after the logits processors.
    pub token_logprobs: Vec<f32>,
}

/// What happened to one input of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `num_return_sequences` hypotheses, best first.
    Finished(Vec<Hypothesis>),
    /// The observer asked to stop it (client gone, deadline passed).
    Cancelled,
}

/// Hooks the caller can use to watch and steer a running batch.
pub trait StepObserver {
    /// Polled before every step for every unfinished input (by its index in the batch).
    fn is_cancelled(&self, _input: usize) -> bool {
        false
    }
    /// Called once the encoder has run (and the cross-attention K/V are computed).
    fn on_encoded(&self, _inputs: usize, _elapsed: Duration) {}
    /// Called after every decoder step with the number of rows it ran.
    fn on_step(&self, _rows: usize, _elapsed: Duration) {}
    /// Called as soon as an input finishes, while the rest of the batch goes on: a server
    /// can answer that request without waiting for the batch's longest sequence.
    fn on_finished(&self, _input: usize, _hypotheses: &[Hypothesis]) {}
}

/// Observes nothing, cancels nothing.
pub struct NoObserver;
impl StepObserver for NoObserver {}

/// Generates for every input of `inputs` (non-empty token ids, within the encoder's
/// positions) with the same parameters, in one batch. Results are in input order.
pub fn generate(
    model: &EncoderDecoderModel,
    inputs: &[Vec<u32>],
    cfg: &GenerationConfig,
    observer: &dyn StepObserver,
) -> Result<Vec<Outcome>> {
    if inputs.is_empty() {
        return Ok(Vec::new());
    }
    cfg.validate()?;
    let cfg = Arc::new(cfg.clone());
    let started = Instant::now();
    let mut batch = RunningBatch::new(model);
    batch.join(
        inputs
            .iter()
            .enumerate()
            .map(|(key, ids)| Joiner {
                key,
                ids: ids.clone(),
                cfg: cfg.clone(),
            })
            .collect(),
    )?;
    observer.on_encoded(inputs.len(), started.elapsed());
    let mut outcomes: Vec<Option<Outcome>> = vec![None; inputs.len()];
    while !batch.is_empty() {
        for input in batch.remove(|&input| observer.is_cancelled(input))? {
            outcomes[input] = Some(Outcome::Cancelled);
        }
        if batch.is_empty() {
            break;
        }
        let started = Instant::now();
        let step = batch.step()?;
        observer.on_step(step.rows, started.elapsed());
        for (input, hypotheses) in step.finished {
            observer.on_finished(input, &hypotheses);
            outcomes[input] = Some(Outcome::Finished(hypotheses));
        }
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Cancelled))
        .collect())
}
