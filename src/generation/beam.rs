//! Beam search for one input, mirroring transformers 5's vectorised `_beam_search`
//! step for step, including its f32 arithmetic and its −1e9 "masking" of scores, so
//! that ties and near-ties resolve the same way.
//!
//! Per step: the `2·num_beams` best continuations over all beams are kept; those that
//! end (EOS or max_length) compete for the `num_beams` finished slots with score
//! `Σ log p / L^length_penalty`; the best non-ending ones become the next running beams.

use super::config::GenerationConfig;
use super::processors::{apply_all, log_softmax};
use super::Hypothesis;

/// transformers' stand-in for −∞ in beam bookkeeping.
const MASKED: f32 = -1.0e9;

#[derive(Clone)]
struct Beam {
    seq: Vec<u32>,
    token_logprobs: Vec<f32>,
    score: f32,
}

#[derive(Clone)]
struct Candidate {
    parent: usize,
    token: u32,
    /// Running score + this token's log-probability.
    score: f32,
    token_logprob: f32,
}

struct Slot {
    beam: Beam,
    finished: bool,
}

pub struct BeamSearch {
    running: Vec<Beam>,
    slots: Vec<Slot>,
    /// `is_early_stop_heuristic_unsatisfied`: finished set can still improve.
    improvable: bool,
}

/// Indices of the `k` largest values, largest first; ties go to the lower index
/// (the order torch.topk gives on CPU for the sizes used here).
///
/// One pass with a sorted buffer of the best `k` so far: with k ≈ 8 out of a 30k
/// vocabulary almost every value fails the first comparison, where a selection
/// algorithm over an index array moves the whole array around.
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for (i, v) in values.iter().enumerate() {
        // Indices arrive in increasing order, so a value equal to the current k-th
        // ranks after it and stays out.
        if best.len() == k && v.total_cmp(&values[best[k - 1]]).is_le() {
            continue;
        }
        let pos = best.partition_point(|&j| values[j].total_cmp(v).is_ge());
        best.insert(pos, i);
        best.truncate(k);
    }
    best
}

fn length_norm(len: usize, penalty: f32) -> f32 {
    (len as f64).powf(penalty as f64) as f32
}

impl BeamSearch {
    pub fn new(cfg: &GenerationConfig) -> Self {
        let start = Beam {
            seq: vec![cfg.decoder_start_token_id],
            token_logprobs: Vec::new(),
            score: 0.0,
        };
        // Only the first beam is live at the start, so the beams don't all pick the same tokens.
        let running = (0..cfg.num_beams)
            .map(|i| Beam {
                score: if i == 0 { 0.0 } else { MASKED },
                ..start.clone()
            })
            .collect();
        let slots = (0..cfg.num_beams)
            .map(|_| Slot {
                beam: Beam {
                    score: MASKED,
                    ..start.clone()
                },
                finished: false,
            })
            .collect();
        Self {
            running,
            slots,
            improvable: true,
        }
    }

