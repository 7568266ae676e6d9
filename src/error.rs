//! The library's error type: every way user input or files can be wrong, said in one line.
use std::path::PathBuf;

/// Everything that can go wrong in charrnn's library, each variant saying what and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {}", path.display(), io_reason(reason))]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The operating system's reason (in the message once: it is not a `source`, which would print it
        /// a second time in a context chain).
        reason: std::io::Error,
    },
    /// The corpus is not valid UTF-8.
    #[error("{}: invalid UTF-8 at byte offset {offset}; convert the file to UTF-8 first", path.display())]
    InvalidUtf8 {
        /// The corpus file.
        path: PathBuf,
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// The corpus has no characters (after --limit-chars).
    #[error("{}: the corpus is empty", path.display())]
    EmptyCorpus {
        /// The corpus file.
        path: PathBuf,
    },
    /// The corpus cannot fill a single minibatch.
    #[error("the corpus has {chars} characters, too few for one minibatch of --batch {batch} --steps {steps} with {sampling} sampling; {hint}")]
    CorpusTooShort {
        /// Characters in the corpus.
        chars: usize,
        /// Requested batch size.
        batch: usize,
        /// Requested steps per sequence.
        steps: usize,
        /// The minibatch order, as `--sampling` names it.
        sampling: &'static str,
        /// Which settings would fit.
        hint: String,
    },
    /// A hyperparameter or option is out of its range.
    #[error("invalid {name}: {reason}")]
    InvalidConfig {
        /// The option, as the command line spells it.
        name: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// A prepared corpus (token file) is not usable.
    #[error("{}: not a usable prepared corpus: {reason}", path.display())]
    BadCorpus {
        /// The token file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Text contains characters the model's vocabulary lacks.
    #[error("{what} has characters not in the model's vocabulary: {}", quote_chars(chars))]
    UnknownChars {
        /// What was being encoded ("the prefix", "the corpus").
        what: &'static str,
        /// The unknown characters, each once, in order of appearance.
        chars: Vec<char>,
    },
    /// The requested device does not exist here.
    #[error("device {requested} is not available: {reason}")]
    DeviceUnavailable {
        /// The device as requested.
        requested: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A model folder is missing, incomplete or corrupted.
    #[error("{}: not a usable charrnn model: {reason}", path.display())]
    BadModel {
        /// The file or folder concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint's training state does not fit the run it belongs to (a tensor missing or misshapen).
    #[error("the training state cannot be used: {reason}; resume from an intact checkpoint or train again")]
    TrainingState {
        /// What is missing or wrong.
        reason: String,
    },
    /// Training produced a non-finite loss or gradient norm.
    #[error("training diverged in epoch {epoch}: {what} is not finite; {}; try a lower --lr or a smaller --clip", kept.as_deref().unwrap_or("nothing of this run was saved"))]
    Diverged {
        /// The epoch (from 1) in which it happened.
        epoch: usize,
        /// What became non-finite.
        what: String,
        /// Where the last good checkpoint is, in words (filled in by whoever saved it).
        kept: Option<String>,
    },
    /// Training stopped because it was asked to (a signal), after saving a checkpoint.
    #[error("interrupted at {}{}", describe_position(*epoch, *minibatch, *minibatches), saved.as_ref().map(|d| format!("; saved a resumable checkpoint; continue with `charrnn train --resume {}`", d.display())).unwrap_or_default())]
    Interrupted {
        /// The signal number that asked for the stop (2 SIGINT, 15 SIGTERM).
        signal: i32,
        /// The epoch, from 1.
        epoch: usize,
        /// Minibatches of it trained.
        minibatch: usize,
        /// Minibatches per epoch.
        minibatches: usize,
        /// The model folder the checkpoint went to.
        saved: Option<PathBuf>,
    },
    /// Training stopped at a limit it was given (`--max-iters`, `--time-limit`), after saving a checkpoint.
    #[error("stopped by {limit} at {}{}", describe_position(*epoch, *minibatch, *minibatches), saved.as_ref().map(|d| format!("; saved a resumable checkpoint; continue with `charrnn train --resume {}`", d.display())).unwrap_or_default())]
    LimitReached {
        /// The limit, as the command line spells it.
        limit: String,
        /// The epoch, from 1.
        epoch: usize,
        /// Minibatches of it trained.
        minibatch: usize,
        /// Minibatches per epoch.
        minibatches: usize,
        /// The model folder the checkpoint went to.
        saved: Option<PathBuf>,
    },
    /// The processes training one model together (under `mpirun` or `srun`) cannot go on: one of them met
    /// an error, or they were not started alike.
    #[error("{reason}")]
    Ranks {
        /// What went wrong, naming the rank.
        reason: String,
        /// Whether every rank returns this error at the same point (so rank 0 alone need say it, and no rank
        /// need be stopped by force).
        everywhere: bool,
    },
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Convenience alias for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), reason: source }
    }

    /// An [`Error::BadModel`] for `path`.
    pub fn bad_model(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::BadModel { path: path.into(), reason: reason.into() }
    }

    /// An [`Error::InvalidConfig`] for the option `name`.
    pub fn config(name: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidConfig { name, reason: reason.into() }
    }
}

/// An operating-system error as a sentence: "no such file or directory", without Rust's "(os error 2)".
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    let mut chars = text.chars();
    chars.next().map(|c| c.to_lowercase().chain(chars).collect()).unwrap_or_default()
}

/// Characters shown one by one, escaped so that spaces and control characters are visible (`'a', ' '`),
/// separated by commas; past the first 20, a count of the rest.
pub(crate) fn quote_chars(chars: &[char]) -> String {
    const SHOWN: usize = 20;
    let quoted = chars.iter().take(SHOWN).map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ");
    match chars.len().saturating_sub(SHOWN) {
        0 => quoted,
        rest => format!("{quoted} and {rest} more"),
    }
}

/// Where a run stands, as every message says it (epochs and minibatches from 1): "epoch E, after minibatch B
/// of N" inside epoch `epoch`, "the end of epoch E" when `minibatch` is 0 (the end of the one before) or N.
pub fn describe_position(epoch: usize, minibatch: usize, minibatches: usize) -> String {
    match minibatch {
        0 if epoch <= 1 => "the start of training".to_string(),
        0 => format!("the end of epoch {}", epoch - 1),
        b if b >= minibatches => format!("the end of epoch {epoch}"),
        b => format!("epoch {epoch}, after minibatch {b} of {minibatches}"),
    }
}
