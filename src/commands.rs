//! The `train`, `predict` and `eval` jobs as library calls: read files, build or load the model, run, save.
use crate::checkpoint::{self, CorpusInfo, LoadedModel, ModelFile, ValidationInfo};
use crate::corpus::{CorpusOptions, Vocabulary};
use crate::device::{device_name, set_threads, DeviceSpec};
use crate::error::{Error, Result};
use crate::eval::{evaluate_with_progress, Evaluation};
use crate::lock::FolderLock;
use crate::metrics::{append_metrics, read_metrics, replace_metrics, trim_metrics, MetricsLine};
use crate::model::{Arch, Backend, Dtype, Network};
use crate::optim::LrDecay;
use crate::plot::{write_perplexity_svg, Curve};
use crate::predict::{generate_until, Generate, Generated};
use crate::prepared::{load_corpus, CorpusIds, Skipped};
use crate::resume::TrainState;
use crate::tokens::Tokens;
use crate::train::{
    train, EpochReport, IterationReport, Progress, RollbackReport, RunInfo, SaveReason, TrainConfig, TrainObserver,
};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Everything `charrnn train` needs.
#[derive(Debug, Clone)]
pub struct TrainJob {
    /// The corpus: files and folders (see [`crate::expand_sources`]), read in order as one text, or one
    /// prepared token file.
    pub corpus: Vec<PathBuf>,
    /// How to read it.
    pub corpus_options: CorpusOptions,
    /// Model folder; `None` means `runs/<corpus file stem>`.
    pub out: Option<PathBuf>,
    /// Where to compute.
    pub device: DeviceSpec,
    /// CPU threads for libtorch; `None` keeps its default.
    pub threads: Option<usize>,
    /// Replace what `out` holds (at the first checkpoint; until then the old model stays); without it a
    /// folder that holds anything is refused.
    pub force: bool,
    /// Start from this trained model folder instead of fresh weights: its architecture (cell, sizes,
    /// initialisation; `config.arch`'s dropout and backend are this run's), its weights and its
    /// vocabulary, followed by the corpus's new characters ([`Vocabulary::extended`]), whose rows start as
    /// a fresh model's ([`Network::grown`]). The optimizer starts afresh. Its newline setting applies too.
    pub init_from: Option<PathBuf>,
    /// Choose `config.arch.backend` for the cell (the source model's with `init_from`) and the device
    /// (`--backend auto`): [`Backend::fastest`].
    pub auto_backend: bool,
    /// Choose `config.dtype` from the device (`--dtype auto`): bf16 where it multiplies bfloat16 natively
    /// ([`crate::device::native_bf16`]: AVX512-BF16 or AMX-BF16, compute capability 8.0 or newer), else fp32.
    pub auto_dtype: bool,
    /// Hyperparameters. Empty `prefixes` means: the textbook's ("分开", "不分开") where the corpus has
    /// their characters, else the corpus's first character.
    pub config: TrainConfig,
}

/// What a finished `train` did.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// Where the model was saved.
    pub out: PathBuf,
    /// Epochs trained.
    pub epochs: usize,
    /// Training perplexity of the last epoch.
    pub perplexity: f64,
    /// With validation: the epoch kept as the model (the latest parameters are in `<out>/last`).
    pub best_epoch: Option<usize>,
    /// Device used.
    pub device: String,
    /// Problems that did not stop the run (the model is saved), for the user to see.
    pub warnings: Vec<String>,
}

/// Subfolder of a model folder holding the resumable checkpoint: the latest parameters and the training
/// state.
pub const LAST_DIR: &str = "last";

/// The default model folder for a corpus: `runs/<file stem>`.
pub fn default_out(corpus: &Path) -> PathBuf {
    let stem = corpus.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    Path::new(checkpoint::RUNS_DIR).join(stem)
}

/// The prefixes to report: the textbook's where the vocabulary allows, else the corpus's first character.
fn default_prefixes(vocab: &Vocabulary, ids: Tokens<'_>) -> Vec<String> {
    let textbook: Vec<String> =
        TrainConfig::default().prefixes.into_iter().filter(|p| vocab.encode(p, "the prefix").is_ok()).collect();
    if textbook.is_empty() {
        ids.slice(0, ids.len().min(1)).to_vec().iter().map(|&i| vocab.char(i as usize).to_string()).collect()
    } else {
        textbook
    }
}

