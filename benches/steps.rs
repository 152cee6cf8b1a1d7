//! Where a generate() call spends its time: the encoder pass, and one decoder step at a
//! given number of rows, each with wall time and how many cores were busy.
//!
//! cargo bench --bench steps -- bench/out/bert2bert-base [--batch 8] [--beams 4]
//!     [--src-len 256] [--steps 16] [--encode-repeats 3]
//!
//! A baseline for the ratios: the same encoder pass and decode step at batch 1, beams 1.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use common::arg;
use encdec::engine::{Engine, EngineOptions};
use encdec::model::CrossBatch;

/// CPU seconds (user + system) this process has used, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the comm field.
    (ticks(11) + ticks(12)) / 100.0
}

struct Timed {
    wall: f64,
    cores: f64,
}

fn timed(mut f: impl FnMut() -> Result<()>) -> Result<Timed> {
    let (t, c) = (Instant::now(), cpu_seconds());
    f()?;
    let wall = t.elapsed().as_secs_f64();
    Ok(Timed {
        wall,
        cores: (cpu_seconds() - c) / wall,
    })
}

struct Shape {
    batch: usize,
    beams: usize,
    src_len: usize,
    steps: usize,
    encode_repeats: usize,
}

fn phases(engine: &Engine, shape: &Shape) -> Result<(Timed, Timed)> {
    let &Shape {
        batch,
        beams,
        src_len,
        steps,
        encode_repeats,
    } = shape;
    let model = engine.model();
    let inputs: Vec<Vec<u32>> = (0..batch)
        .map(|b| {
            (0..src_len)
                .map(|i| 1000 + ((i * 7 + b) % 5000) as u32)
                .collect()
        })
        .collect();
    // The median of a few encoder passes (this machine class is shared and noisy).
    let mut enc = None;
    let mut encodes = (0..encode_repeats)
        .map(|_| {
            timed(|| {
                enc = Some(model.encode(&inputs)?);
                Ok(())
            })
        })
        .collect::<Result<Vec<_>>>()?;
    encodes.sort_by(|a, b| a.wall.total_cmp(&b.wall));
    let encode = encodes.swap_remove(encode_repeats / 2);
    let enc = enc.expect("encoded");
    let cross = CrossBatch::uniform(&enc, beams);
    let mut state = model.new_decoder_state();
    state.add_rows(batch * beams);
    let tokens: Vec<u32> = (0..batch * beams).map(|r| 100 + r as u32).collect();
    // Warm-up steps, then the measured ones (the cache grows as in a real generation).
    for _ in 0..2 {
        model.decode_step(&tokens, &mut state, &cross)?;
    }
    let step = timed(|| {
        for _ in 0..steps {
            model.decode_step(&tokens, &mut state, &cross)?;
        }
        Ok(())
    })?;
    Ok((
        encode,
        Timed {
            wall: step.wall / steps as f64,
            cores: step.cores,
        },
    ))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let dir = PathBuf::from(
        args.first()
            .context("usage: steps MODEL_DIR [--batch N] ...")?,
    );
    let batch = arg(&args, "--batch", 8)?;
    let beams = arg(&args, "--beams", 4)?;
    let src_len = arg(&args, "--src-len", 256)?;
    let steps = arg(&args, "--steps", 16)?;
    let encode_repeats = arg(&args, "--encode-repeats", 3)?.max(1);
    let engine = Engine::load(&dir, &EngineOptions::default())?;

    let shape = |batch, beams| Shape {
        batch,
        beams,
        src_len,
        steps,
        encode_repeats,
    };
    let (enc1, step1) = phases(&engine, &shape(1, 1))?;
    let (enc, step) = phases(&engine, &shape(batch, beams))?;
    println!("phase                         wall ms   cores   vs batch 1 × 1 (per row)");
    println!(
        "encode   batch 1              {:8.1}   {:5.2}",
        enc1.wall * 1e3,
        enc1.cores
    );
    println!(
        "encode   batch {batch:<3}            {:8.1}   {:5.2}   {:.2}",
        enc.wall * 1e3,
        enc.cores,
        enc.wall / batch as f64 / enc1.wall
    );
    println!(
        "decode   1 row                {:8.1}   {:5.2}",
        step1.wall * 1e3,
        step1.cores
    );
    let rows = batch * beams;
    println!(
        "decode   {rows:<3} rows             {:8.1}   {:5.2}   {:.2}",
        step.wall * 1e3,
        step.cores,
        step.wall / rows as f64 / step1.wall
    );
    Ok(())
}
