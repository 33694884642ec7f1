//! `sener serve`: an HTTP/JSON server around one loaded model (routes and JSON in `docs/api.md`).
//!
//! - The model lives on one dedicated OS thread (`sener-model`); the async runtime never runs
//!   model code. Requests reach it through a bounded queue (`--queue` waiting requests); a request
//!   that finds the queue full is answered 503 with `Retry-After` at once.
//! - The worker takes the oldest waiting request and then everything else already queued, up to
//!   `--batch-texts` texts, groups the texts by their decoding options (threshold, flat) and runs
//!   `Extractor::extract_batch` once per group, then answers each request on its own channel.
//! - Every `/v1/extract` request has one deadline (`--timeout-secs`) covering body upload, queue
//!   wait and model time; past it the client gets 504. A request whose client has gone (timed out
//!   or disconnected) is skipped, or its work is dropped between forward passes.
//! - A request whose estimated model time (its words at the words/s the worker measures, from a
//!   warm-up at start and then from every batch) is more than `--max-work-factor` times the
//!   timeout is refused at once with 422 `too_much_work`, before it takes the model from others.
//! - Every request is logged through `tracing` (method, path, status, texts, words, queue wait,
//!   model time, total time; `sener --log-format json` for JSON lines).
//! - SIGINT / SIGTERM: the listener closes, requests in flight (queued ones included) are
//!   finished and answered, the worker drains and stops, the process exits 0. A second signal
//!   during the drain exits at once with status 130.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use sener::decode::{DecodeOptions, Threshold};
use sener::extract::{Entity, ExtractOptions, Extraction, Extractor};
use sener_data::segment::SegmentConfig;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

/// `sener serve`'s flags.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// sener model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Address to listen on; port 0 picks a free port (the bound address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// Default decision threshold (a request's `threshold` overrides it; default: the model's
    /// calibrated per-type thresholds, or 0.5).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Segment length in tokens (default: the model's).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Subwords shared by consecutive segments.
    #[arg(long, default_value_t = 0)]
    pub overlap: usize,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 10 << 20)]
    pub max_body_bytes: usize,
    /// Longest text in Unicode code points (422 beyond).
    #[arg(long, default_value_t = 1_000_000)]
    pub max_text_chars: usize,
    /// Most texts in one request (422 beyond).
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// Requests that may wait for the model; when full, requests get 503 with Retry-After.
    #[arg(long, default_value_t = 16)]
    pub queue: usize,
    /// Most texts the model worker takes from the queue for one batch.
    #[arg(long, default_value_t = 64)]
    pub batch_texts: usize,
    /// Time limit of one request (body, queue and model), in seconds; 504 beyond.
    #[arg(long, default_value_t = 120.0)]
    pub timeout_secs: f64,
    /// A connection that has not sent a request's complete headers within this many seconds is
    /// closed (slow or stuck clients cannot hold connections open).
    #[arg(long, default_value_t = 10.0)]
    pub header_timeout_secs: f64,
    /// Browser origins (`https://app.example.org`) allowed to call the API; a request carrying any
    /// other `Origin` header gets 403 (a web page cannot make a browser post to the server).
    /// Repeatable. [none: only clients that send no `Origin`, such as curl and scripts]
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origins: Vec<String>,
    /// File holding an API key: every `/v1/` request must then send `Authorization: Bearer
    /// <key>` (401 otherwise). Without it, binding a non-loopback address prints a warning.
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Refuse at once (422 `too_much_work`) a request whose estimated model time (its words at
    /// the words/s this server measures) is more than this many times --timeout-secs; 0: never
    /// refuse (such a request then runs until its deadline and gets 504).
    #[arg(long, default_value_t = 2.0)]
    pub max_work_factor: f64,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub dtype: crate::common::DtypeArgs,
}

/// Response header of `/v1/extract`: how many requests shared the model call that answered it.
const BATCH_HEADER: &str = "x-sener-batch-requests";

/// Seconds a client is told to wait after a 503.
const RETRY_AFTER_SECS: u32 = 1;

/// Validated server settings.
#[derive(Clone, Debug)]
struct Limits {
    max_body_bytes: usize,
    max_text_chars: usize,
    max_batch: usize,
    queue: usize,
    batch_texts: usize,
    timeout: Duration,
    header_timeout: Duration,
    max_work_factor: f64,
}

