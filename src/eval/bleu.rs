//! Corpus BLEU exactly as sacreBLEU 2.x computes it with its defaults:
//! `13a` tokenizer, mixed case, `exp` smoothing, max n-gram order 4, no
//! effective order, closest reference length (shortest on ties).
//!
//! References are given per segment (`references[i]` are the references of
//! hypothesis `i`), which is sacreBLEU's stream layout transposed; segments
//! may have different numbers of references (sacreBLEU's `None` padding),
//! and the signature then says `nrefs:var`.

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;
use serde::Serialize;

use super::EvalError;

/// The sacreBLEU version the reference scores and the signature come from.
pub const SACREBLEU_VERSION: &str = "2.6.0";

const MAX_ORDER: usize = 4;

/// A corpus (or single-segment) BLEU result with sacreBLEU's fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BleuScore {
    /// BLEU on the 0-100 scale.
    pub score: f64,
    /// Matching n-grams per order (clipped by the reference counts).
    pub counts: [u64; MAX_ORDER],
    /// Hypothesis n-grams per order.
    pub totals: [u64; MAX_ORDER],
    /// Smoothed n-gram precisions, 0-100.
    pub precisions: [f64; MAX_ORDER],
    pub bp: f64,
    pub sys_len: u64,
    pub ref_len: u64,
    /// The signature string (`nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`).
    pub signature: String,
}

impl BleuScore {
    /// `sys_len / ref_len`, 0 when there is no reference token.
    pub fn ratio(&self) -> f64 {
        if self.ref_len > 0 {
            self.sys_len as f64 / self.ref_len as f64
        } else {
            0.0
        }
    }

    /// sacreBLEU's one-line rendering, e.g.
    /// `BLEU = 14.54 57.1/20.0/0.0/0.0 (BP = 1.000 ratio = 1.000 hyp_len = 7 ref_len = 7)`.
    pub fn format(&self) -> String {
        let prec: Vec<String> = self.precisions.iter().map(|p| format!("{p:.1}")).collect();
        format!(
            "BLEU = {:.2} {} (BP = {:.3} ratio = {:.3} hyp_len = {} ref_len = {})",
            self.score,
            prec.join("/"),
            self.bp,
            self.ratio(),
            self.sys_len,
            self.ref_len
        )
    }
}

/// The signature sacreBLEU prints for the default configuration; `nrefs` is
/// the reference count per segment, `None` when it varies (`nrefs:var`).
pub fn signature(nrefs: Option<usize>) -> String {
    let nrefs = nrefs.map_or_else(|| "var".to_string(), |n| n.to_string());
    format!("nrefs:{nrefs}|case:mixed|eff:no|tok:13a|smooth:exp|version:{SACREBLEU_VERSION}")
}

