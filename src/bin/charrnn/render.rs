//! What `charrnn` shows: the training progress bar and report lines, and the output of predict, eval and
//! info. Samples and results go to stdout, progress and diagnostics to stderr.
use charrnn::{
    describe_position, Dtype, EpochReport, EvalReport, Info, IterationReport, ModelSummary, PredictOutcome, Progress,
    RollbackReport, RunInfo, TrainObserver, TrainOutcome,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Prints the textbook's report lines to stdout and, on a terminal, a progress bar on stderr; passes on
/// the signal that asked training to stop.
pub struct Reporter {
    /// Whether stderr is a terminal (else no bar is drawn).
    tty: bool,
    pub bar: Option<ProgressBar>,
    last_draw: Instant,
    pub write_error: Option<std::io::Error>,
    /// The number of the first SIGINT or SIGTERM received (0: none).
    signal: Arc<AtomicUsize>,
    pub quiet: bool,
    verbose: bool,
    /// Characters per minibatch (for the bar's speed).
    chars_per_batch: usize,
    /// When the bar started, and its position then.
    bar_start: (Instant, u64),
    /// Without a terminal (and not quiet): the least time between two plain progress lines.
    plain_every: Option<Duration>,
    /// When the last plain progress line was printed (or training began).
    last_plain: Instant,
    /// For the long-run note: epochs between reports, and whether the run has a limit or in-epoch
    /// reports already (then no note); `None` once the note is settled.
    long_run: Option<(usize, Limits)>,
    /// When this process trained its first minibatch, and the run's position then.
    first_minibatch: Option<(Instant, u64)>,
}

/// The least time between two plain progress lines in a log, in seconds; `CHARRNN_PROGRESS_SECS` may set
/// another.
const PLAIN_PROGRESS_SECS: f64 = 30.0;

impl Reporter {
    pub fn new(signal: Arc<AtomicUsize>, quiet: bool, verbose: bool) -> Self {
        let tty = std::io::stderr().is_terminal() && !quiet;
        Reporter {
            tty,
            bar: None,
            last_draw: Instant::now(),
            write_error: None,
            signal,
            quiet,
            verbose,
            chars_per_batch: 0,
            // Set at the first minibatch this process trains (a resumed run starts part of the way in).
            bar_start: (Instant::now(), u64::MAX),
            plain_every: (!tty && !quiet).then(|| {
                let secs = std::env::var("CHARRNN_PROGRESS_SECS").ok().and_then(|s| s.parse::<f64>().ok());
                Duration::from_secs_f64(secs.filter(|s| s.is_finite() && *s >= 0.0).unwrap_or(PLAIN_PROGRESS_SECS))
            }),
            last_plain: Instant::now(),
            long_run: None,
            first_minibatch: None,
        }
    }

    /// Once, after 5 seconds of training: a note when the run will take hours and its first report is far
    /// away (the textbook's 250 epochs with a report every 50 suit 10,000 characters, not a novel).
    fn note_long_run(&mut self, p: &Progress<'_>, position: u64) {
        let Some((pred_period, limits)) = self.long_run else { return };
        let (start, from) = *self.first_minibatch.get_or_insert((Instant::now(), position));
        let secs = start.elapsed().as_secs_f64();
        if secs < 5.0 || position <= from {
            return;
        }
        self.long_run = None;
        let per_minibatch = secs / (position - from) as f64;
        if let Some(text) = limits.note_before_report(p, position, per_minibatch, secs) {
            return match &self.bar {
                Some(bar) => bar.suspend(|| say!("{text}")),
                None => say!("{text}"),
            };
        }
        let bounded = limits.time_limit.is_some() || limits.max_iters.is_some() || limits.eval_every.is_some();
        let total = (p.epochs * p.minibatches) as u64;
        let report_epoch = (p.epoch.div_ceil(pred_period) * pred_period).min(p.epochs);
        let to_report = (report_epoch * p.minibatches) as u64 - position.min((report_epoch * p.minibatches) as u64);
        let (run_left, report_in) = (per_minibatch * (total - position) as f64, per_minibatch * to_report as f64);
        if bounded || run_left < 3600.0 || report_in < 600.0 {
            return;
        }
        let text = format!(
            "note: at this speed the run takes about {} more, and its first report (epoch {report_epoch}) comes in about {}; \
             --pred-period or --eval-every N report sooner, --epochs or --time-limit bound the run (README: Training on your own text)",
            hours_minutes(run_left),
            hours_minutes(report_in)
        );
        match &self.bar {
            Some(bar) => bar.suspend(|| say!("{text}")),
            None => say!("{text}"),
        }
    }

    /// Characters per second since the first minibatch this process trained, and the time the remaining
    /// `left` minibatches will take at that rate.
    fn speed(&self, position: u64, left: u64) -> (f64, Duration) {
        let (since, from) = self.bar_start;
        let secs = since.elapsed().as_secs_f64().max(1e-9);
        let done = position.saturating_sub(from).max(1) as f64;
        let speed = done * self.chars_per_batch as f64 / secs;
        (speed, Duration::from_secs_f64(secs / done * left as f64))
    }

    /// A plain progress line on stderr, at most every `plain_every`: for logs, where no bar is drawn.
    fn plain_progress(&mut self, p: &Progress<'_>, position: u64) {
        let Some(every) = self.plain_every else { return };
        if self.bar_start.1 == u64::MAX {
            self.bar_start = (Instant::now(), position.saturating_sub(1));
        }
        if self.last_plain.elapsed() < every {
            return;
        }
        self.last_plain = Instant::now();
        let total = (p.epochs * p.minibatches) as u64;
        let (speed, left) = self.speed(position, total - position);
        let secs = left.as_secs();
        say!(
            "progress: epoch {} of {}, minibatch {} of {} ({:.1}% of the run), perplexity {:.3}, {} chars/s, {}:{:02}:{:02} left",
            p.epoch,
            p.epochs,
            grouped(p.minibatch as u64),
            grouped(p.minibatches as u64),
            100.0 * position as f64 / total as f64,
            p.running_perplexity(),
            grouped(speed as u64),
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        );
    }

    fn print(&mut self, text: &str) {
        let write = || -> std::io::Result<()> {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()
        };
        let result = match &self.bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        };
        if let Err(e) = result {
            self.write_error.get_or_insert(e);
        }
    }
}

