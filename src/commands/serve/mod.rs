//! `charrnn serve`: generation over HTTP from one loaded model: a JSON API, the same answered as
//! Server-Sent Events, and a web page. One worker thread owns the model (libtorch work stays off the async
//! threads); the requests that wait for it together are generated as one batch.
//!
//! Endpoints: `GET /` (the page), `GET /healthz`, `GET /v1/model`, `POST /v1/generate`.
mod listen;
mod request;
mod worker;

use crate::commands::load::load_model;
use crate::device::{device_name, set_threads, DeviceSpec};
use crate::error::{Error, Result};
use crate::generate::options::{DEFAULT_NUM_CHARS, MAX_BEAM};
use crate::store::html::PAGE_STYLE;
use crate::store::layout::resolve_model_dir;
use crate::store::load::LoadedModel;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use listen::Connections;
use request::{answer, parse, ApiError, Rules};
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::unbounded_channel;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use worker::{work, Job, Reply, Stats};

/// Everything `charrnn serve` needs.
#[derive(Debug, Clone)]
pub struct ServeJob {
    /// Model folder; `None` means the last one trained here.
    pub model: Option<PathBuf>,
    /// Where to compute.
    pub device: DeviceSpec,
    /// libtorch's CPU threads (`None`: one, as `predict`).
    pub threads: Option<usize>,
    /// Address to listen on (loopback unless asked otherwise).
    pub host: IpAddr,
    /// Port (0: any free one; the one taken is passed to `on_ready`).
    pub port: u16,
    /// Most characters one request may ask for.
    pub max_chars: usize,
    /// Most samples (or beams) one request may ask for.
    pub max_samples: usize,
    /// Requests that may wait for the worker; one more is answered 503 with Retry-After.
    pub queue: usize,
    /// Most requests generated together as one batch.
    pub max_batch: usize,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Most connections open at once; one more is answered 503 with Retry-After and closed.
    pub max_connections: usize,
    /// How long a connection may take to send a request's headers, from its opening or from its last
    /// answer (so also how long an idle keep-alive connection is kept); past it, it is closed.
    pub header_timeout: Duration,
    /// How long a request's body may take to arrive once its headers have; past it, 408 and the connection
    /// closed.
    pub body_timeout: Duration,
    /// After SIGINT or SIGTERM, how long running requests may take to finish; past it, generation stops at
    /// its next step and each request is answered with what it has (`"interrupted": true`).
    pub grace: Duration,
}

impl Default for ServeJob {
    fn default() -> Self {
        ServeJob {
            model: None,
            device: DeviceSpec::default(),
            threads: None,
            host: IpAddr::from([127, 0, 0, 1]),
            port: 8080,
            max_chars: 10_000,
            max_samples: 16,
            queue: 64,
            max_batch: 64,
            max_body: 64 * 1024,
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            grace: Duration::from_secs(10),
        }
    }
}

/// What the handlers share.
struct Shared {
    jobs: SyncSender<Job>,
    rules: Rules,
    model: Value,
    stats: Arc<Stats>,
    connections: Arc<Connections>,
    body_timeout: Duration,
}

/// After the grace, how long the answers cut short get to go out before the connections are dropped.
const LAST_ANSWERS: Duration = Duration::from_secs(2);

