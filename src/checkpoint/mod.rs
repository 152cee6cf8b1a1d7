//! A checkpoint on disk: `config.json`, `generation_config.json` and weight files.

pub mod config;
pub mod dtype;
pub mod legacy_pth;
mod safetensors_files;
pub mod special_tokens;
pub mod weights;
