//! The files transformers reads special tokens from: `tokenizer_config.json`, then
//! `special_tokens_map.json`, the later overriding the earlier (`from_pretrained`).
//! Read here once for the tokenizer loaders and `warmstart`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

/// In the order transformers applies them.
pub const FILES: [&str; 2] = ["tokenizer_config.json", "special_tokens_map.json"];

/// A JSON object file of `dir`; `None` when absent.
pub fn read_object(path: &Path) -> Result<Option<Map<String, Value>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    match serde_json::from_str::<Value>(&text)
        .with_context(|| format!("parsing {}", path.display()))?
    {
        Value::Object(m) => Ok(Some(m)),
        _ => bail!("{} is not a JSON object", path.display()),
    }
}

/// Each of [`FILES`] present in `dir`, in order.
pub fn read_files(dir: &Path) -> Result<Vec<Map<String, Value>>> {
    let mut out = Vec::new();
    for file in FILES {
        out.extend(read_object(&dir.join(file))?);
    }
    Ok(out)
}

/// [`FILES`] merged: a key of `special_tokens_map.json` replaces the same key of
/// `tokenizer_config.json`.
pub fn merged(dir: &Path) -> Result<Map<String, Value>> {
    let mut map = Map::new();
    for file in read_files(dir)? {
        map.extend(file);
    }
    Ok(map)
}

/// A special token's text: stored as a string or as an `AddedToken` object
/// (`{"content": ..., "lstrip": ...}`); `None` for `null` or anything else.
pub fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_tokens_map_overrides_tokenizer_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"eos_token": "</s>", "pad_token": {"content": "<pad>", "lstrip": false}}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("special_tokens_map.json"),
            r#"{"eos_token": {"content": "[SEP]"}}"#,
        )
        .unwrap();
        let m = merged(dir.path()).unwrap();
        assert_eq!(token_content(&m["eos_token"]).as_deref(), Some("[SEP]"));
        assert_eq!(token_content(&m["pad_token"]).as_deref(), Some("<pad>"));
        assert_eq!(read_files(dir.path()).unwrap().len(), 2);
        std::fs::write(dir.path().join("special_tokens_map.json"), "[1]").unwrap();
        let err = merged(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a JSON object"), "{err}");
    }
}