/// Everything `charrnn train --resume` needs.
#[derive(Debug, Clone)]
pub struct ResumeJob {
    /// The model folder of the run to continue (its resumable checkpoint is in `<dir>/last`).
    pub dir: PathBuf,
    /// New total of epochs; `None` keeps the run's.
    pub epochs: Option<usize>,
    /// New checkpoint period; `None` keeps the run's.
    pub checkpoint_every: Option<usize>,
    /// The corpus, if it moved; empty reads it from where the run read it. Either way it must be the same
    /// text.
    pub corpus: Vec<PathBuf>,
    /// Where to compute (a run may continue on another device).
    pub device: DeviceSpec,
    /// CPU threads for libtorch; `None` keeps its default.
    pub threads: Option<usize>,
    /// Stop after this many minibatches in all (see [`TrainConfig::max_iters`]).
    pub max_iters: Option<u64>,
    /// Stop after this long (see [`TrainConfig::time_limit`]).
    pub time_limit: Option<std::time::Duration>,
    /// A new learning rate from here on; `None` keeps the run's.
    pub lr: Option<f64>,
    /// A new decay factor and period (either may be `None`: kept); `None` keeps both.
    pub lr_decay: Option<(Option<f64>, Option<usize>)>,
    /// New report prefixes; empty keeps the run's.
    pub prefixes: Vec<String>,
    /// A new report period; `None` keeps the run's.
    pub pred_period: Option<usize>,
}

/// Runs `charrnn train`: checks everything ([`train`] checks the corpus length and prefixes before its
/// first step), trains, and saves checkpoints as it goes (see [`checkpoint`]): the model to use in `out`
/// (the best epoch by validation, else the latest) and the resumable state in `out/last`. Nothing is
/// written before the first checkpoint.
pub fn run_train(job: &TrainJob, observer: &mut dyn TrainObserver) -> Result<TrainOutcome> {
    job.config.validate()?;
    job.corpus_options.validate()?;
    set_threads(job.threads)?;
    let device = job.device.resolve()?;
    let first = job.corpus.first().ok_or_else(|| Error::config("--corpus", "give at least one file or folder"))?;
    let out = job.out.clone().unwrap_or_else(|| default_out(first));
    if out.exists() && !out.is_dir() {
        return Err(Error::config("--out", format!("{} exists and is not a folder", out.display())));
    }
    // Checked under the folder's lock, so that no other run can fill it in between.
    let lock = FolderLock::acquire(&out)?;
    let occupied = std::fs::read_dir(&out).is_ok_and(|mut entries| entries.next().is_some());
    let canonical = |p: &Path| std::fs::canonicalize(p).ok();
    let into_source = job.init_from.as_deref().is_some_and(|src| canonical(src) == canonical(&out));
    if occupied && !job.force && !into_source {
        let reason = format!(
            "{} already holds files; continue its run with `charrnn train --resume {0}`, replace it with --force, or choose another --out",
            out.display()
        );
        return Err(Error::config("--out", reason));
    }
    let source = match &job.init_from {
        Some(dir) => Some((dir, checkpoint::load(dir, device)?)),
        None => None,
    };
    let mut corpus_options = job.corpus_options;
    if let Some((_, src)) = &source {
        corpus_options.keep_newlines |= src.file.corpus.options.keep_newlines;
    }
    let prepared = load_corpus(&job.corpus, &corpus_options)?;
    let mut config = job.config.clone();
    if job.auto_backend {
        let cell = source.as_ref().map_or(config.arch.cell, |(_, src)| src.file.model.arch.cell);
        config.arch.backend = Backend::fastest(cell, device);
    }
    let (hash, options) = (prepared.header.hash.clone(), prepared.header.options);
    config.prefixes = config.prefixes.iter().map(|p| options.read_text(p)).collect();
    let mut notes = Vec::new();
    if let Some(note) = newline_note(&prepared.header) {
        notes.push(note);
    }
    if job.auto_dtype {
        let native = crate::device::native_bf16(device) == Some(true);
        config.dtype = if native { Dtype::Bf16 } else { Dtype::Fp32 };
        let what = if device.is_cuda() { "this GPU" } else { "this CPU" };
        notes.push(match native {
            true => format!("--dtype auto: bf16, as {what} multiplies bfloat16 natively"),
            false => format!("--dtype auto: fp32, as {what} has no native bfloat16 product"),
        });
    }
    let (model, vocab, corpus, init_from) = match source {
        None => {
            let vocab = prepared.vocab.clone();
            let model = Network::new(config.model_config(vocab.len()), config.seed, device)?;
            (model, vocab, CorpusIds::Mapped(prepared), None)
        }
        Some((dir, src)) => {
            let (model, vocab, corpus, origin, note) = start_from(dir, src, prepared, &mut config)?;
            notes.push(note);
            (model, vocab, corpus, Some(origin))
        }
    };
    let ids = corpus.tokens();
    if config.prefixes.is_empty() {
        config.prefixes = default_prefixes(&vocab, ids);
    }
    let val_frac = config.resolved_val_frac(ids.len());
    config.val_frac = Some(val_frac);
    let template = ModelFile {
        format: checkpoint::FORMAT.into(),
        version: checkpoint::version_for(&vocab),
        charrnn_version: env!("CARGO_PKG_VERSION").into(),
        vocab: vocab.chars().iter().collect(),
        model: model.config(),
        train: config,
        corpus: CorpusInfo::record(&job.corpus, options, ids.len(), hash),
        epoch: 0,
        perplexity: None,
        validation: None,
        device: device_name(device),
        weights: String::new(),
        weights_bytes: 0,
        resume: None,
        init_from,
    };
    fit(Fit { out, model, vocab, corpus, template, saved: None, notes, _lock: lock }, None, observer)
}

