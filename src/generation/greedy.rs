//! Greedy search for one input, step by step (transformers `_sample` with
//! `do_sample=False`): processors act on raw logits, the arg-max is taken, and the
//! token's log-probability is the log-softmax of the processed scores.

use super::config::GenerationConfig;
use super::processors::{apply_all, sequential_log_prob};
use super::Hypothesis;

pub struct GreedySearch {
    seq: Vec<u32>,
    token_logprobs: Vec<f32>,
}

impl GreedySearch {
    pub fn new(cfg: &GenerationConfig) -> Self {
        Self {
            seq: vec![cfg.decoder_start_token_id],
            token_logprobs: Vec::new(),
        }
    }

    /// Tokens so far, the start token included.
    pub fn len(&self) -> usize {
        self.seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }

    pub fn last_tokens(&self) -> Vec<u32> {
        vec![*self.seq.last().expect("start token")]
    }

    /// Consumes the next-token logits of this input's single row.
    /// Returns true when the input is finished.
    pub fn step(&mut self, logits: &mut [f32], cfg: &GenerationConfig) -> bool {
        apply_all(logits, &self.seq, cfg);
        // torch.argmax returns the first maximal index.
        let (token, _) =
            logits
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |best, (i, &x)| {
                    if x > best.1 {
                        (i, x)
                    } else {
                        best
                    }
                });
        self.seq.push(token as u32);
        self.token_logprobs.push(sequential_log_prob(logits, token));
        cfg.eos_token_ids.contains(&(token as u32)) || self.seq.len() >= cfg.max_length
    }

    pub fn finish(self) -> Vec<Hypothesis> {
        let score = self.token_logprobs.iter().sum();
        vec![Hypothesis {
            ids: self.seq,
            score,
            token_logprobs: self.token_logprobs,
        }]
    }
}