impl Limits {
    fn from_args(a: &ServeArgs) -> Result<Self> {
        for (name, v) in [
            ("--max-body-bytes", a.max_body_bytes),
            ("--max-text-chars", a.max_text_chars),
            ("--max-batch", a.max_batch),
            ("--queue", a.queue),
            ("--batch-texts", a.batch_texts),
        ] {
            if v == 0 {
                bail!("{name} must be at least 1");
            }
        }
        if !(a.timeout_secs.is_finite() && a.timeout_secs > 0.0 && a.timeout_secs <= 1e9) {
            bail!("--timeout-secs {}: expected a positive number of seconds", a.timeout_secs);
        }
        if !(a.max_work_factor == 0.0 || (1.0..=1e6).contains(&a.max_work_factor)) {
            bail!("--max-work-factor {}: expected 0 (off) or a factor in [1, 1000000]", a.max_work_factor);
        }
        if !(a.header_timeout_secs.is_finite() && a.header_timeout_secs > 0.0 && a.header_timeout_secs <= 1e9) {
            bail!("--header-timeout-secs {}: expected a positive number of seconds", a.header_timeout_secs);
        }
        Ok(Self {
            max_body_bytes: a.max_body_bytes,
            max_text_chars: a.max_text_chars,
            max_batch: a.max_batch,
            queue: a.queue,
            batch_texts: a.batch_texts,
            timeout: Duration::from_secs_f64(a.timeout_secs),
            header_timeout: Duration::from_secs_f64(a.header_timeout_secs),
            max_work_factor: a.max_work_factor,
        })
    }
}

/// A JSON error answer: `{"error": {"code": …, "message": …}}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut r = json_response(self.status, &body);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        r
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], v.to_string()).into_response()
}

/// Decoding options of one request; requests with equal options share a model batch.
#[derive(Clone, Copy, Debug, PartialEq)]
struct JobOptions {
    /// None: the model's own thresholds (calibrated per type, or 0.5).
    threshold: Option<f32>,
    flat: bool,
}

/// Why the worker could not answer a job.
#[derive(Debug)]
enum JobError {
    /// The library rejected the input (`sener::Error::Input`).
    Input(String),
    /// Anything else: a model error or a panic inside the model code.
    Internal(String),
    /// The client went away (deadline passed or connection closed) and its work was dropped.
    Cancelled,
}

/// Results of one job, how many requests shared its `extract_batch` call, how long it waited in
/// the queue and how long that model call took.
struct Done {
    results: Vec<Extraction>,
    batch_requests: usize,
    queued: Duration,
    model: Duration,
}

type JobResult = std::result::Result<Done, JobError>;

/// One request's texts on their way to the model.
struct Job {
    texts: Vec<String>,
    options: JobOptions,
    reply: oneshot::Sender<JobResult>,
    enqueued: Instant,
}

/// What `/v1/extract` adds to the request log (a response extension, read by [`log_request`]).
#[derive(Clone, Copy, Debug, Default)]
struct RequestStats {
    texts: usize,
    words: usize,
    queued: Option<Duration>,
    model: Option<Duration>,
}

/// The model's speed as the worker measures it: words per second of model time, a moving average
/// over its batches (f64 bits; 0 until the warm-up has run).
#[derive(Default)]
struct Speed(AtomicU64);

impl Speed {
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, words_per_s: f64) {
        self.0.store(words_per_s.to_bits(), Ordering::Relaxed);
    }

    /// Folds in one measurement (`words` in `secs`); tiny batches count less.
    fn record(&self, words: usize, secs: f64) {
        if words == 0 || secs <= 0.0 {
            return;
        }
        let now = words as f64 / secs;
        let old = self.get();
        let weight = (words as f64 / 2000.0).min(1.0) * 0.5;
        let v = if old > 0.0 { old * (1.0 - weight) + now * weight } else { now };
        self.set(v);
    }
}

struct AppState {
    access: Access,
    speed: Arc<Speed>,
    queue: mpsc::Sender<Job>,
    limits: Limits,
    default_threshold: Option<f32>,
    /// The `/v1/model` answer, built once.
    model_info: Value,
}

