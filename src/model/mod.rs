//! `EncoderDecoderModel`: an encoder stack, an optional `enc_to_dec_proj`, and a decoder
//! stack with cross-attention and an LM head.
//!
//! Generation drives it in two phases: [`EncoderDecoderModel::encode`] runs the encoder
//! once per input and precomputes every decoder layer's cross-attention K/V;
//! [`EncoderDecoderModel::decode_step`] then advances all rows (the beams of every input
//! being decoded, each at its own position) by one token, growing the self-attention
//! cache. Inputs encoded at different times can share decode steps.

pub mod attention;
pub mod bert;
pub mod cross_kv;
pub mod gpt2;
pub(crate) mod kernels;
pub mod kv_cache;
pub mod linear;

pub use kernels::dispatch::{kernel_choice, CpuFeatures, KernelChoice, KernelSet, KERNELS_ENV};
pub use kernels::packed::WeightFormat;

/// The kernels the benchmarks time directly (not a stable API).
#[doc(hidden)]
pub mod bench {
    pub use super::kernels::cross_attention::{
        attention as cross_attention, attention_with as cross_attention_with, pack_keys,
    };
    pub use super::kernels::dispatch::Kernels;
    pub use super::kernels::packed::PackedWeight;
    pub use super::kernels::small_attention::attention as small_attention;
}

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::checkpoint::config::{EncoderDecoderConfig, Family};
use crate::checkpoint::dtype::RunDtype;
use crate::checkpoint::weights::WeightStore;
use bert::{position_ids, BertDecoder, BertEncoder};
use cross_kv::CrossKv;
pub use cross_kv::{CrossBatch, EncodedInput};
use gpt2::Gpt2Decoder;
use kv_cache::{History, KvCache};
use linear::Linear;

/// Padded tokens an encoder pass takes at most (one input may exceed it alone).
pub const ENCODER_PASS_TOKENS: usize = 2048;

/// Runs `f` on a thread of the kernels' pool (rayon's global pool), the caller waiting.
///
/// A decode step makes about a hundred parallel kernel calls. Made from a thread outside
/// the pool, each one hands its tasks over and sleeps until they are done: two futex
/// wake-ups per call, which profiles showed at a sixth of a step's time on 2 cores.
/// From a pool thread, a call pushes its tasks on the local queue, works on them
/// itself, and the other threads steal.
fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    rayon::scope(|_| f())
}

enum Decoder {
    Bert(BertDecoder),
    Gpt2(Gpt2Decoder),
}

impl Decoder {
    fn num_layers(&self) -> usize {
        match self {
            Decoder::Bert(d) => d.num_layers(),
            Decoder::Gpt2(d) => d.num_layers(),
        }
    }

    fn cross_kv(&self, enc: &Tensor, lens: &[usize]) -> candle_core::Result<Vec<Vec<CrossKv>>> {
        match self {
            Decoder::Bert(d) => d.cross_kv(enc, lens),
            Decoder::Gpt2(d) => d.cross_kv(enc, lens),
        }
    }

    fn step(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        state: &mut DecoderState,
        cross: &CrossBatch,
    ) -> candle_core::Result<Tensor> {
        let DecoderState { caches, history } = state;
        match self {
            Decoder::Bert(d) => d.step(tokens, positions, caches, history, cross),
            Decoder::Gpt2(d) => d.step(tokens, positions, caches, history, cross),
        }
    }
}

pub struct EncoderDecoderModel {
    config: EncoderDecoderConfig,
    encoder: BertEncoder,
    enc_to_dec_proj: Option<Linear>,
    decoder: Decoder,
    device: Device,
    dtype: DType,
}

/// The decoder's self-attention caches (one per layer) and which cells of them each
/// row's tokens are in. Rows are the beams of the inputs being decoded, input-major;
/// each has its own length.
pub struct DecoderState {
    caches: Vec<KvCache>,
    history: History,
}

