//! `encdec::hub` against a loopback stand-in for the Hugging Face hub.
//!
//! The server (std `TcpListener` on 127.0.0.1:0, one thread per connection) answers the
//! two endpoints hf-hub uses: `GET /api/models/{id}/revision/{rev}` (JSON with `sha` and
//! `siblings`) and `GET /{id}/resolve/{rev}/{file}` (etag, x-repo-commit, content-length,
//! `Range` → 206 + content-range). It serves the fixture checkpoint
//! `tests/fixtures/models/bert2bert` plus a few synthetic repos. The `HF_*` variables are
//! process-global, so every test holds `ENV_LOCK` while it runs.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use common::hub::{etag, HUB_ENV_VARS};
use encdec::hub::{resolve_model_dir, HubOptions};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/models/bert2bert"
);
/// Files of the fixture the loader needs (all of them but `oracle_meta.json`).
const NEEDED: &[&str] = &[
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
];
const MODEL: &str = "encdec-test/bert2bert";
const TOKEN: &str = "hf_test_token";
/// Nothing listens on port 1: "connection refused" at once.
const DEAD_ENDPOINT: &str = "http://127.0.0.1:1";

static ENV_LOCK: Mutex<()> = Mutex::new(());

/// (path, authorization header) of every request the fake hub saw.
type RequestLog = Mutex<Vec<(String, Option<String>)>>;

/// Holds the env lock and resets every hub variable; `HF_HOME` points at a fresh tempdir.
struct Env {
    _guard: MutexGuard<'static, ()>,
    home: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for var in HUB_ENV_VARS {
            std::env::remove_var(var);
        }
        let home = tempfile::tempdir().unwrap();
        std::env::set_var("HF_HOME", home.path());
        // Never the real hub: tests that need one point HF_ENDPOINT at their fake hub.
        std::env::set_var("HF_ENDPOINT", DEAD_ENDPOINT);
        Env {
            _guard: guard,
            home,
        }
    }

    fn set(&self, var: &str, value: impl AsRef<std::ffi::OsStr>) {
        std::env::set_var(var, value);
    }

    fn unset(&self, var: &str) {
        std::env::remove_var(var);
    }

    fn cache(&self) -> PathBuf {
        self.home.path().join("hub")
    }
}

fn opts(revision: Option<&str>) -> HubOptions {
    HubOptions {
        revision: revision.map(str::to_string),
        progress: false,
    }
}

// ------------------------------------------------------------------------ fake hub

#[derive(Clone)]
struct FakeRepo {
    sha: String,
    files: Vec<(String, Vec<u8>)>,
    /// Requests must carry `Authorization: Bearer TOKEN`.
    gated: bool,
    /// This file's body stops at half of its advertised content-length.
    truncate: Option<String>,
    /// The listing advertises this file one byte bigger than it is.
    wrong_size: Option<String>,
}

impl FakeRepo {
    fn new(sha_digit: char, files: Vec<(String, Vec<u8>)>) -> Self {
        FakeRepo {
            sha: std::iter::repeat_n(sha_digit, 40).collect(),
            files,
            gated: false,
            truncate: None,
            wrong_size: None,
        }
    }

    fn file(&self, name: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }
}

fn is_lfs(name: &str) -> bool {
    name.ends_with(".safetensors") || name.ends_with(".bin")
}

struct FakeHub {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// While set, every request gets 503 (a hub outage).
    outage: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// (path, authorization) of every request.
    log: Arc<RequestLog>,
}

