//! `encdec finetune`: the training step of the method, as transformers'
//! `Seq2SeqTrainer` runs it for an `EncoderDecoderModel`.
//!
//! Each optimiser step: `grad_accum` micro-batches of teacher-forced loss (mean
//! cross-entropy over label tokens) → gradients averaged → clipped to norm 1 → AdamW
//! with the linear warm-up/decay schedule. Every `eval_every` steps the current weights
//! are saved, loaded into the inference [`Engine`] and scored with the task's metrics
//! (`predict_with_generate`), so evaluation runs exactly what `serve` would.

pub mod batch;
pub mod checkpoint;
pub mod layers;
pub mod loss;
pub mod model;
pub mod optim;
pub mod params;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use crate::checkpoint::config::EncoderDecoderConfig;
use crate::engine::{Engine, EngineOptions};
use crate::eval::data::Example;
use crate::eval::run::{self, ScoreOptions, TaskMetrics};
use crate::generation::GenerationConfig;
use crate::task::Task;
use crate::tokenizer::Tokenizers;
use batch::{Collator, Pair, PairEncoder};
use checkpoint::{TrainerState, LOG_FILE};
use layers::Noise;
use model::{Batch, TrainableModel};
use optim::{clip_grad_norm, scheduled_lr, AdamW, AdamWConfig, GradSum};
use params::Params;

/// How long to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    Steps(usize),
    Epochs(usize),
}

/// Everything `encdec finetune` takes.
#[derive(Debug, Clone)]
pub struct FinetuneOptions {
    pub model: PathBuf,
    pub out: PathBuf,
    pub task: Task,
    pub train: Vec<Example>,
    pub eval: Vec<Example>,
    pub max_input_tokens: usize,
    pub max_target_tokens: usize,
    pub optimizer: AdamWConfig,
    pub warmup_steps: usize,
    pub max_grad_norm: f64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub length: Length,
    pub seed: u64,
    pub shuffle: bool,
    pub dropout: bool,
    pub eval_every: Option<usize>,
    pub eval_batch_size: usize,
    pub save_every: Option<usize>,
    /// A checkpoint written by an earlier run (`out/checkpoint-N` or `out`).
    pub resume: Option<PathBuf>,
    /// Tokenizer settings, decoder tokenizer and device (dtype is always f32).
    pub engine: EngineOptions,
}

/// One line of `train_log.jsonl`.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum LogRow {
    Train {
        step: usize,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        /// Label tokens in the step's batches.
        tokens: usize,
        seconds: f64,
    },
    Eval {
        step: usize,
        eval_loss: f64,
        metrics: Box<TaskMetrics>,
        seconds: f64,
    },
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub steps: usize,
    pub total_steps: usize,
    pub examples: usize,
    pub skipped_examples: usize,
    pub parameters: usize,
    pub train_seconds: f64,
    /// Input + label tokens per second of training (evaluation excluded).
    pub tokens_per_second: f64,
    pub last_loss: Option<f64>,
    pub last_eval: Option<TaskMetrics>,
}

/// Tokenised examples; those that encode to nothing are counted and dropped.
fn encode_all(encoder: &PairEncoder, examples: &[Example]) -> (Vec<Pair>, usize) {
    let mut skipped = 0;
    let pairs = examples
        .iter()
        .filter_map(|e| {
            let target = e.references.first()?;
            match encoder.encode(&e.source, target) {
                Ok(p) => Some(p),
                Err(_) => {
                    skipped += 1;
                    None
                }
            }
        })
        .collect();
    (pairs, skipped)
}

/// The order of the training examples in `epoch`.
fn epoch_order(n: usize, epoch: usize, shuffle: bool, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        order.shuffle(&mut StdRng::seed_from_u64(seed.wrapping_add(epoch as u64)));
    }
    order
}

/// Micro-batches in file (or shuffled) order, epoch after epoch. An optimiser step
/// takes `accum` of them and never reaches into the next epoch: as in transformers'
/// Trainer, the last step of an epoch takes what is left.
struct MicroBatches {
    n: usize,
    batch_size: usize,
    accum: usize,
    shuffle: bool,
    seed: u64,
    epoch: usize,
    order: Vec<usize>,
}

impl MicroBatches {
    fn per_epoch(&self) -> usize {
        self.n.div_ceil(self.batch_size)
    }

    fn steps_per_epoch(&self) -> usize {
        self.per_epoch().div_ceil(self.accum)
    }

