//! `encdec serve` as deployed: the real binary started the way Kubernetes and Docker
//! start it (injected variables, TEI-style environment), driven over loopback HTTP.

mod common;

use std::time::Duration;

use common::hub::HUB_ENV_VARS;
use common::{http, Served};
use serde_json::Value;

fn fixture(name: &str) -> String {
    common::model_dir(name).to_string_lossy().into_owned()
}

/// A config file serving the bert2bert fixture on an ephemeral loopback port.
fn config_file(dir: &std::path::Path, server_extra: &str) -> String {
    let path = dir.join("serve.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nhost = \"127.0.0.1\"\nport = 0\n{server_extra}\n\n[[models]]\nname = \"b2b\"\nsource = \"{}\"\ntasks = [\"summarize\"]\n",
            fixture("bert2bert")
        ),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

fn wait_ready(url: &str, secs: u64) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if http("GET", &format!("{url}/ready"), &[], None).0 == 200 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// What Kubernetes injects into every pod of a namespace holding a Service named
/// `encdec` with one port `http` on 80 (service links, `enableServiceLinks` defaults to
/// true).
const SERVICE_LINKS: [(&str, &str); 8] = [
    ("ENCDEC_SERVICE_HOST", "10.96.0.17"),
    ("ENCDEC_SERVICE_PORT", "80"),
    ("ENCDEC_SERVICE_PORT_HTTP", "80"),
    ("ENCDEC_PORT", "tcp://10.96.0.17:80"),
    ("ENCDEC_PORT_80_TCP", "tcp://10.96.0.17:80"),
    ("ENCDEC_PORT_80_TCP_PROTO", "tcp"),
    ("ENCDEC_PORT_80_TCP_PORT", "80"),
    ("ENCDEC_PORT_80_TCP_ADDR", "10.96.0.17"),
];

#[test]
fn kubernetes_service_link_variables_do_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "");
    let served = Served::start(
        &["--config", &config],
        &SERVICE_LINKS,
        Duration::from_secs(60),
    );
    let (status, _, body) = http("GET", &format!("{}/health", served.url), &[], None);
    assert_eq!(status, 200, "{body}");
    assert!(wait_ready(&served.url, 60), "never ready");
    let (status, _, body) = http(
        "POST",
        &format!("{}/summarize", served.url),
        &[],
        Some(r#"{"inputs": "a short text", "parameters": {"max_new_tokens": 3}}"#),
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["model"], "b2b");
}

/// Reads what the server sends on `s` until it closes (or `limit` passes): (bytes,
/// whether it closed, seconds).
fn read_until_closed(s: &mut std::net::TcpStream, limit: Duration) -> (String, bool, f64) {
    use std::io::Read;
    let started = std::time::Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
        if started.elapsed() > limit {
            break false;
        }
    };
    (
        String::from_utf8_lossy(&out).into_owned(),
        closed,
        started.elapsed().as_secs_f64(),
    )
}

fn connect(url: &str) -> std::net::TcpStream {
    std::net::TcpStream::connect(url.trim_start_matches("http://")).unwrap()
}

fn json_body(response: &str) -> Value {
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response:?}"))
}

#[test]
fn slow_and_stalled_clients_are_cut_off_by_the_timeouts() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        "header_read_timeout_seconds = 1\nbody_read_timeout_seconds = 1\nkeep_alive_timeout_seconds = 2",
    );
    let served = Served::start(&["--config", &config], &[], Duration::from_secs(60));
    assert!(wait_ready(&served.url, 60));

    // Slowloris: a head that never ends gets 408 and the connection closes.
    let mut slow = connect(&served.url);
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
        .unwrap();
    let (text, closed, secs) = read_until_closed(&mut slow, Duration::from_secs(10));
    assert!(closed, "slowloris connection still open after {secs} s");
    assert!((0.9..4.0).contains(&secs), "closed after {secs} s");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(json_body(&text)["error"], "request_timeout");
    let id = json_body(&text)["request_id"].as_str().unwrap().to_string();
    assert!(text.contains(&format!("x-request-id: {id}")), "{text}");

    // A connection that sends nothing at all is closed after the header timeout too.
    let mut silent = connect(&served.url);
    let (_, closed, secs) = read_until_closed(&mut silent, Duration::from_secs(10));
    assert!(
        closed && (0.9..4.0).contains(&secs),
        "silent: {closed} after {secs} s"
    );

    // A body announced as 1 MB that stalls: 408 after the body timeout, then closed.
    let mut stalled = connect(&served.url);
    stalled
        .write_all(
            b"POST /summarize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{\"inputs\": \"",
        )
        .unwrap();
    let (text, closed, secs) = read_until_closed(&mut stalled, Duration::from_secs(10));
    assert!(closed, "stalled body connection still open after {secs} s");
    assert!((0.9..4.0).contains(&secs), "closed after {secs} s");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("x-request-id: "), "{text}");
    assert_eq!(json_body(&text)["error"], "request_timeout");
    assert!(
        json_body(&text)["request_id"]
            .as_str()
            .is_some_and(|id| text.contains(id)),
        "{text}"
    );

    // Keep-alive: an idle connection after a request is closed after its timeout.
    let mut idle = connect(&served.url);
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (text, closed, secs) = read_until_closed(&mut idle, Duration::from_secs(10));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        closed && (1.8..5.0).contains(&secs),
        "idle: {closed} after {secs} s"
    );
}

