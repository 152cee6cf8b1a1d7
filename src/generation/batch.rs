//! A running batch: inputs join it between decode steps and leave it when they finish
//! or are cancelled, each with its own generation parameters (continuous batching).
//!
//! Every input owns its search (greedy or beam, with its own `num_beams`, lengths,
//! penalties) and its encoder K/V at its own length; the model sees one row per live
//! beam of every input, each row at its own position. An input's tokens therefore
//! depend only on the input and its parameters, not on what decodes beside it.

use std::sync::Arc;

use anyhow::Result;
use rayon::prelude::*;

use super::beam::BeamSearch;
use super::config::GenerationConfig;
use super::greedy::GreedySearch;
use super::Hypothesis;
use crate::model::{CrossBatch, DecoderState, EncodedInput, EncoderDecoderModel};

enum Search {
    Greedy(GreedySearch),
    Beam(BeamSearch),
}

impl Search {
    fn new(cfg: &GenerationConfig) -> Self {
        if cfg.num_beams == 1 {
            Search::Greedy(GreedySearch::new(cfg))
        } else {
            Search::Beam(BeamSearch::new(cfg))
        }
    }

    fn last_tokens(&self) -> Vec<u32> {
        match self {
            Search::Greedy(s) => s.last_tokens(),
            Search::Beam(s) => s.last_tokens(),
        }
    }

    /// Consumes this input's logits; returns the parent row of each surviving row and
    /// whether the input is finished.
    fn step(
        &mut self,
        logits: &mut [f32],
        vocab: usize,
        cfg: &GenerationConfig,
    ) -> (Vec<usize>, bool) {
        match self {
            Search::Greedy(s) => (vec![0], s.step(logits, cfg)),
            Search::Beam(s) => s.step(logits, vocab, cfg),
        }
    }

    fn finish(self, cfg: &GenerationConfig) -> Vec<Hypothesis> {
        match self {
            Search::Greedy(s) => s.finish(),
            Search::Beam(s) => s.finish(cfg.num_return_sequences),
        }
    }
}

/// One input of the batch.
struct Entry<K> {
    key: K,
    cfg: Arc<GenerationConfig>,
    search: Search,
    encoded: EncodedInput,
}

impl<K> Entry<K> {
    /// Decoder rows this input occupies.
    fn rows(&self) -> usize {
        self.cfg.num_beams
    }
}

/// An input asking to join: the caller's key for it, its token ids (non-empty, within
/// the encoder's positions), its parameters.
pub struct Joiner<K> {
    pub key: K,
    pub ids: Vec<u32>,
    pub cfg: Arc<GenerationConfig>,
}

/// What one decode step did.
pub struct StepOutcome<K> {
    /// Inputs that finished, with their `num_return_sequences` hypotheses (best first).
    pub finished: Vec<(K, Vec<Hypothesis>)>,
    /// Inputs dropped because the caller said so.
    pub cancelled: Vec<K>,
    /// Rows the step decoded.
    pub rows: usize,
}

/// See the module documentation. `K` is the caller's handle for an input.
pub struct RunningBatch<'m, K> {
    model: &'m EncoderDecoderModel,
    decoder: DecoderState,
    /// In row order: entry i owns the `rows()` rows after those of entries 0..i.
    entries: Vec<Entry<K>>,
}

