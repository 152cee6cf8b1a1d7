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
//! Lifecycle: [`load`] (blocking: resolve, load and warm up every model), then [`serve`]
//! on a listener until a shutdown future resolves: `/ready` turns 503, after
//! `shutdown_delay_seconds` the listener closes, queued and running requests drain for up
//! to `shutdown_grace_seconds`, and `serve` returns. [`start`] runs all that on a
//! background thread and returns a [`ServerHandle`] (tests).

pub mod api;
pub mod batcher;
pub mod config;
pub mod error;
pub mod infer;
pub mod input;
pub mod metrics;
pub mod pool;
pub mod types;

use std::future::{Future, IntoFuture};
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
    phase: AtomicU8,
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
    let Loaded {
        config,
        models,
        metrics,
    } = loaded;
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
    let grace = Duration::from_secs_f64(config.server.shutdown_grace_seconds);
    let delay = Duration::from_secs_f64(config.server.shutdown_delay_seconds);
    let state = Arc::new(AppState {
        config,
        pool: Pool { models: pool },
        metrics,
        phase: AtomicU8::new(PHASE_READY),
    });
    let app = api::router(state.clone());
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");

    // Shutdown: unready → (delay) → stop accepting and drain → (grace) → give up.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signal_state = state.clone();
    tokio::spawn(async move {
        shutdown.await;
        signal_state.phase.store(PHASE_UNREADY, Ordering::Release);
        tracing::info!(
            delay_s = delay.as_secs_f64(),
            grace_s = grace.as_secs_f64(),
            "shutdown requested"
        );
        tokio::time::sleep(delay).await;
        signal_state.phase.store(PHASE_DRAINING, Ordering::Release);
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(stopped(stop_rx.clone()))
        .into_future();
    let drained_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let expired = {
        let drained_at = drained_at.clone();
        let stop = stopped(stop_rx);
        async move {
            stop.await;
            *drained_at.lock().expect("no panics under this lock") = Some(Instant::now());
            tokio::time::sleep(grace).await;
        }
    };
    let completed = tokio::select! {
        r = server => { r.context("serving HTTP")?; true }
        _ = expired => false,
    };
    if !completed {
        tracing::warn!("grace period over: dropping unfinished requests");
        return Ok(());
    }
    // Every connection is closed: let the batchers finish and the workers exit.
    for m in &state.pool.models {
        m.queue.shutdown();
    }
    let deadline = drained_at
        .lock()
        .expect("no panics under this lock")
        .unwrap_or_else(Instant::now)
        + grace;
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

/// SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("ctrl-c received"),
        _ = term => tracing::info!("SIGTERM received"),
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
