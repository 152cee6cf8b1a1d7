//! What joining costs a running batch: the decode-step time of a batch of long beam
//! searches before, while and after short greedy inputs join and leave it, against the
//! same batch with nobody joining (the baseline, same process).
//!
//! cargo bench --bench joins -- MODEL_DIR [--heavy 8] [--beams 8] [--steps 48]
//!     [--joiners 10] [--join-at 8] [--joiner-tokens 16] [--src-len 256]

mod common;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use common::arg;
use encdec::engine::{Engine, EngineOptions};
use encdec::generation::{GenerationOverrides, Joiner, RunningBatch};

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Step times of one run; `joiners` join before step `join_at` when there are any.
/// Returns (step seconds, seconds of the join's encoder pass).
fn run(
    engine: &Engine,
    heavy: &[Joiner<usize>],
    joiners: &[Joiner<usize>],
    join_at: usize,
    steps: usize,
) -> Result<(Vec<f64>, f64)> {
    let mut batch = RunningBatch::new(engine.model());
    batch.join(heavy.iter().map(clone).collect())?;
    let mut times = Vec::with_capacity(steps);
    let mut join_seconds = 0.0;
    for step in 0..steps {
        if step == join_at && !joiners.is_empty() {
            let t = Instant::now();
            batch.join(joiners.iter().map(clone).collect())?;
            join_seconds = t.elapsed().as_secs_f64();
        }
        let t = Instant::now();
        batch.step()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok((times, join_seconds))
}

fn clone(j: &Joiner<usize>) -> Joiner<usize> {
    Joiner {
        key: j.key,
        ids: j.ids.clone(),
        cfg: j.cfg.clone(),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let dir = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .context("usage: joins MODEL_DIR [--heavy N] [--beams N] [--steps N] ...")?;
    let heavy_n = arg(&args, "--heavy", 8)?;
    let beams = arg(&args, "--beams", 8)?;
    let steps = arg(&args, "--steps", 48)?;
    let joiners_n = arg(&args, "--joiners", 10)?;
    let join_at = arg(&args, "--join-at", 8)?;
    let joiner_tokens = arg(&args, "--joiner-tokens", 16)?;
    let src_len = arg(&args, "--src-len", 256)?;
    let engine = Engine::load(dir.as_ref(), &EngineOptions::default())?;
    let with = |o: GenerationOverrides| -> Result<Arc<_>> {
        Ok(Arc::new(engine.defaults().with_overrides(&o)?))
    };
    // EOS is banned until max_length, so every sequence runs its full length.
    let heavy_cfg = with(GenerationOverrides {
        num_beams: Some(beams),
        max_length: Some(steps + 1),
        min_length: Some(steps + 1),
        ..Default::default()
    })?;
    let small_cfg = with(GenerationOverrides {
        num_beams: Some(1),
        max_length: Some(joiner_tokens + 1),
        min_length: Some(joiner_tokens + 1),
        ..Default::default()
    })?;
    let ids = |b: usize| -> Vec<u32> {
        (0..src_len)
            .map(|i| 1000 + ((i * 7 + b) % 5000) as u32)
            .collect()
    };
    let heavy: Vec<Joiner<usize>> = (0..heavy_n)
        .map(|b| Joiner {
            key: b,
            ids: ids(b),
            cfg: heavy_cfg.clone(),
        })
        .collect();
    let joiners: Vec<Joiner<usize>> = (0..joiners_n)
        .map(|b| Joiner {
            key: heavy_n + b,
            ids: ids(100 + b),
            cfg: small_cfg.clone(),
        })
        .collect();

    let (alone, _) = run(&engine, &heavy, &[], join_at, steps)?;
    let (shared, join_seconds) = run(&engine, &heavy, &joiners, join_at, steps)?;
    let leave = join_at + joiner_tokens;
    let phase =
        |t: &[f64], from: usize, to: usize| median(t[from.min(t.len())..to.min(t.len())].to_vec());
    println!(
        "{heavy_n} inputs x {beams} beams, {steps} steps; {joiners_n} greedy inputs of \
         {joiner_tokens} tokens join before step {join_at}; {src_len} input tokens each"
    );
    println!("join (encoder pass of the joiners): {join_seconds:.3} s");
    println!("| steps | median step alone (s) | with joiners (s) | ratio |");
    println!("|---|---|---|---|");
    for (name, from, to) in [
        ("before the join", 1, join_at),
        ("joiners running", join_at, leave),
        ("after they left", leave + 1, steps),
    ] {
        let (a, b) = (phase(&alone, from, to), phase(&shared, from, to));
        println!("| {name} ({from}..{to}) | {a:.4} | {b:.4} | {:.2} |", b / a);
    }
    Ok(())
}
