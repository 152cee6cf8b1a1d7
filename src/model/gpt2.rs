//! GPT-2 decoder with cross-attention (`GPT2LMHeadModel`, `add_cross_attention=True`).
//!
//! Pre-LayerNorm block:
//!   x += SelfAttn(LN₁(x));   x += CrossAttn(LN_cross(x), enc);   x += MLP(LN₂(x))
//! then LN_f and the vocabulary projection tied to `wte`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};

use super::attention::{chunk_last, merge_heads, split_heads};
use super::cross_kv::{CrossBatch, CrossKv};
use super::kernels::packed::WeightFormat;
use super::kv_cache::{History, KvCache};
use super::linear::{conv1d, layer_norm, Linear};
use crate::checkpoint::config::{Activation, StackConfig};

struct Gpt2Block {
    ln_1: LayerNorm,
    c_attn: Linear,
    attn_proj: Linear,
    ln_cross: LayerNorm,
    q_attn: Linear,
    cross_kv_attn: Linear,
    cross_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    mlp_proj: Linear,
    act: Activation,
    heads: usize,
    scale: f64,
}

impl Gpt2Block {
    fn load(
        cfg: &StackConfig,
        layer_idx: usize,
        vb: VarBuilder,
        fmt: WeightFormat,
    ) -> Result<Self> {
        let (d, inner, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let mut scale = 1.0;
        if cfg.scale_attn_weights {
            scale /= (cfg.head_dim() as f64).sqrt();
        }
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (layer_idx + 1) as f64;
        }
        Ok(Self {
            ln_1: layer_norm(d, eps, vb.pp("ln_1"))?,
            c_attn: conv1d(d, 3 * d, vb.pp("attn.c_attn"), fmt)?,
            attn_proj: conv1d(d, d, vb.pp("attn.c_proj"), fmt)?,
            ln_cross: layer_norm(d, eps, vb.pp("ln_cross_attn"))?,
            q_attn: conv1d(d, d, vb.pp("crossattention.q_attn"), fmt)?,
            cross_kv_attn: conv1d(d, 2 * d, vb.pp("crossattention.c_attn"), fmt)?,
            cross_proj: conv1d(d, d, vb.pp("crossattention.c_proj"), fmt)?,
            ln_2: layer_norm(d, eps, vb.pp("ln_2"))?,
            c_fc: conv1d(d, inner, vb.pp("mlp.c_fc"), fmt)?,
            mlp_proj: conv1d(inner, d, vb.pp("mlp.c_proj"), fmt)?,
            act: cfg.activation,
            heads: cfg.num_heads,
            scale,
        })
    }

    fn cross_kv(&self, enc: &Tensor, lens: &[usize]) -> Result<Vec<CrossKv>> {
        let kv = chunk_last(&self.cross_kv_attn.forward(enc)?, 2)?;
        CrossKv::per_input(&kv[0], &kv[1], self.heads, lens)
    }

    fn step(
        &self,
        x: &Tensor,
        cache: &mut KvCache,
        history: &History,
        cross: &CrossBatch,
        layer: usize,
    ) -> Result<Tensor> {
        let qkv = chunk_last(&self.c_attn.forward(&self.ln_1.forward(x)?)?, 3)?;
        let q = split_heads(&qkv[0], self.heads)?;
        let ctx = merge_heads(&cache.attend(
            &q,
            &split_heads(&qkv[1], self.heads)?,
            &split_heads(&qkv[2], self.heads)?,
            self.scale,
            history,
        )?)?;
        let x = (x + self.attn_proj.forward(&ctx)?)?;

        let q = self.q_attn.forward(&self.ln_cross.forward(&x)?)?;
        let ctx = cross.attend(layer, &q, self.scale)?;
        let x = (x + self.cross_proj.forward(&ctx)?)?;

        let h = self
            .c_fc
            .forward_activated(&self.ln_2.forward(&x)?, self.act)?;
        x + self.mlp_proj.forward(&h)?
    }
}

pub struct Gpt2Decoder {
    cfg: StackConfig,
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Gpt2Block>,
    ln_f: LayerNorm,
    lm_head: Linear,
}

impl Gpt2Decoder {
    /// `vb` points at the decoder (`decoder.`).
    pub fn load(cfg: &StackConfig, vb: VarBuilder, fmt: WeightFormat) -> Result<Self> {
        let t = vb.pp("transformer");
        let d = cfg.hidden_size;
        let wte = candle_nn::embedding(cfg.vocab_size, d, t.pp("wte"))?;
        let wpe = candle_nn::embedding(cfg.max_positions, d, t.pp("wpe"))?;
        let blocks = (0..cfg.num_layers)
            .map(|i| Gpt2Block::load(cfg, i, t.pp(format!("h.{i}")), fmt))
            .collect::<Result<_>>()?;
        let ln_f = layer_norm(d, cfg.layer_norm_eps, t.pp("ln_f"))?;
        let lm_head = Linear::new(
            if vb.contains_tensor("lm_head.weight") {
                vb.get((cfg.vocab_size, d), "lm_head.weight")?
            } else {
                wte.embeddings().clone()
            },
            None,
            fmt,
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            wte,
            wpe,
            blocks,
            ln_f,
            lm_head,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.blocks.len()
    }

    /// Cross-attention K/V of every block (outer) and input (inner).
    pub fn cross_kv(&self, enc: &Tensor, lens: &[usize]) -> Result<Vec<Vec<CrossKv>>> {
        self.blocks.iter().map(|b| b.cross_kv(enc, lens)).collect()
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
        let mut x = (self.wte.forward(tokens)? + self.wpe.forward(positions)?)?;
        for (i, (block, cache)) in self.blocks.iter().zip(caches.iter_mut()).enumerate() {
            x = block.step(&x, cache, history, cross, i)?;
        }
        let x = self.ln_f.forward(&x)?;
        let rows = x.dim(0)?;
        self.lm_head
            .forward(&x.reshape((rows, self.cfg.hidden_size))?)
    }
}
