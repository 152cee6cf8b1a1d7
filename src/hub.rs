//! Model sources: a local checkpoint directory, or a Hugging Face Hub model id that is
//! fetched into the standard Hugging Face cache (the layout Python's `huggingface_hub`
//! uses, so Python and encdec share one cache).
//!
//! Environment, as in `huggingface_hub`:
//! - `HF_ENDPOINT`: hub base URL (default `https://huggingface.co`);
//! - `HF_HUB_CACHE` (or legacy `HUGGINGFACE_HUB_CACHE`), else `$HF_HOME/hub`, else
//!   `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`: the cache;
//! - `HF_TOKEN` (or legacy `HUGGING_FACE_HUB_TOKEN`), else the file `HF_TOKEN_PATH`,
//!   else `$HF_HOME/token`: the access token for private and gated models;
//! - `HF_HUB_OFFLINE=1`: never touch the network, use the cache only.
//!
//! Only the files the loader needs are fetched: `config.json`, `generation_config.json`,
//! the tokenizer files, and one set of weights (`model.safetensors`, else
//! `model.safetensors.index.json` and every shard it names, else `pytorch_model.bin`).
//! The repo listing (`/api/models/{id}/revision/{rev}?blobs=true`) says which exist.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use hf_hub::api::sync::{Api, ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use serde::Deserialize;
use tracing::{info, warn};

/// The public hub, used when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The revision used when none is given.
pub const DEFAULT_REVISION: &str = "main";

const CONFIG: &str = "config.json";
const GENERATION_CONFIG: &str = "generation_config.json";
const SAFETENSORS: &str = "model.safetensors";
const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";
const PYTORCH_BIN: &str = "pytorch_model.bin";

/// Tokenizer files fetched when the repo has them.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
];

/// How many times an interrupted download is resumed before giving up.
const DOWNLOAD_RETRIES: usize = 3;
/// Limit for the file-listing request (downloads are limited by progress, not time).
const LISTING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// How to fetch a hub model.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// Branch, tag or commit; `None` means `main`.
    pub revision: Option<String>,
    /// Draw progress bars (only when stderr is a terminal).
    pub progress: bool,
}

/// Resolve a model source to a local checkpoint directory.
///
/// A local directory is returned as is; otherwise `source` is a hub id
/// ("google/roberta2roberta_L-24_bbc") whose files are fetched into the cache (or found
/// there) and the snapshot directory of the resolved commit is returned.
///
/// This blocks on network and disk I/O: call it from `tokio::task::spawn_blocking` (or
/// before starting the runtime) in async code.
pub fn resolve_model_dir(source: &str, opts: &HubOptions) -> Result<PathBuf> {
    let path = Path::new(source);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if looks_like_path(source) {
        bail!("model directory {source} does not exist (and it is not a hub model id)");
    }
    validate_repo_id(source)?;
    let revision = opts
        .revision
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or(DEFAULT_REVISION);
    if revision.starts_with('/')
        || revision.contains('\\')
        || revision
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
    {
        bail!("invalid revision {revision:?} for model {source}");
    }
    let cache_dir = hub_cache_dir();
    if offline_mode() {
        return resolve_offline(source, revision, &cache_dir);
    }
    resolve_online(source, revision, &cache_dir, opts.progress)
}

/// The hub cache directory (`HF_HUB_CACHE`, `$HF_HOME/hub`, ... as `huggingface_hub`).
pub fn hub_cache_dir() -> PathBuf {
    for var in ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"] {
        if let Some(dir) = env_nonempty(var) {
            return PathBuf::from(dir);
        }
    }
    hf_home().join("hub")
}

/// Whether `HF_HUB_OFFLINE` asks for cache-only operation.
pub fn offline_mode() -> bool {
    env_nonempty("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true"))
        .unwrap_or(false)
}

/// The hub base URL (`HF_ENDPOINT`, default the public hub), without a trailing slash.
pub fn hub_endpoint() -> String {
    env_nonempty("HF_ENDPOINT")
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
        .trim_end_matches('/')
        .to_string()
}