/// What bounds a run, for the note that it ends before its first report.
#[derive(Clone, Copy)]
struct Limits {
    time_limit: Option<Duration>,
    max_iters: Option<u64>,
    eval_every: Option<usize>,
}

impl Limits {
    /// A note when, at `per_minibatch` seconds a minibatch (`secs` since the first this process trained, at
    /// minibatch `position` of the run), `--time-limit` or `--max-iters` ends the run before its next report:
    /// the epoch's end (its perplexity, held-out score, chart point and samples), or the next `--eval-every`
    /// point.
    fn note_before_report(&self, p: &Progress<'_>, position: u64, per_minibatch: f64, secs: f64) -> Option<String> {
        let by_time = self.time_limit.map(|t| position + ((t.as_secs_f64() - secs).max(0.0) / per_minibatch) as u64);
        let (end, flag) = match (by_time, self.max_iters) {
            (Some(t), Some(n)) if n < t => (n, "--max-iters"),
            (Some(t), _) => (t, "--time-limit"),
            (None, Some(n)) => (n, "--max-iters"),
            (None, None) => return None,
        };
        let per_epoch = p.minibatches as u64;
        let epoch_end = position.div_ceil(per_epoch).max(1) * per_epoch;
        let next = self.eval_every.map_or(epoch_end, |n| epoch_end.min(position.div_ceil(n as u64).max(1) * n as u64));
        if end >= next || end >= (p.epochs as u64) * per_epoch {
            return None;
        }
        let (e, m) = (end / per_epoch + 1, end % per_epoch);
        Some(format!(
            "note: at this speed {flag} ends the run in epoch {e} after about {m} of its {per_epoch} minibatches, before its next report \
             (the epoch's perplexity, held-out score, chart and samples come at its end); --eval-every N reports every N minibatches, \
             or give the run more time; `charrnn train --resume` can continue it"
        ))
    }
}

