//! The model pool: checkpoints loaded and warmed up, their effective defaults and
//! limits, pre/post-processing, and task routing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use super::batcher::ModelQueue;
use super::config::{parse_dtype, DeviceSpec, Limits, ModelConfig, Task};
use super::error::{echo, ApiError, ErrorKind};
use crate::checkpoint::config::{EncoderDecoderConfig, GenerationFields};
use crate::engine::{Engine, EngineOptions};
use crate::generation::{GenerationConfig, GenerationOverrides, NoObserver, Outcome};

/// A checkpoint loaded and warmed up, not yet serving.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub dir: PathBuf,
    pub engine: Arc<Engine>,
    /// The checkpoint's defaults with the config's `generation` applied.
    pub defaults: GenerationConfig,
    /// Truncation length: the smallest of the encoder's positions,
    /// `limits.max_input_tokens` and `preprocess.max_input_tokens`.
    pub max_input_tokens: usize,
    /// Longest `max_length` the decoder's position table allows.
    pub max_length: usize,
    pub load_seconds: f64,
}

/// A model in the running server.
pub struct Model {
    pub loaded: LoadedModel,
    pub queue: ModelQueue,
}

impl std::ops::Deref for Model {
    type Target = LoadedModel;
    fn deref(&self) -> &LoadedModel {
        &self.loaded
    }
}

/// Resolves, loads and warms up model `index` of the config (blocking).
pub fn load_model(index: usize, mc: &ModelConfig, limits: &Limits) -> Result<LoadedModel> {
    load_model_with(index, mc, limits, &|_| {})
}

/// Where [`load_model_with`] is (for `/ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadPhase {
    /// Resolving the source: a hub download unless it is a local directory.
    Downloading,
    Loading,
    WarmingUp,
}

/// [`load_model`], telling `phase` as it goes.
pub fn load_model_with(
    index: usize,
    mc: &ModelConfig,
    limits: &Limits,
    phase: &dyn Fn(LoadPhase),
) -> Result<LoadedModel> {
    let started = Instant::now();
    if !std::path::Path::new(&mc.source).is_dir() {
        phase(LoadPhase::Downloading);
    }
    let at = format!("models[{index}]");
    let opts = crate::hub::HubOptions {
        revision: mc.revision.clone(),
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let dir = crate::hub::resolve_model_dir(&mc.source, &opts)
        .with_context(|| format!("{at}.source: cannot resolve `{}`", mc.source))?;
    phase(LoadPhase::Loading);
    let device = DeviceSpec::parse(&mc.device)
        .map_err(|e| anyhow::anyhow!("{at}.device: {e}"))?
        .device()
        .with_context(|| format!("{at}.device"))?;
    let dtype = parse_dtype(&mc.dtype).with_context(|| format!("{at}.dtype"))?;
    let engine = Engine::load(
        &dir,
        &EngineOptions {
            device,
            dtype,
            decoder_tokenizer: mc.decoder_tokenizer.clone(),
            tokenizer: mc.tokenizer.clone(),
        },
    )
    .with_context(|| format!("{at}: loading {}", dir.display()))?;
    let max_length = engine.config().decoder.max_input_tokens();
    let generation = with_task_length(mc, &dir, engine.config(), limits, max_length)?;
    let defaults = engine
        .defaults()
        .with_overrides(&generation)
        .map_err(|e| anyhow::anyhow!("{at}.generation: {e}"))?;
    check_limits(&defaults, limits, max_length)
        .map_err(|e| anyhow::anyhow!("{at}.generation (or the checkpoint's defaults): {e}"))?;
    let max_input_tokens = engine
        .max_input_tokens()
        .min(limits.max_input_tokens)
        .min(mc.preprocess.max_input_tokens.unwrap_or(usize::MAX));
    let model = LoadedModel {
        config: mc.clone(),
        dir,
        engine: Arc::new(engine),
        defaults,
        max_input_tokens,
        max_length,
        load_seconds: 0.0,
    };
    phase(LoadPhase::WarmingUp);
    model
        .warm_up()
        .with_context(|| format!("{at}: warm-up generation failed"))?;
    Ok(LoadedModel {
        load_seconds: started.elapsed().as_secs_f64(),
        ..model
    })
}

/// Resolved parameters beyond the server's limits or the decoder's positions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error("max_length {max_length} (max_new_tokens {new_tokens}) exceeds the server limit of {limit} new tokens")]
    NewTokens {
        max_length: usize,
        new_tokens: usize,
        limit: usize,
    },
    #[error("max_length {max_length} exceeds the decoder's {positions} positions")]
    Positions { max_length: usize, positions: usize },
    #[error("num_beams {num_beams} exceeds the server limit of {limit}")]
    Beams { num_beams: usize, limit: usize },
    #[error("num_return_sequences {num_return_sequences} exceeds the server limit of {limit}")]
    ReturnSequences {
        num_return_sequences: usize,
        limit: usize,
    },
}

