//! `encdec serve` end to end: real servers on 127.0.0.1 ephemeral ports serving the
//! fixture checkpoints (tiny random weights), driven over HTTP.
//!
//! Most tests share one server; the ones that need their own limits (burst batching,
//! queue overflow, deadlines, shutdown) start a small one. One test runs the binary to
//! check SIGTERM handling. Every wait is a bounded poll.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use encdec::engine::{Engine, EngineOptions};
use encdec::generation::{GenerationOverrides, Outcome};
use encdec::server::{self, Config, ServerHandle};
use serde_json::{json, Value};

fn fixture(name: &str) -> String {
    format!(
        "{}/tests/fixtures/models/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn start(toml: &str) -> ServerHandle {
    let config = Config::from_toml_str(toml).expect("test config parses");
    let loaded = server::load(config).expect("models load");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    server::start(loaded, listener, 2).expect("server starts")
}

/// One model, for the tests that need their own server.
fn single_model_toml(server: &str, limits: &str, batching: &str) -> String {
    format!(
        r#"
[server]
host = "127.0.0.1"
port = 0
{server}
[limits]
{limits}
[batching]
{batching}
[[models]]
name = "b2b"
source = "{}"
tasks = ["summarize"]
"#,
        fixture("bert2bert")
    )
}

const MAIN_TOML: &str = r#"
[server]
host = "127.0.0.1"
port = 0
[limits]
max_payload_bytes = 16384
max_inputs_per_request = 4
input_overflow = "reject"
max_new_tokens = 40
max_num_beams = 4
queue_capacity = 64
[batching]
max_wait_ms = 2

[[models]]
name = "sum"
source = "FIXTURES/bert2bert"
tasks = ["summarize"]
[models.generation]
max_length = 12

[[models]]
name = "split"
source = "FIXTURES/robertashare"
tasks = ["split"]
[models.generation]
max_length = 10
[models.preprocess]
prefix = "<s>"
suffix = "</s>"
max_input_tokens = 24

[[models]]
name = "fuse"
source = "FIXTURES/roberta2roberta"
tasks = ["fuse"]
[models.generation]
max_length = 10
[models.preprocess]
replace = [{ from = '"', to = "`" }]
[models.postprocess]
replace = [{ from = " ", to = "_" }]

[[models]]
name = "en-de"
source = "FIXTURES/bert2gpt2"
tasks = ["translate"]
translation = { source = "en", target = "de" }
[models.generation]
max_length = 8

[[models]]
name = "de-en"
source = "FIXTURES/bertgeneration2bertgeneration"
tasks = ["translate"]
translation = { source = "de", target = "en" }
[models.generation]
max_length = 8
"#;

/// The shared server (never shut down; the process exit ends it).
fn main_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let toml = MAIN_TOML.replace("FIXTURES", fixture("").trim_end_matches('/'));
        let handle = start(&toml);
        let url = handle.url();
        std::mem::forget(handle);
        url
    })
}

