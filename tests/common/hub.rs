//! A loopback stand-in for the Hugging Face hub serving one checkpoint directory, whose
//! weight downloads send half their bytes, then wait until [`FakeHub::release`] (to hold
//! a server in its downloading phase). Answers the two endpoints hf-hub uses: the revision listing and `resolve`
//! (with `Range`). See tests/hub_download.rs for the full-featured one.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct FakeHub {
    addr: SocketAddr,
    released: Arc<AtomicBool>,
}

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// The variables of `huggingface_hub` and the proxy variables ureq honours (it has no
/// NO_PROXY, so loopback traffic must not go to a proxy): what a test clears so that only
/// its own fake hub is reached.
pub const HUB_ENV_VARS: &[&str] = &[
    "HF_ENDPOINT",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_HUB_OFFLINE",
    "XDG_CACHE_HOME",
    "ALL_PROXY",
    "all_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
];

/// A stable content id used as etag / blobId / lfs.sha256 (64 hex digits).
pub fn etag(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}{:016x}{h:016x}{:016x}", bytes.len(), !h)
}

impl FakeHub {
    /// Serves the files of `dir` as repo `id`; weights wait for `release` (at most 60 s).
    pub fn start(id: &str, dir: &Path, released: bool) -> FakeHub {
        let mut files = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                let name = e.file_name().into_string().unwrap();
                files.push((name, std::fs::read(e.path()).unwrap()));
            }
        }
        let files = Arc::new(files);
        let id = id.to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let released = Arc::new(AtomicBool::new(released));
        let gate = released.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (files, id, gate) = (files.clone(), id.clone(), gate.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &id, &files, &gate);
                });
            }
        });
        FakeHub { addr, released }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
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
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

fn serve(
    mut stream: TcpStream,
    id: &str,
    files: &[(String, Vec<u8>)],
    gate: &AtomicBool,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = v.trim().strip_prefix("bytes=").map(str::to_string);
            }
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let not_found = |s: &mut TcpStream| {
        respond(
            s,
            "404 Not Found",
            &[
                ("X-Error-Code", "EntryNotFound".into()),
                ("Content-Length", "2".into()),
            ],
            b"{}",
        )
    };
    if path.starts_with(&format!("/api/models/{id}/revision/")) {
        let siblings: Vec<_> = files
            .iter()
            .map(|(name, bytes)| {
                let mut s = serde_json::json!({
                    "rfilename": name, "size": bytes.len(), "blobId": etag(bytes)[..40].to_string(),
                });
                if name.ends_with(".safetensors") || name.ends_with(".bin") {
                    s["lfs"] = serde_json::json!({
                        "sha256": etag(bytes), "size": bytes.len(), "pointerSize": 134,
                    });
                }
                s
            })
            .collect();
        let body = serde_json::json!({
            "id": id, "modelId": id, "sha": SHA, "private": false, "siblings": siblings,
        })
        .to_string();
        return respond(
            &mut stream,
            "200 OK",
            &[
                ("Content-Type", "application/json".into()),
                ("Content-Length", body.len().to_string()),
            ],
            body.as_bytes(),
        );
    }
    let Some(rest) = path.strip_prefix(&format!("/{id}/resolve/")) else {
        return not_found(&mut stream);
    };
    let Some((_rev, file)) = rest.split_once('/') else {
        return not_found(&mut stream);
    };
    let Some((_, bytes)) = files.iter().find(|(n, _)| n == file) else {
        return not_found(&mut stream);
    };
    let lfs = file.ends_with(".safetensors") || file.ends_with(".bin");
    // The weights' download (not hf-hub's one-byte metadata probe) sends half its body,
    // then waits for `release`.
    let held = lfs && method == "GET" && range.as_deref() != Some("0-0");
    let total = bytes.len();
    let tag = if lfs {
        etag(bytes)
    } else {
        etag(bytes)[..40].to_string()
    };
    let mut headers = vec![
        ("ETag", format!("\"{tag}\"")),
        ("X-Repo-Commit", SHA.to_string()),
        ("Accept-Ranges", "bytes".to_string()),
        ("Content-Type", "application/octet-stream".to_string()),
    ];
    let (status, start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
        Some((a, b)) => {
            let start: usize = a.parse().unwrap_or(0);
            let end: usize = b
                .parse()
                .unwrap_or(total.saturating_sub(1))
                .min(total.saturating_sub(1));
            headers.push(("Content-Range", format!("bytes {start}-{end}/{total}")));
            ("206 Partial Content", start, end + 1)
        }
        None => ("200 OK", 0, total),
    };
    let body = &bytes[start.min(total)..end.min(total)];
    headers.push(("Content-Length", body.len().to_string()));
    if method == "HEAD" {
        return respond(&mut stream, status, &headers, b"");
    }
    if held {
        let half = body.len() / 2;
        let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
        for (k, v) in &headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(&body[..half])?;
        stream.flush()?;
        let end = Instant::now() + Duration::from_secs(60);
        while !gate.load(Ordering::SeqCst) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        stream.write_all(&body[half..])?;
        return stream.flush();
    }
    respond(&mut stream, status, &headers, body)
}
