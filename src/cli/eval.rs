//! `encdec eval`: score a checkpoint on a task's test set.
//!
//! ```text
//! encdec eval --model DIR|HUB_ID --task summarize|translate|split|fuse \
//!     --data FILE [--data-ref FILE] [--format tsv|discofuse|jsonl|parallel] \
//!     [--limit N] [--batch-size N] [generation flags] [--stemmer] --out DIR
//! encdec eval --predictions FILE --task ... --data FILE [--out DIR]
//! ```
//!
//! With a model it generates for every example in order, `--batch-size` at a
//! time, writing `DIR/predictions.jsonl` as batches finish
//! (`{"id", "source", "prediction", "references"}`, plus `"error"` when an
//! input could not be generated for; its prediction is then empty and scored
//! as such), then `DIR/metrics.json`, and prints a table. With
//! `--predictions` it only scores the given predictions (aligned with the
//! data, after `--limit`) and writes `metrics.json` when `--out` is given.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::Serialize;

use super::flags::{parse_dtype, GenerationFlags, TokenizerFlags};
use crate::engine::{Engine, EngineOptions};
use crate::eval::data::{self, DataFormat, DataSpec};
use crate::eval::run::{self, PredictionRecord, ScoreOptions, Task, TaskMetrics};
use crate::generation::GenerationConfig;
use crate::hub::{resolve_model_dir, HubOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoint directory (an EncoderDecoderModel) or hub model id.
    #[arg(
        long,
        required_unless_present = "predictions",
        conflicts_with = "predictions"
    )]
    pub model: Option<String>,
    /// Hub revision (branch, tag or commit) when --model is a hub id.
    #[arg(long, requires = "model")]
    pub revision: Option<String>,
    /// summarize (ROUGE), translate (BLEU), split (SARI, exact match, BLEU) or fuse (SARI, exact match).
    #[arg(long)]
    pub task: Task,
    /// Test set: TSV, DiscoFuse TSV, JSONL, or the source side of parallel files.
    #[arg(long)]
    pub data: PathBuf,
    /// Reference side of parallel text files (implies --format parallel).
    #[arg(long)]
    pub data_ref: Option<PathBuf>,
    /// tsv, discofuse, jsonl or parallel (default: from --data-ref or the file extension).
    #[arg(long)]
    pub format: Option<DataFormat>,
    /// Evaluate only the first N examples.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Score these predictions instead of running a model: JSONL with `prediction` or
    /// `text` (or `encdec generate` output), or plain text, one per line, aligned with the data.
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    /// Output directory for predictions.jsonl and metrics.json.
    #[arg(long, required_unless_present = "predictions")]
    pub out: Option<PathBuf>,
    /// Inputs generated together in one batch.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub batch_size: u64,
    #[command(flatten)]
    pub generation: GenerationFlags,
    #[command(flatten)]
    pub tokenizer: TokenizerFlags,
    /// Decoder tokenizer directory (default: `<model>/decoder_tokenizer` if present).
    #[arg(long)]
    pub decoder_tokenizer: Option<PathBuf>,
    /// Weights dtype: f32, f16, bf16 or int8 (on the CPU, bf16 and int8 store the linear layers' weights in that format and compute in f32).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// cpu, cuda or cuda:N (cuda needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Porter-stem tokens for ROUGE (rouge-score's `use_stemmer=True`).
    #[arg(long)]
    pub stemmer: bool,
    /// Seed of ROUGE's bootstrap resampling (numpy's global seed in Python).
    #[arg(long, default_value_t = 42)]
    pub bootstrap_seed: u32,
    /// No progress bar or progress lines on stderr.
    #[arg(long)]
    pub no_progress: bool,
}

pub(super) fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::new_cuda(0)?),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(Device::new_cuda(n)?),
            _ => bail!("unsupported device `{other}` (use cpu, cuda or cuda:N)"),
        },
    }
}

/// `metrics.json`: what was evaluated, how, and the scores.
#[derive(Debug, Serialize)]
struct Report<'a> {
    task: Task,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    predictions: Option<&'a Path>,
    data: &'a Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_ref: Option<&'a Path>,
    format: &'static str,
    limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<Generation>,
    metrics: Option<TaskMetrics>,
}

/// How the predictions were generated.
#[derive(Debug, Serialize)]
struct Generation {
    batch_size: u64,
    dtype: String,
    device: String,
    config: GenerationConfig,
    /// Inputs that produced no prediction (scored as empty predictions).
    failed: usize,
    seconds: f64,
    examples_per_second: f64,
}

