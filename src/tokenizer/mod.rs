//! Tokenizers of a checkpoint: `tokenizer.json` when present, else built from the
//! legacy files (`vocab.txt`, `vocab.json` + `merges.txt`, `spiece.model`).
//! BERT2GPT2-style models decode with a second tokenizer.

pub mod legacy;
mod serialized;
pub mod settings;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

pub use settings::TokenizerSettings;

/// Loads the tokenizer of `dir`, with any truncation/padding it carries removed:
/// transformers' generate pipeline ignores them, and so do we.
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    load_tokenizer_with(dir, &TokenizerSettings::default())
}

/// [`load_tokenizer`] with `settings` applied as transformers applies the same
/// `from_pretrained` keyword arguments.
pub fn load_tokenizer_with(dir: &Path, settings: &TokenizerSettings) -> Result<Tokenizer> {
    let json = dir.join("tokenizer.json");
    let mut tok = if json.is_file() {
        let tok = Tokenizer::from_file(&json)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("loading {}", json.display()))?;
        serialized::apply_settings(tok, settings)
            .with_context(|| format!("applying the tokenizer settings to {}", json.display()))?
    } else {
        legacy::from_legacy_files_with(dir, settings)
            .with_context(|| format!("building the tokenizer of {}", dir.display()))?
            .with_context(|| {
                format!(
                    "no tokenizer in {} (looked for tokenizer.json, vocab.txt, vocab.json + merges.txt, spiece.model)",
                    dir.display()
                )
            })?
    };
    tok.with_padding(None);
    tok.with_truncation(None).map_err(anyhow::Error::msg)?;
    Ok(tok)
}

/// The encoder's and the decoder's tokenizer.
pub struct Tokenizers {
    /// Truncates (special tokens kept) to the encoder's positions, like transformers'
    /// `truncation=True`.
    encoder: Tokenizer,
    /// The same without truncation, to count tokens.
    encoder_untruncated: Tokenizer,
    /// `None`: the decoder shares the encoder's vocabulary.
    decoder: Option<Tokenizer>,
    /// Ids transformers' `skip_special_tokens` drops when decoding (`all_special_ids`):
    /// the named special tokens of the tokenizer config, which `tokenizer.json` does not
    /// always flag as special (e.g. sentencepiece `<unk>`).
    decoder_special_ids: HashSet<u32>,
    /// `tokenizer(text, add_special_tokens=...)`.
    add_special_tokens: bool,
    max_input_tokens: usize,
}

/// Why one input can't be encoded.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum InputError {
    #[error("input encodes to no tokens (empty or whitespace-only text)")]
    Empty,
    #[error("tokenizer failed: {0}")]
    Tokenizer(String),
}

impl Tokenizers {
    /// `decoder_dir`: an explicit decoder tokenizer; otherwise `dir/decoder_tokenizer`
    /// when it exists; otherwise the encoder's tokenizer decodes too. `settings` apply to
    /// the encoder's tokenizer (and so to decoding when the decoder shares it).
    pub fn load(
        dir: &Path,
        decoder_dir: Option<&Path>,
        max_input_tokens: usize,
        settings: &TokenizerSettings,
    ) -> Result<Self> {
        let encoder_untruncated = load_tokenizer_with(dir, settings)?;
        let mut encoder = encoder_untruncated.clone();
        encoder
            .with_truncation(Some(truncation(max_input_tokens)))
            .map_err(anyhow::Error::msg)?;
        let default_decoder: PathBuf = dir.join("decoder_tokenizer");
        let decoder_dir = match decoder_dir {
            Some(d) => Some(d.to_path_buf()),
            None if default_decoder.is_dir() => Some(default_decoder),
            None => None,
        };
        let decoder = decoder_dir.as_deref().map(load_tokenizer).transpose()?;
        let mut decoder_special_ids = special_ids(
            decoder_dir.as_deref().unwrap_or(dir),
            decoder.as_ref().unwrap_or(&encoder),
        )?;
        match (&decoder, decoder_dir.as_deref()) {
            (None, _) => {
                // Tokens named special by the settings are skipped too (transformers'
                // `all_special_ids` holds the `from_pretrained` overrides), and so are the
                // class defaults of a tokenizer built from legacy files.
                let mut named: Vec<String> = settings
                    .special_tokens()
                    .into_iter()
                    .map(|(_, t)| t.to_string())
                    .collect();
                if !dir.join("tokenizer.json").is_file() {
                    named.extend(legacy::named_special_tokens(dir, settings)?);
                }
                decoder_special_ids.extend(named.iter().filter_map(|t| encoder.token_to_id(t)));
            }
            (Some(dec), Some(d)) if !d.join("tokenizer.json").is_file() => {
                let named = legacy::named_special_tokens(d, &TokenizerSettings::default())?;
                decoder_special_ids.extend(named.iter().filter_map(|t| dec.token_to_id(t)));
            }
            _ => {}
        }
        Ok(Self {
            encoder,
            encoder_untruncated,
            decoder,
            decoder_special_ids,
            add_special_tokens: settings.adds_special_tokens(),
            max_input_tokens,
        })
    }

    pub fn max_input_tokens(&self) -> usize {
        self.max_input_tokens
    }