/// The request body of `POST /v1/extract`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtractRequest {
    text: Option<String>,
    texts: Option<Vec<String>>,
    threshold: Option<f32>,
    #[serde(default)]
    flat: bool,
    #[serde(default)]
    byte_offsets: bool,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let limits = Limits::from_args(&a)?;
    if let Some(t) = a.threshold.filter(|t| !(0.0..=1.0).contains(t)) {
        bail!("--threshold {t} is not a probability");
    }
    // Bind first: a taken address fails before the (possibly long) model load.
    let listener = std::net::TcpListener::bind(a.addr.as_str()).with_context(|| format!("binding {}", a.addr))?;
    listener.set_nonblocking(true).context("setting the listener non-blocking")?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let access = Access::from_args(&a, addr)?;

    let device = crate::common::parse_device(&a.device)?;
    let model_dir = crate::common::model_dir(&a.model)?;
    // a request may be a whole segment long: its first forward's pages are faulted in while
    // the model loads (see `sener::mem::warm_heap`)
    let warm = crate::common::warm_for_first_forward(&model_dir, a.max_len.unwrap_or(usize::MAX), &device);
    let mut ex = Extractor::load_on(&model_dir, &device).with_context(|| format!("loading model {}", a.model.display()))?;
    if let Some(h) = warm {
        h.join().map_err(|_| anyhow::anyhow!("the allocator warm-up thread panicked"))?;
    }
    a.dtype.apply(&mut ex.model)?;
    let segments = SegmentConfig { max_len: a.max_len.unwrap_or(ex.model.config.max_len), overlap: a.overlap };
    segments.validate().context("--max-len / --overlap")?;
    // The server's defaults; a request's threshold and `flat` are laid over them per batch.
    ex.options = ExtractOptions {
        decode: DecodeOptions { threshold: a.threshold.map_or_else(|| ex.model.config.threshold(), Threshold::Global), ..DecodeOptions::default() },
        max_len: a.max_len,
        overlap: a.overlap,
    };
    let model_info = model_info(&ex, &a, &limits);

    let (tx, rx) = mpsc::channel::<Job>(limits.queue);
    let batch_texts = limits.batch_texts;
    let speed = Arc::new(Speed::default());
    let worker_speed = speed.clone();
    let worker = std::thread::Builder::new()
        .name("sener-model".into())
        .spawn(move || worker(ex, rx, batch_texts, &worker_speed))
        .context("starting the model thread")?;

    let state = Arc::new(AppState { access, speed, queue: tx, limits: limits.clone(), default_threshold: a.threshold, model_info });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let served = rt.block_on(serve(listener, addr, state));
    // The router (and with it the queue's only sender) is gone: the worker finishes what it holds
    // and returns.
    rt.shutdown_timeout(Duration::from_secs(1));
    let worker_result = worker.join();
    served?;
    if worker_result.is_err() {
        bail!("the model thread panicked");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The accept loop: HTTP/1 connections served by hyper with a header-read timeout (axum's own
/// `serve` sets none, so a client that never finishes its headers would hold a connection
/// forever), and a graceful shutdown: on the first signal stop accepting, let every connection
/// finish the request it is in (idle keep-alive connections close), then return.
async fn serve(listener: std::net::TcpListener, addr: SocketAddr, state: Arc<AppState>) -> Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let listener = tokio::net::TcpListener::from_std(listener).context("registering the listener")?;
    let header_timeout = state.limits.header_timeout;
    let app = router(state);
    // Handlers first: a signal sent as soon as the address is printed must already be ours.
    let signals = Signals::install()?;
    println!("listening on http://{addr}");
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown_signal(signals));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // e.g. too many open files: keep serving the connections we have
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // Errors here are the client's (reset, timeout, malformed request): nothing to answer.
            let _ = conn.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.limits.max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/model", get(model))
        .route("/v1/extract", post(extract))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), check_access))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// Who may call the server: browser origins, the `Host` names a loopback server answers to, and
