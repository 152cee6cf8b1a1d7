//! SARI (Xu et al., 2016) with the semantics of Hugging Face `evaluate`'s
//! `sari` metric (itself the tensor2tensor variant: 0/0 counts as 1, and the
//! keep-recall bug of the original script fixed), and the exact-match score of
//! `evaluate`'s `wiki_split` metric.
//!
//! Text normalisation follows `evaluate`: every source, prediction and
//! reference is lowercased and tokenized with sacreBLEU's `13a` tokenizer,
//! then n-grams (n = 1..4) are taken over a split on single spaces. Note this
//! differs slightly from EASSE's `corpus_sari`, which averages the
//! keep/delete/add statistics over the corpus before combining them.

use std::collections::{HashMap, HashSet};

use super::bleu::{py_split, tokenize_13a};
use super::EvalError;

/// `evaluate`'s `normalize()`: lowercase, then sacreBLEU 13a.
pub fn normalize(sentence: &str) -> String {
    tokenize_13a(&sentence.to_lowercase())
}

/// A multiset that remembers first-insertion order, because Python's
/// `Counter` iterates in that order and float sums depend on it.
#[derive(Default)]
struct Counter<'a> {
    order: Vec<&'a str>,
    counts: HashMap<&'a str, u64>,
}

impl<'a> Counter<'a> {
    fn from_items(items: impl IntoIterator<Item = &'a str>, times: u64) -> Self {
        let mut c = Counter::default();
        for it in items {
            c.add(it, times);
        }
        c
    }

    fn add(&mut self, item: &'a str, n: u64) {
        let e = self.counts.entry(item).or_insert_with(|| {
            self.order.push(item);
            0
        });
        *e += n;
    }

    fn get(&self, item: &str) -> u64 {
        self.counts.get(item).copied().unwrap_or(0)
    }

