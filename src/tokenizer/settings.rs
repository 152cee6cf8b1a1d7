//! Per-model tokenizer settings with the meaning of transformers' tokenizer kwargs, so a
//! model card's `AutoTokenizer.from_pretrained(id, pad_token="<pad>", ...)` and
//! `tokenizer(text, add_special_tokens=False)` can be written down in the server config
//! (`[models.tokenizer]`) or on the command line (`--tokenizer-option KEY=VALUE`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Unset fields keep what the checkpoint's tokenizer files (and transformers' defaults
/// for their tokenizer class) say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizerSettings {
    /// `tokenizer(text, add_special_tokens=...)`: whether the tokenizer's template
    /// (`[CLS] … [SEP]`, `<s> … </s>`) wraps each input; default true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub add_special_tokens: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bos_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eos_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pad_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unk_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sep_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cls_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_token: Option<String>,
    /// WordPiece (`vocab.txt`) lower-casing; default as transformers decides for the
    /// tokenizer class (BertTokenizer: true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_lower_case: Option<bool>,
}

/// The keys `--tokenizer-option` accepts.
pub const KEYS: [&str; 9] = [
    "add_special_tokens",
    "bos_token",
    "eos_token",
    "pad_token",
    "unk_token",
    "sep_token",
    "cls_token",
    "mask_token",
    "do_lower_case",
];

impl TokenizerSettings {
    /// Nothing set (the checkpoint's own tokenizer, as `from_pretrained(id)` gives it).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The named special tokens that are set, as `(key, content)`.
    pub fn special_tokens(&self) -> Vec<(&'static str, &str)> {
        [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
            ("unk_token", &self.unk_token),
            ("sep_token", &self.sep_token),
            ("pad_token", &self.pad_token),
            ("cls_token", &self.cls_token),
            ("mask_token", &self.mask_token),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }

    /// Whether inputs get the tokenizer's special tokens (transformers' default: yes).
    pub fn adds_special_tokens(&self) -> bool {
        self.add_special_tokens.unwrap_or(true)
    }

    /// Applies one `KEY=VALUE` (`--tokenizer-option`); booleans are `true` / `false`.
    pub fn set(&mut self, option: &str) -> Result<()> {
        let (key, value) = option
            .split_once('=')
            .with_context(|| format!("tokenizer option `{option}`: expected KEY=VALUE"))?;
        let key = key.trim();
        let boolean = |v: &str| -> Result<bool> {
            match v.trim() {
                "true" | "True" => Ok(true),
                "false" | "False" => Ok(false),
                other => bail!("tokenizer option {key}: expected true or false, got `{other}`"),
            }
        };
        let token = |v: &str| -> Result<Option<String>> {
            if v.is_empty() {
                bail!("tokenizer option {key}: the token must not be empty");
            }
            Ok(Some(v.to_string()))
        };
        match key {
            "add_special_tokens" => self.add_special_tokens = Some(boolean(value)?),
            "do_lower_case" => self.do_lower_case = Some(boolean(value)?),
            "bos_token" => self.bos_token = token(value)?,
            "eos_token" => self.eos_token = token(value)?,
            "pad_token" => self.pad_token = token(value)?,
            "unk_token" => self.unk_token = token(value)?,
            "sep_token" => self.sep_token = token(value)?,
            "cls_token" => self.cls_token = token(value)?,
            "mask_token" => self.mask_token = token(value)?,
            other => bail!(
                "unknown tokenizer option `{other}` (known: {})",
                KEYS.join(", ")
            ),
        }
        Ok(())
    }

    /// Checks what can be checked without the checkpoint.
    pub fn validate(&self) -> Result<(), String> {
        match self
            .special_tokens()
            .into_iter()
            .find(|(_, v)| v.is_empty())
        {
            Some((k, _)) => Err(format!("{k}: the token must not be empty")),
            None => Ok(()),
        }
    }
}

/// `tokenizer_class` of the checkpoint's `config.json`, which transformers' AutoTokenizer
/// falls back to when `tokenizer_config.json` names none (the google bert2bert WMT
/// checkpoints say `BertTokenizer` only there). Read here on its own so the tokenizer
/// doesn't depend on the model's typed config.
pub fn config_tokenizer_class(dir: &Path) -> Result<Option<String>> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(value
        .get("tokenizer_class")
        .and_then(|v| v.as_str())
        .map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse() {
        let mut s = TokenizerSettings::default();
        s.set("add_special_tokens=false").unwrap();
        s.set("pad_token=<pad>").unwrap();
        s.set("do_lower_case=True").unwrap();
        assert_eq!(s.add_special_tokens, Some(false));
        assert_eq!(s.pad_token.as_deref(), Some("<pad>"));
        assert_eq!(s.do_lower_case, Some(true));
        assert!(!s.adds_special_tokens());
        assert_eq!(s.special_tokens(), vec![("pad_token", "<pad>")]);
        assert!(s
            .set("padtoken=x")
            .unwrap_err()
            .to_string()
            .contains("unknown"));
        assert!(s.set("add_special_tokens=maybe").is_err());
        assert!(s.set("eos_token=").is_err());
        assert!(s.set("eos_token").is_err());
    }

    #[test]
    fn toml_table() {
        let s: TokenizerSettings =
            toml::from_str("add_special_tokens = false\neos_token = \"</s>\"\n").unwrap();
        assert_eq!(s.eos_token.as_deref(), Some("</s>"));
        assert!(toml::from_str::<TokenizerSettings>("eos = \"x\"").is_err());
    }
}
