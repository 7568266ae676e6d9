//! What `model.json` holds: the format, the vocabulary, the network and its training settings, the corpus,
//! progress, validation, the files of the weights and of the training state, and where a run started.
use crate::data::text::{CorpusOptions, Selection};
use crate::data::vocab::Vocabulary;
use crate::model::config::ModelConfig;
use crate::train::config::TrainConfig;
use crate::train::state::Position;
use std::path::PathBuf;

/// Value of [`ModelFile::format`].
pub const FORMAT: &str = "charrnn-model";
/// The newest [`ModelFile::version`] this charrnn reads. Version 2 allows a vocabulary in any order (grown
/// by `train --init-from`); a model whose vocabulary is sorted is written as version 1, which every charrnn
/// reads (see [`version_for`]).
pub const VERSION: u32 = 2;

/// Where the training text came from and how it was read.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CorpusInfo {
    /// The corpus file (absolute when it could be resolved); with several, the first.
    pub path: PathBuf,
    /// Every file and folder the corpus was read from, in order, when there were several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<PathBuf>,
    /// How it was read.
    pub options: CorpusOptions,
    /// Characters read (training and held-out text together).
    pub chars: usize,
    /// Fingerprint of the text read ([`crate::text_hash`]); absent in models from before it was recorded.
    #[serde(default)]
    pub hash: Option<String>,
    /// Which files of its folders were read (`--include`, `--exclude`); absent when all were.
    #[serde(default, skip_serializing_if = "Selection::is_empty")]
    pub select: Selection,
}

impl CorpusInfo {
    /// This record with its folders' files chosen by `select`.
    pub fn selecting(self, select: Selection) -> CorpusInfo {
        CorpusInfo { select, ..self }
    }

    /// The text's fingerprint and length, as one string (what processes training together compare).
    pub fn digest(&self) -> String {
        format!("{} characters, fingerprint {}", self.chars, self.hash.as_deref().unwrap_or("none"))
    }

    /// Where the corpus was read from: every source, in order.
    pub fn paths(&self) -> Vec<PathBuf> {
        if self.sources.is_empty() {
            vec![self.path.clone()]
        } else {
            self.sources.clone()
        }
    }

    /// How `paths` (as given) are recorded: absolute where they resolve; a list only when there are several.
    pub fn record(paths: &[PathBuf], options: CorpusOptions, chars: usize, hash: String) -> CorpusInfo {
        let absolute: Vec<PathBuf> =
            paths.iter().map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())).collect();
        let path = absolute.first().cloned().unwrap_or_default();
        let sources = if absolute.len() > 1 { absolute } else { Vec::new() };
        CorpusInfo { path, sources, options, chars, hash: Some(hash), select: Selection::default() }
    }
}

/// A stretch of a run's training: where it began and how many processes trained it (one, or the ranks of
/// an `mpirun` or `srun` job).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stretch {
    /// Epochs completed when it began.
    pub epoch: usize,
    /// Minibatches of the next epoch already trained when it began.
    pub minibatch: usize,
    /// Processes that trained it.
    pub processes: usize,
}

impl Stretch {
    /// A stretch this process's world begins at `epoch`, `minibatch`.
    pub fn here(epoch: usize, minibatch: usize) -> Stretch {
        Stretch { epoch, minibatch, processes: crate::world::world().size() }
    }
}

/// What a resumable checkpoint adds to `model.json`: where the run stands and the file with the rest of its
/// state ([`crate::TrainState`]'s tensors).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResumeInfo {
    /// Where the run stands.
    pub position: Position,
    /// The training-state safetensors file, in the same folder.
    pub state: String,
    /// Its size in bytes.
    pub state_bytes: u64,
}

/// The version to write for a model with vocabulary `vocab`: the oldest that can describe it.
pub fn version_for(vocab: &Vocabulary) -> u32 {
    if vocab.is_sorted() {
        1
    } else {
        2
    }
}

