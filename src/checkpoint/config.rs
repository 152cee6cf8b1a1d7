//! `config.json` of an `EncoderDecoderModel`: the two sub-configs, normalised into one
//! shape ([`StackConfig`]) whatever family wrote them.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

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

    fn from_raw(v: RawStack, which: &str) -> Result<Self> {
        let model_type = v
            .model_type
            .as_deref()
            .with_context(|| format!("`{which}.model_type` is missing"))?;
        let family =
            Family::from_model_type(model_type).with_context(|| format!("in `{which}`"))?;
        let req = |key: &str, value: Option<usize>| -> Result<usize> {
            value.with_context(|| format!("`{which}.{key}` is missing or not a number"))
        };
        let cfg = if family == Family::Gpt2 {
            let hidden_size = req("n_embd", v.n_embd)?;
            StackConfig {
                family,
                vocab_size: req("vocab_size", v.vocab_size)?,
                hidden_size,
                num_layers: req("n_layer", v.n_layer)?,
                num_heads: req("n_head", v.n_head)?,
                intermediate_size: v.n_inner.unwrap_or(4 * hidden_size),
                max_positions: req("n_positions", v.n_positions)?,
                type_vocab_size: 0,
                layer_norm_eps: v.layer_norm_epsilon.unwrap_or(1e-5),
                activation: Activation::parse(
                    v.activation_function.as_deref().unwrap_or("gelu_new"),
                )?,
                pad_token_id: v.special.pad_token_id,
                bos_token_id: v.special.bos_token_id,
                eos_token_id: v.special.eos_token_id.map(TokenIds::into_vec),
                scale_attn_weights: v.scale_attn_weights.unwrap_or(true),
                scale_attn_by_inverse_layer_idx: v.scale_attn_by_inverse_layer_idx.unwrap_or(false),
            }
        } else {
            StackConfig {
                family,
                vocab_size: req("vocab_size", v.vocab_size)?,
                hidden_size: req("hidden_size", v.hidden_size)?,
                num_layers: req("num_hidden_layers", v.num_hidden_layers)?,
                num_heads: req("num_attention_heads", v.num_attention_heads)?,
                intermediate_size: req("intermediate_size", v.intermediate_size)?,
                max_positions: req("max_position_embeddings", v.max_position_embeddings)?,
                type_vocab_size: match family {
                    Family::BertGeneration => 0,
                    _ => v.type_vocab_size.unwrap_or(2),
                },
                layer_norm_eps: v.layer_norm_eps.unwrap_or(1e-12),
                activation: Activation::parse(v.hidden_act.as_deref().unwrap_or("gelu"))?,
                pad_token_id: v.special.pad_token_id,
                bos_token_id: v.special.bos_token_id,
                eos_token_id: v.special.eos_token_id.map(TokenIds::into_vec),
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

/// `eos_token_id` may be one id or a list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn into_vec(self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![id],
            TokenIds::Many(ids) => ids,
        }
    }
}

/// The special ids a (sub-)config or `generation_config.json` may set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SpecialIds {
    #[serde(default, deserialize_with = "optional_id")]
    pub decoder_start_token_id: Option<u32>,
    #[serde(default, deserialize_with = "optional_id")]
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<TokenIds>,
    #[serde(default, deserialize_with = "optional_id")]
    pub pad_token_id: Option<u32>,
}

/// An id, unset when `null` or negative (some configs write `-1` for "none").
fn optional_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let id: Option<i64> = Option::deserialize(d)?;
    id.filter(|&id| id >= 0)
        .map(|id| u32::try_from(id).map_err(serde::de::Error::custom))
        .transpose()
}

impl SpecialIds {
    /// `self`'s ids where set, else `other`'s.
    pub fn or(self, other: SpecialIds) -> SpecialIds {
        SpecialIds {
            decoder_start_token_id: self.decoder_start_token_id.or(other.decoder_start_token_id),
            bos_token_id: self.bos_token_id.or(other.bos_token_id),
            eos_token_id: self.eos_token_id.or(other.eos_token_id),
            pad_token_id: self.pad_token_id.or(other.pad_token_id),
        }
    }
}

