//! Flags shared by the subcommands that run the engine.

use anyhow::Result;

use crate::generation::{EarlyStopping, GenerationOverrides};
use crate::tokenizer::TokenizerSettings;

/// Generation parameters; unset ones keep the checkpoint's defaults.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GenerationFlags {
    /// Beam width (1: greedy).
    #[arg(long)]
    pub num_beams: Option<usize>,
    /// Counts the decoder start token, like transformers.
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Generated tokens at most (instead of --max-length).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// EOS is banned below this length (counts the decoder start token).
    #[arg(long)]
    pub min_length: Option<usize>,
    /// Beam score = sum of log-probs / length^penalty.
    #[arg(long, allow_hyphen_values = true)]
    pub length_penalty: Option<f32>,
    /// true, false or never.
    #[arg(long)]
    pub early_stopping: Option<EarlyStopping>,
    /// Ban repeating n-grams of this size.
    #[arg(long)]
    pub no_repeat_ngram_size: Option<usize>,
    /// Penalty on already generated tokens (1: none).
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
}

impl GenerationFlags {
    pub fn overrides(&self) -> GenerationOverrides {
        GenerationOverrides {
            max_length: self.max_length,
            max_new_tokens: self.max_new_tokens,
            min_length: self.min_length,
            num_beams: self.num_beams,
            length_penalty: self.length_penalty,
            early_stopping: self.early_stopping,
            no_repeat_ngram_size: self.no_repeat_ngram_size,
            repetition_penalty: self.repetition_penalty,
            num_return_sequences: None,
        }
    }
}

/// Tokenizer keyword arguments, as transformers' `from_pretrained(id, KEY=VALUE)` and
/// `tokenizer(text, add_special_tokens=False)` take them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TokenizerFlags {
    /// Tokenize inputs without the tokenizer's special tokens (`add_special_tokens=False`).
    #[arg(long)]
    pub no_special_tokens: bool,
    /// KEY=VALUE, repeatable: add_special_tokens, do_lower_case (true/false), bos_token,
    /// eos_token, pad_token, unk_token, sep_token, cls_token, mask_token.
    #[arg(long = "tokenizer-option", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
}

impl TokenizerFlags {
    pub fn settings(&self) -> Result<TokenizerSettings> {
        let mut s = TokenizerSettings::default();
        for option in &self.options {
            s.set(option)?;
        }
        if self.no_special_tokens {
            s.add_special_tokens = Some(false);
        }
        Ok(s)
    }
}

/// The dtype named on the command line.
pub fn parse_dtype(name: &str) -> Result<candle_core::DType> {
    Ok(match name {
        "f32" | "float32" => candle_core::DType::F32,
        "f16" | "float16" => candle_core::DType::F16,
        "bf16" | "bfloat16" => candle_core::DType::BF16,
        other => anyhow::bail!("unsupported dtype `{other}` (use f32, f16 or bf16)"),
    })
}
