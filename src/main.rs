//! The `charrnn` command: parses arguments, calls the library, renders progress and maps errors to exit codes.
use anyhow::Context;
use charrnn::{
    Backend, Cell, CorpusOptions, DeviceSpec, EpochReport, EvalJob, Generate, Init, LrDecay, OptimizerKind, Precision,
    PredictJob, Progress, ResumeJob, Sampler, Sampling, TrainConfig, TrainJob, TrainObserver, UnknownChars,
};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const EXAMPLES: &str = "\
Examples:
  charrnn train --corpus data/yuanqu.txt --limit-chars 10000
  charrnn predict --prefix 分开 --num-chars 10
  charrnn eval --json
  charrnn info
  charrnn plot --model runs/yuanqu
  charrnn completions bash";

/// Character-level RNN trainer and sampler (the textbook char-RNN on libtorch).
#[derive(Parser)]
#[command(name = "charrnn", version, after_help = EXAMPLES, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model on a text file and save it.
    #[command(after_help = "Examples:
  charrnn train --corpus data/yuanqu.txt --limit-chars 10000
  charrnn train --corpus lyrics.txt --sampling consecutive --epochs 100 --prefix 分开 --prefix 不分开
  charrnn train --corpus lyrics.txt --cell lstm --layers 2 --embed 64 --dropout 0.2 --hidden 128
  charrnn train --corpus lyrics.txt --cell gru --optimizer adam --lr-decay 0.5 --lr-decay-every 10
  charrnn train --corpus lyrics.txt --cell lstm --backend fused --val-frac 0.1
  charrnn train --corpus notes.txt --keep-newlines --hidden 128 --out runs/notes --device cpu --threads 2
  charrnn train --corpus big.txt --cell lstm --optimizer adam --epochs 50 --checkpoint-every 5
  charrnn train --resume runs/big --epochs 80

Ctrl-C (or SIGTERM) finishes the current minibatch, saves a resumable checkpoint and exits with status 130
(143); a second Ctrl-C exits at once, leaving the last complete checkpoint.")]
    Train(TrainArgs),
    /// Generate text after a prefix: greedily, or sampled with a temperature, top-k and top-p.
    #[command(after_help = "Examples:
  charrnn predict --prefix 分开 --num-chars 10
  charrnn predict --model runs/yuanqu --prefix 不分开 --num-chars 50
  charrnn predict --prefix 分开 --num-chars 100 --temperature 0.8 --top-k 40 --seed 7 --samples 5
  charrnn predict --prefix 分开 --num-chars 2000 --temperature 1 --top-p 0.9 --stream --stop 。
  charrnn predict --prefix 分开x --num-chars 20 --unknown skip --json")]
    Predict(PredictArgs),
    /// Measure a model's perplexity on a text.
    #[command(after_help = "Examples:
  charrnn eval
  charrnn eval --model runs/yuanqu --corpus other.txt --limit-chars 5000 --json
  charrnn eval --stream")]
    Eval(EvalArgs),
    /// Show versions, CUDA and cuDNN availability, the device `auto` picks and CPU threads; or summarise a
    /// model.
    #[command(after_help = "Examples:\n  charrnn info\n  charrnn info --model runs/yuanqu")]
    Info(InfoArgs),
    /// Chart training and validation perplexity per epoch of one or more runs (SVG, log scale).
    #[command(
        after_help = "Examples:\n  charrnn plot --model runs/yuanqu\n  charrnn plot --model runs/rnn --model runs/gru --out cells.svg"
    )]
    Plot(PlotArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  charrnn completions bash > ~/.local/share/bash-completion/completions/charrnn\n  charrnn completions zsh > ~/.zfunc/_charrnn\n  charrnn completions fish > ~/.config/fish/completions/charrnn.fish"
    )]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Args)]
struct InfoArgs {
    /// Summarise this model folder instead (cell, sizes, parameters, vocabulary, epochs, perplexities, corpus).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
}