/// A duration in seconds as "2h 48m" or "35m".
fn hours_minutes(secs: f64) -> String {
    let minutes = (secs / 60.0).round() as u64;
    match minutes / 60 {
        0 => format!("{minutes}m"),
        h => format!("{h}h {:02}m", minutes % 60),
    }
}

/// `n` with thousands separators: 1234567 -> "1,234,567".
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The one line `train` prints before it starts: device, data, network, schedule.
fn describe_run(i: &RunInfo) -> String {
    let c = &i.config;
    let input = if i.model.arch.embed > 0 { format!("embedding {}", i.model.arch.embed) } else { "one-hot".into() };
    let dropout =
        if i.model.arch.dropout > 0.0 { format!(", dropout {}", i.model.arch.dropout) } else { String::new() };
    let resumed = i.resumed_at.map(|(e, b)| format!(", resuming at {}", describe_position(e + 1, b, i.minibatches)));
    let precision = if c.dtype == Dtype::Fp32 { String::new() } else { format!(", {} output layer", c.dtype) };
    let fused = if i.model.arch.backend == charrnn::Backend::Fused { ", fused kernels" } else { "" };
    format!(
        "training on {}: corpus {} characters ({} trained, {} held out), vocabulary {}; {} {}x{} ({input}{dropout}{precision}{fused}), {} parameters; {} minibatches of {}x{} per epoch, {} lr {}, {} epoch{}{}",
        i.device,
        grouped(i.corpus_chars as u64),
        grouped(i.train_chars as u64),
        grouped((i.corpus_chars - i.train_chars) as u64),
        grouped(i.vocab_size as u64),
        i.model.arch.cell,
        i.model.arch.layers,
        i.model.arch.hidden,
        grouped(i.parameters),
        i.minibatches,
        c.batch_size,
        c.steps,
        c.optimizer,
        c.lr,
        c.epochs,
        if c.epochs == 1 { "" } else { "s" },
        resumed.unwrap_or_default()
    )
}

impl TrainObserver for Reporter {
    fn begin(&mut self, info: &RunInfo) {
        self.chars_per_batch = info.config.batch_size * info.config.steps;
        let c = &info.config;
        let limits = Limits { time_limit: c.time_limit, max_iters: c.max_iters, eval_every: c.eval_every };
        self.long_run = (!self.quiet).then_some((c.pred_period.max(1), limits));
        if !self.quiet {
            let notes: String = info.notes.iter().map(|n| format!("\nnote: {n}")).collect();
            let text = format!("{}{notes}", describe_run(info));
            match &self.bar {
                Some(bar) => bar.suspend(|| say!("{text}")),
                None => say!("{text}"),
            }
        }
    }