/// Where a run started when it started from a trained model (`train --init-from`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    /// The model folder (absolute when it could be resolved).
    pub model: PathBuf,
    /// Its epochs of training.
    pub epoch: usize,
    /// Fingerprint of its weights file (FNV-1a of its bytes, as [`crate::text_hash`] writes it).
    pub weights: String,
    /// Its vocabulary size; the characters from this index on were new to it.
    pub vocab_size: usize,
}

/// Validation of a saved model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ValidationInfo {
    /// Fraction of the corpus held out (its end).
    pub frac: f64,
    /// Characters held out.
    pub chars: usize,
    /// This model's perplexity on them.
    pub perplexity: f64,
    /// The epoch whose parameters these are.
    pub epoch: usize,
}

/// Contents of `model.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelFile {
    /// Always [`FORMAT`].
    pub format: String,
    /// File format version, [`VERSION`].
    pub version: u32,
    /// charrnn version that wrote it.
    pub charrnn_version: String,
    /// The vocabulary: every character once, in index order.
    pub vocab: String,
    /// Network shape.
    pub model: ModelConfig,
    /// Hyperparameters of the run.
    pub train: TrainConfig,
    /// The training corpus.
    pub corpus: CorpusInfo,
    /// Epochs trained.
    pub epoch: usize,
    /// Training perplexity of the last epoch (absent if it was not finite).
    pub perplexity: Option<f64>,
    /// The held-out text and how this model scores on it, when training validated.
    #[serde(default)]
    pub validation: Option<ValidationInfo>,
    /// Device it was trained on.
    pub device: String,
    /// Weights file name, in the same folder.
    pub weights: String,
    /// Size of the weights file in bytes, to detect truncation.
    pub weights_bytes: u64,
    /// Present in a resumable checkpoint (`<model>/last`).
    #[serde(default)]
    pub resume: Option<ResumeInfo>,
    /// The stretches of training, in order, each with its number of processes (absent in models from
    /// before it was recorded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stretches: Vec<Stretch>,
    /// The trained model this run started from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<Origin>,
}

impl ModelFile {
    /// The description of a new run's model before its first save: its vocabulary, network, settings and
    /// corpus, the device it trains on and the model it started from (epoch, perplexities and files are
    /// filled in at each save).
    pub fn for_run(
        vocab: &Vocabulary,
        model: ModelConfig,
        train: TrainConfig,
        corpus: CorpusInfo,
        device: String,
        init_from: Option<Origin>,
    ) -> ModelFile {
        ModelFile {
            format: FORMAT.into(),
            version: version_for(vocab),
            charrnn_version: env!("CARGO_PKG_VERSION").into(),
            vocab: vocab.chars().iter().collect(),
            model,
            train,
            corpus,
            epoch: 0,
            perplexity: None,
            validation: None,
            device,
            weights: String::new(),
            weights_bytes: 0,
            resume: None,
            stretches: vec![Stretch::here(0, 0)],
            init_from,
        }
    }

    /// One line about the model: its network, vocabulary and training.
    pub fn describe(&self) -> String {
        let file = self;
        let a = &file.model.arch;
        let input = if a.embed > 0 { format!("embedding {}", a.embed) } else { "one-hot".into() };
        let corpus = file.corpus.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let score = match (&file.validation, file.perplexity) {
            (Some(v), _) => format!(", validation perplexity {:.3}", v.perplexity),
            (None, Some(p)) => format!(", training perplexity {p:.3}"),
            _ => String::new(),
        };
        let epochs = if file.epoch == 1 { "1 epoch".to_string() } else { format!("{} epochs", file.epoch) };
        format!(
            "charrnn {} {}x{} ({input}), vocabulary {}, {epochs} on {corpus}{score}",
            a.cell, a.layers, a.hidden, file.model.vocab_size
        )
    }

    /// Minibatches per epoch of the run that wrote it (from its corpus length, held-out fraction, batch,
    /// steps and sampling).
    pub fn minibatches_per_epoch(&self) -> usize {
        let t = &self.train;
        let trained = self.corpus.chars.saturating_sub(t.held_out(self.corpus.chars));
        t.batch_order.batches_per_epoch(trained, t.batch_size, t.steps)
    }
}