#[derive(Args)]
struct PlotArgs {
    /// A model folder whose metrics.jsonl to draw; repeat for several runs on one chart.
    #[arg(long, value_name = "DIR", required = true)]
    model: Vec<PathBuf>,
    /// The SVG file to write.
    #[arg(long, value_name = "FILE", default_value = "perplexity.svg")]
    out: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum CellArg {
    Rnn,
    Gru,
    Lstm,
}

#[derive(Clone, Copy, ValueEnum)]
enum InitArg {
    Normal,
    Uniform,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Scratch,
    Fused,
}

#[derive(Clone, Copy, ValueEnum)]
enum OptimizerArg {
    Sgd,
    Adam,
}

#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    Fp32,
    Bf16,
}

#[derive(Clone, Copy, ValueEnum)]
enum SamplingArg {
    Random,
    Consecutive,
}

#[derive(Args)]
struct TrainArgs {
    /// UTF-8 text to train on (with --resume: only if it moved; it must be the same text).
    #[arg(long, value_name = "FILE", required_unless_present = "resume")]
    corpus: Option<PathBuf>,
    /// Continue the run saved in this model folder exactly where it stopped (its settings are kept; only
    /// --epochs, the new total, --checkpoint-every, --corpus, --device and --threads may be given).
    #[arg(long, value_name = "DIR", conflicts_with_all = [
        "out", "hidden", "cell", "layers", "embed", "dropout", "init", "backend", "steps", "batch", "optimizer", "lr",
        "lr_decay", "lr_decay_every", "clip", "dtype", "sampling", "seed", "limit_chars", "keep_newlines", "prefixes", "val_frac",
        "pred_period", "pred_len", "temperature", "top_k", "top_p",
    ])]
    resume: Option<PathBuf>,
    /// Save a checkpoint every N epochs (always after the last, and on Ctrl-C) [default: at the end of
    /// each epoch that ends a minute or more after the previous checkpoint].
    #[arg(long, value_name = "N")]
    checkpoint_every: Option<usize>,
    /// Model folder to write [default: runs/<corpus file stem>].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Hidden units.
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// Recurrent cell: rnn (the textbook's tanh RNN), gru or lstm.
    #[arg(long, value_enum, default_value = "rnn")]
    cell: CellArg,
    /// Stacked recurrent layers.
    #[arg(long, default_value_t = 1)]
    layers: usize,
    /// Learned embedding of this width instead of one-hot input (0 = one-hot).
    #[arg(long, default_value_t = 0, value_name = "DIM")]
    embed: usize,
    /// Dropout probability between layers and before the output layer (training only).
    #[arg(long, default_value_t = 0.0, value_name = "P", allow_negative_numbers = true)]
    dropout: f64,
    /// Initialisation: normal (the textbook's N(0, 0.01) weights, zero biases) or uniform (PyTorch's
    /// U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias) [default: normal with sgd, uniform with adam].
    #[arg(long, value_enum)]
    init: Option<InitArg>,
    /// Recurrence: scratch (the cells written out, step by step) or fused (libtorch's RNN/GRU/LSTM kernels;
    /// cuDNN on a GPU). Same parameters, same results.
    #[arg(long, value_enum, default_value = "scratch")]
    backend: BackendArg,
    /// Time steps per sequence (BPTT length).
    #[arg(long, default_value_t = 35)]
    steps: usize,
    /// Sequences per minibatch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Update rule: sgd (the textbook's) or adam.
    #[arg(long, value_enum, default_value = "sgd")]
    optimizer: OptimizerArg,
    /// Learning rate [default: 100 for sgd, 0.002 for adam].
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// Multiply the learning rate by F every --lr-decay-every epochs (1 = no decay).
    #[arg(long, default_value_t = 1.0, value_name = "F", allow_negative_numbers = true)]
    lr_decay: f64,
    /// Epochs between learning-rate decays.
    #[arg(long, default_value_t = 1, value_name = "N")]
    lr_decay_every: usize,
    /// Gradient clipping threshold on the global L2 norm.
    #[arg(long, default_value_t = 0.01, allow_negative_numbers = true)]
    clip: f64,
    /// Precision of the output layer's matrix products: fp32, or bf16 (bfloat16 operands, float32
    /// accumulation: several times the matrix-product rate on CPUs with AMX or AVX512-BF16, and on GPUs).
    #[arg(long, value_enum, default_value = "fp32")]
    dtype: DtypeArg,
    /// Passes over the corpus, in all (a resumed run's earlier epochs count) [default: 250].
    #[arg(long)]
    epochs: Option<usize>,
    /// Minibatch sampler: random (fresh state per minibatch) or consecutive (state carried, detached).
    #[arg(long, value_enum, default_value = "random")]
    sampling: SamplingArg,
    /// Seed for initialisation and shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use only the first N characters of the corpus.
    #[arg(long, value_name = "N")]
    limit_chars: Option<usize>,
    /// Keep newlines (by default each newline and carriage return becomes a space).
    #[arg(long)]
    keep_newlines: bool,
    /// Prefix to predict from at every report; repeat for several [default: 分开 and 不分开 when the corpus
    /// has them, else its first character].
    #[arg(long = "prefix", value_name = "P")]
    prefixes: Vec<String>,
    /// Hold out this fraction of the corpus (its end) for validation; the best epoch by validation
    /// perplexity is kept [default: 0.1 from 20,000 characters on, else 0].
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    val_frac: Option<f64>,
    /// Epochs between reports.
    #[arg(long, default_value_t = 50)]
    pred_period: usize,
    /// Characters predicted per prefix in reports.
    #[arg(long, default_value_t = 50)]
    pred_len: usize,
    /// How the reports' predictions choose characters (seeded by --seed and the epoch).
    #[command(flatten)]
    draw: SamplingArgs,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_name = "D")]
    device: DeviceSpec,
    /// CPU threads for libtorch [default: one per core].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Print nothing but warnings and errors (no configuration line, reports, bar or summary).
    #[arg(long, short, conflicts_with = "verbose")]
    quiet: bool,
    /// Print a report line every epoch, with the learning rate, gradient norm and speed.
    #[arg(long, short)]
    verbose: bool,
}

