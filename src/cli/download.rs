//! `encdec download MODEL_ID [--revision R]` or `encdec download --config FILE`: pre-fetch
//! hub models into the local Hugging Face cache (`HF_HUB_CACHE`, `$HF_HOME/hub`, ...) and
//! print each local directory, one a line.
//!
//! Used by the Kubernetes init container (`--config`: every model of the serve config,
//! at its pinned revision) and the Docker image to warm the cache, so that `serve` can
//! then start with `HF_HUB_OFFLINE=1`.

use std::path::PathBuf;

use anyhow::Context;

use crate::hub::{resolve_model_dir, HubOptions};
use crate::server::config::{Config, CONFIG_ENV};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Hub model id, e.g. `google/roberta2roberta_L-24_bbc` (a local directory is printed as is).
    #[arg(value_name = "MODEL_ID", required_unless_present = "config")]
    pub model_id: Option<String>,

    /// Branch, tag or commit hash to fetch (default: main).
    #[arg(long, value_name = "R", conflicts_with = "config")]
    pub revision: Option<String>,

    /// Fetch every model of this serve config (with its `ENCDEC_…` overrides), each at
    /// its `revision`.
    #[arg(long, value_name = "PATH", conflicts_with = "model_id")]
    pub config: Option<PathBuf>,

    /// Do not draw progress bars (they are only drawn on a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Log lines go to stderr so that stdout carries only the directories. A subscriber
    // set up earlier by the binary wins.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let wanted: Vec<(String, Option<String>)> = match (&args.config, args.model_id) {
        (Some(path), _) => {
            let env = std::env::vars().filter(|(k, _)| k != CONFIG_ENV);
            let config = Config::load(Some(path), None, env, &[])?;
            if config.models.is_empty() {
                anyhow::bail!("{}: no [[models]] to download", path.display());
            }
            config
                .models
                .into_iter()
                .map(|m| (m.source, m.revision))
                .collect()
        }
        (None, Some(id)) => vec![(id, args.revision)],
        (None, None) => anyhow::bail!("give MODEL_ID or --config PATH"),
    };
    for (source, revision) in wanted {
        let opts = HubOptions {
            revision,
            progress: !args.no_progress,
        };
        let dir =
            resolve_model_dir(&source, &opts).with_context(|| format!("downloading `{source}`"))?;
        println!("{}", dir.display());
    }
    Ok(())
}
