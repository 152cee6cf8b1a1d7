//! `encdec serve`: an axum server over a pool of loaded checkpoints.
//!
//! * [`config`]: the TOML schema, env/flag overrides and validation.
//! * [`pool`]: loading and warming up models, pre/post-processing, task routing.
//! * [`batcher`]: per-model bounded queue, batcher task and worker threads.
//! * [`infer`]: the request path (validate, admit, tokenize, submit, await);
//!   [`input`]: one input's tokenization, bounded by the input limit.
//! * [`api`]: endpoints and the OpenAPI document; [`types`]: their JSON types;
//!   [`error`]: the error table; [`metrics`]: Prometheus metrics.
//!
//! * [`conn`]: the accept loop (connection timeouts, head limits, shutdown of idle and
//!   stalled connections); [`startup`]: `/health`, `/ready` and the model routes while
//!   the models load, API key and CORS.
//!
//! Lifecycle: [`serve_loading`] listens at once and loads the models on a thread (the
//! binary); [`load`] (blocking) then [`serve`] loads first (tests). Until a shutdown
//! future resolves; then `/ready` turns 503, after `shutdown_delay_seconds` the listener
//! closes, idle connections close, queued and running requests drain for up to
//! `shutdown_grace_seconds`, and `serve` returns. [`start`] runs all that on a
//! background thread and returns a [`ServerHandle`] (tests).

pub mod api;
pub mod batcher;
pub mod config;
pub mod conn;
pub mod error;
pub mod infer;
pub mod input;
pub mod metrics;
pub mod pool;
pub mod startup;
pub mod types;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

pub use config::Config;
use metrics::Metrics;
use pool::{LoadedModel, Model, Pool};

pub(crate) const PHASE_STARTING: u8 = 0;
pub(crate) const PHASE_READY: u8 = 1;
/// Shutdown requested: `/ready` is 503, requests are still served.
pub(crate) const PHASE_UNREADY: u8 = 2;
/// The listener is closed; new generation requests get 503.
pub(crate) const PHASE_DRAINING: u8 = 3;

/// What every handler sees.
pub struct AppState {
    pub config: Config,
    pub pool: Pool,
    pub metrics: Arc<Metrics>,
    phase: Arc<AtomicU8>,
}

/// Models loaded and warmed up, ready to [`serve`].
pub struct Loaded {
    config: Config,
    models: Vec<LoadedModel>,
    metrics: Arc<Metrics>,
}

