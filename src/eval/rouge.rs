//! ROUGE-N, ROUGE-L and ROUGE-Lsum exactly as Google's `rouge-score` (0.1.2)
//! computes them with its default tokenizer.
//!
//! Tokenizer: lowercase, every run of characters outside `[a-z0-9]` becomes a
//! space, split, optionally Porter-stem tokens longer than 3 characters
//! (NLTK's stemmer, see [`super::porter`]). Non-ASCII text therefore
//! contributes no tokens at all, exactly as in Python.
//!
//! ROUGE-Lsum splits both texts into sentences on `'\n'` (rouge-score's
//! default, `split_summaries=False`) and computes the summary-level union
//! LCS with the double-counting guard of ROUGE-1.5.5.

use std::collections::HashMap;
use std::fmt;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

pub use super::bootstrap::{AggregateScore, BootstrapAggregator};
use super::porter;

/// Precision, recall and F1 for one ROUGE type.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Score {
    pub precision: f64,
    pub recall: f64,
    pub fmeasure: f64,
}

impl Score {
    fn new(precision: f64, recall: f64) -> Self {
        Self {
            precision,
            recall,
            fmeasure: fmeasure(precision, recall),
        }
    }
}

/// `rouge_score.scoring.fmeasure`, same operation order.
pub fn fmeasure(precision: f64, recall: f64) -> f64 {
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

/// `rouge1`..`rouge9`, `rougeL`, `rougeLsum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RougeType {
    N(u8),
    L,
    Lsum,
}

impl RougeType {
    /// The usual set: rouge1, rouge2, rougeL, rougeLsum.
    pub const DEFAULT: [RougeType; 4] = [
        RougeType::N(1),
        RougeType::N(2),
        RougeType::L,
        RougeType::Lsum,
    ];

    /// Parses the Python names (`rouge1`, `rougeL`, `rougeLsum`). Like Python,
    /// only one digit is accepted and it must be positive.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "rougeL" => Some(Self::L),
            "rougeLsum" => Some(Self::Lsum),
            _ => {
                let digit = name.strip_prefix("rouge")?;
                match digit.as_bytes() {
                    [d @ b'1'..=b'9'] => Some(Self::N(d - b'0')),
                    _ => None,
                }
            }
        }
    }
}

impl fmt::Display for RougeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::N(n) => write!(f, "rouge{n}"),
            Self::L => f.write_str("rougeL"),
            Self::Lsum => f.write_str("rougeLsum"),
        }
    }
}

impl Serialize for RougeType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Scores for each requested type, in request order (serialises as a map).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RougeScores(pub Vec<(RougeType, Score)>);

impl RougeScores {
    pub fn get(&self, kind: RougeType) -> Option<Score> {
        self.0.iter().find(|(k, _)| *k == kind).map(|(_, s)| *s)
    }
}

impl Serialize for RougeScores {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// `rouge_score.tokenize.tokenize` with the default tokenizer.
pub fn tokenize(text: &str, use_stemmer: bool) -> Vec<String> {
    // Python lowercases the whole text before filtering, so e.g. 'İ' (-> "i̇")
    // and the Kelvin sign (-> 'k') still yield ASCII letters.
    let lowered = text.to_lowercase();
    lowered
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(|t| {
            if use_stemmer && t.len() > 3 {
                porter::stem(t)
            } else {
                t.to_string()
            }
        })
        // Python's final validity filter: a stem of an ASCII word stays ASCII.
        .filter(|t| !t.is_empty())
        .collect()
}

/// `rouge_score.rouge_scorer.RougeScorer` with the default tokenizer.
#[derive(Debug, Clone)]
pub struct RougeScorer {
    types: Vec<RougeType>,
    use_stemmer: bool,
}

impl RougeScorer {
    pub fn new(types: &[RougeType], use_stemmer: bool) -> Self {
        Self {
            types: types.to_vec(),
            use_stemmer,
        }
    }

    /// Scores one prediction against one target (reference).
    pub fn score(&self, target: &str, prediction: &str) -> RougeScores {
        let target_tokens = tokenize(target, self.use_stemmer);
        let prediction_tokens = tokenize(prediction, self.use_stemmer);
        let scores = self
            .types
            .iter()
            .map(|&kind| {
                let s = match kind {
                    RougeType::N(n) => score_ngrams(
                        &ngrams(&target_tokens, n as usize),
                        &ngrams(&prediction_tokens, n as usize),
                    ),
                    RougeType::L => score_lcs(&target_tokens, &prediction_tokens),
                    RougeType::Lsum => {
                        summary_level_lcs(&self.sentences(target), &self.sentences(prediction))
                    }
                };
                (kind, s)
            })
            .collect();
        RougeScores(scores)
    }

    /// `score_multi`: per type, the score against the target with the highest
    /// F-measure (first one on ties). No targets gives all-zero scores.
    pub fn score_multi<S: AsRef<str>>(&self, targets: &[S], prediction: &str) -> RougeScores {
        let all: Vec<RougeScores> = targets
            .iter()
            .map(|t| self.score(t.as_ref(), prediction))
            .collect();
        let scores = self
            .types
            .iter()
            .enumerate()
            .map(|(i, &kind)| {
                let mut best = Score::default();
                for (j, s) in all.iter().enumerate() {
                    let s = s.0[i].1;
                    if j == 0 || s.fmeasure > best.fmeasure {
                        best = s;
                    }
                }
                (kind, best)
            })
            .collect();
        RougeScores(scores)
    }