/// A note for `--dtype bf16` on a device without native bfloat16 products, where it is slow (CPU) or
/// brings nothing (GPU).
fn bf16_note(device: tch::Device) -> Option<String> {
    if crate::device::native_bf16(device) != Some(false) {
        return None;
    }
    Some(match device {
        tch::Device::Cuda(_) => "this GPU (compute capability below 8.0) has no bfloat16 tensor cores: --dtype bf16 brings nothing there; --dtype fp32 is as fast and exact".to_string(),
        _ => "this CPU has no native bfloat16 product (neither AVX512-BF16 nor AMX-BF16), so --dtype bf16 is emulated: about 11x slower than fp32 on an AMD EPYC Zen 3 (20 epochs of the textbook workload: 63.6 s against 5.7 s); use --dtype fp32".to_string(),
    })
}

/// A new run's start from the trained model `src` (read from `dir`): the model's architecture in `config`
/// (but for this run's dropout and backend), its network grown to the vocabulary extended by `prepared`'s
/// new characters, the corpus in that vocabulary, where it started, and a note saying so.
fn start_from(
    dir: &Path,
    src: LoadedModel,
    prepared: crate::prepared::Prepared,
    config: &mut TrainConfig,
) -> Result<(Network, Vocabulary, CorpusIds, checkpoint::Origin, String)> {
    config.arch = Arch { dropout: config.arch.dropout, backend: config.arch.backend, ..src.file.model.arch };
    let vocab = src.vocab.extended(prepared.vocab.chars().iter().copied());
    let model = src.model.grown(config.model_config(vocab.len()), config.seed)?;
    let origin = checkpoint::origin(dir, &src)?;
    let new = &vocab.chars()[src.vocab.len()..];
    let what = match new.len() {
        0 => "the corpus has no characters new to it".to_string(),
        n => format!("{n} characters new to it: {}", crate::error::quote_chars(new)),
    };
    let note = format!("starting from {} ({} epochs); {what}", dir.display(), origin.epoch);
    let corpus = CorpusIds::in_vocab(prepared, &vocab)?;
    Ok((model, vocab, corpus, origin, note))
}

/// A note for a text of many lines read with its line breaks as spaces (the textbook's default, which
/// suits its lyrics but runs verse, dialogue and code together): at least 100 of them, one every 200
/// characters or more often.
fn newline_note(header: &crate::prepared::PreparedHeader) -> Option<String> {
    let breaks = header.line_breaks?;
    if header.options.keep_newlines || breaks < 100 || header.len / breaks > 200 {
        return None;
    }
    Some(format!(
        "the corpus has {breaks} line breaks (one every {} characters), read as spaces as in the textbook; --keep-newlines lets the model learn its lines (verse, speakers, code)",
        header.len / breaks
    ))
}

