//! `charrnn train --resume`: the run's resumable checkpoint read back, the corpus checked to be the same text,
//! the settings a resumed run may change applied, and the run trained on exactly where it stood.
use crate::commands::load::load_text;
use crate::commands::together;
use crate::commands::train::{fit, Fit, TrainOutcome};
use crate::data::corpus::CorpusIds;
use crate::data::text::CorpusOptions;
use crate::device::{device_name, set_threads, DeviceSpec};
use crate::error::{Error, Result};
use crate::store::format::{CorpusInfo, Stretch};
use crate::store::layout::{LAST_DIR, MODEL_JSON, NO_SUCH_FOLDER};
use crate::store::load::{load, load_state};
use crate::store::lock::FolderLock;
use crate::store::metrics::trim_metrics;
use crate::train::config::TrainConfig;
use crate::train::observer::TrainObserver;
use crate::train::state::TrainState;
use crate::world::world;
use std::path::PathBuf;

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
    /// A new decay factor; `None` keeps the run's.
    pub lr_decay: Option<f64>,
    /// A new decay period; `None` keeps the run's.
    pub lr_decay_every: Option<usize>,
    /// New report prefixes; empty keeps the run's.
    pub prefixes: Vec<String>,
    /// A new report period; `None` keeps the run's.
    pub pred_period: Option<usize>,
    /// Evaluate every N minibatches inside an epoch from here on; `None` keeps the run's.
    pub eval_every: Option<usize>,
    /// A new cap on the held-out characters each evaluation scores; `None` keeps the run's.
    pub val_chars: Option<usize>,
}

impl ResumeJob {
    /// The run's settings `run` with this job's changes; text (the prefixes) is read with `options`.
    fn apply(&self, run: &TrainConfig, options: &CorpusOptions) -> TrainConfig {
        let mut t = run.clone();
        t.epochs = self.epochs.unwrap_or(t.epochs);
        t.checkpoint_every = self.checkpoint_every.or(t.checkpoint_every);
        (t.max_iters, t.time_limit) = (self.max_iters, self.time_limit);
        t.lr = self.lr.unwrap_or(t.lr);
        t.lr_decay = t.lr_decay.with(self.lr_decay, self.lr_decay_every);
        if !self.prefixes.is_empty() {
            t.prefixes = self.prefixes.iter().map(|p| options.read_text(p)).collect();
        }
        t.pred_period = self.pred_period.unwrap_or(t.pred_period);
        t.eval_every = self.eval_every.or(t.eval_every);
        t.val_chars = self.val_chars.or(t.val_chars);
        t
    }
}

/// Runs `charrnn train --resume`: reads the run's resumable checkpoint, checks the corpus is the same
/// text, and continues training exactly where the run stood, saving as [`crate::run_train`] does.
///
/// Under `mpirun` or `srun` every rank reads the checkpoint, and all continue from rank 0's (which may have
/// been written by another number of processes: the state is the whole minibatch's).
pub fn run_resume(job: &ResumeJob, observer: &mut dyn TrainObserver) -> Result<TrainOutcome> {
    let (run, mut state) = together::agree(prepare(job))?;
    together::check_alike(&format!("{job:?}"), &run.template.corpus.digest())?;
    together::share_start(&run.model, Some(&mut state))?;
    fit(run, Some(&state), observer)
}

/// A resumed run ready to train, and the state it continues from.
fn prepare(job: &ResumeJob) -> Result<(Fit, TrainState)> {
    set_threads(job.threads)?;
    let device = job.device.resolve()?;
    if !job.dir.is_dir() {
        return Err(Error::bad_model(&job.dir, NO_SUCH_FOLDER));
    }
    let lock = world().is_root().then(|| FolderLock::acquire(&job.dir)).transpose()?;
    let last = job.dir.join(LAST_DIR);
    if !last.join(MODEL_JSON).exists() {
        let why = "no resumable checkpoint in it (expected last/model.json, which training writes beside the model); pass the folder given to --out, or train again: models saved before checkpoints existed can be used but not resumed";
        return Err(Error::bad_model(&job.dir, why));
    }
    let loaded = load(&last, device)?;
    let state = load_state(&last, &loaded)?;
    let mut template = loaded.file.clone();
    // The same text, in the run's vocabulary.
    let recorded = job.corpus.is_empty().then_some(("the run's corpus", "if it moved, pass --corpus FILE"));
    let paths = if job.corpus.is_empty() { template.corpus.paths() } else { job.corpus.clone() };
    let prepared = load_text(&paths, &template.corpus.options, &template.corpus.select, recorded)?;
    let hash = prepared.header.hash.clone();
    if template.corpus.hash.as_deref().is_some_and(|h| h != hash)
        || prepared.header.len as usize != template.corpus.chars
    {
        let reason = format!(
            "{} is not the text the run trained on (its length or fingerprint differs); resume needs the same corpus",
            paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
        return Err(Error::config("--corpus", reason));
    }
    let corpus = CorpusIds::in_vocab(prepared, &loaded.vocab)?;
    // The run's settings with this job's changes, and a note when they change the learning rate.
    let select = template.corpus.select.clone();
    template.corpus =
        CorpusInfo::record(&paths, template.corpus.options, template.corpus.chars, hash).selecting(select);
    template.device = device_name(device);
    let before = template.train;
    template.train = job.apply(&before, &template.corpus.options);
    template.train.validate()?;
    let p = &state.position;
    let (from, to) = (before.lr_at(p.epoch + 1, p.lr_scale), template.train.lr_at(p.epoch + 1, p.lr_scale));
    let mut notes = Vec::new();
    if (before.lr, before.lr_decay) != (template.train.lr, template.train.lr_decay) {
        notes.push(format!(
            "the learning rate of epoch {} changes from {from} to {to}: the continuation differs from an uninterrupted run",
            p.epoch + 1
        ));
    }
    if world().is_root() {
        trim_metrics(&job.dir, p.epoch)?;
    }
    template.stretches.push(Stretch::here(p.epoch, p.minibatch));
    let saved = Some(p.epoch);
    let (out, model, vocab) = (job.dir.clone(), loaded.model, loaded.vocab);
    Ok((Fit { out, model, vocab, corpus, template, saved, notes, _lock: lock, record: true }, state))
}