/// Runs the server until SIGINT or SIGTERM: loads the model, listens, calls `on_ready(address, model
/// folder)` once it accepts connections, and on a signal stops accepting, lets running requests finish for
/// up to `job.grace`, then ends them.
pub fn serve(job: &ServeJob, on_ready: &mut dyn FnMut(SocketAddr, &Path)) -> Result<()> {
    if [job.max_chars, job.max_samples, job.queue, job.max_batch, job.max_connections].contains(&0) {
        let flags = "--max-chars, --max-samples, --queue, --max-batch and --max-connections";
        return Err(Error::config("serve", format!("{flags} must be at least 1")));
    }
    if job.header_timeout.is_zero() || job.body_timeout.is_zero() {
        return Err(Error::config("serve", "--header-timeout and --body-timeout must be above 0"));
    }
    set_threads(Some(job.threads.unwrap_or(1)))?;
    let dir = resolve_model_dir(job.model.as_deref())?;
    let loaded = load_model(Some(&dir), job.device)?;
    let shared_model = describe(&dir, &loaded, job);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::config("serve", format!("cannot start the server's threads ({e})")))?;
    let worker = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((job.host, job.port)).await.map_err(|e| {
            let (flag, fix) = match e.kind() {
                std::io::ErrorKind::AddrNotAvailable => ("--host", "give an address of this machine"),
                _ => ("--port", "pick another --port"),
            };
            Error::config(flag, format!("cannot listen on {}:{} ({e}); {fix}", job.host, job.port))
        })?;
        let address = listener.local_addr().map_err(|e| Error::config("--port", e.to_string()))?;
        let (jobs, queue) = sync_channel(job.queue);
        let stats = Arc::new(Stats::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let rules = Rules {
            vocab: loaded.vocab.clone(),
            options: loaded.file.corpus.options,
            max_chars: job.max_chars,
            max_samples: job.max_samples,
        };
        let worker = {
            let (stats, stopping, max_batch) = (stats.clone(), stopping.clone(), job.max_batch);
            std::thread::spawn(move || work(loaded, queue, max_batch, &stats, &stopping))
        };
        let connections = Arc::new(Connections::new(job.max_connections, job.header_timeout));
        let shared = Arc::new(Shared {
            jobs,
            rules,
            model: shared_model,
            stats: stats.clone(),
            connections: connections.clone(),
            body_timeout: job.body_timeout,
        });
        let app = Router::new()
            .route("/", get(page))
            .route("/healthz", get(healthz))
            .route("/v1/model", get(model))
            .route("/v1/generate", post(generate))
            .layer(DefaultBodyLimit::max(job.max_body))
            .with_state(shared);
        // Installed before the address is announced, so that a signal from then on stops the server cleanly.
        let signals = StopSignals::install()?;
        on_ready(address, &dir);
        connections.accept(listener, app, stats, signals.recv()).await;
        // Nothing new is accepted, and each connection closes once its current request is answered. Past the
        // grace, generation stops at its next step, and the answers so far go out.
        if tokio::time::timeout(job.grace, connections.closed()).await.is_err() {
            stopping.store(true, Ordering::Relaxed);
            let _ = tokio::time::timeout(LAST_ANSWERS, connections.closed()).await;
        }
        stopping.store(true, Ordering::Relaxed);
        Ok::<_, Error>(worker)
    })?;
    // Dropping the runtime drops what connections are left, and with them the last senders of the queue:
    // the worker then ends, its running requests cut at their next step.
    drop(runtime);
    let _ = worker.join();
    Ok(())
}

/// SIGINT (Ctrl-C) and SIGTERM, caught from the moment they are installed.
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let fail = |e: std::io::Error| Error::config("serve", format!("cannot catch SIGINT and SIGTERM ({e})"));
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).map_err(fail)?,
            terminate: signal(SignalKind::terminate()).map_err(fail)?,
        })
    }

    /// Resolves at the first of the two.
    async fn recv(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// `GET /v1/model`'s answer.
fn describe(dir: &Path, loaded: &LoadedModel, job: &ServeJob) -> Value {
    let f = &loaded.file;
    json!({
        "dir": dir.display().to_string(),
        "cell": f.model.arch.cell,
        "hidden": f.model.arch.hidden,
        "layers": f.model.arch.layers,
        "embed": f.model.arch.embed,
        "vocab_size": f.model.vocab_size,
        "parameters": f.model.parameter_count(),
        "epochs": f.epoch,
        "perplexity": f.perplexity,
        "validation": f.validation,
        "corpus": f.corpus,
        "keep_newlines": f.corpus.options.keep_newlines,
        "device": device_name(loaded.model.device()),
        "limits": {
            "max_chars": job.max_chars,
            "max_samples": job.max_samples,
            "max_beam": job.max_samples.min(MAX_BEAM),
            "max_body": job.max_body,
            "queue": job.queue,
            "max_batch": job.max_batch,
            "max_connections": job.max_connections,
            "header_timeout_s": job.header_timeout.as_secs_f64(),
            "body_timeout_s": job.body_timeout.as_secs_f64(),
            "grace_s": job.grace.as_secs_f64(),
        },
        "defaults": { "num_chars": DEFAULT_NUM_CHARS, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0, "samples": 1 },
    })
}

/// The page, with the style sheet it shares with the exported page.
static PAGE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| include_str!("page.html").replacen("/*PAGE_STYLE*/", PAGE_STYLE, 1));