    /// The micro-batches of optimiser step `step` (counted from the start of
    /// training): a number unique to each micro-batch (it seeds its dropout), and its
    /// example indices.
    fn of_step(&mut self, step: usize) -> Vec<(usize, Vec<usize>)> {
        let epoch = step / self.steps_per_epoch();
        if epoch != self.epoch || self.order.is_empty() {
            self.epoch = epoch;
            self.order = epoch_order(self.n, epoch, self.shuffle, self.seed);
        }
        let first = (step % self.steps_per_epoch()) * self.accum;
        let last = (first + self.accum).min(self.per_epoch());
        (first..last)
            .map(|m| {
                let start = m * self.batch_size;
                let examples = self.order[start..(start + self.batch_size).min(self.n)].to_vec();
                (epoch * self.per_epoch() + m, examples)
            })
            .collect()
    }
}

/// The run's state: model, optimiser, data.
pub struct Trainer {
    opts: FinetuneOptions,
    /// Where the weights were read from (the model, or the checkpoint resumed).
    source: PathBuf,
    params: Params,
    model: TrainableModel,
    optimizer: AdamW,
    collator: Collator,
    pairs: Vec<Pair>,
    eval_pairs: Vec<Pair>,
    skipped: usize,
    batches: MicroBatches,
    total_steps: usize,
    log: std::fs::File,
}

impl Trainer {
    pub fn new(opts: FinetuneOptions) -> Result<Self> {
        if opts.batch_size == 0 || opts.grad_accum == 0 {
            bail!("--batch-size and --grad-accum must be at least 1");
        }
        // A training step allocates and frees more activation and gradient memory than
        // a forward pass: without this a seventh of a step went to page faults (perf).
        crate::allocator::keep_freed_memory();
        let source = opts.resume.clone().unwrap_or_else(|| opts.model.clone());
        let config = EncoderDecoderConfig::from_file(&source.join("config.json"))?;
        let raw_config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(source.join("config.json")).context("reading config.json")?,
        )?;
        let generation = GenerationConfig::from_checkpoint(&source, &config)?;
        let pad = generation
            .pad_token_id
            .context("the checkpoint sets no pad_token_id (nor an eos_token_id to fall back to)")?;
        let tokenizers = Tokenizers::load(
            &source,
            opts.engine.decoder_tokenizer.as_deref(),
            config.encoder.max_input_tokens(),
            &opts.engine.tokenizer,
        )?;
        let max_in = opts.max_input_tokens.min(config.encoder.max_input_tokens());
        let max_target = opts
            .max_target_tokens
            .min(config.decoder.max_input_tokens());
        let encoder = PairEncoder::new(
            &tokenizers,
            max_in,
            max_target,
            generation.eos_token_ids.first().copied(),
        )?;
        let (pairs, skipped) = encode_all(&encoder, &opts.train);
        if pairs.is_empty() {
            bail!("no training example could be tokenised");
        }
        let (eval_pairs, _) = encode_all(&encoder, &opts.eval);
        check_vocab(&pairs, &config)?;

        let device = opts.engine.device.clone();
        let tied_base = config
            .tie_encoder_decoder
            .then(|| config.decoder.family.decoder_base());
        let params = Params::open(&source, tied_base, &device)?;
        let model = TrainableModel::load(&config, &raw_config, &params)?;
        let mut optimizer = AdamW::new(params.all(), opts.optimizer)?;

