//! The arguments of `train`, for a new run and for `--resume`, and their conversion into the library's jobs.
use crate::args::choices::{CellArg, InitArg, OnDivergeArg, OptimizerArg, SamplingArg};
use crate::args::common::{parse_duration, DeviceArgs, ARCH, NEW_RUN};
use crate::args::generate::DrawArgs;
use charrnn::{Arch, Backend, CorpusOptions, Dtype, OptimizerKind, ResumeJob, Selection, TrainConfig, TrainJob};
use clap::Args;
use std::path::PathBuf;

fn textbook() -> TrainConfig {
    TrainConfig::default()
}

/// `charrnn train`: the flags that a resumed run accepts are the plain fields of this struct; every flag that
/// describes a new run lives in [`NewRunArgs`], [`ArchArgs`] or [`DrawArgs`], whose groups `--resume`
/// conflicts with as a whole, so a flag added there can never be silently ignored by a resumed run. (clap
/// gives no group to a struct with a flattened struct inside, hence groups side by side.)
#[derive(Args)]
pub struct TrainArgs {
    /// UTF-8 text to train on: a file, or a folder (every file below it, in sorted order, hidden ones
    /// skipped), or a token file from `charrnn prepare`; repeat to read several in order as one text (with
    /// --resume: only if they moved; it must be the same text).
    #[arg(long, value_name = "PATH", required_unless_present = "resume")]
    pub corpus: Vec<PathBuf>,
    /// Continue the run saved in this model folder exactly where it stopped, with its settings; only
    /// --epochs (the new total), --checkpoint-every, --max-iters, --time-limit, --lr, --lr-decay,
    /// --lr-decay-every, --prefix, --pred-period, --eval-every, --val-chars, --corpus, --device, --threads,
    /// --quiet and --verbose may be given with it.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    #[arg(long, value_name = "N", help = epochs_help())]
    pub epochs: Option<usize>,
    /// Save a checkpoint every N epochs (always after the last, and on Ctrl-C) [default: after each
    /// minibatch that ends a minute or more after the previous checkpoint, so long epochs are saved as they
    /// go].
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<usize>,
    /// Stop after N minibatches in all (a resumed run's earlier ones count), saving a resumable checkpoint.
    #[arg(long, value_name = "N")]
    pub max_iters: Option<u64>,
    /// Stop after the minibatch that ends this long after the start (90s, 4min, 1h30m, 2h, 1d), saving a
    /// resumable checkpoint.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub time_limit: Option<std::time::Duration>,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Print nothing but warnings and errors (no configuration line, reports, bar or summary).
    #[arg(long, short, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print a report line every epoch, with the learning rate, gradient norm and speed.
    #[arg(long, short)]
    pub verbose: bool,
    #[command(flatten)]
    pub adjust: AdjustableArgs,
    #[command(flatten)]
    pub new: NewRunArgs,
    #[command(flatten)]
    pub arch: ArchArgs,
    /// How the reports' predictions choose characters (seeded by --seed and the epoch); part of a new run.
    #[command(flatten)]
    pub draw: DrawArgs,
}

/// Settings of a run that `--resume` may change: the learning-rate schedule and the reports. A new rate
/// makes the continuation differ from an uninterrupted run (and `train` says so); the others do not.
#[derive(Args)]
pub struct AdjustableArgs {
    #[arg(long, allow_negative_numbers = true, help = lr_help())]
    pub lr: Option<f64>,
    #[arg(long, value_name = "F", allow_negative_numbers = true, help = format!(
        "Multiply the learning rate by F every --lr-decay-every epochs (1 = no decay) [default: {}]",
        textbook().lr_decay.factor
    ))]
    pub lr_decay: Option<f64>,
    #[arg(long, value_name = "N", help = format!("Epochs between learning-rate decays [default: {}]", textbook().lr_decay.every))]
    pub lr_decay_every: Option<usize>,
    #[arg(long = "prefix", value_name = "P", help = prefix_help(), allow_hyphen_values = true)]
    pub prefixes: Vec<String>,
    #[arg(long, value_name = "N", help = format!("Epochs between reports [default: {}]", textbook().pred_period))]
    pub pred_period: Option<usize>,
    /// Also every N minibatches inside an epoch: score the held-out text, print a report line (iter,
    /// epoch fraction, perplexity since the last one, val perplexity, time) and keep the best model.
    #[arg(long, value_name = "N")]
    pub eval_every: Option<usize>,
    /// Score at most N held-out characters per evaluation, in pieces spread over the held-out part (keeps
    /// validation cheap on a big corpus) [default: all of it].
    #[arg(long, value_name = "N")]
    pub val_chars: Option<usize>,
}

