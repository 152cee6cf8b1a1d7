//! `generate()`: runs greedy or beam search for a batch of encoded inputs.
//!
//! Every input owns its search state; the model sees one row per live beam of every
//! unfinished input. An input that finishes (or is cancelled) leaves the batch at the
//! next step boundary: its rows are dropped from the KV cache and its encoder states
//! from the cross-attention, so the remaining inputs run on a smaller batch.

pub mod beam;
pub mod config;
pub mod greedy;
pub mod processors;

use std::time::{Duration, Instant};

use anyhow::Result;
use rayon::prelude::*;

use crate::model::EncoderDecoderModel;
use beam::BeamSearch;
pub use config::{EarlyStopping, GenerationConfig, GenerationOverrides, InvalidParameters};
use greedy::GreedySearch;

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

enum Search {
    Greedy(GreedySearch),
    Beam(BeamSearch),
}

impl Search {
    fn last_tokens(&self) -> Vec<u32> {
        match self {
            Search::Greedy(s) => s.last_tokens(),
            Search::Beam(s) => s.last_tokens(),
        }
    }
}

/// Generates for every input of `inputs` (non-empty token ids, within the encoder's
/// positions) with the same parameters. Results are in input order.
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
    let vocab = model.vocab_size();
    let rows_per_input = cfg.num_beams;
    let started = Instant::now();
    let mut encoder = model.encode(inputs)?;
    observer.on_encoded(inputs.len(), started.elapsed());
    let mut decoder = model.new_decoder_state(cfg.max_length);
    let mut outcomes: Vec<Option<Outcome>> = vec![None; inputs.len()];
    // (input index, search) for the inputs still in the batch, in batch order.
    let mut live: Vec<(usize, Search)> = (0..inputs.len())
        .map(|i| {
            let s = if cfg.num_beams == 1 {
                Search::Greedy(GreedySearch::new(cfg))
            } else {
                Search::Beam(BeamSearch::new(cfg))
            };
            (i, s)
        })
        .collect();

    while !live.is_empty() {
        let tokens: Vec<u32> = live.iter().flat_map(|(_, s)| s.last_tokens()).collect();
        let started = Instant::now();
        let logits = model.decode_step(&tokens, &mut decoder, &encoder)?;
        let mut logits = logits.flatten_all()?.to_vec1::<f32>()?;
        observer.on_step(tokens.len(), started.elapsed());

        // Advance every search (in parallel: inputs are independent, and the work over
        // the vocabulary is per row), then collect the cache rows the survivors continue
        // from.
        let width = rows_per_input * vocab;
        let steps: Vec<(Vec<usize>, bool)> = live
            .par_iter_mut()
            .zip(logits.par_chunks_mut(width))
            .map(|((_, search), chunk)| match search {
                Search::Greedy(s) => (vec![0], s.step(chunk, cfg)),
                Search::Beam(s) => s.step(chunk, vocab, cfg),
            })
            .collect();
        let mut keep_rows: Vec<u32> = Vec::with_capacity(tokens.len());
        let mut keep_inputs: Vec<u32> = Vec::with_capacity(live.len());
        let mut still_live = Vec::with_capacity(live.len());
        for (pos, ((input, search), (parents, done))) in live.into_iter().zip(steps).enumerate() {
            let first_row = pos * rows_per_input;
            if done {
                let hypotheses = match search {
                    Search::Greedy(s) => s.finish(),
                    Search::Beam(s) => s.finish(cfg.num_return_sequences),
                };
                observer.on_finished(input, &hypotheses);
                outcomes[input] = Some(Outcome::Finished(hypotheses));
            } else if observer.is_cancelled(input) {
                outcomes[input] = Some(Outcome::Cancelled);
            } else {
                keep_rows.extend(parents.iter().map(|p| (first_row + p) as u32));
                keep_inputs.push(pos as u32);
                still_live.push((input, search));
            }
        }
        live = still_live;
        if live.is_empty() {
            break;
        }
        let identity = keep_rows.iter().enumerate().all(|(i, &r)| i as u32 == r)
            && keep_rows.len() == tokens.len();
        if !identity {
            decoder.select_rows(&keep_rows)?;
        }
        if keep_inputs.len() != encoder.num_inputs() {
            encoder = encoder.select_inputs(&keep_inputs)?;
        }
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Cancelled))
        .collect())
}
