//! `charrnn serve`: generation over HTTP from one loaded model: a JSON API, the same answered as
//! Server-Sent Events, and a web page. One worker thread owns the model (libtorch work stays off the async
//! threads); the requests that wait for it together are generated as one batch.
//!
//! Endpoints: `GET /` (the page), `GET /healthz`, `GET /v1/model`, `POST /v1/generate`.
use crate::beam::{beam_search, MAX_BEAM};
use crate::checkpoint::LoadedModel;
use crate::corpus::{CorpusOptions, Vocabulary};
use crate::device::{set_threads, DeviceSpec};
use crate::error::{Error, Result};
use crate::predict::{Batch, Generate, Generated, Sampler, DEFAULT_NUM_CHARS};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

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
    /// After SIGINT or SIGTERM, how long running requests may take to finish.
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
            grace: Duration::from_secs(10),
        }
    }
}

/// The request fields `POST /v1/generate` takes.
const FIELDS: [&str; 11] =
    ["prefix", "num_chars", "temperature", "top_k", "top_p", "seed", "samples", "stop", "beam", "probs", "stream"];

/// A checked generation request.
#[derive(Debug, Clone)]
struct Request {
    prefix: String,
    generate: Generate,
    stream: bool,
}

/// What the worker sends back for one request.
#[derive(Debug)]
enum Reply {
    /// Character `c` of sample `sample`, as soon as it is chosen.
    Char { sample: usize, c: char },
    /// All samples, and how many requests were generated in the batch with this one (itself included).
    Done { samples: Vec<Generated>, batch: usize },
    /// Generation failed (the message says why).
    Failed(String),
}

/// A request queued for the worker, with where its replies go.
struct Job {
    request: Request,
    reply: UnboundedSender<Reply>,
}

/// Counts `GET /healthz` reports.
#[derive(Default)]
struct Stats {
    requests: AtomicUsize,
    batches: AtomicUsize,
    largest_batch: AtomicUsize,
    rejected_busy: AtomicUsize,
}

/// What the handlers share.
struct Shared {
    jobs: SyncSender<Job>,
    vocab: Vocabulary,
    options: CorpusOptions,
    model: Value,
    max_chars: usize,
    max_samples: usize,
    stats: Arc<Stats>,
}

/// A 4xx or 5xx answer: `{"error": message, "field": name or null}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    field: Option<String>,
    message: String,
}

impl ApiError {
    fn field(name: &str, message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, field: Some(name.to_string()), message: message.into() }
    }

    fn body(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, field: None, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.message, "field": self.field });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

/// Runs the server until SIGINT or SIGTERM: loads the model, listens, calls `on_ready(address, model
/// folder)` once it accepts connections, and on a signal stops accepting, lets running requests finish for
/// up to `job.grace`, then ends them.
pub fn serve(job: &ServeJob, on_ready: &mut dyn FnMut(SocketAddr, &Path)) -> Result<()> {
    if job.max_chars == 0 || job.max_samples == 0 || job.queue == 0 || job.max_batch == 0 {
        return Err(Error::config("serve", "--max-chars, --max-samples, --queue and --max-batch must be at least 1"));
    }
    set_threads(Some(job.threads.unwrap_or(1)))?;
    let dir = crate::checkpoint::resolve_model_dir(job.model.as_deref())?;
    let loaded = crate::commands::load_model(Some(&dir), job.device)?;
    let shared_model = describe(&dir, &loaded, job);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::config("serve", format!("cannot start the server's threads ({e})")))?;
    runtime.block_on(async {
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
        let vocab = loaded.vocab.clone();
        let options = loaded.file.corpus.options;
        let worker = {
            let (stats, stopping, max_batch) = (stats.clone(), stopping.clone(), job.max_batch);
            std::thread::spawn(move || work(loaded, queue, max_batch, &stats, &stopping))
        };
        let shared = Arc::new(Shared {
            jobs,
            vocab,
            options,
            model: shared_model,
            max_chars: job.max_chars,
            max_samples: job.max_samples,
            stats,
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
        let signalled = Arc::new(tokio::sync::Notify::new());
        let server = axum::serve(listener, app).with_graceful_shutdown({
            let signalled = signalled.clone();
            async move {
                signals.recv().await;
                signalled.notify_one();
            }
        });
        let grace = async {
            signalled.notified().await;
            tokio::time::sleep(job.grace).await;
        };
        tokio::select! {
            served = server => served.map_err(|e| Error::config("serve", format!("the server failed ({e})")))?,
            _ = grace => {}
        }
        // The router (and with it the queue's sender) is gone: the worker ends after its current batch, which
        // `stopping` cuts short.
        stopping.store(true, Ordering::Relaxed);
        let _ = worker.join();
        Ok(())
    })
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
        "device": crate::device::device_name(loaded.model.device()),
        "limits": { "max_chars": job.max_chars, "max_samples": job.max_samples, "max_beam": job.max_samples.min(MAX_BEAM) },
        "defaults": { "num_chars": DEFAULT_NUM_CHARS, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0, "samples": 1 },
    })
}

