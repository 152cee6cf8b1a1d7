//! The JSON request and response types of the API, with their OpenAPI schemas.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::config::{Batching, LanguagePair, Limits, Postprocess, Preprocess, Task};
use crate::generation::GenerationOverrides;

/// One text or several.
#[derive(Debug, ToSchema)]
#[serde(untagged)]
pub enum Inputs {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for Inputs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Inputs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Inputs, E> {
                Ok(Inputs::One(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Inputs, E> {
                Ok(Inputs::One(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Inputs, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(Inputs::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl Inputs {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Inputs::One(s) => vec![s],
            Inputs::Many(v) => v,
        }
    }
}

/// `/summarize`, `/split`, `/fuse`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    pub inputs: Inputs,
    #[serde(default)]
    pub parameters: GenerationOverrides,
    /// A model serving this task; default the first one.
    #[serde(default)]
    pub model: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TranslateRequest {
    pub inputs: Inputs,
    #[serde(default)]
    pub parameters: GenerationOverrides,
    #[serde(default)]
    pub model: Option<String>,
    /// e.g. `en`; routes to the model serving the pair.
    #[serde(default)]
    pub source_lang: Option<String>,
    /// e.g. `de`.
    #[serde(default)]
    pub target_lang: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    pub inputs: Inputs,
    #[serde(default)]
    pub parameters: GenerationOverrides,
    /// Any model by name; default the first one.
    #[serde(default)]
    pub model: Option<String>,
    /// Also return decoder token ids and per-token log-probabilities.
    #[serde(default)]
    pub return_token_ids: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GeneratedText {
    pub text: String,
    /// Beam search: sum of log-probs / length^length_penalty; greedy: sum of log-probs.
    pub score: f32,
    /// `/generate` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generated_tokens: Option<usize>,
    /// Decoder ids, start token first (`return_token_ids`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_logprobs: Option<Vec<f32>>,
}

/// One output per input: an object, or a list of them when `num_return_sequences` > 1.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Output {
    One(GeneratedText),
    Many(Vec<GeneratedText>),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Timings {
    pub total_ms: f64,
    pub tokenization_ms: f64,
    /// Longest wait of any input in the queue.
    pub queue_ms: f64,
    /// Longest generation (batch) time of any input.
    pub inference_ms: f64,
    /// Largest batch any input ran in.
    pub batch_size: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GenerationResponse {
    pub outputs: Vec<Output>,
    pub model: String,
    pub timings: Timings,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelInfo {
    pub name: String,
    /// The hub model id, or a local directory's name (never a filesystem path).
    pub source: String,
    pub revision: Option<String>,
    pub tasks: Vec<Task>,
    pub translation: Option<LanguagePair>,
    pub encoder: String,
    pub decoder: String,
    pub device: String,
    pub dtype: String,
    pub replicas: usize,
    /// Inputs are truncated (or rejected) beyond this many tokens.
    pub max_input_tokens: usize,
    /// Longest `max_length` the decoder allows.
    pub max_length: usize,
    /// Generation defaults (checkpoint, then config).
    #[schema(value_type = Object)]
    pub defaults: serde_json::Value,
    /// `[models.tokenizer]`: the tokenizer keyword arguments in effect.
    pub tokenizer: crate::tokenizer::TokenizerSettings,
    pub preprocess: Preprocess,
    pub postprocess: Postprocess,
    pub load_seconds: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Info {
    pub version: String,
    pub ready: bool,
    pub models: Vec<ModelInfo>,
    pub limits: Limits,
    pub batching: Batching,
}