async fn page() -> Html<&'static str> {
    Html(PAGE.as_str())
}

async fn healthz(State(shared): State<Arc<Shared>>) -> axum::Json<Value> {
    let s = &shared.stats;
    axum::Json(json!({
        "status": "ok",
        "requests": s.requests.load(Ordering::Relaxed),
        "batches": s.batches.load(Ordering::Relaxed),
        "largest_batch": s.largest_batch.load(Ordering::Relaxed),
        "rejected_busy": s.rejected_busy.load(Ordering::Relaxed),
        "running": s.running.load(Ordering::Relaxed),
        "steps": s.steps.load(Ordering::Relaxed),
        "abandoned": s.abandoned.load(Ordering::Relaxed),
        "interrupted": s.interrupted.load(Ordering::Relaxed),
        "connections": shared.connections.count(),
        "refused_connections": s.refused_connections.load(Ordering::Relaxed),
    }))
}

async fn model(State(shared): State<Arc<Shared>>) -> axum::Json<Value> {
    axum::Json(shared.model.clone())
}

async fn generate(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
) -> std::result::Result<Response, ApiError> {
    let accept = request.headers().get(header::ACCEPT).and_then(|a| a.to_str().ok());
    let accepts_events = accept.is_some_and(|a| a.contains("text/event-stream"));
    let body = match tokio::time::timeout(shared.body_timeout, Bytes::from_request(request, &())).await {
        Ok(body) => body.map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::body(StatusCode::PAYLOAD_TOO_LARGE, "the request body is too large")
            }
            status => ApiError::body(status, format!("cannot read the request body ({e})")),
        })?,
        Err(_) => {
            let within = shared.body_timeout.as_secs_f64();
            return Err(ApiError::body(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {within} s (--body-timeout)"),
            ));
        }
    };
    let mut request = parse(&body, &shared.rules)?;
    request.stream |= accepts_events;
    let stream = request.stream;
    let (reply, mut replies) = unbounded_channel();
    match shared.jobs.try_send(Job { request, reply }) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            shared.stats.rejected_busy.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::body(StatusCode::SERVICE_UNAVAILABLE, "the server is busy: retry shortly"));
        }
        Err(TrySendError::Disconnected(_)) => {
            return Err(ApiError::body(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping"));
        }
    }
    if stream {
        // The stream ends at this request's own last event. A client that goes away drops the stream, and
        // so `replies`, at once (not only at the next reply, which a beam search sends only at its end): the
        // worker sees its reply channel closed and stops generating at the next step.
        let (forward, forwarded) = unbounded_channel();
        tokio::spawn(async move {
            loop {
                let reply = tokio::select! {
                    reply = replies.recv() => reply,
                    _ = forward.closed() => None,
                };
                let Some(reply) = reply else { break };
                let last = matches!(reply, Reply::Done { .. } | Reply::Failed(_));
                if forward.send(reply).is_err() || last {
                    break;
                }
            }
        });
        let events = UnboundedReceiverStream::new(forwarded).map(|reply| {
            Ok::<Event, std::convert::Infallible>(match reply {
                Reply::Char { sample, c } => {
                    Event::default().event("char").data(json!({ "sample": sample, "char": c }).to_string())
                }
                Reply::Done { samples, batch, interrupted } => {
                    Event::default().event("done").data(answer(&samples, batch, interrupted).to_string())
                }
                Reply::Failed(message) => Event::default().event("error").data(json!({ "error": message }).to_string()),
            })
        });
        return Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response());
    }
    while let Some(reply) = replies.recv().await {
        match reply {
            Reply::Char { .. } => {}
            Reply::Done { samples, batch, interrupted } => {
                return Ok(axum::Json(answer(&samples, batch, interrupted)).into_response())
            }
            Reply::Failed(message) => return Err(ApiError::body(StatusCode::INTERNAL_SERVER_ERROR, message)),
        }
    }
    Err(ApiError::body(StatusCode::SERVICE_UNAVAILABLE, "the server stopped before this request was generated"))
}
