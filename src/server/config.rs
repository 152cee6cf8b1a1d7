//! `encdec serve` configuration: a TOML file, then `ENCDEC_…` environment variables,
//! then command-line `--set` flags, each layer overriding the one before, validated once
//! at start with errors that name the offending field.
//!
//! Overrides address a setting by its path in the file: `batching.max_wait_ms`,
//! `models.0.device` (by index) or `models.summarize.device` (by model name). The
//! environment spells the same path in upper case with `__` between levels
//! (`ENCDEC_BATCHING__MAX_WAIT_MS=10`, `ENCDEC_MODELS__SUMMARIZE__DEVICE=cuda:0`); other
//! `ENCDEC_*` names (Kubernetes service links such as `ENCDEC_PORT=tcp://…`) are ignored.
//! `PORT` is honoured too (below `ENCDEC_SERVER__PORT`). A value is read as a TOML value
//! (`10`, `true`, `["summarize"]`) and, when it isn't one, as a string.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::generation::GenerationOverrides;
use crate::tokenizer::TokenizerSettings;

/// The environment variable naming the config file (same as `--config`).
pub const CONFIG_ENV: &str = "ENCDEC_CONFIG";
/// Prefix of override variables.
pub const ENV_PREFIX: &str = "ENCDEC_";

/// Everything `encdec serve` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub batching: Batching,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    /// 0 picks a free port (the address is logged).
    pub port: u16,
    /// `text` or `json` (one JSON object per line).
    pub log_format: LogFormat,
    /// After SIGTERM/ctrl-c: how long queued and running requests may take to finish.
    pub shutdown_grace_seconds: f64,
    /// After SIGTERM/ctrl-c and before the drain: `/ready` answers 503 while requests are
    /// still accepted, so that load balancers stop routing here first.
    pub shutdown_delay_seconds: f64,
    /// A request head (request line and headers) must arrive within this long of its
    /// first byte (or of the accept, on a new connection); else 408 and close.
    pub header_read_timeout_seconds: f64,
    /// Longest wait for the next chunk of a request body; else 408 and close.
    pub body_read_timeout_seconds: f64,
    /// An idle connection between requests is closed after this long. Above the usual
    /// load-balancer idle timeout (60 s), so that the balancer closes first and never
    /// sends a request on a connection the server is closing.
    pub keep_alive_timeout_seconds: f64,
    /// Largest request head in bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Most header lines in a request head (431 beyond).
    pub max_headers: usize,
    /// When set, every route but `/health` requires `Authorization: Bearer <key>`
    /// (401 otherwise). Never printed by `--check-config`.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "redacted")]
    pub api_key: Option<String>,
    /// Origins allowed by CORS (`["*"]`: any); empty: no CORS headers.
    pub cors_allow_origins: Vec<String>,
}