        let batches = MicroBatches {
            n: pairs.len(),
            batch_size: opts.batch_size,
            accum: opts.grad_accum,
            shuffle: opts.shuffle,
            seed: opts.seed,
            epoch: 0,
            order: Vec::new(),
        };
        let total_steps = match opts.length {
            Length::Steps(n) => n,
            Length::Epochs(e) => e * batches.steps_per_epoch(),
        };
        if let Some(dir) = &opts.resume {
            let (state, moments) = checkpoint::load_state(dir, &device)?;
            if state.total_steps != total_steps {
                tracing::warn!(
                    saved = state.total_steps,
                    now = total_steps,
                    "resuming with a different number of total steps: the schedule changes"
                );
            }
            optimizer.restore(&moments, state.global_step)?;
        }
        std::fs::create_dir_all(&opts.out)
            .with_context(|| format!("creating {}", opts.out.display()))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(opts.out.join(LOG_FILE))
            .context("opening the training log")?;
        let collator = Collator {
            encoder: config.encoder.clone(),
            decoder: config.decoder.clone(),
            start: generation.decoder_start_token_id,
            pad,
            device,
        };
        Ok(Self {
            opts,
            source,
            params,
            model,
            optimizer,
            collator,
            pairs,
            eval_pairs,
            skipped,
            batches,
            total_steps,
            log,
        })
    }

    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    /// Optimiser steps already taken (non-zero when resumed).
    pub fn steps_done(&self) -> usize {
        self.optimizer.steps()
    }

    fn write_log(&mut self, row: &LogRow) -> Result<()> {
        writeln!(self.log, "{}", serde_json::to_string(row)?).context("writing the training log")
    }

    fn batch_of(&self, indices: &[usize], pairs: &[Pair]) -> Result<Batch> {
        let chosen: Vec<&Pair> = indices.iter().map(|&i| &pairs[i]).collect();
        self.collator.collate(&chosen)
    }

    /// One optimiser step; returns its log row.
    pub fn step(&mut self) -> Result<LogRow> {
        let started = Instant::now();
        let step = self.optimizer.steps();
        let lr = scheduled_lr(
            self.opts.optimizer.lr,
            step,
            self.opts.warmup_steps,
            self.total_steps,
        );
        let micro = self.batches.of_step(step);
        let batches = micro
            .iter()
            .map(|(_, indices)| self.batch_of(indices, &self.pairs))
            .collect::<Result<Vec<_>>>()?;
        // The step's loss is the mean over all its label tokens, as if the micro-batches
        // were one batch.
        let label_tokens: usize = batches.iter().map(|b| b.label_tokens).sum();
        let mut sum = GradSum::default();
        let (mut loss_sum, mut tokens) = (0.0, 0);
        for (batch, &(id, _)) in batches.iter().zip(&micro) {
            let mut noise = Noise(self.opts.dropout.then(|| {
                let id = id as u64;
                StdRng::seed_from_u64(self.opts.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            }));
            let loss = self.model.loss(batch, label_tokens, &mut noise)?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?);
            tokens += batch.label_tokens + batch.input_ids.elem_count();
            sum.add(self.optimizer.params(), &loss.backward()?)?;
        }
        let mut grads = sum.take_sum(self.optimizer.params())?;
        let grad_norm = clip_grad_norm(&mut grads, self.opts.max_grad_norm)?;
        self.optimizer.step(&grads, lr)?;
        let row = LogRow::Train {
            step: step + 1,
            loss: loss_sum,
            lr,
            grad_norm,
            tokens,
            seconds: started.elapsed().as_secs_f64(),
        };
        self.write_log(&row)?;
        Ok(row)
    }

    fn state(&self) -> TrainerState {
        TrainerState {
            global_step: self.optimizer.steps(),
            total_steps: self.total_steps,
            seed: self.opts.seed,
        }
    }

    /// Writes the current weights (and optimiser state) as a checkpoint in `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        checkpoint::save(
            dir,
            &self.source,
            &self.params,
            &self.optimizer,
            &self.state(),
        )
        .with_context(|| format!("saving a checkpoint to {}", dir.display()))
    }

    /// Mean label cross-entropy on the eval data (no dropout).
    fn eval_loss(&self) -> Result<f64> {
        let (mut total, mut tokens) = (0.0, 0usize);
        let all: Vec<usize> = (0..self.eval_pairs.len()).collect();
        for chunk in all.chunks(self.opts.batch_size) {
            let batch = self.batch_of(chunk, &self.eval_pairs)?;
            let loss = self
                .model
                .loss(&batch, batch.label_tokens, &mut Noise::off())?
                .detach();
            total += f64::from(loss.to_scalar::<f32>()?) * batch.label_tokens as f64;
            tokens += batch.label_tokens;
        }
        Ok(total / tokens.max(1) as f64)
    }

    /// Generates for the eval data with the checkpoint's generation settings and
    /// scores it; `None` without eval data.
    pub fn evaluate(&mut self) -> Result<Option<LogRow>> {
        if self.opts.eval.is_empty() {
            return Ok(None);
        }
        let started = Instant::now();
        let dir = self.opts.out.join("eval-checkpoint");
        self.save(&dir)?;
        let engine = Engine::load(&dir, &self.opts.engine)?;
        let cfg = engine.defaults().clone();
        let preds = run::generate_predictions(
            &engine,
            &cfg,
            &self.opts.eval,
            self.opts.eval_batch_size,
            |_, _| Ok(()),
        )?;
        let texts: Vec<&str> = preds.iter().map(|p| p.text.as_str()).collect();
        let metrics = run::score(
            self.opts.task,
            &self.opts.eval,
            &texts,
            ScoreOptions::default(),
        )?;
        drop(engine);
        std::fs::remove_dir_all(&dir).ok();
        let row = LogRow::Eval {
            step: self.optimizer.steps(),
            eval_loss: self.eval_loss()?,
            metrics: Box::new(metrics),
            seconds: started.elapsed().as_secs_f64(),
        };
        self.write_log(&row)?;
        Ok(Some(row))
    }

    /// Trains to the end: steps, periodic evaluation and checkpoints, and a final
    /// checkpoint in `out`. `on_row` sees every log row as it is written.
    pub fn run(mut self, mut on_row: impl FnMut(&LogRow)) -> Result<Summary> {
        let started = Instant::now();
        let (mut train_seconds, mut tokens) = (0.0, 0usize);
        let (mut last_loss, mut last_eval) = (None, None);
        let mut evaluated_at = None;
        while self.optimizer.steps() < self.total_steps {
            let row = self.step()?;
            if let LogRow::Train {
                loss,
                tokens: t,
                seconds,
                ..
            } = &row
            {
                last_loss = Some(*loss);
                tokens += t;
                train_seconds += seconds;
            }
            on_row(&row);
            let step = self.optimizer.steps();
            if self.opts.eval_every.is_some_and(|n| step.is_multiple_of(n)) {
                if let Some(row) = self.evaluate()? {
                    on_row(&row);
                    if let LogRow::Eval { metrics, .. } = row {
                        last_eval = Some(*metrics);
                    }
                    evaluated_at = Some(step);
                }
            }
            if self.opts.save_every.is_some_and(|n| step.is_multiple_of(n)) {
                self.save(&self.opts.out.join(format!("checkpoint-{step}")))?;
            }
        }
        let step = self.optimizer.steps();
        if evaluated_at != Some(step) {
            if let Some(row) = self.evaluate()? {
                on_row(&row);
                if let LogRow::Eval { metrics, .. } = row {
                    last_eval = Some(*metrics);
                }
            }
        }
        self.save(&self.opts.out)?;
        tracing::debug!(
            seconds = started.elapsed().as_secs_f64(),
            "training finished"
        );
        Ok(Summary {
            steps: step,
            total_steps: self.total_steps,
            examples: self.pairs.len(),
            skipped_examples: self.skipped,
            parameters: self.params.count(),
            train_seconds,
            tokens_per_second: tokens as f64 / train_seconds.max(1e-9),
            last_loss,
            last_eval,
        })
    }
}