fn env_nonempty(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

fn hf_home() -> PathBuf {
    if let Some(home) = env_nonempty("HF_HOME") {
        return PathBuf::from(home);
    }
    if let Some(xdg) = env_nonempty("XDG_CACHE_HOME") {
        return PathBuf::from(xdg).join("huggingface");
    }
    let home = env_nonempty("HOME").unwrap_or_else(|| "/tmp".to_string());
    PathBuf::from(home).join(".cache").join("huggingface")
}

fn hub_token() -> Option<String> {
    for var in ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"] {
        if let Some(token) = env_nonempty(var) {
            return Some(token.trim().to_string());
        }
    }
    let path = env_nonempty("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home().join("token"));
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Paths are told apart from hub ids by their shape: hub ids are `name` or `org/name`.
fn looks_like_path(source: &str) -> bool {
    source.starts_with(['/', '.', '~'])
        || source.contains('\\')
        || source.ends_with('/')
        || source.matches('/').count() > 1
}

fn validate_repo_id(id: &str) -> Result<()> {
    let parts: Vec<&str> = id.split('/').collect();
    let valid_part = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
            && !p.contains("--")
            && !p.contains("..")
    };
    if parts.len() > 2 || !parts.iter().all(|p| valid_part(p)) {
        bail!(
            "{id:?} is neither an existing directory nor a valid hub model id \
             (expected \"name\" or \"org/name\")"
        );
    }
    Ok(())
}

/// A full commit hash, as opposed to a branch or tag name.
fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `models--org--name`, the repo's folder in the cache.
fn repo_folder(id: &str) -> String {
    format!("models--{}", id.replace('/', "--"))
}

// ----------------------------------------------------------------------------- listing

#[derive(Debug, Deserialize)]
struct RepoListing {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Debug, Clone, Deserialize)]
struct Sibling {
    rfilename: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default, rename = "blobId")]
    blob_id: Option<String>,
    #[serde(default)]
    lfs: Option<LfsInfo>,
}

#[derive(Debug, Clone, Deserialize)]
struct LfsInfo {
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    size: Option<u64>,
}

impl Sibling {
    fn expected_size(&self) -> Option<u64> {
        self.lfs.as_ref().and_then(|l| l.size).or(self.size)
    }

    /// The blob name hf-hub stores the file under (its etag: LFS sha256, else git oid).
    fn etag(&self) -> Option<&str> {
        self.lfs
            .as_ref()
            .and_then(|l| l.sha256.as_deref())
            .or(self.blob_id.as_deref())
    }
}

impl RepoListing {
    fn get(&self, name: &str) -> Option<&Sibling> {
        self.siblings.iter().find(|s| s.rfilename == name)
    }
}

enum ListingError {
    /// No HTTP answer at all (DNS, connection refused, TLS, timeout).
    Unreachable(anyhow::Error),
    /// The hub answered, with an error.
    Refused(anyhow::Error),
}

fn fetch_listing(api: &Api, ctx: &Ctx) -> std::result::Result<RepoListing, ListingError> {
    let repo = api.repo(Repo::with_revision(
        ctx.id.to_string(),
        RepoType::Model,
        ctx.revision.to_string(),
    ));
    let request = repo
        .info_request()
        .query("blobs", "true")
        .timeout(LISTING_TIMEOUT);
    match request.call() {
        Ok(response) => {
            let body = response.into_string().map_err(|e| {
                ListingError::Unreachable(anyhow!(
                    "reading the file listing of model {} (revision {}) from {}: {e}",
                    ctx.id,
                    ctx.revision,
                    ctx.endpoint
                ))
            })?;
            serde_json::from_str(&body).map_err(|e| {
                ListingError::Refused(anyhow!(
                    "the hub at {} returned an unexpected file listing for model {} (revision {}): {e}",
                    ctx.endpoint,
                    ctx.id,
                    ctx.revision
                ))
            })
        }
        Err(err) => {
            let message = err.to_string();
            match err.into_response() {
                Some(response) => {
                    let status = response.status();
                    let code = response.header("x-error-code").map(str::to_owned);
                    let body = response.into_string().unwrap_or_default();
                    let err = status_error(ctx, status, code.as_deref(), &body);
                    if status >= 500 {
                        // A hub outage: the cache may still serve this revision.
                        Err(ListingError::Unreachable(err))
                    } else {
                        Err(ListingError::Refused(err))
                    }
                }
                None => Err(ListingError::Unreachable(anyhow!(
                    "cannot reach the hub at {} to resolve model {} (revision {}): {message}",
                    ctx.endpoint,
                    ctx.id,
                    ctx.revision
                ))),
            }
        }
    }
}

