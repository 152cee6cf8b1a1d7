//! What each side of a warm start comes from: a standalone checkpoint directory (its
//! `config.json` and weights, read by name) or `random:FAMILY[:SIZE]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde_json::{json, Value};

use crate::checkpoint::config::Family;
use crate::checkpoint::weights::{TensorMeta, WeightFiles};

/// Model sizes of the paper's random baselines (and a tiny one for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// 2 layers, hidden 32, 4 heads, FFN 64 (GPT-2: 128): for tests.
    Tiny,
    /// 12 layers, hidden 768, 12 heads, FFN 3072 (BERT-base, RoBERTa-base, GPT-2).
    Base,
    /// 24 layers, hidden 1024, 16 heads, FFN 4096 (BERT-large, the `*_L-24_*` models;
    /// for GPT-2 this is the 24-layer "medium" shape).
    Large,
}

impl Size {
    /// (layers, hidden, heads, intermediate)
    pub fn dims(self) -> (usize, usize, usize, usize) {
        match self {
            Size::Tiny => (2, 32, 4, 64),
            Size::Base => (12, 768, 12, 3072),
            Size::Large => (24, 1024, 16, 4096),
        }
    }
}

impl FromStr for Size {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "tiny" => Size::Tiny,
            "base" => Size::Base,
            "large" | "L-24" => Size::Large,
            other => bail!("unknown size `{other}` (expected tiny, base or large)"),
        })
    }
}

/// `--encoder` / `--decoder` as given on the command line.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    /// A standalone checkpoint directory.
    Checkpoint(PathBuf),
    /// Randomly initialised weights of a family and size.
    Random { family: Family, size: Size },
}

impl FromStr for SourceSpec {
    type Err = anyhow::Error;
    /// `random:FAMILY[:SIZE]` (size defaults to `base`); anything else is a directory.
    fn from_str(s: &str) -> Result<Self> {
        if let Some(rest) = s.strip_prefix("random:") {
            let mut parts = rest.splitn(2, ':');
            let family: Family = parts
                .next()
                .unwrap_or_default()
                .parse()
                .with_context(|| format!("in `{s}`"))?;
            let size = match parts.next() {
                Some(size) => size.parse().with_context(|| format!("in `{s}`"))?,
                None => Size::Base,
            };
            return Ok(SourceSpec::Random { family, size });
        }
        if s.is_empty() {
            bail!("empty checkpoint source");
        }
        Ok(SourceSpec::Checkpoint(PathBuf::from(s)))
    }
}

impl std::fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceSpec::Checkpoint(p) => write!(f, "{}", p.display()),
            SourceSpec::Random { family, size } => {
                write!(f, "random:{}:{}", family, size_name(*size))
            }
        }
    }
}

fn size_name(s: Size) -> &'static str {
    match s {
        Size::Tiny => "tiny",
        Size::Base => "base",
        Size::Large => "large",
    }
}