#[test]
fn sigterm_with_stalled_connections_open_exits_at_once() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    // Long timeouts and grace: only the shutdown itself may close these connections.
    let config = config_file(
        dir.path(),
        "header_read_timeout_seconds = 60\nbody_read_timeout_seconds = 60\nshutdown_grace_seconds = 30",
    );
    let mut served = Served::start(&["--config", &config], &[], Duration::from_secs(60));
    assert!(wait_ready(&served.url, 60));
    let mut stalled = connect(&served.url);
    stalled
        .write_all(
            b"POST /summarize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{\"in",
        )
        .unwrap();
    let mut slow = connect(&served.url);
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let _idle = connect(&served.url);
    let mut kept = connect(&served.url);
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    served.terminate();
    let status = served
        .wait_exit(Duration::from_secs(10))
        .expect("exited after SIGTERM");
    let secs = started.elapsed().as_secs_f64();
    assert!(status.success(), "{status}");
    assert!(
        secs < 2.0,
        "exit took {secs} s with stalled connections open"
    );
    let (text, _, _) = read_until_closed(&mut stalled, Duration::from_secs(2));
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert_eq!(json_body(&text)["error"], "shutting_down");
}

#[test]
fn api_key_cors_and_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "");
    let served = Served::start(
        &[
            "--config",
            &config,
            "--cors-allow-origin",
            "https://app.example",
        ],
        &[("API_KEY", "s3cret")],
        Duration::from_secs(60),
    );
    let url = &served.url;
    let key = [("Authorization", "Bearer s3cret")];
    // /health is open; everything else needs the key.
    assert_eq!(http("GET", &format!("{url}/health"), &[], None).0, 200);
    for (headers, why) in [
        (vec![], "missing"),
        (vec![("Authorization", "Bearer wrong")], "wrong"),
        (vec![("Authorization", "s3cret")], "not bearer"),
    ] {
        for path in ["/ready", "/info", "/metrics", "/nope"] {
            let (status, h, body) = http("GET", &format!("{url}{path}"), &headers, None);
            assert_eq!(status, 401, "{why} key on {path}: {body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"], "unauthorized", "{body}");
            assert!(h
                .iter()
                .any(|(k, v)| k == "www-authenticate" && v == "Bearer"));
        }
    }
    assert!(wait_ready_with(url, &key, 60));
    let (status, _, body) = http(
        "POST",
        &format!("{url}/summarize"),
        &key,
        Some(r#"{"inputs": "a short text", "parameters": {"max_new_tokens": 3}}"#),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(http("GET", &format!("{url}/info"), &key, None).0, 200);

    // CORS preflight, answered without the key (browsers send none).
    let (status, h, _) = http(
        "OPTIONS",
        &format!("{url}/summarize"),
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization, content-type",
            ),
        ],
        None,
    );
    assert_eq!(status, 200);
    let get = |name: &str| {
        h.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_ascii_lowercase())
            .unwrap_or_default()
    };
    assert_eq!(get("access-control-allow-origin"), "https://app.example");
    assert!(get("access-control-allow-methods").contains("post"));
    assert!(get("access-control-allow-headers").contains("authorization"));
    let (_, h, _) = http(
        "GET",
        &format!("{url}/health"),
        &[("Origin", "https://evil.example")],
        None,
    );
    assert!(!h.iter().any(|(k, _)| k == "access-control-allow-origin"));

    // 404 / 405 / 431: JSON with a stable code.
    for (method, path, status, code) in [
        ("GET", "/nope", 404, "not_found"),
        ("GET", "/summarize", 405, "method_not_allowed"),
        ("POST", "/health", 405, "method_not_allowed"),
        ("DELETE", "/ready", 405, "method_not_allowed"),
    ] {
        let (s, _, body) = http(method, &format!("{url}{path}"), &key, None);
        assert_eq!(s, status, "{method} {path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
        assert_eq!(v["error"], code);
    }
    let big = "a".repeat(40 * 1024);
    let (s, _, body) = http("GET", &format!("{url}/health"), &[("X-Big", &big)], None);
    assert_eq!(s, 431, "{body}");
    let v = serde_json::from_str::<Value>(&body).unwrap();
    assert_eq!(v["error"], "headers_too_large");
    assert!(
        v["request_id"].as_str().is_some_and(|id| id.len() == 36),
        "{body}"
    );
    let many: Vec<(String, String)> = (0..150).map(|i| (format!("X-H{i}"), "1".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (s, _, body) = http("GET", &format!("{url}/health"), &many, None);
    assert_eq!(s, 431, "{body}");
}

fn wait_ready_with(url: &str, headers: &[(&str, &str)], secs: u64) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if http("GET", &format!("{url}/ready"), headers, None).0 == 200 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// encdec's own variables that must not reach the child from the test's environment.
const SERVE_VARS: &[&str] = &[
    "MODEL_ID",
    "REVISION",
    "TASK",
    "DEVICE",
    "DTYPE",
    "REPLICAS",
    "HOST",
    "LOG_FORMAT",
    "JSON_OUTPUT",
    "API_KEY",
    "CORS_ALLOW_ORIGIN",
];

/// Every variable a child must not inherit: the hub's, the proxies' and encdec's.
fn hub_vars() -> Vec<&'static str> {
    [HUB_ENV_VARS, SERVE_VARS].concat()
}

const HUB_ID: &str = "encdec-test/bert2bert";

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn health_answers_while_the_model_downloads_and_ready_follows_it() {
    let hub = common::hub::FakeHub::start(HUB_ID, &common::model_dir("bert2bert"), false);
    let home = tempfile::tempdir().unwrap();
    let endpoint = hub.endpoint();
    let home_dir = home.path().to_string_lossy().into_owned();
    let env = [
        ("HF_ENDPOINT", endpoint.as_str()),
        ("HF_HOME", home_dir.as_str()),
        ("MODEL_ID", HUB_ID),
        ("TASK", "summarize"),
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
    ];
    let served = Served::start_with(&[], &env, &hub_vars(), Duration::from_secs(30));
    let url = &served.url;
    // Listening while the weights are held back by the hub.
    let (status, _, body) = http("GET", &format!("{url}/health"), &[], None);
    assert_eq!(status, 200, "{body}");
    let end = std::time::Instant::now() + Duration::from_secs(30);
    let ready = loop {
        let (status, headers, body) = http("GET", &format!("{url}/ready"), &[], None);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status, 503, "{body}");
        assert_eq!(v["error"], "model_loading", "{body}");
        assert!(header(&headers, "retry-after").is_some());
        assert_eq!(v["models"][0]["name"], "bert2bert");
        let progress = &v["models"][0]["progress"];
        if v["models"][0]["state"] == "downloading"
            && progress["file"] == "model.safetensors"
            && progress["downloaded_bytes"].as_u64().unwrap_or(0) > 0
        {
            assert!(
                progress["downloaded_bytes"].as_u64() < progress["total_bytes"].as_u64(),
                "{body}"
            );
            break v;
        }
        assert!(std::time::Instant::now() < end, "never downloading: {body}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(ready["status"], "loading");
    let (status, headers, body) = http(
        "POST",
        &format!("{url}/summarize"),
        &[],
        Some(r#"{"inputs": "a short text"}"#),
    );
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "model_loading");
    assert!(header(&headers, "retry-after").is_some());
    assert_eq!(http("GET", &format!("{url}/nope"), &[], None).0, 404);

    hub.release();
    assert!(wait_ready(url, 60), "not ready after the download");
    let (_, _, body) = http("GET", &format!("{url}/ready"), &[], None);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["models"][0]["state"], "ready");
    let (status, _, body) = http(
        "POST",
        &format!("{url}/summarize"),
        &[],
        Some(r#"{"inputs": "a short text", "parameters": {"max_new_tokens": 3}}"#),
    );
    assert_eq!(status, 200, "{body}");
    let (_, _, body) = http("GET", &format!("{url}/info"), &[], None);
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["models"][0]["tasks"], serde_json::json!(["summarize"]));
}

#[test]
fn sigterm_while_downloading_exits_at_once() {
    let hub = common::hub::FakeHub::start(HUB_ID, &common::model_dir("bert2bert"), false);
    let home = tempfile::tempdir().unwrap();
    let endpoint = hub.endpoint();
    let home_dir = home.path().to_string_lossy().into_owned();
    let mut served = Served::start_with(
        &["--model", HUB_ID, "--host", "127.0.0.1", "--port", "0"],
        &[("HF_ENDPOINT", &endpoint), ("HF_HOME", &home_dir)],
        &hub_vars(),
        Duration::from_secs(30),
    );
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, body) = http("GET", &format!("{}/ready", served.url), &[], None);
        if body.contains("\"downloading\"") {
            break;
        }
        assert!(std::time::Instant::now() < end, "never downloading: {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = std::time::Instant::now();
    served.terminate();
    let status = served
        .wait_exit(Duration::from_secs(10))
        .expect("exited after SIGTERM");
    let secs = started.elapsed().as_secs_f64();
    assert!(status.success(), "{status}");
    assert!(secs < 2.0, "exit took {secs} s while downloading");
}

#[test]
fn model_id_and_port_come_from_the_environment() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let port_text = port.to_string();
    let model = fixture("robertashare");
    let served = Served::start_with(
        &[],
        &[
            ("MODEL_ID", &model),
            ("TASK", "summarize,split"),
            ("PORT", &port_text),
            ("HOST", "127.0.0.1"),
            ("JSON_OUTPUT", "true"),
        ],
        &hub_vars(),
        Duration::from_secs(30),
    );
    assert_eq!(served.url, format!("http://127.0.0.1:{port}"));
    assert!(wait_ready(&served.url, 60));
    let (_, _, body) = http("GET", &format!("{}/info", served.url), &[], None);
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["models"].as_array().unwrap().len(), 1);
    assert_eq!(info["models"][0]["name"], "robertashare");
    assert_eq!(
        info["models"][0]["tasks"],
        serde_json::json!(["summarize", "split"])
    );
}

