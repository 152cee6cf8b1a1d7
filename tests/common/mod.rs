//! Helpers shared by the integration tests: fixture paths and transformers' reference outputs.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use encdec::engine::{Engine, EngineOptions};
use encdec::generation::{GenerationOverrides, NoObserver, Outcome};
use encdec::tokenizer::InputError;
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

pub const SCORE_TOL: f64 = 1e-4;

/// Runs `dir` on the inputs of `model`'s reference outputs (all parameter sets, or those
/// named in `only`) and asserts transformers' ids, scores, token log-probs and texts.
pub fn check_against_fixtures(model: &str, dir: &Path, only: Option<&[&str]>) {
    let engine = Engine::load(dir, &EngineOptions::default())
        .unwrap_or_else(|e| panic!("loading {}: {e:#}", dir.display()));
    let mut failures = Vec::new();
    let mut checked = 0;
    for set in param_sets(model) {
        if only.is_some_and(|o| !o.contains(&set.name.as_str())) {
            continue;
        }
        let cfg = engine.defaults().with_overrides(&set.overrides()).unwrap();
        // The checkpoint's resolved special ids must be the ones transformers used.
        assert_eq!(
            cfg.decoder_start_token_id as u64,
            set.kwargs["decoder_start_token_id"].as_u64().unwrap(),
            "{model}: decoder_start_token_id"
        );
        assert_eq!(
            cfg.eos_token_ids,
            vec![set.kwargs["eos_token_id"].as_u64().unwrap() as u32],
            "{model}: eos"
        );
        for chunk in set.lines.chunks(set.batch_size) {
            let mut batch = Vec::new();
            let mut positions = Vec::new();
            for (i, line) in chunk.iter().enumerate() {
                let text = line["input"].as_str().unwrap();
                let encoded = engine.encode(text, None);
                if line.get("error").is_some() {
                    assert_eq!(encoded, Err(InputError::Empty), "{model}: {}", line["id"]);
                    continue;
                }
                let encoded = encoded.unwrap();
                assert_eq!(
                    encoded,
                    ids(&line["input_ids"]),
                    "{model}: input ids of {}",
                    line["id"]
                );
                batch.push(encoded);
                positions.push(i);
            }
            let outcomes = engine.generate_ids(&batch, &cfg, &NoObserver).unwrap();
            for (outcome, &i) in outcomes.into_iter().zip(&positions) {
                let line = &chunk[i];
                let id = format!("{}/{}/{}", model, set.name, line["id"].as_str().unwrap());
                let Outcome::Finished(hyps) = outcome else {
                    panic!("{id}: cancelled")
                };
                let rows = line["output_ids"].as_array().unwrap();
                assert_eq!(hyps.len(), rows.len(), "{id}: number of sequences");
                for (r, (hyp, row)) in hyps.iter().zip(rows).enumerate() {
                    checked += 1;
                    let want = trim_row(&ids(row), &cfg.eos_token_ids);
                    if hyp.ids != want {
                        failures.push(format!(
                            "{id}[{r}]: ids\n  got  {:?}\n  want {:?}",
                            hyp.ids, want
                        ));
                        continue;
                    }
                    let want_score = line["sequence_scores"][r].as_f64().unwrap();
                    if (hyp.score as f64 - want_score).abs() > SCORE_TOL {
                        failures.push(format!("{id}[{r}]: score {} vs {}", hyp.score, want_score));
                    }
                    let want_lp = floats(&line["token_logprobs"][r]);
                    for (k, (g, w)) in hyp.token_logprobs.iter().zip(&want_lp).enumerate() {
                        if (*g as f64 - w).abs() > SCORE_TOL {
                            failures.push(format!("{id}[{r}]: token_logprob {k}: {g} vs {w}"));
                            break;
                        }
                    }
                    let text = engine.decode(&hyp.ids).unwrap();
                    let want_text = line["output_text"][r].as_str().unwrap();
                    if text != want_text {
                        failures.push(format!("{id}[{r}]: text {text:?} vs {want_text:?}"));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} sequences differ from transformers:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 0);
}

/// Runs the `encdec` binary with `args`, feeding it `stdin`.
pub fn run_encdec(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_encdec"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.as_bytes()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}