/// How generated characters are chosen (shared by `predict` and the reports of `train`).
#[derive(Args)]
struct SamplingArgs {
    /// Softmax temperature: 0 takes the most likely character (greedy), 1 samples from the model, more
    /// flattens its distribution.
    #[arg(long, default_value_t = 0.0, value_name = "T", allow_negative_numbers = true)]
    temperature: f64,
    /// Sample only among the K most likely characters (0 = no limit).
    #[arg(long, default_value_t = 0, value_name = "K")]
    top_k: usize,
    /// Sample only among the fewest most likely characters whose probabilities reach P (1 = no limit).
    #[arg(long, default_value_t = 1.0, value_name = "P", allow_negative_numbers = true)]
    top_p: f64,
}

impl SamplingArgs {
    fn sampler(&self, seed: u64) -> Sampler {
        Sampler { temperature: self.temperature, top_k: self.top_k, top_p: self.top_p, seed }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum UnknownArg {
    Error,
    Skip,
}

#[derive(Args)]
struct PredictArgs {
    /// Model folder [default: the last model `train` wrote from this folder].
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Text to continue.
    #[arg(long, value_name = "P")]
    prefix: String,
    /// Characters to generate after the prefix.
    #[arg(long, value_name = "N")]
    num_chars: usize,
    #[command(flatten)]
    draw: SamplingArgs,
    /// Seed of the draws (sample i uses seed + i); the same seed, model and flags give the same text.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Independent samples, generated together as one batch and printed one per line.
    #[arg(long, default_value_t = 1, value_name = "N")]
    samples: usize,
    /// Write characters as they are produced (one sample).
    #[arg(long, conflicts_with = "json")]
    stream: bool,
    /// End a sample when it produces this string (kept in the text).
    #[arg(long, value_name = "S")]
    stop: Option<String>,
    /// Print one JSON object per sample: the text and each generated character's probability.
    #[arg(long)]
    json: bool,
    /// Prefix characters not in the model's vocabulary: error (name them) or skip (drop them, with a
    /// warning).
    #[arg(long, value_enum, default_value = "error")]
    unknown: UnknownArg,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_name = "D")]
    device: DeviceSpec,
    /// CPU threads for libtorch [default: one per core].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

#[derive(Args)]
struct EvalArgs {
    /// Model folder [default: the last model `train` wrote from this folder].
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Text to evaluate on [default: the training corpus, read with the training settings].
    #[arg(long, value_name = "FILE")]
    corpus: Option<PathBuf>,
    /// Use only the first N characters.
    #[arg(long, value_name = "N")]
    limit_chars: Option<usize>,
    /// Read the text as one stream; by default it is read in windows of the context the model was trained
    /// with (--steps for random sampling, a whole row for consecutive), each from a zero state.
    #[arg(long)]
    stream: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_name = "D")]
    device: DeviceSpec,
    /// CPU threads for libtorch [default: one per core].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

