//! Logits processors, in the order transformers' `_get_logits_processor` applies them:
//! repetition penalty → no-repeat n-gram → min length. Each acts on one row of scores
//! given that row's decoder tokens so far (start token included).

use super::config::GenerationConfig;

pub fn apply_all(scores: &mut [f32], history: &[u32], cfg: &GenerationConfig) {
    if cfg.repetition_penalty != 1.0 {
        repetition_penalty(scores, history, cfg.repetition_penalty);
    }
    if cfg.no_repeat_ngram_size > 0 {
        no_repeat_ngram(scores, history, cfg.no_repeat_ngram_size);
    }
    if history.len() < cfg.min_length {
        for &eos in &cfg.eos_token_ids {
            if let Some(s) = scores.get_mut(eos as usize) {
                *s = f32::NEG_INFINITY;
            }
        }
    }
}

/// CTRL-style penalty: seen tokens' scores move away from zero by `penalty`.
fn repetition_penalty(scores: &mut [f32], history: &[u32], penalty: f32) {
    let mut seen = history.to_vec();
    seen.sort_unstable();
    seen.dedup();
    for t in seen {
        if let Some(s) = scores.get_mut(t as usize) {
            *s = if *s < 0.0 { *s * penalty } else { *s / penalty };
        }
    }
}

/// Bans every token that would complete an n-gram already present in `history`.
fn no_repeat_ngram(scores: &mut [f32], history: &[u32], n: usize) {
    let len = history.len();
    if len + 1 < n {
        return;
    }
    let prefix = &history[len + 1 - n..];
    for window in history.windows(n) {
        if &window[..n - 1] == prefix {
            if let Some(s) = scores.get_mut(window[n - 1] as usize) {
                *s = f32::NEG_INFINITY;
            }
        }
    }
}

/// Log-probability of `token` under softmax(`row`), summing in f32 one element after
/// the other: the reference (`compute_transition_scores(normalize_logits=True)`) runs
/// log_softmax over a strided dimension, which accumulates exactly like this, and over a
/// 50k vocabulary the accumulation order shows at 1e-4.
pub fn sequential_log_prob(row: &[f32], token: usize) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for &x in row {
        sum += (x - max).exp();
    }
    row[token] - max - sum.ln()
}

/// In-place log-softmax of one row.
pub fn log_softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let log_sum = sum.ln() as f32;
    for x in row.iter_mut() {
        *x = *x - max - log_sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_repeat_ngram_bans_the_completion_of_a_seen_trigram() {
        let mut s = vec![0.0f32; 10];
        // history ... 1 2 3 ... 1 2 → 3 is banned for n = 3
        no_repeat_ngram(&mut s, &[0, 1, 2, 3, 5, 1, 2], 3);
        assert_eq!(s[3], f32::NEG_INFINITY);
        assert_eq!(s.iter().filter(|x| x.is_infinite()).count(), 1);
        let mut s = vec![0.0f32; 10];
        no_repeat_ngram(&mut s, &[0], 3);
        assert!(s.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn repetition_penalty_pushes_seen_scores_down() {
        let mut s = vec![2.0f32, -2.0, 2.0];
        repetition_penalty(&mut s, &[0, 1, 1], 2.0);
        assert_eq!(s, vec![1.0, -4.0, 2.0]);
    }

    #[test]
    fn log_softmax_normalises() {
        let mut r = vec![1.0f32, 2.0, 3.0];
        log_softmax(&mut r);
        let total: f32 = r.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