fn redacted<S: serde::Serializer>(key: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match key {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8080,
            log_format: LogFormat::Text,
            shutdown_grace_seconds: 30.0,
            shutdown_delay_seconds: 0.0,
            header_read_timeout_seconds: 10.0,
            body_read_timeout_seconds: 10.0,
            keep_alive_timeout_seconds: 75.0,
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            api_key: None,
            cors_allow_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Request limits; a request outside them is refused with 413 / 422 / 429.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body in bytes (413 beyond).
    pub max_payload_bytes: usize,
    /// Most texts in one request's `inputs`.
    pub max_inputs_per_request: usize,
    /// Cap on input tokens (special tokens included) for every model; a model's own
    /// `preprocess.max_input_tokens` and its encoder's positions may lower it.
    pub max_input_tokens: usize,
    /// What to do with a longer input: `truncate` (like transformers) or `reject` (422).
    pub input_overflow: InputOverflow,
    /// Most tokens a request may generate (`max_length` − 1 or `max_new_tokens`).
    pub max_new_tokens: usize,
    pub max_num_beams: usize,
    pub max_num_return_sequences: usize,
    /// Sequences (inputs) waiting per model before new requests get 429.
    pub queue_capacity: usize,
    /// A request still unanswered after this long gets 504 and its work is dropped.
    pub request_deadline_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 2 * 1024 * 1024,
            max_inputs_per_request: 32,
            max_input_tokens: 512,
            input_overflow: InputOverflow::Truncate,
            max_new_tokens: 512,
            max_num_beams: 8,
            max_num_return_sequences: 8,
            queue_capacity: 256,
            request_deadline_ms: 120_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputOverflow {
    Truncate,
    Reject,
}

/// How the batcher closes a batch (per model).
/// How a model's worker batches sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BatchingMode {
    /// Sequences join a running batch between two decode steps and leave it when they
    /// finish; requests with different generation parameters share it.
    Continuous,
    /// A batch forms from the queue and runs until its last sequence ends; only
    /// sequences with equal generation parameters batch together.
    Static,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Batching {
    pub mode: BatchingMode,
    /// Most sequences (inputs) in one batch (both modes).
    pub max_batch_size: usize,
    /// Static: most padded tokens in one batch (longest input × sequences × beams).
    pub max_batch_tokens: usize,
    /// Continuous: most decoder rows (sequences × beams) in a running batch.
    pub max_batch_rows: usize,
    /// Continuous: most key/value-cache tokens a running batch may need, reserved when a
    /// sequence joins for its worst case (`num_beams × max_length` decoder positions plus
    /// its input tokens). Memory per token: `2 × layers × hidden_size × 4` bytes in f32.
    pub max_batch_kv_tokens: usize,
    /// Continuous: how long sequences that arrived later may join ahead of one that does
    /// not fit yet (or be encoded ahead of one with more work); after that nothing passes
    /// it.
    pub max_bypass_ms: u64,
    /// Continuous: rows a decode step takes regardless of their remaining work; beyond
    /// them a step takes only inputs with at most 4× the remaining work of the shortest
    /// (long work waits, at most `max_bypass_ms`, while short work finishes).
    /// 0 (the default): every input runs every step.
    pub min_step_rows: usize,
    /// Continuous: most input tokens encoded at one step boundary (at least one
    /// sequence), which bounds how long running sequences stall for joiners.
    pub max_join_tokens: usize,
    /// Static: how long a batch waits for company after its first request when a worker
    /// is free. (Continuous batching needs no wait: later requests join the next step.)
    pub max_wait_ms: u64,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            mode: BatchingMode::Continuous,
            max_batch_size: 32,
            max_batch_tokens: 32_768,
            max_batch_rows: 128,
            max_batch_kv_tokens: 32_768,
            max_bypass_ms: 5_000,
            max_join_tokens: 1_024,
            min_step_rows: 0,
            max_wait_ms: 5,
        }
    }
}

pub use crate::task::Task;

/// The language pair a translation model serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LanguagePair {
    pub source: String,
    pub target: String,
}

/// One checkpoint in the pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Name used in requests (`"model"`), metrics and logs.
    pub name: String,
    /// A checkpoint directory (relative paths are tried against the config file's
    /// directory first) or a hub id.
    pub source: String,
    /// Hub branch, tag or commit (hub ids only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Task endpoints routed to this model; default: all of them.
    #[serde(default = "all_tasks")]
    pub tasks: Vec<Task>,
    /// For `translate`: the pair this model serves; without it the model takes any pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub translation: Option<LanguagePair>,
    /// `cpu`, or `cuda` / `cuda:N` (builds with the `cuda` feature).
    #[serde(default = "default_device")]
    pub device: String,
    /// `f32`, `f16` or `bf16`.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Worker threads running batches of this model; they share its weights.
    #[serde(default = "one")]
    pub replicas: usize,
    /// Decoder tokenizer directory (BERT2GPT2); default `<dir>/decoder_tokenizer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_tokenizer: Option<PathBuf>,
    /// Generation defaults that replace the checkpoint's (requests override these).
    #[serde(default)]
    pub generation: GenerationOverrides,
    /// transformers' tokenizer keyword arguments for this checkpoint (`[models.tokenizer]`:
    /// `add_special_tokens`, `bos_token` ... `mask_token`, `do_lower_case`).
    #[serde(default, skip_serializing_if = "TokenizerSettings::is_default")]
    pub tokenizer: TokenizerSettings,
    #[serde(default)]
    pub preprocess: Preprocess,
    #[serde(default)]
    pub postprocess: Postprocess,
}

