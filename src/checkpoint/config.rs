//! `config.json` of an `EncoderDecoderModel`: the two sub-configs, normalised into one
//! shape ([`StackConfig`]) whatever family wrote them.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The four layer families a warm-started checkpoint reduces to at inference time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Bert,
    Roberta,
    BertGeneration,
    Gpt2,
}

impl Family {
    pub const ALL: [Family; 4] = [
        Family::Bert,
        Family::Roberta,
        Family::BertGeneration,
        Family::Gpt2,
    ];

    /// transformers' `model_type` of the family: the one table both directions use.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Roberta => "roberta",
            Family::BertGeneration => "bert-generation",
            Family::Gpt2 => "gpt2",
        }
    }

    /// The family whose `model_type` (as in `config.json`) this is.
    pub fn from_model_type(model_type: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.model_type() == model_type)
            .with_context(|| {
                format!(
                    "unsupported model_type `{model_type}` (supported: {})",
                    Self::supported()
                )
            })
    }

    fn supported() -> String {
        Self::ALL.map(Family::model_type).join(", ")
    }

    /// Attribute name of the base model inside a `*LMHeadModel` / `*ForCausalLM` decoder.
    pub fn decoder_base(self) -> &'static str {
        match self {
            Family::Bert | Family::BertGeneration => "bert",
            Family::Roberta => "roberta",
            Family::Gpt2 => "transformer",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.model_type())
    }
}

/// A family as a user types it (`random:FAMILY`): its `model_type`, any case, with `_`
/// for `-` and the spellings `bertgeneration`, `bertgen`, `gpt-2` also accepted.
impl std::str::FromStr for Family {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.to_ascii_lowercase().replace('_', "-");
        let s = match s.as_str() {
            "bertgeneration" | "bertgen" => "bert-generation",
            "gpt-2" => "gpt2",
            other => other,
        };
        Self::from_model_type(s)
            .map_err(|_| anyhow::anyhow!("unknown family `{s}` (expected {})", Self::supported()))
    }
}

/// Activation functions as transformers names them (`ACT2FN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact erf GELU (`gelu`).
    Gelu,
    /// tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`).
    GeluTanh,
    Relu,
    Silu,
}

impl Activation {
    fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => bail!("unsupported activation `{other}`"),
        })
    }
}

/// One half of the model (encoder or decoder), in family-neutral terms.
#[derive(Debug, Clone)]
pub struct StackConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub max_positions: usize,
    /// 0 when the family has no token-type embeddings.
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub activation: Activation,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<Vec<u32>>,
    /// GPT-2 only: divide attention scores by sqrt(head_dim).
    pub scale_attn_weights: bool,
    /// GPT-2 only: also divide by (layer index + 1).
    pub scale_attn_by_inverse_layer_idx: bool,
}

impl StackConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// RoBERTa counts positions from `padding_idx + 1`, so fewer positions are usable.
    pub fn position_offset(&self) -> usize {
        match self.family {
            Family::Roberta => self.pad_token_id.unwrap_or(1) as usize + 1,
            _ => 0,
        }
    }

    /// Longest input (special tokens included) the position table can embed.
    pub fn max_input_tokens(&self) -> usize {
        self.max_positions.saturating_sub(self.position_offset())
    }

    fn from_json(v: &Value, which: &str) -> Result<Self> {
        let model_type = str_field(v, "model_type")
            .with_context(|| format!("`{which}.model_type` is missing"))?;
        let family =
            Family::from_model_type(model_type).with_context(|| format!("in `{which}`"))?;
        let req = |key: &str| -> Result<usize> {
            usize_field(v, key)
                .with_context(|| format!("`{which}.{key}` is missing or not a number"))
        };
        let cfg = if family == Family::Gpt2 {
            let hidden_size = req("n_embd")?;
            StackConfig {
                family,
                vocab_size: req("vocab_size")?,
                hidden_size,
                num_layers: req("n_layer")?,
                num_heads: req("n_head")?,
                intermediate_size: usize_field(v, "n_inner").unwrap_or(4 * hidden_size),
                max_positions: req("n_positions")?,
                type_vocab_size: 0,
                layer_norm_eps: f64_field(v, "layer_norm_epsilon").unwrap_or(1e-5),
                activation: Activation::parse(
                    str_field(v, "activation_function").unwrap_or("gelu_new"),
                )?,
                pad_token_id: token_field(v, "pad_token_id"),
                bos_token_id: token_field(v, "bos_token_id"),
                eos_token_id: token_list_field(v, "eos_token_id"),
                scale_attn_weights: bool_field(v, "scale_attn_weights").unwrap_or(true),
                scale_attn_by_inverse_layer_idx: bool_field(v, "scale_attn_by_inverse_layer_idx")
                    .unwrap_or(false),
            }
        } else {
            StackConfig {
                family,
                vocab_size: req("vocab_size")?,
                hidden_size: req("hidden_size")?,
                num_layers: req("num_hidden_layers")?,
                num_heads: req("num_attention_heads")?,
                intermediate_size: req("intermediate_size")?,
                max_positions: req("max_position_embeddings")?,
                type_vocab_size: match family {
                    Family::BertGeneration => 0,
                    _ => usize_field(v, "type_vocab_size").unwrap_or(2),
                },
                layer_norm_eps: f64_field(v, "layer_norm_eps").unwrap_or(1e-12),
                activation: Activation::parse(str_field(v, "hidden_act").unwrap_or("gelu"))?,
                pad_token_id: token_field(v, "pad_token_id"),
                bos_token_id: token_field(v, "bos_token_id"),
                eos_token_id: token_list_field(v, "eos_token_id"),
                scale_attn_weights: true,
                scale_attn_by_inverse_layer_idx: false,
            }
        };
        if cfg.num_heads == 0 || cfg.hidden_size % cfg.num_heads != 0 {
            bail!(
                "`{which}`: hidden size {} is not divisible by {} heads",
                cfg.hidden_size,
                cfg.num_heads
            );
        }
        Ok(cfg)
    }
}