pub fn run(args: Args) -> Result<()> {
    let dataset = data::load(&DataSpec {
        data: &args.data,
        reference: args.data_ref.as_deref(),
        format: args.format,
        limit: args.limit.map(|n| n as usize),
    })?;
    let examples = &dataset.examples;
    let options = ScoreOptions {
        use_stemmer: args.stemmer,
        bootstrap_seed: args.bootstrap_seed,
    };
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    }
    let mut report = Report {
        task: args.task,
        model: args.model.as_deref(),
        model_dir: None,
        predictions: args.predictions.as_deref(),
        data: &args.data,
        data_ref: args.data_ref.as_deref(),
        format: dataset.format.name(),
        limit: args.limit,
        generation: None,
        metrics: None,
    };

    let predictions: Vec<String> = if let Some(path) = &args.predictions {
        let mut preds = data::load_predictions(path)?;
        if args.limit.is_some() && preds.len() > examples.len() {
            preds.truncate(examples.len());
        }
        if preds.len() != examples.len() {
            bail!(
                "{} has {} predictions but the data has {} examples",
                path.display(),
                preds.len(),
                examples.len()
            );
        }
        preds
    } else {
        let out = args
            .out
            .as_deref()
            .expect("clap requires --out with --model");
        generate(&args, examples, out, &mut report)?
    };

    let metrics = run::score(args.task, examples, &predictions, options)?;
    print!("{}", run::render_table(&metrics));
    report.metrics = Some(metrics);
    if let Some(g) = report.generation.as_ref().filter(|g| g.failed > 0) {
        println!(
            "failed inputs: {} (scored as empty predictions; see predictions.jsonl)",
            g.failed
        );
    }
    if let Some(out) = &args.out {
        let path = out.join("metrics.json");
        let mut text = serde_json::to_string_pretty(&report)?;
        text.push('\n');
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Loads the model, generates for every example and writes predictions.jsonl.
fn generate(
    args: &Args,
    examples: &[data::Example],
    out: &Path,
    report: &mut Report<'_>,
) -> Result<Vec<String>> {
    let source = args.model.as_deref().expect("clap requires --model");
    let dir = resolve_model_dir(
        source,
        &HubOptions {
            revision: args.revision.clone(),
            progress: !args.no_progress,
        },
    )?;
    let opts = EngineOptions {
        device: parse_device(&args.device)?,
        dtype: parse_dtype(&args.dtype)?,
        decoder_tokenizer: args.decoder_tokenizer.clone(),
        tokenizer: args.tokenizer.settings()?,
    };
    let engine = Engine::load(&dir, &opts)?;
    let cfg = engine
        .defaults()
        .with_overrides(&args.generation.overrides())
        .context("invalid generation parameters")?;
    report.model_dir = Some(dir);

    let path = out.join("predictions.jsonl");
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    let mut progress = Progress::new(examples.len() as u64, args.no_progress);
    let started = Instant::now();
    let preds = run::generate_predictions(
        &engine,
        &cfg,
        examples,
        args.batch_size as usize,
        |first, batch| {
            for (ex, p) in examples[first..].iter().zip(batch) {
                let record = PredictionRecord {
                    id: &ex.id,
                    source: &ex.source,
                    prediction: &p.text,
                    references: &ex.references,
                    error: p.error.as_deref(),
                };
                serde_json::to_writer(&mut writer, &record)?;
                writer.write_all(b"\n")?;
            }
            writer.flush()?;
            progress.advance(batch.len() as u64);
            Ok(())
        },
    )
    .with_context(|| format!("generating (predictions so far in {})", path.display()))?;
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    report.generation = Some(Generation {
        batch_size: args.batch_size,
        dtype: args.dtype.clone(),
        device: args.device.clone(),
        config: cfg,
        failed: preds.iter().filter(|p| p.error.is_some()).count(),
        seconds,
        examples_per_second: examples.len() as f64 / seconds.max(1e-9),
    });
    Ok(preds.into_iter().map(|p| p.text).collect())
}

/// A progress bar with ETA and examples/s on a terminal; elsewhere a line on
/// stderr at most every 10 s; the totals at the end.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    lines: bool,
    total: u64,
    done: u64,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    fn new(total: u64, quiet: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (!quiet && terminal).then(|| {
            let style = indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] {pos}/{len} examples, {rate}, ETA {eta}",
            )
            .expect("valid template")
            .with_key(
                "rate",
                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.2} examples/s", s.per_sec());
                },
            )
            .progress_chars("=> ");
            indicatif::ProgressBar::new(total).with_style(style)
        });
        let now = Instant::now();
        Self {
            bar,
            lines: !quiet && !terminal,
            total,
            done: 0,
            started: now,
            last_line: now,
        }
    }

    fn advance(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
        } else if self.lines
            && self.done < self.total
            && self.last_line.elapsed() >= Duration::from_secs(10)
        {
            self.last_line = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(1e-9);
            let rate = self.done as f64 / secs;
            let eta = (self.total - self.done) as f64 / rate.max(1e-9);
            eprintln!(
                "eval: {}/{} examples, {rate:.2} examples/s, ETA {eta:.0}s",
                self.done, self.total
            );
        }
    }

    /// Clears the bar and prints the totals.
    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if self.bar.is_some() || self.lines {
            let secs = self.started.elapsed().as_secs_f64();
            eprintln!(
                "eval: generated {} examples in {secs:.1}s ({:.2} examples/s)",
                self.done,
                self.done as f64 / secs.max(1e-9)
            );
        }
    }
}