fn all_tasks() -> Vec<Task> {
    Task::ALL.to_vec()
}
fn default_device() -> String {
    "cpu".into()
}
fn default_dtype() -> String {
    "f32".into()
}
fn one() -> usize {
    1
}

/// What a checkpoint needs done to each input text before tokenization, in this order:
/// `replace`, then `prefix` + text + `suffix`; then truncation to `max_input_tokens`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Preprocess {
    /// e.g. `"<s>"` for google/roberta2roberta_L-24_wikisplit.
    pub prefix: String,
    /// e.g. `"</s>"` for google/roberta2roberta_L-24_wikisplit.
    pub suffix: String,
    /// e.g. `[{ from = '"', to = "`" }]` for google/roberta2roberta_L-24_discofuse.
    pub replace: Vec<Replace>,
    /// Truncation length (special tokens included); default the encoder's positions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<usize>,
}

/// What to do to each generated text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Postprocess {
    pub replace: Vec<Replace>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replace {
    pub from: String,
    pub to: String,
}

impl Preprocess {
    pub fn apply(&self, text: &str) -> String {
        let body = self.replaced(text);
        if self.prefix.is_empty() && self.suffix.is_empty() {
            body
        } else {
            format!("{}{body}{}", self.prefix, self.suffix)
        }
    }

    /// `text` with the `replace` rules applied (no prefix or suffix).
    pub fn replaced(&self, text: &str) -> String {
        apply_replacements(&self.replace, text)
    }
}

impl Postprocess {
    pub fn apply(&self, text: String) -> String {
        if self.replace.is_empty() {
            text
        } else {
            apply_replacements(&self.replace, &text)
        }
    }
}

fn apply_replacements(rules: &[Replace], text: &str) -> String {
    let mut out = text.to_string();
    for r in rules {
        out = out.replace(&r.from, &r.to);
    }
    out
}

/// A parsed `device` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(format!("unknown device `{other}` (cpu, cuda or cuda:N)")),
            },
        }
    }

    pub fn device(self) -> Result<candle_core::Device> {
        match self {
            DeviceSpec::Cpu => Ok(candle_core::Device::Cpu),
            DeviceSpec::Cuda(n) => {
                candle_core::Device::new_cuda(n).with_context(|| format!("opening cuda:{n}"))
            }
        }
    }
}