impl TrainArgs {
    fn into_resume_job(self, dir: PathBuf) -> ResumeJob {
        ResumeJob {
            dir,
            epochs: self.epochs,
            checkpoint_every: self.checkpoint_every,
            corpus: self.corpus,
            device: self.device,
            threads: self.threads,
        }
    }

    fn into_job(self, corpus: PathBuf) -> TrainJob {
        let sampling = match self.sampling {
            SamplingArg::Random => Sampling::Random,
            SamplingArg::Consecutive => Sampling::Consecutive,
        };
        let optimizer = match self.optimizer {
            OptimizerArg::Sgd => OptimizerKind::Sgd,
            OptimizerArg::Adam => OptimizerKind::Adam,
        };
        TrainJob {
            corpus,
            corpus_options: CorpusOptions { keep_newlines: self.keep_newlines, limit_chars: self.limit_chars },
            out: self.out,
            device: self.device,
            threads: self.threads,
            config: TrainConfig {
                hidden: self.hidden,
                cell: match self.cell {
                    CellArg::Rnn => Cell::Rnn,
                    CellArg::Gru => Cell::Gru,
                    CellArg::Lstm => Cell::Lstm,
                },
                layers: self.layers,
                embed: self.embed,
                dropout: self.dropout,
                init: match self.init {
                    Some(InitArg::Normal) => Init::Normal,
                    Some(InitArg::Uniform) => Init::Uniform,
                    None => optimizer.default_init(),
                },
                backend: match self.backend {
                    BackendArg::Scratch => Backend::Scratch,
                    BackendArg::Fused => Backend::Fused,
                },
                steps: self.steps,
                batch: self.batch,
                optimizer,
                lr: self.lr.unwrap_or(optimizer.default_lr()),
                lr_decay: LrDecay { factor: self.lr_decay, every: self.lr_decay_every },
                clip: self.clip,
                precision: match self.dtype {
                    DtypeArg::Fp32 => Precision::Fp32,
                    DtypeArg::Bf16 => Precision::Bf16,
                },
                epochs: self.epochs.unwrap_or(TrainConfig::default().epochs),
                sampling,
                seed: self.seed,
                prefixes: self.prefixes,
                val_frac: self.val_frac,
                pred_period: self.pred_period,
                pred_len: self.pred_len,
                sampler: self.draw.sampler(self.seed),
                checkpoint_every: self.checkpoint_every,
            },
        }
    }
}

/// Prints the textbook's report lines to stdout and, on a terminal, a progress bar on stderr; passes on
/// the signal that asked training to stop.
struct Reporter {
    /// Whether stderr is a terminal (else no bar is drawn).
    tty: bool,
    bar: Option<ProgressBar>,
    last_draw: Instant,
    write_error: Option<std::io::Error>,
    /// The number of the first SIGINT or SIGTERM received (0: none).
    signal: Arc<AtomicUsize>,
    quiet: bool,
    verbose: bool,
    /// Characters per minibatch (for the bar's speed).
    chars_per_batch: usize,
    /// When the bar started, and its position then.
    bar_start: (Instant, u64),
}

