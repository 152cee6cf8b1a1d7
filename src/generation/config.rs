//! Generation parameters: the checkpoint's defaults resolved as transformers 5 resolves
//! them, and per-call overrides validated against them.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checkpoint::config::{
    bool_field, f64_field, token_field, token_list_field, usize_field, EncoderDecoderConfig,
};

/// `early_stopping`: `true`, `false` or `"never"`, as in transformers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EarlyStopping {
    Bool(bool),
    Never(NeverTag),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NeverTag {
    Never,
}

impl EarlyStopping {
    pub const NEVER: EarlyStopping = EarlyStopping::Never(NeverTag::Never);

    pub fn is_true(self) -> bool {
        self == EarlyStopping::Bool(true)
    }

    pub fn is_never(self) -> bool {
        self == Self::NEVER
    }
}

impl std::str::FromStr for EarlyStopping {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "true" => Ok(EarlyStopping::Bool(true)),
            "false" => Ok(EarlyStopping::Bool(false)),
            "never" => Ok(Self::NEVER),
            other => Err(format!(
                "early_stopping must be true, false or never, not `{other}`"
            )),
        }
    }
}

/// Fully resolved parameters of one `generate` call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationConfig {
    pub decoder_start_token_id: u32,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// Counts the decoder start token.
    pub max_length: usize,
    /// Counts the decoder start token; EOS is banned below it.
    pub min_length: usize,
    pub num_beams: usize,
    pub length_penalty: f32,
    pub early_stopping: EarlyStopping,
    pub no_repeat_ngram_size: usize,
    pub repetition_penalty: f32,
    pub num_return_sequences: usize,
}

/// Generation parameters, each overriding the model's default (per request, per model
/// config, or per command); every field optional, unknown fields rejected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerationOverrides {
    /// Longest output, counting the decoder start token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// Most generated tokens (wins over `max_length`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<usize>,
    /// EOS is banned below this length (counting the start token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_length: Option<usize>,
    /// 1: greedy search.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_beams: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length_penalty: Option<f32>,
    /// `true`, `false` or `"never"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub early_stopping: Option<EarlyStopping>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_repeat_ngram_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    /// Hypotheses returned per input (at most `num_beams`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_return_sequences: Option<usize>,
}

impl GenerationOverrides {
    /// `other`'s fields win where set (e.g. request over server defaults).
    pub fn merged_with(&self, other: &GenerationOverrides) -> GenerationOverrides {
        GenerationOverrides {
            max_length: other.max_length.or(self.max_length),
            max_new_tokens: other.max_new_tokens.or(self.max_new_tokens),
            min_length: other.min_length.or(self.min_length),
            num_beams: other.num_beams.or(self.num_beams),
            length_penalty: other.length_penalty.or(self.length_penalty),
            early_stopping: other.early_stopping.or(self.early_stopping),
            no_repeat_ngram_size: other.no_repeat_ngram_size.or(self.no_repeat_ngram_size),
            repetition_penalty: other.repetition_penalty.or(self.repetition_penalty),
            num_return_sequences: other.num_return_sequences.or(self.num_return_sequences),
        }
    }
}

/// A parameter combination generation can't run with.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct InvalidParameters(pub String);

/// The decoder's prompt is the start token alone.
const DECODER_PROMPT_LEN: usize = 1;