/// The family's default config as transformers writes it (the `*Config()` defaults; the
/// RoBERTa one is `roberta-base`'s), resized to `size`.
pub fn preset_config(family: Family, size: Size) -> Value {
    let (layers, hidden, heads, inter) = size.dims();
    match family {
        Family::Bert => json!({
            "model_type": family.model_type(),
            "attention_probs_dropout_prob": 0.1,
            "bos_token_id": null,
            "classifier_dropout": null,
            "eos_token_id": null,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "hidden_size": hidden,
            "initializer_range": 0.02,
            "intermediate_size": inter,
            "layer_norm_eps": 1e-12,
            "max_position_embeddings": 512,
            "num_attention_heads": heads,
            "num_hidden_layers": layers,
            "pad_token_id": 0,
            "tie_word_embeddings": true,
            "type_vocab_size": 2,
            "use_cache": true,
            "vocab_size": 30522,
        }),
        Family::Roberta => json!({
            "model_type": family.model_type(),
            "attention_probs_dropout_prob": 0.1,
            "bos_token_id": 0,
            "classifier_dropout": null,
            "eos_token_id": 2,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "hidden_size": hidden,
            "initializer_range": 0.02,
            "intermediate_size": inter,
            "layer_norm_eps": 1e-5,
            "max_position_embeddings": 514,
            "num_attention_heads": heads,
            "num_hidden_layers": layers,
            "pad_token_id": 1,
            "tie_word_embeddings": true,
            "type_vocab_size": 1,
            "use_cache": true,
            "vocab_size": 50265,
        }),
        Family::BertGeneration => json!({
            "model_type": family.model_type(),
            "attention_probs_dropout_prob": 0.1,
            "bos_token_id": 2,
            "eos_token_id": 1,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "hidden_size": hidden,
            "initializer_range": 0.02,
            "intermediate_size": inter,
            "layer_norm_eps": 1e-12,
            "max_position_embeddings": 512,
            "num_attention_heads": heads,
            "num_hidden_layers": layers,
            "pad_token_id": 0,
            "tie_word_embeddings": true,
            "use_cache": true,
            "vocab_size": 50358,
        }),
        Family::Gpt2 => json!({
            "model_type": family.model_type(),
            "activation_function": "gelu_new",
            "attn_pdrop": 0.1,
            "bos_token_id": 50256,
            "embd_pdrop": 0.1,
            "eos_token_id": 50256,
            "initializer_range": 0.02,
            "layer_norm_epsilon": 1e-5,
            "n_embd": hidden,
            "n_head": heads,
            "n_inner": null,
            "n_layer": layers,
            "n_positions": 1024,
            "pad_token_id": null,
            "reorder_and_upcast_attn": false,
            "resid_pdrop": 0.1,
            "scale_attn_by_inverse_layer_idx": false,
            "scale_attn_weights": true,
            "summary_activation": null,
            "summary_first_dropout": 0.1,
            "summary_proj_to_labels": true,
            "summary_type": "cls_index",
            "summary_use_proj": true,
            "tie_word_embeddings": true,
            "use_cache": true,
            "vocab_size": 50257,
        }),
    }
}

/// Where a parameter may be stored in a standalone checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceName {
    /// Relative to the base model (`embeddings.word_embeddings.weight`): stored either bare
    /// (`BertModel`, `GPT2Model`) or under the family's prefix (`bert.`, `roberta.`,
    /// `transformer.`) as head models save it.
    Base(String),
    /// A head parameter: these exact names, first match wins (`cls.predictions.bias`,
    /// then its tied alias `cls.predictions.decoder.bias`).
    Head(Vec<String>),
}

/// A standalone checkpoint: config, and tensors looked up by name.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: Value,
    pub family: Family,
    /// Its weight files, read like an `EncoderDecoderModel`'s (safetensors, zip or
    /// legacy `.bin`).
    weights: WeightFiles,
    /// Whether base-model tensors are stored under the family prefix.
    pub prefixed: bool,
}