/// the API key.
#[derive(Debug)]
struct Access {
    allow_origins: Vec<String>,
    /// `Some(port)` when bound to a loopback address: only `localhost`, `127.0.0.1` and `[::1]`
    /// (with or without that port) are accepted as `Host`, so a DNS-rebinding page cannot reach it.
    loopback_port: Option<u16>,
    api_key: Option<Vec<u8>>,
}

impl Access {
    fn from_args(a: &ServeArgs, addr: SocketAddr) -> Result<Self> {
        for o in &a.allow_origins {
            let ok = (o.starts_with("http://") || o.starts_with("https://")) && !o.ends_with('/') && !o.contains(char::is_whitespace);
            if !ok {
                bail!("--allow-origin {o:?}: expected an origin such as https://app.example.org (scheme and host, no path)");
            }
        }
        let api_key = match &a.api_key_file {
            Some(p) => {
                let meta = std::fs::metadata(p).with_context(|| format!("--api-key-file {}", p.display()))?;
                if meta.len() > 4096 {
                    bail!("--api-key-file {}: {} bytes; an API key is at most 4096", p.display(), meta.len());
                }
                let key = std::fs::read_to_string(p).with_context(|| format!("reading --api-key-file {}", p.display()))?;
                let key = key.trim();
                if key.len() < 16 || key.contains(char::is_whitespace) {
                    bail!("--api-key-file {}: the key must be at least 16 characters, without spaces", p.display());
                }
                Some(key.as_bytes().to_vec())
            }
            None => None,
        };
        let loopback = addr.ip().is_loopback();
        if !loopback && api_key.is_none() {
            tracing::warn!(%addr, "listening on a non-loopback address without --api-key-file: anyone who can reach it can use it");
        }
        Ok(Self { allow_origins: a.allow_origins.clone(), loopback_port: loopback.then_some(addr.port()), api_key })
    }

    fn host_ok(&self, host: Option<&str>) -> bool {
        let Some(port) = self.loopback_port else { return true };
        let Some(host) = host else { return false };
        let (name, p) = match host.rsplit_once(':') {
            Some((n, p)) if !p.contains(']') => (n, Some(p)),
            _ => (host, None),
        };
        let name_ok = matches!(name.to_ascii_lowercase().as_str(), "localhost" | "127.0.0.1" | "[::1]");
        name_ok && p.is_none_or(|p| p == port.to_string())
    }

    fn key_ok(&self, auth: Option<&str>) -> bool {
        let Some(key) = &self.api_key else { return true };
        let Some(given) = auth.and_then(|a| a.strip_prefix("Bearer ")) else { return false };
        // constant time in the key's length
        let given = given.trim().as_bytes();
        given.len() == key.len() && given.iter().zip(key).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// Refuses, before anything else: a `Host` a loopback server does not answer to (403
/// `forbidden_host`), a browser `Origin` not allowed (403 `forbidden_origin`), and a `/v1/`
/// request without the API key (401 `unauthorized`). `/healthz` needs no key.
async fn check_access(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let h = req.headers();
    let text = |name: header::HeaderName| h.get(name).and_then(|v| v.to_str().ok());
    if !st.access.host_ok(text(header::HOST)) {
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden_host", "this server answers only to localhost, 127.0.0.1 and [::1]").into_response();
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        let allowed = origin.to_str().is_ok_and(|o| st.access.allow_origins.iter().any(|a| a == o));
        if !allowed {
            return ApiError::new(StatusCode::FORBIDDEN, "forbidden_origin", "requests from this browser origin are not allowed (see --allow-origin)")
                .into_response();
        }
    }
    if req.uri().path().starts_with("/v1/") && !st.access.key_ok(text(header::AUTHORIZATION)) {
        let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)").into_response();
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    next.run(req).await
}

/// One log line per request, whatever answered it: method, path, status and total time, and for
/// `/v1/extract` the texts, words, queue wait and model time.
async fn log_request(req: Request, next: Next) -> Response {
    let t = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let resp = next.run(req).await;
    let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
    let st = resp.extensions().get::<RequestStats>().copied().unwrap_or_default();
    tracing::info!(
        target: "sener::serve::request",
        method = %method,
        path = %path,
        status = resp.status().as_u16(),
        texts = st.texts,
        words = st.words,
        queue_ms = st.queued.map(ms),
        model_ms = st.model.map(ms),
        total_ms = ms(t.elapsed()),
        "request"
    );
    resp
}

/// SIGTERM and SIGINT streams.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM; a second one ends the process at once (exit 130), in
/// every later state: while connections drain, after the runtime has stopped, and while the model
/// thread finishes its work.
async fn shutdown_signal(mut signals: Signals) {
    let which = signals.next().await;
    tracing::info!(signal = which, "not accepting new connections; finishing requests in flight (signal again to stop now)");
    exit_on_next_signal();
}

/// Replaces the runtime's SIGINT/SIGTERM handlers with one that writes a line and exits with 130:
/// a plain handler needs no runtime, so it works after `block_on` has returned too.
fn exit_on_next_signal() {
    extern "C" fn handler(_: libc::c_int) {
        const MSG: &[u8] = b"signal again: stopping now\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe; MSG is a static buffer.
        unsafe {
            libc::write(2, MSG.as_ptr().cast(), MSG.len());
            libc::_exit(130);
        }
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only calls async-signal-safe functions; the previous
        // (tokio's) handler is no longer needed once the first signal has been taken.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = handler as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
}

async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    if st.queue.is_closed() {
        return json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "unavailable"}));
    }
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