async fn page() -> Html<&'static str> {
    Html(include_str!("serve_page.html"))
}

async fn healthz(State(shared): State<Arc<Shared>>) -> axum::Json<Value> {
    let s = &shared.stats;
    axum::Json(json!({
        "status": "ok",
        "requests": s.requests.load(Ordering::Relaxed),
        "batches": s.batches.load(Ordering::Relaxed),
        "largest_batch": s.largest_batch.load(Ordering::Relaxed),
        "rejected_busy": s.rejected_busy.load(Ordering::Relaxed),
    }))
}

async fn model(State(shared): State<Arc<Shared>>) -> axum::Json<Value> {
    axum::Json(shared.model.clone())
}

async fn generate(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<Response, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::body(StatusCode::PAYLOAD_TOO_LARGE, "the request body is too large"),
        status => ApiError::body(status, format!("cannot read the request body ({e})")),
    })?;
    let mut request = parse(&body, &shared)?;
    let accepts_events =
        headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()).is_some_and(|a| a.contains("text/event-stream"));
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
        // The worker keeps a request's sender until its whole batch is done: the stream ends at this
        // request's own last event instead.
        let (forward, forwarded) = unbounded_channel();
        tokio::spawn(async move {
            while let Some(reply) = replies.recv().await {
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
                Reply::Done { samples, batch } => {
                    Event::default().event("done").data(answer(&samples, batch).to_string())
                }
                Reply::Failed(message) => Event::default().event("error").data(json!({ "error": message }).to_string()),
            })
        });
        return Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response());
    }
    while let Some(reply) = replies.recv().await {
        match reply {
            Reply::Char { .. } => {}
            Reply::Done { samples, batch } => return Ok(axum::Json(answer(&samples, batch)).into_response()),
            Reply::Failed(message) => return Err(ApiError::body(StatusCode::INTERNAL_SERVER_ERROR, message)),
        }
    }
    Err(ApiError::body(StatusCode::SERVICE_UNAVAILABLE, "the server stopped before this request was generated"))
}

/// The JSON answer to a generation request: the samples (or beams, most likely first) as `predict --json`
/// gives them, and the number of requests generated in the same batch.
fn answer(samples: &[Generated], batch: usize) -> Value {
    let samples: Vec<Value> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut v = json!({ "sample": i, "text": s.text, "generated": s.generated, "probs": s.probs, "stopped": s.stopped });
            if let Some(lp) = s.log_prob {
                v["log_prob"] = lp.into();
            }
            v
        })
        .collect();
    json!({ "samples": samples, "batch": batch })
}

/// An optional field of `map` as a `T`; a value of the wrong type is an error naming the field.
fn field<T: serde::de::DeserializeOwned>(
    map: &Map<String, Value>,
    name: &str,
) -> std::result::Result<Option<T>, ApiError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            serde_json::from_value(v.clone()).map(Some).map_err(|e| ApiError::field(name, format!("{name}: {e}")))
        }
    }
}