    /// Token ids of `text` (with the tokenizer's special tokens unless the settings say
    /// `add_special_tokens = false`), truncated (special tokens
    /// included) to `max_tokens` or the encoder's positions, whichever is smaller.
    pub fn encode(&self, text: &str, max_tokens: Option<usize>) -> Result<Vec<u32>, InputError> {
        let tokenizer_error = |e: tokenizers::Error| InputError::Tokenizer(e.to_string());
        let special = self.add_special_tokens;
        let mut enc = self
            .encoder
            .encode(text, special)
            .map_err(tokenizer_error)?;
        if let Some(limit) = max_tokens.filter(|&m| m < enc.len()) {
            // A tighter limit than the model's: re-encode so special tokens survive.
            let mut tok = self.encoder.clone();
            tok.with_truncation(Some(truncation(limit)))
                .map_err(tokenizer_error)?;
            enc = tok.encode(text, special).map_err(tokenizer_error)?;
        }
        let ids = enc.get_ids().to_vec();
        if ids.is_empty() {
            return Err(InputError::Empty);
        }
        Ok(ids)
    }

    /// Text of decoder ids, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let kept: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|id| !self.decoder_special_ids.contains(id))
            .collect();
        self.decoder
            .as_ref()
            .unwrap_or(&self.encoder)
            .decode(&kept, true)
            .map_err(anyhow::Error::msg)
    }

    /// The encoder tokenizer's token of `id` (vocabulary or added).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.encoder.id_to_token(id)
    }

    /// Number of tokens `text` encodes to without truncation (for limits and metrics).
    pub fn count_tokens(&self, text: &str) -> Result<usize, InputError> {
        let tokenizer_error = |e: tokenizers::Error| InputError::Tokenizer(e.to_string());
        let enc = self
            .encoder_untruncated
            .encode(text, self.add_special_tokens)
            .map_err(tokenizer_error)?;
        Ok(enc.len())
    }
}

/// Which side of the model a text is tokenized for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Model inputs: the encoder's tokenizer with the settings' special tokens.
    Input,
    /// Training targets: the decoder's tokenizer (its own special tokens) when it has
    /// one, else the encoder's.
    Target,
}

/// A tokenizer that truncates to a fixed length, built once for many texts
/// (`tokenizer(texts, truncation=True, max_length=N)`).
pub struct TruncatingEncoder {
    tokenizer: Tokenizer,
    add_special_tokens: bool,
}

impl TruncatingEncoder {
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, InputError> {
        let enc = self
            .tokenizer
            .encode(text, self.add_special_tokens)
            .map_err(|e| InputError::Tokenizer(e.to_string()))?;
        let ids = enc.get_ids().to_vec();
        if ids.is_empty() {
            return Err(InputError::Empty);
        }
        Ok(ids)
    }
}

impl Tokenizers {
    /// An encoder for `side` truncating to `max_tokens` (special tokens included).
    pub fn truncating(&self, side: Side, max_tokens: usize) -> Result<TruncatingEncoder> {
        let (base, add_special_tokens) = match (side, &self.decoder) {
            (Side::Target, Some(dec)) => (dec, true),
            _ => (&self.encoder_untruncated, self.add_special_tokens),
        };
        let mut tokenizer = base.clone();
        tokenizer
            .with_truncation(Some(truncation(max_tokens)))
            .map_err(anyhow::Error::msg)?;
        Ok(TruncatingEncoder {
            tokenizer,
            add_special_tokens,
        })
    }
}

/// `tokenizer_config.json`, then `special_tokens_map.json` (those present in `dir`): the
/// files transformers reads special tokens from, later ones overriding earlier ones.
pub fn special_token_configs(dir: &Path) -> Result<Vec<serde_json::Value>> {
    let files = crate::checkpoint::special_tokens::read_files(dir)?;
    Ok(files.into_iter().map(serde_json::Value::Object).collect())
}

fn truncation(max_length: usize) -> TruncationParams {
    TruncationParams {
        max_length,
        strategy: TruncationStrategy::LongestFirst,
        direction: TruncationDirection::Right,
        stride: 0,
    }
}

/// `all_special_ids` as transformers derives it from `tokenizer_config.json` and
/// `special_tokens_map.json`: the named special tokens, `additional_special_tokens`,
/// and `added_tokens_decoder` entries flagged special.
fn special_ids(dir: &Path, tok: &Tokenizer) -> Result<HashSet<u32>> {
    const NAMED: [&str; 7] = [
        "bos_token",
        "eos_token",
        "unk_token",
        "sep_token",
        "pad_token",
        "cls_token",
        "mask_token",
    ];
    let content = crate::checkpoint::special_tokens::token_content;
    let mut ids = HashSet::new();
    for v in special_token_configs(dir)? {
        let mut tokens: Vec<String> = NAMED
            .iter()
            .filter_map(|k| v.get(*k).and_then(content))
            .collect();
        if let Some(extra) = v
            .get("additional_special_tokens")
            .and_then(|a| a.as_array())
        {
            tokens.extend(extra.iter().filter_map(content));
        }
        ids.extend(tokens.iter().filter_map(|t| tok.token_to_id(t)));
        if let Some(added) = v.get("added_tokens_decoder").and_then(|a| a.as_object()) {
            for (id, entry) in added {
                if entry.get("special").and_then(|s| s.as_bool()) == Some(true) {
                    if let Ok(id) = id.parse() {
                        ids.insert(id);
                    }
                }
            }
        }
    }
    Ok(ids)
}