/// The whole `config.json`.
#[derive(Debug, Clone)]
pub struct EncoderDecoderConfig {
    pub encoder: StackConfig,
    pub decoder: StackConfig,
    /// transformers 4.x "BERTShare": decoder blocks reuse encoder blocks.
    pub tie_encoder_decoder: bool,
    /// The top-level object, kept for legacy generation fields (num_beams, ...).
    pub top_level: Value,
    /// The decoder sub-config, kept because transformers 5 fills unset special ids from it.
    pub decoder_raw: Value,
}

impl EncoderDecoderConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing {} as JSON", path.display()))?;
        Self::from_json(v).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_json(v: Value) -> Result<Self> {
        let encoder_raw = v.get("encoder").context(
            "not an EncoderDecoderModel config: no `encoder` sub-config (is this a standalone checkpoint?)",
        )?;
        let decoder_raw = v
            .get("decoder")
            .context("not an EncoderDecoderModel config: no `decoder` sub-config")?
            .clone();
        let encoder = StackConfig::from_json(encoder_raw, "encoder")?;
        let decoder = StackConfig::from_json(&decoder_raw, "decoder")?;
        if encoder.family == Family::Gpt2 {
            bail!("a GPT-2 encoder is not supported (GPT-2 is decoder-only)");
        }
        let tie_encoder_decoder = bool_field(&v, "tie_encoder_decoder").unwrap_or(false);
        if tie_encoder_decoder
            && (encoder.family != decoder.family || encoder.hidden_size != decoder.hidden_size)
        {
            bail!("tie_encoder_decoder needs encoder and decoder of the same family and size");
        }
        Ok(Self {
            encoder,
            decoder,
            tie_encoder_decoder,
            top_level: v,
            decoder_raw,
        })
    }
}

pub(crate) fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key)?.as_str()
}

pub(crate) fn usize_field(v: &Value, key: &str) -> Option<usize> {
    v.get(key)?.as_u64().map(|x| x as usize)
}

pub(crate) fn f64_field(v: &Value, key: &str) -> Option<f64> {
    v.get(key)?.as_f64()
}

pub(crate) fn bool_field(v: &Value, key: &str) -> Option<bool> {
    v.get(key)?.as_bool()
}

pub(crate) fn token_field(v: &Value, key: &str) -> Option<u32> {
    v.get(key)?.as_u64().map(|x| x as u32)
}

/// `eos_token_id` may be a number or a list of numbers.
pub(crate) fn token_list_field(v: &Value, key: &str) -> Option<Vec<u32>> {
    match v.get(key)? {
        Value::Number(n) => n.as_u64().map(|x| vec![x as u32]),
        Value::Array(items) => items
            .iter()
            .map(|x| x.as_u64().map(|x| x as u32))
            .collect::<Option<Vec<_>>>(),
        _ => None,
    }
}