async fn model(State(st): State<Arc<AppState>>) -> Response {
    json_response(StatusCode::OK, &st.model_info)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no route {}", req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

async fn extract(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let mut stats = RequestStats::default();
    let mut resp = match tokio::time::timeout(st.limits.timeout, extract_inner(&st, req, &mut stats)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("the request took longer than {} s", st.limits.timeout.as_secs_f64()),
        )
        .into_response(),
    };
    resp.extensions_mut().insert(stats);
    resp
}

async fn extract_inner(st: &AppState, req: Request, stats: &mut RequestStats) -> std::result::Result<Response, ApiError> {
    // A declared length above the limit is refused before waiting for the body.
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > st.limits.max_body_bytes as u64) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body exceeds {} bytes", st.limits.max_body_bytes),
        ));
    }
    let body = Bytes::from_request(req, &()).await.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body exceeds {} bytes", st.limits.max_body_bytes),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", rej.body_text())
        }
    })?;
    let r: ExtractRequest = serde_json::from_slice(&body).map_err(|e| {
        let code = if e.is_data() { "invalid_request" } else { "invalid_json" };
        ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
    })?;
    let (texts, single) = match (r.text, r.texts) {
        (Some(t), None) => (vec![t], true),
        (None, Some(ts)) => (ts, false),
        (Some(_), Some(_)) => {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", "give either `text` or `texts`, not both"))
        }
        (None, None) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "missing field: `text` (a string) or `texts` (an array of strings)",
            ))
        }
    };
    let threshold = r.threshold.or(st.default_threshold);
    if let Some(threshold) = threshold.filter(|t| !(0.0..=1.0).contains(t)) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_threshold",
            format!("threshold {threshold} is not a probability in [0, 1]"),
        ));
    }
    if texts.len() > st.limits.max_batch {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_texts",
            format!("{} texts; at most {} per request", texts.len(), st.limits.max_batch),
        ));
    }
    for (i, t) in texts.iter().enumerate() {
        // Bytes bound code points from above: count only when it can matter.
        if t.len() > st.limits.max_text_chars {
            let n = t.chars().count();
            if n > st.limits.max_text_chars {
                let which = if single { "the text".to_string() } else { format!("texts[{i}]") };
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "text_too_long",
                    format!("{which} has {n} characters; at most {} per text", st.limits.max_text_chars),
                ));
            }
        }
    }

    stats.texts = texts.len();
    stats.words = texts.iter().map(|t| t.split_whitespace().count()).sum();
    let speed = st.speed.get();
    let budget = st.limits.max_work_factor * st.limits.timeout.as_secs_f64();
    if st.limits.max_work_factor > 0.0 && speed > 0.0 && stats.words as f64 / speed > budget {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_much_work",
            format!(
                "about {} words: at the {speed:.0} words/s this server measures that is about {:.0} s of model time, more than {} × the {} s timeout; send at most about {:.0} words per request, or raise --timeout-secs",
                stats.words,
                stats.words as f64 / speed,
                st.limits.max_work_factor,
                st.limits.timeout.as_secs_f64(),
                budget * speed
            ),
        ));
    }

    let (reply, answer) = oneshot::channel();
    let job = Job { texts, options: JobOptions { threshold, flat: r.flat }, reply, enqueued: Instant::now() };
    st.queue.try_send(job).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_full",
            format!("{} requests are already waiting for the model; retry later", st.limits.queue),
        ),
        mpsc::error::TrySendError::Closed(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the model worker has stopped")
        }
    })?;
    let Done { results, batch_requests, queued, model } = match answer.await {
        Ok(Ok(d)) => d,
        Ok(Err(JobError::Input(m))) => return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", m)),
        Ok(Err(JobError::Internal(m))) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)),
        Ok(Err(JobError::Cancelled)) => {
            return Err(ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", "the request was cancelled"))
        }
        Err(_) => {
            return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the model worker dropped the request"))
        }
    };
    stats.queued = Some(queued);
    stats.model = Some(model);
    stats.words = results.iter().map(|x| x.words).sum();
    let body = if single {
        match results.first() {
            Some(x) => extraction_json(x, r.byte_offsets),
            None => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no result for the text")),
        }
    } else {
        json!({"results": results.iter().map(|x| extraction_json(x, r.byte_offsets)).collect::<Vec<_>>()})
    };
    let mut resp = json_response(StatusCode::OK, &body);
    resp.headers_mut().insert(BATCH_HEADER, HeaderValue::from(batch_requests));
    Ok(resp)
}