/// The model's `generation` settings, with its tasks' default `max_new_tokens`
/// ([`Task::default_max_new_tokens`], the largest of those it serves) when neither they
/// nor the checkpoint set a length; kept within the server limit and the decoder's
/// positions.
fn with_task_length(
    mc: &ModelConfig,
    dir: &std::path::Path,
    config: &EncoderDecoderConfig,
    limits: &Limits,
    max_length: usize,
) -> Result<GenerationOverrides> {
    let mut generation = mc.generation.clone();
    if generation.max_length.is_some() || generation.max_new_tokens.is_some() {
        return Ok(generation);
    }
    let Some(task_default) = mc
        .tasks
        .iter()
        .filter_map(|t| t.default_max_new_tokens())
        .max()
    else {
        return Ok(generation);
    };
    let checkpoint = GenerationFields::from_dir(dir)?.or(config.generation.clone());
    if checkpoint.max_length.is_some() || checkpoint.max_new_tokens.is_some() {
        return Ok(generation);
    }
    let n = task_default
        .min(limits.max_new_tokens)
        .min(max_length.saturating_sub(1));
    if n > 0 {
        generation.max_new_tokens = Some(n);
    }
    Ok(generation)
}

/// Whether resolved parameters are within the server's limits and the decoder's positions.
pub fn check_limits(
    cfg: &GenerationConfig,
    limits: &Limits,
    max_length: usize,
) -> Result<(), LimitExceeded> {
    let new_tokens = cfg.max_length.saturating_sub(1);
    if new_tokens > limits.max_new_tokens {
        return Err(LimitExceeded::NewTokens {
            max_length: cfg.max_length,
            new_tokens,
            limit: limits.max_new_tokens,
        });
    }
    if cfg.max_length > max_length {
        return Err(LimitExceeded::Positions {
            max_length: cfg.max_length,
            positions: max_length,
        });
    }
    if cfg.num_beams > limits.max_num_beams {
        return Err(LimitExceeded::Beams {
            num_beams: cfg.num_beams,
            limit: limits.max_num_beams,
        });
    }
    if cfg.num_return_sequences > limits.max_num_return_sequences {
        return Err(LimitExceeded::ReturnSequences {
            num_return_sequences: cfg.num_return_sequences,
            limit: limits.max_num_return_sequences,
        });
    }
    Ok(())
}

impl LoadedModel {
    /// The model's source as `/info` shows it: a hub id as configured, a local directory
    /// by its name only (no filesystem paths in responses).
    pub fn public_source(&self) -> String {
        let source = std::path::Path::new(&self.config.source);
        if source == self.dir.as_path() {
            if let Some(name) = source
                .canonicalize()
                .ok()
                .as_deref()
                .unwrap_or(source)
                .file_name()
            {
                return name.to_string_lossy().into_owned();
            }
        }
        self.config.source.clone()
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn serves(&self, task: Task) -> bool {
        self.config.tasks.contains(&task)
    }

    /// One real forward pass (encoder and one decoder step) before serving.
    fn warm_up(&self) -> Result<()> {
        let text = self.config.preprocess.apply("Warm-up.");
        let ids = self.engine.encode(&text, Some(self.max_input_tokens))?;
        let cfg = self.defaults.with_overrides(&GenerationOverrides {
            max_length: Some(2),
            max_new_tokens: None,
            min_length: Some(0),
            num_beams: Some(1),
            num_return_sequences: Some(1),
            ..Default::default()
        })?;
        match self
            .engine
            .generate_ids(&[ids], &cfg, &NoObserver)?
            .as_slice()
        {
            [Outcome::Finished(h)] if !h.is_empty() => Ok(()),
            other => anyhow::bail!("unexpected warm-up outcome {other:?}"),
        }
    }
}

/// The models of a server, in config order.
pub struct Pool {
    pub models: Vec<Arc<Model>>,
}

impl Pool {
    fn names(&self) -> String {
        self.models
            .iter()
            .map(|m| m.name().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn by_name(&self, name: &str) -> Result<&Arc<Model>, ApiError> {
        self.models
            .iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::UnknownModel,
                    format!(
                        "unknown model `{}` (available: {})",
                        echo(name),
                        self.names()
                    ),
                )
            })
    }

