//! One evaluation run of `encdec eval`: the task's metrics on a test set,
//! generation through the engine in batches, and the printed table.
//!
//! Metrics per task ([`Task`]):
//! - `summarize`: ROUGE-1/2/L/Lsum precision, recall and F1, bootstrap
//!   low/mid/high (rouge-score, 0-1 scale);
//! - `translate`: corpus BLEU with sacreBLEU's signature (0-100);
//! - `split`: SARI, exact match and BLEU (0-100), as `evaluate`'s `wiki_split`;
//! - `fuse`: SARI and exact match (0-100).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use super::bleu::{corpus_bleu, BleuScore};
use super::data::{join_sentences, Example};
use super::rouge::{AggregateScore, BootstrapAggregator, RougeScorer, RougeType};
use super::sari::{corpus_sari, exact_match};
use super::EvalError;
use crate::engine::Engine;
use crate::generation::GenerationConfig;

pub use crate::task::Task;

/// Scoring options (ROUGE only).
#[derive(Debug, Clone, Copy)]
pub struct ScoreOptions {
    /// Porter-stem ROUGE tokens (rouge-score's `use_stemmer`).
    pub use_stemmer: bool,
    /// numpy seed of the ROUGE bootstrap.
    pub bootstrap_seed: u32,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        Self {
            use_stemmer: false,
            bootstrap_seed: 42,
        }
    }
}

/// ROUGE of a summarisation run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RougeReport {
    pub use_stemmer: bool,
    pub bootstrap_seed: u32,
    /// `rouge1`, `rouge2`, `rougeL`, `rougeLsum`: low/mid/high/mean of P, R, F.
    pub scores: BTreeMap<String, AggregateScore>,
}

/// The task's corpus-level metrics; only the task's own fields are set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskMetrics {
    pub task: Task,
    pub examples: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rouge: Option<RougeReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bleu: Option<BleuScore>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sari: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact_match: Option<f64>,
}

/// Scores `predictions` (aligned with `examples`) for `task`.
///
/// For `split`, WikiSplit's `<::::>` in a prediction is read as a sentence
/// boundary, as in the references.
pub fn score<P: AsRef<str>>(
    task: Task,
    examples: &[Example],
    predictions: &[P],
    options: ScoreOptions,
) -> Result<TaskMetrics, EvalError> {
    if predictions.len() != examples.len() {
        return Err(EvalError::LengthMismatch {
            what: "predictions",
            expected: examples.len(),
            got: predictions.len(),
        });
    }
    let predictions: Vec<String> = predictions
        .iter()
        .map(|p| match task {
            Task::Split => join_sentences(p.as_ref()),
            _ => p.as_ref().to_string(),
        })
        .collect();
    let sources: Vec<&str> = examples.iter().map(|e| e.source.as_str()).collect();
    let references: Vec<Vec<&str>> = examples
        .iter()
        .map(|e| e.references.iter().map(String::as_str).collect())
        .collect();
    let mut metrics = TaskMetrics {
        task,
        examples: examples.len(),
        rouge: None,
        bleu: None,
        sari: None,
        exact_match: None,
    };
    match task {
        Task::Summarize => metrics.rouge = Some(rouge(&predictions, &references, options)),
        Task::Translate => metrics.bleu = Some(corpus_bleu(&predictions, &references)?),
        Task::Split => {
            metrics.sari = Some(corpus_sari(&sources, &predictions, &references)?);
            metrics.exact_match = Some(exact_match(&predictions, &references)?);
            metrics.bleu = Some(corpus_bleu(&predictions, &references)?);
        }
        Task::Fuse => {
            metrics.sari = Some(corpus_sari(&sources, &predictions, &references)?);
            metrics.exact_match = Some(exact_match(&predictions, &references)?);
        }
    }
    Ok(metrics)
}

fn rouge(predictions: &[String], references: &[Vec<&str>], options: ScoreOptions) -> RougeReport {
    let scorer = RougeScorer::new(&RougeType::DEFAULT, options.use_stemmer);
    let mut agg = BootstrapAggregator::new(options.bootstrap_seed);
    for (p, refs) in predictions.iter().zip(references) {
        agg.add_scores(&scorer.score_multi(refs, p));
    }
    RougeReport {
        use_stemmer: options.use_stemmer,
        bootstrap_seed: options.bootstrap_seed,
        scores: agg
            .aggregate()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    }
}

