//! `encdec serve` as deployed: the real binary started the way Kubernetes and Docker
//! start it (injected variables, TEI-style environment), driven over loopback HTTP.

mod common;

use std::time::Duration;

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
