//! How close `--dtype bf16` and `--dtype int8` stay to f32: the share of sequences
//! identical to f32's and the mean per-token agreement, on every fixture family and
//! parameter set, and on a checkpoint of your own.
//!
//! cargo bench --bench fidelity [-- --model DIR --inputs FILE [--limit N] [--beams N]
//!     [--max-new-tokens N]]
//!
//! FILE has one input per line (a TSV line's first column). f32 itself is checked
//! against transformers' outputs on the fixtures (the parity tests assert it).

mod common;

#[path = "../tests/common/mod.rs"]
mod test_common;

use std::path::PathBuf;

use anyhow::{Context, Result};
use common::arg;
use encdec::checkpoint::dtype::RunDtype;
use encdec::engine::{Engine, EngineOptions};
use encdec::eval::agreement::Agreement;
use encdec::generation::{GenerationOverrides, NoObserver, Outcome};
use encdec::model::CrossBatch;
use test_common::{fixture_sequences, model_dir, MODELS};

const LOW: [RunDtype; 2] = [RunDtype::Bf16, RunDtype::Int8];

fn engine(dir: &std::path::Path, dtype: RunDtype) -> Result<Engine> {
    let opts = EngineOptions {
        dtype,
        ..EngineOptions::default()
    };
    Engine::load(dir, &opts).with_context(|| format!("loading {}", dir.display()))
}

fn row(name: &str, tallies: &[Agreement]) {
    let cells: Vec<String> = tallies
        .iter()
        .map(|a| {
            format!(
                "{}/{} ({:.1} %) | {:.3}",
                a.identical,
                a.sequences,
                100.0 * a.identical_share(),
                a.token_agreement()
            )
        })
        .collect();
    println!("| {name} | {} |", cells.join(" | "));
}

fn fixtures() -> Result<()> {
    println!("| fixture family | bf16: identical | bf16: token agreement | int8: identical | int8: token agreement |");
    println!("|---|---|---|---|---|");
    let mut totals = [Agreement::default(); 2];
    for model in MODELS {
        let ids = |d| -> Result<Vec<Vec<u32>>> {
            let e = engine(&model_dir(model), d)?;
            Ok(fixture_sequences(&e, model)
                .into_iter()
                .map(|(_, s)| s)
                .collect())
        };
        let want = ids(RunDtype::F32)?;
        let tallies: Vec<Agreement> = LOW
            .iter()
            .map(|&d| Ok(Agreement::between(&ids(d)?, &want)))
            .collect::<Result<_>>()?;
        for (t, a) in totals.iter_mut().zip(&tallies) {
            t.merge(a);
        }
        row(model, &tallies);
    }
    row("**all**", &totals);
    Ok(())
}

fn own_checkpoint(args: &[String], dir: PathBuf) -> Result<()> {
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let inputs = flag("--inputs").context("--model needs --inputs FILE")?;
    let limit = arg(args, "--limit", 64)?;
    let text = std::fs::read_to_string(inputs).with_context(|| format!("reading {inputs}"))?;
    let inputs: Vec<&str> = text
        .lines()
        .map(|l| l.split('\t').next().unwrap_or(""))
        .filter(|l| !l.trim().is_empty())
        .take(limit)
        .collect();
    let overrides = GenerationOverrides {
        num_beams: Some(arg(args, "--beams", 4)?),
        max_new_tokens: Some(arg(args, "--max-new-tokens", 32)?),
        ..GenerationOverrides::default()
    };
    // Per dtype, one load: the generated sequences, and the argmax next tokens with
    // f32's outputs fed as the prefix (agreement without the cascade).
    let run = |d, prefixes: Option<&[Vec<u32>]>| -> Result<(Vec<Vec<u32>>, Vec<u32>)> {
        let e = engine(&dir, d)?;
        let cfg = e.defaults().with_overrides(&overrides)?;
        let encoded: Vec<Vec<u32>> = inputs
            .iter()
            .map(|t| e.encode(t, None))
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for batch in encoded.chunks(8) {
            for o in e.generate_ids(batch, &cfg, &NoObserver)? {
                let Outcome::Finished(hyps) = o else {
                    anyhow::bail!("cancelled")
                };
                out.extend(hyps.into_iter().map(|h| h.ids));
            }
        }
        let forced = teacher_forced(&e, &encoded, prefixes.unwrap_or(&out))?;
        Ok((out, forced))
    };
    let (want, reference) = run(RunDtype::F32, None)?;
    let (tallies, forced): (Vec<Agreement>, Vec<f64>) = LOW
        .iter()
        .map(|&d| {
            let (got, argmax) = run(d, Some(&want))?;
            let same = argmax
                .iter()
                .zip(&reference)
                .filter(|(a, b)| a == b)
                .count();
            Ok((
                Agreement::between(&got, &want),
                same as f64 / reference.len().max(1) as f64,
            ))
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    println!();
    println!(
        "{}: {} inputs, num_beams {:?}, max_new_tokens {:?}",
        dir.display(),
        inputs.len(),
        overrides.num_beams,
        overrides.max_new_tokens
    );
    println!("| checkpoint | bf16: identical | bf16: token agreement | int8: identical | int8: token agreement |");
    println!("|---|---|---|---|---|");
    row(&dir.display().to_string(), &tallies);
    println!();
    println!(
        "next-token agreement with f32, teacher-forced on f32's outputs ({} positions): \
         bf16 {:.3}, int8 {:.3}",
        reference.len(),
        forced[0],
        forced[1]
    );
    Ok(())
}

/// The argmax next token at every position of `outputs` (each input's best sequence,
/// from its decoder start token), with that sequence fed as the prefix.
fn teacher_forced(e: &Engine, inputs: &[Vec<u32>], outputs: &[Vec<u32>]) -> Result<Vec<u32>> {
    let model = e.model();
    let mut argmax = Vec::new();
    for (input, output) in inputs.iter().zip(outputs) {
        let enc = model.encode(std::slice::from_ref(input))?;
        let cross = CrossBatch::new(vec![&enc[0]], vec![1]);
        let mut state = model.new_decoder_state();
        state.add_rows(1);
        for &token in &output[..output.len().saturating_sub(1)] {
            let logits = model.decode_step(&[token], &mut state, &cross)?;
            let logits = logits.flatten_all()?.to_vec1::<f32>()?;
            let best = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b]));
            argmax.push(best.unwrap_or(0) as u32);
        }
    }
    Ok(argmax)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    println!("kernels: {}", encdec::model::kernel_choice());
    fixtures()?;
    let model = args
        .iter()
        .position(|a| a == "--model")
        .and_then(|i| args.get(i + 1));
    if let Some(dir) = model {
        own_checkpoint(&args, PathBuf::from(dir))?;
    }
    Ok(())
}
