//! The tokenizers of a warm start: which files each side uses, the special token ids
//! transformers users set on the composed model, and copying the files into the output.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::checkpoint::config::Family;
use crate::hub::TOKENIZER_FILES;

/// The `bert-base-uncased` WordPiece vocabulary (Apache-2.0, Google), so that a random
/// BERT with no tokenizer to borrow (`random:bert:base` on both sides, the Rnd2Rnd
/// baseline) still gets a working, realistic tokenizer.
pub const BERT_UNCASED_VOCAB: &str = include_str!("assets/bert-base-uncased-vocab.txt");

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokSource {
    Dir(PathBuf),
    BuiltinBertUncased,
}

impl std::fmt::Display for TokSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokSource::Dir(d) => write!(f, "{}", d.display()),
            TokSource::BuiltinBertUncased => write!(f, "built-in bert-base-uncased WordPiece"),
        }
    }
}

/// Whether `dir` holds a tokenizer encdec (and transformers) can load.
pub fn has_tokenizer_files(dir: &Path) -> bool {
    dir.join("tokenizer.json").is_file()
        || dir.join("vocab.txt").is_file()
        || (dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file())
        || dir.join("spiece.model").is_file()
}

/// A tokenizer's vocabulary and named special tokens.
#[derive(Clone)]
pub struct TokInfo {
    pub source: TokSource,
    vocab: HashMap<String, u32>,
    /// Ids run 0..vocab_size (added tokens included).
    pub vocab_size: usize,
    /// `cls_token` → `Some("[CLS]")`; `None` when the config sets it to null.
    named: BTreeMap<String, Option<String>>,
}

/// The token a named special-token entry holds: a string or `{"content": ...}`.
fn content(v: &Value) -> Option<Option<String>> {
    match v {
        Value::Null => Some(None),
        v => crate::checkpoint::special_tokens::token_content(v).map(Some),
    }
}

const NAMED: [&str; 5] = [
    "cls_token",
    "sep_token",
    "bos_token",
    "eos_token",
    "pad_token",
];

impl TokInfo {
    pub fn load(source: TokSource) -> Result<Self> {
        let mut named = BTreeMap::new();
        let vocab: HashMap<String, u32> = match &source {
            TokSource::Dir(dir) => {
                let tok = crate::tokenizer::load_tokenizer(dir)
                    .with_context(|| format!("loading the tokenizer of {}", dir.display()))?;
                // special_tokens_map.json overrides tokenizer_config.json.
                for v in crate::tokenizer::special_token_configs(dir)? {
                    for key in NAMED {
                        if let Some(c) = v.get(key).and_then(content) {
                            named.insert(key.to_string(), c);
                        }
                    }
                }
                tok.get_vocab(true)
            }
            TokSource::BuiltinBertUncased => {
                for (k, t) in [
                    ("cls_token", "[CLS]"),
                    ("sep_token", "[SEP]"),
                    ("pad_token", "[PAD]"),
                ] {
                    named.insert(k.to_string(), Some(t.to_string()));
                }
                BERT_UNCASED_VOCAB
                    .lines()
                    .enumerate()
                    .map(|(i, t)| (t.to_string(), i as u32))
                    .collect()
            }
        };
        let vocab_size = vocab.values().map(|&i| i as usize + 1).max().unwrap_or(0);
        Ok(Self {
            source,
            vocab,
            vocab_size,
            named,
        })
    }

    /// The id of a named special token (`cls_token`, ...). Unnamed in the config: the
    /// token conventional for that role, if the vocabulary has it.
    pub fn special(&self, key: &str) -> Option<u32> {
        match self.named.get(key) {
            Some(Some(t)) => self.vocab.get(t).copied(),
            Some(None) => None,
            None => {
                let conventional: &[&str] = match key {
                    "cls_token" => &["[CLS]"],
                    "sep_token" => &["[SEP]"],
                    "bos_token" => &["<s>", "<|endoftext|>"],
                    "eos_token" => &["</s>", "<|endoftext|>"],
                    "pad_token" => &["[PAD]", "<pad>"],
                    _ => &[],
                };
                conventional
                    .iter()
                    .find_map(|t| self.vocab.get(*t).copied())
            }
        }
    }

    /// The ids transformers users give the composed model when this tokenizer is the
    /// decoder's: start = `cls_token` (BERT `[CLS]`, RoBERTa `<s>`) or `bos_token`
    /// (GPT-2, BertGeneration); end = `sep_token` after a CLS, else `eos_token`;
    /// pad = `pad_token`, else the end token (GPT-2).
    pub fn decoder_specials(&self) -> (Option<u32>, Option<u32>, Option<u32>) {
        let cls = self.special("cls_token");
        let start = cls.or_else(|| self.special("bos_token"));
        let eos = if cls.is_some() {
            self.special("sep_token")
                .or_else(|| self.special("eos_token"))
        } else {
            self.special("eos_token")
                .or_else(|| self.special("sep_token"))
        };
        let pad = self.special("pad_token").or(eos);
        (start, eos, pad)
    }

    pub fn same_vocab(&self, other: &TokInfo) -> bool {
        self.source == other.source || self.vocab == other.vocab
    }

    /// Copies (or writes) the tokenizer files into `dir`; returns their names.
    pub fn write_to(&self, dir: &Path) -> Result<Vec<String>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut written = Vec::new();
        match &self.source {
            TokSource::Dir(src) => {
                for f in TOKENIZER_FILES {
                    let from = src.join(f);
                    if from.is_file() {
                        std::fs::copy(&from, dir.join(f)).with_context(|| {
                            format!("copying {} to {}", from.display(), dir.display())
                        })?;
                        written.push(f.to_string());
                    }
                }
            }
            TokSource::BuiltinBertUncased => {
                std::fs::write(dir.join("vocab.txt"), BERT_UNCASED_VOCAB)?;
                let cfg = json!({
                    "tokenizer_class": "BertTokenizer",
                    "do_lower_case": true,
                    "do_basic_tokenize": true,
                    "tokenize_chinese_chars": true,
                    "strip_accents": null,
                    "cls_token": "[CLS]",
                    "sep_token": "[SEP]",
                    "pad_token": "[PAD]",
                    "unk_token": "[UNK]",
                    "mask_token": "[MASK]",
                    "model_max_length": 512,
                });
                std::fs::write(
                    dir.join("tokenizer_config.json"),
                    serde_json::to_string_pretty(&cfg)? + "\n",
                )?;
                written.extend(["vocab.txt".to_string(), "tokenizer_config.json".to_string()]);
            }
        }
        Ok(written)
    }
}

/// Start / end / pad ids of a family's usual tokenizer, when nothing else says.
pub fn family_specials(f: Family) -> (u32, u32, u32) {
    match f {
        Family::Bert => (101, 102, 0),
        Family::Roberta => (0, 2, 1),
        Family::BertGeneration => (2, 1, 0),
        Family::Gpt2 => (50256, 50256, 50256),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_bert_vocab_is_bert_base_uncased() {
        let t = TokInfo::load(TokSource::BuiltinBertUncased).unwrap();
        assert_eq!(t.vocab_size, 30522);
        assert_eq!(t.decoder_specials(), (Some(101), Some(102), Some(0)));
    }
}
