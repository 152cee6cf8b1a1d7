//! `encdec serve`: load the configured models, then serve them over HTTP.
//!
//! ```text
//! encdec serve --config config/default.toml
//! encdec serve --model google/roberta2roberta_L-24_bbc --task summarize --port 8080
//! MODEL_ID=google/roberta2roberta_L-24_bbc TASK=summarize API_KEY=secret encdec serve
//! ENCDEC_BATCHING__MAX_WAIT_MS=10 encdec serve --config c.toml --set limits.queue_capacity=64
//! ```
//! Settings: the file, then `PORT`, then `ENCDEC_…` variables, then `--set`, then the
//! dedicated flags below, each of which also has a TEI-style variable (`MODEL_ID`,
//! `REVISION`, `TASK`, `DEVICE`, `DTYPE`, `REPLICAS`, `HOST`, `LOG_FORMAT`, `JSON_OUTPUT`,
//! `API_KEY`, `CORS_ALLOW_ORIGIN`; see `crate::server::config`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use tracing_subscriber::EnvFilter;

use crate::server::config::{Config, LogFormat, Task, CONFIG_ENV};

/// The TEI-style variables of the flags below (and `ENCDEC_CONFIG`).
pub const ENV_VARS: [&str; 12] = [
    CONFIG_ENV,
    "MODEL_ID",
    "REVISION",
    "TASK",
    "DEVICE",
    "DTYPE",
    "REPLICAS",
    "HOST",
    "LOG_FORMAT",
    "JSON_OUTPUT",
    "API_KEY",
    "CORS_ALLOW_ORIGIN",
];

/// Removes the [`ENV_VARS`] that are set but empty, so that they count as unset
/// (compose files write `API_KEY: ${API_KEY:-}`). Call before parsing, while the
/// process has one thread.
pub fn drop_empty_env_vars() {
    for name in ENV_VARS {
        if std::env::var_os(name).is_some_and(|v| v.is_empty()) {
            std::env::remove_var(name);
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// TOML config file (see config/default.toml).
    #[arg(long, env = CONFIG_ENV, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Serve one model without a config file: a checkpoint directory or a hub id. With
    /// --config, replaces the file's models.
    #[arg(long, env = "MODEL_ID", value_name = "DIR|HUB_ID")]
    pub model: Option<String>,
    /// Hub revision for --model.
    #[arg(long, env = "REVISION")]
    pub revision: Option<String>,
    /// Tasks --model serves (repeatable or comma-separated; default all).
    #[arg(long = "task", env = "TASK", value_delimiter = ',')]
    pub tasks: Vec<Task>,
    /// Device for --model: cpu, cuda or cuda:N.
    #[arg(long, env = "DEVICE")]
    pub device: Option<String>,
    /// Weights dtype for --model: f32, f16, bf16 or int8.
    #[arg(long, env = "DTYPE")]
    pub dtype: Option<String>,
    /// Worker threads for --model.
    #[arg(long, env = "REPLICAS")]
    pub replicas: Option<usize>,
    /// Address to listen on (server.host). Not read from HOSTNAME, which Docker and
    /// Kubernetes set to the container's name: binding that would shut out 127.0.0.1
    /// (health checks, port-forwards).
    #[arg(long, alias = "hostname", env = "HOST")]
    pub host: Option<String>,
    /// Port to listen on (server.port; the PORT variable is read below ENCDEC_SERVER__PORT).
    #[arg(long)]
    pub port: Option<u16>,
    /// Log format, text or json (server.log_format).
    #[arg(long, env = "LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// Log one JSON object per line (same as --log-format json).
    #[arg(
        long,
        env = "JSON_OUTPUT",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub json_output: bool,
    /// Require `Authorization: Bearer KEY` on every route but /health (server.api_key).
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Origins allowed by CORS, `*` for any (repeatable or comma-separated;
    /// server.cors_allow_origins).
    #[arg(long, env = "CORS_ALLOW_ORIGIN", value_delimiter = ',')]
    pub cors_allow_origin: Vec<String>,
    /// Override any setting by its path, e.g. `--set batching.max_wait_ms=10` or
    /// `--set models.summarize.replicas=2` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Print the effective configuration as TOML and exit without loading models.
    #[arg(long)]
    pub check_config: bool,
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The effective configuration of `args` and the environment `env`.
pub fn config_from(args: &Args, env: impl IntoIterator<Item = (String, String)>) -> Result<Config> {
    let single = args.model.as_deref().map(|source| {
        let mut m = Config::single_model(source, &args.tasks);
        m.revision = args.revision.clone();
        if let Some(d) = &args.device {
            m.device = d.clone();
        }
        if let Some(d) = &args.dtype {
            m.dtype = d.clone();
        }
        if let Some(r) = args.replicas {
            m.replicas = r;
        }
        m
    });
    if single.is_none() {
        // Checked here, not by clap `requires`: these also come from the environment,
        // where a stray DEVICE must not stop a config-file start.
        for (given, flag) in [
            (args.revision.is_some(), "--revision (REVISION)"),
            (!args.tasks.is_empty(), "--task (TASK)"),
            (args.device.is_some(), "--device (DEVICE)"),
            (args.dtype.is_some(), "--dtype (DTYPE)"),
            (args.replicas.is_some(), "--replicas (REPLICAS)"),
        ] {
            if given {
                eprintln!("warning: {flag} applies to --model (MODEL_ID) only; ignored");
            }
        }
    }
    if args.config.is_none() && single.is_none() {
        anyhow::bail!("give --config PATH (or {CONFIG_ENV}) or --model DIR|HUB_ID");
    }
    let mut sets = args.set.clone();
    if let Some(h) = &args.host {
        sets.push(format!("server.host={}", quoted(h)));
    }
    if let Some(p) = args.port {
        sets.push(format!("server.port={p}"));
    }
    if let Some(f) = &args.log_format {
        sets.push(format!("server.log_format={}", quoted(f)));
    }
    if args.json_output {
        sets.push("server.log_format=\"json\"".into());
    }
    if let Some(k) = &args.api_key {
        sets.push(format!("server.api_key={}", quoted(k)));
    }
    if !args.cors_allow_origin.is_empty() {
        let list: Vec<String> = args
            .cors_allow_origin
            .iter()
            .map(|o| quoted(o.trim()))
            .collect();
        sets.push(format!("server.cors_allow_origins=[{}]", list.join(", ")));
    }
    let config = Config::load(
        args.config.as_deref(),
        single.map(|m| vec![m]).as_deref(),
        env,
        &sets,
    )?;
    config.validate()?;
    Ok(config)
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

pub fn run(args: Args) -> Result<()> {
    let config = config_from(&args, std::env::vars())?;
    if args.check_config {
        print!(
            "{}",
            toml::to_string_pretty(&config).context("printing the config")?
        );
        return Ok(());
    }
    init_logging(config.server.log_format);
    for name in crate::server::config::ignored_env_vars(std::env::vars()) {
        // e.g. Kubernetes service links (ENCDEC_PORT=tcp://…) for a Service named encdec.
        tracing::debug!(variable = %name, "ignored: not ENCDEC_<SECTION>__<KEY> for a config section");
    }
    let addr = format!("{}:{}", config.server.host, config.server.port);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("encdec-http")
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    // Listen first, load meanwhile: /health answers at once, /ready once loaded.
    let result = runtime.block_on(async move {
        let shutdown = crate::server::shutdown_signal();
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        crate::server::serve_loading(config, listener, shutdown).await
    });
    // Don't wait for threads stuck past the grace period.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}