/// `{"entities", "words", "segments"}`: the fields `sener extract` prints for a document; an
/// entity is `sener::extract::Entity` as serialised there, minus the byte offsets unless asked.
fn extraction_json(x: &Extraction, byte_offsets: bool) -> Value {
    let entities: Vec<Value> = x.entities.iter().map(|e| entity_json(e, byte_offsets)).collect();
    json!({"entities": entities, "words": x.words, "segments": x.segments})
}

fn entity_json(e: &Entity, byte_offsets: bool) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or_else(|err| json!({"error": err.to_string()}));
    if !byte_offsets {
        if let Some(m) = v.as_object_mut() {
            m.remove("byte_start");
            m.remove("byte_end");
        }
    }
    v
}

fn model_info(ex: &Extractor, a: &ServeArgs, limits: &Limits) -> Value {
    let c = &ex.model.config;
    let enc = &ex.model.encoder;
    let name = c.base.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| c.base.path.display().to_string());
    json!({
        "labels": c.labels,
        "span_window": c.span.window,
        "max_span_words": c.span.window + 1,
        "arrow_window": c.arrow.window,
        "arrow": c.arrow,
        "max_len": a.max_len.unwrap_or(c.max_len),
        "overlap": a.overlap,
        "encoder": {
            "name": name,
            "kind": enc.kind(),
            "hidden_size": enc.hidden_size(),
            "layers": enc.num_layers(),
            "heads": enc.num_heads(),
        },
        "base_sha256": c.base.sha256,
        "lora": c.lora,
        "default_threshold": a.threshold,
        "thresholds": c.thresholds,
        "splitter": c.splitter,
        "device": a.device,
        "limits": {
            "max_body_bytes": limits.max_body_bytes,
            "max_text_chars": limits.max_text_chars,
            "max_batch": limits.max_batch,
            "queue": limits.queue,
            "batch_texts": limits.batch_texts,
            "timeout_secs": limits.timeout.as_secs_f64(),
            "header_timeout_secs": limits.header_timeout.as_secs_f64(),
            "max_work_factor": limits.max_work_factor,
        },
    })
}

/// A text the worker measures the model's speed on before it takes requests.
const WARM_UP_TEXT: &str = include_str!("../../../examples/scholar-homepage.txt");