    fn stop_requested(&mut self) -> Option<i32> {
        match self.signal.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n as i32),
        }
    }

    fn minibatch(&mut self, p: &Progress<'_>) {
        let position = ((p.epoch - 1) * p.minibatches + p.minibatch) as u64;
        self.note_long_run(p, position);
        if !self.tty {
            return self.plain_progress(p, position);
        }
        let bar_start = &mut self.bar_start;
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new((p.epochs * p.minibatches) as u64);
            bar.set_style(
                ProgressStyle::with_template("{msg} [{elapsed_precise}<{eta_precise}] {wide_bar}")
                    .expect("valid template"),
            );
            // A resumed run starts part of the way in; its speed counts from here.
            bar.set_position(position.saturating_sub(1));
            bar.reset_eta();
            *bar_start = (Instant::now(), position.saturating_sub(1));
            bar
        });
        bar.set_position(position);
        // Reading the perplexity waits for the device; do it only as often as a person can read it.
        if self.last_draw.elapsed() >= Duration::from_millis(200) || p.minibatch == p.minibatches {
            self.last_draw = Instant::now();
            let (speed, _) = self.speed(position, 0);
            let bar = self.bar.as_ref().expect("drawn above");
            bar.set_message(format!(
                "epoch {} of {}, minibatch {} of {}, perplexity {:.3}, {} chars/s",
                p.epoch,
                p.epochs,
                p.minibatch,
                p.minibatches,
                p.running_perplexity(),
                grouped(speed as u64)
            ));
        }
    }

    fn rollback(&mut self, r: &RollbackReport) {
        let line = format!(
            "diverged in epoch {} ({} is not finite); rolled back to the end of epoch {} with learning rate {} (rollback {} of {})",
            r.diverged_in, r.what, r.back_to, r.lr, r.rollback, r.max
        );
        match &self.bar {
            Some(bar) => bar.suspend(|| say!("{line}")),
            None => say!("{line}"),
        }
    }

    fn iteration(&mut self, r: &IterationReport) {
        if self.quiet {
            return;
        }
        let val = r.val_perplexity.map(|v| format!(", val perplexity {v:.6}")).unwrap_or_default();
        let text = format!(
            "iter {}, epoch {:.2}, perplexity {:.6}{val}, time {:.2} sec\n",
            r.iteration, r.epoch, r.perplexity, r.seconds
        );
        self.print(&text);
    }

    fn epoch(&mut self, r: &EpochReport) {
        if self.quiet || (r.samples.is_none() && !self.verbose) {
            return;
        }
        let val = r.val_perplexity.map(|v| format!(", val perplexity {v:.6}")).unwrap_or_default();
        let mut text = format!("epoch {}, perplexity {:.6}{val}, time {:.2} sec", r.epoch, r.perplexity, r.seconds);
        if self.verbose {
            let speed = r.chars_per_sec();
            text.push_str(&format!(", lr {}, grad norm {:.6}, {} chars/s", r.lr, r.grad_norm, grouped(speed as u64)));
        }
        text.push('\n');
        // One line per sample: a newline in it is shown as \n.
        for s in r.samples.iter().flatten() {
            text.push_str(&format!(" - {}\n", s.replace('\n', "\\n")));
        }
        self.print(&text);
    }
}

/// After training: warnings, where the kept model is, and the one-line summary (all on stderr).
pub fn train_outcome(outcome: &TrainOutcome, quiet: bool) {
    for w in &outcome.warnings {
        say!("warning: {w}");
    }
    if quiet {
        return;
    }
    if let Some(best) = outcome.best_epoch.filter(|&b| b != outcome.epochs) {
        let last = outcome.out.join(charrnn::store::LAST_DIR);
        say!("kept epoch {best}, the best by validation perplexity; the last epoch's model is in {}", last.display());
    }
    say!(
        "saved model to {} ({} epoch{} on {}, perplexity {:.6})",
        outcome.out.display(),
        outcome.epochs,
        if outcome.epochs == 1 { "" } else { "s" },
        outcome.device,
        outcome.perplexity
    );
}

/// What `prepare` wrote (on stderr).
pub fn prepared(out: &std::path::Path, h: &charrnn::PreparedHeader) {
    say!(
        "prepared {}: {} characters from {} file{}, vocabulary {}, {}-bit tokens, {}",
        out.display(),
        grouped(h.len),
        h.sources.len(),
        if h.sources.len() == 1 { "" } else { "s" },
        grouped(h.vocab.chars().count() as u64),
        8 * h.width,
        h.hash
    );
}

