//! Helpers shared by the integration tests: fixture paths and transformers' reference outputs.
#![allow(dead_code)]

pub mod hub;

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

/// Every sequence `engine` generates for the fixture inputs of `model`, all parameter
/// sets in turn (batched as recorded), with its `model/set/id[r]` label.
pub fn fixture_sequences(engine: &Engine, model: &str) -> Vec<(String, Vec<u32>)> {
    let mut out = Vec::new();
    for set in param_sets(model) {
        let cfg = engine.defaults().with_overrides(&set.overrides()).unwrap();
        for chunk in set.lines.chunks(set.batch_size) {
            let lines: Vec<&Value> = chunk.iter().filter(|l| l.get("error").is_none()).collect();
            let batch: Vec<Vec<u32>> = lines
                .iter()
                .map(|l| engine.encode(l["input"].as_str().unwrap(), None).unwrap())
                .collect();
            let outcomes = engine.generate_ids(&batch, &cfg, &NoObserver).unwrap();
            for (outcome, line) in outcomes.into_iter().zip(lines) {
                let Outcome::Finished(hyps) = outcome else {
                    panic!("{model}: cancelled")
                };
                for (r, hyp) in hyps.into_iter().enumerate() {
                    let id = format!("{model}/{}/{}[{r}]", set.name, line["id"].as_str().unwrap());
                    out.push((id, hyp.ids));
                }
            }
        }
    }
    out
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

/// `encdec serve` running as a child process (killed on drop), its JSON log lines
/// forwarded on a channel.
pub struct Served {
    pub child: std::process::Child,
    pub logs: std::sync::mpsc::Receiver<Value>,
    /// `http://ADDR` once the server logged `listening`.
    pub url: String,
}

impl Served {
    /// Starts `encdec serve ARGS --log-format json` with `env` added to the environment
    /// (after removing `PORT` and every `ENCDEC_*` variable of the test's own) and waits
    /// up to `wait` for the `listening` log line.
    pub fn start(args: &[&str], env: &[(&str, &str)], wait: std::time::Duration) -> Served {
        Self::start_with(args, env, &[], wait)
    }

    /// [`Served::start`], also removing the variables `remove` from the environment.
    pub fn start_with(
        args: &[&str],
        env: &[(&str, &str)],
        remove: &[&str],
        wait: std::time::Duration,
    ) -> Served {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_encdec"));
        for k in remove {
            cmd.env_remove(k);
        }
        cmd.arg("serve")
            .args(args)
            .args(["--log-format", "json"])
            .env_remove("PORT")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("ENCDEC_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let (tx, logs) = std::sync::mpsc::channel::<Value>();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let v = serde_json::from_str::<Value>(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "fields": { "message": line } }));
                let _ = tx.send(v);
            }
        });
        let end = std::time::Instant::now() + wait;
        let url = loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            let v = match logs.recv_timeout(left) {
                Ok(v) => v,
                Err(_) => {
                    let _ = child.kill();
                    panic!("encdec serve did not log `listening` within {wait:?}")
                }
            };
            if v["fields"]["message"] == "listening" {
                break format!("http://{}", v["fields"]["addr"].as_str().unwrap());
            }
        };
        Served { child, logs, url }
    }

    /// Sends SIGTERM (the shell's builtin `kill`).
    pub fn terminate(&self) {
        let status = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.child.id())])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let end = std::time::Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if std::time::Instant::now() >= end {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request over a fresh connection: (status, headers lower-cased, body).
pub fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, Vec<(String, String)>, String) {
    use std::io::Read;
    let rest = url.strip_prefix("http://").expect("http:// url");
    let (addr, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}