/// The model thread: measures the model's speed on a warm-up text, then takes the oldest job and
/// whatever else is already queued (up to `batch_texts` texts), runs it, answers, until every
/// sender is gone.
fn worker(ex: Extractor, mut rx: mpsc::Receiver<Job>, batch_texts: usize, speed: &Speed) {
    let t = Instant::now();
    match ex.extract(WARM_UP_TEXT) {
        Ok(x) => {
            speed.set(x.words as f64 / t.elapsed().as_secs_f64().max(1e-6));
            tracing::info!(words = x.words, seconds = t.elapsed().as_secs_f64(), words_per_s = speed.get().round(), "warm-up done");
        }
        Err(e) => tracing::warn!(error = %e, "warm-up failed; requests are not refused by estimated cost until one has run"),
    }
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(j) => j,
            None => match rx.blocking_recv() {
                Some(j) => j,
                None => return,
            },
        };
        let mut n = first.texts.len();
        let mut batch = vec![first];
        while n < batch_texts {
            match rx.try_recv() {
                Ok(j) if n + j.texts.len() > batch_texts => {
                    carried = Some(j);
                    break;
                }
                Ok(j) => {
                    n += j.texts.len();
                    batch.push(j);
                }
                Err(_) => break,
            }
        }
        // Clients that timed out or went away while waiting.
        batch.retain(|j| !j.reply.is_closed());
        run_batch(&ex, batch, speed);
    }
}

/// Runs the jobs grouped by options, one `extract_batch` per group; a failing group is retried
/// job by job so one bad request does not fail the others.
fn run_batch(ex: &Extractor, mut jobs: Vec<Job>, speed: &Speed) {
    while let Some(first) = jobs.first() {
        let opts = first.options;
        let (group, rest): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.options == opts);
        jobs = rest;
        let options = ex.options.overridden(opts.threshold, opts.flat);
        // Each text goes with its request's reply channel: once that client has gone (its
        // deadline passed, or it hung up), the rest of its work is dropped between segments.
        let texts: Vec<(&str, &oneshot::Sender<JobResult>)> =
            group.iter().flat_map(|j| j.texts.iter().map(move |t| (t.as_str(), &j.reply))).collect();
        let batch_requests = group.len();
        let t = Instant::now();
        match run_texts(ex, &options, &texts) {
            Ok(mut all) => {
                let model = t.elapsed();
                speed.record(all.iter().map(|x| x.words).sum(), model.as_secs_f64());
                for j in group {
                    let rest = all.split_off(j.texts.len().min(all.len()));
                    let results = std::mem::replace(&mut all, rest);
                    let _ = j.reply.send(Ok(Done { results, batch_requests, queued: t.saturating_duration_since(j.enqueued), model }));
                }
            }
            Err(e) if group.len() == 1 => {
                if let Some(j) = group.into_iter().next() {
                    let _ = j.reply.send(Err(e));
                }
            }
            Err(_) => {
                for j in group {
                    let texts: Vec<(&str, &oneshot::Sender<JobResult>)> = j.texts.iter().map(|t| (t.as_str(), &j.reply)).collect();
                    let t = Instant::now();
                    let r = run_texts(ex, &options, &texts).map(|results| Done {
                        results,
                        batch_requests: 1,
                        queued: t.saturating_duration_since(j.enqueued),
                        model: t.elapsed(),
                    });
                    let _ = j.reply.send(r);
                }
            }
        }
    }
}

/// Extracts the texts in shared forward passes until one of their requests' clients has gone
/// (then the group fails with `Cancelled`, and `run_batch` retries its requests one by one).
fn run_texts(ex: &Extractor, options: &ExtractOptions, texts: &[(&str, &oneshot::Sender<JobResult>)]) -> std::result::Result<Vec<Extraction>, JobError> {
    let run = || -> sener::Result<Vec<Extraction>> {
        let only: Vec<&str> = texts.iter().map(|(t, _)| *t).collect();
        ex.extract_batch_until(&only, options, &|| texts.iter().any(|(_, reply)| reply.is_closed()))
    };
    match std::panic::catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(r)) if r.len() == texts.len() => Ok(r),
        Ok(Ok(r)) => Err(JobError::Internal(format!("{} results for {} texts", r.len(), texts.len()))),
        Ok(Err(sener::Error::Cancelled)) => Err(JobError::Cancelled),
        Ok(Err(sener::Error::Input(m))) => Err(JobError::Input(m)),
        Ok(Err(e)) => Err(JobError::Internal(e.to_string())),
        Err(p) => {
            let m = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
            Err(JobError::Internal(format!("the model code panicked: {}", m.unwrap_or_default())))
        }
    }
}