impl GenerationConfig {
    /// Defaults of a checkpoint: `generation_config.json` wins over `config.json`'s
    /// (legacy) top-level fields; special ids unset in both come from the decoder
    /// sub-config (transformers 5); anything else unset takes transformers' default.
    pub fn from_checkpoint(dir: &Path, config: &EncoderDecoderConfig) -> Result<Self> {
        let path = dir.join("generation_config.json");
        let gen: Value = if path.is_file() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        } else {
            Value::Null
        };
        Self::resolve(&gen, &config.top_level, &config.decoder_raw)
            .with_context(|| format!("resolving generation defaults of {}", dir.display()))
    }

    fn resolve(gen: &Value, top: &Value, decoder: &Value) -> Result<Self> {
        let set = |key: &str| -> Option<&Value> {
            [gen, top]
                .into_iter()
                .filter_map(|v| v.get(key))
                .find(|v| !v.is_null())
        };
        let special = |key: &str| -> Option<&Value> {
            set(key).or_else(|| decoder.get(key).filter(|v| !v.is_null()))
        };
        let wrap = |key: &str, v: Option<&Value>| v.map(|v| serde_json::json!({ key: v }));
        let tok = |key: &str| wrap(key, special(key)).and_then(|o| token_field(&o, key));
        let num = |key: &str| wrap(key, set(key)).and_then(|o| usize_field(&o, key));
        let float = |key: &str| wrap(key, set(key)).and_then(|o| f64_field(&o, key));

        let eos_token_ids = wrap("eos_token_id", special("eos_token_id"))
            .and_then(|o| token_list_field(&o, "eos_token_id"))
            .unwrap_or_default();
        let bos = tok("bos_token_id");
        let decoder_start_token_id = tok("decoder_start_token_id").or(bos).context(
            "neither decoder_start_token_id nor bos_token_id is set; generation can't start",
        )?;
        // transformers: an unset pad falls back to the first EOS id.
        let pad_token_id = tok("pad_token_id").or(eos_token_ids.first().copied());
        let early_stopping = match set("early_stopping") {
            None => EarlyStopping::Bool(false),
            Some(Value::String(s)) => s.parse().map_err(anyhow::Error::msg)?,
            Some(v) => EarlyStopping::Bool(
                bool_field(&serde_json::json!({ "e": v }), "e").context("bad early_stopping")?,
            ),
        };
        let max_length = match num("max_new_tokens") {
            Some(n) => n.saturating_add(DECODER_PROMPT_LEN),
            // transformers 5 treats its default max_length (20, set or not) as 20 new
            // tokens after the prompt (`_prepare_generated_length`).
            None => match num("max_length") {
                None | Some(20) => 20 + DECODER_PROMPT_LEN,
                Some(n) => n,
            },
        };
        Ok(Self {
            decoder_start_token_id,
            eos_token_ids,
            pad_token_id,
            max_length,
            min_length: num("min_length").unwrap_or(0),
            num_beams: num("num_beams").unwrap_or(1),
            length_penalty: float("length_penalty").unwrap_or(1.0) as f32,
            early_stopping,
            no_repeat_ngram_size: num("no_repeat_ngram_size").unwrap_or(0),
            repetition_penalty: float("repetition_penalty").unwrap_or(1.0) as f32,
            num_return_sequences: num("num_return_sequences").unwrap_or(1),
        })
    }

    /// These defaults with `o` applied, validated.
    pub fn with_overrides(&self, o: &GenerationOverrides) -> Result<Self, InvalidParameters> {
        let mut c = self.clone();
        if let Some(v) = o.max_length {
            c.max_length = v;
        }
        // Like transformers, max_new_tokens wins over max_length when both are given.
        if let Some(v) = o.max_new_tokens {
            // A client number: checked, so a huge one is refused instead of wrapping.
            c.max_length = v
                .checked_add(DECODER_PROMPT_LEN)
                .ok_or_else(|| InvalidParameters(format!("max_new_tokens {v} is too large")))?;
        }
        if let Some(v) = o.min_length {
            c.min_length = v;
        }
        if let Some(v) = o.num_beams {
            c.num_beams = v;
        }
        if let Some(v) = o.length_penalty {
            c.length_penalty = v;
        }
        if let Some(v) = o.early_stopping {
            c.early_stopping = v;
        }
        if let Some(v) = o.no_repeat_ngram_size {
            c.no_repeat_ngram_size = v;
        }
        if let Some(v) = o.repetition_penalty {
            c.repetition_penalty = v;
        }
        if let Some(v) = o.num_return_sequences {
            c.num_return_sequences = v;
        }
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), InvalidParameters> {
        let bad = |m: String| Err(InvalidParameters(m));
        if self.max_length <= DECODER_PROMPT_LEN {
            return bad(format!(
                "max_length must be at least 2 (it counts the start token), got {}",
                self.max_length
            ));
        }
        if self.num_beams == 0 {
            return bad("num_beams must be at least 1".into());
        }
        if self.num_return_sequences == 0 {
            return bad("num_return_sequences must be at least 1".into());
        }
        if self.num_return_sequences > self.num_beams {
            return bad(format!(
                "num_return_sequences ({}) must not exceed num_beams ({}) without sampling",
                self.num_return_sequences, self.num_beams
            ));
        }
        if !self.length_penalty.is_finite() {
            return bad("length_penalty must be a finite number".into());
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad("repetition_penalty must be a positive number".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn generation_config_wins_and_decoder_fills_special_ids() {
        let gen = json!({"max_length": 32, "decoder_start_token_id": 7});
        let top = json!({"max_length": 99, "num_beams": 4, "eos_token_id": null});
        let dec = json!({"eos_token_id": 50256, "bos_token_id": 50256});
        let c = GenerationConfig::resolve(&gen, &top, &dec).unwrap();
        assert_eq!(c.max_length, 32);
        assert_eq!(c.num_beams, 4);
        assert_eq!(c.decoder_start_token_id, 7);
        assert_eq!(c.eos_token_ids, vec![50256]);
        assert_eq!(c.pad_token_id, Some(50256));
    }

    #[test]
    fn start_falls_back_to_bos_and_missing_both_is_an_error() {
        let c =
            GenerationConfig::resolve(&json!({"bos_token_id": 3}), &json!({}), &json!({})).unwrap();
        assert_eq!(c.decoder_start_token_id, 3);
        assert!(GenerationConfig::resolve(&json!({}), &json!({}), &json!({})).is_err());
    }

    #[test]
    fn overrides_validate() {
        let base =
            GenerationConfig::resolve(&json!({"bos_token_id": 3}), &json!({}), &json!({})).unwrap();
        let o = GenerationOverrides {
            max_new_tokens: Some(5),
            max_length: Some(100),
            ..Default::default()
        };
        assert_eq!(base.with_overrides(&o).unwrap().max_length, 6);
        // The largest number JSON can carry for a usize must not wrap to max_length 0.
        let o = GenerationOverrides {
            max_new_tokens: Some(usize::MAX),
            ..Default::default()
        };
        let err = base.with_overrides(&o).unwrap_err();
        assert!(err.0.contains("max_new_tokens"), "{err}");
        let o = GenerationOverrides {
            num_return_sequences: Some(3),
            ..Default::default()
        };
        assert!(base.with_overrides(&o).is_err());
        let early: GenerationOverrides =
            serde_json::from_value(json!({"early_stopping": "never"})).unwrap();
        assert_eq!(early.early_stopping, Some(EarlyStopping::NEVER));
        assert!(serde_json::from_value::<GenerationOverrides>(json!({"num_beam": 2})).is_err());
    }
}
