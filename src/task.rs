//! The four tasks of the paper: what an endpoint serves and how a test set is scored.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A task: an HTTP endpoint (`/generate` serves every model) and an `eval` metric set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Summarize,
    Translate,
    Split,
    Fuse,
}

impl Task {
    pub const ALL: [Task; 4] = [Task::Summarize, Task::Translate, Task::Split, Task::Fuse];

    /// Generated tokens at most when neither the checkpoint (`max_length` /
    /// `max_new_tokens` in generation_config.json or config.json) nor the model's config
    /// says: transformers' own default of 20 tokens (`max_length` 20) cuts a split, fused
    /// or translated sentence short. Summaries keep the checkpoint's defaults.
    pub fn default_max_new_tokens(self) -> Option<usize> {
        match self {
            Task::Summarize => None,
            Task::Split | Task::Fuse => Some(128),
            Task::Translate => Some(256),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Task::Summarize => "summarize",
            Task::Translate => "translate",
            Task::Split => "split",
            Task::Fuse => "fuse",
        }
    }
}

impl std::str::FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Task::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown task `{s}` (summarize, translate, split, fuse)"))
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
