//! Test-set readers for `encdec eval`, and the reader for existing predictions.
//!
//! Formats ([`DataFormat`]):
//! - `tsv`: `source<TAB>reference[<TAB>reference...]`, no header (WikiSplit).
//!   A file whose first line is the DiscoFuse header is read as `discofuse`.
//! - `discofuse`: DiscoFuse's TSV with its header; input =
//!   `incoherent_first_sentence + " " + incoherent_second_sentence`, reference =
//!   `coherent_first_sentence + " " + coherent_second_sentence`, both trimmed.
//! - `jsonl`: one object per line, `{"source", "reference"}` or
//!   `{"source", "references": [...]}`, optional `"id"`; other keys are ignored.
//! - `parallel`: two line-aligned text files, sources and references (newstest).
//!
//! In every reference WikiSplit's ` <::::> ` sentence separator becomes a space
//! ([`join_sentences`]): the metrics see the sentences joined by a space.
//!
//! Blank lines are skipped in `tsv`, `discofuse` and `jsonl`; in `parallel`
//! files every line is an example. Errors name the file and the line.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::Value;

/// WikiSplit's sentence-boundary marker in references.
pub const SENTENCE_SEPARATOR: &str = "<::::>";

/// The DiscoFuse columns `eval` reads.
const DISCOFUSE_COLUMNS: [&str; 4] = [
    "coherent_first_sentence",
    "coherent_second_sentence",
    "incoherent_first_sentence",
    "incoherent_second_sentence",
];

/// One test example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The JSONL `id` when given, else the 0-based example index.
    pub id: Value,
    /// Model input.
    pub source: String,
    /// One or more references (never empty).
    pub references: Vec<String>,
}

/// Layout of a test-set file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    Tsv,
    DiscoFuse,
    Jsonl,
    Parallel,
}

impl DataFormat {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tsv => "tsv",
            Self::DiscoFuse => "discofuse",
            Self::Jsonl => "jsonl",
            Self::Parallel => "parallel",
        }
    }

    /// The format when none is given: `parallel` with a reference file, else
    /// by extension (`.tsv`, `.jsonl`/`.json`).
    pub fn infer(data: &Path, reference: Option<&Path>) -> Result<Self, DataError> {
        if reference.is_some() {
            return Ok(Self::Parallel);
        }
        match data.extension().and_then(|e| e.to_str()) {
            Some("tsv") => Ok(Self::Tsv),
            Some("jsonl" | "json") => Ok(Self::Jsonl),
            _ => Err(DataError::Other(format!(
                "cannot tell the format of {} from its name; pass --format tsv|discofuse|jsonl|parallel \
                 (parallel also needs --data-ref)",
                data.display()
            ))),
        }
    }
}

impl fmt::Display for DataFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DataFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tsv" => Ok(Self::Tsv),
            "discofuse" => Ok(Self::DiscoFuse),
            "jsonl" => Ok(Self::Jsonl),
            "parallel" => Ok(Self::Parallel),
            other => Err(format!(
                "unknown data format `{other}` (use tsv, discofuse, jsonl or parallel)"
            )),
        }
    }
}

/// A data or predictions file that can't be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}:{line}: {msg}", file.display())]
    Line {
        file: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("reading {}: {source}", file.display())]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

fn line_error(file: &Path, line: usize, msg: impl Into<String>) -> DataError {
    DataError::Line {
        file: file.to_path_buf(),
        line,
        msg: msg.into(),
    }
}

/// Where to read a test set from.
#[derive(Debug, Clone, Copy)]
pub struct DataSpec<'a> {
    pub data: &'a Path,
    /// Reference file of the `parallel` format.
    pub reference: Option<&'a Path>,
    /// `None`: [`DataFormat::infer`].
    pub format: Option<DataFormat>,
    /// Keep only the first N examples.
    pub limit: Option<usize>,
}

/// A loaded test set.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub format: DataFormat,
    pub examples: Vec<Example>,
}

impl Dataset {
    pub fn sources(&self) -> Vec<String> {
        self.examples.iter().map(|e| e.source.clone()).collect()
    }

    pub fn references(&self) -> Vec<Vec<String>> {
        self.examples.iter().map(|e| e.references.clone()).collect()
    }
}

