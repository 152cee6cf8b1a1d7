//! The engine: a checkpoint loaded once (weights, tokenizers, generation defaults),
//! then asked for many batches. `&Engine` is `Send + Sync`; worker threads share it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;

use crate::checkpoint::config::EncoderDecoderConfig;
use crate::checkpoint::dtype::RunDtype;
use crate::generation::{self, GenerationConfig, Hypothesis, NoObserver, Outcome, StepObserver};
use crate::model::EncoderDecoderModel;
use crate::tokenizer::{InputError, TokenizerSettings, Tokenizers};

/// How to load a checkpoint.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub device: Device,
    /// Weight storage and arithmetic ([`RunDtype`]).
    pub dtype: RunDtype,
    /// Decoder tokenizer directory (BERT2GPT2); default `decoder_tokenizer/` if present.
    pub decoder_tokenizer: Option<PathBuf>,
    /// transformers' tokenizer keyword arguments (`add_special_tokens`, token overrides).
    pub tokenizer: TokenizerSettings,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: RunDtype::F32,
            decoder_tokenizer: None,
            tokenizer: TokenizerSettings::default(),
        }
    }
}

pub struct Engine {
    model: EncoderDecoderModel,
    tokenizers: Tokenizers,
    defaults: GenerationConfig,
    dir: PathBuf,
}

/// One generated sequence with its text.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Generated {
    pub text: String,
    #[serde(flatten)]
    pub hypothesis: Hypothesis,
}

/// Why one input of a batch produced no output.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum InputFailure {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("input has {len} tokens; the encoder takes at most {max}")]
    TooLong { len: usize, max: usize },
    #[error("cancelled")]
    Cancelled,
}

impl Engine {
    pub fn load(dir: &Path, opts: &EngineOptions) -> Result<Self> {
        crate::allocator::keep_freed_memory();
        let config = EncoderDecoderConfig::from_file(&dir.join("config.json"))?;
        let defaults = GenerationConfig::from_checkpoint(dir, &config)?;
        let tokenizers = Tokenizers::load(
            dir,
            opts.decoder_tokenizer.as_deref(),
            config.encoder.max_input_tokens(),
            &opts.tokenizer,
        )?;
        let model = EncoderDecoderModel::load(dir, config, &opts.device, opts.dtype)
            .with_context(|| format!("loading weights of {}", dir.display()))?;
        Ok(Self {
            model,
            tokenizers,
            defaults,
            dir: dir.to_path_buf(),
        })
    }

    /// The loaded network, for callers that drive encode/decode steps themselves
    /// (benchmarks, custom searches).
    pub fn model(&self) -> &EncoderDecoderModel {
        &self.model
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The checkpoint's generation defaults.
    pub fn defaults(&self) -> &GenerationConfig {
        &self.defaults
    }

    pub fn config(&self) -> &EncoderDecoderConfig {
        self.model.config()
    }

    pub fn tokenizers(&self) -> &Tokenizers {
        &self.tokenizers
    }

    /// Longest input the encoder accepts, special tokens included.
    pub fn max_input_tokens(&self) -> usize {
        self.tokenizers.max_input_tokens()
    }

    /// Token ids of `text`; an id outside the encoder's embeddings (a special token the
    /// tokenizer added after a vocabulary that lacks it) is an input error, as it is an
    /// index error in transformers.
    pub fn encode(&self, text: &str, max_tokens: Option<usize>) -> Result<Vec<u32>, InputError> {
        let ids = self.tokenizers.encode(text, max_tokens)?;
        let vocab = self.config().encoder.vocab_size;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            let token = self.tokenizers.id_to_token(id).unwrap_or_default();
            return Err(InputError::Tokenizer(format!(
                "token {token:?} (id {id}) is outside the encoder's vocabulary of {vocab}; \
                 the tokenizer added it to a vocabulary that lacks it (see the model card: \
                 e.g. [models.tokenizer] add_special_tokens = false, or --no-special-tokens)"
            )));
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizers.decode(ids)
    }

    /// Generates for already-encoded inputs (each non-empty and within
    /// [`Self::max_input_tokens`]). Inputs are batched together; results are in order.
    pub fn generate_ids(
        &self,
        inputs: &[Vec<u32>],
        cfg: &GenerationConfig,
        observer: &dyn StepObserver,
    ) -> Result<Vec<Outcome>> {
        let max = self.max_input_tokens();
        if let Some(bad) = inputs.iter().find(|i| i.is_empty() || i.len() > max) {
            anyhow::bail!(
                "input of {} tokens is outside 1..={max}; validate inputs before generating",
                bad.len()
            );
        }
        generation::generate(&self.model, inputs, cfg, observer)
    }

    /// Tokenizes, generates in one batch, and decodes. Inputs that can't be encoded get
    /// their own error; the rest are generated together.
    pub fn generate_texts(
        &self,
        texts: &[&str],
        cfg: &GenerationConfig,
    ) -> Result<Vec<Result<Vec<Generated>, InputFailure>>> {
        self.generate_texts_observed(texts, cfg, &NoObserver)
    }

    /// [`Self::generate_texts`] reporting its progress to `observer`.
    pub fn generate_texts_observed(
        &self,
        texts: &[&str],
        cfg: &GenerationConfig,
        observer: &dyn StepObserver,
    ) -> Result<Vec<Result<Vec<Generated>, InputFailure>>> {
        let encoded: Vec<Result<Vec<u32>, InputError>> =
            texts.iter().map(|t| self.encode(t, None)).collect();
        let valid: Vec<Vec<u32>> = encoded.iter().filter_map(|e| e.clone().ok()).collect();
        let mut outcomes = self.generate_ids(&valid, cfg, observer)?.into_iter();
        encoded
            .into_iter()
            .map(|e| match e {
                Err(err) => Ok(Err(InputFailure::Input(err))),
                Ok(_) => match outcomes.next().expect("one outcome per valid input") {
                    Outcome::Cancelled => Ok(Err(InputFailure::Cancelled)),
                    Outcome::Finished(hyps) => Ok(Ok(self.with_texts(hyps)?)),
                },
            })
            .collect()
    }

    /// Decodes every hypothesis.
    pub fn with_texts(&self, hyps: Vec<Hypothesis>) -> Result<Vec<Generated>> {
        hyps.into_iter()
            .map(|h| {
                Ok(Generated {
                    text: self.decode(&h.ids)?,
                    hypothesis: h,
                })
            })
            .collect()
    }
}