impl FakeHub {
    fn start(repos: Vec<(&str, FakeRepo)>) -> Self {
        let repos: Arc<HashMap<String, FakeRepo>> =
            Arc::new(repos.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let outage = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, log, outage) = (stop.clone(), log.clone(), outage.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (repos, log) = (repos.clone(), log.clone());
                    let down = outage.load(Ordering::SeqCst);
                    std::thread::spawn(move || {
                        let _ = serve(stream, &repos, &log, down);
                    });
                }
            })
        };
        FakeHub {
            addr,
            stop,
            outage,
            thread: Some(thread),
            log,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Files fetched through `/resolve/` (metadata probes included), in order.
    fn resolved(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(path, _)| path.split("/resolve/").nth(1).map(str::to_string))
            .filter_map(|rest| rest.split_once('/').map(|(_, f)| f.to_string()))
            .collect()
    }

    fn requests(&self) -> Vec<(String, Option<String>)> {
        self.log.lock().unwrap().clone()
    }

    fn clear_log(&self) {
        self.log.lock().unwrap().clear();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

fn not_found(stream: &mut TcpStream, code: &str, message: &str) -> std::io::Result<()> {
    let body = serde_json::json!({ "error": message }).to_string();
    respond(
        stream,
        "404 Not Found",
        &[
            ("X-Error-Code", code.to_string()),
            ("Content-Type", "application/json".to_string()),
        ],
        body.as_bytes(),
    )
}

fn serve(
    mut stream: TcpStream,
    repos: &HashMap<String, FakeRepo>,
    log: &RequestLog,
    down: bool,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("").to_string();
    let auth = headers.get("authorization").cloned();
    log.lock().unwrap().push((path.clone(), auth.clone()));
    if down {
        return respond(
            &mut stream,
            "503 Service Unavailable",
            &[],
            b"upstream down",
        );
    }
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, "405 Method Not Allowed", &[], b"");
    }

    let authorized =
        |repo: &FakeRepo| !repo.gated || auth.as_deref() == Some(&format!("Bearer {TOKEN}"));
    let decode = |s: &str| s.replace("%2F", "/").replace("%2f", "/");

    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((id, rev)) = rest.split_once("/revision/") else {
            return not_found(&mut stream, "RepoNotFound", "Repository not found");
        };
        let rev = decode(rev);
        let Some(repo) = repos.get(id) else {
            // The real hub answers 401 to anonymous requests for unknown repos.
            return not_found(&mut stream, "RepoNotFound", "Repository not found");
        };
        if !authorized(repo) {
            return respond(
                &mut stream,
                "401 Unauthorized",
                &[("X-Error-Code", "GatedRepo".to_string())],
                b"{\"error\":\"Access to this repo is restricted\"}",
            );
        }
        if rev != "main" && rev != repo.sha {
            return not_found(&mut stream, "RevisionNotFound", "Invalid rev id");
        }
        let siblings: Vec<_> = repo
            .files
            .iter()
            .map(|(name, bytes)| {
                let mut size = bytes.len() as u64;
                if repo.wrong_size.as_deref() == Some(name) {
                    size += 1;
                }
                let mut s = serde_json::json!({
                    "rfilename": name, "size": size, "blobId": etag(bytes)[..40].to_string(),
                });
                if is_lfs(name) {
                    s["lfs"] = serde_json::json!({
                        "sha256": etag(bytes), "size": size, "pointerSize": 134,
                    });
                }
                s
            })
            .collect();
        let body = serde_json::json!({
            "id": id, "modelId": id, "sha": repo.sha, "private": false, "siblings": siblings,
        })
        .to_string();
        return respond(
            &mut stream,
            "200 OK",
            &[("Content-Type", "application/json".to_string())],
            body.as_bytes(),
        );
    }

    let Some((id, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
        return not_found(&mut stream, "RepoNotFound", "Repository not found");
    };
    let Some((rev, file)) = rest.split_once('/') else {
        return not_found(&mut stream, "EntryNotFound", "Entry not found");
    };
    let rev = decode(rev);
    let Some(repo) = repos.get(id) else {
        return not_found(&mut stream, "RepoNotFound", "Repository not found");
    };
    if !authorized(repo) {
        return respond(&mut stream, "401 Unauthorized", &[], b"");
    }
    if rev != "main" && rev != repo.sha {
        return not_found(&mut stream, "RevisionNotFound", "Invalid rev id");
    }
    let Some(bytes) = repo.file(file) else {
        return not_found(&mut stream, "EntryNotFound", "Entry not found");
    };
    let total = bytes.len();
    let tag = if is_lfs(file) {
        etag(bytes)
    } else {
        etag(bytes)[..40].to_string()
    };
    let mut common = vec![
        ("ETag", format!("\"{tag}\"")),
        ("X-Repo-Commit", repo.sha.clone()),
        ("Accept-Ranges", "bytes".to_string()),
        ("Content-Type", "application/octet-stream".to_string()),
    ];
    let range = headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| {
            let start: usize = a.parse().unwrap_or(0);
            let end: usize = b.parse().unwrap_or(total.saturating_sub(1));
            (start, end.min(total.saturating_sub(1)))
        });
    let (status, start, end) = match range {
        Some((start, end)) if start < total => {
            common.push(("Content-Range", format!("bytes {start}-{end}/{total}")));
            ("206 Partial Content", start, end + 1)
        }
        Some(_) => {
            common.push(("Content-Range", format!("bytes */{total}")));
            return respond(&mut stream, "416 Range Not Satisfiable", &common, b"");
        }
        None => ("200 OK", 0, total),
    };
    let body = &bytes[start..end];
    common.push(("Content-Length", body.len().to_string()));
    if method == "HEAD" {
        return respond(&mut stream, status, &common, b"");
    }
    if repo.truncate.as_deref() == Some(file) && body.len() > 1 {
        // Advertise the whole body, send half of it, hang up.
        let head_only: Vec<(&str, String)> = common.clone();
        let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
        for (k, v) in &head_only {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(&body[..body.len() / 2])?;
        stream.flush()?;
        return stream.shutdown(std::net::Shutdown::Both);
    }
    respond(&mut stream, status, &common, body)
}