/// `predict`'s samples: one per line, one JSON object per line with `json`, or (`streamed`: the text is
/// already out) the line's end.
pub fn predict_outcome(
    out: &mut impl Write,
    outcome: &PredictOutcome,
    json: bool,
    streamed: bool,
) -> std::io::Result<()> {
    for w in &outcome.warnings {
        say!("warning: {w}");
    }
    let n = outcome.samples.len();
    for (i, s) in outcome.samples.iter().enumerate() {
        // Samples that can span lines get a header each, so that one cannot run into the next.
        if !json && !streamed && n > 1 && outcome.keeps_newlines {
            writeln!(out, "{}", sample_header(i, n))?;
        }
        if json {
            let mut line = serde_json::json!({ "sample": i, "text": s.text, "generated": s.generated, "probs": s.probs, "stopped": s.stopped });
            if let Some(log_prob) = s.log_prob {
                line["log_prob"] = log_prob.into();
            }
            writeln!(out, "{line}")?;
        } else if streamed {
            writeln!(out)?;
        } else {
            writeln!(out, "{}", s.text)?;
        }
    }
    Ok(())
}

/// The line before sample `i` (0-based) of `n` from a model that keeps newlines.
fn sample_header(i: usize, n: usize) -> String {
    format!("=== sample {} of {n} ===", i + 1)
}

/// `eval`'s progress bar, on a terminal only, for texts long enough to need one.
pub struct EvalProgress {
    bar: Option<ProgressBar>,
    tty: bool,
}

impl EvalProgress {
    /// No bar yet: one appears at the first update of a text of more than a million predictions.
    pub fn new() -> Self {
        EvalProgress { bar: None, tty: std::io::stderr().is_terminal() }
    }