fn status_error(ctx: &Ctx, status: u16, code: Option<&str>, body: &str) -> anyhow::Error {
    let (id, rev) = (ctx.id, ctx.revision);
    let local_hint = if Path::new(id).exists() {
        String::new()
    } else {
        format!(" (and there is no local directory named {id})")
    };
    match (status, code) {
        (404, Some("RevisionNotFound")) => {
            anyhow!(
                "revision {rev} of model {id} not found on the hub at {}",
                ctx.endpoint
            )
        }
        (404, _) => anyhow!("model {id} not found on the hub (revision {rev}){local_hint}"),
        (401, _) if !ctx.has_token => anyhow!(
            "model {id} not found on the hub (revision {rev}){local_hint}; \
             if it is private or gated, set HF_TOKEN"
        ),
        (401 | 403, _) => anyhow!(
            "access to model {id} (revision {rev}) denied (HTTP {status}): check that HF_TOKEN \
             grants access (gated models need their terms accepted on the hub)"
        ),
        _ => {
            let snippet: String = body.chars().take(200).collect();
            anyhow!(
                "the hub at {} answered HTTP {status} for model {id} (revision {rev}): {}",
                ctx.endpoint,
                snippet.trim()
            )
        }
    }
}

// ----------------------------------------------------------------------------- resolving

struct Ctx<'a> {
    id: &'a str,
    revision: &'a str,
    endpoint: String,
    has_token: bool,
}

fn build_api(endpoint: &str, cache_dir: &Path, token: Option<String>) -> Result<Api> {
    ApiBuilder::from_cache(Cache::new(cache_dir.to_path_buf()))
        .with_endpoint(endpoint.to_string())
        .with_token(token)
        .with_progress(false)
        .with_retries(DOWNLOAD_RETRIES)
        .with_user_agent("encdec", env!("CARGO_PKG_VERSION"))
        .build()
        .context("building the hub client")
}

fn resolve_online(id: &str, revision: &str, cache_dir: &Path, progress: bool) -> Result<PathBuf> {
    let token = hub_token();
    let ctx = Ctx {
        id,
        revision,
        endpoint: hub_endpoint(),
        has_token: token.is_some(),
    };
    let api = build_api(&ctx.endpoint, cache_dir, token)?;
    let listing = match fetch_listing(&api, &ctx) {
        Ok(listing) => listing,
        Err(ListingError::Refused(err)) => return Err(err),
        Err(ListingError::Unreachable(err)) => {
            // Like huggingface_hub: a hub that cannot be reached is not fatal when the
            // cache already holds a complete snapshot of this revision.
            return match resolve_offline(id, revision, cache_dir) {
                Ok(dir) => {
                    warn!(model = id, revision, error = %err, "hub unreachable; using the cached snapshot");
                    Ok(dir)
                }
                Err(_) => Err(anyhow!(
                    "{err:#}; and model {id} (revision {revision}) is not in the local cache {}",
                    cache_dir.display()
                )),
            };
        }
    };
    if !is_commit_hash(&listing.sha) {
        bail!(
            "the hub at {} returned an invalid commit hash {:?} for model {id} (revision {revision})",
            ctx.endpoint,
            listing.sha
        );
    }

    let repo_dir = cache_dir.join(repo_folder(id));
    let snapshot = repo_dir.join("snapshots").join(&listing.sha);
    // Files are fetched at the listed commit so that they all come from one commit. hf-hub
    // then records a ref named after the commit, which huggingface_hub never writes:
    // remove it afterwards and record the requested revision instead, once complete.
    let commit_ref = repo_dir.join("refs").join(&listing.sha);
    let had_commit_ref = commit_ref.exists();
    let pinned = api.repo(Repo::with_revision(
        id.to_string(),
        RepoType::Model,
        listing.sha.clone(),
    ));
    let fetched = fetch_all(&pinned, &ctx, &listing, &snapshot, progress);
    if !had_commit_ref {
        let _ = std::fs::remove_file(&commit_ref);
    }
    let count = fetched?;
    if revision != listing.sha.as_str() {
        let ref_path = repo_dir.join("refs").join(revision);
        if let Some(parent) = ref_path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&ref_path, &listing.sha)
            .with_context(|| format!("writing {}", ref_path.display()))?;
    }
    info!(
        model = id,
        revision,
        commit = %listing.sha,
        files = count,
        dir = %snapshot.display(),
        "model ready"
    );
    Ok(snapshot)
}