/// Python's `str.isspace`: Unicode White_Space plus the separators U+001C..U+001F,
/// which Rust's `char::is_whitespace` leaves out. Used for `split()`/`rstrip()`.
pub(crate) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.split()` with no argument.
pub(crate) fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|t| !t.is_empty())
}

/// sacreBLEU's `13a` tokenizer (mteval-v13a), returning space-joined tokens.
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    // First pass of sacreBLEU's TokenizerRegexp: each single character of the
    // class [{-~[-` -&(-+:-@/] gets spaces around it. Done per character; the
    // `f" {line} "` padding only adds spaces, which the final split removes.
    let mut spaced = String::with_capacity(line.len() * 2);
    for c in line.chars() {
        if matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/') {
            spaced.push(' ');
            spaced.push(c);
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    // The remaining passes depend on the neighbouring character, so they use
    // the very same regexes (leftmost, non-overlapping, like Python's re.sub).
    static RULES: OnceLock<[(Regex, &'static str); 3]> = OnceLock::new();
    let rules = RULES.get_or_init(|| {
        [
            (Regex::new(r"([^0-9])([\.,])").unwrap(), "$1 $2 "),
            (Regex::new(r"([\.,])([^0-9])").unwrap(), " $1 $2"),
            (Regex::new(r"([0-9])(-)").unwrap(), "$1 $2 "),
        ]
    });
    let mut s = format!(" {spaced} ");
    for (re, rep) in rules {
        s = re.replace_all(&s, *rep).into_owned();
    }
    py_split(&s).collect::<Vec<_>>().join(" ")
}

/// sacreBLEU's `_preprocess_segment` for the default (cased) configuration.
fn preprocess(segment: &str) -> String {
    tokenize_13a(segment.trim_end_matches(is_py_space))
}

type Ngrams<'a> = HashMap<&'a [&'a str], u64>;

fn all_ngrams<'a>(tokens: &'a [&'a str]) -> Ngrams<'a> {
    let mut counts = HashMap::new();
    for n in 1..=MAX_ORDER {
        for w in tokens.windows(n) {
            *counts.entry(w).or_insert(0) += 1;
        }
    }
    counts
}

/// Closest reference length to the hypothesis length; the shorter one on ties.
fn closest_ref_len(hyp_len: u64, ref_lens: &[u64]) -> u64 {
    let mut best: Option<(u64, u64)> = None; // (diff, len)
    for &r in ref_lens {
        let diff = hyp_len.abs_diff(r);
        best = match best {
            Some((d, l)) if diff > d || (diff == d && r >= l) => Some((d, l)),
            _ => Some((diff, r)),
        };
    }
    best.map_or(0, |(_, l)| l)
}

/// Sufficient statistics of one segment: `[hyp_len, ref_len, correct.., total..]`.
fn segment_stats(hyp: &str, refs: &[String]) -> [u64; 2 + 2 * MAX_ORDER] {
    let ref_tokens: Vec<Vec<&str>> = refs.iter().map(|r| py_split(r).collect()).collect();
    // Reference n-gram counts are the maximum over references.
    let mut ref_ngrams: Ngrams = HashMap::new();
    for toks in &ref_tokens {
        for (g, c) in all_ngrams(toks) {
            let e = ref_ngrams.entry(g).or_insert(0);
            *e = (*e).max(c);
        }
    }
    let ref_lens: Vec<u64> = ref_tokens.iter().map(|t| t.len() as u64).collect();
    let hyp_tokens: Vec<&str> = py_split(hyp).collect();
    let mut stats = [0u64; 2 + 2 * MAX_ORDER];
    stats[0] = hyp_tokens.len() as u64;
    stats[1] = closest_ref_len(stats[0], &ref_lens);
    for (g, c) in all_ngrams(&hyp_tokens) {
        let n = g.len() - 1;
        stats[2 + MAX_ORDER + n] += c;
        if let Some(&rc) = ref_ngrams.get(g) {
            stats[2 + n] += c.min(rc);
        }
    }
    stats
}

/// sacreBLEU's `my_log`: log floored at -9999999999 for zero.
fn my_log(x: f64) -> f64 {
    if x == 0.0 {
        -9999999999.0
    } else {
        x.ln()
    }
}

/// `BLEU.compute_bleu` with `smooth_method="exp"`, `effective_order=False`.
fn compute_bleu(stats: &[u64; 2 + 2 * MAX_ORDER], signature: String) -> BleuScore {
    let (sys_len, ref_len) = (stats[0], stats[1]);
    let mut counts = [0u64; MAX_ORDER];
    let mut totals = [0u64; MAX_ORDER];
    counts.copy_from_slice(&stats[2..2 + MAX_ORDER]);
    totals.copy_from_slice(&stats[2 + MAX_ORDER..]);
    let mut bp = 1.0;
    if sys_len < ref_len {
        bp = if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        };
    }
    let mut precisions = [0.0f64; MAX_ORDER];
    let mut score = 0.0;
    if counts.iter().any(|&c| c > 0) {
        let mut smooth = 1.0f64;
        for n in 0..MAX_ORDER {
            if totals[n] == 0 {
                break;
            }
            precisions[n] = if counts[n] == 0 {
                // exp smoothing (NIST / mteval-v13a): 1/2^k for the k-th zero order.
                smooth *= 2.0;
                100.0 / (smooth * totals[n] as f64)
            } else {
                100.0 * counts[n] as f64 / totals[n] as f64
            };
        }
        let log_sum = precisions.iter().fold(0.0, |acc, &p| acc + my_log(p));
        score = bp * (log_sum / MAX_ORDER as f64).exp();
    }
    BleuScore {
        score,
        counts,
        totals,
        precisions,
        bp,
        sys_len,
        ref_len,
        signature,
    }
}

/// Corpus BLEU. `references[i]` holds the references of `hypotheses[i]`.
///
/// Errors when the lengths differ, the corpus is empty or a segment has no
/// reference (sacreBLEU fails on those too).
pub fn corpus_bleu<H: AsRef<str>, R: AsRef<str>>(
    hypotheses: &[H],
    references: &[Vec<R>],
) -> Result<BleuScore, EvalError> {
    if hypotheses.len() != references.len() {
        return Err(EvalError::LengthMismatch {
            what: "references",
            expected: hypotheses.len(),
            got: references.len(),
        });
    }
    if hypotheses.is_empty() {
        return Err(EvalError::Invalid("BLEU needs at least one segment".into()));
    }
    let mut nrefs = None;
    let mut varying = false;
    let mut total = [0u64; 2 + 2 * MAX_ORDER];
    for (i, (hyp, refs)) in hypotheses.iter().zip(references).enumerate() {
        if refs.is_empty() {
            return Err(EvalError::Invalid(format!("segment {i} has no reference")));
        }
        varying |= nrefs.is_some_and(|n| n != refs.len());
        nrefs = Some(refs.len());
        let refs: Vec<String> = refs.iter().map(|r| preprocess(r.as_ref())).collect();
        let stats = segment_stats(&preprocess(hyp.as_ref()), &refs);
        for (t, s) in total.iter_mut().zip(stats) {
            *t += s;
        }
    }
    let nrefs = if varying { None } else { nrefs };
    Ok(compute_bleu(&total, signature(nrefs)))
}

/// BLEU of one segment with sacreBLEU's *default* settings (no effective
/// order), i.e. `BLEU().sentence_score(hyp, refs)`, not `sentence_bleu()`.
pub fn sentence_bleu<R: AsRef<str>>(
    hypothesis: &str,
    references: &[R],
) -> Result<BleuScore, EvalError> {
    let refs: Vec<&str> = references.iter().map(AsRef::as_ref).collect();
    corpus_bleu(&[hypothesis], &[refs])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_13a_examples() {
        assert_eq!(
            tokenize_13a("Hello, world! It's 3.14 and 1,000-2."),
            "Hello , world ! It's 3.14 and 1,000 - 2 ."
        );
        assert_eq!(tokenize_13a("a&amp;b &lt;x&gt;"), "a & b < x >");
        assert_eq!(tokenize_13a(""), "");
    }

    #[test]
    fn wiki_split_docstring_example() {
        // HF evaluate wiki_split docstring: sacrebleu 14.535768424205482
        let s = corpus_bleu(
            &["About 95 you now get in ."],
            &[vec!["About 95 species are currently known ."]],
        )
        .unwrap();
        assert!((s.score - 14.535768424205482).abs() < 1e-9, "{}", s.score);
        assert_eq!(
            s.signature,
            "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
        );
    }
}