/// `--backend`: how the recurrence is computed, or `auto` to choose by cell and device
/// ([`charrnn::Backend::fastest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    /// The faster for the cell and device: fused on a GPU; on a CPU scratch, but fused for an LSTM with
    /// dropout.
    Auto,
    /// The cells written out in tensor operations (the textbook's).
    Scratch,
    /// libtorch's fused RNN/GRU/LSTM kernels (oneDNN on a CPU, cuDNN on a GPU).
    Fused,
}

/// `--dtype`: a precision, or `auto` to choose it from the device ([`charrnn::TrainJob::auto_dtype`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    /// Float32 throughout (the textbook's).
    Fp32,
    /// bfloat16 operands, float32 results, for the output layer's products.
    Bf16,
    /// bf16 where the device multiplies bfloat16 natively, else fp32.
    Auto,
}

/// The flags that describe a new run (refused with `--resume`, which keeps the run's own).
#[derive(Args)]
#[group(id = NEW_RUN, multiple = true)]
pub struct NewRunArgs {
    /// Model folder to write [default: runs/<corpus file stem>]; one that holds anything is refused
    /// without --force.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Replace what --out holds: the old model stays until this run's first checkpoint replaces it, and
    /// only files that charrnn wrote are removed.
    #[arg(long)]
    pub force: bool,
    /// A throwaway run: leave runs/last-model (the model predict, eval and serve take without --model) as it
    /// is. A run whose --out lies outside runs/ never moves it.
    #[arg(long)]
    pub no_record: bool,
    /// Start from this trained model folder: its architecture, weights and vocabulary, followed by the
    /// corpus's new characters (in ascending order, initialised as a fresh model's); a fresh optimizer, and
    /// this run's other settings. --out may be the same folder.
    #[arg(long, value_name = "DIR")]
    pub init_from: Option<PathBuf>,
    /// Dropout probability between layers and before the output layer (training only).
    #[arg(long, default_value_t = textbook().arch.dropout, value_name = "P", allow_negative_numbers = true)]
    pub dropout: f64,
    /// Recurrence: scratch (the cells written out, step by step), fused (libtorch's RNN/GRU/LSTM kernels;
    /// oneDNN on a CPU, cuDNN on a GPU), or auto (fused for an LSTM on a CPU, where it is about 2.5x as
    /// fast, scratch otherwise). Same parameters, same results.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
    /// Time steps per sequence (BPTT length).
    #[arg(long, default_value_t = textbook().steps)]
    pub steps: usize,
    /// Sequences per minibatch.
    #[arg(long, default_value_t = textbook().batch_size)]
    pub batch: usize,
    /// Update rule: sgd (the textbook's) or adam.
    #[arg(long, value_enum, default_value_t = textbook().optimizer.into())]
    pub optimizer: OptimizerArg,
    /// Gradient clipping threshold on the global L2 norm.
    #[arg(long, default_value_t = textbook().clip, allow_negative_numbers = true)]
    pub clip: f64,
    /// Precision of the output layer's matrix products: fp32, bf16 (bfloat16 operands, float32
    /// accumulation: faster where the CPU has AMX or AVX512-BF16, and on GPUs of compute capability 8.0 or
    /// newer; much slower on CPUs without), or auto (bf16 where the device has it natively, else fp32).
    #[arg(long, value_enum, default_value_t = DtypeArg::Fp32)]
    pub dtype: DtypeArg,
    /// Minibatch sampler: random (fresh state per minibatch) or consecutive (state carried, detached).
    #[arg(long, value_enum, default_value_t = textbook().batch_order.into())]
    pub sampling: SamplingArg,
    /// Seed for initialisation and shuffling.
    #[arg(long, default_value_t = textbook().seed)]
    pub seed: u64,
    /// Use only the first N characters of the corpus.
    #[arg(long, value_name = "N")]
    pub limit_chars: Option<usize>,
    /// Keep newlines (by default each newline and carriage return becomes a space).
    #[arg(long)]
    pub keep_newlines: bool,
    /// Read only the files of a folder corpus that match GLOB (their path below the folder, or name:
    /// '*.rs', 'src/**', '*.{md,txt}'); repeat for several.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave out the files of a folder corpus that match GLOB (as --include); repeat for several.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    #[arg(long, value_name = "F", allow_negative_numbers = true, help = val_frac_help())]
    pub val_frac: Option<f64>,
    /// When the loss or gradient norm stops being finite: stop (keeping the last checkpoint), or rollback
    /// (go back to the last good epoch with a lower learning rate and carry on).
    #[arg(long, value_enum, default_value_t = textbook().on_diverge.into())]
    pub on_diverge: OnDivergeArg,
    /// With --on-diverge rollback: multiply the learning rate by F at each rollback, 0 < F < 1.
    #[arg(long, value_name = "F", default_value_t = textbook().rollback_lr_factor, allow_negative_numbers = true)]
    pub rollback_lr_factor: f64,
    /// With --on-diverge rollback: stop as without it after N rollbacks.
    #[arg(long, value_name = "N", default_value_t = textbook().max_rollbacks)]
    pub max_rollbacks: usize,
    /// Characters predicted per prefix in reports.
    #[arg(long, default_value_t = textbook().pred_len)]
    pub pred_len: usize,
}