/// Fetch every file the loader needs; small files first, weights last. Returns the count.
fn fetch_all(
    repo: &ApiRepo,
    ctx: &Ctx,
    listing: &RepoListing,
    snapshot: &Path,
    progress: bool,
) -> Result<usize> {
    let (id, rev) = (ctx.id, ctx.revision);
    let config = listing.get(CONFIG).ok_or_else(|| {
        anyhow!("model {id} (revision {rev}) has no {CONFIG}: not a transformers checkpoint")
    })?;
    let mut small = vec![config];
    small.extend(listing.get(GENERATION_CONFIG));
    small.extend(TOKENIZER_FILES.iter().filter_map(|f| listing.get(f)));

    let weights = if let Some(w) = listing.get(SAFETENSORS) {
        Weights::Single(w)
    } else if let Some(index) = listing.get(SAFETENSORS_INDEX) {
        Weights::Sharded(index)
    } else if let Some(w) = listing.get(PYTORCH_BIN) {
        Weights::Single(w)
    } else {
        bail!(
            "model {id} (revision {rev}) has no weights the loader can read \
             ({SAFETENSORS}, {SAFETENSORS_INDEX} or {PYTORCH_BIN})"
        );
    };

    for file in &small {
        fetch_file(repo, ctx, file, snapshot, progress)?;
    }
    let mut count = small.len();
    match weights {
        Weights::Single(w) => {
            fetch_file(repo, ctx, w, snapshot, progress)?;
            count += 1;
        }
        Weights::Sharded(index) => {
            let index_path = fetch_file(repo, ctx, index, snapshot, progress)?;
            let shards = read_index_shards(&index_path)
                .with_context(|| format!("model {id} (revision {rev})"))?;
            count += 1;
            for shard in &shards {
                let sibling = listing.get(shard).ok_or_else(|| {
                    anyhow!(
                        "model {id} (revision {rev}): {SAFETENSORS_INDEX} names the shard \
                         {shard}, which is not in the repo"
                    )
                })?;
                fetch_file(repo, ctx, sibling, snapshot, progress)?;
                count += 1;
            }
        }
    }
    Ok(count)
}

enum Weights<'a> {
    Single(&'a Sibling),
    Sharded(&'a Sibling),
}

/// The distinct shard files named by a safetensors index's `weight_map`.
fn read_index_shards(index_path: &Path) -> Result<BTreeSet<String>> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: std::collections::HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index_path)
        .with_context(|| format!("reading {}", index_path.display()))?;
    let index: Index =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", index_path.display()))?;
    let shards: BTreeSet<String> = index.weight_map.into_values().collect();
    for shard in &shards {
        let safe = Path::new(shard)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            bail!("{SAFETENSORS_INDEX} names an invalid shard path {shard:?}");
        }
    }
    if shards.is_empty() {
        bail!("{SAFETENSORS_INDEX} names no shards");
    }
    Ok(shards)
}

/// Told the progress of the downloads made on one thread (see [`with_progress`]); the
/// server shows it in `/ready`.
pub trait DownloadProgress: Send + Sync {
    /// A download of `file`, `total` bytes, begins.
    fn started(&self, file: &str, total: u64);
    /// `bytes` more bytes of it arrived.
    fn advanced(&self, bytes: u64);
}

