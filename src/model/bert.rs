//! BERT, RoBERTa and BertGeneration stacks (they share one block layout).
//!
//! Encoder layer:  a = LN(x + Attn(x));              y = LN(a + W₂·act(W₁·a))
//! Decoder layer:  a = LN(x + CausalAttn(x));  c = LN(a + CrossAttn(a, enc));  y = LN(c + FFN(c))
//! The decoder's self-attention has the encoder's shape (warm-started from it); only the
//! cross-attention block is new.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};

use super::attention::{attention, merge_heads, project_heads};
use super::cross_kv::{CrossBatch, CrossKv};
use super::kernels::packed::WeightFormat;
use super::kv_cache::{History, KvCache};
use super::linear::{layer_norm, linear, Linear};
use crate::checkpoint::config::{Activation, Family, StackConfig};

/// word + token-type(0) + position embeddings, then LayerNorm.
pub struct Embeddings {
    word: Embedding,
    position: Embedding,
    /// Row 0 of the token-type table (BERT, RoBERTa); BertGeneration has none.
    token_type0: Option<Tensor>,
    norm: LayerNorm,
}

impl Embeddings {
    fn load(cfg: &StackConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let word = candle_nn::embedding(cfg.vocab_size, d, vb.pp("word_embeddings"))?;
        let position = candle_nn::embedding(cfg.max_positions, d, vb.pp("position_embeddings"))?;
        let token_type0 = if cfg.type_vocab_size > 0 {
            let table = vb.get((cfg.type_vocab_size, d), "token_type_embeddings.weight")?;
            Some(table.get(0)?)
        } else {
            None
        };
        let norm = layer_norm(d, cfg.layer_norm_eps, vb.pp("LayerNorm"))?;
        Ok(Self {
            word,
            position,
            token_type0,
            norm,
        })
    }

    /// `ids`, `positions`: `[batch, len]` → `[batch, len, d]`.
    fn forward(&self, ids: &Tensor, positions: &Tensor) -> Result<Tensor> {
        // Same order of additions as transformers: (word + type) + position.
        let mut x = self.word.forward(ids)?;
        if let Some(tt) = &self.token_type0 {
            x = x.broadcast_add(tt)?;
        }
        x = (x + self.position.forward(positions)?)?;
        self.norm.forward(&x)
    }

    pub fn word_embeddings(&self) -> &Tensor {
        self.word.embeddings()
    }
}

/// Multi-head attention followed by its output projection and residual LayerNorm
/// (`attention.self.*` + `attention.output.*` in transformers).
struct AttentionBlock {
    query: Linear,
    key: Linear,
    value: Linear,
    out: Linear,
    norm: LayerNorm,
    heads: usize,
    scale: f64,
}

impl AttentionBlock {
    fn load(cfg: &StackConfig, kv_dim: usize, vb: VarBuilder, fmt: WeightFormat) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            query: linear(d, d, vb.pp("self.query"), fmt)?,
            key: linear(kv_dim, d, vb.pp("self.key"), fmt)?,
            value: linear(kv_dim, d, vb.pp("self.value"), fmt)?,
            out: linear(d, d, vb.pp("output.dense"), fmt)?,
            norm: layer_norm(d, cfg.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            heads: cfg.num_heads,
            scale: 1.0 / (cfg.head_dim() as f64).sqrt(),
        })
    }

    fn finish(&self, ctx: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.norm.forward(&(self.out.forward(ctx)? + residual)?)
    }

    /// Bidirectional self-attention over a padded batch.
    fn encoder_forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let q = project_heads(&self.query, x, self.heads)?;
        let k = project_heads(&self.key, x, self.heads)?;
        let v = project_heads(&self.value, x, self.heads)?;
        let ctx = attention(&q, &k, &v, Some(mask), self.scale)?;
        self.finish(&merge_heads(&ctx)?, x)
    }

    /// Causal self-attention for one new token per row, with the cache holding the past.
    fn decoder_step(&self, x: &Tensor, cache: &mut KvCache, history: &History) -> Result<Tensor> {
        let q = project_heads(&self.query, x, self.heads)?;
        let k = project_heads(&self.key, x, self.heads)?;
        let v = project_heads(&self.value, x, self.heads)?;
        let ctx = cache.attend(&q, &k, &v, self.scale, history)?;
        self.finish(&merge_heads(&ctx)?, x)
    }

    /// Encoder keys/values for cross-attention, computed once per input.
    fn cross_kv(&self, enc: &Tensor, lens: &[usize]) -> Result<Vec<CrossKv>> {
        CrossKv::per_input(
            &self.key.forward(enc)?,
            &self.value.forward(enc)?,
            self.heads,
            lens,
        )
    }

    /// Cross-attention of one new token per row over its input's encoder states.
    fn cross_step(&self, x: &Tensor, cross: &CrossBatch, layer: usize) -> Result<Tensor> {
        let q = self.query.forward(x)?;
        let ctx = cross.attend(layer, &q, self.scale)?;
        self.finish(&ctx, x)
    }
}

