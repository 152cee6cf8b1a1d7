//! Training checkpoints: a transformers-loadable directory (config, generation config,
//! `model.safetensors`, tokenizer files) plus what resuming needs
//! (`optimizer.safetensors`, `trainer_state.json`).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::optim::AdamW;
use super::params::Params;

pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "trainer_state.json";
pub const LOG_FILE: &str = "train_log.jsonl";

/// Where training stood when a checkpoint was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps taken.
    pub global_step: usize,
    pub total_steps: usize,
    pub seed: u64,
}

/// Files of the source checkpoint that are weights (replaced by our
/// `model.safetensors`) or training state (rewritten), not copied.
fn is_replaced(name: &str) -> bool {
    name.ends_with(".safetensors")
        || name == "model.safetensors.index.json"
        || name.starts_with("pytorch_model")
        || name == STATE_FILE
        || name == LOG_FILE
}

/// Copies config, generation config and tokenizer files (and `decoder_tokenizer/`)
/// from `src` to `dst`.
fn copy_assets(src: &Path, dst: &Path) -> Result<()> {
    for entry in fs::read_dir(src).with_context(|| format!("listing {}", src.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        let path = entry.path();
        if path.is_file() && !is_replaced(&name_str) {
            fs::copy(&path, dst.join(&name))
                .with_context(|| format!("copying {}", path.display()))?;
        } else if path.is_dir() && name_str == "decoder_tokenizer" {
            let sub = dst.join(&name);
            fs::create_dir_all(&sub)?;
            copy_assets(&path, &sub)?;
        }
    }
    Ok(())
}

/// Writes a checkpoint of `params` (and the optimiser) to `dir`, through a temporary
/// directory so that a crash never leaves a half-written checkpoint under that name.
/// `dir` may be the source directory's sibling or an existing output directory.
pub fn save(
    dir: &Path,
    source: &Path,
    params: &Params,
    optimizer: &AdamW,
    state: &TrainerState,
) -> Result<()> {
    let tmp = temp_name(dir);
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    copy_assets(source, &tmp)?;
    candle_core::safetensors::save(&params.tensors_to_save()?, tmp.join("model.safetensors"))
        .context("writing model.safetensors")?;
    let moments: HashMap<String, Tensor> = optimizer
        .state()
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    candle_core::safetensors::save(&moments, tmp.join(OPTIMIZER_FILE))
        .context("writing the optimizer state")?;
    fs::write(tmp.join(STATE_FILE), serde_json::to_string_pretty(state)?)?;
    // Move the files in one by one: `dir` may hold other things (the log, checkpoints).
    fs::create_dir_all(dir)?;
    for entry in fs::read_dir(&tmp)? {
        let entry = entry?;
        let target = dir.join(entry.file_name());
        if target.is_dir() {
            fs::remove_dir_all(&target)?;
        }
        fs::rename(entry.path(), &target)
            .with_context(|| format!("moving {} into place", target.display()))?;
    }
    fs::remove_dir_all(&tmp)?;
    Ok(())
}

fn temp_name(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dir.with_file_name(name)
}

/// The state and optimiser moments of checkpoint `dir`.
pub fn load_state(dir: &Path, device: &Device) -> Result<(TrainerState, HashMap<String, Tensor>)> {
    let state_path = dir.join(STATE_FILE);
    let text = fs::read_to_string(&state_path).with_context(|| {
        format!(
            "{} is not a training checkpoint (no {STATE_FILE})",
            dir.display()
        )
    })?;
    let state: TrainerState =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", state_path.display()))?;
    let moments = candle_core::safetensors::load(dir.join(OPTIMIZER_FILE), device)
        .with_context(|| format!("reading {}", dir.join(OPTIMIZER_FILE).display()))?;
    Ok((state, moments))
}