/// Runs `charrnn train --resume`: reads the run's resumable checkpoint, checks the corpus is the same
/// text, and continues training exactly where the run stood, saving as [`run_train`] does.
pub fn run_resume(job: &ResumeJob, observer: &mut dyn TrainObserver) -> Result<TrainOutcome> {
    set_threads(job.threads)?;
    let device = job.device.resolve()?;
    if !job.dir.is_dir() {
        return Err(Error::bad_model(&job.dir, checkpoint::NO_SUCH_FOLDER));
    }
    let lock = FolderLock::acquire(&job.dir)?;
    let last = job.dir.join(LAST_DIR);
    if !last.join(checkpoint::MODEL_JSON).exists() {
        let why = "no resumable checkpoint in it (expected last/model.json, which training writes beside the model); pass the folder given to --out, or train again: models saved before checkpoints existed can be used but not resumed";
        return Err(Error::bad_model(&job.dir, why));
    }
    let loaded = checkpoint::load(&last, device)?;
    let state = checkpoint::load_state(&last, &loaded)?;
    let file = loaded.file.clone();
    let paths = if job.corpus.is_empty() { file.corpus.paths() } else { job.corpus.clone() };
    let prepared = match load_corpus(&paths, &file.corpus.options) {
        Err(Error::Io { path, reason }) if job.corpus.is_empty() => {
            let reason = format!(
                "the run's corpus {} cannot be read ({}); if it moved, pass --corpus FILE",
                path.display(),
                crate::error::io_reason(&reason)
            );
            return Err(Error::config("--corpus", reason));
        }
        prepared => prepared?,
    };
    let hash = prepared.header.hash.clone();
    if file.corpus.hash.as_deref().is_some_and(|h| h != hash) || prepared.header.len as usize != file.corpus.chars {
        let reason = format!(
            "{} is not the text the run trained on (its length or fingerprint differs); resume needs the same corpus",
            paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
        return Err(Error::config("--corpus", reason));
    }
    let vocab = loaded.vocab.clone();
    let corpus = CorpusIds::in_vocab(prepared, &vocab)?;
    let mut template = file;
    template.corpus = CorpusInfo::record(&paths, template.corpus.options, template.corpus.chars, hash);
    template.device = device_name(device);
    if let Some(epochs) = job.epochs {
        template.train.epochs = epochs;
    }
    if job.checkpoint_every.is_some() {
        template.train.checkpoint_every = job.checkpoint_every;
    }
    (template.train.max_iters, template.train.time_limit) = (job.max_iters, job.time_limit);
    let t = &mut template.train;
    let schedule_before = (t.lr, t.lr_decay);
    t.lr = job.lr.unwrap_or(t.lr);
    if let Some((factor, every)) = job.lr_decay {
        t.lr_decay = LrDecay { factor: factor.unwrap_or(t.lr_decay.factor), every: every.unwrap_or(t.lr_decay.every) };
    }
    if !job.prefixes.is_empty() {
        t.prefixes = job.prefixes.iter().map(|p| template.corpus.options.read_text(p)).collect();
    }
    t.pred_period = job.pred_period.unwrap_or(t.pred_period);
    let mut notes = Vec::new();
    if (t.lr, t.lr_decay) != schedule_before {
        let (from, to) = (
            schedule_before.1.lr_at(schedule_before.0, state.position.epoch + 1),
            t.lr_decay.lr_at(t.lr, state.position.epoch + 1),
        );
        notes.push(format!(
            "the learning rate of epoch {} changes from {from} to {to}: the continuation differs from an uninterrupted run",
            state.position.epoch + 1
        ));
    }
    template.train.validate()?;
    let saved = Some(state.position.epoch);
    trim_metrics(&job.dir, state.position.epoch)?;
    let (out, model) = (job.dir.clone(), loaded.model);
    fit(Fit { out, model, vocab, corpus, template, saved, notes, _lock: lock }, Some(&state), observer)
}

/// A run ready to train: what [`run_train`] and [`run_resume`] prepare.
struct Fit {
    out: PathBuf,
    model: Network,
    vocab: Vocabulary,
    /// The whole text read (training part, then the held-out part).
    corpus: CorpusIds,
    /// Describes the run; epoch, perplexities and files are filled in at each save.
    template: ModelFile,
    /// Epochs of the last complete checkpoint already on disk, if any.
    saved: Option<usize>,
    /// What the user should know before the run starts (a resumed run's changed learning rate).
    notes: Vec<String>,
    /// The model folder, held for this run.
    _lock: FolderLock,
}

fn fit(mut run: Fit, resume: Option<&TrainState>, observer: &mut dyn TrainObserver) -> Result<TrainOutcome> {
    let config = run.template.train.clone();
    if config.dtype == Dtype::Bf16 {
        run.notes.extend(bf16_note(run.model.device()));
    }
    let ids = run.corpus.tokens();
    let val_frac = config.resolved_val_frac(ids.len());
    let n_val = config.held_out(ids.len());
    if val_frac > 0.0 && n_val < 2 {
        return Err(Error::config(
            "--val-frac",
            format!("{val_frac} of {} characters leaves fewer than 2 to validate on", ids.len()),
        ));
    }
    let (train_ids, val_ids) = ids.split_at(ids.len() - n_val);
    let mut saver = Saver {
        inner: observer,
        out: &run.out,
        template: &run.template,
        n_val,
        saved: run.saved,
        best_saved: None,
        recorded: false,
        pending_metrics: Vec::new(),
        notes: &run.notes,
    };
    let result = train(&run.model, &run.vocab, train_ids, val_ids, &config, resume, &mut saver);
    let (saved, recorded) = (saver.saved, saver.recorded);
    let summary = match result {
        Ok(summary) => summary,
        Err(Error::LimitReached { limit, epoch, minibatch, minibatches, .. }) => {
            let saved = saved.map(|_| run.out.clone());
            return Err(Error::LimitReached { limit, epoch, minibatch, minibatches, saved });
        }
        Err(Error::Interrupted { signal, epoch, minibatch, minibatches, .. }) => {
            return Err(Error::Interrupted {
                signal,
                epoch,
                minibatch,
                minibatches,
                saved: saved.map(|_| run.out.clone()),
            });
        }
        Err(Error::Diverged { epoch, what, .. }) => {
            let kept = saved.map(|e| format!("the last good checkpoint ({e} epochs) is kept in {}", run.out.display()));
            return Err(Error::Diverged { epoch, what, kept });
        }
        Err(e) => return Err(e),
    };
    let mut warnings = Vec::new();
    if !recorded {
        warnings.push(format!(
            "could not record {} as the last model; pass --model to predict and eval",
            run.out.display()
        ));
    }
    Ok(TrainOutcome {
        out: run.out.clone(),
        epochs: summary.epochs,
        perplexity: summary.perplexity,
        best_epoch: summary.best.map(|b| b.epoch),
        device: run.template.device.clone(),
        warnings,
    })
}

/// Passes progress on to the user's observer and writes the checkpoints: the model to use in `out` (the
/// best epoch by validation, else the current parameters) and the resumable state in `out/last`.
struct Saver<'a> {
    inner: &'a mut dyn TrainObserver,
    out: &'a Path,
    template: &'a ModelFile,
    n_val: usize,
    /// Epochs of the last complete checkpoint.
    saved: Option<usize>,
    /// The best epoch last written to `out`.
    best_saved: Option<usize>,
    /// Whether `out` is recorded as the last model.
    recorded: bool,
    /// Lines for `metrics.jsonl` of epochs not yet checkpointed.
    pending_metrics: Vec<String>,
    /// Notes for [`RunInfo::notes`].
    notes: &'a [String],
}

