//! `charrnn eval`: a model's perplexity on a text (its training corpus by default), read in windows of the
//! context it was trained with, or as one stream.
use crate::commands::load::{bom_note, load_model, load_text};
use crate::commands::predict::UnknownChars;
use crate::data::corpus::{CorpusIds, Skipped};
use crate::data::text::CorpusOptions;
use crate::device::{set_threads, DeviceSpec};
use crate::error::{Error, Result};
use crate::eval::{evaluate_with_progress, Evaluation};
use std::path::PathBuf;

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
    /// What the user should know about how the text was read (byte-order marks dropped), a line each.
    #[serde(skip)]
    pub notes: Vec<String>,
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
    let recorded = job.corpus.is_empty().then_some(("the training corpus", "pass --corpus FILE"));
    let prepared = load_text(&paths, &options, recorded)?;
    let notes: Vec<String> = bom_note(&prepared.header).into_iter().collect();
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
        notes,
    })
}
