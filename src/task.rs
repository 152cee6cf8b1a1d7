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