/// The chart `train` draws in the model folder when it finishes or is interrupted.
pub const PLOT_FILE: &str = "perplexity.svg";

/// The chart's curve of the run in `dir`, labelled `label`.
fn curve_of(dir: &Path, label: String) -> Result<Curve> {
    let points = read_metrics(dir)?.into_iter().map(|m| (m.epoch, m.train_perplexity, m.val_perplexity)).collect();
    Ok(Curve { label, points })
}

/// Runs `charrnn plot`: the perplexity curves of the runs in `models` as one SVG chart at `out`.
pub fn run_plot(models: &[PathBuf], out: &Path) -> Result<()> {
    if models.is_empty() {
        return Err(Error::config("--model", "give at least one model folder"));
    }
    if !out.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg")) {
        let reason = format!(
            "{} does not end in .svg: plot writes SVG only (open it in a browser, or convert it with a tool such as rsvg-convert)",
            out.display()
        );
        return Err(Error::config("--out", reason));
    }
    let curves = models.iter().map(|m| curve_of(m, m.display().to_string())).collect::<Result<Vec<_>>>()?;
    write_perplexity_svg(&curves, out)
}

impl Saver<'_> {
    fn validation(&self, perplexity: Option<f64>, epoch: usize) -> Option<ValidationInfo> {
        let frac = self.template.train.val_frac.unwrap_or(0.0);
        perplexity.map(|perplexity| ValidationInfo { frac, chars: self.n_val, perplexity, epoch })
    }
}

