//! `charrnn eval`: a model's perplexity on a text (its training corpus by default), read in windows of the
//! context it was trained with, or as one stream.
use crate::commands::load::{bom_note, load_text};
use crate::commands::predict::UnknownChars;
use crate::data::corpus::{CorpusIds, Skipped};
use crate::data::text::CorpusOptions;
use crate::device::{set_threads, DeviceSpec};
use crate::error::{Error, Result};
use crate::eval::{evaluate_with_progress, Evaluation};
use crate::store::layout::resolve_model_dir;
use crate::store::load::load;
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
    /// Score only the held-out part of the training corpus (its end, as the run split it), as validation
    /// did; needs `corpus` empty and no `limit_chars`.
    pub held_out: bool,
}

/// The result of `charrnn eval`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalReport {
    /// The text evaluated.
    pub corpus: PathBuf,
    /// Characters in it (with `--held-out`, in the held-out part).
    pub chars: usize,
    /// Whether only the held-out part of the training corpus was scored.
    pub held_out: bool,
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
    if job.held_out && (!job.corpus.is_empty() || job.limit_chars.is_some()) {
        let reason =
            "scores the training corpus's held-out part, as the run split it: leave out --corpus and --limit-chars";
        return Err(Error::config("--held-out", reason));
    }
    set_threads(job.threads)?;
    let dir = resolve_model_dir(job.model.as_deref())?;
    let loaded = load(&dir, job.device.resolve()?)?;
    let trained = &loaded.file.corpus;
    let split = &loaded.file.train;
    let n_val = split.held_out(trained.chars);
    if job.held_out && n_val < 2 {
        let reason = format!(
            "{} was trained without held-out text (--val-frac {}): there is nothing the model has not seen to score",
            dir.display(),
            split.resolved_val_frac(trained.chars)
        );
        return Err(Error::config("--held-out", reason));
    }
    let (paths, mut options) = if job.corpus.is_empty() {
        (trained.paths(), trained.options)
    } else {
        (job.corpus.clone(), CorpusOptions { limit_chars: None, ..trained.options })
    };
    if job.limit_chars.is_some() {
        options.limit_chars = job.limit_chars;
    }
    let recorded = job.corpus.is_empty().then_some(("the training corpus", "pass --corpus FILE"));
    // The training corpus as the run read it; a text given here, all its folders' text files.
    let select = if job.corpus.is_empty() { trained.select.clone() } else { Default::default() };
    let prepared = load_text(&paths, &options, &select, recorded)?;
    let mut notes: Vec<String> = bom_note(&prepared.header).into_iter().collect();
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
    let all = corpus.tokens();
    // The held-out part is the text's end, read in windows of the context validation used (that of the
    // training part), so that the score is the run's validation perplexity of this model.
    let (ids, window) = if job.held_out {
        (all.slice(all.len() - n_val, n_val), split.eval_context(all.len() - n_val))
    } else {
        if job.corpus.is_empty() && n_val >= 2 && job.limit_chars.is_none() {
            notes.push(format!(
                "this scores the whole training corpus, the {} characters the model trained on included; --held-out scores only the {n_val} held out",
                all.len() - n_val
            ));
        }
        (all, split.eval_context(trained.chars))
    };
    if ids.len() < 2 {
        return Err(Error::config("--corpus", "fewer than 2 characters the model knows: nothing to score"));
    }
    let context = if job.stream { ids.len() - 1 } else { window.min(ids.len() - 1) };
    let evaluation = evaluate_with_progress(&loaded.model, ids, context, progress)?;
    Ok(EvalReport {
        corpus: paths[0].clone(),
        chars: ids.len(),
        held_out: job.held_out,
        context,
        perplexity: evaluation.perplexity(),
        bits_per_char: evaluation.bits_per_char(),
        evaluation,
        skipped,
        notes,
    })
}