// ------------------------------------------------------------------------ fixtures

fn fixture_files() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(FIXTURE)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    // Files a real repo has that the loader does not need.
    files.push(("README.md".into(), b"# bert2bert\n".to_vec()));
    files.push(("pytorch_model.bin".into(), vec![7u8; 1000]));
    files.push(("flax_model.msgpack".into(), vec![8u8; 1000]));
    files.push(("onnx/model.onnx".into(), vec![9u8; 1000]));
    files
}

fn bert2bert() -> FakeRepo {
    FakeRepo::new('a', fixture_files())
}

fn snapshot_dir(cache: &Path, id: &str, repo: &FakeRepo) -> PathBuf {
    cache
        .join(format!("models--{}", id.replace('/', "--")))
        .join("snapshots")
        .join(&repo.sha)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn err_text(result: anyhow::Result<PathBuf>) -> String {
    match result {
        Ok(dir) => panic!("expected an error, got {}", dir.display()),
        Err(e) => {
            let text = format!("{e:#}");
            eprintln!("expected error: {text}");
            text
        }
    }
}

// ------------------------------------------------------------------------ tests

#[test]
fn download_is_byte_identical_and_fetches_only_what_the_loader_needs() {
    let env = Env::new();
    let repo = bert2bert();
    let hub = FakeHub::start(vec![(MODEL, repo.clone())]);
    env.set("HF_ENDPOINT", hub.endpoint());

    let dir = resolve_model_dir(MODEL, &opts(None)).unwrap();
    assert_eq!(dir, snapshot_dir(&env.cache(), MODEL, &repo));
    for name in NEEDED {
        let got = std::fs::read(dir.join(name)).unwrap();
        let want = std::fs::read(Path::new(FIXTURE).join(name)).unwrap();
        assert!(got == want, "{name} differs from the fixture");
        // Standard layout: snapshot entries are symlinks into blobs/.
        let meta = std::fs::symlink_metadata(dir.join(name)).unwrap();
        assert!(meta.file_type().is_symlink(), "{name} is not a symlink");
        let target = std::fs::canonicalize(dir.join(name)).unwrap();
        assert_eq!(target.parent().unwrap().file_name().unwrap(), "blobs");
    }
    for name in [
        "oracle_meta.json",
        "README.md",
        "pytorch_model.bin",
        "flax_model.msgpack",
    ] {
        assert!(!dir.join(name).exists(), "{name} should not be fetched");
    }
    let mut fetched = hub.resolved();
    fetched.sort();
    fetched.dedup();
    let mut needed: Vec<String> = NEEDED.iter().map(|s| s.to_string()).collect();
    needed.sort();
    assert_eq!(fetched, needed, "only the needed files are requested");

    let repo_dir = env.cache().join("models--encdec-test--bert2bert");
    let main_ref = std::fs::read_to_string(repo_dir.join("refs/main")).unwrap();
    assert_eq!(main_ref.trim(), repo.sha);
    assert!(
        !repo_dir.join("refs").join(&repo.sha).exists(),
        "no ref named after the commit"
    );
    assert!(files_under(&repo_dir.join("blobs"))
        .iter()
        .all(|p| p.extension().is_none_or(|e| e != "part")));

    // Warm cache: the listing is asked for again, no file is downloaded again.
    hub.clear_log();
    let again = resolve_model_dir(MODEL, &opts(Some("main"))).unwrap();
    assert_eq!(again, dir);
    assert!(
        hub.resolved().is_empty(),
        "re-downloaded {:?}",
        hub.resolved()
    );
    assert_eq!(hub.requests().len(), 1);

    // Pinning the commit hash resolves to the same snapshot.
    let pinned = resolve_model_dir(MODEL, &opts(Some(&repo.sha))).unwrap();
    assert_eq!(pinned, dir);

    // A corrupted cached file (wrong size) is detected and fetched again.
    let blob = std::fs::canonicalize(dir.join("vocab.txt")).unwrap();
    std::fs::write(&blob, b"garbage").unwrap();
    resolve_model_dir(MODEL, &opts(None)).unwrap();
    assert_eq!(
        std::fs::read(dir.join("vocab.txt")).unwrap(),
        std::fs::read(Path::new(FIXTURE).join("vocab.txt")).unwrap()
    );

    // The CLI prints the same directory on stdout.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_encdec"))
        .args(["download", MODEL, "--revision", "main"])
        .env("HF_ENDPOINT", hub.endpoint())
        .env("HF_HOME", env.home.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "encdec download failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        dir.to_str().unwrap()
    );
}

#[test]
fn local_directories_are_returned_as_is() {
    let _env = Env::new();
    let dir = resolve_model_dir(FIXTURE, &opts(None)).unwrap();
    assert_eq!(dir, PathBuf::from(FIXTURE));
    let err = err_text(resolve_model_dir("./no/such/model", &opts(None)));
    assert!(err.contains("does not exist"), "{err}");
    let err = err_text(resolve_model_dir("not a model id", &opts(None)));
    assert!(err.contains("valid hub model id"), "{err}");
}

#[test]
fn missing_model_and_revision_are_clear_errors() {
    let env = Env::new();
    let hub = FakeHub::start(vec![(MODEL, bert2bert())]);
    env.set("HF_ENDPOINT", hub.endpoint());

    let err = err_text(resolve_model_dir("encdec-test/nope", &opts(None)));
    assert!(
        err.contains("model encdec-test/nope not found on the hub (revision main)"),
        "{err}"
    );
    let err = err_text(resolve_model_dir(MODEL, &opts(Some("v9"))));
    assert!(
        err.contains("revision v9 of model encdec-test/bert2bert not found"),
        "{err}"
    );
    assert!(!env
        .cache()
        .join("models--encdec-test--nope/snapshots")
        .exists());
    let err = err_text(resolve_model_dir(MODEL, &opts(Some("../../etc"))));
    assert!(err.contains("invalid revision"), "{err}");
}

#[test]
fn gated_model_needs_hf_token_and_sends_it() {
    let env = Env::new();
    let mut repo = bert2bert();
    repo.gated = true;
    let hub = FakeHub::start(vec![("encdec-test/gated", repo)]);
    env.set("HF_ENDPOINT", hub.endpoint());

    let err = err_text(resolve_model_dir("encdec-test/gated", &opts(None)));
    assert!(err.contains("HF_TOKEN"), "{err}");

    env.set("HF_TOKEN", TOKEN);
    let dir = resolve_model_dir("encdec-test/gated", &opts(None)).unwrap();
    assert!(dir.join("model.safetensors").is_file());
    let bearer = format!("Bearer {TOKEN}");
    assert!(hub
        .requests()
        .iter()
        .any(|(_, auth)| auth.as_deref() == Some(bearer.as_str())));
}

#[test]
fn truncated_download_fails_and_leaves_nothing_corrupt() {
    let env = Env::new();
    let mut truncated = bert2bert();
    truncated.truncate = Some("model.safetensors".into());
    let mut lying = FakeRepo::new('c', fixture_files());
    lying.wrong_size = Some("model.safetensors".into());
    let hub = FakeHub::start(vec![
        ("encdec-test/truncated", truncated.clone()),
        ("encdec-test/lying", lying.clone()),
    ]);
    env.set("HF_ENDPOINT", hub.endpoint());

    let check_clean = |id: &str, repo: &FakeRepo| {
        let repo_dir = env
            .cache()
            .join(format!("models--{}", id.replace('/', "--")));
        let snap = snapshot_dir(&env.cache(), id, repo);
        assert!(
            std::fs::symlink_metadata(snap.join("model.safetensors")).is_err(),
            "no model.safetensors in the snapshot"
        );
        assert!(
            !repo_dir.join("refs/main").exists(),
            "no ref to an incomplete snapshot"
        );
        for blob in files_under(&repo_dir.join("blobs")) {
            if blob.extension().is_some_and(|e| e == "lock") {
                continue;
            }
            assert!(
                blob.extension().is_none_or(|e| e != "part"),
                "left {}",
                blob.display()
            );
            let bytes = std::fs::read(&blob).unwrap();
            assert!(
                repo.files.iter().any(|(_, f)| *f == bytes),
                "blob {} matches no repo file",
                blob.display()
            );
        }
        // And offline mode does not mistake it for a usable checkpoint.
        env.set("HF_HUB_OFFLINE", "1");
        let err = err_text(resolve_model_dir(id, &opts(None)));
        env.unset("HF_HUB_OFFLINE");
        assert!(err.contains(id), "{err}");
    };

    let err = err_text(resolve_model_dir("encdec-test/truncated", &opts(None)));
    assert!(
        err.contains("model.safetensors") && err.contains("truncated"),
        "{err}"
    );
    check_clean("encdec-test/truncated", &truncated);

    // A body that ends early without the transport noticing is caught by the size check.
    let err = err_text(resolve_model_dir("encdec-test/lying", &opts(None)));
    assert!(
        err.contains("model.safetensors") && err.contains("incomplete"),
        "{err}"
    );
    check_clean("encdec-test/lying", &lying);
}

#[test]
fn offline_mode_uses_only_the_cache() {
    let env = Env::new();
    let repo = bert2bert();
    let mut hub = FakeHub::start(vec![(MODEL, repo.clone())]);
    env.set("HF_ENDPOINT", hub.endpoint());
    let dir = resolve_model_dir(MODEL, &opts(None)).unwrap();

    // A hub outage (HTTP 5xx) falls back to the cache; a model not cached reports it.
    hub.outage.store(true, Ordering::SeqCst);
    assert_eq!(resolve_model_dir(MODEL, &opts(None)).unwrap(), dir);
    let err = err_text(resolve_model_dir("encdec-test/other", &opts(None)));
    assert!(
        err.contains("HTTP 503") && err.contains("not in the local cache"),
        "{err}"
    );

    hub.shutdown();
    env.set("HF_ENDPOINT", DEAD_ENDPOINT);

    // Warm cache, offline: no network needed.
    env.set("HF_HUB_OFFLINE", "1");
    assert_eq!(resolve_model_dir(MODEL, &opts(None)).unwrap(), dir);
    assert_eq!(
        resolve_model_dir(MODEL, &opts(Some(&repo.sha))).unwrap(),
        dir
    );

    // Warm cache, hub unreachable but not offline: falls back to the cache.
    env.unset("HF_HUB_OFFLINE");
    assert_eq!(resolve_model_dir(MODEL, &opts(None)).unwrap(), dir);

    // Cold cache, offline: a clear error naming the model and the missing file.
    let cold = tempfile::tempdir().unwrap();
    env.set("HF_HOME", cold.path());
    env.set("HF_HUB_OFFLINE", "1");
    let err = err_text(resolve_model_dir(MODEL, &opts(None)));
    assert!(
        err.contains(MODEL) && err.contains("config.json") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );

    // A cache holding only part of the checkpoint names the missing weights.
    let partial = cold
        .path()
        .join("hub/models--encdec-test--bert2bert/snapshots")
        .join(&repo.sha);
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::copy(
        Path::new(FIXTURE).join("config.json"),
        partial.join("config.json"),
    )
    .unwrap();
    std::fs::create_dir_all(cold.path().join("hub/models--encdec-test--bert2bert/refs")).unwrap();
    std::fs::write(
        cold.path()
            .join("hub/models--encdec-test--bert2bert/refs/main"),
        &repo.sha,
    )
    .unwrap();
    let err = err_text(resolve_model_dir(MODEL, &opts(None)));
    assert!(err.contains("model.safetensors"), "{err}");

    // Cold cache, hub unreachable: the connection error is reported.
    env.unset("HF_HUB_OFFLINE");
    let err = err_text(resolve_model_dir("encdec-test/other", &opts(None)));
    assert!(err.contains("cannot reach the hub"), "{err}");
}

#[test]
fn sharded_checkpoint_fetches_every_shard_into_hf_hub_cache() {
    let env = Env::new();
    let index = serde_json::json!({
        "metadata": { "total_size": 2000 },
        "weight_map": {
            "encoder.a": "model-00001-of-00002.safetensors",
            "encoder.b": "model-00001-of-00002.safetensors",
            "decoder.a": "model-00002-of-00002.safetensors",
        }
    });
    let files = vec![
        ("config.json".to_string(), b"{}".to_vec()),
        ("vocab.json".to_string(), b"{\"a\":0}".to_vec()),
        ("merges.txt".to_string(), b"#version: 0.2\n".to_vec()),
        (
            "model.safetensors.index.json".to_string(),
            index.to_string().into_bytes(),
        ),
        (
            "model-00001-of-00002.safetensors".to_string(),
            vec![1u8; 1000],
        ),
        (
            "model-00002-of-00002.safetensors".to_string(),
            vec![2u8; 1000],
        ),
        ("pytorch_model.bin".to_string(), vec![3u8; 1000]),
    ];
    let repo = FakeRepo::new('b', files);
    let hub = FakeHub::start(vec![("encdec-test/sharded", repo.clone())]);
    env.set("HF_ENDPOINT", hub.endpoint());
    let hub_cache = tempfile::tempdir().unwrap();
    env.set("HF_HUB_CACHE", hub_cache.path());

    let dir = resolve_model_dir("encdec-test/sharded", &opts(None)).unwrap();
    assert_eq!(
        dir,
        snapshot_dir(hub_cache.path(), "encdec-test/sharded", &repo)
    );
    for (name, bytes) in &repo.files {
        if name == "pytorch_model.bin" {
            assert!(!dir.join(name).exists(), "the .bin is not needed");
        } else {
            assert_eq!(&std::fs::read(dir.join(name)).unwrap(), bytes, "{name}");
        }
    }
    assert!(!env.cache().exists(), "HF_HUB_CACHE wins over HF_HOME");
}
