//! Helpers the hand-rolled bench binaries share.

use anyhow::{Context, Result};

/// The number after `name` in `args`, or `default` when the flag is absent.
pub fn arg(args: &[String], name: &str, default: usize) -> Result<usize> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .context("missing value")?
            .parse()
            .with_context(|| format!("{name} takes a number")),
        None => Ok(default),
    }
}
