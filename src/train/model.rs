//! `EncoderDecoderModel` with labels, as transformers trains it: the whole target
//! sequence in one teacher-forced pass, and the mean cross-entropy of the label tokens.
//!
//! Encoder layer (BERT, RoBERTa, BertGeneration):
//!   a = LN(x + drop(W_o·Attn(x)));  y = LN(a + drop(W₂·act(W₁·a)))
//! Decoder layer: causal self-attention, cross-attention over the encoder states, FFN,
//! each in the same residual-then-LN form. GPT-2 blocks are pre-LN:
//!   x += drop(SelfAttn(LN₁x));  x += drop(CrossAttn(LN_c x, enc));  x += drop(MLP(LN₂x))
//! The math is the inference model's (`crate::model`); this copy is written with
//! differentiable tensor ops and adds dropout.

use anyhow::{Context, Result};
use candle_core::{DType, Module, Tensor, D};
use candle_nn::Embedding;

use super::layers::{
    attention, causal_mask, dense_activated, log_softmax, merge_heads, padding_mask, split_heads,
    Dense, Noise, Norm, Scope,
};
use super::loss::token_nll;
use super::params::Params;
use crate::checkpoint::config::{Activation, EncoderDecoderConfig, Family, StackConfig};

/// Dropout probabilities of one stack (`config.json`), zero where it sets none.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DropoutRates {
    /// Embeddings and every residual branch (`hidden_dropout_prob`; GPT-2
    /// `resid_pdrop`, its embeddings `embd_pdrop`).
    pub hidden: f64,
    pub embeddings: f64,
    /// Attention probabilities (`attention_probs_dropout_prob`, `attn_pdrop`).
    pub attention: f64,
}

impl DropoutRates {
    /// The rates a stack's sub-config sets, with transformers' defaults.
    pub fn from_config(stack: &serde_json::Value, family: Family) -> Self {
        let rate =
            |key: &str, default: f64| stack.get(key).and_then(|v| v.as_f64()).unwrap_or(default);
        match family {
            Family::Gpt2 => Self {
                hidden: rate("resid_pdrop", 0.1),
                embeddings: rate("embd_pdrop", 0.1),
                attention: rate("attn_pdrop", 0.1),
            },
            _ => {
                let hidden = rate("hidden_dropout_prob", 0.1);
                Self {
                    hidden,
                    embeddings: hidden,
                    attention: rate("attention_probs_dropout_prob", 0.1),
                }
            }
        }
    }
}

/// One padded batch, as the Trainer's collator and `EncoderDecoderModel` build it.
pub struct Batch {
    /// `[b, s]` u32 input ids and their position ids.
    pub input_ids: Tensor,
    pub input_positions: Tensor,
    /// `[b, s]` 1 for tokens, 0 for padding.
    pub input_keep: Tensor,
    /// `[b, t]` labels shifted right behind the start token; its position ids.
    pub decoder_ids: Tensor,
    pub decoder_positions: Tensor,
    /// `[b, t]` 1 where the decoder input is not the pad id.
    pub decoder_keep: Tensor,
    /// `[b·t]` label ids (ignored positions hold 0) and 1/0 weights.
    pub labels: Tensor,
    pub label_weights: Tensor,
    /// Label tokens the loss averages over.
    pub label_tokens: usize,
}

struct Embeddings {
    word: Embedding,
    position: Embedding,
    /// Row 0 of the token-type table, as a view so that its gradient reaches the table.
    token_type0: Option<Tensor>,
    norm: Norm,
}

impl Embeddings {
    fn load(cfg: &StackConfig, s: &Scope) -> Result<Self> {
        let d = cfg.hidden_size;
        let word = s.get((cfg.vocab_size, d), "word_embeddings.weight")?;
        let position = s.get((cfg.max_positions, d), "position_embeddings.weight")?;
        let token_type0 = if cfg.type_vocab_size > 0 {
            let table = s.get((cfg.type_vocab_size, d), "token_type_embeddings.weight")?;
            Some(table.narrow(0, 0, 1)?)
        } else {
            None
        };
        Ok(Self {
            word: Embedding::new(word, d),
            position: Embedding::new(position, d),
            token_type0,
            norm: Norm::load(&s.pp("LayerNorm"), d, cfg.layer_norm_eps)?,
        })
    }