/// The metrics as a plain-text table for the terminal.
pub fn render_table(m: &TaskMetrics) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "task: {}, {} examples", m.task, m.examples);
    if let Some(r) = &m.rouge {
        let _ = writeln!(
            s,
            "ROUGE (x100, bootstrap 95% interval{})",
            if r.use_stemmer {
                ", Porter stemmer"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "{:<10} {:>7} {:>7} {:>7} {:>7} {:>7}",
            "metric", "F", "F low", "F high", "P", "R"
        );
        for (name, label) in [
            ("rouge1", "ROUGE-1"),
            ("rouge2", "ROUGE-2"),
            ("rougeL", "ROUGE-L"),
            ("rougeLsum", "ROUGE-Lsum"),
        ] {
            if let Some(a) = r.scores.get(name) {
                let _ = writeln!(
                    s,
                    "{label:<10} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2}",
                    100.0 * a.mid.fmeasure,
                    100.0 * a.low.fmeasure,
                    100.0 * a.high.fmeasure,
                    100.0 * a.mid.precision,
                    100.0 * a.mid.recall,
                );
            }
        }
    }
    if let Some(sari) = m.sari {
        let _ = writeln!(s, "{:<12} {sari:>7.2}", "SARI");
    }
    if let Some(em) = m.exact_match {
        let _ = writeln!(s, "{:<12} {em:>7.2}", "Exact match");
    }
    if let Some(b) = &m.bleu {
        let _ = writeln!(s, "{:<12} {:>7.2}", "BLEU", b.score);
        let _ = writeln!(s, "{}", b.format());
        let _ = writeln!(s, "signature: {}", b.signature);
    }
    s
}

/// One line of `predictions.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PredictionRecord<'a> {
    pub id: &'a Value,
    pub source: &'a str,
    pub prediction: &'a str,
    pub references: &'a [String],
    /// Why the input produced no prediction (the prediction is then empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

/// A model's output for one example: its first returned sequence, or the
/// per-input error (then `text` is empty and scored as such).
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub text: String,
    pub error: Option<String>,
}

/// Generates predictions for `examples` in order, `batch_size` inputs per
/// engine call; `on_batch` gets every finished batch with its first index
/// (for progress and incremental output).
pub fn generate_predictions(
    engine: &Engine,
    cfg: &GenerationConfig,
    examples: &[Example],
    batch_size: usize,
    mut on_batch: impl FnMut(usize, &[Prediction]) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Prediction>> {
    let mut out = Vec::with_capacity(examples.len());
    for (b, batch) in examples.chunks(batch_size.max(1)).enumerate() {
        let texts: Vec<&str> = batch.iter().map(|e| e.source.as_str()).collect();
        let preds: Vec<Prediction> = engine
            .generate_texts(&texts, cfg)?
            .into_iter()
            .map(|r| match r {
                Ok(gens) => Prediction {
                    text: gens.into_iter().next().map(|g| g.text).unwrap_or_default(),
                    error: None,
                },
                Err(e) => Prediction {
                    text: String::new(),
                    error: Some(e.to_string()),
                },
            })
            .collect();
        on_batch(b * batch_size.max(1), &preds)?;
        out.extend(preds);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(source: &str, refs: &[&str]) -> Example {
        Example {
            id: Value::Null,
            source: source.into(),
            references: refs.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn only_the_tasks_metrics_are_set() {
        let data = [ex("a b c .", &["a b . c ."])];
        let preds = ["a b . <::::> c ."];
        let m = score(Task::Split, &data, &preds, ScoreOptions::default()).unwrap();
        assert!(m.rouge.is_none());
        // The separator in the prediction is a sentence boundary: a perfect match.
        assert!((m.bleu.unwrap().score - 100.0).abs() < 1e-9);
        assert_eq!(m.exact_match, Some(100.0));
        let m = score(Task::Fuse, &data, &["a b . c ."], ScoreOptions::default()).unwrap();
        assert_eq!(m.exact_match, Some(100.0));
        assert!(m.bleu.is_none());
        let err = score(Task::Translate, &data, &["x", "y"], ScoreOptions::default());
        assert!(err.is_err());
    }

    #[test]
    fn table_mentions_every_metric() {
        let data = [ex("s", &["the cat sat"])];
        let m = score(
            Task::Summarize,
            &data,
            &["the cat"],
            ScoreOptions::default(),
        )
        .unwrap();
        let t = render_table(&m);
        for label in ["ROUGE-1", "ROUGE-2", "ROUGE-L", "ROUGE-Lsum"] {
            assert!(t.contains(label), "{t}");
        }
        assert_eq!("fuse".parse::<Task>().unwrap(), Task::Fuse);
        assert!("nope".parse::<Task>().is_err());
    }
}