impl DecoderState {
    /// Rows currently decoded.
    pub fn rows(&self) -> usize {
        self.history.rows()
    }

    /// Adds `n` rows with no past (inputs joining), after the existing rows.
    pub fn add_rows(&mut self, n: usize) {
        self.history.add_rows(n);
    }

    /// Keeps rows `index` in that order: beam reordering and dropping finished inputs.
    pub fn select_rows(&mut self, index: &[u32]) -> Result<()> {
        let rows = self.history.rows();
        self.history.select_rows(index);
        for c in &mut self.caches {
            c.select_rows(index, rows)?;
        }
        Ok(())
    }

    /// Self-attention tokens held for all rows (a prefix shared by beams counts once).
    pub fn cached_tokens(&self) -> usize {
        self.history.tokens_in_use()
    }
}

impl EncoderDecoderModel {
    pub fn load(
        dir: &Path,
        config: EncoderDecoderConfig,
        device: &Device,
        run_dtype: RunDtype,
    ) -> Result<Self> {
        let dtype = run_dtype.activations(device)?;
        let fmt = run_dtype.weight_format();
        // Decide (and log) the CPU kernels before the first weight is packed.
        let _ = kernel_choice();
        let tied_base = config
            .tie_encoder_decoder
            .then(|| config.decoder.family.decoder_base());
        let store = WeightStore::open(dir, tied_base)?;
        let vb = VarBuilder::from_backend(Box::new(store), dtype, device.clone());

        let encoder = BertEncoder::load(&config.encoder, vb.pp("encoder"), fmt)
            .context("loading the encoder")?;
        let (enc_d, dec_d) = (config.encoder.hidden_size, config.decoder.hidden_size);
        let enc_to_dec_proj = if enc_d != dec_d {
            Some(
                linear::linear(enc_d, dec_d, vb.pp("enc_to_dec_proj"), fmt)
                    .context("loading enc_to_dec_proj")?,
            )
        } else {
            None
        };
        let decoder = match config.decoder.family {
            Family::Gpt2 => {
                Decoder::Gpt2(Gpt2Decoder::load(&config.decoder, vb.pp("decoder"), fmt)?)
            }
            _ => Decoder::Bert(BertDecoder::load(&config.decoder, vb.pp("decoder"), fmt)?),
        };
        Ok(Self {
            config,
            encoder,
            enc_to_dec_proj,
            decoder,
            device: device.clone(),
            dtype,
        })
    }

    pub fn config(&self) -> &EncoderDecoderConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn vocab_size(&self) -> usize {
        self.config.decoder.vocab_size
    }

    /// Runs the encoder on the inputs and precomputes every decoder layer's
    /// cross-attention K/V, one [`EncodedInput`] per input at its own length.
    ///
    /// Consecutive inputs share a pass (right-padded to that pass's longest) up to
    /// about [`ENCODER_PASS_TOKENS`] padded tokens: a batch of 32 long inputs in one
    /// pass allocated activations of hundreds of megabytes per layer, and page faults
    /// and copies of them took a third of the encoder's time.
    pub fn encode(&self, inputs: &[Vec<u32>]) -> Result<Vec<EncodedInput>> {
        let mut encoded = Vec::with_capacity(inputs.len());
        let mut start = 0;
        while start < inputs.len() {
            let mut end = start + 1;
            let mut longest = inputs[start].len();
            while end < inputs.len() {
                let longer = longest.max(inputs[end].len());
                if longer * (end + 1 - start) > ENCODER_PASS_TOKENS {
                    break;
                }
                longest = longer;
                end += 1;
            }
            encoded.extend(self.encode_pass(&inputs[start..end])?);
            start = end;
        }
        Ok(encoded)
    }