struct FeedForward {
    intermediate: Linear,
    output: Linear,
    norm: LayerNorm,
    act: Activation,
}

impl FeedForward {
    fn load(cfg: &StackConfig, vb: VarBuilder, fmt: WeightFormat) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            intermediate: linear(d, i, vb.pp("intermediate.dense"), fmt)?,
            output: linear(i, d, vb.pp("output.dense"), fmt)?,
            norm: layer_norm(d, cfg.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            act: cfg.activation,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.intermediate.forward_activated(x, self.act)?;
        self.norm.forward(&(self.output.forward(&h)? + x)?)
    }
}

/// Encoder layer: bidirectional self-attention, then the feed-forward block.
struct EncoderLayer {
    attention: AttentionBlock,
    ffn: FeedForward,
}

impl EncoderLayer {
    fn load(cfg: &StackConfig, vb: VarBuilder, fmt: WeightFormat) -> Result<Self> {
        Ok(Self {
            attention: AttentionBlock::load(cfg, cfg.hidden_size, vb.pp("attention"), fmt)?,
            ffn: FeedForward::load(cfg, vb, fmt)?,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        self.ffn.forward(&self.attention.encoder_forward(x, mask)?)
    }
}

/// Decoder layer: causal self-attention, cross-attention over the encoder states, then
/// the feed-forward block.
struct DecoderLayer {
    attention: AttentionBlock,
    cross: AttentionBlock,
    ffn: FeedForward,
}

impl DecoderLayer {
    /// `cross_kv_dim`: the width of the encoder states the cross-attention reads.
    fn load(
        cfg: &StackConfig,
        cross_kv_dim: usize,
        vb: VarBuilder,
        fmt: WeightFormat,
    ) -> Result<Self> {
        Ok(Self {
            attention: AttentionBlock::load(cfg, cfg.hidden_size, vb.pp("attention"), fmt)?,
            cross: AttentionBlock::load(cfg, cross_kv_dim, vb.pp("crossattention"), fmt)?,
            ffn: FeedForward::load(cfg, vb, fmt)?,
        })
    }

    fn step(
        &self,
        x: &Tensor,
        cache: &mut KvCache,
        history: &History,
        cross: &CrossBatch,
        layer: usize,
    ) -> Result<Tensor> {
        let a = self.attention.decoder_step(x, cache, history)?;
        let c = self.cross.cross_step(&a, cross, layer)?;
        self.ffn.forward(&c)
    }
}

/// Position ids of a row as transformers computes them. RoBERTa skips pads and starts at
/// `padding_idx + 1`; BERT and BertGeneration count from 0.
pub fn position_ids(cfg: &StackConfig, ids: &[u32], past: usize) -> Vec<u32> {
    match cfg.family {
        Family::Roberta => {
            let pad = cfg.pad_token_id.unwrap_or(1);
            let mut count = 0u32;
            ids.iter()
                .map(|&t| {
                    if t == pad {
                        pad
                    } else {
                        count += 1;
                        pad + past as u32 + count
                    }
                })
                .collect()
        }
        _ => (past as u32..(past + ids.len()) as u32).collect(),
    }
}

/// The encoder half.
pub struct BertEncoder {
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
}

impl BertEncoder {
    /// `vb` points at the encoder's base model (`encoder.`).
    pub fn load(cfg: &StackConfig, vb: VarBuilder, fmt: WeightFormat) -> Result<Self> {
        let embeddings = Embeddings::load(cfg, vb.pp("embeddings"))?;
        let layers = (0..cfg.num_layers)
            .map(|i| EncoderLayer::load(cfg, vb.pp(format!("encoder.layer.{i}")), fmt))
            .collect::<Result<_>>()?;
        Ok(Self { embeddings, layers })
    }

    /// `ids`, `positions`: `[batch, len]`; `mask`: additive `[batch, 1, 1, len]`.
    pub fn forward(&self, ids: &Tensor, positions: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let mut x = self.embeddings.forward(ids, positions)?;
        for layer in &self.layers {
            x = layer.forward(&x, mask)?;
        }
        Ok(x)
    }
}

/// transform(dense → act → LN) then the tied vocabulary projection, or the projection alone.
struct LmHead {
    transform: Option<(Linear, Activation, LayerNorm)>,
    projection: Linear,
}

impl LmHead {
    fn load(
        cfg: &StackConfig,
        word_embeddings: &Tensor,
        vb: VarBuilder,
        fmt: WeightFormat,
    ) -> Result<Self> {
        let (d, vocab) = (cfg.hidden_size, cfg.vocab_size);
        // The output projection is tied to the word embeddings unless the file has its own.
        let tied_or_own = |vb: &VarBuilder| -> Result<Tensor> {
            if vb.contains_tensor("decoder.weight") {
                vb.get((vocab, d), "decoder.weight")
            } else {
                Ok(word_embeddings.clone())
            }
        };
        // The bias lives at `<head>.bias` (tied to `<head>.decoder.bias`).
        let bias = |vb: &VarBuilder| -> Result<Tensor> {
            if vb.contains_tensor("bias") {
                vb.get(vocab, "bias")
            } else {
                vb.get(vocab, "decoder.bias")
            }
        };
        match cfg.family {
            Family::Bert => {
                let vb = vb.pp("cls.predictions");
                let t = vb.pp("transform");
                Ok(Self {
                    transform: Some((
                        linear(d, d, t.pp("dense"), fmt)?,
                        cfg.activation,
                        layer_norm(d, cfg.layer_norm_eps, t.pp("LayerNorm"))?,
                    )),
                    projection: Linear::new(tied_or_own(&vb)?, Some(bias(&vb)?), fmt)?,
                })
            }
            Family::Roberta => {
                let vb = vb.pp("lm_head");
                Ok(Self {
                    // RobertaLMHead always uses exact GELU, whatever `hidden_act` says.
                    transform: Some((
                        linear(d, d, vb.pp("dense"), fmt)?,
                        Activation::Gelu,
                        layer_norm(d, cfg.layer_norm_eps, vb.pp("layer_norm"))?,
                    )),
                    projection: Linear::new(tied_or_own(&vb)?, Some(bias(&vb)?), fmt)?,
                })
            }
            Family::BertGeneration => {
                let vb = vb.pp("lm_head");
                Ok(Self {
                    transform: None,
                    projection: Linear::new(tied_or_own(&vb)?, Some(bias(&vb)?), fmt)?,
                })
            }
            Family::Gpt2 => unreachable!("GPT-2 has its own decoder"),
        }
    }

    /// `[rows, d]` → `[rows, vocab]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = match &self.transform {
            Some((dense, act, norm)) => norm.forward(&dense.forward_activated(x, *act)?)?,
            None => x.clone(),
        };
        self.projection.forward(&x)
    }
}

