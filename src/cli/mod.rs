//! The `encdec` command line: one binary, one subcommand per job.
//! Each subcommand lives in its own module with an `Args` struct and a `run` function.

use clap::{Parser, Subcommand};

pub mod download;
pub mod eval;
pub mod finetune;
pub mod flags;
pub mod generate;
pub mod serve;
pub mod warmstart;

#[derive(Debug, Parser)]
#[command(
    name = "encdec",
    version,
    about = "Serve warm-started encoder-decoder models"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the HTTP service.
    Serve(serve::Args),
    /// Generate from JSONL on stdin, one JSONL result per input on stdout.
    Generate(generate::Args),
    /// Pre-fetch hub models (one, or every model of a config) into the local cache.
    Download(download::Args),
    /// Score a checkpoint (or existing predictions) on a task's test set.
    Eval(eval::Args),
    /// Compose an EncoderDecoderModel from standalone (or random) checkpoints.
    Warmstart(warmstart::Args),
    /// Fine-tune a checkpoint on a task's data (transformers' Seq2SeqTrainer step).
    Finetune(finetune::Args),
}

/// Entry point shared by the binary and tests.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Download(args) => download::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Warmstart(args) => warmstart::run(args),
        Command::Finetune(args) => finetune::run(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    #[test]
    fn command_line_is_consistent() {
        super::Cli::command().debug_assert();
        let cli = super::Cli::try_parse_from(["encdec", "download", "--config", "c.toml"]).unwrap();
        assert!(matches!(cli.command, super::Command::Download(_)));
        assert!(super::Cli::try_parse_from(["encdec", "download"]).is_err());
        assert!(
            super::Cli::try_parse_from(["encdec", "download", "x", "--config", "c.toml"]).is_err()
        );
    }
}