impl TrainObserver for Saver<'_> {
    fn minibatch(&mut self, progress: &Progress<'_>) {
        self.inner.minibatch(progress);
    }

    fn epoch(&mut self, report: &EpochReport) {
        self.inner.epoch(report);
        let line = MetricsLine {
            epoch: report.epoch,
            train_perplexity: report.perplexity,
            val_perplexity: report.val_perplexity,
            learning_rate: report.lr,
            grad_norm: report.grad_norm,
            chars_per_sec: report.chars_per_sec(),
            elapsed_sec: report.elapsed,
        };
        self.pending_metrics.push(serde_json::to_string(&line).expect("metrics serialise"));
    }

    fn stop_requested(&mut self) -> Option<i32> {
        self.inner.stop_requested()
    }

    fn iteration(&mut self, report: &IterationReport) {
        self.inner.iteration(report);
    }

    fn rollback(&mut self, report: &RollbackReport) {
        self.inner.rollback(report);
    }

    fn begin(&mut self, info: &RunInfo) {
        self.inner.begin(&RunInfo { notes: self.notes.to_vec(), ..info.clone() });
    }

    fn checkpoint(&mut self, model: &Network, state: &TrainState, why: SaveReason) -> Result<()> {
        self.inner.checkpoint(model, state, why)?;
        let p = &state.position;
        let params: Vec<(String, Tensor)> =
            model.named_parameters().into_iter().map(|(n, t)| (n, t.shallow_clone())).collect();
        let mut file = ModelFile {
            epoch: p.epoch,
            perplexity: p.perplexity,
            validation: self.validation(p.val_perplexity, p.epoch),
            ..self.template.clone()
        };
        // The model to use: with validation the best epoch (rewritten only when it changes), else the latest.
        match &p.best {
            Some(best) if self.best_saved != Some(best.epoch) => {
                let kept = state.best.as_ref().ok_or_else(|| Error::TrainingState {
                    reason: format!("it names epoch {} the best but holds no parameters of it", best.epoch),
                })?;
                let best_params: Vec<(String, Tensor)> =
                    params.iter().zip(kept).map(|((n, _), t)| (n.clone(), t.shallow_clone())).collect();
                let best_file = ModelFile {
                    epoch: best.epoch,
                    perplexity: Some(best.perplexity).filter(|x| x.is_finite()),
                    validation: self.validation(Some(best.val_perplexity), best.epoch),
                    ..file.clone()
                };
                checkpoint::save_parts(self.out, &best_params, best_file, None)?;
                self.best_saved = Some(best.epoch);
            }
            Some(_) => {}
            None => checkpoint::save_parts(self.out, &params, file.clone(), None)?,
        }
        // The log of the epochs this checkpoint covers (a resumed run trims what a crash left after it); a new
        // run's first checkpoint starts it afresh.
        if self.saved.is_none() {
            replace_metrics(self.out, &self.pending_metrics)?;
        } else {
            append_metrics(self.out, &self.pending_metrics)?;
        }
        self.pending_metrics.clear();
        if why != SaveReason::Periodic {
            let label = self
                .out
                .file_name()
                .map_or_else(|| self.out.display().to_string(), |n| n.to_string_lossy().into_owned());
            let curve = curve_of(self.out, label)?;
            if !curve.points.is_empty() {
                write_perplexity_svg(&[curve], &self.out.join(PLOT_FILE))?;
            }
        }
        file.resume = None;
        checkpoint::save_parts(&self.out.join(LAST_DIR), &params, file, Some(state))?;
        self.saved = Some(p.epoch);
        if !self.recorded {
            self.recorded = checkpoint::record_last_model(self.out).is_ok();
        }
        Ok(())
    }
}

/// Loads the model of `--model` (or the last one trained here) onto `device`.
pub fn load_model(model_dir: Option<&Path>, device: DeviceSpec) -> Result<LoadedModel> {
    let dir = checkpoint::resolve_model_dir(model_dir)?;
    checkpoint::load(&dir, device.resolve()?)
}

/// What to do with prefix characters the model does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UnknownChars {
    /// Refuse the prefix, naming them.
    #[default]
    Error,
    /// Drop them (with a warning).
    Skip,
}

/// Everything `charrnn predict` needs.
#[derive(Debug, Clone, Default)]
pub struct PredictJob {
    /// Model folder; `None` means the last one trained here.
    pub model: Option<PathBuf>,
    /// Where to compute.
    pub device: DeviceSpec,
    /// libtorch's CPU threads (`None`: one).
    pub threads: Option<usize>,
    /// Text to continue.
    pub prefix: String,
    /// Prefix characters outside the vocabulary.
    pub unknown: UnknownChars,
    /// How much to generate, and how.
    pub generate: Generate,
}

/// What `charrnn predict` produced.
#[derive(Debug, Clone)]
pub struct PredictOutcome {
    /// One per requested sample (shorter than asked for when `on_char` stopped generation).
    pub samples: Vec<Generated>,
    /// Problems that did not stop it (dropped prefix characters), for the user to see.
    pub warnings: Vec<String>,
    /// Whether the model keeps newlines (so that its samples can span lines).
    pub keeps_newlines: bool,
}