/// The decoder half: `BertLMHeadModel`, `RobertaForCausalLM` or `BertGenerationDecoder`.
pub struct BertDecoder {
    cfg: StackConfig,
    embeddings: Embeddings,
    layers: Vec<DecoderLayer>,
    head: LmHead,
}

impl BertDecoder {
    /// `vb` points at the decoder (`decoder.`); `cross_dim` is the width of the encoder
    /// states it attends to (after `enc_to_dec_proj`, i.e. its own width).
    pub fn load(cfg: &StackConfig, vb: VarBuilder, fmt: WeightFormat) -> Result<Self> {
        let base = vb.pp(cfg.family.decoder_base());
        let embeddings = Embeddings::load(cfg, base.pp("embeddings"))?;
        let layers = (0..cfg.num_layers)
            .map(|i| {
                DecoderLayer::load(
                    cfg,
                    cfg.hidden_size,
                    base.pp(format!("encoder.layer.{i}")),
                    fmt,
                )
            })
            .collect::<Result<_>>()?;
        let head = LmHead::load(cfg, embeddings.word_embeddings(), vb, fmt)?;
        Ok(Self {
            cfg: cfg.clone(),
            embeddings,
            layers,
            head,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Cross-attention K/V of every layer (outer) and input (inner) for encoder states
    /// `[inputs, src_len, d]` of inputs of lengths `lens`.
    pub fn cross_kv(&self, enc: &Tensor, lens: &[usize]) -> Result<Vec<Vec<CrossKv>>> {
        self.layers
            .iter()
            .map(|l| l.cross.cross_kv(enc, lens))
            .collect()
    }

    /// One decoding step. `tokens`, `positions`: `[rows, 1]`. Returns logits `[rows, vocab]`.
    pub fn step(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        caches: &mut [KvCache],
        history: &History,
        cross: &CrossBatch,
    ) -> Result<Tensor> {
        let mut x = self.embeddings.forward(tokens, positions)?;
        for (i, (layer, cache)) in self.layers.iter().zip(caches.iter_mut()).enumerate() {
            x = layer.step(&x, cache, history, cross, i)?;
        }
        let rows = x.dim(0)?;
        self.head.forward(&x.reshape((rows, self.cfg.hidden_size))?)
    }
}
