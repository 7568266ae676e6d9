//! `charrnn predict`: the prefix read as the model reads text (its unknown characters refused or dropped),
//! then generated from, each character passed on as soon as it is chosen.
use crate::commands::load::load_model;
use crate::device::{set_threads, DeviceSpec};
use crate::error::{quote_chars, Error, Result};
use crate::generate::generate_until;
use crate::generate::options::{prefix_ids, Generate, Generated};
use std::ops::ControlFlow;
use std::path::PathBuf;

/// What to do with prefix characters the model does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownChars {
    /// Refuse the prefix, naming them.
    #[default]
    Error,
    /// Drop them (with a warning).
    Skip,
}

impl UnknownChars {
    /// The name `--unknown` gives it.
    pub fn name(self) -> &'static str {
        match self {
            UnknownChars::Error => "error",
            UnknownChars::Skip => "skip",
        }
    }
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
    /// One per requested sample (shorter than asked for when `on_char` or `keep_going` stopped generation).
    pub samples: Vec<Generated>,
    /// Problems that did not stop it (dropped prefix characters), for the user to see.
    pub warnings: Vec<String>,
    /// Whether the model keeps newlines (so that its samples can span lines).
    pub keeps_newlines: bool,
}

/// Runs `charrnn predict`: `on_char(i, c)` sees each character of sample `i`'s text as soon as it is known:
/// the prefix (read with the model's text options, without skipped characters) first, then each generated
/// character; when it returns `Break`, generation stops and the samples so far are returned.
/// `keep_going()` is asked as generation goes, beam searches included (see [`generate_until`]): `Break`
/// (Ctrl-C) stops it the same way. The stop string is read with the model's text options too, and must be
/// made of characters the model knows.
pub fn run_predict(
    job: &PredictJob,
    on_char: &mut dyn FnMut(usize, char) -> ControlFlow<()>,
    keep_going: &mut dyn FnMut() -> ControlFlow<()>,
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
                quote_chars(&unknown)
            ));
            prefix = known;
        }
    }
    let mut generate = job.generate.clone();
    generate.stop = generate.stop.map(|s| options.read_text(&s));
    // Checked before the prefix is passed on, so that nothing is streamed for a request that fails.
    generate.validate()?;
    prefix_ids(&loaded.vocab, &prefix)?;
    if let Some(stop) = &generate.stop {
        loaded.vocab.encode(stop, "the stop string (--stop)")?;
    }
    for i in 0..generate.outputs() {
        for c in prefix.chars() {
            if keep_going().is_break() || on_char(i, c).is_break() {
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
    let samples = generate_until(&loaded.model, &loaded.vocab, &prefix, &generate, on_char, keep_going)?;
    Ok(PredictOutcome { samples, warnings, keeps_newlines: options.keep_newlines })
}