/// Checks a request body against the model and the server's limits: every error names its field.
fn parse(body: &[u8], shared: &Shared) -> std::result::Result<Request, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::body(StatusCode::BAD_REQUEST, format!("the body is not JSON ({e})")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::body(StatusCode::BAD_REQUEST, "the body must be a JSON object"));
    };
    if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::field(
            unknown,
            format!("unknown field {unknown:?}; the fields are {}", FIELDS.join(", ")),
        ));
    }
    let prefix: String = field(&map, "prefix")?.ok_or_else(|| ApiError::field("prefix", "prefix is required"))?;
    let prefix = shared.options.read_text(&prefix);
    if prefix.is_empty() {
        return Err(ApiError::field("prefix", "prefix must not be empty"));
    }
    // A text of the request in the model's vocabulary, or an error naming its field and the characters.
    let known = |name: &'static str, text: &str| match shared.vocab.encode(text, name) {
        Err(Error::UnknownChars { chars, .. }) => {
            let quoted = crate::error::quote_chars(&chars);
            Err(ApiError::field(name, format!("{name} has characters the model does not know: {quoted}")))
        }
        _ => Ok(()),
    };
    known("prefix", &prefix)?;
    let num_chars = field(&map, "num_chars")?.unwrap_or(DEFAULT_NUM_CHARS);
    if num_chars > shared.max_chars {
        return Err(ApiError::field("num_chars", format!("num_chars is at most {} here", shared.max_chars)));
    }
    let samples: usize = field(&map, "samples")?.unwrap_or(1);
    if !(1..=shared.max_samples).contains(&samples) {
        return Err(ApiError::field("samples", format!("samples must be from 1 to {}", shared.max_samples)));
    }
    let (temperature, top_k, top_p) = (field(&map, "temperature")?, field(&map, "top_k")?, field(&map, "top_p")?);
    let seed: Option<u64> = field(&map, "seed")?;
    let beam: Option<usize> = field(&map, "beam")?;
    if let Some(beam) = beam {
        let widest = shared.max_samples.min(MAX_BEAM);
        if !(1..=widest).contains(&beam) {
            return Err(ApiError::field("beam", format!("beam must be from 1 to {widest}")));
        }
        let sampling = ["temperature", "top_k", "top_p", "seed", "samples"].into_iter().find(|f| map.contains_key(*f));
        if let Some(other) = sampling {
            return Err(ApiError::field(
                "beam",
                format!("beam searches for the most likely continuations: drop {other}"),
            ));
        }
    }
    let sampler = Sampler::from_settings(temperature, top_k, top_p, seed.unwrap_or(0), samples).map_err(|name| {
        ApiError::field(name, format!("{name} has no effect at temperature 0 (greedy): give a temperature above 0"))
    })?;
    let stop: Option<String> = field(&map, "stop")?;
    let stop = stop.map(|s| shared.options.read_text(&s));
    if let Some(stop) = &stop {
        if stop.is_empty() {
            return Err(ApiError::field("stop", "stop must not be empty"));
        }
        known("stop", stop)?;
    }
    let probs = field(&map, "probs")?.unwrap_or(false);
    let stream = field(&map, "stream")?.unwrap_or(false);
    let generate = Generate { num_chars, samples, stop, sampler, probs, beam: beam.unwrap_or(0) };
    generate.validate().map_err(|e| match e {
        Error::InvalidConfig { name, reason } => {
            let name = name.trim_start_matches("--").replace('-', "_");
            ApiError::field(&name, format!("{name} {reason}"))
        }
        other => ApiError::body(StatusCode::BAD_REQUEST, other.to_string()),
    })?;
    Ok(Request { prefix, generate, stream })
}