/// Attribute name of the base model inside the family's head models.
pub fn base_prefix(f: Family) -> &'static str {
    f.decoder_base()
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!("checkpoint directory {} does not exist", dir.display());
        }
        let cfg_path = dir.join("config.json");
        let config: Value = crate::checkpoint::config::read_json(&cfg_path)?;
        if config.get("encoder").is_some() || config.get("decoder").is_some() {
            bail!(
                "{} is already an EncoderDecoderModel; warmstart takes standalone checkpoints \
                 (BertModel, RobertaForMaskedLM, GPT2LMHeadModel, ...)",
                dir.display()
            );
        }
        let mt = config
            .get("model_type")
            .and_then(Value::as_str)
            .with_context(|| format!("{} has no `model_type`", cfg_path.display()))?;
        let family =
            Family::from_model_type(mt).with_context(|| format!("in {}", cfg_path.display()))?;

        let weights = WeightFiles::open_dir(dir)?;
        let p = format!("{}.", base_prefix(family));
        let prefixed = weights.tensors().keys().any(|n| n.starts_with(&p));
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            family,
            weights,
            prefixed,
        })
    }

    /// The stored name of `name`, if the checkpoint has it (pre-2019 LayerNorm
    /// `gamma`/`beta` names included).
    pub fn find(&self, name: &SourceName) -> Option<String> {
        let candidates: Vec<String> = match name {
            SourceName::Base(rel) => {
                let pre = format!("{}.{rel}", base_prefix(self.family));
                if self.prefixed {
                    vec![pre, rel.clone()]
                } else {
                    vec![rel.clone(), pre]
                }
            }
            SourceName::Head(names) => names.clone(),
        };
        for c in &candidates {
            if self.weights.contains(c) {
                return Some(c.clone());
            }
            let legacy = if let Some(stem) = c.strip_suffix("LayerNorm.weight") {
                Some(format!("{stem}LayerNorm.gamma"))
            } else {
                c.strip_suffix("LayerNorm.bias")
                    .map(|stem| format!("{stem}LayerNorm.beta"))
            };
            if let Some(l) = legacy.filter(|l| self.weights.contains(l)) {
                return Some(l);
            }
        }
        None
    }

    /// Stored name -> dtype and shape.
    pub fn tensors(&self) -> &BTreeMap<String, TensorMeta> {
        self.weights.tensors()
    }

    /// The stored tensor, exactly as stored (no dtype conversion).
    pub fn load(&self, stored: &str) -> Result<Tensor> {
        self.weights.load(stored)
    }

    /// Short description of the layout: which class saved it.
    pub fn layout(&self) -> String {
        let arch = self
            .config
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str);
        let base = if self.prefixed {
            format!("{}.* prefix", base_prefix(self.family))
        } else {
            "base-model names".to_string()
        };
        match arch {
            Some(a) => format!("{} {a}, {base}", self.family),
            None => format!("{}, {base}", self.family),
        }
    }
}

/// Tensors a checkpoint may carry that are buffers or tied aliases, not parameters:
/// never reported as "not used".
pub fn is_buffer_or_alias(name: &str) -> bool {
    name.ends_with("position_ids")
        || name.ends_with("attn.bias") && !name.ends_with("c_attn.bias")
        || name.ends_with("attn.masked_bias")
        || name.ends_with("predictions.decoder.weight")
        || name.ends_with("predictions.decoder.bias")
        || name == "lm_head.decoder.weight"
        || name == "lm_head.decoder.bias"
        || name == "lm_head.weight"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!(
            "random:bert:base".parse::<SourceSpec>().unwrap(),
            SourceSpec::Random {
                family: Family::Bert,
                size: Size::Base
            }
        );
        assert_eq!(
            "random:gpt2".parse::<SourceSpec>().unwrap(),
            SourceSpec::Random {
                family: Family::Gpt2,
                size: Size::Base
            }
        );
        assert_eq!(
            "random:bert-generation:large"
                .parse::<SourceSpec>()
                .unwrap(),
            SourceSpec::Random {
                family: Family::BertGeneration,
                size: Size::Large
            }
        );
        assert!("random:t5".parse::<SourceSpec>().is_err());
        assert!("random:bert:huge".parse::<SourceSpec>().is_err());
        assert_eq!(
            "./ckpt".parse::<SourceSpec>().unwrap(),
            SourceSpec::Checkpoint("./ckpt".into())
        );
    }

    #[test]
    fn buffers_are_not_parameters() {
        assert!(is_buffer_or_alias("h.0.attn.bias"));
        assert!(is_buffer_or_alias("transformer.h.3.attn.masked_bias"));
        assert!(!is_buffer_or_alias("h.0.attn.c_attn.bias"));
        assert!(is_buffer_or_alias("bert.embeddings.position_ids"));
        assert!(is_buffer_or_alias("cls.predictions.decoder.weight"));
        assert!(!is_buffer_or_alias("cls.predictions.bias"));
    }
}
