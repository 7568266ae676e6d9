//! The arguments of `predict` and `serve`, and how generated characters are chosen (shared with `train`'s
//! reports).
use crate::args::choices::UnknownArg;
#[cfg(feature = "serve")]
use crate::args::common::{parse_duration, parse_duration_or_zero};
use crate::args::common::{DeviceArgs, DRAW};
#[cfg(feature = "serve")]
use charrnn::ServeJob;
use charrnn::{Generate, PredictJob, Sampler};
use clap::Args;
use std::path::PathBuf;
#[cfg(feature = "serve")]
use std::time::Duration;

/// How generated characters are chosen (shared by `predict` and the reports of `train`). One rule for
/// flags that would otherwise do nothing: --top-k, --top-p (and predict's --samples above 1) sample at
/// temperature 1 unless --temperature is given, as nanoGPT does; with --temperature 0 (greedy) they are a
/// usage error.
#[derive(Args)]
#[group(id = DRAW, multiple = true)]
pub struct DrawArgs {
    #[arg(long, value_name = "T", allow_negative_numbers = true, help = format!(
        "Softmax temperature: 0 takes the most likely character (greedy), 1 samples from the model, more flattens \
         its distribution [default: {}, or 1 with --top-k, --top-p or several --samples]",
        Sampler::default().temperature
    ))]
    pub temperature: Option<f64>,
    /// Sample only among the K most likely characters (0 = no limit) [default: 0].
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Sample only among the fewest most likely characters whose probabilities reach P (1 = no limit)
    /// [default: 1].
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub top_p: Option<f64>,
}

impl DrawArgs {
    /// The sampler these flags describe, with `samples` samples drawn at once; `Err`: the usage error of a
    /// flag that would have no effect.
    pub(crate) fn sampler(&self, seed: u64, samples: usize) -> Result<Sampler, String> {
        Sampler::from_settings(self.temperature, self.top_k, self.top_p, seed, samples).map_err(|name| {
            let flag = format!("--{}", name.replace('_', "-"));
            format!("{flag} has no effect with --temperature 0 (greedy decoding); give a temperature above 0, or drop {flag}")
        })
    }
}

#[derive(Args)]
pub struct PredictArgs {
    /// Model folder [default: the last model `train` wrote from this folder].
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Text to continue (read as the model reads text: with its newline setting; may start with '-').
    #[arg(long, value_name = "P", allow_hyphen_values = true)]
    pub prefix: String,
    #[arg(long, value_name = "N", default_value_t = charrnn::DEFAULT_NUM_CHARS, help = format!(
        "Characters to generate after the prefix, at most {} (a limit on memory: the text is kept to be printed)",
        charrnn::MAX_NUM_CHARS
    ))]
    pub num_chars: usize,
    #[command(flatten)]
    pub draw: DrawArgs,
    /// Seed of the draws (sample i uses seed + i); the same seed, model and flags give the same text.
    #[arg(long, default_value_t = Sampler::default().seed)]
    pub seed: u64,
    /// Independent samples, generated together as one batch and printed one per line.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub samples: usize,
    /// Write characters as they are produced (one sample).
    #[arg(long, conflicts_with = "json")]
    pub stream: bool,
    /// End a sample when it produces this string (kept in the text).
    #[arg(long, value_name = "S")]
    pub stop: Option<String>,
    /// Print one JSON object per sample: the text and each generated character's probability (and, with
    /// --beam, the total log probability).
    #[arg(long)]
    pub json: bool,
    /// Beam search: print the N most likely continuations by total log probability, most likely first,
    /// instead of a greedy or sampled one (1 is greedy).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=charrnn::MAX_BEAM as u64),
          conflicts_with_all = ["temperature", "top_k", "top_p", "samples", "stream", "seed"])]
    pub beam: Option<u64>,
    /// Prefix characters not in the model's vocabulary: error (name them) or skip (drop them, with a
    /// warning).
    #[arg(long, value_enum, default_value_t = UnknownArg::from(charrnn::UnknownChars::default()))]
    pub unknown: UnknownArg,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl PredictArgs {
    /// The library's job; `Err`: the usage error of a sampling flag that would have no effect.
    pub fn job(&self) -> Result<PredictJob, String> {
        Ok(PredictJob {
            model: self.model.clone(),
            device: self.device.device,
            threads: self.device.threads,
            prefix: self.prefix.clone(),
            unknown: self.unknown.into(),
            generate: Generate {
                num_chars: self.num_chars,
                samples: self.samples,
                stop: self.stop.clone(),
                sampler: self.draw.sampler(self.seed, self.samples)?,
                probs: self.json,
                beam: self.beam.map_or(0, |n| n as usize),
            },
        })
    }
}

#[cfg(feature = "serve")]
#[derive(Args)]
pub struct ServeArgs {
    /// Model folder [default: the last model `train` wrote from this folder].
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Address to listen on: loopback unless you ask for another (0.0.0.0 serves every interface).
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    pub host: std::net::IpAddr,
    /// Port to listen on (0: any free one, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Most characters one request may ask for.
    #[arg(long, default_value_t = ServeJob::default().max_chars as u64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=charrnn::MAX_NUM_CHARS as u64))]
    pub max_chars: u64,
    /// Most samples (or beams) one request may ask for.
    #[arg(long, default_value_t = ServeJob::default().max_samples as u64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max_samples: u64,
    /// Requests that may wait for generation; more are answered 503 with Retry-After.
    #[arg(long, default_value_t = ServeJob::default().queue as u64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub queue: u64,
    /// Most requests generated together as one batch (1: one at a time).
    #[arg(long, default_value_t = ServeJob::default().max_batch as u64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_batch: u64,
    /// Largest request body, in bytes; a larger one is answered 413.
    #[arg(long, default_value_t = ServeJob::default().max_body as u64, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(2..=1 << 30))]
    pub max_body: u64,
    /// Most connections open at once; one more is answered 503 with Retry-After and closed.
    #[arg(long, default_value_t = ServeJob::default().max_connections as u64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// How long a connection may take to send a request's headers, from its opening or its last answer
    /// (so also how long an idle keep-alive connection is kept); then it is closed [e.g. 10s, 1min].
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// How long a request's body may take to arrive after its headers; then 408 and the connection closed.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// How long running requests get to finish after Ctrl-C or SIGTERM (0: none); then generation stops at
    /// its next step and each is answered with what it has, marked "interrupted".
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration_or_zero)]
    pub grace: Duration,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[cfg(feature = "serve")]
impl ServeArgs {
    /// The library's job.
    pub fn job(&self) -> ServeJob {
        ServeJob {
            model: self.model.clone(),
            device: self.device.device,
            threads: self.device.threads,
            host: self.host,
            port: self.port,
            max_chars: self.max_chars as usize,
            max_samples: self.max_samples as usize,
            queue: self.queue as usize,
            max_batch: self.max_batch as usize,
            max_body: self.max_body as usize,
            max_connections: self.max_connections as usize,
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            grace: self.grace,
        }
    }
}
