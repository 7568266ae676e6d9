//! The `train`, `predict` and `eval` jobs as library calls: read files, build or load the model, run, save.
use crate::checkpoint::{self, CorpusInfo, LoadedModel, ModelFile, ValidationInfo};
use crate::corpus::{read_corpus, CorpusOptions, Vocabulary};
use crate::device::{device_name, set_threads, DeviceSpec};
use crate::error::{Error, Result};
use crate::metrics::{evaluate, Evaluation};
use crate::model::RnnModel;
use crate::predict::predict;
use crate::train::{train, TrainConfig, TrainObserver};
use std::path::{Path, PathBuf};

/// Everything `charrnn train` needs.
#[derive(Debug, Clone)]
pub struct TrainJob {
    /// The corpus file.
    pub corpus: PathBuf,
    /// How to read it.
    pub corpus_options: CorpusOptions,
    /// Model folder; `None` means `runs/<corpus file stem>`.
    pub out: Option<PathBuf>,
    /// Where to compute.
    pub device: DeviceSpec,
    /// CPU threads for libtorch; `None` keeps its default.
    pub threads: Option<usize>,
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
    /// With validation: the epoch kept as the model (the last epoch's model is in `<out>/last`).
    pub best_epoch: Option<usize>,
    /// Device used.
    pub device: String,
    /// Problems that did not stop the run (the model is saved), for the user to see.
    pub warnings: Vec<String>,
}

/// Subfolder of a model folder holding the last epoch's model when validation chose another epoch.
pub const LAST_DIR: &str = "last";

/// The default model folder for a corpus: `runs/<file stem>`.
pub fn default_out(corpus: &Path) -> PathBuf {
    let stem = corpus.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    Path::new(checkpoint::RUNS_DIR).join(stem)
}

/// The prefixes to report: the textbook's where the vocabulary allows, else the corpus's first character.
fn default_prefixes(vocab: &Vocabulary, text: &str) -> Vec<String> {
    let textbook: Vec<String> = TrainConfig::default()
        .prefixes
        .into_iter()
        .filter(|p| vocab.encode(p, "the prefix").is_ok())
        .collect();
    if textbook.is_empty() {
        text.chars().take(1).map(String::from).collect()
    } else {
        textbook
    }
}

/// Runs `charrnn train`: checks everything ([`train`] checks the corpus length and prefixes before its
/// first step), trains, then saves the model (atomically) and records it as the last model. Nothing is
/// written to the model folder unless training completes.
pub fn run_train(job: &TrainJob, observer: &mut dyn TrainObserver) -> Result<TrainOutcome> {
    job.config.validate()?;
    set_threads(job.threads)?;
    let device = job.device.resolve()?;
    let text = read_corpus(&job.corpus, &job.corpus_options)?;
    let vocab = Vocabulary::from_text(&text);
    let ids = vocab.encode(&text, "the corpus")?;
    let mut config = job.config.clone();
    if config.prefixes.is_empty() {
        config.prefixes = default_prefixes(&vocab, &text);
    }
    let out = job.out.clone().unwrap_or_else(|| default_out(&job.corpus));
    if out.exists() && !out.is_dir() {
        return Err(Error::config("--out", format!("{} exists and is not a folder", out.display())));
    }
    let val_frac = config.resolved_val_frac(ids.len());
    config.val_frac = Some(val_frac);
    let n_val = (ids.len() as f64 * val_frac).round() as usize;
    if val_frac > 0.0 && n_val < 2 {
        return Err(Error::config("--val-frac", format!("{val_frac} of {} characters leaves fewer than 2 to validate on", ids.len())));
    }
    let (train_ids, val_ids) = ids.split_at(ids.len() - n_val);
    let model = RnnModel::new(config.model_config(vocab.len()), config.seed, device)?;
    let summary = train(&model, &vocab, train_ids, val_ids, &config, observer)?;
    let mut file = ModelFile {
        format: checkpoint::FORMAT.into(),
        version: checkpoint::VERSION,
        charrnn_version: env!("CARGO_PKG_VERSION").into(),
        vocab: vocab.chars().iter().collect(),
        model: model.config(),
        train: config,
        corpus: CorpusInfo {
            path: std::fs::canonicalize(&job.corpus).unwrap_or_else(|_| job.corpus.clone()),
            options: job.corpus_options,
            chars: ids.len(),
        },
        epoch: summary.epochs,
        perplexity: Some(summary.perplexity).filter(|p| p.is_finite()),
        validation: None,
        device: device_name(device),
        weights: String::new(),
        weights_bytes: 0,
    };
    let mut best_epoch = None;
    if let (Some(last_val), Some(best)) = (summary.val_perplexity, summary.best) {
        // The last epoch's model goes to <out>/last; the best by validation becomes the model itself.
        let validation = |perplexity, epoch| Some(ValidationInfo { frac: val_frac, chars: n_val, perplexity, epoch });
        file.validation = validation(last_val, summary.epochs);
        checkpoint::save(&out.join(LAST_DIR), &model, file.clone())?;
        model.set_parameters(&best.params)?;
        file.validation = validation(best.val_perplexity, best.epoch);
        file.epoch = best.epoch;
        file.perplexity = Some(best.perplexity).filter(|p| p.is_finite());
        best_epoch = Some(best.epoch);
    }
    checkpoint::save(&out, &model, file)?;
    let mut warnings = Vec::new();
    if let Err(e) = checkpoint::record_last_model(&out) {
        warnings.push(format!("could not record {} as the last model ({e}); pass --model to predict and eval", out.display()));
    }
    Ok(TrainOutcome { out, epochs: summary.epochs, perplexity: summary.perplexity, best_epoch, device: device_name(device), warnings })
}