/// Reads a test set.
pub fn load(spec: &DataSpec<'_>) -> Result<Dataset, DataError> {
    let mut format = match spec.format {
        Some(f) => f,
        None => DataFormat::infer(spec.data, spec.reference)?,
    };
    if spec.reference.is_some() && format != DataFormat::Parallel {
        return Err(DataError::Other(format!(
            "a reference file (--data-ref) only goes with --format parallel, not {format}"
        )));
    }
    let limit = spec.limit.unwrap_or(usize::MAX);
    let text = read_text(spec.data)?;
    let examples = match format {
        DataFormat::Tsv | DataFormat::DiscoFuse => {
            let first = text.lines().find(|l| !l.trim().is_empty());
            let has_header = first.is_some_and(is_discofuse_header);
            if has_header {
                format = DataFormat::DiscoFuse;
                parse_discofuse(spec.data, &text, limit)?
            } else if format == DataFormat::DiscoFuse {
                return Err(line_error(
                    spec.data,
                    1,
                    format!(
                        "expected the DiscoFuse header (columns {})",
                        DISCOFUSE_COLUMNS.join(", ")
                    ),
                ));
            } else {
                parse_tsv(spec.data, &text, limit)?
            }
        }
        DataFormat::Jsonl => parse_jsonl(spec.data, &text, limit)?,
        DataFormat::Parallel => {
            let reference = spec.reference.ok_or_else(|| {
                DataError::Other(
                    "--format parallel needs the reference file too (--data-ref FILE)".into(),
                )
            })?;
            let ref_text = read_text(reference)?;
            parse_parallel(spec.data, &text, reference, &ref_text, limit)?
        }
    };
    if examples.is_empty() {
        return Err(DataError::Other(format!(
            "{} holds no examples",
            spec.data.display()
        )));
    }
    Ok(Dataset { format, examples })
}

/// Replaces WikiSplit's `<::::>` sentence boundaries by single spaces (each
/// sentence trimmed); text without the marker is returned unchanged.
pub fn join_sentences(text: &str) -> String {
    if !text.contains(SENTENCE_SEPARATOR) {
        return text.to_string();
    }
    text.split(SENTENCE_SEPARATOR)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The file as UTF-8 text without a byte-order mark; invalid UTF-8 is reported
/// with its line.
fn read_text(file: &Path) -> Result<String, DataError> {
    let bytes = std::fs::read(file).map_err(|source| DataError::Io {
        file: file.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let bad = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..bad].iter().filter(|&&b| b == b'\n').count() + 1;
        line_error(file, line, "not valid UTF-8")
    })?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// Lines with their 1-based numbers (`\n` or `\r\n` endings).
fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l))
}

fn is_discofuse_header(line: &str) -> bool {
    let cols: Vec<&str> = line.split('\t').map(str::trim).collect();
    DISCOFUSE_COLUMNS.iter().all(|c| cols.contains(c))
}

fn parse_tsv(file: &Path, text: &str, limit: usize) -> Result<Vec<Example>, DataError> {
    let mut out = Vec::new();
    for (n, line) in numbered_lines(text) {
        if out.len() == limit {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() < 2 {
            return Err(line_error(
                file,
                n,
                "expected `source<TAB>reference`, found no tab",
            ));
        }
        out.push(Example {
            id: Value::from(out.len()),
            source: fields[0].to_string(),
            references: fields[1..].iter().map(|r| join_sentences(r)).collect(),
        });
    }
    Ok(out)
}

fn parse_discofuse(file: &Path, text: &str, limit: usize) -> Result<Vec<Example>, DataError> {
    let mut lines = numbered_lines(text).filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Ok(Vec::new());
    };
    let header: Vec<&str> = header.split('\t').map(str::trim).collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|c| *c == name)
            .expect("checked header")
    };
    let [cf, cs, inf, ins] = DISCOFUSE_COLUMNS.map(col);
    let mut out = Vec::new();
    for (n, line) in lines {
        if out.len() == limit {
            break;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != header.len() {
            return Err(line_error(
                file,
                n,
                format!(
                    "expected {} tab-separated columns as in the header, found {}",
                    header.len(),
                    fields.len()
                ),
            ));
        }
        let join = |a: usize, b: usize| format!("{} {}", fields[a], fields[b]).trim().to_string();
        out.push(Example {
            id: Value::from(out.len()),
            source: join(inf, ins),
            references: vec![join_sentences(&join(cf, cs))],
        });
    }
    Ok(out)
}