/// Runs `charrnn predict`: `on_char(i, c)` sees each character of sample `i`'s text as soon as it is known:
/// the prefix (read with the model's text options, without skipped characters) first, then each generated
/// character; when it returns `Break`, generation stops and the samples so far are returned. The stop
/// string is read with the model's text options too, and must be made of characters the model knows.
pub fn run_predict(
    job: &PredictJob,
    on_char: &mut dyn FnMut(usize, char) -> ControlFlow<()>,
) -> Result<PredictOutcome> {
    // One thread unless told: a step of generation is too small to split, and threads that wait on each
    // other are what makes generation slow when other work shares the cores (`benches/loaded_machine.sh`).
    set_threads(Some(job.threads.unwrap_or(1)))?;
    let loaded = load_model(job.model.as_deref(), job.device)?;
    let options = loaded.file.corpus.options;
    let mut warnings = Vec::new();
    let mut prefix = options.read_text(&job.prefix);
    if job.unknown == UnknownChars::Skip {
        if let Err(Error::UnknownChars { chars: unknown, .. }) = loaded.vocab.encode(&prefix, "the prefix") {
            let known: String = prefix.chars().filter(|c| !unknown.contains(c)).collect();
            if known.is_empty() {
                return Err(Error::config("--prefix", "none of its characters is in the model's vocabulary"));
            }
            let n = prefix.chars().count() - known.chars().count();
            warnings.push(format!(
                "dropped {n} prefix character{} not in the model's vocabulary: {}",
                if n == 1 { "" } else { "s" },
                crate::error::quote_chars(&unknown)
            ));
            prefix = known;
        }
    }
    let mut generate = job.generate.clone();
    generate.stop = generate.stop.map(|s| options.read_text(&s));
    // Checked before the prefix is passed on, so that nothing is streamed for a request that fails.
    generate.validate()?;
    loaded.vocab.encode(&prefix, "the prefix")?;
    if let Some(stop) = &generate.stop {
        loaded.vocab.encode(stop, "the stop string (--stop)")?;
    }
    for i in 0..generate.outputs() {
        for c in prefix.chars() {
            if on_char(i, c).is_break() {
                let nothing = Generated {
                    text: prefix.clone(),
                    generated: String::new(),
                    probs: Vec::new(),
                    stopped: false,
                    log_prob: None,
                };
                let samples = vec![nothing; generate.outputs()];
                return Ok(PredictOutcome { samples, warnings, keeps_newlines: options.keep_newlines });
            }
        }
    }
    let samples = generate_until(&loaded.model, &loaded.vocab, &prefix, &generate, on_char)?;
    Ok(PredictOutcome { samples, warnings, keeps_newlines: options.keep_newlines })
}

/// Everything `charrnn eval` needs.
#[derive(Debug, Clone, Default)]
pub struct EvalJob {
    /// Model folder; `None` means the last one trained here.
    pub model: Option<PathBuf>,
    /// Text to evaluate on (files and folders, or one token file); empty means the model's training corpus,
    /// read with its settings.
    pub corpus: Vec<PathBuf>,
    /// Overrides the character limit (with `corpus: None`, the training run's limit applies otherwise).
    pub limit_chars: Option<usize>,
    /// Where to compute.
    pub device: DeviceSpec,
    /// libtorch's CPU threads (`None`: one per core).
    pub threads: Option<usize>,
    /// Read the text as one stream instead of in windows of the training context.
    pub stream: bool,
    /// What to do with characters the model does not know.
    pub unknown: UnknownChars,
}

/// The result of `charrnn eval`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalReport {
    /// The text evaluated.
    pub corpus: PathBuf,
    /// Characters in it.
    pub chars: usize,
    /// Characters of context per window, each window read from a zero state (`chars - 1`: one stream).
    pub context: usize,
    /// The scores.
    #[serde(flatten)]
    pub evaluation: Evaluation,
    /// `exp(cross_entropy)`.
    pub perplexity: f64,
    /// Cross-entropy in bits per character.
    pub bits_per_char: f64,
    /// Characters of the text left out because the model does not know them (`--unknown skip`).
    pub skipped: Skipped,
}

