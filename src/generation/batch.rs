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

    fn len(&self) -> usize {
        match self {
            Search::Greedy(s) => s.len(),
            Search::Beam(s) => s.len(),
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

    /// Rows × the steps it may still take: an upper bound of its remaining work.
    fn remaining_work(&self) -> usize {
        self.rows() * self.cfg.max_length.saturating_sub(self.search.len())
    }
}

/// One input of a running batch as a scheduler sees it.
pub struct EntryInfo<'a, K> {
    pub key: &'a K,
    pub rows: usize,
    /// Rows × the steps it may still take (it may finish earlier).
    pub remaining_work: usize,
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

    /// The inputs in batch order, for a scheduler choosing which step next.
    pub fn entries(&self) -> impl Iterator<Item = EntryInfo<'_, K>> {
        self.entries.iter().map(|e| EntryInfo {
            key: &e.key,
            rows: e.rows(),
            remaining_work: e.remaining_work(),
        })
    }

    /// Whether [`Self::step_some`] may leave inputs waiting (the CPU f32 cache).
    pub fn can_step_some(&self) -> bool {
        self.model.can_step_some_rows()
    }

    /// Encodes the joiners together (one encoder pass) and adds them after the inputs
    /// already running; they take part in the next step. All or none join.
    pub fn join(&mut self, mut joiners: Vec<Joiner<K>>) -> Result<()> {
        if joiners.is_empty() {
            return Ok(());
        }
        for j in &joiners {
            j.cfg.validate()?;
        }
        let ids: Vec<Vec<u32>> = joiners
            .iter_mut()
            .map(|j| std::mem::take(&mut j.ids))
            .collect();
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

    /// One decode step for every input; then the finished inputs leave and the rows
    /// are compacted. (Cancelled inputs leave through [`Self::remove`], before a step.)
    pub fn step(&mut self) -> Result<StepOutcome<K>> {
        self.step_some(|_| true)
    }

    /// One decode step for the inputs for which `run` says so (all of them when it says
    /// so for none, or when [`Self::can_step_some`] is false); the others wait with
    /// their past intact. Then the finished inputs leave and the rows are compacted.
    pub fn step_some(&mut self, run: impl Fn(&K) -> bool) -> Result<StepOutcome<K>> {
        let mut outcome = StepOutcome {
            finished: Vec::new(),
            rows: 0,
        };
        if self.entries.is_empty() {
            return Ok(outcome);
        }
        let mut running: Vec<bool> = self.entries.iter().map(|e| run(&e.key)).collect();
        if !self.can_step_some() || !running.iter().any(|&r| r) {
            running.iter_mut().for_each(|r| *r = true);
        }
        let vocab = self.model.vocab_size();
        let (mut tokens, mut stepped, mut inputs, mut input_rows) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut first_row = 0u32;
        for (e, &r) in self.entries.iter().zip(&running) {
            let n = e.rows() as u32;
            if r {
                tokens.extend(e.search.last_tokens());
                stepped.extend(first_row..first_row + n);
                inputs.push(&e.encoded);
                input_rows.push(e.rows());
            }
            first_row += n;
        }
        outcome.rows = tokens.len();
        let cross = CrossBatch::new(inputs, input_rows);
        let logits = self
            .model
            .decode_step_rows(&tokens, &mut self.decoder, &stepped, &cross)?;
        drop(cross);
        let mut logits = logits.flatten_all()?.to_vec1::<f32>()?;

        // Advance every search that ran (in parallel: inputs are independent, and the
        // work over the vocabulary is per row).
        let mut chunks: Vec<Option<&mut [f32]>> = Vec::with_capacity(self.entries.len());
        let mut rest = logits.as_mut_slice();
        for (e, &r) in self.entries.iter().zip(&running) {
            if r {
                let (mine, after) = rest.split_at_mut(e.rows() * vocab);
                chunks.push(Some(mine));
                rest = after;
            } else {
                chunks.push(None);
            }
        }
        let steps: Vec<(Vec<usize>, bool)> = self
            .entries
            .par_iter_mut()
            .zip(chunks)
            .map(|(e, chunk)| match chunk {
                Some(chunk) => e.search.step(chunk, vocab, &e.cfg),
                // Waiting: every row continues from itself.
                None => ((0..e.rows()).collect(), false),
            })
            .collect();

        let mut steps = steps.into_iter();
        self.retain(
            |_| {
                let (parents, done) = steps.next().expect("one step result per input");
                (!done).then_some(parents)
            },
            |e| outcome.finished.push((e.key, e.search.finish(&e.cfg))),
        )?;
        Ok(outcome)
    }

    /// Drops the inputs for which `leave` says so (between steps); returns their keys.
    pub fn remove(&mut self, leave: impl Fn(&K) -> bool) -> Result<Vec<K>> {
        if !self.entries.iter().any(|e| leave(&e.key)) {
            return Ok(Vec::new());
        }
        let mut removed = Vec::new();
        self.retain(
            |e| (!leave(&e.key)).then(|| (0..e.rows()).collect()),
            |e| removed.push(e.key),
        )?;
        Ok(removed)
    }

    /// Keeps, in order, the inputs for which `keep` names the rows (counted from the
    /// input's first row) they continue from; hands the others to `gone`; compacts the
    /// decoder's rows to match.
    fn retain(
        &mut self,
        mut keep: impl FnMut(&Entry<K>) -> Option<Vec<usize>>,
        mut gone: impl FnMut(Entry<K>),
    ) -> Result<()> {
        let rows = self.rows();
        let mut keep_rows: Vec<u32> = Vec::with_capacity(rows);
        let mut still = Vec::with_capacity(self.entries.len());
        let mut first_row = 0;
        for e in std::mem::take(&mut self.entries) {
            let n = e.rows();
            match keep(&e) {
                Some(parents) => {
                    keep_rows.extend(parents.iter().map(|p| (first_row + p) as u32));
                    still.push(e);
                }
                None => gone(e),
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
        Ok(())
    }
}
