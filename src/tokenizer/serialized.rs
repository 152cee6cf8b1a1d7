//! Tokenizer settings applied to a `tokenizer.json`, as transformers 5 applies the same
//! `from_pretrained` keyword arguments to a checkpoint that ships one: named tokens become
//! special added tokens (new ids after the vocabulary when missing from it),
//! `cls_token` / `sep_token` replace those of the BERT / RoBERTa template, and
//! `do_lower_case` sets the lower-casing of the BERT normalizer.

use anyhow::{bail, Result};
use serde_json::{json, Value};
use tokenizers::{AddedToken, Tokenizer};

use super::settings::TokenizerSettings;

pub fn apply_settings(mut tok: Tokenizer, settings: &TokenizerSettings) -> Result<Tokenizer> {
    let specials: Vec<AddedToken> = settings
        .special_tokens()
        .into_iter()
        .map(|(_, t)| AddedToken::from(t, true).normalized(false))
        .collect();
    tok.add_special_tokens(&specials);
    let (cls, sep) = (settings.cls_token.as_deref(), settings.sep_token.as_deref());
    if settings.do_lower_case.is_none() && cls.is_none() && sep.is_none() {
        return Ok(tok);
    }
    let mut value: Value =
        serde_json::from_str(&tok.to_string(false).map_err(anyhow::Error::msg)?)?;
    if let Some(lower) = settings.do_lower_case {
        if !set_bert_lowercase(&mut value["normalizer"], lower) {
            bail!("do_lower_case: this tokenizer.json has no BERT normalizer to set");
        }
    }
    let with_id = |t: &str| -> Result<(String, u32)> {
        match tok.token_to_id(t) {
            Some(id) => Ok((t.to_string(), id)),
            None => bail!("token {t:?} has no id"),
        }
    };
    let cls = cls.map(with_id).transpose()?;
    let sep = sep.map(with_id).transpose()?;
    replace_template_tokens(&mut value["post_processor"], cls.as_ref(), sep.as_ref());
    value
        .to_string()
        .parse::<Tokenizer>()
        .map_err(anyhow::Error::msg)
}

/// Sets `lowercase` on a `BertNormalizer`, alone or inside a `Sequence`; false if none.
fn set_bert_lowercase(normalizer: &mut Value, lower: bool) -> bool {
    match normalizer["type"].as_str() {
        Some("BertNormalizer") => {
            normalizer["lowercase"] = Value::Bool(lower);
            true
        }
        Some("Sequence") => {
            let mut found = false;
            for n in normalizer["normalizers"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                // Every BERT normalizer of the sequence, not just the first.
                found |= set_bert_lowercase(n, lower);
            }
            found
        }
        _ => false,
    }
}

/// The template's first special token is the cls token and its last the sep token (BERT
/// `[CLS] $A [SEP]`, RoBERTa `<s> $A </s>`); both are replaced wherever they occur.
fn replace_template_tokens(
    post: &mut Value,
    cls: Option<&(String, u32)>,
    sep: Option<&(String, u32)>,
) {
    match post["type"].as_str() {
        Some("BertProcessing" | "RobertaProcessing") => {
            if let Some((t, id)) = cls {
                post["cls"] = json!([t, id]);
            }
            if let Some((t, id)) = sep {
                post["sep"] = json!([t, id]);
            }
        }
        Some("TemplateProcessing") => {
            let special = |piece: &Value| piece["SpecialToken"]["id"].as_str().map(str::to_string);
            let single = post["single"].as_array().cloned().unwrap_or_default();
            let old_cls = single.first().and_then(special);
            let old_sep = single.last().and_then(special);
            let mut renames: Vec<(String, &(String, u32))> = Vec::new();
            if let (Some(old), Some(new)) = (old_cls, cls) {
                renames.push((old, new));
            }
            if let (Some(old), Some(new)) = (old_sep, sep) {
                renames.push((old, new));
            }
            for key in ["single", "pair"] {
                for piece in post[key].as_array_mut().into_iter().flatten() {
                    let Some(id) = special(piece) else { continue };
                    if let Some((_, (t, _))) = renames.iter().find(|(old, _)| *old == id) {
                        piece["SpecialToken"]["id"] = json!(t);
                    }
                }
            }
            for (_, (t, id)) in &renames {
                post["special_tokens"][t.as_str()] = json!({"id": t, "ids": [id], "tokens": [t]});
            }
        }
        _ => {}
    }
}
