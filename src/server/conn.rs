//! The HTTP/1.1 accept loop with the connection-level defences axum's `serve` lacks:
//!
//! * a header-read timeout (from the first byte of a request head, or from the accept
//!   for a connection that sent nothing yet) and a keep-alive idle timeout between
//!   requests; hyper's own `header_read_timeout` runs from the end of the previous
//!   response, so it cannot be longer than the keep-alive wait, hence this watchdog;
//! * a request-head size and line limit answered with a JSON 431 (hyper's own limits
//!   answer 431 with an empty body; they are set above ours so that they never fire);
//! * a body-read timeout (between two chunks, tower-http's `TimeoutBody`) answered with
//!   a JSON 408;
//! * shutdown: connections with no request in a handler close at once, request bodies
//!   still being received fail at once (503), and requests already in a handler finish
//!   (the caller bounds that by the grace period).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tower::ServiceExt;

use super::error::ErrorKind;

/// The limits of [`run`] (see `[server]` in the config).
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

/// Accepts connections on `listener` and serves `app` on each until `stop` turns true;
/// then stops accepting, closes what is idle, and returns once every connection closed.
pub async fn run(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
) {
    let limits = Arc::new(limits);
    let mut connections = tokio::task::JoinSet::new();
    let for_connections = stop.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(connection(
                        stream,
                        app.clone(),
                        limits.clone(),
                        for_connections.clone(),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors and the like: don't spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stopped(&mut stop) => break,
        }
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// What the watchdog, the socket wrapper and the service share about one connection.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the watchdog when a request starts or ends.
    changed: Notify,
}

struct State {
    /// Requests between their head being parsed and their response body being dropped.
    in_flight: usize,
    /// When the connection last had nothing to do (accept, or the last response done).
    idle_since: Instant,
    /// Whether a request was ever answered (a fresh connection waits under the header
    /// timeout, a reused one under the keep-alive timeout).
    reused: bool,
    head: Head,
    /// A canned response to write instead of reading further (431, 408), then EOF.
    reject: Option<Reject>,
    /// The task reading the socket, to wake for a `reject` set by the watchdog.
    reader: Option<Waker>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            in_flight: 0,
            idle_since: Instant::now(),
            reused: false,
            head: Head::Waiting,
            reject: None,
            reader: None,
        }
    }
}

/// Where the request head being received stands (only while no request is in flight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// No byte of the next request yet.
    Waiting,
    Receiving {
        started: Instant,
        bytes: usize,
        lines: usize,
        /// The current line holds nothing but (maybe) `\r` so far.
        line_empty: bool,
    },
    /// The blank line ending the head was read; the service is about to be called.
    Complete { started: Instant },
    /// A response went out before its request body was read to the end: hyper drains or
    /// closes; what arrives now is body, not a head.
    Draining { since: Instant },
}

struct Reject {
    bytes: Vec<u8>,
    written: usize,
    at: Instant,
}

impl Reject {
    fn new(bytes: Vec<u8>) -> Self {
        Self {
            bytes,
            written: 0,
            at: Instant::now(),
        }
    }
}

/// A complete HTTP/1.1 error response with the JSON error body, closing the connection.
///
/// The head was never parsed, so the client's `x-request-id` is unknown: the response
/// gets a new id (in its body and header), as a request without one would.
fn canned(kind: ErrorKind, message: &str) -> Vec<u8> {
    let (code, status) = kind.code_and_status();
    let id = uuid::Uuid::new_v4().to_string();
    let body =
        serde_json::json!({ "error": code, "message": message, "request_id": id }).to_string();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {id}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes()
}

/// The socket as hyper sees it: reads are watched to time and bound request heads.
struct WatchedIo {
    inner: TcpStream,
    shared: Arc<Shared>,
    limits: Arc<ConnLimits>,
}

impl WatchedIo {
    /// Accounts `bytes` just read; returns a rejection when the head grew past a limit.
    fn observe(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut st = self.shared.state.lock().expect("no panics under this lock");
        if st.in_flight > 0 || bytes.is_empty() {
            return None;
        }
        let (mut started, mut count, mut lines, mut line_empty) = match st.head {
            Head::Complete { .. } | Head::Draining { .. } => return None,
            Head::Waiting => (Instant::now(), 0, 0, false),
            Head::Receiving {
                started,
                bytes,
                lines,
                line_empty,
            } => (started, bytes, lines, line_empty),
        };
        if st.head == Head::Waiting {
            started = Instant::now();
            self.shared.changed.notify_one();
        }
        for &b in bytes {
            count += 1;
            match b {
                b'\n' if line_empty => {
                    st.head = Head::Complete { started };
                    return None;
                }
                b'\n' => {
                    lines += 1;
                    line_empty = true;
                }
                b'\r' => {}
                _ => line_empty = false,
            }
            // The request line and the blank line are not headers.
            if count > self.limits.max_header_bytes || lines > self.limits.max_headers + 1 {
                return Some(canned(
                    ErrorKind::HeadersTooLarge,
                    &format!(
                        "request head over {} bytes or {} header lines",
                        self.limits.max_header_bytes, self.limits.max_headers
                    ),
                ));
            }
        }
        st.head = Head::Receiving {
            started,
            bytes: count,
            lines,
            line_empty,
        };
        None
    }

