//! `encdec download MODEL_ID [--revision R]`: pre-fetch a hub model into the local
//! Hugging Face cache (`HF_HUB_CACHE`, `$HF_HOME/hub`, ...) and print the local directory.
//!
//! Used by the Kubernetes init container and the Docker image to warm the cache, so that
//! `serve` can then start with `HF_HUB_OFFLINE=1`.

use crate::hub::{resolve_model_dir, HubOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Hub model id, e.g. `google/roberta2roberta_L-24_bbc` (a local directory is printed as is).
    #[arg(value_name = "MODEL_ID")]
    pub model_id: String,

    /// Branch, tag or commit hash to fetch (default: main).
    #[arg(long, value_name = "R")]
    pub revision: Option<String>,

    /// Do not draw progress bars (they are only drawn on a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Log lines go to stderr so that stdout carries only the directory. A subscriber set
    // up earlier by the binary wins.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let opts = HubOptions {
        revision: args.revision,
        progress: !args.no_progress,
    };
    let dir = resolve_model_dir(&args.model_id, &opts)?;
    println!("{}", dir.display());
    Ok(())
}