/// The network's shape: refused with `--resume` and with `--init-from`, which take the model's.
#[derive(Args)]
#[group(id = ARCH, multiple = true)]
pub struct ArchArgs {
    /// Hidden units.
    #[arg(long, default_value_t = textbook().arch.hidden)]
    pub hidden: usize,
    /// Recurrent cell: rnn (the textbook's tanh RNN), gru or lstm.
    #[arg(long, value_enum, default_value_t = textbook().arch.cell.into())]
    pub cell: CellArg,
    /// Stacked recurrent layers.
    #[arg(long, default_value_t = textbook().arch.layers)]
    pub layers: usize,
    /// Learned embedding of this width instead of one-hot input (0 = one-hot).
    #[arg(long, default_value_t = textbook().arch.embed, value_name = "DIM")]
    pub embed: usize,
    #[arg(long, value_enum, help = init_help())]
    pub init: Option<InitArg>,
}

fn epochs_help() -> String {
    format!(
        "Passes over the corpus, in all (a resumed run's earlier epochs count) [default: {}; a resumed run keeps \
         its own]",
        textbook().epochs
    )
}

fn init_help() -> String {
    let (sgd, adam) = (OptimizerKind::Sgd, OptimizerKind::Adam);
    format!(
        "Initialisation: normal (the textbook's N(0, 0.01) weights, zero biases) or uniform (PyTorch's \
         U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias) [default: {} with {sgd}, {} with {adam}]",
        sgd.default_init(),
        adam.default_init()
    )
}

fn lr_help() -> String {
    let (sgd, adam) = (OptimizerKind::Sgd, OptimizerKind::Adam);
    format!("Learning rate [default: {} for {sgd}, {} for {adam}]", sgd.default_lr(), adam.default_lr())
}

fn prefix_help() -> String {
    let quoted: Vec<String> = textbook().prefixes;
    format!(
        "Prefix to predict from at every report; repeat for several [default: {} when the corpus has them, else \
         its first character]",
        quoted.join(" and ")
    )
}

