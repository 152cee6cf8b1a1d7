//! `encdec generate`: JSONL in on stdin (`{"text", "id"?}`), one JSONL result per
//! input out on stdout, in order. Inputs are batched `--batch-size` at a time.

use std::cell::Cell;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};

use super::flags::{parse_dtype, GenerationFlags, TokenizerFlags};
use crate::engine::{Engine, EngineOptions};
use crate::generation::{GenerationOverrides, StepObserver};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoint directory (an EncoderDecoderModel saved by transformers).
    #[arg(long)]
    pub model: PathBuf,
    /// Decoder tokenizer directory (default: `<model>/decoder_tokenizer` if present).
    #[arg(long)]
    pub decoder_tokenizer: Option<PathBuf>,
    /// Inputs generated together in one batch.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub batch_size: u64,
    /// Weights dtype: f32, f16, bf16 or int8 (on the CPU, bf16 and int8 store the linear layers' weights in that format and compute in f32).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Device: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub generation: GenerationFlags,
    #[command(flatten)]
    pub tokenizer: TokenizerFlags,
    #[arg(long)]
    pub num_return_sequences: Option<usize>,
    /// Print load and per-batch generation times (JSON lines) on stderr.
    #[arg(long)]
    pub timings: bool,
}

#[derive(Deserialize)]
struct InputLine {
    text: String,
    #[serde(default)]
    id: Option<Value>,
}

pub fn run(args: Args) -> Result<()> {
    let overrides = GenerationOverrides {
        num_return_sequences: args.num_return_sequences,
        ..args.generation.overrides()
    };
    let opts = EngineOptions {
        dtype: parse_dtype(&args.dtype)?,
        device: super::eval::parse_device(&args.device)?,
        decoder_tokenizer: args.decoder_tokenizer.clone(),
        tokenizer: args.tokenizer.settings()?,
    };
    let load_started = std::time::Instant::now();
    let engine = Engine::load(&args.model, &opts)?;
    if args.timings {
        eprintln!(
            "{}",
            json!({
                "load_seconds": load_started.elapsed().as_secs_f64(),
                "dtype": opts.dtype.name(),
                "cpu_kernels": crate::model::kernel_choice(),
            })
        );
    }
    let cfg = engine
        .defaults()
        .with_overrides(&overrides)
        .context("invalid generation parameters")?;

    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut pending: Vec<(Value, Result<String, String>)> = Vec::new();
    for (n, line) in stdin.lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<InputLine>(&line)
            .map(|l| (l.id.unwrap_or(Value::Null), Ok(l.text)))
            .unwrap_or_else(|e| {
                (
                    Value::Null,
                    Err(format!(
                        "line {}: not a JSON object with `text`: {e}",
                        n + 1
                    )),
                )
            });
        pending.push(parsed);
        if pending.len() as u64 == args.batch_size {
            flush(&engine, &cfg, &mut pending, &mut out, args.timings)?;
        }
    }
    flush(&engine, &cfg, &mut pending, &mut out, args.timings)?;
    Ok(())
}

fn flush(
    engine: &Engine,
    cfg: &crate::generation::GenerationConfig,
    pending: &mut Vec<(Value, Result<String, String>)>,
    out: &mut impl Write,
    timings: bool,
) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let texts: Vec<&str> = pending
        .iter()
        .filter_map(|(_, t)| t.as_deref().ok())
        .collect();
    let started = std::time::Instant::now();
    let phases = PhaseTimes::default();
    let results = engine.generate_texts_observed(&texts, cfg, &phases)?;
    if timings {
        let total = started.elapsed().as_secs_f64();
        let (encode, decode) = (phases.encode.get(), phases.decode.get());
        eprintln!(
            "{}",
            json!({
                "batch_inputs": texts.len(),
                "generate_seconds": total,
                "encode_seconds": encode,
                "decoder_steps": phases.steps.get(),
                "decoder_seconds": decode,
                "search_and_other_seconds": total - encode - decode,
            })
        );
    }
    let mut results = results.into_iter();
    for (id, text) in pending.drain(..) {
        let line = match text {
            Err(msg) => json!({"id": id, "error": msg}),
            Ok(_) => match results.next().expect("one result per text") {
                Err(e) => json!({"id": id, "error": e.to_string()}),
                Ok(gens) => json!({
                    "id": id,
                    "ids": gens.iter().map(|g| &g.hypothesis.ids).collect::<Vec<_>>(),
                    "texts": gens.iter().map(|g| &g.text).collect::<Vec<_>>(),
                    "scores": gens.iter().map(|g| g.hypothesis.score).collect::<Vec<_>>(),
                }),
            },
        };
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}

/// Where a batch's time went, for `--timings`: the encoder, the decoder steps, and the
/// rest (tokenization, logits processing and search, cache reordering, detokenization).
#[derive(Default)]
struct PhaseTimes {
    encode: Cell<f64>,
    decode: Cell<f64>,
    steps: Cell<usize>,
}

impl StepObserver for PhaseTimes {
    fn on_encoded(&self, _inputs: usize, elapsed: Duration) {
        self.encode.set(self.encode.get() + elapsed.as_secs_f64());
    }

    fn on_step(&self, _rows: usize, elapsed: Duration) {
        self.decode.set(self.decode.get() + elapsed.as_secs_f64());
        self.steps.set(self.steps.get() + 1);
    }
}