    /// Entries with a positive count, in order.
    fn iter(&self) -> impl Iterator<Item = (&'a str, u64)> + '_ {
        self.order
            .iter()
            .map(|k| (*k, self.counts[k]))
            .filter(|(_, c)| *c > 0)
    }

    fn len(&self) -> usize {
        self.iter().count()
    }

    /// `Counter & other`: pointwise minimum, positive entries only.
    fn and(&self, other: &Counter<'a>) -> Counter<'a> {
        let mut c = Counter::default();
        for (k, v) in self.iter() {
            let m = v.min(other.get(k));
            if m > 0 {
                c.add(k, m);
            }
        }
        c
    }

    /// `Counter - other`: saturating difference, positive entries only.
    fn sub(&self, other: &Counter<'a>) -> Counter<'a> {
        let mut c = Counter::default();
        for (k, v) in self.iter() {
            let d = v.saturating_sub(other.get(k));
            if d > 0 {
                c.add(k, d);
            }
        }
        c
    }
}

fn f1(p: f64, r: f64) -> f64 {
    if p > 0.0 || r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    }
}

/// Keep F1, delete precision and add F1 for one n-gram order (`SARIngram`).
fn sari_ngram(
    source: &[String],
    candidate: &[String],
    references: &[Vec<String>],
) -> (f64, f64, f64) {
    let numref = references.len() as u64;
    let r = Counter::from_items(references.iter().flatten().map(String::as_str), 1);
    // Source and candidate counts are scaled by the number of references so
    // that they compare with the summed reference counts.
    let s = Counter::from_items(source.iter().map(String::as_str), numref);
    let c = Counter::from_items(candidate.iter().map(String::as_str), numref);

    let keep = s.and(&c);
    let keep_good = keep.and(&r);
    let keep_all = s.and(&r);
    let mut keep_p_sum = 0.0;
    let mut keep_r_sum = 0u64;
    for (g, n) in keep_good.iter() {
        keep_p_sum += n as f64 / keep.get(g) as f64;
        keep_r_sum += n;
    }
    let keep_p = if keep.len() > 0 {
        keep_p_sum / keep.len() as f64
    } else {
        1.0
    };
    let keep_all_total: u64 = keep_all.iter().map(|(_, n)| n).sum();
    let keep_r = if keep_all.len() > 0 {
        keep_r_sum as f64 / keep_all_total as f64
    } else {
        1.0
    };
    let keep_f = f1(keep_p, keep_r);

    let del = s.sub(&c);
    let del_good = del.sub(&r);
    let mut del_p_sum = 0.0;
    for (g, n) in del_good.iter() {
        del_p_sum += n as f64 / del.get(g) as f64;
    }
    let del_p = if del.len() > 0 {
        del_p_sum / del.len() as f64
    } else {
        1.0
    };

    // Additions are judged on n-gram types (sets), not counts.
    let s_set: HashSet<&str> = s.order.iter().copied().collect();
    let r_set: HashSet<&str> = r.order.iter().copied().collect();
    let c_set: HashSet<&str> = c.order.iter().copied().collect();
    let add = c_set.difference(&s_set).count();
    let add_good = c_set
        .iter()
        .filter(|g| !s_set.contains(*g) && r_set.contains(*g))
        .count();
    let add_all = r_set.difference(&s_set).count();
    let add_p = if add > 0 {
        add_good as f64 / add as f64
    } else {
        1.0
    };
    let add_r = if add_all > 0 {
        add_good as f64 / add_all as f64
    } else {
        1.0
    };
    let add_f = f1(add_p, add_r);

    (keep_f, del_p, add_f)
}

/// All n-grams of one order from a space-split token list, joined by spaces.
fn ngrams(tokens: &[&str], n: usize) -> Vec<String> {
    tokens.windows(n).map(|w| w.join(" ")).collect()
}

/// `SARIsent` on already-normalised strings, in [0, 1].
///
/// Tokens come from `split(" ")`, so an empty sentence is one empty token,
/// exactly as in Python.
pub fn sari_sentence_normalized<R: AsRef<str>>(
    source: &str,
    prediction: &str,
    references: &[R],
) -> f64 {
    let s1: Vec<&str> = source.split(' ').collect();
    let c1: Vec<&str> = prediction.split(' ').collect();
    let r1: Vec<Vec<&str>> = references
        .iter()
        .map(|r| r.as_ref().split(' ').collect())
        .collect();
    let (mut keep, mut del, mut add) = (0.0, 0.0, 0.0);
    for n in 1..=4 {
        let rn: Vec<Vec<String>> = r1.iter().map(|r| ngrams(r, n)).collect();
        let (k, d, a) = sari_ngram(&ngrams(&s1, n), &ngrams(&c1, n), &rn);
        keep += k;
        del += d;
        add += a;
    }
    (keep / 4.0 + del / 4.0 + add / 4.0) / 3.0
}

/// SARI of one example on raw text (normalised here), in [0, 1].
pub fn sari_sentence<R: AsRef<str>>(source: &str, prediction: &str, references: &[R]) -> f64 {
    let refs: Vec<String> = references.iter().map(|r| normalize(r.as_ref())).collect();
    sari_sentence_normalized(&normalize(source), &normalize(prediction), &refs)
}

fn check_lengths(n: usize, what: &'static str, got: usize) -> Result<(), EvalError> {
    if n == got {
        Ok(())
    } else {
        Err(EvalError::LengthMismatch {
            what,
            expected: n,
            got,
        })
    }
}

/// Corpus SARI on the 0-100 scale: the mean of the sentence scores, as
/// `evaluate.load("sari").compute(...)["sari"]`.
pub fn corpus_sari<S: AsRef<str>, P: AsRef<str>, R: AsRef<str>>(
    sources: &[S],
    predictions: &[P],
    references: &[Vec<R>],
) -> Result<f64, EvalError> {
    check_lengths(predictions.len(), "sources", sources.len())?;
    check_lengths(predictions.len(), "references", references.len())?;
    if predictions.is_empty() {
        return Err(EvalError::Invalid("SARI needs at least one example".into()));
    }
    let mut total = 0.0;
    for (i, ((s, p), refs)) in sources.iter().zip(predictions).zip(references).enumerate() {
        if refs.is_empty() {
            return Err(EvalError::Invalid(format!("example {i} has no reference")));
        }
        total += sari_sentence(s.as_ref(), p.as_ref(), refs);
    }
    Ok(100.0 * (total / predictions.len() as f64))
}

/// SQuAD-style answer normalisation used by `wiki_split`'s exact match:
/// lowercase, drop ASCII punctuation, replace the articles a/an/the by a
/// space, collapse whitespace.
pub fn normalize_answer(s: &str) -> String {
    let no_punct: String = s
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    py_split(&remove_articles(&no_punct))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Python's `re.sub(r"\b(a|an|the)\b", " ", text)`. Word characters are
/// approximated by `char::is_alphanumeric` (Python: `str.isalnum` or `_`;
/// `_` is gone already); they differ only on rare combining marks.
fn remove_articles(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let is_word = |i: usize| {
        chars
            .get(i)
            .is_some_and(|c| c.is_alphanumeric() || *c == '_')
    };
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if i == 0 || !is_word(i - 1) {
            // Alternatives in regex order; a later one wins only if an earlier
            // one fails its trailing boundary.
            let hit = ["a", "an", "the"].iter().find(|alt| {
                let n = alt.len();
                chars.len() >= i + n
                    && chars[i..i + n].iter().copied().eq(alt.chars())
                    && !is_word(i + n)
            });
            if let Some(alt) = hit {
                out.push(' ');
                i += alt.len();
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Exact match of one prediction against any of its references.
pub fn exact_match_one<R: AsRef<str>>(prediction: &str, references: &[R]) -> bool {
    let p = normalize_answer(prediction);
    references.iter().any(|r| normalize_answer(r.as_ref()) == p)
}

/// Exact match on the 0-100 scale, as `wiki_split`'s `exact`.
pub fn exact_match<P: AsRef<str>, R: AsRef<str>>(
    predictions: &[P],
    references: &[Vec<R>],
) -> Result<f64, EvalError> {
    check_lengths(predictions.len(), "references", references.len())?;
    if predictions.is_empty() {
        return Err(EvalError::Invalid(
            "exact match needs at least one example".into(),
        ));
    }
    let hits = predictions
        .iter()
        .zip(references)
        .filter(|(p, refs)| exact_match_one(p.as_ref(), refs))
        .count();
    Ok(hits as f64 / predictions.len() as f64 * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluate_docstring_examples() {
        let sources = ["About 95 species are currently accepted ."];
        let predictions = ["About 95 you now get in ."];
        let refs = vec![vec![
            "About 95 species are currently known .",
            "About 95 species are now accepted .",
            "95 species are now accepted .",
        ]];
        let sari = corpus_sari(&sources, &predictions, &refs).unwrap();
        assert!((sari - 26.953601953601954).abs() < 1e-9, "{sari}");
        let one_ref = vec![vec!["About 95 species are currently known ."]];
        let sari = corpus_sari(&sources, &predictions, &one_ref).unwrap();
        assert!((sari - 21.805555555555557).abs() < 1e-9, "{sari}");
        assert_eq!(exact_match(&predictions, &one_ref).unwrap(), 0.0);
    }

    #[test]
    fn answer_normalisation() {
        assert_eq!(
            normalize_answer("The Cat, an apple & a dog!"),
            "cat apple dog"
        );
        assert_eq!(normalize_answer("Anna ate theory"), "anna ate theory");
    }
}