impl Config {
    /// Parses TOML text (no overrides); see [`Config::validate`].
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let table: toml::Table = text.parse().context("config is not valid TOML")?;
        Self::from_table(table)
    }

    /// Deserializes a table, naming the field of any error (`limits.max_new_tokens: …`).
    pub fn from_table(table: toml::Table) -> Result<Self> {
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            anyhow::anyhow!("invalid config: {path}: {}", inner.message().trim())
        })
    }

    /// The config of `path` (or none), its models replaced by `models` if given, with the
    /// environment and `sets` (`key=value`) applied, and relative model directories
    /// resolved against the file's directory.
    pub fn load(
        path: Option<&Path>,
        models: Option<&[ModelConfig]>,
        env: impl IntoIterator<Item = (String, String)>,
        sets: &[String],
    ) -> Result<Self> {
        let mut table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config {}", p.display()))?;
                text.parse::<toml::Table>()
                    .with_context(|| format!("config {} is not valid TOML", p.display()))?
            }
            None => toml::Table::new(),
        };
        if let Some(models) = models {
            table.insert(
                "models".into(),
                toml::Value::try_from(models).context("encoding --model settings")?,
            );
        }
        let mut env: Vec<(String, String)> = env.into_iter().collect();
        env.sort();
        if let Some((_, port)) = env.iter().find(|(k, _)| k == "PORT") {
            set_path(&mut table, &["server", "port"], parse_value(port))
                .context("environment variable PORT")?;
        }
        for (key, value) in &env {
            let Some(path) = env_setting_path(key) else {
                continue;
            };
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            set_path(&mut table, &path, parse_value(value))
                .with_context(|| format!("environment variable {key}"))?;
        }
        for set in sets {
            let (key, value) = set
                .split_once('=')
                .with_context(|| format!("--set {set}: expected KEY=VALUE"))?;
            let path: Vec<&str> = key.trim().split('.').collect();
            set_path(&mut table, &path, parse_value(value.trim()))
                .with_context(|| format!("--set {set}"))?;
        }
        let mut config = Self::from_table(table)?;
        if let Some(dir) = path.and_then(Path::parent) {
            for m in &mut config.models {
                let candidate = dir.join(&m.source);
                if Path::new(&m.source).is_relative() && candidate.is_dir() {
                    m.source = candidate.to_string_lossy().into_owned();
                }
            }
        }
        Ok(config)
    }

    /// Checks everything that can be checked without loading a model.
    pub fn validate(&self) -> Result<()> {
        let s = &self.server;
        if s.host.trim().is_empty() {
            bail!("server.host: must not be empty");
        }
        for (name, v) in [
            ("shutdown_grace_seconds", s.shutdown_grace_seconds),
            ("shutdown_delay_seconds", s.shutdown_delay_seconds),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                bail!("server.{name}: must be a number of seconds ≥ 0, got {v}");
            }
        }
        for (name, v) in [
            ("header_read_timeout_seconds", s.header_read_timeout_seconds),
            ("body_read_timeout_seconds", s.body_read_timeout_seconds),
            ("keep_alive_timeout_seconds", s.keep_alive_timeout_seconds),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                bail!("server.{name}: must be a number of seconds in (0, 86400], got {v}");
            }
        }
        if !(1024..=1024 * 1024).contains(&s.max_header_bytes) {
            bail!(
                "server.max_header_bytes: must be between 1024 and 1048576, got {}",
                s.max_header_bytes
            );
        }
        if !(1..=1000).contains(&s.max_headers) {
            bail!(
                "server.max_headers: must be between 1 and 1000, got {}",
                s.max_headers
            );
        }
        if let Some(key) = &s.api_key {
            if key.trim().is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!("server.api_key: must be non-empty, without spaces or control characters");
            }
        }
        for origin in &s.cors_allow_origins {
            if origin != "*" && axum::http::HeaderValue::from_str(origin).is_err() {
                bail!("server.cors_allow_origins: `{origin}` is not a valid origin");
            }
        }
        let l = &self.limits;
        let positive = [
            ("limits.max_payload_bytes", l.max_payload_bytes),
            ("limits.max_inputs_per_request", l.max_inputs_per_request),
            ("limits.max_input_tokens", l.max_input_tokens),
            ("limits.max_new_tokens", l.max_new_tokens),
            ("limits.max_num_beams", l.max_num_beams),
            (
                "limits.max_num_return_sequences",
                l.max_num_return_sequences,
            ),
            ("limits.queue_capacity", l.queue_capacity),
            ("limits.request_deadline_ms", l.request_deadline_ms as usize),
            ("batching.max_batch_size", self.batching.max_batch_size),
            ("batching.max_batch_tokens", self.batching.max_batch_tokens),
            ("batching.max_batch_rows", self.batching.max_batch_rows),
            (
                "batching.max_batch_kv_tokens",
                self.batching.max_batch_kv_tokens,
            ),
        ];
        for (name, v) in positive {
            if v == 0 {
                bail!("{name}: must be at least 1");
            }
        }
        if l.max_inputs_per_request > l.queue_capacity {
            bail!(
                "limits.max_inputs_per_request: {} exceeds limits.queue_capacity ({}); such a request could never be queued",
                l.max_inputs_per_request,
                l.queue_capacity
            );
        }
        if self.models.is_empty() {
            bail!("models: no model configured (add a [[models]] table, or use --model)");
        }
        let mut names = HashSet::new();
        let mut pairs: Vec<(&LanguagePair, usize)> = Vec::new();
        for (i, m) in self.models.iter().enumerate() {
            let at = format!("models[{i}]");
            if m.name.is_empty()
                || !m
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                bail!(
                    "{at}.name: `{}` must be non-empty ASCII letters, digits, `-`, `_` or `.`",
                    m.name
                );
            }
            if m.name.chars().all(|c| c.is_ascii_digit()) {
                bail!("{at}.name: `{}` must not be a number", m.name);
            }
            if !names.insert(m.name.as_str()) {
                bail!("{at}.name: `{}` is used by another model", m.name);
            }
            if m.source.trim().is_empty() {
                bail!("{at}.source: must name a directory or a hub id");
            }
            let mut seen = HashSet::new();
            for t in &m.tasks {
                if !seen.insert(t) {
                    bail!("{at}.tasks: `{}` is listed twice", t.as_str());
                }
            }
            if let Some(pair) = &m.translation {
                if !m.tasks.contains(&Task::Translate) {
                    bail!("{at}.translation: set, but `translate` is not in {at}.tasks");
                }
                if pair.source.trim().is_empty() || pair.target.trim().is_empty() {
                    bail!("{at}.translation: source and target must be language codes");
                }
                if let Some((_, j)) = pairs.iter().find(|(p, _)| {
                    p.source.eq_ignore_ascii_case(&pair.source)
                        && p.target.eq_ignore_ascii_case(&pair.target)
                }) {
                    bail!(
                        "{at}.translation: {}→{} is already served by models[{j}]",
                        pair.source,
                        pair.target
                    );
                }
                pairs.push((pair, i));
            }
            let device =
                DeviceSpec::parse(&m.device).map_err(|e| anyhow::anyhow!("{at}.device: {e}"))?;
            if matches!(device, DeviceSpec::Cuda(_)) && !cfg!(feature = "cuda") {
                bail!(
                    "{at}.device: `{}` needs a build with the `cuda` feature (cargo build --features cuda)",
                    m.device
                );
            }
            parse_dtype(&m.dtype).map_err(|e| anyhow::anyhow!("{at}.dtype: {e}"))?;
            if !(1..=64).contains(&m.replicas) {
                bail!(
                    "{at}.replicas: must be between 1 and 64, got {}",
                    m.replicas
                );
            }
            m.tokenizer
                .validate()
                .map_err(|e| anyhow::anyhow!("{at}.tokenizer.{e}"))?;
            if m.preprocess.max_input_tokens == Some(0) {
                bail!("{at}.preprocess.max_input_tokens: must be at least 1");
            }
            if m.preprocess
                .replace
                .iter()
                .chain(&m.postprocess.replace)
                .any(|r| r.from.is_empty())
            {
                bail!("{at}: a replace rule has an empty `from`");
            }
        }
        Ok(())
    }

    /// The config for `encdec serve --model SOURCE`: one model on `tasks` (all if empty).
    pub fn single_model(source: &str, tasks: &[Task]) -> ModelConfig {
        let name = Path::new(source.trim_end_matches('/'))
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        ModelConfig {
            name,
            source: source.to_string(),
            revision: None,
            tasks: if tasks.is_empty() {
                all_tasks()
            } else {
                tasks.to_vec()
            },
            translation: None,
            device: default_device(),
            dtype: default_dtype(),
            replicas: 1,
            decoder_tokenizer: None,
            generation: GenerationOverrides::default(),
            tokenizer: TokenizerSettings::default(),
            preprocess: Preprocess::default(),
            postprocess: Postprocess::default(),
        }
    }
}

