//! Evaluation metrics in pure Rust, matching the Python reference packages
//! number for number:
//!
//! - [`rouge`]: Google's `rouge-score` 0.1.2 (ROUGE-N/L/Lsum, NLTK Porter
//!   stemming, `BootstrapAggregator` with numpy's resampling generator);
//! - [`bleu`]: sacreBLEU 2.6.0 corpus BLEU with its defaults and signature;
//! - [`sari`]: Hugging Face `evaluate`'s `sari` and `wiki_split` exact match.
//!
//! `tests/eval_metrics.rs` checks every metric against scores produced by
//! `tests/fixtures/eval/make_reference.py`.

pub mod agreement;
pub mod bleu;
mod bootstrap;
pub mod data;
mod porter;
pub mod rouge;
pub mod run;
pub mod sari;

use std::collections::BTreeMap;

use serde::Serialize;

pub use porter::stem as porter_stem;

/// Errors for inputs the Python references also reject.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EvalError {
    #[error("{what}: expected {expected} items, got {got}")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{0}")]
    Invalid(String),
}

/// All corpus-level metrics for one run, ready to print as JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricReport {
    pub examples: usize,
    /// Per ROUGE type: bootstrap low/mid/high and the mean (F-measures etc.).
    pub rouge: BTreeMap<String, rouge::AggregateScore>,
    pub bleu: bleu::BleuScore,
    /// Present when sources were given.
    pub sari: Option<f64>,
    pub exact_match: f64,
}

/// Options for [`MetricReport::compute`].
#[derive(Debug, Clone, Copy)]
pub struct ReportOptions {
    pub use_stemmer: bool,
    pub bootstrap_seed: u32,
}

impl Default for ReportOptions {
    fn default() -> Self {
        // Stemming on, as Hugging Face's summarisation examples use it.
        Self {
            use_stemmer: true,
            bootstrap_seed: 42,
        }
    }
}

impl MetricReport {
    /// Scores `predictions` against `references` (several per example are
    /// allowed; ROUGE keeps the best-scoring one, as `score_multi`).
    pub fn compute<P: AsRef<str>, R: AsRef<str>>(
        predictions: &[P],
        references: &[Vec<R>],
        sources: Option<&[String]>,
        options: ReportOptions,
    ) -> Result<Self, EvalError> {
        let bleu = bleu::corpus_bleu(predictions, references)?;
        let scorer = rouge::RougeScorer::new(&rouge::RougeType::DEFAULT, options.use_stemmer);
        let mut agg = rouge::BootstrapAggregator::new(options.bootstrap_seed);
        for (p, refs) in predictions.iter().zip(references) {
            agg.add_scores(&scorer.score_multi(refs, p.as_ref()));
        }
        let rouge = agg
            .aggregate()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let sari = match sources {
            Some(s) => Some(sari::corpus_sari(s, predictions, references)?),
            None => None,
        };
        Ok(Self {
            examples: predictions.len(),
            rouge,
            bleu,
            sari,
            exact_match: sari::exact_match(predictions, references)?,
        })
    }
}