impl Reporter {
    fn new(signal: Arc<AtomicUsize>, quiet: bool, verbose: bool) -> Self {
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
            bar_start: (Instant::now(), 0),
        }
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

/// `n` with thousands separators: 1234567 -> "1,234,567".
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The one line `train` prints before it starts: device, data, network, schedule.
fn describe_run(i: &charrnn::RunInfo) -> String {
    let c = &i.config;
    let input = if i.model.embed > 0 { format!("embedding {}", i.model.embed) } else { "one-hot".into() };
    let dropout = if i.model.dropout > 0.0 { format!(", dropout {}", i.model.dropout) } else { String::new() };
    let resumed = i.resumed_at.map(|(e, b)| {
        format!(", resuming after epoch {e}{}", if b > 0 { format!(" minibatch {b}") } else { String::new() })
    });
    let precision =
        if c.precision == Precision::Fp32 { String::new() } else { format!(", {} output layer", c.precision.name()) };
    format!(
        "training on {}: corpus {} characters ({} trained, {} held out), vocabulary {}; {} {}x{} ({input}{dropout}{precision}), {} parameters; {} minibatches of {}x{} per epoch, {} lr {}, {} epoch{}{}",
        i.device,
        grouped(i.corpus_chars as u64),
        grouped(i.train_chars as u64),
        grouped((i.corpus_chars - i.train_chars) as u64),
        grouped(i.vocab_size as u64),
        i.model.cell.name(),
        i.model.layers,
        i.model.hidden,
        grouped(i.parameters),
        i.batches,
        c.batch,
        c.steps,
        match c.optimizer {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
        },
        c.lr,
        c.epochs,
        if c.epochs == 1 { "" } else { "s" },
        resumed.unwrap_or_default()
    )
}

impl TrainObserver for Reporter {
    fn begin(&mut self, info: &charrnn::RunInfo) {
        self.chars_per_batch = info.config.batch * info.config.steps;
        if !self.quiet {
            if let Some(bar) = &self.bar {
                bar.suspend(|| eprintln!("{}", describe_run(info)));
            } else {
                eprintln!("{}", describe_run(info));
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
        if !self.tty {
            return;
        }
        let position = ((p.epoch - 1) * p.batches + p.batch) as u64;
        let bar_start = &mut self.bar_start;
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new((p.epochs * p.batches) as u64);
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
        if self.last_draw.elapsed() >= Duration::from_millis(200) || p.batch == p.batches {
            self.last_draw = Instant::now();
            let (since, from) = self.bar_start;
            let speed =
                (position - from) as f64 * self.chars_per_batch as f64 / since.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "epoch {}/{} minibatch {}/{} perplexity {:.3} {} chars/s",
                p.epoch,
                p.epochs,
                p.batch,
                p.batches,
                p.running_perplexity(),
                grouped(speed as u64)
            ));
        }
    }