pub use crate::checkpoint::dtype::parse as parse_dtype;

/// The top-level tables of [`Config`]: an `ENCDEC_<SECTION>__<KEY>` variable is a
/// setting only when `<SECTION>` is one of these.
pub const SECTIONS: [&str; 4] = ["server", "limits", "batching", "models"];

/// The setting path an environment variable names (`ENCDEC_BATCHING__MAX_WAIT_MS` →
/// `batching.max_wait_ms`), or `None` when it is not a setting. Kubernetes injects
/// `ENCDEC_PORT=tcp://…`, `ENCDEC_SERVICE_HOST`, `ENCDEC_PORT_80_TCP_ADDR`, … into every
/// pod when a Service is named `encdec` (service links); those are none of ours, so only
/// a known section followed by `__` and a key counts.
pub fn env_setting_path(name: &str) -> Option<Vec<String>> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    let (section, key) = rest.split_once("__")?;
    let section = section.to_ascii_lowercase();
    if key.is_empty() || !SECTIONS.contains(&section.as_str()) {
        return None;
    }
    let mut path = vec![section];
    path.extend(key.split("__").map(|s| s.to_ascii_lowercase()));
    Some(path)
}

/// `ENCDEC_*` variables of `env` that are not settings (see [`env_setting_path`]), for a
/// debug log: they are ignored.
pub fn ignored_env_vars(env: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let mut names: Vec<String> = env
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with(ENV_PREFIX) && k != CONFIG_ENV && env_setting_path(k).is_none())
        .collect();
    names.sort();
    names
}