impl Loaded {
    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// Validates `config`, then resolves, loads and warms up every model (blocking: hub
/// downloads and weight loading; call it before the runtime or from `spawn_blocking`).
pub fn load(config: Config) -> Result<Loaded> {
    config.validate()?;
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let mut models = Vec::with_capacity(config.models.len());
    for (i, mc) in config.models.iter().enumerate() {
        metrics.model_loaded.with_label_values(&[&mc.name]).set(0);
        tracing::info!(model = %mc.name, source = %mc.source, device = %mc.device, dtype = %mc.dtype, "loading model");
        let m = pool::load_model(i, mc, &config.limits)?;
        tracing::info!(
            model = %mc.name,
            dir = %m.dir.display(),
            seconds = m.load_seconds,
            max_input_tokens = m.max_input_tokens,
            "model loaded and warmed up"
        );
        models.push(m);
    }
    Ok(Loaded {
        config,
        models,
        metrics,
    })
}

/// Serves `loaded` on `listener` until `shutdown` resolves, then drains (see the module
/// docs). Returns once the server has stopped; `Ok` also when the grace period ran out.
pub async fn serve(
    loaded: Loaded,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    run(Source::Loaded(loaded), listener, shutdown).await
}

/// Listens on `listener` at once and loads the models of `config` on a thread meanwhile:
/// `/health` answers 200 from the start, `/ready` 503 with each model's state until all
/// are ready, the model routes 503 `model_loading`. A model that fails to load ends the
/// server with its error; `shutdown` before the end of loading stops it at once.
pub async fn serve_loading(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    config.validate()?;
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    run(Source::Load(config, metrics), listener, shutdown).await
}

enum Source {
    Loaded(Loaded),
    Load(Config, Arc<Metrics>),
}

/// Loads every model of `config` in order, telling `startup` as it goes.
fn load_all(config: &Config, startup: &Arc<startup::Startup>) -> Result<Vec<LoadedModel>> {
    let mut models = Vec::with_capacity(config.models.len());
    for (i, mc) in config.models.iter().enumerate() {
        startup
            .metrics
            .model_loaded
            .with_label_values(&[&mc.name])
            .set(0);
        tracing::info!(model = %mc.name, source = %mc.source, device = %mc.device, dtype = %mc.dtype, "loading model");
        let loaded = crate::hub::with_progress(startup.download_progress(i), || {
            pool::load_model_with(i, mc, &config.limits, &|p| startup.phase_of(i, p))
        });
        match loaded {
            Ok(m) => {
                tracing::info!(
                    model = %mc.name,
                    dir = %m.dir.display(),
                    seconds = m.load_seconds,
                    max_input_tokens = m.max_input_tokens,
                    "model loaded and warmed up"
                );
                startup.ready(i);
                models.push(m);
            }
            Err(e) => {
                startup.failed(i, format!("{e:#}"));
                return Err(e);
            }
        }
    }
    Ok(models)
}

fn conn_limits(s: &config::ServerConfig) -> conn::ConnLimits {
    conn::ConnLimits {
        header_read_timeout: Duration::from_secs_f64(s.header_read_timeout_seconds),
        body_read_timeout: Duration::from_secs_f64(s.body_read_timeout_seconds),
        keep_alive_timeout: Duration::from_secs_f64(s.keep_alive_timeout_seconds),
        max_header_bytes: s.max_header_bytes,
        max_headers: s.max_headers,
    }
}

async fn run(
    source: Source,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (config, metrics, loaded) = match source {
        Source::Loaded(l) => (l.config, l.metrics, Some(l.models)),
        Source::Load(c, m) => (c, m, None),
    };
    let phase = Arc::new(AtomicU8::new(PHASE_STARTING));
    let startup = Arc::new(startup::Startup::new(
        config.models.iter().map(|m| m.name.clone()).collect(),
        phase.clone(),
        metrics.clone(),
    ));
    let grace = Duration::from_secs_f64(config.server.shutdown_grace_seconds);
    let delay = Duration::from_secs_f64(config.server.shutdown_delay_seconds);
    let app = startup::router(startup.clone(), &config.server);
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let limits = conn_limits(&config.server);
    let mut listener = Some(listener);
    let mut spawn_server = move || {
        tracing::info!(%addr, "listening");
        tokio::spawn(conn::run(
            listener.take().expect("served once"),
            app.clone(),
            limits.clone(),
            stop_rx.clone(),
        ))
    };
    // Models still to load: listen now. Models given: once they are in place, so that
    // the first request already finds them.
    let mut early = loaded.is_none().then(&mut spawn_server);

    // The models: given, or loaded on a plain thread (not the runtime's blocking pool,
    // which would hold the exit back until a download or load finished).
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<Result<Vec<LoadedModel>>>();
    match loaded {
        Some(models) => {
            for i in 0..models.len() {
                startup.ready(i);
            }
            let _ = loaded_tx.send(Ok(models));
        }
        None => {
            let config = config.clone();
            let startup = startup.clone();
            std::thread::Builder::new()
                .name("encdec-load".into())
                .spawn(move || {
                    let _ = loaded_tx.send(load_all(&config, &startup));
                })
                .context("starting the loader thread")?;
        }
    }
    let mut shutdown = Box::pin(shutdown);
    let models = tokio::select! {
        r = loaded_rx => r.unwrap_or_else(|_| Err(anyhow::anyhow!("the loader thread panicked"))),
        _ = &mut shutdown => {
            // Nothing is routed here before it is ready: no delay, nothing to drain.
            phase.store(PHASE_DRAINING, Ordering::Release);
            tracing::info!("shutdown requested while loading: stopping");
            let _ = stop_tx.send(true);
            if let Some(server) = early.as_mut() {
                let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
            }
            return Ok(());
        }
    };
    let models = match models {
        Ok(m) => m,
        Err(e) => {
            let _ = stop_tx.send(true);
            if let Some(server) = early.as_mut() {
                let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
            }
            return Err(e.context("loading the models"));
        }
    };

    let mut running = Vec::with_capacity(models.len());
    let mut pool = Vec::with_capacity(models.len());
    for m in models {
        let (queue, r) = batcher::start(
            m.name(),
            m.engine.clone(),
            m.config.replicas,
            config.batching.clone(),
            config.limits.queue_capacity,
            metrics.clone(),
        )
        .context("starting worker threads")?;
        metrics.model_loaded.with_label_values(&[m.name()]).set(1);
        running.push(r);
        pool.push(Arc::new(Model { loaded: m, queue }));
    }
    let state = Arc::new(AppState {
        config,
        pool: Pool { models: pool },
        metrics,
        phase: phase.clone(),
    });
    let _ = startup.app.set(api::routes(state.clone()));
    if phase
        .compare_exchange(
            PHASE_STARTING,
            PHASE_READY,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_ok()
    {
        tracing::info!(%addr, "ready");
    }
    let mut server = match early {
        Some(server) => server,
        None => spawn_server(),
    };

    // Shutdown: unready → (delay) → stop accepting and drain → (grace) → give up.
    shutdown.await;
    phase.store(PHASE_UNREADY, Ordering::Release);
    tracing::info!(
        delay_s = delay.as_secs_f64(),
        grace_s = grace.as_secs_f64(),
        "shutdown requested"
    );
    tokio::time::sleep(delay).await;
    phase.store(PHASE_DRAINING, Ordering::Release);
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + grace;
    if tokio::time::timeout_at(deadline.into(), &mut server)
        .await
        .is_err()
    {
        tracing::warn!("grace period over: dropping unfinished requests");
        server.abort();
        return Ok(());
    }
    // Every connection is closed: let the batchers finish and the workers exit.
    for m in &state.pool.models {
        m.queue.shutdown();
    }
    let join_all = async {
        for r in running {
            let _ = r.batcher.await;
            let workers = r.workers;
            let _ = tokio::task::spawn_blocking(move || {
                for w in workers {
                    let _ = w.join();
                }
            })
            .await;
        }
    };
    if tokio::time::timeout_at(deadline.into(), join_all)
        .await
        .is_err()
    {
        tracing::warn!("grace period over while stopping workers");
    }
    tracing::info!("server stopped");
    Ok(())
}

/// SIGTERM or ctrl-c. The SIGTERM handler is registered when this is called, not when
/// the future is first polled: the listener serves (and a pod can be told to stop) before
/// the start-up code first awaits the signal, and a SIGTERM in between must not fall
/// through to the default action, which kills the process without a clean exit.
/// Call it inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let term = async move {
            match term {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("ctrl-c received"),
            _ = term => tracing::info!("SIGTERM received"),
        }
    }
}

/// A server running on its own thread and runtime.
pub struct ServerHandle {
    addr: SocketAddr,
    trigger: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl ServerHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts the graceful shutdown (like SIGTERM) without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(t) = self.trigger.take() {
            let _ = t.send(());
        }
    }

    /// Shuts down gracefully and waits until the server has stopped.
    pub fn shutdown(mut self) -> Result<()> {
        self.begin_shutdown();
        self.join()
    }

    fn join(&mut self) -> Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("server thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.begin_shutdown();
        let _ = self.join();
    }
}

/// Serves `loaded` on `listener` from a new thread with its own tokio runtime
/// (`worker_threads` async threads). The listener is bound already, so requests can be
/// sent as soon as this returns.
pub fn start(
    loaded: Loaded,
    listener: std::net::TcpListener,
    worker_threads: usize,
) -> Result<ServerHandle> {
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads.max(1))
        .thread_name("encdec-http")
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let (trigger, triggered) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("encdec-server".into())
        .spawn(move || {
            let result = runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                serve(loaded, listener, async move {
                    let _ = triggered.await;
                })
                .await
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
            result
        })?;
    Ok(ServerHandle {
        addr,
        trigger: Some(trigger),
        thread: Some(thread),
    })
}