fn val_frac_help() -> String {
    format!(
        "Hold out this fraction of the corpus (its end) for validation; the best epoch by validation perplexity is \
         kept [default: {} from {} characters on, else 0]",
        charrnn::DEFAULT_VAL_FRAC,
        charrnn::DEFAULT_VAL_MIN_CHARS
    )
}

/// What `charrnn train` was asked to do.
pub enum TrainTask {
    /// A new run.
    New(Box<TrainJob>),
    /// Continue a saved run.
    Resume(Box<ResumeJob>),
}

impl TrainArgs {
    /// The job these flags describe (clap has already refused new-run flags with `--resume`); `Err`: the
    /// usage error of a sampling flag that would have no effect.
    pub fn into_task(self) -> Result<TrainTask, String> {
        let (device, threads) = (self.device.device, self.device.threads);
        if let Some(dir) = self.resume {
            let epochs = self.epochs;
            let (checkpoint_every, corpus) = (self.checkpoint_every, self.corpus);
            let (max_iters, time_limit) = (self.max_iters, self.time_limit);
            let a = self.adjust;
            return Ok(TrainTask::Resume(Box::new(ResumeJob {
                lr: a.lr,
                lr_decay: a.lr_decay,
                lr_decay_every: a.lr_decay_every,
                prefixes: a.prefixes,
                pred_period: a.pred_period,
                eval_every: a.eval_every,
                val_chars: a.val_chars,
                dir,
                epochs,
                checkpoint_every,
                corpus,
                device,
                threads,
                max_iters,
                time_limit,
            })));
        }
        let (n, a) = (self.new, self.arch);
        let optimizer: OptimizerKind = n.optimizer.into();
        let corpus = self.corpus;
        Ok(TrainTask::New(Box::new(TrainJob {
            corpus,
            corpus_options: CorpusOptions { keep_newlines: n.keep_newlines, limit_chars: n.limit_chars },
            select: Selection { include: n.include, exclude: n.exclude },
            out: n.out,
            force: n.force,
            no_record: n.no_record,
            init_from: n.init_from,
            device,
            threads,
            auto_dtype: n.dtype == DtypeArg::Auto,
            auto_backend: n.backend == BackendArg::Auto,
            config: TrainConfig {
                arch: Arch {
                    hidden: a.hidden,
                    cell: a.cell.into(),
                    layers: a.layers,
                    embed: a.embed,
                    dropout: n.dropout,
                    init: a.init.map_or(optimizer.default_init(), Into::into),
                    backend: match n.backend {
                        BackendArg::Fused => Backend::Fused,
                        BackendArg::Scratch | BackendArg::Auto => Backend::Scratch,
                    },
                },
                steps: n.steps,
                batch_size: n.batch,
                optimizer,
                lr: self.adjust.lr.unwrap_or(optimizer.default_lr()),
                lr_decay: textbook().lr_decay.with(self.adjust.lr_decay, self.adjust.lr_decay_every),
                clip: n.clip,
                dtype: if n.dtype == DtypeArg::Bf16 { Dtype::Bf16 } else { Dtype::Fp32 },
                epochs: self.epochs.unwrap_or(textbook().epochs),
                batch_order: n.sampling.into(),
                seed: n.seed,
                prefixes: self.adjust.prefixes,
                val_frac: n.val_frac,
                pred_period: self.adjust.pred_period.unwrap_or(textbook().pred_period),
                pred_len: n.pred_len,
                sampler: self.draw.sampler(n.seed, 1)?,
                checkpoint_every: self.checkpoint_every,
                max_iters: self.max_iters,
                time_limit: self.time_limit,
                eval_every: self.adjust.eval_every,
                val_chars: self.adjust.val_chars,
                on_diverge: n.on_diverge.into(),
                rollback_lr_factor: n.rollback_lr_factor,
                max_rollbacks: n.max_rollbacks,
                ..textbook()
            },
        })))
    }
}