/// Runs `charrnn eval`; `progress(done, total)` follows the predictions scored.
pub fn run_eval(job: &EvalJob, progress: &mut dyn FnMut(usize, usize)) -> Result<EvalReport> {
    CorpusOptions { keep_newlines: false, limit_chars: job.limit_chars }.validate()?;
    set_threads(job.threads)?;
    let loaded = load_model(job.model.as_deref(), job.device)?;
    let trained = &loaded.file.corpus;
    let (paths, mut options) = if job.corpus.is_empty() {
        (trained.paths(), trained.options)
    } else {
        (job.corpus.clone(), CorpusOptions { limit_chars: None, ..trained.options })
    };
    if job.limit_chars.is_some() {
        options.limit_chars = job.limit_chars;
    }
    let prepared = match load_corpus(&paths, &options) {
        Err(Error::Io { path, reason }) if job.corpus.is_empty() => {
            let reason = format!(
                "the training corpus {} cannot be read ({}); pass --corpus FILE",
                path.display(),
                crate::error::io_reason(&reason)
            );
            return Err(Error::config("--corpus", reason));
        }
        prepared => prepared?,
    };
    let (corpus, skipped) = match job.unknown {
        UnknownChars::Skip => CorpusIds::in_vocab_skipping(prepared, &loaded.vocab)?,
        UnknownChars::Error => match CorpusIds::in_vocab(prepared, &loaded.vocab) {
            Err(e @ Error::UnknownChars { .. }) => {
                return Err(Error::config(
                    "--corpus",
                    format!("{e}; pass --unknown skip to score the text without them"),
                ))
            }
            ids => (ids?, Skipped::default()),
        },
    };
    let ids = corpus.tokens();
    if ids.len() < 2 {
        return Err(Error::config("--corpus", "fewer than 2 characters the model knows: nothing to score"));
    }
    let context =
        if job.stream { ids.len() - 1 } else { loaded.file.train.eval_context(trained.chars).min(ids.len() - 1) };
    let evaluation = evaluate_with_progress(&loaded.model, ids, context, progress)?;
    Ok(EvalReport {
        corpus: paths[0].clone(),
        chars: ids.len(),
        context,
        perplexity: evaluation.perplexity(),
        bits_per_char: evaluation.bits_per_char(),
        evaluation,
        skipped,
    })
}

/// What `charrnn info` reports.
#[derive(Debug, Clone)]
pub struct Info {
    /// charrnn's version.
    pub charrnn: &'static str,
    /// The libtorch version charrnn was built against.
    pub libtorch: &'static str,
    /// CUDA as libtorch sees it.
    pub cuda: crate::device::CudaStatus,
    /// What `--device auto` picks.
    pub auto_device: String,
    /// libtorch's intra-op CPU threads.
    pub cpu_threads: i32,
    /// Whether libtorch can use cuDNN.
    pub cudnn: bool,
    /// Whether the CPU multiplies bfloat16 natively (`None`: unknown).
    pub cpu_bf16: Option<bool>,
    /// The first CUDA device's major compute capability, when CUDA is available and the runtime answers.
    pub cuda_capability: Option<i32>,
}

/// What `charrnn info --model` reports about a model folder.
#[derive(Debug, Clone)]
pub struct ModelSummary {
    /// The folder.
    pub dir: PathBuf,
    /// Everything its `model.json` says.
    pub file: ModelFile,
    /// Parameters in all.
    pub parameters: u64,
    /// The folder to give `--resume` and where its run stands, when the folder (or the model folder it is
    /// the `last/` checkpoint of) holds a resumable checkpoint.
    pub resumable: Option<(PathBuf, crate::resume::Position)>,
}

/// Reads a model folder for `charrnn info --model` (loading and checking its weights too).
pub fn model_summary(dir: Option<&Path>) -> Result<ModelSummary> {
    let dir = checkpoint::resolve_model_dir(dir)?;
    let loaded = checkpoint::load(&dir, tch::Device::Cpu)?;
    let parameters = loaded.model.config().parameter_count().unwrap_or(0);
    // The checkpoint `--resume` reads is `<run>/last`: this folder's, or this folder itself.
    let resumable = if dir.file_name().is_some_and(|n| n == LAST_DIR) && loaded.file.resume.is_some() {
        let run = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Some((run.to_path_buf(), loaded.file.resume.clone().expect("checked").position))
    } else {
        checkpoint::read_model_file(&dir.join(LAST_DIR)).ok().and_then(|f| f.resume).map(|r| (dir.clone(), r.position))
    };
    Ok(ModelSummary { dir, file: loaded.file, parameters, resumable })
}

/// Gathers [`Info`].
pub fn info() -> Info {
    Info {
        charrnn: env!("CARGO_PKG_VERSION"),
        libtorch: env!("CHARRNN_LIBTORCH_VERSION"),
        cuda: crate::device::CudaStatus::probe(),
        auto_device: DeviceSpec::Auto.resolve().map(device_name).unwrap_or_else(|_| "cpu".into()),
        cpu_threads: tch::get_num_threads(),
        cudnn: tch::Cuda::cudnn_is_available(),
        cpu_bf16: crate::device::native_bf16(tch::Device::Cpu),
        cuda_capability: tch::Cuda::is_available().then(|| crate::device::cuda_capability_major(0)).flatten(),
    }
}