    /// One encoder pass over `inputs`, right-padded to the longest.
    fn encode_pass(&self, inputs: &[Vec<u32>]) -> Result<Vec<EncodedInput>> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let cfg = &self.config.encoder;
        let pad = cfg.pad_token_id.unwrap_or(0);
        let len = inputs.iter().map(Vec::len).max().unwrap_or(0);
        let (mut ids, mut pos, mut mask) = (Vec::new(), Vec::new(), Vec::new());
        for row in inputs {
            let mut padded = row.clone();
            padded.resize(len, pad);
            pos.extend(position_ids(cfg, &padded, 0));
            ids.extend(padded);
            mask.extend((0..len).map(|i| if i < row.len() { 0f32 } else { f32::MIN }));
        }
        let b = inputs.len();
        let ids = Tensor::from_vec(ids, (b, len), &self.device)?;
        let pos = Tensor::from_vec(pos, (b, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (b, 1, 1, len), &self.device)?.to_dtype(self.dtype)?;

        let enc = on_worker(|| {
            let enc = self.encoder.forward(&ids, &pos, &mask)?;
            match &self.enc_to_dec_proj {
                Some(proj) => proj.forward(&enc),
                None => Ok(enc),
            }
        })?;
        let lens: Vec<usize> = inputs.iter().map(Vec::len).collect();
        // [layer][input] → [input][layer]
        let mut per_layer: Vec<std::vec::IntoIter<CrossKv>> = self
            .decoder
            .cross_kv(&enc, &lens)?
            .into_iter()
            .map(Vec::into_iter)
            .collect();
        Ok((0..b)
            .map(|_| {
                EncodedInput::new(
                    per_layer
                        .iter_mut()
                        .map(|l| l.next().expect("one CrossKv per input"))
                        .collect(),
                )
            })
            .collect())
    }

    /// A decoder state with no rows.
    pub fn new_decoder_state(&self) -> DecoderState {
        DecoderState {
            caches: vec![KvCache::default(); self.decoder.num_layers()],
            history: History::default(),
        }
    }

    /// Feeds one token per row (rows grouped by input as `cross` says, each at its own
    /// position) and returns the next-token logits `[rows, vocab]` as f32.
    pub fn decode_step(
        &self,
        tokens: &[u32],
        state: &mut DecoderState,
        cross: &CrossBatch,
    ) -> Result<Tensor> {
        let all: Vec<u32> = (0..state.rows() as u32).collect();
        self.decode_step_rows(tokens, state, &all, cross)
    }

    /// [`Self::decode_step`] for the rows `rows` of `state` only (ascending; one token
    /// each, `cross` grouping them); the other rows keep their past and wait. Only the
    /// CPU f32 cache can leave rows waiting.
    pub fn decode_step_rows(
        &self,
        tokens: &[u32],
        state: &mut DecoderState,
        rows: &[u32],
        cross: &CrossBatch,
    ) -> Result<Tensor> {
        let n = tokens.len();
        anyhow::ensure!(
            n == rows.len()
                && n == cross.total_rows()
                && rows.windows(2).all(|w| w[0] < w[1])
                && rows.last().is_none_or(|&r| (r as usize) < state.rows()),
            "decode step: {n} tokens for rows {rows:?} of {} decoder rows and {} \
             cross-attention rows",
            state.rows(),
            cross.total_rows()
        );
        let dec_cfg = &self.config.decoder;
        let positions: Vec<u32> = tokens
            .iter()
            .zip(state.history.begin_step_rows(rows))
            .flat_map(|(&t, past)| position_ids(dec_cfg, &[t], past))
            .collect();
        let tokens = Tensor::from_slice(tokens, (n, 1), &self.device)?;
        let positions = Tensor::from_vec(positions, (n, 1), &self.device)?;
        let logits = on_worker(|| self.decoder.step(&tokens, &positions, state, cross))?;
        Ok(logits.to_dtype(DType::F32)?)
    }

    /// Whether [`Self::decode_step_rows`] may leave rows waiting (the CPU f32 cache).
    pub fn can_step_some_rows(&self) -> bool {
        self.device.is_cpu() && self.dtype == DType::F32
    }
}