/// Token ids the embeddings can't look up would be an index error mid-training.
fn check_vocab(pairs: &[Pair], config: &EncoderDecoderConfig) -> Result<()> {
    let (enc_v, dec_v) = (config.encoder.vocab_size, config.decoder.vocab_size);
    for p in pairs {
        if let Some(id) = p.input.iter().find(|&&i| i as usize >= enc_v) {
            bail!("input token id {id} is outside the encoder's vocabulary of {enc_v}");
        }
        if let Some(id) = p.target.iter().find(|&&i| i as usize >= dec_v) {
            bail!("target token id {id} is outside the decoder's vocabulary of {dec_v}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_file_order(n: usize, batch_size: usize, accum: usize) -> MicroBatches {
        MicroBatches {
            n,
            batch_size,
            accum,
            shuffle: false,
            seed: 0,
            epoch: 0,
            order: Vec::new(),
        }
    }

    fn schedule(n: usize, batch_size: usize, accum: usize, steps: usize) -> Vec<Vec<usize>> {
        let mut mb = in_file_order(n, batch_size, accum);
        (0..steps)
            .map(|s| mb.of_step(s).into_iter().map(|(id, _)| id).collect())
            .collect()
    }

    #[test]
    fn a_step_never_reaches_into_the_next_epoch() {
        // 10 examples in batches of 3: micro-batches 0..4 per epoch; with 3 per step
        // the epoch's second step takes the one that is left.
        assert_eq!(
            schedule(10, 3, 3, 4),
            vec![vec![0, 1, 2], vec![3], vec![4, 5, 6], vec![7]]
        );
        let mut mb = in_file_order(10, 3, 3);
        assert_eq!(mb.steps_per_epoch(), 2);
        assert_eq!(mb.of_step(1), vec![(3, vec![9])]);
        assert_eq!(mb.of_step(2)[0], (4, vec![0, 1, 2]));
    }

    #[test]
    fn micro_batch_numbers_run_on_when_the_steps_divide_the_epoch() {
        // The dropout seeds of a run whose accumulation divides the epoch are
        // step * accum + k, as before epochs were accounted for.
        let ids: Vec<usize> = schedule(12, 3, 2, 5).concat();
        assert_eq!(ids, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn shuffled_epochs_differ_and_repeat() {
        let a = epoch_order(50, 0, true, 7);
        assert_ne!(a, epoch_order(50, 1, true, 7));
        assert_eq!(a, epoch_order(50, 0, true, 7));
        assert_eq!(epoch_order(5, 3, false, 7), vec![0, 1, 2, 3, 4]);
    }
}
