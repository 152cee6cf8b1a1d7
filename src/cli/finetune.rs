//! `encdec finetune`: train a warm-started checkpoint on a task's data.
//!
//! ```text
//! encdec finetune --model DIR --task split --data train.tsv [--eval-data val.tsv] \
//!     --out DIR [--steps N | --epochs N] [--batch-size 8] [--lr 5e-5] ...
//! ```
//!
//! Writes `DIR/train_log.jsonl` (one row per step, `{"step", "loss", "lr",
//! "grad_norm", ...}`, and one per evaluation with the task's metrics),
//! `DIR/checkpoint-N/` every `--save-every` steps, and the final model in `DIR`
//! (loadable by transformers and by `encdec serve`).

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::eval::parse_device;
use super::flags::TokenizerFlags;
use crate::checkpoint::dtype::RunDtype;
use crate::engine::EngineOptions;
use crate::eval::data::{self, DataFormat, DataSpec, Example};
use crate::task::Task;
use crate::train::optim::AdamWConfig;
use crate::train::{FinetuneOptions, Length, LogRow, Trainer};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Warm-started checkpoint directory (an EncoderDecoderModel).
    #[arg(long)]
    pub model: PathBuf,
    /// summarize, translate, split or fuse: the metrics evaluation reports.
    #[arg(long)]
    pub task: Task,
    /// Training data: TSV, DiscoFuse TSV, JSONL, or the source side of parallel files
    /// (the first reference is the target).
    #[arg(long)]
    pub data: PathBuf,
    /// Target side of parallel text files.
    #[arg(long)]
    pub data_ref: Option<PathBuf>,
    /// Evaluation data (same formats); evaluated every --eval-every steps and at the end.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    #[arg(long)]
    pub eval_data_ref: Option<PathBuf>,
    /// tsv, discofuse, jsonl or parallel (default: from the file).
    #[arg(long)]
    pub format: Option<DataFormat>,
    /// Use only the first N training examples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Use only the first N evaluation examples.
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// Output directory: log, checkpoints, final model.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 512)]
    pub max_input_tokens: usize,
    #[arg(long, default_value_t = 128)]
    pub max_target_tokens: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-5)]
    pub lr: f64,
    /// AdamW weight decay (not on biases and LayerNorm parameters).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    pub adam_beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    pub adam_beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    pub adam_epsilon: f64,
    /// Linear warm-up steps (then linear decay to 0).
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    /// Gradient clipping norm.
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub batch_size: u64,
    /// Micro-batches per optimiser step.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub grad_accum: u64,
    /// Optimiser steps to take (wins over --epochs).
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<usize>,
    /// Passes over the training data.
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Shuffle the training data every epoch (false: batches in file order).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub shuffle: bool,
    /// Apply the config's dropout probabilities (false: none).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub dropout: bool,
    /// Evaluate every N steps.
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Inputs generated together during evaluation.
    #[arg(long, default_value_t = 16)]
    pub eval_batch_size: usize,
    /// Write `out/checkpoint-N` every N steps.
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Continue from a checkpoint this command wrote (`out/checkpoint-N`).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub tokenizer: TokenizerFlags,
    /// Decoder tokenizer directory (default: `<model>/decoder_tokenizer` if present).
    #[arg(long)]
    pub decoder_tokenizer: Option<PathBuf>,
    /// cpu, cuda or cuda:N (cuda needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// No progress bar on stderr.
    #[arg(long)]
    pub no_progress: bool,
}

fn load_examples(
    data: &std::path::Path,
    reference: Option<&std::path::Path>,
    format: Option<DataFormat>,
    limit: Option<usize>,
) -> Result<Vec<Example>> {
    Ok(data::load(&DataSpec {
        data,
        reference,
        format,
        limit,
    })
    .with_context(|| format!("reading {}", data.display()))?
    .examples)
}

pub fn run(args: Args) -> Result<()> {
    let train = load_examples(
        &args.data,
        args.data_ref.as_deref(),
        args.format,
        args.limit,
    )?;
    let eval = match &args.eval_data {
        Some(path) => load_examples(
            path,
            args.eval_data_ref.as_deref(),
            args.format,
            args.eval_limit,
        )?,
        None => Vec::new(),
    };
    let opts = FinetuneOptions {
        model: args.model.clone(),
        out: args.out.clone(),
        task: args.task,
        train,
        eval,
        max_input_tokens: args.max_input_tokens,
        max_target_tokens: args.max_target_tokens,
        optimizer: AdamWConfig {
            lr: args.lr,
            beta1: args.adam_beta1,
            beta2: args.adam_beta2,
            eps: args.adam_epsilon,
            weight_decay: args.weight_decay,
        },
        warmup_steps: args.warmup_steps,
        max_grad_norm: args.max_grad_norm,
        batch_size: args.batch_size as usize,
        grad_accum: args.grad_accum as usize,
        length: match args.steps {
            Some(n) => Length::Steps(n),
            None => Length::Epochs(args.epochs),
        },
        seed: args.seed,
        shuffle: args.shuffle,
        dropout: args.dropout,
        eval_every: args.eval_every.filter(|&n| n > 0),
        eval_batch_size: args.eval_batch_size.max(1),
        save_every: args.save_every.filter(|&n| n > 0),
        resume: args.resume.clone(),
        engine: EngineOptions {
            device: parse_device(&args.device)?,
            dtype: RunDtype::F32,
            decoder_tokenizer: args.decoder_tokenizer.clone(),
            tokenizer: args.tokenizer.settings()?,
        },
    };
    let trainer = Trainer::new(opts)?;
    let (done, total) = (trainer.steps_done(), trainer.total_steps());
    let bar = (!args.no_progress && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(total as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] step {pos}/{len} {msg} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_position(done as u64);
        bar
    });
    let summary = trainer.run(|row| match (row, &bar) {
        (LogRow::Train { loss, lr, .. }, Some(bar)) => {
            bar.set_message(format!("loss {loss:.4} lr {lr:.2e}"));
            bar.inc(1);
        }
        (
            LogRow::Train {
                step,
                loss,
                lr,
                grad_norm,
                ..
            },
            None,
        ) if !args.no_progress => {
            eprintln!("step {step}/{total}: loss {loss:.4}, lr {lr:.3e}, grad norm {grad_norm:.3}");
        }
        (LogRow::Eval { .. }, _) => {
            let line = serde_json::to_string(row).unwrap_or_default();
            match &bar {
                Some(bar) => bar.println(format!("eval: {line}")),
                None => eprintln!("eval: {line}"),
            }
        }
        _ => {}
    })?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