    /// Tokens so far in each running beam, the start token included.
    pub fn len(&self) -> usize {
        self.running[0].seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    pub fn last_tokens(&self) -> Vec<u32> {
        self.running
            .iter()
            .map(|b| *b.seq.last().expect("start token"))
            .collect()
    }

    /// Consumes the logits of this input's `num_beams` rows (row-major, `vocab` wide).
    /// Returns the parent row of each new running beam (for the KV cache) and whether
    /// this input is finished.
    pub fn step(
        &mut self,
        logits: &mut [f32],
        vocab: usize,
        cfg: &GenerationConfig,
    ) -> (Vec<usize>, bool) {
        let nb = cfg.num_beams;
        let cur_len = self.running[0].seq.len();
        let keep = 2.max(1 + cfg.eos_token_ids.len()) * nb;

        // Log-softmax, then processors, then add each beam's running score; keep the best
        // `keep` of each row (the global best `keep` are among them).
        let mut candidates: Vec<(usize, Candidate)> = Vec::with_capacity(keep * nb);
        for (b, row) in logits.chunks_mut(vocab).enumerate() {
            log_softmax(row);
            apply_all(row, &self.running[b].seq, cfg);
            let beam_score = self.running[b].score;
            let accumulated: Vec<f32> = row.iter().map(|&lp| lp + beam_score).collect();
            for t in top_k(&accumulated, keep) {
                candidates.push((
                    b * vocab + t,
                    Candidate {
                        parent: b,
                        token: t as u32,
                        score: accumulated[t],
                        token_logprob: row[t],
                    },
                ));
            }
        }
        candidates.sort_by(|a, b| b.1.score.total_cmp(&a.1.score).then(a.0.cmp(&b.0)));
        let candidates: Vec<Candidate> = candidates.into_iter().take(keep).map(|c| c.1).collect();

        let extend = |c: &Candidate, score: f32| {
            let parent = &self.running[c.parent];
            let mut seq = parent.seq.clone();
            seq.push(c.token);
            let mut token_logprobs = parent.token_logprobs.clone();
            token_logprobs.push(c.token_logprob);
            Beam {
                seq,
                token_logprobs,
                score,
            }
        };

        let hits: Vec<bool> = candidates
            .iter()
            .map(|c| cur_len + 1 >= cfg.max_length || cfg.eos_token_ids.contains(&c.token))
            .collect();

        // Next running beams: the best candidates that did not just end.
        let running_scores: Vec<f32> = candidates
            .iter()
            .zip(&hits)
            .map(|(c, &hit)| if hit { c.score + MASKED } else { c.score })
            .collect();
        let next_running: Vec<(usize, Beam)> = top_k(&running_scores, nb)
            .into_iter()
            .map(|j| {
                (
                    candidates[j].parent,
                    extend(&candidates[j], running_scores[j]),
                )
            })
            .collect();

        // Finished slots: merge the ended top-`nb` candidates with what is already there.
        let all_full = self.slots.iter().all(|s| s.finished) && cfg.early_stopping.is_true();
        let norm = length_norm(cur_len, cfg.length_penalty);
        let mut merged_scores: Vec<f32> = self.slots.iter().map(|s| s.beam.score).collect();
        for (j, c) in candidates.iter().enumerate() {
            let mut s = c.score / norm;
            if all_full {
                s += MASKED;
            }
            if !self.improvable {
                s += MASKED;
            }
            if !(hits[j] && j < nb) {
                s += MASKED;
            }
            merged_scores.push(s);
        }
        let chosen = top_k(&merged_scores, nb);
        let old_slots = std::mem::take(&mut self.slots);
        self.slots = chosen
            .into_iter()
            .map(|m| {
                if m < nb {
                    let s = &old_slots[m];
                    Slot {
                        beam: s.beam.clone(),
                        finished: s.finished,
                    }
                } else {
                    let j = m - nb;
                    Slot {
                        beam: extend(&candidates[j], merged_scores[m]),
                        finished: hits[j] && j < nb,
                    }
                }
            })
            .collect();

        let parents: Vec<usize> = next_running.iter().map(|(p, _)| *p).collect();
        self.running = next_running.into_iter().map(|(_, b)| b).collect();

        // Can a running beam still beat the worst finished one?
        let new_len = cur_len + 1;
        let best_len = if cfg.early_stopping.is_never() && cfg.length_penalty > 0.0 {
            cfg.max_length - 1
        } else {
            new_len - 1
        };
        let best_possible = self.running[0].score / length_norm(best_len, cfg.length_penalty);
        let worst_finished = self
            .slots
            .iter()
            .map(|s| s.beam.score)
            .fold(f32::INFINITY, f32::min);
        self.improvable &= self.slots.iter().any(|s| {
            let worst = if s.finished { worst_finished } else { MASKED };
            best_possible > worst
        });

        let all_finished = self.slots.iter().all(|s| s.finished);
        let done = !self.improvable
            || (all_finished && cfg.early_stopping.is_true())
            || hits.iter().all(|&h| h);
        (parents, done)
    }

    pub fn finish(self, num_return_sequences: usize) -> Vec<Hypothesis> {
        self.slots
            .into_iter()
            .take(num_return_sequences)
            .map(|s| Hypothesis {
                ids: s.beam.seq,
                score: s.beam.score,
                token_logprobs: s.beam.token_logprobs,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: sort all indices by (value descending, index ascending).
    fn top_k_by_sorting(values: &[f32], k: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..values.len()).collect();
        idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
        idx.truncate(k);
        idx
    }

    #[test]
    fn top_k_orders_by_value_then_lower_index() {
        let mut seed = 3u32;
        for len in [1, 2, 7, 100, 3000] {
            // Few distinct values, so that ties are everywhere; plus infinities.
            let values: Vec<f32> = (0..len)
                .map(|i| {
                    seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                    match (seed >> 24) % 9 {
                        0 => f32::NEG_INFINITY,
                        1 => f32::INFINITY,
                        r => (r as f32 - 4.0) * 0.5 + if i % 5 == 0 { 1e-7 } else { 0.0 },
                    }
                })
                .collect();
            for k in [0, 1, 3, 8, len, len + 2] {
                assert_eq!(
                    top_k(&values, k),
                    top_k_by_sorting(&values, k),
                    "len {len} k {k}"
                );
            }
        }
    }
}