/// The worker: generates the sampled and greedy requests together in one [`Batch`], which a request joins
/// as soon as it arrives (at the next step) while fewer than `max_batch` run, and the beam searches one by
/// one between steps; sends each request its replies, the last as soon as its own rows are done. Ends when
/// the queue's sender is gone and nothing runs. A request whose client went away leaves the batch;
/// `stopping` ends every running request.
fn work(loaded: LoadedModel, queue: Receiver<Job>, max_batch: usize, stats: &Stats, stopping: &AtomicBool) {
    let LoadedModel { model, vocab, .. } = loaded;
    let mut batch = Batch::new(&model, &vocab);
    // The running requests' reply channels by batch id, and how many requests the batch has held.
    let mut running: HashMap<usize, (UnboundedSender<Reply>, usize)> = HashMap::new();
    loop {
        // Wait when nothing runs; otherwise take what is waiting, without waiting.
        let mut arrived = Vec::new();
        if batch.is_empty() {
            match queue.recv() {
                Ok(job) => arrived.push(job),
                Err(_) => return,
            }
        }
        while running.len() + arrived.len() < max_batch {
            match queue.try_recv() {
                Ok(job) => arrived.push(job),
                Err(_) => break,
            }
        }
        let joining = arrived.iter().filter(|j| j.request.generate.beam == 0).count();
        for job in arrived {
            if job.request.generate.beam > 0 {
                record(stats, 1, 1);
                beam(&model, &vocab, job);
                continue;
            }
            let size = running.len() + 1;
            let admit = || batch.admit(&job.request.prefix, &job.request.generate);
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(admit)) {
                Ok(Ok(id)) => drop(running.insert(id, (job.reply, size))),
                Ok(Err(e)) => drop(job.reply.send(Reply::Failed(e.to_string()))),
                Err(_) => drop(job.reply.send(Reply::Failed("reading the prefix failed inside libtorch".into()))),
            }
        }
        if joining > 0 {
            record(stats, joining, running.len());
        }
        if batch.is_empty() {
            continue;
        }
        // The batch size each request reports: the most requests it ran beside, itself included.
        let now = running.len();
        running.values_mut().for_each(|(_, size)| *size = (*size).max(now));
        let mut finished = Vec::new();
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            batch.step(
                &mut |r, sample, c| {
                    let gone = running.get(&r).is_none_or(|(reply, _)| reply.send(Reply::Char { sample, c }).is_err());
                    if gone || stopping.load(Ordering::Relaxed) {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                },
                &mut |r, samples| finished.push((r, samples)),
            )
        }));
        for (r, samples) in finished {
            if let Some((reply, size)) = running.remove(&r) {
                let _ = reply.send(Reply::Done { samples, batch: size });
            }
        }
        if !matches!(step, Ok(Ok(()))) {
            let message = match step {
                Ok(Err(e)) => e.to_string(),
                _ => "generation failed inside libtorch".to_string(),
            };
            running.drain().for_each(|(_, (reply, _))| drop(reply.send(Reply::Failed(message.clone()))));
            batch = Batch::new(&model, &vocab);
        }
    }
}

/// Runs one beam search and sends its replies.
fn beam(model: &crate::model::Network, vocab: &Vocabulary, job: Job) {
    let g = &job.request.generate;
    let run = || beam_search(model, vocab, &job.request.prefix, g.num_chars, g.beam, g.stop.as_deref());
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(Ok(beams)) => {
            for (i, b) in beams.iter().enumerate() {
                for c in b.generated.chars() {
                    let _ = job.reply.send(Reply::Char { sample: i, c });
                }
            }
            let _ = job.reply.send(Reply::Done { samples: beams, batch: 1 });
        }
        Ok(Err(e)) => drop(job.reply.send(Reply::Failed(e.to_string()))),
        Err(_) => drop(job.reply.send(Reply::Failed("generation failed inside libtorch".into()))),
    }
}

/// Counts `joined` requests joining the generation, which now runs `running` together.
fn record(stats: &Stats, joined: usize, running: usize) {
    stats.requests.fetch_add(joined, Ordering::Relaxed);
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.largest_batch.fetch_max(running, Ordering::Relaxed);
}