    fn epoch(&mut self, r: &EpochReport) {
        if self.quiet || (r.samples.is_none() && !self.verbose) {
            return;
        }
        let val = r.val_perplexity.map(|v| format!(", val perplexity {v:.6}")).unwrap_or_default();
        let mut text = format!("epoch {}, perplexity {:.6}{val}, time {:.2} sec", r.epoch, r.perplexity, r.seconds);
        if self.verbose {
            let speed = r.chars as f64 / r.seconds.max(1e-9);
            text.push_str(&format!(", lr {}, grad norm {:.6}, {} chars/s", r.lr, r.grad_norm, grouped(speed as u64)));
        }
        text.push('\n');
        for s in r.samples.iter().flatten() {
            text.push_str(&format!(" - {s}\n"));
        }
        self.print(&text);
    }
}

/// Makes the first SIGINT or SIGTERM a request (recorded in the returned number, which the training loop
/// polls after each minibatch) and a second one an immediate exit with status 128 + signal.
fn catch_stop_signals() -> std::io::Result<Arc<AtomicUsize>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let received = Arc::new(AtomicUsize::new(0));
    let once = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Handlers run in the order registered: the exit checks the flag before this signal sets it.
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&once))?;
        signal_hook::flag::register(sig, Arc::clone(&once))?;
        signal_hook::flag::register_usize(sig, Arc::clone(&received), sig as usize)?;
    }
    Ok(received)
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    let mut reporter =
        Reporter::new(catch_stop_signals().context("cannot install the Ctrl-C handler")?, args.quiet, args.verbose);
    let (outcome, what) = match args.resume.clone() {
        Some(dir) => {
            let what = format!("resuming {} failed", dir.display());
            (charrnn::run_resume(&args.into_resume_job(dir), &mut reporter), what)
        }
        None => {
            let corpus = args.corpus.clone().expect("clap requires --corpus without --resume");
            let what = format!("training on {} failed", corpus.display());
            (charrnn::run_train(&args.into_job(corpus), &mut reporter), what)
        }
    };
    if let Some(bar) = &reporter.bar {
        bar.finish_and_clear();
    }
    let outcome = match outcome {
        Err(e @ charrnn::Error::Interrupted { .. }) => return Err(e.into()),
        other => other.context(what)?,
    };
    if let Some(e) = reporter.write_error {
        return Err(e.into());
    }
    for w in &outcome.warnings {
        eprintln!("warning: {w}");
    }
    if reporter.quiet {
        return Ok(());
    }
    if let Some(best) = outcome.best_epoch.filter(|&b| b != outcome.epochs) {
        eprintln!(
            "kept epoch {best}, the best by validation perplexity; the last epoch's model is in {}",
            outcome.out.join(charrnn::LAST_DIR).display()
        );
    }
    eprintln!(
        "saved model to {} ({} epochs on {}, perplexity {:.6})",
        outcome.out.display(),
        outcome.epochs,
        outcome.device,
        outcome.perplexity
    );
    Ok(())
}

fn plot(args: PlotArgs) -> anyhow::Result<()> {
    charrnn::run_plot(&args.model, &args.out)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn predict(args: PredictArgs) -> anyhow::Result<()> {
    if args.stream && args.samples > 1 {
        let msg = format!("--stream writes a single sample; drop --stream or --samples {}", args.samples);
        Cli::command().error(clap::error::ErrorKind::ArgumentConflict, msg).exit();
    }
    let job = PredictJob {
        model: args.model,
        device: args.device,
        threads: args.threads,
        prefix: args.prefix,
        unknown: match args.unknown {
            UnknownArg::Error => UnknownChars::Error,
            UnknownArg::Skip => UnknownChars::Skip,
        },
        generate: Generate {
            num_chars: args.num_chars,
            samples: args.samples,
            stop: args.stop,
            sampler: args.draw.sampler(args.seed),
            probs: args.json,
        },
    };
    let mut out = std::io::stdout().lock();
    let mut write_error = None;
    let outcome = charrnn::run_predict(&job, &mut |_, c| {
        if args.stream && write_error.is_none() {
            if let Err(e) = write!(out, "{c}").and_then(|_| out.flush()) {
                write_error = Some(e);
            }
        }
    })?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    for w in &outcome.warnings {
        eprintln!("warning: {w}");
    }
    for (i, s) in outcome.samples.iter().enumerate() {
        if args.json {
            let line = serde_json::json!({ "sample": i, "text": s.text, "generated": s.generated, "probs": s.probs, "stopped": s.stopped });
            writeln!(out, "{line}")?;
        } else if args.stream {
            writeln!(out)?;
        } else {
            writeln!(out, "{}", s.text)?;
        }
    }
    Ok(())
}

fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let job = EvalJob {
        model: args.model,
        corpus: args.corpus,
        limit_chars: args.limit_chars,
        device: args.device,
        threads: args.threads,
        stream: args.stream,
    };
    let r = charrnn::run_eval(&job)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&r)?)?;
    } else {
        writeln!(out, "corpus {} ({} characters, read in windows of {})", r.corpus.display(), r.chars, r.context)?;
        writeln!(out, "perplexity {:.6}", r.perplexity)?;
        writeln!(out, "cross-entropy {:.6} nats/char", r.evaluation.cross_entropy)?;
        writeln!(out, "bits per character {:.6}", r.bits_per_char)?;
    }
    Ok(())
}