    /// Writes the pending rejection; `Ready(true)` once it is out (or there is none:
    /// `Ready(false)`).
    fn poll_reject(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        loop {
            let (chunk, done) = {
                let st = self.shared.state.lock().expect("no panics under this lock");
                match &st.reject {
                    None => return Poll::Ready(Ok(false)),
                    Some(r) if r.written >= r.bytes.len() => return Poll::Ready(Ok(true)),
                    Some(r) => (r.bytes[r.written..].to_vec(), r.written),
                }
            };
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &chunk))?;
            if n == 0 {
                return Poll::Ready(Ok(true));
            }
            let mut st = self.shared.state.lock().expect("no panics under this lock");
            if let Some(r) = st.reject.as_mut() {
                r.written = done + n;
            }
        }
    }
}

impl WatchedIo {
    /// After a rejection: reads and drops what the client still sends until it closes
    /// (the watchdog drops the connection after [`LINGER`]); then hyper sees the end.
    fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut scratch = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut buf))?;
            if buf.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        {
            let mut st = self.shared.state.lock().expect("no panics under this lock");
            st.reader = Some(cx.waker().clone());
        }
        if std::task::ready!(self.poll_reject(cx))? {
            return self.poll_discard(cx);
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if let Some(bytes) = self.observe(&buf.filled()[before..]) {
            buf.set_filled(before);
            self.shared
                .state
                .lock()
                .expect("no panics under this lock")
                .reject = Some(Reject::new(bytes));
            if std::task::ready!(self.poll_reject(cx))? {
                return self.poll_discard(cx);
            }
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self
            .shared
            .state
            .lock()
            .expect("no panics under this lock")
            .reject
            .is_some()
        {
            // Whatever hyper answers after a rejection is discarded: ours went out.
            return Poll::Ready(Ok(data.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Held from a request's head to the end of its response body.
struct InFlight {
    shared: Arc<Shared>,
    /// Whether the request body was read to its end.
    body_done: Arc<AtomicBool>,
}

impl InFlight {
    fn begin(shared: &Arc<Shared>) -> Self {
        let mut st = shared.state.lock().expect("no panics under this lock");
        st.in_flight += 1;
        st.head = Head::Waiting;
        drop(st);
        shared.changed.notify_one();
        Self {
            shared: shared.clone(),
            body_done: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock().expect("no panics under this lock");
        st.in_flight -= 1;
        if st.in_flight == 0 {
            st.idle_since = Instant::now();
            st.reused = true;
            if !self.body_done.load(Ordering::Acquire) {
                st.head = Head::Draining {
                    since: st.idle_since,
                };
            }
        }
        drop(st);
        self.shared.changed.notify_one();
    }
}

/// Why a request body stopped early.
const BODY_OK: u8 = 0;
const BODY_TIMED_OUT: u8 = 1;
const BODY_SHUTDOWN: u8 = 2;

/// The request body: chunks must arrive within the body timeout, and shutdown fails a
/// body still being received. The cause is recorded for the response.
struct GuardedBody {
    inner: Pin<Box<tower_http::timeout::TimeoutBody<hyper::body::Incoming>>>,
    stopping: Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>,
    cause: Arc<AtomicU8>,
    done: Arc<AtomicBool>,
}

impl Drop for GuardedBody {
    fn drop(&mut self) {
        if http_body::Body::is_end_stream(&self.inner) {
            self.done.store(true, Ordering::Release);
        }
    }
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match self.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                if e.is::<tower_http::timeout::TimeoutError>() {
                    self.cause.store(BODY_TIMED_OUT, Ordering::Release);
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => {
                if self.stopping.as_mut().poll(cx).is_ready() {
                    self.cause.store(BODY_SHUTDOWN, Ordering::Release);
                    return Poll::Ready(Some(Err("the server is shutting down".into())));
                }
                Poll::Pending
            }
            Poll::Ready(None) => {
                self.done.store(true, Ordering::Release);
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The response body, holding the request's [`InFlight`] until it is dropped.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
}

fn error_response(
    kind: ErrorKind,
    message: &str,
    request_id: Option<&HeaderValue>,
) -> Response<Body> {
    let (code, status) = kind.code_and_status();
    let id = request_id.and_then(|v| v.to_str().ok());
    let body =
        serde_json::json!({ "error": code, "message": message, "request_id": id }).to_string();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

async fn connection(
    stream: TcpStream,
    app: axum::Router,
    limits: Arc<ConnLimits>,
    mut stop: watch::Receiver<bool>,
) {
    let shared = Arc::new(Shared::default());
    let io = TokioIo::new(WatchedIo {
        inner: stream,
        shared: shared.clone(),
        limits: limits.clone(),
    });
    let service = {
        let shared = shared.clone();
        let limits = limits.clone();
        let stop = stop.clone();
        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let in_flight = InFlight::begin(&shared);
            let app = app.clone();
            let cause = Arc::new(AtomicU8::new(BODY_OK));
            let mut stop = stop.clone();
            let (parts, body) = req.into_parts();
            let body = GuardedBody {
                inner: Box::pin(tower_http::timeout::TimeoutBody::new(
                    limits.body_read_timeout,
                    body,
                )),
                stopping: Box::pin(async move {
                    let _ = stop.wait_for(|s| *s).await;
                }),
                cause: cause.clone(),
                done: in_flight.body_done.clone(),
            };
            let req = Request::from_parts(parts, Body::new(body));
            let body_timeout = limits.body_read_timeout;
            async move {
                let response = match app.oneshot(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                let request_id = response.headers().get("x-request-id").cloned();
                let mut response = match cause.load(Ordering::Acquire) {
                    BODY_TIMED_OUT => error_response(
                        ErrorKind::RequestTimeout,
                        &format!("no request body data for {} s", body_timeout.as_secs_f64()),
                        request_id.as_ref(),
                    ),
                    BODY_SHUTDOWN => error_response(
                        ErrorKind::ShuttingDown,
                        "the server is shutting down",
                        request_id.as_ref(),
                    ),
                    _ => response,
                };
                if let Some(id) = request_id {
                    response.headers_mut().insert("x-request-id", id);
                }
                let (parts, body) = response.into_parts();
                let body = Body::new(TrackedBody {
                    inner: body,
                    _in_flight: in_flight,
                });
                Ok::<_, Infallible>(Response::from_parts(parts, body))
            }
        })
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.header_read_timeout(None)
        // Above our limits, so that the JSON 431 of `WatchedIo` comes first.
        .max_headers(limits.max_headers + 8)
        .max_buf_size((limits.max_header_bytes + 16 * 1024).max(64 * 1024));
    let conn = http.serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopped_at: Option<Instant> = None;
    loop {
        let next = shared
            .state
            .lock()
            .expect("no panics under this lock")
            .next_deadline(&limits, stopped_at);
        let sleep = async {
            match next {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = shared.changed.notified() => {}
            _ = stopped(&mut stop), if stopped_at.is_none() => {
                stopped_at = Some(Instant::now());
                conn.as_mut().graceful_shutdown();
            }
            _ = sleep => {
                let mut st = shared.state.lock().expect("no panics under this lock");
                // Things may have moved since the deadline was computed.
                match st.next_deadline(&limits, stopped_at) {
                    Some((at, _)) if at > Instant::now() => continue,
                    None => continue,
                    Some((_, Expiry::Close)) => break,
                    Some((_, Expiry::HeadTimeout)) => {
                        // Slowloris: a head that doesn't finish. Answer 408 and close.
                        tracing::debug!("request head not received in time; closing");
                        st.reject = Some(Reject::new(canned(
                            ErrorKind::RequestTimeout,
                            &format!(
                                "request head not received within {} s",
                                limits.header_read_timeout.as_secs_f64()
                            ),
                        )));
                        if let Some(w) = st.reader.take() {
                            w.wake();
                        }
                    }
                }
            }
        }
    }
}

/// What happens when a connection's deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// Drop the connection (idle, shutting down, or a rejection written).
    Close,
    /// Send 408 first.
    HeadTimeout,
}

/// After a rejection is written, how long the client's remaining bytes are read and
/// discarded, so that closing doesn't reset the connection before it read the answer.
const LINGER: Duration = Duration::from_secs(1);
/// At shutdown, how long an idle connection gets to be closed by hyper itself (a
/// response still being flushed) before it is dropped.
const SHUTDOWN_IDLE: Duration = Duration::from_millis(100);

impl State {
    fn next_deadline(
        &self,
        limits: &ConnLimits,
        stopped_at: Option<Instant>,
    ) -> Option<(Instant, Expiry)> {
        if let Some(r) = &self.reject {
            return Some((r.at + LINGER, Expiry::Close));
        }
        if self.in_flight > 0 {
            return None;
        }
        if let Some(at) = stopped_at {
            return Some((at + SHUTDOWN_IDLE, Expiry::Close));
        }
        Some(match self.head {
            Head::Receiving { started, .. } | Head::Complete { started } => {
                (started + limits.header_read_timeout, Expiry::HeadTimeout)
            }
            // Hyper closes such a connection, or drains a short rest and reuses it.
            Head::Draining { since } => (since + limits.keep_alive_timeout, Expiry::Close),
            Head::Waiting if self.reused => {
                (self.idle_since + limits.keep_alive_timeout, Expiry::Close)
            }
            Head::Waiting => (self.idle_since + limits.header_read_timeout, Expiry::Close),
        })
    }
}