    /// `/generate`: the named model, or the first one.
    pub fn any(&self, name: Option<&str>) -> Result<&Arc<Model>, ApiError> {
        match name {
            Some(n) => self.by_name(n),
            None => self
                .models
                .first()
                .ok_or_else(|| ApiError::internal("no model loaded")),
        }
    }

    /// A task endpoint: the named model if it serves `task`, else the first that does.
    pub fn for_task(&self, task: Task, name: Option<&str>) -> Result<&Arc<Model>, ApiError> {
        if let Some(n) = name {
            let m = self.by_name(n)?;
            if !m.serves(task) {
                return Err(ApiError::new(
                    ErrorKind::UnknownTask,
                    format!(
                        "model `{n}` does not serve {} (it serves: {})",
                        task.as_str(),
                        m.config
                            .tasks
                            .iter()
                            .map(|t| t.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            return Ok(m);
        }
        self.models.iter().find(|m| m.serves(task)).ok_or_else(|| {
            ApiError::new(
                ErrorKind::UnknownTask,
                format!("no model serves {}", task.as_str()),
            )
        })
    }

    /// `/translate`: the model for `source`→`target` (a model without a configured pair
    /// takes any pair), or the named one.
    pub fn for_translation(
        &self,
        name: Option<&str>,
        source: Option<&str>,
        target: Option<&str>,
    ) -> Result<&Arc<Model>, ApiError> {
        let pair = match (source, target) {
            (Some(s), Some(t)) => Some((s.trim(), t.trim())),
            (None, None) => None,
            _ => {
                return Err(ApiError::validation(
                    "give both source_lang and target_lang, or neither",
                ))
            }
        };
        let matches = |m: &Model| match (&m.config.translation, pair) {
            (Some(p), Some((s, t))) => {
                p.source.eq_ignore_ascii_case(s) && p.target.eq_ignore_ascii_case(t)
            }
            _ => true,
        };
        if let Some(n) = name {
            let m = self.for_task(Task::Translate, Some(n))?;
            if !matches(m) {
                let p = m
                    .config
                    .translation
                    .as_ref()
                    .expect("a pair that did not match");
                return Err(ApiError::new(
                    ErrorKind::UnknownTask,
                    format!(
                        "model `{n}` translates {}→{}, not {}→{}",
                        p.source,
                        p.target,
                        echo(source.unwrap_or_default()),
                        echo(target.unwrap_or_default())
                    ),
                ));
            }
            return Ok(m);
        }
        let translators = || self.models.iter().filter(|m| m.serves(Task::Translate));
        // An exact pair first, then a model that takes any pair.
        translators()
            .find(|m| m.config.translation.is_some() && matches(m))
            .or_else(|| translators().find(|m| matches(m)))
            .ok_or_else(|| {
                let served: Vec<String> = translators()
                    .map(|m| match &m.config.translation {
                        Some(p) => format!("{}→{}", p.source, p.target),
                        None => "any pair".into(),
                    })
                    .collect();
                let wanted = pair
                    .map(|(s, t)| format!("{}→{}", echo(s), echo(t)))
                    .unwrap_or_else(|| "anything".into());
                ApiError::new(
                    ErrorKind::UnknownTask,
                    if served.is_empty() {
                        "no model serves translate".to_string()
                    } else {
                        format!(
                            "no model translates {wanted} (available: {})",
                            served.join(", ")
                        )
                    },
                )
            })
    }
}