/// `early_stopping` as stored: `true`, `false` or `"never"` (checked by the generation
/// config).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum EarlyStoppingField {
    Bool(bool),
    Name(String),
}

/// Generation settings as `generation_config.json` (and, legacy, `config.json`'s top
/// level) store them; unknown keys are ignored, `null` is unset.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct GenerationFields {
    #[serde(flatten)]
    pub special: SpecialIds,
    pub max_length: Option<usize>,
    pub max_new_tokens: Option<usize>,
    pub min_length: Option<usize>,
    pub num_beams: Option<usize>,
    pub length_penalty: Option<f64>,
    pub early_stopping: Option<EarlyStoppingField>,
    pub no_repeat_ngram_size: Option<usize>,
    pub repetition_penalty: Option<f64>,
    pub num_return_sequences: Option<usize>,
}

impl GenerationFields {
    /// `self`'s settings where set, else `other`'s.
    pub fn or(self, other: GenerationFields) -> GenerationFields {
        GenerationFields {
            special: self.special.or(other.special),
            max_length: self.max_length.or(other.max_length),
            max_new_tokens: self.max_new_tokens.or(other.max_new_tokens),
            min_length: self.min_length.or(other.min_length),
            num_beams: self.num_beams.or(other.num_beams),
            length_penalty: self.length_penalty.or(other.length_penalty),
            early_stopping: self.early_stopping.or(other.early_stopping),
            no_repeat_ngram_size: self.no_repeat_ngram_size.or(other.no_repeat_ngram_size),
            repetition_penalty: self.repetition_penalty.or(other.repetition_penalty),
            num_return_sequences: self.num_return_sequences.or(other.num_return_sequences),
        }
    }

    /// `generation_config.json` of `dir`; all unset when the file is absent.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        if !path.is_file() {
            return Ok(Self::default());
        }
        read_json(&path)
    }

    /// The checkpoint's generation defaults as transformers 5 resolves them:
    /// `generation_config.json` wins over `config.json`'s (legacy) top-level fields, and
    /// special ids unset in both come from the decoder sub-config.
    pub fn of_checkpoint(dir: &Path, config: &EncoderDecoderConfig) -> Result<Self> {
        let mut fields = Self::from_dir(dir)?.or(config.generation.clone());
        fields.special = fields.special.or(config.decoder_special.clone());
        Ok(fields)
    }
}

/// `path` parsed as `T`, errors naming the file and the offending key.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).with_context(|| format!("parsing {}", path.display()))
}

/// One sub-config as transformers writes it: the BERT-family names and GPT-2's.
#[derive(Debug, Clone, Default, Deserialize)]
struct RawStack {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    // BERT, RoBERTa, BertGeneration.
    hidden_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    intermediate_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    type_vocab_size: Option<usize>,
    layer_norm_eps: Option<f64>,
    hidden_act: Option<String>,
    // GPT-2.
    n_embd: Option<usize>,
    n_layer: Option<usize>,
    n_head: Option<usize>,
    n_inner: Option<usize>,
    n_positions: Option<usize>,
    layer_norm_epsilon: Option<f64>,
    activation_function: Option<String>,
    scale_attn_weights: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
    #[serde(flatten)]
    special: SpecialIds,
}

/// `config.json` of an `EncoderDecoderModel`.
#[derive(Debug, Clone, Deserialize)]
struct RawEncoderDecoder {
    encoder: Option<RawStack>,
    decoder: Option<RawStack>,
    tie_encoder_decoder: Option<bool>,
    #[serde(flatten)]
    generation: GenerationFields,
}

/// The whole `config.json`.
#[derive(Debug, Clone)]
pub struct EncoderDecoderConfig {
    pub encoder: StackConfig,
    pub decoder: StackConfig,
    /// transformers 4.x "BERTShare": decoder blocks reuse encoder blocks.
    pub tie_encoder_decoder: bool,
    /// Legacy generation fields of the top level (num_beams, ...).
    pub generation: GenerationFields,
    /// The decoder sub-config's special ids: transformers 5 fills unset ones from them.
    pub decoder_special: SpecialIds,
}