thread_local! {
    static PROGRESS_SINK: std::cell::RefCell<Option<std::sync::Arc<dyn DownloadProgress>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f`, reporting the downloads it makes on this thread to `sink` (instead of
/// progress bars).
pub fn with_progress<T>(sink: std::sync::Arc<dyn DownloadProgress>, f: impl FnOnce() -> T) -> T {
    let previous = PROGRESS_SINK.with(|s| s.replace(Some(sink)));
    let out = f();
    PROGRESS_SINK.with(|s| *s.borrow_mut() = previous);
    out
}

struct SinkProgress(std::sync::Arc<dyn DownloadProgress>);

impl hf_hub::api::Progress for SinkProgress {
    fn init(&mut self, size: usize, filename: &str) {
        self.0.started(filename, size as u64);
    }
    fn update(&mut self, size: usize) {
        self.0.advanced(size as u64);
    }
    fn finish(&mut self) {}
}

fn fetch_file(
    repo: &ApiRepo,
    ctx: &Ctx,
    file: &Sibling,
    snapshot: &Path,
    progress: bool,
) -> Result<PathBuf> {
    let name = file.rfilename.as_str();
    let (id, rev) = (ctx.id, ctx.revision);
    let local = snapshot.join(name);
    let expected = file.expected_size();
    if let Ok(meta) = std::fs::metadata(&local) {
        if expected.is_none_or(|size| size == meta.len()) {
            info!(
                model = id,
                revision = rev,
                file = name,
                bytes = meta.len(),
                "found in cache"
            );
            return Ok(local);
        }
        warn!(
            model = id,
            file = name,
            bytes = meta.len(),
            expected = ?expected,
            "cached file has the wrong size; downloading it again"
        );
        remove_cached(&local);
    } else if std::fs::symlink_metadata(&local).is_ok() {
        // A dangling pointer (its blob was deleted): hf-hub cannot replace it by itself.
        let _ = std::fs::remove_file(&local);
    }

    let started = Instant::now();
    info!(
        model = id,
        revision = rev,
        file = name,
        bytes = expected,
        "downloading"
    );
    let sink = PROGRESS_SINK.with(|s| s.borrow().clone());
    let result = if let Some(sink) = sink {
        repo.download_with_progress(name, SinkProgress(sink))
    } else if progress && std::io::stderr().is_terminal() {
        repo.download_with_progress(name, indicatif::ProgressBar::new(0))
    } else {
        repo.download_with_progress(name, ())
    };
    let path = match result {
        Ok(path) => path,
        Err(err) => {
            // Leave no partial file behind (hf-hub keeps `<blob>.part` to resume).
            if let Some(etag) = file.etag() {
                if let Some(repo_dir) = snapshot.parent().and_then(Path::parent) {
                    let _ =
                        std::fs::remove_file(repo_dir.join("blobs").join(format!("{etag}.part")));
                }
            }
            return Err(download_error(ctx, name, err));
        }
    };
    let got = std::fs::metadata(&path)
        .with_context(|| format!("reading the downloaded {}", path.display()))?
        .len();
    if let Some(size) = expected.filter(|&size| size != got) {
        remove_cached(&path);
        bail!(
            "download of {name} for model {id} (revision {rev}) is incomplete: expected {size} \
             bytes, got {got}; the partial file was removed from the cache, try again"
        );
    }
    info!(
        model = id,
        revision = rev,
        file = name,
        bytes = got,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "downloaded"
    );
    Ok(path)
}

/// Remove a snapshot pointer and the blob it points to.
fn remove_cached(pointer: &Path) {
    if let Ok(blob) = std::fs::canonicalize(pointer) {
        if blob != pointer {
            let _ = std::fs::remove_file(&blob);
        }
    }
    let _ = std::fs::remove_file(pointer);
}

fn download_error(ctx: &Ctx, name: &str, err: ApiError) -> anyhow::Error {
    let (id, rev) = (ctx.id, ctx.revision);
    let err = match err {
        ApiError::TooManyRetries(inner) => *inner,
        other => other,
    };
    match err {
        ApiError::RequestError(req) => {
            let message = req.to_string();
            match req.into_response() {
                Some(response) => {
                    let status = response.status();
                    match status {
                        404 => anyhow!(
                            "{name} not found in model {id} (revision {rev}) on the hub at {}",
                            ctx.endpoint
                        ),
                        401 | 403 => anyhow!(
                            "access to {name} of model {id} (revision {rev}) denied \
                             (HTTP {status}); check HF_TOKEN"
                        ),
                        _ => anyhow!(
                            "downloading {name} of model {id} (revision {rev}) failed: HTTP {status}"
                        ),
                    }
                }
                None => anyhow!(
                    "downloading {name} of model {id} (revision {rev}) from {} failed: {message}",
                    ctx.endpoint
                ),
            }
        }
        ApiError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => anyhow!(
            "download of {name} for model {id} (revision {rev}) was truncated: the connection \
             closed before all bytes arrived ({DOWNLOAD_RETRIES} retries); nothing was kept in \
             the cache, try again"
        ),
        ApiError::MissingHeader(header) => anyhow!(
            "downloading {name} of model {id} (revision {rev}): the server at {} sent no {header} \
             header (is HF_ENDPOINT a Hugging Face hub?)",
            ctx.endpoint
        ),
        ApiError::LockAcquisition(path) => anyhow!(
            "downloading {name} of model {id}: another process holds the cache lock {}",
            path.display()
        ),
        other => anyhow!("downloading {name} of model {id} (revision {rev}) failed: {other}"),
    }
}

/// Cache-only resolution: the snapshot of `revision` must hold a loadable checkpoint.
fn resolve_offline(id: &str, revision: &str, cache_dir: &Path) -> Result<PathBuf> {
    let repo_dir = cache_dir.join(repo_folder(id));
    let missing = |file: &str| {
        anyhow!(
            "model {id} (revision {revision}) is not in the local cache {} (missing {file}) and \
             HF_HUB_OFFLINE is set; fetch it first with `encdec download {id}` while online",
            cache_dir.display()
        )
    };
    let commit = if is_commit_hash(revision) && repo_dir.join("snapshots").join(revision).is_dir() {
        revision.to_string()
    } else {
        match std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
            Ok(commit) => commit.trim().to_string(),
            Err(_) => return Err(missing(CONFIG)),
        }
    };
    let snapshot = repo_dir.join("snapshots").join(&commit);
    if let Some(file) = first_missing_file(&snapshot) {
        return Err(missing(&file));
    }
    info!(model = id, revision, commit = %commit, dir = %snapshot.display(), "using the cached snapshot");
    Ok(snapshot)
}

/// The first file a loadable checkpoint needs that `dir` lacks, if any.
fn first_missing_file(dir: &Path) -> Option<String> {
    if !dir.join(CONFIG).is_file() {
        return Some(CONFIG.to_string());
    }
    if dir.join(SAFETENSORS).is_file() {
        return None;
    }
    let index = dir.join(SAFETENSORS_INDEX);
    if index.is_file() {
        return match read_index_shards(&index) {
            Ok(shards) => shards.into_iter().find(|s| !dir.join(s).is_file()),
            Err(_) => Some(SAFETENSORS_INDEX.to_string()),
        };
    }
    if dir.join(PYTORCH_BIN).is_file() {
        return None;
    }
    Some(SAFETENSORS.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_ids() {
        assert!(looks_like_path("./model"));
        assert!(looks_like_path("/abs/model"));
        assert!(looks_like_path("a/b/c"));
        assert!(!looks_like_path("google/roberta2roberta_L-24_bbc"));
        assert!(!looks_like_path("gpt2"));
        assert!(validate_repo_id("google/roberta2roberta_L-24_bbc").is_ok());
        assert!(validate_repo_id("bert-base-uncased").is_ok());
        assert!(validate_repo_id("a//b").is_err());
        assert!(validate_repo_id("a/b c").is_err());
        assert!(validate_repo_id("a/..").is_err());
        assert_eq!(repo_folder("org/name"), "models--org--name");
        assert!(is_commit_hash(&"a".repeat(40)));
        assert!(!is_commit_hash("main"));
    }
}