    /// `done` of `total` predictions scored.
    pub fn update(&mut self, done: usize, total: usize) {
        if !self.tty || total < 1_000_000 {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(total as u64);
            let style = ProgressStyle::with_template("eval [{elapsed_precise}<{eta_precise}] {wide_bar} {percent}%");
            bar.set_style(style.expect("valid template"));
            bar
        });
        bar.set_position(done as u64);
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `eval`'s report, as text or one JSON object.
pub fn eval_report(out: &mut impl Write, r: &EvalReport, json: bool) -> std::io::Result<()> {
    for note in &r.notes {
        say!("note: {note}");
    }
    if r.skipped.count > 0 {
        say!("warning: skipped {}", r.skipped);
    }
    if json {
        return writeln!(out, "{}", serde_json::to_string(r).expect("the report serialises"));
    }
    let part = if r.held_out { ", its held-out part" } else { "" };
    writeln!(out, "corpus {}{part} ({} characters, read in windows of {})", r.corpus.display(), r.chars, r.context)?;
    writeln!(out, "perplexity {:.6}", r.perplexity)?;
    writeln!(out, "cross-entropy {:.6} nats/char", r.evaluation.cross_entropy)?;
    writeln!(out, "bits per character {:.6}", r.bits_per_char)
}

/// `info --model`: a model folder's summary.
pub fn model_summary(out: &mut impl Write, m: &ModelSummary) -> std::io::Result<()> {
    let (f, c) = (&m.file, &m.file.model);
    let input = if c.arch.embed > 0 { format!("embedding {}", c.arch.embed) } else { "one-hot".into() };
    writeln!(out, "model {}", m.dir.display())?;
    let layers = if c.arch.layers == 1 { "1 layer".to_string() } else { format!("{} layers", c.arch.layers) };
    writeln!(
        out,
        "network {}, {layers} of {} units, {input} input, dropout {}, {} backend",
        c.arch.cell, c.arch.hidden, c.arch.dropout, c.arch.backend
    )?;
    writeln!(out, "parameters {}", grouped(m.parameters))?;
    writeln!(out, "vocabulary {} characters", grouped(c.vocab_size as u64))?;
    writeln!(out, "epochs {} of {}", f.epoch, f.train.epochs)?;
    let t = &f.train;
    writeln!(out, "training {} lr {}, clip {}, {} output layer", t.optimizer, t.lr, t.clip, t.dtype)?;
    if let Some(p) = f.perplexity {
        writeln!(out, "training perplexity {p:.6}")?;
    }
    if let Some(v) = &f.validation {
        let held = grouped(v.chars as u64);
        writeln!(out, "validation perplexity {:.6} (epoch {}, {held} characters held out)", v.perplexity, v.epoch)?;
    }
    let hash = f.corpus.hash.as_deref().unwrap_or("not recorded");
    let sources: Vec<String> = f.corpus.paths().iter().map(|p| p.display().to_string()).collect();
    writeln!(out, "corpus {} ({} characters, {hash})", sources.join(", "), grouped(f.corpus.chars as u64))?;
    writeln!(out, "trained on {} with charrnn {}", f.device, f.charrnn_version)?;
    // The processes of each stretch of training, unless it was all one stretch in one process.
    if f.stretches.len() > 1 || f.stretches.iter().any(|s| s.processes > 1) {
        let stretch = |s: &charrnn::store::Stretch| {
            let n = format!("{} process{}", s.processes, if s.processes == 1 { "" } else { "es" });
            match (s.epoch, s.minibatch) {
                (0, 0) => format!("{n} from the start"),
                (e, 0) => format!("{n} from the end of epoch {e}"),
                (e, m) => format!("{n} from epoch {}, after minibatch {m}", e + 1),
            }
        };
        writeln!(out, "trained by {}", f.stretches.iter().map(stretch).collect::<Vec<_>>().join("; "))?;
    }
    if let Some(o) = &f.init_from {
        let added = c.vocab_size.saturating_sub(o.vocab_size);
        writeln!(
            out,
            "started from {} (epoch {}, weights {}), {added} characters added to its {}",
            o.model.display(),
            o.epoch,
            o.weights,
            o.vocab_size
        )?;
    }
    if let Some((dir, position)) = &m.resumable {
        let at = describe_position(position.epoch + 1, position.minibatch, f.minibatches_per_epoch());
        writeln!(out, "resumable at {at}: charrnn train --resume {}", dir.display())?;
    }
    Ok(())
}

/// `info`: versions, CUDA and the CPU threads.
pub fn system_info(out: &mut impl Write, i: &Info) -> std::io::Result<()> {
    let cuda = match i.cuda.missing_reason() {
        None if i.cuda.gpu_names.is_empty() => format!("available ({} device(s))", i.cuda.devices),
        None => format!("available ({} device(s): {})", i.cuda.devices, i.cuda.gpu_names.join(", ")),
        Some(why) => format!("not available: {why}"),
    };
    writeln!(out, "charrnn {}", i.charrnn)?;
    writeln!(out, "libtorch {}", i.libtorch)?;
    writeln!(out, "cuda {cuda}")?;
    writeln!(out, "cudnn {}", if i.cudnn { "available" } else { "not available" })?;
    if let Some(major) = i.cuda_capability {
        let bf16 = if major >= 8 { "bf16 native" } else { "no bf16 tensor cores" };
        writeln!(out, "cuda compute capability {major}.x ({bf16})")?;
    }
    writeln!(out, "auto device {}", i.auto_device)?;
    let spin = std::env::var("GOMP_SPINCOUNT").map(|v| format!(", GOMP_SPINCOUNT={v}")).unwrap_or_default();
    let policy = std::env::var("OMP_WAIT_POLICY").map(|v| format!(", OMP_WAIT_POLICY={v}")).unwrap_or_default();
    writeln!(out, "cpu threads {}{spin}{policy}", i.cpu_threads)?;
    let bf16 = match i.cpu_bf16 {
        Some(true) => "native (AVX512-BF16 or AMX-BF16)",
        Some(false) => "emulated (no AVX512-BF16 or AMX-BF16): --dtype bf16 is slow here",
        None => "unknown",
    };
    writeln!(out, "cpu bf16 {bf16}")
}
