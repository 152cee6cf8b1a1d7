//! From text pairs to padded training batches: tokenisation with truncation, labels
//! (target ids, padding ignored), and decoder inputs (labels shifted right behind the
//! start token), as `DataCollatorForSeq2Seq` and `EncoderDecoderModel` build them.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};

use super::model::Batch;
use crate::checkpoint::config::StackConfig;
use crate::model::bert::position_ids;
use crate::tokenizer::{InputError, Side, Tokenizers, TruncatingEncoder};

/// One tokenised training example.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub input: Vec<u32>,
    /// Label ids, ending with EOS.
    pub target: Vec<u32>,
}

/// Tokenises (source, target) texts.
pub struct PairEncoder {
    input: TruncatingEncoder,
    target: TruncatingEncoder,
    max_target_tokens: usize,
    eos: Option<u32>,
}

impl PairEncoder {
    pub fn new(
        tokenizers: &Tokenizers,
        max_input_tokens: usize,
        max_target_tokens: usize,
        eos: Option<u32>,
    ) -> Result<Self> {
        Ok(Self {
            input: tokenizers.truncating(Side::Input, max_input_tokens)?,
            target: tokenizers.truncating(Side::Target, max_target_tokens)?,
            max_target_tokens,
            eos,
        })
    }

    /// The example's ids. A target whose tokenizer adds no EOS (GPT-2's) gets one, in
    /// the last place when it was truncated, so that the model learns to stop.
    pub fn encode(&self, source: &str, target: &str) -> Result<Pair, InputError> {
        let input = self.input.encode(source)?;
        let mut target = self.target.encode(target)?;
        if let Some(eos) = self.eos {
            if target.last() != Some(&eos) {
                target.truncate(self.max_target_tokens.saturating_sub(1));
                target.push(eos);
            }
        }
        Ok(Pair { input, target })
    }
}

/// Pads pairs into a [`Batch`].
pub struct Collator {
    pub encoder: StackConfig,
    pub decoder: StackConfig,
    /// `decoder_start_token_id` and the model's `pad_token_id`.
    pub start: u32,
    pub pad: u32,
    pub device: Device,
}

/// Rows of `rows` right-padded with `fill` to the longest, flattened.
fn pad_rows<T: Copy>(rows: &[Vec<T>], fill: T) -> (Vec<T>, usize) {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::with_capacity(rows.len() * width);
    for r in rows {
        out.extend_from_slice(r);
        out.extend(std::iter::repeat_n(fill, width - r.len()));
    }
    (out, width)
}

impl Collator {
    pub fn collate(&self, pairs: &[&Pair]) -> Result<Batch> {
        let b = pairs.len();
        let enc_pad = self.encoder.pad_token_id.unwrap_or(0);
        let inputs: Vec<Vec<u32>> = pairs.iter().map(|p| p.input.clone()).collect();
        let (ids, s) = pad_rows(&inputs, enc_pad);
        let keep: Vec<f32> = inputs
            .iter()
            .flat_map(|r| (0..s).map(move |i| if i < r.len() { 1.0 } else { 0.0 }))
            .collect();
        let positions: Vec<u32> = ids
            .chunks(s)
            .flat_map(|row| position_ids(&self.encoder, row, 0))
            .collect();

        // labels = target, -100 (here: weight 0) where padded; decoder inputs =
        // [start, labels[..-1]] with ignored labels replaced by pad.
        let targets: Vec<Vec<u32>> = pairs.iter().map(|p| p.target.clone()).collect();
        let (labels, t) = pad_rows(&targets, 0);
        let label_weights: Vec<f32> = targets
            .iter()
            .flat_map(|r| (0..t).map(move |i| if i < r.len() { 1.0 } else { 0.0 }))
            .collect();
        let decoder_rows: Vec<Vec<u32>> = targets
            .iter()
            .map(|r| {
                let mut row = Vec::with_capacity(t);
                row.push(self.start);
                row.extend(r.iter().take(t - 1));
                row.resize(t, self.pad);
                row
            })
            .collect();
        let decoder_ids: Vec<u32> = decoder_rows.concat();
        let decoder_keep: Vec<f32> = decoder_ids
            .iter()
            .map(|&id| if id == self.pad { 0.0 } else { 1.0 })
            .collect();
        let decoder_positions: Vec<u32> = decoder_rows
            .iter()
            .flat_map(|row| position_ids(&self.decoder, row, 0))
            .collect();
        let label_tokens = targets.iter().map(Vec::len).sum();

        let dev = &self.device;
        let t2 = |v: Vec<u32>, w: usize| Tensor::from_vec(v, (b, w), dev);
        let f2 = |v: Vec<f32>, w: usize| Tensor::from_vec(v, (b, w), dev);
        Ok::<_, candle_core::Error>(Batch {
            input_ids: t2(ids, s)?,
            input_positions: t2(positions, s)?,
            input_keep: f2(keep, s)?,
            decoder_ids: t2(decoder_ids, t)?,
            decoder_positions: t2(decoder_positions, t)?,
            decoder_keep: f2(decoder_keep, t)?,
            labels: Tensor::from_vec(labels, b * t, dev)?,
            label_weights: Tensor::from_vec(label_weights, b * t, dev)?,
            label_tokens,
        })
        .context("building a batch")
    }
}

#[cfg(test)]
mod tests {
    use super::pad_rows;

    #[test]
    fn rows_pad_to_the_longest() {
        let (flat, w) = pad_rows(&[vec![1, 2, 3], vec![4]], 0);
        assert_eq!((flat, w), (vec![1, 2, 3, 4, 0, 0], 3));
    }
}
