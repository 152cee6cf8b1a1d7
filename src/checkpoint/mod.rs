//! A checkpoint on disk: `config.json`, `generation_config.json` and weight files.

pub mod config;
pub mod weights;