#[test]
fn download_config_fetches_every_model_of_the_config() {
    let hub = common::hub::FakeHub::start(HUB_ID, &common::model_dir("bert2bert"), true);
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let local = fixture("bertshare");
    std::fs::write(
        &config,
        format!(
            "[[models]]\nname = \"hub\"\nsource = \"{HUB_ID}\"\nrevision = \"main\"\n\n[[models]]\nname = \"local\"\nsource = \"{local}\"\n"
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_encdec"));
    for k in hub_vars() {
        cmd.env_remove(k);
    }
    let out = cmd
        .args(["download", "--no-progress", "--config"])
        .arg(&config)
        .env("HF_ENDPOINT", hub.endpoint())
        .env("HF_HOME", home.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dirs: Vec<&str> = stdout.lines().collect();
    assert_eq!(dirs.len(), 2, "{stdout}");
    assert!(
        dirs[0].starts_with(&*home.path().to_string_lossy()),
        "{stdout}"
    );
    assert!(std::path::Path::new(dirs[0])
        .join("model.safetensors")
        .is_file());
    assert_eq!(dirs[1], local);

    // Then the cache alone serves it: offline, the model loads from what was fetched.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_encdec"));
    for k in hub_vars() {
        cmd.env_remove(k);
    }
    let out = cmd
        .args(["download", "--no-progress", HUB_ID])
        .env("HF_ENDPOINT", "http://127.0.0.1:1")
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), dirs[0]);
}

#[test]
fn a_model_that_fails_to_load_stops_the_server_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    // A checkpoint directory without weights: resolving works, loading fails.
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::copy(
        common::model_dir("bert2bert").join("config.json"),
        broken.join("config.json"),
    )
    .unwrap();
    let broken = broken.to_string_lossy().into_owned();
    let mut served = Served::start_with(
        &["--model", &broken, "--host", "127.0.0.1", "--port", "0"],
        &[],
        &hub_vars(),
        Duration::from_secs(30),
    );
    let status = served
        .wait_exit(Duration::from_secs(30))
        .expect("exited after the failed load");
    assert!(!status.success());
    let logs: Vec<Value> = served.logs.try_iter().collect();
    let text = serde_json::to_string(&logs).unwrap();
    assert!(text.contains("models[0]"), "{text}");
}
