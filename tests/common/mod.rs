//! Helpers shared by the integration tests: fixture paths and transformers' reference outputs.
#![allow(dead_code)]

use std::path::PathBuf;

use encdec::generation::GenerationOverrides;
use serde_json::Value;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub const MODELS: [&str; 7] = [
    "bert2bert",
    "bertshare",
    "roberta2roberta",
    "robertashare",
    "bert2gpt2",
    "roberta2gpt2",
    "bertgeneration2bertgeneration",
];

/// One expected-output file of the fixtures with its generate() kwargs.
pub struct ParamSet {
    pub name: String,
    pub batch_size: usize,
    pub kwargs: Value,
    pub lines: Vec<Value>,
}

impl ParamSet {
    pub fn overrides(&self) -> GenerationOverrides {
        let mut o = serde_json::Map::new();
        for key in [
            "max_length",
            "min_length",
            "num_beams",
            "length_penalty",
            "early_stopping",
            "no_repeat_ngram_size",
            "repetition_penalty",
            "num_return_sequences",
            "max_new_tokens",
        ] {
            if let Some(v) = self.kwargs.get(key) {
                o.insert(key.into(), v.clone());
            }
        }
        serde_json::from_value(Value::Object(o)).expect("fixture kwargs parse as overrides")
    }
}

pub fn param_sets(model: &str) -> Vec<ParamSet> {
    let dir = fixtures().join("expected").join(model);
    let mut out = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.strip_suffix(".jsonl").map(str::to_string)
        })
        .collect();
    names.sort();
    for name in names {
        let meta: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{name}.meta.json"))).unwrap(),
        )
        .unwrap();
        let lines = std::fs::read_to_string(dir.join(format!("{name}.jsonl")))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        out.push(ParamSet {
            name,
            batch_size: meta["batch_size"].as_u64().unwrap() as usize,
            kwargs: meta["generate_kwargs"].clone(),
            lines,
        });
    }
    out
}

/// A transformers output row cut after its first generated EOS (rows of a batch are
/// padded, and with GPT-2 pad = EOS = start).
pub fn trim_row(row: &[u32], eos: &[u32]) -> Vec<u32> {
    match row.iter().skip(1).position(|t| eos.contains(t)) {
        Some(p) => row[..p + 2].to_vec(),
        None => row.to_vec(),
    }
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}