    /// Sentences for ROUGE-Lsum: split on '\n', drop empty strings (a line of
    /// spaces survives and simply has no tokens, as in Python).
    fn sentences(&self, text: &str) -> Vec<Vec<String>> {
        text.split('\n')
            .filter(|s| !s.is_empty())
            .map(|s| tokenize(s, self.use_stemmer))
            .collect()
    }
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    if n > 0 && tokens.len() >= n {
        for w in tokens.windows(n) {
            *counts.entry(w).or_insert(0) += 1;
        }
    }
    counts
}

fn score_ngrams(
    target: &HashMap<&[String], usize>,
    prediction: &HashMap<&[String], usize>,
) -> Score {
    let overlap: usize = target
        .iter()
        .map(|(g, &c)| c.min(*prediction.get(g).unwrap_or(&0)))
        .sum();
    let target_count: usize = target.values().sum();
    let prediction_count: usize = prediction.values().sum();
    Score::new(
        overlap as f64 / prediction_count.max(1) as f64,
        overlap as f64 / target_count.max(1) as f64,
    )
}

/// Dynamic-programming LCS table, `(rows + 1) x (cols + 1)`, row-major.
fn lcs_table(reference: &[String], candidate: &[String]) -> Vec<Vec<u32>> {
    let mut t = vec![vec![0u32; candidate.len() + 1]; reference.len() + 1];
    for i in 1..=reference.len() {
        for j in 1..=candidate.len() {
            t[i][j] = if reference[i - 1] == candidate[j - 1] {
                t[i - 1][j - 1] + 1
            } else {
                t[i - 1][j].max(t[i][j - 1])
            };
        }
    }
    t
}

fn score_lcs(target: &[String], prediction: &[String]) -> Score {
    if target.is_empty() || prediction.is_empty() {
        return Score::default();
    }
    let lcs = lcs_table(target, prediction)[target.len()][prediction.len()] as f64;
    Score::new(lcs / prediction.len() as f64, lcs / target.len() as f64)
}

/// Indices into `reference` of one LCS, read out with Python's tie-break
/// (`_backtrack_norec`); which LCS is chosen changes the union in Lsum.
fn lcs_indices(reference: &[String], candidate: &[String]) -> Vec<usize> {
    let t = lcs_table(reference, candidate);
    let (mut i, mut j) = (reference.len(), candidate.len());
    let mut out = Vec::new();
    while i > 0 && j > 0 {
        if reference[i - 1] == candidate[j - 1] {
            out.push(i - 1);
            i -= 1;
            j -= 1;
        } else if t[i][j - 1] > t[i - 1][j] {
            j -= 1;
        } else {
            i -= 1;
        }
    }
    out.reverse();
    out
}

/// Summary-level LCS (ROUGE paper section 3.2, as in ROUGE-1.5.5).
fn summary_level_lcs(reference: &[Vec<String>], candidate: &[Vec<String>]) -> Score {
    if reference.is_empty() || candidate.is_empty() {
        return Score::default();
    }
    let m: usize = reference.iter().map(Vec::len).sum();
    let n: usize = candidate.iter().map(Vec::len).sum();
    if m == 0 || n == 0 {
        return Score::default();
    }
    // Token budgets stop a token from being counted more often than it occurs.
    let mut ref_counts: HashMap<&str, usize> = HashMap::new();
    let mut cand_counts: HashMap<&str, usize> = HashMap::new();
    for t in reference.iter().flatten() {
        *ref_counts.entry(t).or_insert(0) += 1;
    }
    for t in candidate.iter().flatten() {
        *cand_counts.entry(t).or_insert(0) += 1;
    }
    let mut hits = 0usize;
    for r in reference {
        let mut union: Vec<usize> = candidate.iter().flat_map(|c| lcs_indices(r, c)).collect();
        union.sort_unstable();
        union.dedup();
        for i in union {
            let tok = r[i].as_str();
            let (Some(c), Some(rc)) = (cand_counts.get_mut(tok), ref_counts.get_mut(tok)) else {
                continue;
            };
            if *c > 0 && *rc > 0 {
                hits += 1;
                *c -= 1;
                *rc -= 1;
            }
        }
    }
    Score::new(hits as f64 / n as f64, hits as f64 / m as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_examples() {
        assert_eq!(
            tokenize("The quick-brown FOX, 42!", false),
            ["the", "quick", "brown", "fox", "42"]
        );
        assert_eq!(tokenize("running dogs ran", true), ["run", "dog", "ran"]);
        assert!(tokenize("¿Qué? 東京", false) == ["qu"]);
    }

    #[test]
    fn parse_names() {
        assert_eq!(RougeType::parse("rouge2"), Some(RougeType::N(2)));
        assert_eq!(RougeType::parse("rougeLsum"), Some(RougeType::Lsum));
        assert_eq!(RougeType::parse("rouge0"), None);
        assert_eq!(RougeType::parse("rouge10"), None);
        assert_eq!(RougeType::N(3).to_string(), "rouge3");
    }

    #[test]
    fn readme_example() {
        // rouge-score README: rouge1 P=0.75 R=0.6667, rougeL F=0.7059 (no stemming)
        let s = RougeScorer::new(&[RougeType::N(1), RougeType::L], true).score(
            "The quick brown fox jumps over the lazy dog",
            "The quick brown dog jumps on the log.",
        );
        let r1 = s.get(RougeType::N(1)).unwrap();
        assert!((r1.precision - 0.75).abs() < 1e-12);
        assert!((r1.recall - 2.0 / 3.0).abs() < 1e-12);
    }
}