fn info(args: InfoArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if let Some(dir) = args.model {
        let m = charrnn::model_summary(Some(&dir))?;
        let (f, c) = (&m.file, &m.file.model);
        let input = if c.embed > 0 { format!("embedding {}", c.embed) } else { "one-hot".into() };
        writeln!(out, "model {}", m.dir.display())?;
        let backend = match c.backend {
            Backend::Scratch => "scratch",
            Backend::Fused => "fused",
        };
        let layers = if c.layers == 1 { "1 layer".to_string() } else { format!("{} layers", c.layers) };
        writeln!(
            out,
            "network {}, {layers} of {} units, {input} input, dropout {}, {backend} backend",
            c.cell.name(),
            c.hidden,
            c.dropout
        )?;
        writeln!(out, "parameters {}", grouped(m.parameters))?;
        writeln!(out, "vocabulary {} characters", grouped(c.vocab_size as u64))?;
        writeln!(out, "epochs {} of {}", f.epoch, f.train.epochs)?;
        let t = &f.train;
        let optimizer = match t.optimizer {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
        };
        writeln!(out, "training {optimizer} lr {}, clip {}, {} output layer", t.lr, t.clip, t.precision.name())?;
        if let Some(p) = f.perplexity {
            writeln!(out, "training perplexity {p:.6}")?;
        }
        if let Some(v) = &f.validation {
            writeln!(
                out,
                "validation perplexity {:.6} (epoch {}, {} characters held out)",
                v.perplexity,
                v.epoch,
                grouped(v.chars as u64)
            )?;
        }
        let hash = f.corpus.hash.as_deref().unwrap_or("not recorded");
        writeln!(out, "corpus {} ({} characters, {hash})", f.corpus.path.display(), grouped(f.corpus.chars as u64))?;
        writeln!(out, "trained on {} with charrnn {}", f.device, f.charrnn_version)?;
        if let Some(r) = &f.resume {
            writeln!(out, "resumable at epoch {} minibatch {}", r.position.epoch, r.position.batch)?;
        }
        return Ok(());
    }
    let i = charrnn::info();
    let cuda = match i.cuda.missing_reason() {
        None if i.cuda.gpu_names.is_empty() => format!("available ({} device(s))", i.cuda.devices),
        None => format!("available ({} device(s): {})", i.cuda.devices, i.cuda.gpu_names.join(", ")),
        Some(why) => format!("not available: {why}"),
    };
    writeln!(out, "charrnn {}", i.charrnn)?;
    writeln!(out, "libtorch {}", i.libtorch)?;
    writeln!(out, "cuda {cuda}")?;
    writeln!(out, "cudnn {}", if i.cudnn { "available" } else { "not available" })?;
    writeln!(out, "auto device {}", i.auto_device)?;
    writeln!(out, "cpu threads {}", i.cpu_threads)?;
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

fn main() -> ExitCode {
    // Before libtorch (and MKL in it) starts, and before any other thread.
    charrnn::prepare_process();
    // libtorch failures that tch turns into panics still get one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        eprintln!("error: internal error: {}", msg.lines().next().unwrap_or(msg));
    }));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => train(a),
        Command::Predict(a) => predict(a),
        Command::Eval(a) => eval(a),
        Command::Info(a) => info(a),
        Command::Plot(a) => plot(a),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "charrnn", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(&charrnn::Error::Interrupted { signal, .. }) = e.downcast_ref() {
                eprintln!("stopped: {e}");
                return ExitCode::from((128 + signal).clamp(0, 255) as u8);
            }
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}