impl<'m, K: Send> RunningBatch<'m, K> {
    pub fn new(model: &'m EncoderDecoderModel) -> Self {
        Self {
            model,
            decoder: model.new_decoder_state(),
            entries: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Inputs in the batch.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Decoder rows (inputs × their beams) the next step decodes.
    pub fn rows(&self) -> usize {
        self.entries.iter().map(Entry::rows).sum()
    }

    /// Tokens held in the key/value caches: every row's self-attention past (a prefix
    /// shared by beams counted once) and every input's encoder positions.
    pub fn kv_tokens(&self) -> usize {
        self.decoder.cached_tokens() + self.entries.iter().map(|e| e.encoded.len()).sum::<usize>()
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|e| &e.key)
    }

    /// Encodes the joiners together (one encoder pass) and adds them after the inputs
    /// already running; they take part in the next step. All or none join.
    pub fn join(&mut self, joiners: Vec<Joiner<K>>) -> Result<()> {
        if joiners.is_empty() {
            return Ok(());
        }
        for j in &joiners {
            j.cfg.validate()?;
        }
        let ids: Vec<Vec<u32>> = joiners.iter().map(|j| j.ids.clone()).collect();
        let encoded = self.model.encode(&ids)?;
        for (j, encoded) in joiners.into_iter().zip(encoded) {
            let entry = Entry {
                search: Search::new(&j.cfg),
                key: j.key,
                cfg: j.cfg,
                encoded,
            };
            self.decoder.add_rows(entry.rows());
            self.entries.push(entry);
        }
        Ok(())
    }

    /// One decode step for every input; then the finished inputs and those for which
    /// `cancelled` says so leave, and the rows are compacted.
    pub fn step(&mut self, cancelled: impl Fn(&K) -> bool) -> Result<StepOutcome<K>> {
        let rows = self.rows();
        if rows == 0 {
            return Ok(StepOutcome {
                finished: Vec::new(),
                cancelled: Vec::new(),
                rows,
            });
        }
        let vocab = self.model.vocab_size();
        let tokens: Vec<u32> = self
            .entries
            .iter()
            .flat_map(|e| e.search.last_tokens())
            .collect();
        let cross = CrossBatch::new(
            self.entries.iter().map(|e| &e.encoded).collect(),
            self.entries.iter().map(Entry::rows).collect(),
        );
        let logits = self.model.decode_step(&tokens, &mut self.decoder, &cross)?;
        drop(cross);
        let mut logits = logits.flatten_all()?.to_vec1::<f32>()?;

        // Advance every search (in parallel: inputs are independent, and the work over
        // the vocabulary is per row).
        let mut chunks: Vec<&mut [f32]> = Vec::with_capacity(self.entries.len());
        let mut rest = logits.as_mut_slice();
        for e in &self.entries {
            let (mine, after) = rest.split_at_mut(e.rows() * vocab);
            chunks.push(mine);
            rest = after;
        }
        let steps: Vec<(Vec<usize>, bool)> = self
            .entries
            .par_iter_mut()
            .zip(chunks)
            .map(|(e, chunk)| e.search.step(chunk, vocab, &e.cfg))
            .collect();

        // The rows the survivors continue from.
        let mut keep_rows: Vec<u32> = Vec::with_capacity(rows);
        let mut outcome = StepOutcome {
            finished: Vec::new(),
            cancelled: Vec::new(),
            rows,
        };
        let mut still = Vec::with_capacity(self.entries.len());
        let mut first_row = 0;
        for (e, (parents, done)) in std::mem::take(&mut self.entries).into_iter().zip(steps) {
            let n = e.rows();
            if done {
                let hypotheses = e.search.finish(&e.cfg);
                outcome.finished.push((e.key, hypotheses));
            } else if cancelled(&e.key) {
                outcome.cancelled.push(e.key);
            } else {
                keep_rows.extend(parents.iter().map(|p| (first_row + p) as u32));
                still.push(e);
            }
            first_row += n;
        }
        self.entries = still;
        if self.entries.is_empty() {
            // Start the next input from empty caches instead of compacting to nothing.
            self.decoder = self.model.new_decoder_state();
        } else if !(keep_rows.len() == rows
            && keep_rows.iter().enumerate().all(|(i, &r)| i as u32 == r))
        {
            self.decoder.select_rows(&keep_rows)?;
        }
        Ok(outcome)
    }

    /// Drops the inputs for which `leave` says so (between steps); returns their keys.
    pub fn remove(&mut self, leave: impl Fn(&K) -> bool) -> Result<Vec<K>> {
        if !self.entries.iter().any(|e| leave(&e.key)) {
            return Ok(Vec::new());
        }
        let mut keep_rows = Vec::new();
        let mut removed = Vec::new();
        let mut still = Vec::with_capacity(self.entries.len());
        let mut first_row = 0u32;
        for e in std::mem::take(&mut self.entries) {
            let n = e.rows() as u32;
            if leave(&e.key) {
                removed.push(e.key);
            } else {
                keep_rows.extend(first_row..first_row + n);
                still.push(e);
            }
            first_row += n;
        }
        self.entries = still;
        if self.entries.is_empty() {
            self.decoder = self.model.new_decoder_state();
        } else {
            self.decoder.select_rows(&keep_rows)?;
        }
        Ok(removed)
    }
}