impl EncoderDecoderConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw: RawEncoderDecoder = read_json(path)?;
        Self::from_raw(raw).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_json(v: serde_json::Value) -> Result<Self> {
        let raw: RawEncoderDecoder = serde_path_to_error::deserialize(v)?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawEncoderDecoder) -> Result<Self> {
        let encoder_raw = raw.encoder.context(
            "not an EncoderDecoderModel config: no `encoder` sub-config (is this a standalone checkpoint?)",
        )?;
        let decoder_raw = raw
            .decoder
            .context("not an EncoderDecoderModel config: no `decoder` sub-config")?;
        let decoder_special = decoder_raw.special.clone();
        let encoder = StackConfig::from_raw(encoder_raw, "encoder")?;
        let decoder = StackConfig::from_raw(decoder_raw, "decoder")?;
        if encoder.family == Family::Gpt2 {
            bail!("a GPT-2 encoder is not supported (GPT-2 is decoder-only)");
        }
        let tie_encoder_decoder = raw.tie_encoder_decoder.unwrap_or(false);
        if tie_encoder_decoder
            && (encoder.family != decoder.family || encoder.hidden_size != decoder.hidden_size)
        {
            bail!("tie_encoder_decoder needs encoder and decoder of the same family and size");
        }
        Ok(Self {
            encoder,
            decoder,
            tie_encoder_decoder,
            generation: raw.generation,
            decoder_special,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bert(extra: serde_json::Value) -> serde_json::Value {
        let mut v = json!({
            "model_type": "bert", "vocab_size": 10, "hidden_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
            "max_position_embeddings": 32,
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    }

    #[test]
    fn typed_config_keeps_defaults_ids_and_generation_fields() {
        let cfg = EncoderDecoderConfig::from_json(json!({
            "encoder": bert(json!({})),
            "decoder": bert(json!({"eos_token_id": [3, 4], "pad_token_id": -1})),
            "num_beams": 4, "max_length": null, "early_stopping": "never",
        }))
        .unwrap();
        assert_eq!(cfg.encoder.type_vocab_size, 2);
        assert_eq!(cfg.encoder.layer_norm_eps, 1e-12);
        assert_eq!(cfg.decoder.eos_token_id, Some(vec![3, 4]));
        // -1 means "no id" in some configs.
        assert_eq!(cfg.decoder.pad_token_id, None);
        assert_eq!(cfg.generation.num_beams, Some(4));
        assert_eq!(cfg.generation.max_length, None);
        assert_eq!(
            cfg.generation.early_stopping,
            Some(EarlyStoppingField::Name("never".into()))
        );
        assert_eq!(
            cfg.decoder_special.eos_token_id,
            Some(TokenIds::Many(vec![3, 4]))
        );
    }

    #[test]
    fn missing_or_mistyped_fields_are_named() {
        let err = EncoderDecoderConfig::from_json(json!({
            "encoder": bert(json!({"hidden_size": null})), "decoder": bert(json!({})),
        }))
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("encoder.hidden_size"),
            "{err:#}"
        );
        let err = EncoderDecoderConfig::from_json(json!({
            "encoder": bert(json!({})), "decoder": bert(json!({"num_hidden_layers": "two"})),
        }))
        .unwrap_err();
        assert!(format!("{err:#}").contains("decoder"), "{err:#}");
        let err = EncoderDecoderConfig::from_json(json!({"encoder": bert(json!({}))})).unwrap_err();
        assert!(err.to_string().contains("no `decoder`"), "{err:#}");
    }

    #[test]
    fn families_round_trip_through_model_type() {
        for f in Family::ALL {
            assert_eq!(Family::from_model_type(f.model_type()).unwrap(), f);
            assert_eq!(f.to_string().parse::<Family>().unwrap(), f);
        }
        assert_eq!(
            "BERT_generation".parse::<Family>().unwrap(),
            Family::BertGeneration
        );
        assert_eq!("gpt-2".parse::<Family>().unwrap(), Family::Gpt2);
        assert!(Family::from_model_type("t5").is_err());
    }
}
