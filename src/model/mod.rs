//! `EncoderDecoderModel`: an encoder stack, an optional `enc_to_dec_proj`, and a decoder
//! stack with cross-attention and an LM head.
//!
//! Generation drives it in two phases: [`EncoderDecoderModel::encode`] runs the encoder
//! once per input and precomputes every decoder layer's cross-attention K/V;
//! [`EncoderDecoderModel::decode_step`] then advances all rows (inputs × beams) by one
//! token, growing the self-attention cache.

pub mod attention;
pub mod bert;
pub mod cross_kv;
pub mod gpt2;
pub(crate) mod kernels;
pub mod kv_cache;
pub mod linear;

pub use kernels::dispatch::{kernel_choice, CpuFeatures, KernelChoice, KernelSet, KERNELS_ENV};

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
use crate::checkpoint::weights::WeightStore;
use bert::{position_ids, BertDecoder, BertEncoder};
use cross_kv::CrossKv;
use gpt2::Gpt2Decoder;
use kv_cache::KvCache;
use linear::Linear;

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

    fn cross_kv(&self, enc: &Tensor) -> candle_core::Result<Vec<CrossKv>> {
        match self {
            Decoder::Bert(d) => d.cross_kv(enc),
            Decoder::Gpt2(d) => d.cross_kv(enc),
        }
    }

    fn step(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        caches: &mut [KvCache],
        enc: &EncoderState,
    ) -> candle_core::Result<Tensor> {
        match self {
            Decoder::Bert(d) => d.step(tokens, positions, caches, &enc.cross_kv, &enc.mask),
            Decoder::Gpt2(d) => d.step(tokens, positions, caches, &enc.cross_kv, &enc.mask),
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

/// What the decoder needs from the encoder, one row per input.
pub struct EncoderState {
    /// Per decoder layer: the encoder's keys and values, one row of dimension 0 per input.
    cross_kv: Vec<CrossKv>,
    /// Additive padding mask `[inputs, 1, 1, src_len]`.
    mask: Tensor,
}

impl EncoderState {
    pub fn num_inputs(&self) -> usize {
        self.mask.dims()[0]
    }

    /// Keeps the inputs at `index` (in that order), e.g. when others have finished.
    pub fn select_inputs(&self, index: &[u32]) -> Result<Self> {
        let idx = Tensor::new(index, self.mask.device())?;
        Ok(Self {
            cross_kv: self
                .cross_kv
                .iter()
                .map(|kv| kv.select_inputs(&idx))
                .collect::<candle_core::Result<_>>()?,
            mask: self.mask.index_select(&idx, 0)?,
        })
    }
}

/// Self-attention caches of all decoder layers; rows are inputs × beams.
pub struct DecoderState {
    caches: Vec<KvCache>,
    /// Tokens already in the cache.
    past: usize,
}

impl DecoderState {
    /// Keeps rows `index` in that order: beam reordering and dropping finished inputs.
    pub fn select_rows(&mut self, index: &[u32]) -> Result<()> {
        for c in &mut self.caches {
            c.select_rows(index)?;
        }
        Ok(())
    }
}

impl EncoderDecoderModel {
    pub fn load(
        dir: &Path,
        config: EncoderDecoderConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        // Decide (and log) the CPU kernels before the first weight is packed.
        let _ = kernel_choice();
        let tied_base = config
            .tie_encoder_decoder
            .then(|| config.decoder.family.decoder_base());
        let store = WeightStore::open(dir, tied_base)?;
        let vb = VarBuilder::from_backend(Box::new(store), dtype, device.clone());

        let encoder =
            BertEncoder::load(&config.encoder, vb.pp("encoder")).context("loading the encoder")?;
        let (enc_d, dec_d) = (config.encoder.hidden_size, config.decoder.hidden_size);
        let enc_to_dec_proj = if enc_d != dec_d {
            Some(
                linear::linear(enc_d, dec_d, vb.pp("enc_to_dec_proj"))
                    .context("loading enc_to_dec_proj")?,
            )
        } else {
            None
        };
        let decoder = match config.decoder.family {
            Family::Gpt2 => Decoder::Gpt2(Gpt2Decoder::load(&config.decoder, vb.pp("decoder"))?),
            _ => Decoder::Bert(BertDecoder::load(&config.decoder, vb.pp("decoder"))?),
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

    /// Runs the encoder on right-padded inputs and precomputes cross-attention K/V.
    pub fn encode(&self, inputs: &[Vec<u32>]) -> Result<EncoderState> {
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

        let mut enc = self.encoder.forward(&ids, &pos, &mask)?;
        if let Some(proj) = &self.enc_to_dec_proj {
            enc = proj.forward(&enc)?;
        }
        let cross_kv = self.decoder.cross_kv(&enc)?;
        Ok(EncoderState { cross_kv, mask })
    }

    /// An empty self-attention cache with room for `positions` tokens per row (it grows
    /// if a generation runs longer).
    pub fn new_decoder_state(&self, positions: usize) -> DecoderState {
        let layers = self.decoder.num_layers();
        DecoderState {
            caches: vec![KvCache::with_capacity(positions); layers],
            past: 0,
        }
    }

    /// Feeds one token per row (rows = inputs × beams, input-major) and returns the
    /// next-token logits `[rows, vocab]` as f32.
    pub fn decode_step(
        &self,
        tokens: &[u32],
        state: &mut DecoderState,
        enc: &EncoderState,
    ) -> Result<Tensor> {
        let rows = tokens.len();
        let dec_cfg = &self.config.decoder;
        let positions: Vec<u32> = tokens
            .iter()
            .flat_map(|&t| position_ids(dec_cfg, &[t], state.past))
            .collect();
        let tokens = Tensor::from_slice(tokens, (rows, 1), &self.device)?;
        let positions = Tensor::from_vec(positions, (rows, 1), &self.device)?;
        let logits = self
            .decoder
            .step(&tokens, &positions, &mut state.caches, enc)?;
        state.past += 1;
        Ok(logits.to_dtype(DType::F32)?)
    }
}