fn parse_jsonl(file: &Path, text: &str, limit: usize) -> Result<Vec<Example>, DataError> {
    let mut out = Vec::new();
    for (n, line) in numbered_lines(text) {
        if out.len() == limit {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let err = |msg: String| line_error(file, n, msg);
        let value: Value =
            serde_json::from_str(line).map_err(|e| err(format!("invalid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(err("expected a JSON object".into()));
        };
        let source = match obj.get("source") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(err("`source` must be a string".into())),
            None => return Err(err("missing `source`".into())),
        };
        let references = match (obj.get("reference"), obj.get("references")) {
            (Some(_), Some(_)) => {
                return Err(err("give `reference` or `references`, not both".into()))
            }
            (Some(Value::String(r)), None) => vec![join_sentences(r)],
            (Some(_), None) => return Err(err("`reference` must be a string".into())),
            (None, Some(Value::Array(refs))) if !refs.is_empty() => refs
                .iter()
                .map(|r| r.as_str().map(join_sentences))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| err("`references` must be a list of strings".into()))?,
            (None, Some(_)) => {
                return Err(err(
                    "`references` must be a non-empty list of strings".into()
                ))
            }
            (None, None) => return Err(err("missing `reference` (or `references`)".into())),
        };
        let id = match obj.get("id") {
            None | Some(Value::Null) => Value::from(out.len()),
            Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
            Some(_) => return Err(err("`id` must be a string or a number".into())),
        };
        out.push(Example {
            id,
            source,
            references,
        });
    }
    Ok(out)
}

fn parse_parallel(
    file: &Path,
    text: &str,
    ref_file: &Path,
    ref_text: &str,
    limit: usize,
) -> Result<Vec<Example>, DataError> {
    let sources: Vec<&str> = text.lines().collect();
    let references: Vec<&str> = ref_text.lines().collect();
    if sources.len() != references.len() {
        return Err(DataError::Other(format!(
            "parallel files are not aligned: {} has {} lines, {} has {}",
            file.display(),
            sources.len(),
            ref_file.display(),
            references.len()
        )));
    }
    Ok(sources
        .into_iter()
        .zip(references)
        .take(limit)
        .enumerate()
        .map(|(i, (s, r))| Example {
            id: Value::from(i),
            source: s.to_string(),
            references: vec![join_sentences(r)],
        })
        .collect())
}

/// Reads predictions to score: JSONL objects with `prediction`, `text` (or
/// `encdec generate`'s `texts`, first one; its `{"error"}` lines are empty
/// predictions), or else plain text with one prediction per line (blank lines
/// are empty predictions). JSONL is assumed when the first line is a JSON
/// object with one of those keys.
pub fn load_predictions(file: &Path) -> Result<Vec<String>, DataError> {
    let text = read_text(file)?;
    let is_jsonl = text
        .lines()
        .next()
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .is_some_and(|v| prediction_of(&v).is_some());
    if !is_jsonl {
        return Ok(text.lines().map(str::to_string).collect());
    }
    let mut out = Vec::new();
    for (n, line) in numbered_lines(&text) {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line)
            .map_err(|e| line_error(file, n, format!("invalid JSON: {e}")))?;
        let p = prediction_of(&value).ok_or_else(|| {
            line_error(
                file,
                n,
                "expected a JSON object with a string `prediction` or `text` (or a list `texts`)",
            )
        })?;
        out.push(p.to_string());
    }
    Ok(out)
}

fn prediction_of(value: &Value) -> Option<&str> {
    let obj = value.as_object()?;
    for key in ["prediction", "text"] {
        if let Some(v) = obj.get(key) {
            return v.as_str();
        }
    }
    match obj.get("texts") {
        Some(texts) => texts.as_array()?.first()?.as_str(),
        // `encdec generate`'s line for an input that failed: an empty prediction.
        None => obj.get("error").is_some_and(Value::is_string).then_some(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentence_separator_becomes_a_space() {
        assert_eq!(join_sentences("A b . <::::> C d ."), "A b . C d .");
        assert_eq!(join_sentences("A .<::::>B . <::::>  C ."), "A . B . C .");
        assert_eq!(join_sentences("no marker  here "), "no marker  here ");
    }

    #[test]
    fn discofuse_header_detection() {
        assert!(is_discofuse_header(
            "coherent_first_sentence\tcoherent_second_sentence\tincoherent_first_sentence\tincoherent_second_sentence\tdiscourse_type"
        ));
        assert!(!is_discofuse_header("a sentence\tits reference"));
    }
}