    fn forward(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        p: f64,
        noise: &mut Noise,
    ) -> Result<Tensor> {
        let mut x = self.word.forward(ids)?;
        if let Some(tt) = &self.token_type0 {
            x = x.broadcast_add(tt)?;
        }
        x = (x + self.position.forward(positions)?)?;
        Ok(noise.dropout(&self.norm.forward(&x)?, p)?)
    }
}

/// `attention.self.*` + `attention.output.*` (or `crossattention.*`).
struct AttentionBlock {
    query: Dense,
    key: Dense,
    value: Dense,
    out: Dense,
    norm: Norm,
    heads: usize,
    scale: f64,
}

impl AttentionBlock {
    fn load(cfg: &StackConfig, kv_dim: usize, s: &Scope) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            query: Dense::linear(&s.pp("self.query"), d, d)?,
            key: Dense::linear(&s.pp("self.key"), kv_dim, d)?,
            value: Dense::linear(&s.pp("self.value"), kv_dim, d)?,
            out: Dense::linear(&s.pp("output.dense"), d, d)?,
            norm: Norm::load(&s.pp("output.LayerNorm"), d, cfg.layer_norm_eps)?,
            heads: cfg.num_heads,
            scale: 1.0 / (cfg.head_dim() as f64).sqrt(),
        })
    }

    /// `x` attends to `memory` (itself for self-attention) under additive `mask`.
    fn forward(
        &self,
        x: &Tensor,
        memory: &Tensor,
        mask: &Tensor,
        rates: DropoutRates,
        noise: &mut Noise,
    ) -> Result<Tensor> {
        let q = split_heads(&self.query.forward(x)?, self.heads)?;
        let k = split_heads(&self.key.forward(memory)?, self.heads)?;
        let v = split_heads(&self.value.forward(memory)?, self.heads)?;
        let ctx = attention(&q, &k, &v, mask, self.scale, rates.attention, noise)?;
        let out = noise.dropout(&self.out.forward(&merge_heads(&ctx)?)?, rates.hidden)?;
        Ok(self.norm.forward(&(out + x)?)?)
    }
}

struct FeedForward {
    intermediate: Dense,
    output: Dense,
    norm: Norm,
    act: Activation,
}

impl FeedForward {
    fn load(cfg: &StackConfig, s: &Scope) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            intermediate: Dense::linear(&s.pp("intermediate.dense"), d, i)?,
            output: Dense::linear(&s.pp("output.dense"), i, d)?,
            norm: Norm::load(&s.pp("output.LayerNorm"), d, cfg.layer_norm_eps)?,
            act: cfg.activation,
        })
    }

    fn forward(&self, x: &Tensor, rates: DropoutRates, noise: &mut Noise) -> Result<Tensor> {
        let h = dense_activated(&self.intermediate, x, self.act)?;
        let out = noise.dropout(&self.output.forward(&h)?, rates.hidden)?;
        Ok(self.norm.forward(&(out + x)?)?)
    }
}

/// The encoder stack (and, with cross-attention, the BERT-family decoder's layers).
struct BertLayer {
    attention: AttentionBlock,
    cross: Option<AttentionBlock>,
    ffn: FeedForward,
}

impl BertLayer {
    fn load(cfg: &StackConfig, cross_dim: Option<usize>, s: &Scope) -> Result<Self> {
        Ok(Self {
            attention: AttentionBlock::load(cfg, cfg.hidden_size, &s.pp("attention"))?,
            cross: cross_dim
                .map(|kv| AttentionBlock::load(cfg, kv, &s.pp("crossattention")))
                .transpose()?,
            ffn: FeedForward::load(cfg, s)?,
        })
    }
}

struct BertStack {
    embeddings: Embeddings,
    layers: Vec<BertLayer>,
    rates: DropoutRates,
}

impl BertStack {
    /// `s` points at the base model (`encoder.` or `decoder.bert.`).
    fn load(
        cfg: &StackConfig,
        cross_dim: Option<usize>,
        rates: DropoutRates,
        s: &Scope,
    ) -> Result<Self> {
        let embeddings = Embeddings::load(cfg, &s.pp("embeddings"))?;
        let layers = (0..cfg.num_layers)
            .map(|i| BertLayer::load(cfg, cross_dim, &s.pp(format!("encoder.layer.{i}"))))
            .collect::<Result<_>>()?;
        Ok(Self {
            embeddings,
            layers,
            rates,
        })
    }