/// Loads the model of `--model` (or the last one trained here) onto `device`.
pub fn load_model(model_dir: Option<&Path>, device: DeviceSpec) -> Result<LoadedModel> {
    let dir = checkpoint::resolve_model_dir(model_dir)?;
    checkpoint::load(&dir, device.resolve()?)
}

/// Runs `charrnn predict`: the prefix followed by `num_chars` greedily generated characters.
pub fn run_predict(model_dir: Option<&Path>, device: DeviceSpec, prefix: &str, num_chars: usize) -> Result<String> {
    let loaded = load_model(model_dir, device)?;
    predict(&loaded.model, &loaded.vocab, prefix, num_chars)
}

/// Everything `charrnn eval` needs.
#[derive(Debug, Clone, Default)]
pub struct EvalJob {
    /// Model folder; `None` means the last one trained here.
    pub model: Option<PathBuf>,
    /// Text to evaluate on; `None` means the model's training corpus, read with its settings.
    pub corpus: Option<PathBuf>,
    /// Overrides the character limit (with `corpus: None`, the training run's limit applies otherwise).
    pub limit_chars: Option<usize>,
    /// Where to compute.
    pub device: DeviceSpec,
    /// Read the text as one stream instead of in windows of the training context.
    pub stream: bool,
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
}

/// Runs `charrnn eval`.
pub fn run_eval(job: &EvalJob) -> Result<EvalReport> {
    if job.limit_chars == Some(0) {
        return Err(Error::config("--limit-chars", "must be at least 1"));
    }
    let loaded = load_model(job.model.as_deref(), job.device)?;
    let trained = &loaded.file.corpus;
    let (path, mut options) = match &job.corpus {
        Some(p) => (p.clone(), CorpusOptions { limit_chars: None, ..trained.options }),
        None => (trained.path.clone(), trained.options),
    };
    if job.limit_chars.is_some() {
        options.limit_chars = job.limit_chars;
    }
    let text = match read_corpus(&path, &options) {
        Err(Error::Io { path, source }) if job.corpus.is_none() => {
            let reason = format!("the training corpus {} cannot be read ({source}); pass --corpus FILE", path.display());
            return Err(Error::config("--corpus", reason));
        }
        text => text?,
    };
    let ids = loaded.vocab.encode(&text, "the corpus")?;
    let context = if job.stream { ids.len() - 1 } else { loaded.file.train.eval_context(trained.chars).min(ids.len() - 1) };
    let evaluation = evaluate(&loaded.model, &ids, context)?;
    Ok(EvalReport {
        corpus: path,
        chars: ids.len(),
        context,
        perplexity: evaluation.perplexity(),
        bits_per_char: evaluation.bits_per_char(),
        evaluation,
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
}

/// Gathers [`Info`].
pub fn info() -> Info {
    Info {
        charrnn: env!("CARGO_PKG_VERSION"),
        libtorch: env!("CHARRNN_LIBTORCH_VERSION"),
        cuda: crate::device::CudaStatus::probe(),
        auto_device: DeviceSpec::Auto.resolve().map(device_name).unwrap_or_else(|_| "cpu".into()),
        cpu_threads: tch::get_num_threads(),
    }
}
