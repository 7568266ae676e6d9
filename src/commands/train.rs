//! `charrnn train`: a new run reads as four steps down the layers: load the text in its vocabulary, build
//! or grow the model, make the checkpointer, train ([`fit`], which a resumed run shares).
use crate::commands::load::{bom_note, not_text_note};
use crate::commands::together;
use crate::data::corpus::{load_selected, CorpusIds};
use crate::data::prepared::PreparedHeader;
use crate::data::text::{CorpusOptions, Selection};
use crate::data::tokens::Tokens;
use crate::data::vocab::Vocabulary;
use crate::device::{device_name, native_bf16, set_threads, DeviceSpec};
use crate::error::{quote_chars, Error, Result};
use crate::model::config::{Arch, Backend, Dtype};
use crate::model::network::Network;
use crate::store::checkpointer::Checkpointer;
use crate::store::format::{CorpusInfo, ModelFile};
use crate::store::layout::default_out;
use crate::store::load::{load, origin, LoadedModel};
use crate::store::lock::FolderLock;
use crate::train::config::TrainConfig;
use crate::train::observer::TrainObserver;
use crate::train::run::{check_run, train};
use crate::train::state::TrainState;
use crate::world::world;
use std::path::PathBuf;
use tch::Device;

/// Everything `charrnn train` needs.
#[derive(Debug, Clone)]
pub struct TrainJob {
    /// The corpus: files and folders (see [`crate::expand_sources`]), read in order as one text, or one
    /// prepared token file.
    pub corpus: Vec<PathBuf>,
    /// How to read it.
    pub corpus_options: CorpusOptions,
    /// Which files of its folders to read (all text files when empty).
    pub select: Selection,
    /// Model folder; `None` means `runs/<corpus file stem>`.
    pub out: Option<PathBuf>,
    /// Where to compute.
    pub device: DeviceSpec,
    /// CPU threads for libtorch; `None` keeps its default.
    pub threads: Option<usize>,
    /// Replace what `out` holds (at the first checkpoint; until then the old model stays); without it a
    /// folder that holds anything is refused.
    pub force: bool,
    /// Leave `runs/last-model` alone: the run does not become the model that `predict`, `eval` and `serve`
    /// take without `--model` (a folder outside `runs/` never does).
    pub no_record: bool,
    /// Start from this trained model folder instead of fresh weights: its architecture (cell, sizes,
    /// initialisation; `config.arch`'s dropout and backend are this run's), its weights and its
    /// vocabulary, followed by the corpus's new characters ([`Vocabulary::extended`]), whose rows start as
    /// a fresh model's ([`Network::grown`]). The optimizer starts afresh. Its newline setting applies too.
    pub init_from: Option<PathBuf>,
    /// Choose `config.arch.backend` for the cell (the source model's with `init_from`) and the device
    /// (`--backend auto`): [`Backend::fastest`].
    pub auto_backend: bool,
    /// Choose `config.dtype` from the device (`--dtype auto`): bf16 where it multiplies bfloat16 natively
    /// ([`crate::native_bf16`]: AVX512-BF16 or AMX-BF16, compute capability 8.0 or newer), else fp32.
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

/// Runs `charrnn train`: checks everything ([`train`] checks the corpus length and prefixes before its
/// first step), trains, and saves checkpoints as it goes: the model to use in `out` (the best epoch by
/// validation, else the latest) and the resumable state in `out/last`. Nothing is written before the first
/// checkpoint.
///
/// Under `mpirun` or `srun` ([`crate::World`]) every rank prepares the run and trains its share of each
/// minibatch; rank 0 alone holds and writes the model folder.
pub fn run_train(job: &TrainJob, observer: &mut dyn TrainObserver) -> Result<TrainOutcome> {
    let run = together::agree(prepare(job))?;
    together::check_alike(&format!("{job:?}"), &run.template.corpus.digest())?;
    together::share_start(&run.model, None)?;
    fit(run, None, observer)
}

/// A new run ready to train: the checks, the model folder claimed (by rank 0 alone), the text, the
/// settings, the model and what the checkpointer writes of the run.
fn prepare(job: &TrainJob) -> Result<Fit> {
    job.config.validate()?;
    job.corpus_options.validate()?;
    set_threads(job.threads)?;
    let device = job.device.resolve()?;
    let first = job.corpus.first().ok_or_else(|| Error::config("--corpus", "give at least one file or folder"))?;
    let out = job.out.clone().unwrap_or_else(|| default_out(first));
    // The model folder, for this run alone; the model it starts from, with --init-from.
    let lock = world()
        .is_root()
        .then(|| FolderLock::claim_for_new_run(&out, job.force, job.init_from.as_deref()))
        .transpose()?;
    let source = job.init_from.as_deref().map(|dir| Ok::<_, Error>((dir, load(dir, device)?))).transpose()?;
    // The text in the vocabulary the run trains in, and the settings with their automatic choices made.
    let data = Data::load(job, source.as_ref().map(|(_, src)| src))?;
    let (config, notes) = settle(job, device, &data, source.as_ref().map(|(_, src)| src));
    // The model: fresh, or grown from the source to the extended vocabulary.
    let (model, init_from) = match &source {
        None => (Network::new(config.model_config(data.vocab.len()), config.seed, device)?, None),
        Some((dir, src)) => {
            (src.model.grown(config.model_config(data.vocab.len()), config.seed)?, Some(origin(dir, src)?))
        }
    };
    // What the checkpointer writes of the run, then training.
    let corpus = CorpusInfo::record(&job.corpus, data.header.options, data.corpus.tokens().len(), data.header.hash)
        .selecting(job.select.clone());
    let template = ModelFile::for_run(&data.vocab, model.config(), config, corpus, device_name(device), init_from);
    let record = !job.no_record;
    Ok(Fit { out, model, vocab: data.vocab, corpus: data.corpus, template, saved: None, notes, _lock: lock, record })
}

/// A new run's text in the vocabulary it trains in: the corpus's own, or a source model's extended by the
/// corpus's new characters.
struct Data {
    /// The vocabulary.
    vocab: Vocabulary,
    /// The text in it.
    corpus: CorpusIds,
    /// What the prepared text says of itself.
    header: PreparedHeader,
    /// How many of the vocabulary's characters the source model already had (with `--init-from`).
    known: Option<usize>,
    /// The files of its folders left out because they are not text.
    not_text: Vec<PathBuf>,
}

impl Data {
    /// Reads `job`'s corpus (with the source model's newline setting too, when there is one).
    fn load(job: &TrainJob, source: Option<&LoadedModel>) -> Result<Data> {
        let mut options = job.corpus_options;
        options.keep_newlines |= source.is_some_and(|src| src.file.corpus.options.keep_newlines);
        let (prepared, not_text) = load_selected(&job.corpus, &options, &job.select)?;
        let header = prepared.header.clone();
        let (vocab, known) = match source {
            None => (prepared.vocab.clone(), None),
            Some(src) => (src.vocab.extended(prepared.vocab.chars().iter().copied()), Some(src.vocab.len())),
        };
        let corpus = CorpusIds::in_vocab(prepared, &vocab)?;
        Ok(Data { vocab, corpus, header, known, not_text })
    }
}

/// The settings a new run trains with, and the notes that say what was chosen for it: `job.config` with the
/// automatic choices made (backend, precision), the source model's architecture (but for this run's
/// dropout and backend), the report prefixes read as the text is read (or chosen from the corpus), and the
/// held-out fraction resolved.
fn settle(job: &TrainJob, device: Device, data: &Data, source: Option<&LoadedModel>) -> (TrainConfig, Vec<String>) {
    let mut config = job.config.clone();
    let mut notes = Vec::new();
    if job.auto_backend {
        let cell = source.map_or(config.arch.cell, |src| src.file.model.arch.cell);
        config.arch.backend = Backend::fastest(cell, device, config.arch.dropout);
    }
    config.prefixes = config.prefixes.iter().map(|p| data.header.options.read_text(p)).collect();
    notes.extend(newline_note(&data.header));
    notes.extend(bom_note(&data.header));
    notes.extend(not_text_note(&data.not_text));
    if job.auto_dtype {
        let native = native_bf16(device) == Some(true);
        config.dtype = if native { Dtype::Bf16 } else { Dtype::Fp32 };
        let what = if device.is_cuda() { "this GPU" } else { "this CPU" };
        notes.push(match native {
            true => format!("--dtype auto: bf16, as {what} multiplies bfloat16 natively"),
            false => format!("--dtype auto: fp32, as {what} has no native bfloat16 product"),
        });
    }
    if let (Some(src), Some(known), Some(dir)) = (source, data.known, &job.init_from) {
        config.arch = Arch { dropout: config.arch.dropout, backend: config.arch.backend, ..src.file.model.arch };
        let new = &data.vocab.chars()[known..];
        let what = match new.len() {
            0 => "the corpus has no characters new to it".to_string(),
            n => format!("{n} characters new to it: {}", quote_chars(new)),
        };
        notes.push(format!("starting from {} ({} epochs); {what}", dir.display(), src.file.epoch));
    }
    let ids = data.corpus.tokens();
    if config.prefixes.is_empty() {
        config.prefixes = default_prefixes(&data.vocab, ids);
    }
    config.val_frac = Some(config.resolved_val_frac(ids.len()));
    (config, notes)
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

/// A note for a text of many lines read with its line breaks as spaces (the textbook's default, which
/// suits its lyrics but runs verse, dialogue and code together): at least 100 of them, one every 200
/// characters or more often.
fn newline_note(header: &PreparedHeader) -> Option<String> {
    let breaks = header.line_breaks?;
    if header.options.keep_newlines || breaks < 100 || header.len / breaks > 200 {
        return None;
    }
    Some(format!(
        "the corpus has {breaks} line breaks (one every {} characters), read as spaces as in the textbook; --keep-newlines lets the model learn its lines (verse, speakers, code)",
        header.len / breaks
    ))
}

/// A note for `--dtype bf16` on a device without native bfloat16 products, where it is slow (CPU) or
/// brings nothing (GPU).
fn bf16_note(device: Device) -> Option<String> {
    if native_bf16(device) != Some(false) {
        return None;
    }
    Some(match device {
        Device::Cuda(_) => "this GPU (compute capability below 8.0) has no bfloat16 tensor cores: --dtype bf16 brings nothing there; --dtype fp32 is as fast and exact".to_string(),
        _ => "this CPU has no native bfloat16 product (neither AVX512-BF16 nor AMX-BF16), so --dtype bf16 is emulated: about 11x slower than fp32 on an AMD EPYC Zen 3 (20 epochs of the textbook workload: 63.6 s against 5.7 s); use --dtype fp32".to_string(),
    })
}

/// A run ready to train: what [`run_train`] and [`crate::run_resume`] prepare.
pub(crate) struct Fit {
    pub(crate) out: PathBuf,
    pub(crate) model: Network,
    pub(crate) vocab: Vocabulary,
    /// The whole text read (training part, then the held-out part).
    pub(crate) corpus: CorpusIds,
    /// Describes the run; epoch, perplexities and files are filled in at each save.
    pub(crate) template: ModelFile,
    /// Epochs of the last complete checkpoint already on disk, if any.
    pub(crate) saved: Option<usize>,
    /// What the user should know before the run starts (a resumed run's changed learning rate).
    pub(crate) notes: Vec<String>,
    /// The model folder, held for this run (by rank 0 alone when several processes train together).
    pub(crate) _lock: Option<FolderLock>,
    /// Whether the folder becomes `runs/last-model` (when it lies in `runs/`).
    pub(crate) record: bool,
}

/// Trains `run` (from `resume`, when it continues a saved run) through its checkpointer, and says where the
/// model is: the errors that end a run name the checkpoint kept.
pub(crate) fn fit(mut run: Fit, resume: Option<&TrainState>, observer: &mut dyn TrainObserver) -> Result<TrainOutcome> {
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
    // What training checks before its first step, agreed on by every rank (alone, training checks it again).
    together::agree(check_run(&run.model, &run.vocab, train_ids, &config))?;
    let (result, saved, recorded) = if world().is_root() {
        let mut checkpointer =
            Checkpointer::new(&run.out, &run.template, n_val, run.saved, &run.notes, observer).recording(run.record);
        let result = train(&run.model, &run.vocab, train_ids, val_ids, &config, resume, &mut checkpointer);
        (result, checkpointer.saved(), checkpointer.recorded())
    } else {
        // The other ranks write nothing: rank 0 checkpoints what they all trained.
        (train(&run.model, &run.vocab, train_ids, val_ids, &config, resume, observer), run.saved, true)
    };
    let kept = saved.map(|_| run.out.clone());
    let summary = match result {
        Ok(summary) => summary,
        Err(Error::LimitReached { limit, epoch, minibatch, minibatches, .. }) => {
            return Err(Error::LimitReached { limit, epoch, minibatch, minibatches, saved: kept });
        }
        Err(Error::Interrupted { signal, epoch, minibatch, minibatches, .. }) => {
            return Err(Error::Interrupted { signal, epoch, minibatch, minibatches, saved: kept });
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
