//! Continuous batching keeps every sequence as transformers generates it alone: the
//! parity fixtures of each family, all parameter sets mixed in one running batch (beam
//! widths, lengths, penalties, returned sequences differ from row to row), inputs
//! joining at random steps, some cancelled at random steps, and a random quarter of the
//! inputs left waiting at each step (a scheduler pausing them); every finished sequence
//! compared with transformers' (ids exact, scores and token log-probs to 1e-4).

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use common::*;
use encdec::engine::{Engine, EngineOptions};
use encdec::generation::{GenerationConfig, Hypothesis, Joiner, RunningBatch};
use serde_json::Value;

/// A seeded generator, so that a failing schedule can be replayed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

struct Job {
    cfg: Arc<GenerationConfig>,
    ids: Vec<u32>,
    expected: Value,
    label: String,
}

fn jobs(model: &str, engine: &Engine) -> Vec<Job> {
    let mut out = Vec::new();
    for set in param_sets(model) {
        let cfg = Arc::new(engine.defaults().with_overrides(&set.overrides()).unwrap());
        for line in &set.lines {
            if line.get("error").is_some() {
                continue;
            }
            out.push(Job {
                cfg: cfg.clone(),
                ids: ids(&line["input_ids"]),
                expected: line.clone(),
                label: format!("{model}/{}/{}", set.name, line["id"].as_str().unwrap()),
            });
        }
    }
    out
}

fn compare(job: &Job, hyps: &[Hypothesis], failures: &mut Vec<String>) {
    let rows = job.expected["output_ids"].as_array().unwrap();
    if hyps.len() != rows.len() {
        failures.push(format!(
            "{}: {} sequences, want {}",
            job.label,
            hyps.len(),
            rows.len()
        ));
        return;
    }
    for (r, (hyp, row)) in hyps.iter().zip(rows).enumerate() {
        let want = trim_row(&ids(row), &job.cfg.eos_token_ids);
        if hyp.ids != want {
            failures.push(format!(
                "{}[{r}]: ids\n  got  {:?}\n  want {:?}",
                job.label, hyp.ids, want
            ));
            continue;
        }
        let want_score = job.expected["sequence_scores"][r].as_f64().unwrap();
        if (hyp.score as f64 - want_score).abs() > SCORE_TOL {
            failures.push(format!(
                "{}[{r}]: score {} vs {want_score}",
                job.label, hyp.score
            ));
        }
        let want_lp = floats(&job.expected["token_logprobs"][r]);
        if let Some((k, (g, w))) = hyp
            .token_logprobs
            .iter()
            .zip(&want_lp)
            .enumerate()
            .find(|(_, (g, w))| (**g as f64 - **w).abs() > SCORE_TOL)
        {
            failures.push(format!("{}[{r}]: token_logprob {k}: {g} vs {w}", job.label));
        }
    }
}

/// Replays every fixture of `model` through one running batch on a random schedule.
fn replay(model: &str, seed: u64) {
    let engine = Engine::load(&model_dir(model), &EngineOptions::default()).unwrap();
    let jobs = jobs(model, &engine);
    let mut rng = Lcg(seed);
    // Arrival order: shuffled.
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut pending: VecDeque<usize> = order.into();
    // Every seventh job is cancelled at a random step after it joined.
    let mut cancel_at: HashMap<usize, usize> = HashMap::new();
    let mut batch = RunningBatch::new(engine.model());
    let (mut finished, mut cancelled, mut failures) = (0, 0, Vec::new());
    let mut step = 0usize;
    let mut max_rows = 0;
    let mut paused = 0;
    while !(pending.is_empty() && batch.is_empty()) {
        // Between 0 and 3 inputs join (at least one when nothing runs).
        let mut n = rng.below(4);
        if batch.is_empty() {
            n = n.max(1);
        }
        let joiners: Vec<Joiner<usize>> = (0..n)
            .filter_map(|_| pending.pop_front())
            .map(|j| {
                if j % 7 == 3 {
                    cancel_at.insert(j, step + rng.below(6));
                }
                Joiner {
                    key: j,
                    ids: jobs[j].ids.clone(),
                    cfg: jobs[j].cfg.clone(),
                }
            })
            .collect();
        batch.join(joiners).unwrap();
        // Cancelled ones leave between steps, some before their first.
        for j in batch
            .remove(|j| cancel_at.get(j).is_some_and(|&at| at <= step))
            .unwrap()
        {
            assert!(cancel_at.contains_key(&j));
            cancelled += 1;
        }
        if batch.is_empty() {
            continue;
        }
        max_rows = max_rows.max(batch.rows());
        let keys: Vec<usize> = batch.keys().copied().collect();
        let waiting: HashSet<usize> = keys.into_iter().filter(|_| rng.below(4) == 0).collect();
        paused += waiting.len();
        let out = batch.step_some(|j| !waiting.contains(j)).unwrap();
        step += 1;
        for (j, hyps) in out.finished {
            finished += 1;
            compare(&jobs[j], &hyps, &mut failures);
        }
    }
    assert!(
        failures.is_empty(),
        "{model} (seed {seed}): {} differences from transformers:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        finished + cancelled,
        jobs.len(),
        "{model}: every job answered once"
    );
    assert!(
        cancelled > 0 && finished > jobs.len() / 2,
        "{model}: {finished} finished, {cancelled} cancelled"
    );
    assert!(
        max_rows > 8,
        "{model}: the batch never held more than {max_rows} rows"
    );
    assert!(paused > 20, "{model}: only {paused} inputs ever waited");
}

#[test]
fn bert2bert() {
    replay("bert2bert", 1);
    replay("bert2bert", 2);
}

#[test]
fn bertshare() {
    replay("bertshare", 3);
}

#[test]
fn roberta2roberta() {
    replay("roberta2roberta", 4);
    replay("roberta2roberta", 5);
}

#[test]
fn robertashare() {
    replay("robertashare", 6);
}

#[test]
fn bert2gpt2() {
    replay("bert2gpt2", 7);
    replay("bert2gpt2", 8);
}

#[test]
fn roberta2gpt2() {
    replay("roberta2gpt2", 9);
}

#[test]
fn bertgeneration2bertgeneration() {
    replay("bertgeneration2bertgeneration", 10);
    replay("bertgeneration2bertgeneration", 11);
}