    /// Hidden states `[b, t, d]`; `cross`: the encoder states and their mask.
    fn forward(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        cross: Option<(&Tensor, &Tensor)>,
        noise: &mut Noise,
    ) -> Result<Tensor> {
        let mut x = self
            .embeddings
            .forward(ids, positions, self.rates.embeddings, noise)?;
        for layer in &self.layers {
            x = layer.attention.forward(&x, &x, mask, self.rates, noise)?;
            if let (Some(block), Some((enc, enc_mask))) = (&layer.cross, cross) {
                x = block.forward(&x, enc, enc_mask, self.rates, noise)?;
            }
            x = layer.ffn.forward(&x, self.rates, noise)?;
        }
        Ok(x)
    }
}

/// transform (dense → act → LN) then the vocabulary projection, or the projection alone.
struct LmHead {
    transform: Option<(Dense, Activation, Norm)>,
    projection: Dense,
}

impl LmHead {
    /// `s` points at the decoder (`decoder.`); `word` is the decoder's embedding table.
    fn load(
        cfg: &StackConfig,
        word: &Tensor,
        tie_word_embeddings: bool,
        s: &Scope,
    ) -> Result<Self> {
        let (d, vocab) = (cfg.hidden_size, cfg.vocab_size);
        let (head, transform_norm, act) = match cfg.family {
            Family::Bert => (
                "cls.predictions",
                Some(("transform.dense", "transform.LayerNorm")),
                cfg.activation,
            ),
            // RobertaLMHead always uses exact GELU, whatever `hidden_act` says.
            Family::Roberta => ("lm_head", Some(("dense", "layer_norm")), Activation::Gelu),
            Family::BertGeneration => ("lm_head", None, cfg.activation),
            Family::Gpt2 => unreachable!("GPT-2 has its own decoder"),
        };
        let h = s.pp(head);
        let transform = transform_norm
            .map(|(dense, norm)| -> Result<_> {
                Ok((
                    Dense::linear(&h.pp(dense), d, d)?,
                    act,
                    Norm::load(&h.pp(norm), d, cfg.layer_norm_eps)?,
                ))
            })
            .transpose()?;
        let weight = if tie_word_embeddings || !h.contains("decoder.weight") {
            s.params()
                .also_saved_as(&h.name("decoder.weight"), &word_name(cfg, s));
            word.clone()
        } else {
            h.get((vocab, d), "decoder.weight")?
        };
        // The bias lives at `<head>.bias` (tied to `<head>.decoder.bias`).
        let bias = if h.contains("bias") {
            h.get(vocab, "bias")?
        } else {
            h.get(vocab, "decoder.bias")?
        };
        Ok(Self {
            transform,
            projection: Dense::tied(weight, Some(bias)),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = match &self.transform {
            Some((dense, act, norm)) => norm.forward(&dense_activated(dense, x, *act)?)?,
            None => x.clone(),
        };
        Ok(self.projection.forward(&x)?)
    }
}

/// The name of a BERT-family decoder's word embeddings.
fn word_name(cfg: &StackConfig, s: &Scope) -> String {
    s.name(&format!(
        "{}.embeddings.word_embeddings.weight",
        cfg.family.decoder_base()
    ))
}

struct Gpt2Block {
    ln_1: Norm,
    c_attn: Dense,
    attn_proj: Dense,
    ln_cross: Norm,
    q_attn: Dense,
    cross_kv: Dense,
    cross_proj: Dense,
    ln_2: Norm,
    c_fc: Dense,
    mlp_proj: Dense,
    act: Activation,
    heads: usize,
    scale: f64,
}

impl Gpt2Block {
    fn load(cfg: &StackConfig, index: usize, s: &Scope) -> Result<Self> {
        let (d, inner, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let mut scale = 1.0;
        if cfg.scale_attn_weights {
            scale /= (cfg.head_dim() as f64).sqrt();
        }
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (index + 1) as f64;
        }
        Ok(Self {
            ln_1: Norm::load(&s.pp("ln_1"), d, eps)?,
            c_attn: Dense::conv1d(&s.pp("attn.c_attn"), d, 3 * d)?,
            attn_proj: Dense::conv1d(&s.pp("attn.c_proj"), d, d)?,
            ln_cross: Norm::load(&s.pp("ln_cross_attn"), d, eps)?,
            q_attn: Dense::conv1d(&s.pp("crossattention.q_attn"), d, d)?,
            cross_kv: Dense::conv1d(&s.pp("crossattention.c_attn"), d, 2 * d)?,
            cross_proj: Dense::conv1d(&s.pp("crossattention.c_proj"), d, d)?,
            ln_2: Norm::load(&s.pp("ln_2"), d, eps)?,
            c_fc: Dense::conv1d(&s.pp("mlp.c_fc"), d, inner)?,
            mlp_proj: Dense::conv1d(&s.pp("mlp.c_proj"), inner, d)?,
            act: cfg.activation,
            heads: cfg.num_heads,
            scale,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        enc: &Tensor,
        enc_mask: &Tensor,
        rates: DropoutRates,
        noise: &mut Noise,
    ) -> Result<Tensor> {
        let heads = |t: &Tensor| split_heads(t, self.heads);
        let qkv = self
            .c_attn
            .forward(&self.ln_1.forward(x)?)?
            .chunk(3, D::Minus1)?;
        let (q, k, v) = (heads(&qkv[0])?, heads(&qkv[1])?, heads(&qkv[2])?);
        let ctx = merge_heads(&attention(
            &q,
            &k,
            &v,
            mask,
            self.scale,
            rates.attention,
            noise,
        )?)?;
        let x = (x + noise.dropout(&self.attn_proj.forward(&ctx)?, rates.hidden)?)?;

        let q = heads(&self.q_attn.forward(&self.ln_cross.forward(&x)?)?)?;
        let kv = self.cross_kv.forward(enc)?.chunk(2, D::Minus1)?;
        let (k, v) = (heads(&kv[0])?, heads(&kv[1])?);
        let ctx = merge_heads(&attention(
            &q,
            &k,
            &v,
            enc_mask,
            self.scale,
            rates.attention,
            noise,
        )?)?;
        let x = (x + noise.dropout(&self.cross_proj.forward(&ctx)?, rates.hidden)?)?;

        let h = dense_activated(&self.c_fc, &self.ln_2.forward(&x)?, self.act)?;
        Ok((x + noise.dropout(&self.mlp_proj.forward(&h)?, rates.hidden)?)?)
    }
}

struct Gpt2Decoder {
    wte: Tensor,
    wpe: Embedding,
    blocks: Vec<Gpt2Block>,
    ln_f: Norm,
    lm_head: Dense,
    rates: DropoutRates,
}

impl Gpt2Decoder {
    fn load(
        cfg: &StackConfig,
        rates: DropoutRates,
        tie_word_embeddings: bool,
        s: &Scope,
    ) -> Result<Self> {
        let t = s.pp("transformer");
        let d = cfg.hidden_size;
        let wte = t.get((cfg.vocab_size, d), "wte.weight")?;
        let wpe = Embedding::new(t.get((cfg.max_positions, d), "wpe.weight")?, d);
        let blocks = (0..cfg.num_layers)
            .map(|i| Gpt2Block::load(cfg, i, &t.pp(format!("h.{i}"))))
            .collect::<Result<_>>()?;
        let ln_f = Norm::load(&t.pp("ln_f"), d, cfg.layer_norm_eps)?;
        let head = if tie_word_embeddings || !s.contains("lm_head.weight") {
            s.params()
                .also_saved_as(&s.name("lm_head.weight"), &t.name("wte.weight"));
            wte.clone()
        } else {
            s.get((cfg.vocab_size, d), "lm_head.weight")?
        };
        Ok(Self {
            wte,
            wpe,
            blocks,
            ln_f,
            lm_head: Dense::tied(head, None),
            rates,
        })
    }

    fn forward(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        enc: &Tensor,
        enc_mask: &Tensor,
        noise: &mut Noise,
    ) -> Result<Tensor> {
        let d = self.wte.dim(1)?;
        let x =
            (Embedding::new(self.wte.clone(), d).forward(ids)? + self.wpe.forward(positions)?)?;
        let mut x = noise.dropout(&x, self.rates.embeddings)?;
        for block in &self.blocks {
            x = block.forward(&x, mask, enc, enc_mask, self.rates, noise)?;
        }
        Ok(self.lm_head.forward(&self.ln_f.forward(&x)?)?)
    }
}

enum Decoder {
    Bert(BertStack, LmHead),
    Gpt2(Gpt2Decoder),
}

/// The trainable model: its parameters live in [`Params`].
pub struct TrainableModel {
    encoder: BertStack,
    enc_to_dec_proj: Option<Dense>,
    decoder: Decoder,
}

impl TrainableModel {
    /// Reads every parameter of the model from `params`. `raw_config` is `config.json`
    /// (for the dropout rates and `tie_word_embeddings`, which inference ignores).
    pub fn load(
        config: &EncoderDecoderConfig,
        raw_config: &serde_json::Value,
        params: &Params,
    ) -> Result<Self> {
        let root = Scope::root(params);
        let raw = |half: &str| raw_config.get(half).cloned().unwrap_or_default();
        let (enc_raw, dec_raw) = (raw("encoder"), raw("decoder"));
        let (enc_cfg, dec_cfg) = (&config.encoder, &config.decoder);
        let tie_words = dec_raw
            .get("tie_word_embeddings")
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        let encoder = BertStack::load(
            enc_cfg,
            None,
            DropoutRates::from_config(&enc_raw, enc_cfg.family),
            &root.pp("encoder"),
        )
        .context("building the encoder")?;
        let (enc_d, dec_d) = (enc_cfg.hidden_size, dec_cfg.hidden_size);
        let enc_to_dec_proj = (enc_d != dec_d)
            .then(|| Dense::linear(&root.pp("enc_to_dec_proj"), enc_d, dec_d))
            .transpose()?;
        let dec_rates = DropoutRates::from_config(&dec_raw, dec_cfg.family);
        let dec = root.pp("decoder");
        let decoder = match dec_cfg.family {
            Family::Gpt2 => Decoder::Gpt2(
                Gpt2Decoder::load(dec_cfg, dec_rates, tie_words, &dec)
                    .context("building the decoder")?,
            ),
            _ => {
                let stack = BertStack::load(
                    dec_cfg,
                    Some(dec_d),
                    dec_rates,
                    &dec.pp(dec_cfg.family.decoder_base()),
                )
                .context("building the decoder")?;
                let word = stack.embeddings.word.embeddings().clone();
                let head = LmHead::load(dec_cfg, &word, tie_words, &dec)?;
                Decoder::Bert(stack, head)
            }
        };
        Ok(Self {
            encoder,
            enc_to_dec_proj,
            decoder,
        })
    }

    /// Decoder logits `[b, t, vocab]` for a batch.
    pub fn logits(&self, batch: &Batch, noise: &mut Noise) -> Result<Tensor> {
        let enc_mask = padding_mask(&batch.input_keep)?;
        let mut enc = self.encoder.forward(
            &batch.input_ids,
            &batch.input_positions,
            &enc_mask,
            None,
            noise,
        )?;
        if let Some(proj) = &self.enc_to_dec_proj {
            enc = proj.forward(&enc)?;
        }
        let (_, t) = batch.decoder_ids.dims2()?;
        let dec_mask =
            causal_mask(t, enc.device())?.broadcast_add(&padding_mask(&batch.decoder_keep)?)?;
        match &self.decoder {
            Decoder::Bert(stack, head) => {
                let h = stack.forward(
                    &batch.decoder_ids,
                    &batch.decoder_positions,
                    &dec_mask,
                    Some((&enc, &enc_mask)),
                    noise,
                )?;
                head.forward(&h)
            }
            Decoder::Gpt2(gpt2) => gpt2.forward(
                &batch.decoder_ids,
                &batch.decoder_positions,
                &dec_mask,
                &enc,
                &enc_mask,
                noise,
            ),
        }
    }

    /// Cross-entropy summed over the batch's label tokens, divided by `denominator`
    /// (the label tokens of the batch, or of all batches of an accumulated step).
    pub fn loss(&self, batch: &Batch, denominator: usize, noise: &mut Noise) -> Result<Tensor> {
        let logits = self.logits(batch, noise)?;
        let vocab = logits.dim(D::Minus1)?;
        let logits = logits.reshape(((), vocab))?;
        let total = if logits.device().is_cpu() && logits.dtype() == DType::F32 {
            token_nll(&logits, &batch.labels, &batch.label_weights)?.sum_all()?
        } else {
            let logp = log_softmax(&logits)?;
            let picked = logp.gather(&batch.labels.unsqueeze(1)?, 1)?.squeeze(1)?;
            (picked * &batch.label_weights)?.sum_all()?.neg()?
        };
        Ok((total / denominator.max(1) as f64)?.to_dtype(DType::F32)?)
    }
}