struct Resp {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Asserts an error response with `status` and `code`.
    fn error(&self, status: u16, code: &str) -> &Self {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.json()["error"], code, "{}", self.body);
        assert!(self.json()["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        self
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
}

fn request(method: &str, url: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Resp {
    let mut req = agent().request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let res = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .map(|h| {
            let v = resp.header(&h).unwrap_or_default().to_string();
            (h.to_ascii_lowercase(), v)
        })
        .collect();
    Resp {
        status,
        headers,
        body: resp.into_string().unwrap_or_default(),
    }
}

fn post(base: &str, path: &str, body: &Value) -> Resp {
    request(
        "POST",
        &format!("{base}{path}"),
        Some(&body.to_string()),
        &[("content-type", "application/json")],
    )
}

/// Posts every body at once (one thread each); asserts 200s, returns the JSON in order.
fn post_all_ok(base: &str, path: &str, bodies: &[Value]) -> Vec<Value> {
    std::thread::scope(|s| {
        let threads: Vec<_> = bodies
            .iter()
            .map(|b| {
                s.spawn(move || {
                    let r = post(base, path, b);
                    assert_eq!(r.status, 200, "{}", r.body);
                    r.json()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

fn get(base: &str, path: &str) -> Resp {
    request("GET", &format!("{base}{path}"), None, &[])
}

/// Sum of the samples of `name` whose labels include all of `labels`.
fn metric(base: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = get(base, "/metrics").body;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `cond` every 10 ms for at most `secs` seconds.
fn wait_until(secs: f64, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Sends a request on a raw connection and leaves it open; dropping it disconnects.
fn open_request(addr: SocketAddr, path: &str, body: &Value) -> TcpStream {
    let body = body.to_string();
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

/// What the engine itself generates for `text` (the `encdec generate` code path).
fn engine_output(
    model: &str,
    text: &str,
    max_tokens: Option<usize>,
    o: GenerationOverrides,
) -> Vec<(String, f32)> {
    let e = Engine::load(
        std::path::Path::new(&fixture(model)),
        &EngineOptions::default(),
    )
    .unwrap();
    let cfg = e.defaults().with_overrides(&o).unwrap();
    let ids = e.encode(text, max_tokens).unwrap();
    let Outcome::Finished(h) = e
        .generate_ids(&[ids], &cfg, &encdec::generation::NoObserver)
        .unwrap()
        .remove(0)
    else {
        panic!("cancelled")
    };
    e.with_texts(h)
        .unwrap()
        .into_iter()
        .map(|g| (g.text, g.hypothesis.score))
        .collect()
}

fn text_and_score(v: &Value) -> (String, f32) {
    (
        v["text"].as_str().expect("text").to_string(),
        v["score"].as_f64().expect("score") as f32,
    )
}

fn assert_same(server: &[(String, f32)], engine: &[(String, f32)]) {
    assert_eq!(server.len(), engine.len());
    for ((ts, ss), (te, se)) in server.iter().zip(engine) {
        assert_eq!(ts, te);
        assert!((ss - se).abs() <= 1e-4 * se.abs().max(1.0), "{ss} vs {se}");
    }
}

#[test]
fn info_health_docs_and_metrics() {
    let url = main_url();
    assert_eq!(get(url, "/health").json()["status"], "ok");
    assert_eq!(get(url, "/ready").json()["status"], "ready");
    let info = get(url, "/info").json();
    assert_eq!(info["ready"], true);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    let models = info["models"].as_array().unwrap();
    assert_eq!(models.len(), 5);
    assert_eq!(models[0]["name"], "sum");
    assert_eq!(models[0]["tasks"], json!(["summarize"]));
    assert_eq!(models[0]["defaults"]["max_length"], 12);
    assert_eq!(models[1]["max_input_tokens"], 24);
    assert_eq!(models[3]["decoder"], "gpt2");
    assert_eq!(
        models[3]["translation"],
        json!({"source": "en", "target": "de"})
    );
    assert_eq!(info["limits"]["max_inputs_per_request"], 4);

    let doc = get(url, "/openapi.json").json();
    for path in [
        "/summarize",
        "/split",
        "/fuse",
        "/translate",
        "/generate",
        "/health",
        "/ready",
        "/info",
        "/metrics",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    let docs = get(url, "/docs/");
    assert_eq!(docs.status, 200);
    assert!(docs.body.to_lowercase().contains("swagger"));

    let metrics = get(url, "/metrics");
    assert!(metrics.headers["content-type"].starts_with("text/plain"));
    for name in [
        "encdec_queue_size",
        "encdec_model_loaded",
        "encdec_running_sequences",
    ] {
        assert!(metrics.body.contains(name), "{name} not exported");
    }
    assert_eq!(metric(url, "encdec_model_loaded", &[]), 5.0);
}

#[test]
fn task_endpoints_match_the_engine() {
    let url = main_url();
    // summarize: one string in, one object out; the request id is generated or echoed.
    let r = post(
        url,
        "/summarize",
        &json!({"inputs": "The cat sat on the mat."}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.headers["x-request-id"].is_empty());
    let v = r.json();
    assert_eq!(v["model"], "sum");
    let t = &v["timings"];
    assert!(t["total_ms"].as_f64().unwrap() >= t["inference_ms"].as_f64().unwrap());
    assert_eq!(t["batch_size"], 1);
    let o = GenerationOverrides {
        max_length: Some(12),
        ..Default::default()
    };
    assert_same(
        &[text_and_score(&v["outputs"][0])],
        &engine_output("bert2bert", "The cat sat on the mat.", None, o.clone()),
    );
    let r = request(
        "POST",
        &format!("{url}/summarize"),
        Some(r#"{"inputs": "x y"}"#),
        &[
            ("content-type", "application/json"),
            ("x-request-id", "req-42"),
        ],
    );
    assert_eq!(r.headers["x-request-id"], "req-42");

    // split: a list in, lists out with num_return_sequences > 1; the bos/eos wrap applies.
    let texts = ["One long sentence that goes on.", "Another one"];
    let r = post(
        url,
        "/split",
        &json!({"inputs": texts, "parameters": {"num_beams": 3, "num_return_sequences": 2}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let outs = r.json()["outputs"].as_array().unwrap().clone();
    assert_eq!(outs.len(), 2);
    for (text, out) in texts.iter().zip(&outs) {
        let got: Vec<_> = out.as_array().unwrap().iter().map(text_and_score).collect();
        let want = engine_output(
            "robertashare",
            &format!("<s>{text}</s>"),
            Some(24),
            GenerationOverrides {
                max_length: Some(10),
                num_beams: Some(3),
                num_return_sequences: Some(2),
                ..Default::default()
            },
        );
        assert_same(&got, &want);
    }

    // fuse: `"` → backtick before, " " → "_" after (the test config's rules).
    let r = post(
        url,
        "/fuse",
        &json!({"inputs": "He said \"yes\". She left."}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let (text, score) = text_and_score(&r.json()["outputs"][0]);
    let want = engine_output(
        "roberta2roberta",
        "He said `yes`. She left.",
        None,
        GenerationOverrides {
            max_length: Some(10),
            ..Default::default()
        },
    );
    assert_same(&[(text.replace('_', " "), score)], &want);
    assert!(!text.contains(' '));

    // translate: routed by language pair (also case-insensitively), or by model name.
    let r = post(
        url,
        "/translate",
        &json!({"inputs": "Hello world", "source_lang": "en", "target_lang": "de"}),
    );
    assert_eq!(r.json()["model"], "en-de", "{}", r.body);
    let r = post(
        url,
        "/translate",
        &json!({"inputs": "Hallo Welt", "source_lang": "DE", "target_lang": "en"}),
    );
    assert_eq!(r.json()["model"], "de-en", "{}", r.body);
    let r = post(
        url,
        "/translate",
        &json!({"inputs": "Hallo", "model": "de-en"}),
    );
    assert_eq!(r.json()["model"], "de-en", "{}", r.body);

    // generate: any model, token ids on request.
    let r = post(
        url,
        "/generate",
        &json!({"inputs": ["a b c"], "model": "en-de", "return_token_ids": true,
                "parameters": {"max_new_tokens": 3, "num_beams": 2, "early_stopping": "never"}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let out = &r.json()["outputs"][0];
    let ids = out["ids"].as_array().unwrap();
    assert_eq!(ids[0], 50256, "decoder start token first");
    assert_eq!(out["generated_tokens"], ids.len() - 1);
    assert_eq!(
        out["token_logprobs"].as_array().unwrap().len(),
        ids.len() - 1
    );
    let r = post(url, "/generate", &json!({"inputs": "a b c"}));
    assert_eq!(r.json()["model"], "sum");
    assert!(r.json()["outputs"][0].get("ids").is_none());
}

#[test]
fn every_error_status() {
    let url = main_url();
    let e422 = |path: &str, body: Value, code: &str| {
        post(url, path, &body).error(422, code);
    };
    e422(
        "/summarize",
        json!({"inputs": "x", "parameterz": {}}),
        "validation",
    );
    e422(
        "/summarize",
        json!({"inputs": "x", "parameters": {"num_beam": 2}}),
        "validation",
    );
    e422("/summarize", json!({"inputs": 7}), "validation");
    e422(
        "/summarize",
        json!({"inputs": "x", "parameters": {"num_beams": "2"}}),
        "validation",
    );
    e422(
        "/summarize",
        json!({"inputs": "x", "parameters": {"num_beams": 5}}),
        "validation",
    );
    e422(
        "/summarize",
        json!({"inputs": "x", "parameters": {"max_new_tokens": 41}}),
        "validation",
    );
    e422(
        "/summarize",
        json!({"inputs": "x", "parameters": {"num_beams": 2, "num_return_sequences": 3}}),
        "validation",
    );
    e422(
        "/summarize",
        json!({"inputs": "x", "model": "nope"}),
        "unknown_model",
    );
    e422(
        "/summarize",
        json!({"inputs": "x", "model": "split"}),
        "unknown_task",
    );
    e422(
        "/translate",
        json!({"inputs": "x", "source_lang": "en", "target_lang": "fr"}),
        "unknown_task",
    );
    e422(
        "/translate",
        json!({"inputs": "x", "source_lang": "en"}),
        "validation",
    );
    e422("/summarize", json!({"inputs": ""}), "empty_input");
    e422("/summarize", json!({"inputs": []}), "empty_input");
    e422(
        "/translate",
        json!({"inputs": ["ok", " \t "], "model": "de-en"}),
        "empty_input",
    );
    e422(
        "/summarize",
        json!({"inputs": ["a", "b", "c", "d", "e"]}),
        "too_many_inputs",
    );
    // The split model takes 24 tokens and this server rejects longer inputs.
    e422(
        "/split",
        json!({"inputs": "word ".repeat(40)}),
        "input_too_long",
    );

    let raw = |body: &str, ctype: &str| {
        request(
            "POST",
            &format!("{url}/summarize"),
            Some(body),
            &[("content-type", ctype)],
        )
    };
    raw("{\"inputs\": ", "application/json").error(400, "invalid_json");
    raw("{\"inputs\": \"x\"}", "text/plain").error(415, "unsupported_media_type");
    let big = json!({"inputs": "word ".repeat(5000)}).to_string();
    raw(&big, "application/json").error(413, "payload_too_large");
    get(url, "/nope").error(404, "not_found");
    request("DELETE", &format!("{url}/health"), None, &[]).error(405, "method_not_allowed");
    get(url, "/summarize").error(405, "method_not_allowed");

    assert!(
        metric(
            url,
            "encdec_requests_failed_total",
            &[("code", "unknown_model"), ("task", "summarize")]
        ) >= 1.0
    );
    assert!(
        metric(
            url,
            "encdec_requests_failed_total",
            &[("code", "input_too_long"), ("model", "split")]
        ) >= 1.0
    );
}

#[test]
fn concurrent_burst_is_batched_and_outputs_match_single_requests() {
    let handle = start(&single_model_toml(
        "",
        "max_input_tokens = 16",
        "mode = \"static\"\nmax_wait_ms = 150\nmax_batch_size = 8",
    ));
    let url = handle.url();
    let texts: Vec<String> = (0..8)
        .map(|i| {
            format!(
                "Story number {i} is about {}.",
                "a very long tale ".repeat(i)
            )
        })
        .collect();
    let params = json!({"max_length": 10, "num_beams": 2});
    let singles: Vec<Value> = texts
        .iter()
        .map(|t| {
            let r = post(
                &url,
                "/summarize",
                &json!({"inputs": t, "parameters": params}),
            );
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()["outputs"][0].clone()
        })
        .collect();
    let before = metric(&url, "encdec_batch_size_count", &[]);
    let before_single = metric(&url, "encdec_batch_size_bucket", &[("le", "1")]);

    let bodies: Vec<Value> = texts
        .iter()
        .map(|t| json!({"inputs": t, "parameters": params}))
        .collect();
    let burst = post_all_ok(&url, "/summarize", &bodies);
    let batches = metric(&url, "encdec_batch_size_count", &[]) - before;
    let single_batches = metric(&url, "encdec_batch_size_bucket", &[("le", "1")]) - before_single;
    assert!(batches < 8.0, "8 requests ran in {batches} batches");
    assert!(
        single_batches < batches,
        "no batch held more than one sequence"
    );
    assert!(burst
        .iter()
        .any(|r| r["timings"]["batch_size"].as_u64().unwrap() > 1));
    for (single, batched) in singles.iter().zip(&burst) {
        assert_same(
            &[text_and_score(&batched["outputs"][0])],
            &[text_and_score(single)],
        );
    }
    // Identical to the engine's own output for the truncated input.
    let want = engine_output(
        "bert2bert",
        &texts[7],
        Some(16),
        GenerationOverrides {
            max_length: Some(10),
            num_beams: Some(2),
            ..Default::default()
        },
    );
    assert_same(&[text_and_score(&singles[7])], &want);
    handle.shutdown().unwrap();
}

/// Continuous batching: requests with other parameters join a running batch at once,
/// finish long before the request they joined, and get exactly what they get alone;
/// work that could never fit a batch is refused up front.
#[test]
fn requests_join_a_running_batch_and_leave_it_first() {
    let handle = start(&single_model_toml(
        "",
        "max_inputs_per_request = 8\nmax_new_tokens = 511\nmax_num_beams = 8",
        "max_batch_rows = 80\nmax_batch_kv_tokens = 40000",
    ));
    let url = handle.url();
    let smalls: Vec<Value> = [
        json!({"num_beams": 1, "max_new_tokens": 12}),
        json!({"num_beams": 3, "max_length": 14, "length_penalty": 0.5}),
        json!({"num_beams": 2, "no_repeat_ngram_size": 2, "num_return_sequences": 2}),
        json!({"num_beams": 1, "repetition_penalty": 1.3, "min_length": 6}),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, p)| json!({"inputs": format!("Small request {i} about {}.", "cats ".repeat(i)), "parameters": p}))
    .collect();
    let alone: Vec<Value> = smalls
        .iter()
        .map(|b| {
            let r = post(&url, "/summarize", b);
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()
        })
        .collect();
    for r in &alone {
        assert_eq!(r["timings"]["batch_size"], 1);
    }

    // 8 inputs × 8 beams × 500 tokens: 64 of the 80 rows for seconds.
    let heavy = std::thread::spawn({
        let url = url.clone();
        move || {
            let inputs: Vec<String> = (0..8).map(|i| format!("heavy input {i}")).collect();
            post(&url, "/summarize", &long_body(json!(inputs)))
        }
    });
    assert!(wait_until(20.0, || metric(&url, "encdec_batch_rows", &[]) == 64.0));
    let joins_before = metric(&url, "encdec_batch_joins_total", &[]);
    let beside = post_all_ok(&url, "/summarize", &smalls);
    // They joined the heavy request's batch and left while it still ran.
    assert!(
        !heavy.is_finished(),
        "the heavy request finished before the small ones"
    );
    assert_eq!(
        metric(&url, "encdec_batch_joins_total", &[]) - joins_before,
        4.0
    );
    for (a, b) in alone.iter().zip(&beside) {
        assert!(b["timings"]["batch_size"].as_u64().unwrap() > 8, "{b}");
        assert_eq!(
            a["outputs"], b["outputs"],
            "output changed in a shared batch"
        );
    }
    let r = heavy.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(metric(&url, "encdec_batch_rows", &[]), 0.0);
    assert_eq!(metric(&url, "encdec_kv_cache_tokens", &[]), 0.0);
    assert_eq!(
        metric(&url, "encdec_batch_leaves_total", &[("reason", "finished")]),
        16.0
    );
    assert!(metric(&url, "encdec_time_to_first_step_seconds_count", &[]) >= 16.0);
    handle.shutdown().unwrap();
}

#[test]
fn work_that_can_never_fit_a_batch_is_refused_up_front() {
    let handle = start(&single_model_toml(
        "",
        "max_num_beams = 8",
        "max_batch_rows = 4\nmax_batch_kv_tokens = 100",
    ));
    let url = handle.url();
    let r = post(
        &url,
        "/summarize",
        &json!({"inputs": "a b", "parameters": {"num_beams": 8}}),
    );
    r.error(422, "exceeds_batch_budget");
    assert!(r.body.contains("max_batch_rows"), "{}", r.body);
    // 2 beams × 40 positions + the input's tokens > 100.
    let body = json!({"inputs": ["a b", "a b c d e f g h i j k l m n o p q r s t u v w x y z"],
                      "parameters": {"num_beams": 2, "max_length": 40}});
    let r = post(&url, "/summarize", &body);
    r.error(422, "exceeds_batch_budget");
    assert!(
        r.body.contains("inputs[1]") && r.body.contains("max_batch_kv_tokens"),
        "{}",
        r.body
    );
    assert_eq!(metric(&url, "encdec_queue_size", &[]), 0.0);
    let r = post(
        &url,
        "/summarize",
        &json!({"inputs": "a b", "parameters": {"num_beams": 2, "max_length": 40}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    handle.shutdown().unwrap();
}

/// A request that keeps a worker busy for a moment (EOS banned until max_length).
fn medium_body() -> Value {
    json!({"inputs": "a b c", "parameters": {"num_beams": 4, "min_length": 150, "max_length": 150}})
}

/// A request that keeps a worker busy for seconds (EOS banned until max_length).
fn long_body(inputs: Value) -> Value {
    json!({"inputs": inputs, "parameters": {"num_beams": 8, "min_length": 500, "max_length": 500}})
}

#[test]
fn queue_overflow_is_429_and_disconnected_clients_are_dropped() {
    let handle = start(&single_model_toml(
        "",
        "queue_capacity = 2\nmax_inputs_per_request = 2\nmax_new_tokens = 511",
        "max_batch_size = 1\nmax_wait_ms = 0",
    ));
    let url = handle.url();
    let running = || metric(&url, "encdec_running_sequences", &[]);
    let queued = || metric(&url, "encdec_queue_size", &[]);
    let cancelled = || {
        metric(
            &url,
            "encdec_sequences_cancelled_total",
            &[("reason", "client")],
        )
    };
    let steps = || metric(&url, "encdec_decode_step_duration_seconds_count", &[]);

    let first = open_request(handle.addr(), "/summarize", &long_body(json!("a b c")));
    assert!(
        wait_until(20.0, || running() == 1.0),
        "first request never ran"
    );
    let second = open_request(
        handle.addr(),
        "/summarize",
        &long_body(json!(["d e", "f g"])),
    );
    assert!(
        wait_until(20.0, || queued() == 2.0),
        "second request not queued"
    );

    // Refused before tokenizing: no tokenization time is recorded for it.
    let tokenizations = || {
        metric(
            &url,
            "encdec_request_tokenization_duration_seconds_count",
            &[],
        )
    };
    // (Queue slots are held from admission on, so the second request may still be
    // tokenizing: wait until both were.)
    assert!(wait_until(20.0, || tokenizations() == 2.0));
    let before = tokenizations();
    let r = request(
        "POST",
        &format!("{url}/summarize"),
        Some(&json!({"inputs": "h i"}).to_string()),
        &[
            ("content-type", "application/json"),
            ("x-request-id", "full-1"),
        ],
    );
    r.error(429, "queue_full");
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.json()["request_id"], "full-1");
    assert_eq!(tokenizations(), before);

    // A client that goes away leaves the queue at once...
    drop(second);
    assert!(wait_until(20.0, || queued() == 0.0 && cancelled() == 2.0));
    assert_eq!(running(), 1.0);
    // ...and the running batch at its next decode step.
    let steps_before = steps();
    drop(first);
    assert!(wait_until(20.0, || running() == 0.0 && cancelled() == 3.0));
    let steps_after = steps();
    assert!(
        steps_after < 1000.0,
        "the cancelled request ran to the end ({steps_after} steps)"
    );
    assert!(steps_after - steps_before < 50.0);
    assert_eq!(
        metric(
            &url,
            "encdec_requests_failed_total",
            &[("code", "cancelled")]
        ),
        2.0
    );

    let r = post(&url, "/summarize", &json!({"inputs": "h i"}));
    assert_eq!(r.status, 200, "{}", r.body);
    handle.shutdown().unwrap();
}

#[test]
fn deadline_exceeded_is_504_and_stops_the_work() {
    let handle = start(&single_model_toml(
        "",
        "request_deadline_ms = 300\nmax_new_tokens = 511",
        "",
    ));
    let url = handle.url();
    let started = Instant::now();
    post(&url, "/summarize", &long_body(json!("a b c"))).error(504, "deadline_exceeded");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(wait_until(10.0, || {
        metric(
            &url,
            "encdec_sequences_cancelled_total",
            &[("reason", "deadline")],
        ) == 1.0
            && metric(&url, "encdec_running_sequences", &[]) == 0.0
    }));
    handle.shutdown().unwrap();
}

#[test]
fn graceful_shutdown_finishes_in_flight_requests() {
    let mut handle = start(&single_model_toml(
        "shutdown_delay_seconds = 1.0\nshutdown_grace_seconds = 20",
        "",
        "",
    ));
    let url = handle.url();
    let in_flight = std::thread::spawn({
        let url = url.clone();
        move || post(&url, "/summarize", &medium_body())
    });
    assert!(wait_until(20.0, || metric(
        &url,
        "encdec_running_sequences",
        &[]
    ) == 1.0));
    handle.begin_shutdown();
    // During the shutdown delay the server still answers, but is no longer ready.
    let mut ready = None;
    assert!(wait_until(5.0, || {
        let r = get(&url, "/ready");
        let unready = r.status == 503;
        ready = Some(r);
        unready
    }));
    ready.unwrap().error(503, "shutting_down");
    let r = in_flight.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["outputs"][0]["text"]
            .as_str()
            .map(|t| !t.is_empty()),
        Some(true)
    );
    handle.shutdown().unwrap();
    assert!(TcpStream::connect(url.trim_start_matches("http://")).is_err());
}

#[test]
fn binary_drains_on_sigterm_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serve.toml");
    std::fs::write(&config, single_model_toml("", "", "")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_encdec"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--port", "0", "--log-format", "json"])
        // The batcher's per-sequence logs are debug.
        .env("RUST_LOG", "info,encdec::server::batcher=debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    // The port is bound before the model loads; `/ready` turns 200 once it is warm.
    let addr = loop {
        let v = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server logged `listening`");
        let fields = &v["fields"];
        if fields["message"].as_str() == Some("listening") {
            break fields["addr"].as_str().unwrap().to_string();
        }
    };
    let url = format!("http://{addr}");
    assert!(wait_until(60.0, || get(&url, "/ready").status == 200));
    let in_flight = std::thread::spawn({
        let url = url.clone();
        move || {
            request(
                "POST",
                &format!("{url}/summarize"),
                Some(&medium_body().to_string()),
                &[
                    ("content-type", "application/json"),
                    ("x-request-id", "sigterm-req"),
                ],
            )
        }
    });
    assert!(wait_until(20.0, || metric(
        &url,
        "encdec_running_sequences",
        &[]
    ) == 1.0));
    // The shell's builtin `kill`: no signal crate needed, no procps assumed.
    let kill = std::process::Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status()
        .unwrap();
    assert!(kill.success());
    let r = in_flight.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    // The worker's logs about the sequence carry the request's id (its span).
    let worker_logs: Vec<Value> = rx
        .try_iter()
        .filter(|v| {
            v["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("encdec::server::batcher"))
        })
        .filter(|v| v["span"]["request_id"] == "sigterm-req")
        .map(|v| v["fields"]["message"].clone())
        .collect();
    for message in ["sequence batched", "sequence finished"] {
        assert!(
            worker_logs.iter().any(|m| m == message),
            "no `{message}` log with the request id: {worker_logs:?}"
        );
    }
}

#[test]
fn config_is_layered_and_errors_name_the_field() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_encdec"));
        cmd.arg("serve").args(args).arg("--check-config");
        cmd.env_remove("PORT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let model = fixture("bert2bert");
    let (ok, out, err) = run(
        &[
            "--model",
            &model,
            "--task",
            "summarize,split",
            "--set",
            "batching.max_wait_ms=7",
        ],
        &[("ENCDEC_LIMITS__QUEUE_CAPACITY", "99"), ("PORT", "1234")],
    );
    assert!(ok, "{err}");
    let c: Config = toml::from_str(&out).unwrap();
    assert_eq!(c.server.port, 1234);
    assert_eq!(c.limits.queue_capacity, 99);
    assert_eq!(c.batching.max_wait_ms, 7);
    assert_eq!(c.models.len(), 1);
    assert_eq!(c.models[0].name, "bert2bert");
    assert_eq!(c.models[0].tasks.len(), 2);

    let (ok, out, _) = run(
        &[
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml"),
            "--port",
            "9",
        ],
        &[("ENCDEC_MODELS__DEMO_SPLIT__REPLICAS", "3")],
    );
    assert!(ok);
    let c: Config = toml::from_str(&out).unwrap();
    assert_eq!(c.server.port, 9);
    assert_eq!(c.models[1].replicas, 3);
    assert!(std::path::Path::new(&c.models[0].source).is_dir());

    let (ok, out, err) = run(
        &[
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"),
        ],
        &[],
    );
    assert!(ok, "{err}");
    let c: Config = toml::from_str(&out).unwrap();
    assert_eq!(c.models.len(), 5);
    assert_eq!(c.server.port, 8080);

    for (args, env, field) in [
        (
            vec!["--set", "batching.max_batch_size=0"],
            vec![],
            "batching.max_batch_size",
        ),
        (
            vec!["--set", "limits.max_new_tokens=lots"],
            vec![],
            "limits.max_new_tokens",
        ),
        (
            vec!["--set", "models.0.device=tpu"],
            vec![],
            "models[0].device",
        ),
        (vec![], vec![("ENCDEC_SERVER__PROT", "1")], "prot"),
        (
            vec!["--set", "models.0.dtype=f8"],
            vec![],
            "models[0].dtype",
        ),
    ] {
        let mut all = vec!["--model", model.as_str()];
        all.extend(args);
        let (ok, _, err) = run(&all, &env);
        assert!(!ok);
        assert!(err.contains(field), "{field} not named in: {err}");
    }
    let (ok, _, err) = run(&[], &[]);
    assert!(!ok && err.contains("--config"), "{err}");
}

/// Every string in a JSON document.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        Value::Object(o) => o.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

#[test]
fn info_shows_no_filesystem_paths() {
    let info = get(main_url(), "/info").json();
    let fixtures = fixture("");
    let mut all = Vec::new();
    strings(&info, &mut all);
    for s in &all {
        assert!(
            !s.starts_with('/') && !s.contains(fixtures.trim_end_matches('/')),
            "a filesystem path in /info: {s}"
        );
    }
    // Local checkpoints are shown by their directory's name.
    assert_eq!(info["models"][0]["source"], "bert2bert");
    assert_eq!(info["models"][4]["source"], "bertgeneration2bertgeneration");
    // The CPU kernel set chosen at start, one this CPU supports.
    let kernels = &info["cpu_kernels"];
    let set = kernels["kernels"].as_str().unwrap();
    assert!(["portable", "avx2", "avx512"].contains(&set), "{kernels}");
    let order = |s: &str| ["portable", "avx2", "avx512"].iter().position(|k| *k == s);
    assert!(order(set) <= order(kernels["best_supported"].as_str().unwrap()));
}

#[test]
fn hostile_numbers_and_inputs_get_json_errors_with_the_request_id() {
    let url = main_url();
    let with_id = |path: &str, body: &Value, id: &str| {
        request(
            "POST",
            &format!("{url}{path}"),
            Some(&body.to_string()),
            &[("content-type", "application/json"), ("x-request-id", id)],
        )
    };
    // usize::MAX + 1 wrapped to max_length 0 (and then to a 1-token answer) before.
    let r = with_id(
        "/summarize",
        &json!({"inputs": "x", "parameters": {"max_new_tokens": u64::MAX}}),
        "overflow-1",
    );
    r.error(422, "validation");
    let v = r.json();
    assert_eq!(v["request_id"], "overflow-1");
    assert!(
        v["message"].as_str().unwrap().contains("max_new_tokens"),
        "{}",
        r.body
    );
    for params in [
        json!({"max_length": u64::MAX}),
        json!({"num_beams": u64::MAX}),
        json!({"num_return_sequences": u64::MAX}),
        json!({"max_new_tokens": u64::MAX - 1}),
    ] {
        post(
            url,
            "/generate",
            &json!({"inputs": "x", "parameters": params}),
        )
        .error(422, "validation");
    }
    // Beyond u64 or negative: refused by the JSON types.
    let raw = |body: &str| {
        request(
            "POST",
            &format!("{url}/generate"),
            Some(body),
            &[("content-type", "application/json")],
        )
    };
    raw(r#"{"inputs": "x", "parameters": {"max_new_tokens": 18446744073709551616}}"#)
        .error(422, "validation");
    raw(r#"{"inputs": "x", "parameters": {"num_beams": -1}}"#).error(422, "validation");

    // A long text with `input_overflow = "reject"`: refused after reading a few
    // thousand characters of it, not all of them.
    let tokenized = || {
        metric(
            url,
            "encdec_request_tokenization_duration_seconds_sum",
            &[("model", "split")],
        )
    };
    let before = tokenized();
    let r = with_id("/split", &json!({"inputs": "word ".repeat(3000)}), "long-1");
    r.error(422, "input_too_long");
    assert_eq!(r.json()["request_id"], "long-1");
    assert!(
        tokenized() - before < 0.25,
        "{} s tokenizing",
        tokenized() - before
    );

    // Every error body is JSON with the request id, also from the fallbacks and the
    // extractors; a generated id when the client sent none.
    let r = request(
        "GET",
        &format!("{url}/nope"),
        None,
        &[("x-request-id", "nf-1")],
    );
    r.error(404, "not_found");
    assert_eq!(r.json()["request_id"], "nf-1");
    let r = request(
        "POST",
        &format!("{url}/summarize"),
        Some("{"),
        &[("content-type", "application/json")],
    );
    r.error(400, "invalid_json");
    assert_eq!(r.json()["request_id"], r.headers["x-request-id"].as_str());
    assert!(!r.headers["x-request-id"].is_empty());
}

#[test]
fn long_inputs_are_cut_before_tokenizing_exactly() {
    let toml = MAIN_TOML
        .replace("FIXTURES", fixture("").trim_end_matches('/'))
        .replace(
            "input_overflow = \"reject\"",
            "input_overflow = \"truncate\"\nmax_input_tokens = 64",
        )
        .replace("max_payload_bytes = 16384", "max_payload_bytes = 4000000");
    let handle = start(&toml);
    let url = handle.url();
    let info = get(&url, "/info").json();
    let models = [
        ("sum", "bert2bert", 12),
        ("split", "robertashare", 10),
        ("fuse", "roberta2roberta", 10),
        ("en-de", "bert2gpt2", 8),
        ("de-en", "bertgeneration2bertgeneration", 8),
    ];
    // Ordinary prose (the first try suffices), and words far apart (it has to double).
    let prose = "He said \"the quick brown fox, it jumps!\" over 3 lazy dogs. ".repeat(300);
    let sparse = (0..2000)
        .map(|i| format!("w{i}{}", " ".repeat(23)))
        .collect::<String>();
    for (i, (name, dir, max_length)) in models.iter().enumerate() {
        let max_tokens = info["models"][i]["max_input_tokens"].as_u64().unwrap() as usize;
        assert_eq!(info["models"][i]["name"], *name);
        for text in [&prose, &sparse] {
            let r = post(&url, "/generate", &json!({"inputs": text, "model": name}));
            assert_eq!(r.status, 200, "{}", r.body);
            let (got, score) = text_and_score(&r.json()["outputs"][0]);
            let full = match *name {
                "split" => format!("<s>{text}</s>"),
                "fuse" => text.replace('"', "`"),
                _ => text.to_string(),
            };
            let want = engine_output(
                dir,
                &full,
                Some(max_tokens),
                GenerationOverrides {
                    max_length: Some(*max_length),
                    ..Default::default()
                },
            );
            let got = if *name == "fuse" {
                got.replace('_', " ")
            } else {
                got
            };
            assert_same(&[(got, score)], &want);
        }
    }

    // 1 MB of text: answered, at the cost of tokenizing a few thousand characters
    // (tokenizing all of it took 1.8 s of CPU).
    let tokenized = || {
        metric(
            &url,
            "encdec_request_tokenization_duration_seconds_sum",
            &[("model", "sum")],
        )
    };
    for huge in [
        "Some words of a long story. ".repeat(40_000),
        "x".repeat(1_000_000),
        "日本語".repeat(300_000),
    ] {
        let before = tokenized();
        let r = post(&url, "/summarize", &json!({"inputs": huge}));
        assert_eq!(r.status, 200, "{}", r.body);
        let took = tokenized() - before;
        assert!(took < 0.25, "{took} s tokenizing {} bytes", huge.len());
    }

    // A 100 KB model name is not sent back in full.
    let name = "m".repeat(100_000);
    let r = post(&url, "/generate", &json!({"inputs": "x", "model": name}));
    r.error(422, "unknown_model");
    assert!(r.body.len() < 1000, "{} bytes", r.body.len());
    assert!(r.json()["message"].as_str().unwrap().contains("mmm…"));
    // serde's own messages quote what the client sent: bounded as well.
    let r = post(
        &url,
        "/generate",
        &json!({"inputs": "x", "parameters": {name.clone(): 1}}),
    );
    r.error(422, "validation");
    assert!(r.body.len() < 1000, "{} bytes", r.body.len());
    handle.shutdown().unwrap();
}