/// A TOML value when `s` is one (`10`, `true`, `[1, 2]`, `"x"`), else the string itself.
fn parse_value(s: &str) -> toml::Value {
    format!("v = {s}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(s.to_string()))
}

/// Sets `path` in `table`, creating tables on the way. A segment under an array picks
/// an element by index (the next index appends a table) or by its `name`.
fn set_path(table: &mut toml::Table, path: &[&str], value: toml::Value) -> Result<()> {
    let (first, rest) = path.split_first().context("empty setting name")?;
    if first.is_empty() {
        bail!("empty segment in setting name");
    }
    if rest.is_empty() {
        table.insert(first.to_string(), value);
        return Ok(());
    }
    let entry = table
        .entry(first.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    set_in_value(entry, first, rest, value)
}

fn set_in_value(node: &mut toml::Value, at: &str, path: &[&str], value: toml::Value) -> Result<()> {
    match node {
        toml::Value::Table(t) => set_path(t, path, value),
        toml::Value::Array(items) => {
            let (key, rest) = path.split_first().expect("non-empty");
            let index = match key.parse::<usize>() {
                Ok(i) if i < items.len() => i,
                Ok(i) if i == items.len() => {
                    items.push(toml::Value::Table(toml::Table::new()));
                    i
                }
                Ok(i) => bail!(
                    "{at} has {} entries; index {i} is out of range",
                    items.len()
                ),
                Err(_) => items
                    .iter()
                    .position(|v| {
                        v.get("name")
                            .and_then(|n| n.as_str())
                            .is_some_and(|n| n.eq_ignore_ascii_case(key))
                    })
                    .with_context(|| format!("{at} has no entry named `{key}`"))?,
            };
            if rest.is_empty() {
                items[index] = value;
                return Ok(());
            }
            set_in_value(&mut items[index], &format!("{at}.{key}"), rest, value)
        }
        _ => bail!("{at} is not a table"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn overrides_layer_file_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\nport = 1\n[[models]]\nname = \"a\"\nsource = \"x\"\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            None,
            env(&[
                ("PORT", "2"),
                ("ENCDEC_BATCHING__MAX_WAIT_MS", "9"),
                ("ENCDEC_MODELS__A__DEVICE", "cpu"),
                ("ENCDEC_MODELS__0__TASKS", "[\"split\"]"),
                ("ENCDEC_CONFIG", "ignored"),
                ("HOME", "/"),
            ]),
            &[
                "server.port=3".into(),
                "models.a.generation.num_beams=4".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.server.port, 3);
        assert_eq!(c.batching.max_wait_ms, 9);
        assert_eq!(c.models[0].tasks, vec![Task::Split]);
        assert_eq!(c.models[0].generation.num_beams, Some(4));
        c.validate().unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::from_toml_str("[limits]\nmax_new_tokens = \"many\"\n").unwrap_err();
        assert!(e.to_string().contains("limits.max_new_tokens"), "{e}");
        let e = Config::from_toml_str("[batching]\nmax_wiat_ms = 3\n").unwrap_err();
        assert!(e.to_string().contains("max_wiat_ms"), "{e}");
        let c = Config::from_toml_str(
            "[[models]]\nname = \"a\"\nsource = \"x\"\ntasks = [\"summarize\"]\ndevice = \"tpu\"\n",
        )
        .unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.to_string().starts_with("models[0].device"), "{e}");
        let e = Config::from_toml_str(
            "[[models]]\nname = \"a\"\nsource = \"x\"\ntasks = [\"sumarize\"]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("models[0].tasks"), "{e}");
        let e = Config::load(None, None, env(&[("ENCDEC_SERVER__PROT", "1")]), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("prot"), "{e:#}");
    }

    /// What Kubernetes injects for a Service named `encdec` with a port `http` on 80.
    const SERVICE_LINKS: [(&str, &str); 8] = [
        ("ENCDEC_SERVICE_HOST", "10.0.0.1"),
        ("ENCDEC_SERVICE_PORT", "80"),
        ("ENCDEC_SERVICE_PORT_HTTP", "80"),
        ("ENCDEC_PORT", "tcp://10.0.0.1:80"),
        ("ENCDEC_PORT_80_TCP", "tcp://10.0.0.1:80"),
        ("ENCDEC_PORT_80_TCP_PROTO", "tcp"),
        ("ENCDEC_PORT_80_TCP_PORT", "80"),
        ("ENCDEC_PORT_80_TCP_ADDR", "10.0.0.1"),
    ];

    #[test]
    fn service_link_variables_are_not_settings() {
        let mut vars = env(&SERVICE_LINKS);
        vars.extend(env(&[
            ("ENCDEC_SERVR__PORT", "1"),
            ("ENCDEC___X", "1"),
            ("ENCDEC_SERVER__", "1"),
            ("ENCDEC_LIMITS__QUEUE_CAPACITY", "7"),
            ("ENCDEC_CONFIG", "c.toml"),
        ]));
        let c = Config::load(None, None, vars.clone(), &[]).unwrap();
        assert_eq!(c.server, ServerConfig::default());
        assert_eq!(c.limits.queue_capacity, 7);
        let ignored = ignored_env_vars(vars);
        assert_eq!(ignored.len(), SERVICE_LINKS.len() + 3, "{ignored:?}");
        assert!(!ignored
            .iter()
            .any(|n| n.contains("LIMITS") || n == CONFIG_ENV));
        assert_eq!(
            env_setting_path("ENCDEC_MODELS__BBC__GENERATION__NUM_BEAMS").unwrap(),
            ["models", "bbc", "generation", "num_beams"]
        );
    }

    #[test]
    fn connection_limits_and_access_are_validated() {
        let base = "[[models]]\nname = \"a\"\nsource = \"x\"\n";
        for (server, field) in [
            (
                "header_read_timeout_seconds = 0",
                "header_read_timeout_seconds",
            ),
            (
                "body_read_timeout_seconds = -1",
                "body_read_timeout_seconds",
            ),
            (
                "keep_alive_timeout_seconds = nan",
                "keep_alive_timeout_seconds",
            ),
            ("max_header_bytes = 10", "max_header_bytes"),
            ("max_headers = 0", "max_headers"),
            ("api_key = \" \"", "api_key"),
            ("cors_allow_origins = [\"a\\nb\"]", "cors_allow_origins"),
        ] {
            let c = Config::from_toml_str(&format!("[server]\n{server}\n{base}")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{server}: {e}");
        }
        let c = Config::from_toml_str(&format!(
            "[server]\napi_key = \"k\"\ncors_allow_origins = [\"*\"]\n{base}"
        ))
        .unwrap();
        c.validate().unwrap();
        let printed = toml::to_string(&c).unwrap();
        assert!(
            printed.contains("<redacted>") && !printed.contains("\"k\""),
            "{printed}"
        );
    }

    #[test]
    fn preprocess_order() {
        let p = Preprocess {
            prefix: "<s>".into(),
            suffix: "</s>".into(),
            replace: vec![Replace {
                from: "\"".into(),
                to: "`".into(),
            }],
            max_input_tokens: None,
        };
        assert_eq!(p.apply("a \"b\""), "<s>a `b`</s>");
    }
}
