//! Saving and loading models: a folder with `model.json` (vocabulary, hyperparameters, progress), the
//! weights as safetensors and, in a resumable checkpoint, the training state (optimizer moments, best
//! parameters, ...) as a second safetensors file; written so that a crash at any moment leaves the previous
//! model loadable.
//!
//! `model.json` names the files it belongs to, with their sizes. A save writes new, uniquely named files,
//! fsyncs them, then replaces `model.json` by an atomic rename; that rename is the commit point. Only then
//! are the old files removed. A folder that does not exist yet is written under a temporary name and
//! renamed into place whole.
use crate::corpus::{CorpusOptions, Vocabulary};
use crate::error::{Error, Result};
use crate::model::{ModelConfig, Network};
use crate::resume::{Position, TrainState};
use crate::train::TrainConfig;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// The model description file inside a model folder.
pub const MODEL_JSON: &str = "model.json";
/// Value of [`ModelFile::format`].
pub const FORMAT: &str = "charrnn-model";
/// The newest [`ModelFile::version`] this charrnn reads. Version 2 allows a vocabulary in any order (grown
/// by `train --init-from`); a model whose vocabulary is sorted is written as version 1, which every charrnn
/// reads (see [`version_for`]).
pub const VERSION: u32 = 2;
/// Folder (relative to the working directory) where `train` records the last model it wrote.
pub const RUNS_DIR: &str = "runs";
/// File in [`RUNS_DIR`] holding the path of the last model `train` wrote.
pub const LAST_MODEL: &str = "last-model";

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
}

impl CorpusInfo {
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
        CorpusInfo { path, sources, options, chars, hash: Some(hash) }
    }
}

/// What a resumable checkpoint adds to `model.json`: where the run stands and the file with the rest of its
/// state ([`TrainState`]'s tensors).
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
    /// The trained model this run started from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<Origin>,
}

impl ModelFile {
    /// Minibatches per epoch of the run that wrote it (from its corpus length, held-out fraction, batch,
    /// steps and sampling).
    pub fn minibatches_per_epoch(&self) -> usize {
        let t = &self.train;
        let trained = self.corpus.chars.saturating_sub(t.held_out(self.corpus.chars));
        t.batch_order.batches_per_epoch(trained, t.batch_size, t.steps)
    }
}

/// A model read back from a folder, ready to use.
pub struct LoadedModel {
    /// The network with its trained weights.
    pub model: Network,
    /// Its vocabulary.
    pub vocab: Vocabulary,
    /// Everything `model.json` says.
    pub file: ModelFile,
}

/// Writes a file through `write` (given a temporary path in the same folder), fsyncs it and renames it
/// to `path`, so `path` is either the old file or the whole new one. The temporary is removed on failure.
pub(crate) fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = write(&tmp)
        .and_then(|_| File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(&tmp, e)))
        .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    // The user named `path`: an error names it, not the temporary.
    result.map_err(|e| match e {
        Error::Io { path: p, reason } if p == tmp => Error::Io { path: path.to_path_buf(), reason },
        e => e,
    })
}

/// Replaces `path` by `bytes` atomically (temporary file in the same folder, fsync, rename).
pub(crate) fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |tmp| {
        let mut f = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(tmp, e))
    })
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

/// A file name `{kind}-e{epoch}-….safetensors` not used by any earlier save in this folder.
fn fresh_name(dir: &Path, kind: &str, epoch: usize) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut n = 0u32;
    loop {
        let name = format!(
            "{kind}-e{epoch}-{:x}{}.safetensors",
            nanos ^ std::process::id() as u128,
            if n == 0 { String::new() } else { format!("-{n}") }
        );
        if !dir.join(&name).exists() {
            return name;
        }
        n += 1;
    }
}

/// Saves `model` to the folder `dir` (created if needed), describing it with `file` (whose `weights` and
/// `weights_bytes` are filled in here). Crash-safe: see the module documentation.
pub fn save(dir: &Path, model: &Network, file: ModelFile) -> Result<()> {
    let params: Vec<(String, Tensor)> =
        model.named_parameters().into_iter().map(|(n, t)| (n, t.shallow_clone())).collect();
    save_parts(dir, &params, file, None)
}

/// Saves the parameters `params` (named as in [`ModelConfig::param_specs`]) and, for a resumable checkpoint,
/// the training `state`, to the folder `dir`, described by `file` (whose file names and sizes, and `resume`,
/// are filled in here). Crash-safe: see the module documentation.
pub fn save_parts(dir: &Path, params: &[(String, Tensor)], file: ModelFile, state: Option<&TrainState>) -> Result<()> {
    if dir.is_dir() {
        return save_into(dir, params, file, state);
    }
    // A new folder is filled under a temporary name and renamed into place: it appears whole or not at all.
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let tmp = parent.join(format!(".{name}.new-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = save_into(&tmp, params, file, state)
        .and_then(|_| std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e)))
        .and_then(|_| sync_dir(parent));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Writes `tensors` (moved to the CPU) as a fresh `{kind}-….safetensors` in `dir`; returns its name and size.
fn write_tensors(dir: &Path, kind: &str, epoch: usize, tensors: &[(String, Tensor)]) -> Result<(String, u64)> {
    let name = fresh_name(dir, kind, epoch);
    let path = dir.join(&name);
    let cpu: Vec<(String, Tensor)> =
        tensors.iter().map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu).contiguous())).collect();
    write_atomic(&path, |tmp| Tensor::write_safetensors(&cpu, tmp).map_err(Error::from))?;
    let bytes = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
    Ok((name, bytes))
}

fn save_into(dir: &Path, params: &[(String, Tensor)], mut file: ModelFile, state: Option<&TrainState>) -> Result<()> {
    let (weights, weights_bytes) = write_tensors(dir, "weights", file.epoch, params)?;
    file.weights = weights.clone();
    file.weights_bytes = weights_bytes;
    file.resume = None;
    let mut written = vec![weights];
    if let Some(state) = state {
        let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
        match write_tensors(dir, "state", file.epoch, &state.to_named(&names)) {
            Ok((name, state_bytes)) => {
                written.push(name.clone());
                file.resume = Some(ResumeInfo { position: state.position.clone(), state: name, state_bytes });
            }
            Err(e) => {
                let _ = std::fs::remove_file(dir.join(&written[0]));
                return Err(e);
            }
        }
    }
    let json = serde_json::to_vec_pretty(&file).expect("model file serialises");
    let committed = write_bytes_atomic(&dir.join(MODEL_JSON), &json).and_then(|_| sync_dir(dir));
    if let Err(e) = committed {
        for name in &written {
            let _ = std::fs::remove_file(dir.join(name));
        }
        return Err(e);
    }
    remove_stale_files(dir, &written);
    Ok(())
}

/// Removes what earlier saves left that `model.json` no longer names: old weights and state files, and the
/// temporary files of saves that a crash cut short. Other files are left alone.
/// Whether `name` is one that charrnn gives its own files: `weights-e<epoch>-<hex>[-<n>].safetensors` and
/// `state-…` ([`fresh_name`]), or a temporary `.<name>.<pid>.tmp` ([`write_atomic`]). Nothing else in a model
/// folder is ever removed (a user's `weights-mine.safetensors` included).
fn is_own_file(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let saved = name
        .strip_suffix(".safetensors")
        .and_then(|n| n.strip_prefix("weights-e").or_else(|| n.strip_prefix("state-e")))
        .is_some_and(|rest| {
            let parts: Vec<&str> = rest.split('-').collect();
            match parts[..] {
                [epoch, h] => digits(epoch) && hex(h),
                [epoch, h, n] => digits(epoch) && hex(h) && digits(n),
                _ => false,
            }
        });
    let temporary = name
        .strip_prefix('.')
        .and_then(|n| n.strip_suffix(".tmp"))
        .and_then(|n| n.rsplit_once('.'))
        .is_some_and(|(file, pid)| !file.is_empty() && digits(pid));
    saved || temporary
}

fn remove_stale_files(dir: &Path, keep: &[String]) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_own_file(&name) && !keep.contains(&name) && entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && Path::new(name).file_name().map(|n| n == name).unwrap_or(false)
}

/// What every command says of a model folder that does not exist.
pub(crate) const NO_SUCH_FOLDER: &str =
    "no such folder (a model folder is what `charrnn train --corpus FILE` writes; its --out names it)";

/// Reads and checks `model.json` of the folder `dir`.
pub fn read_model_file(dir: &Path) -> Result<ModelFile> {
    if !dir.is_dir() {
        return Err(Error::bad_model(dir, NO_SUCH_FOLDER));
    }
    let path = dir.join(MODEL_JSON);
    let bytes = std::fs::read(&path).map_err(|e| Error::bad_model(&path, format!("cannot read it ({e})")))?;
    let file: ModelFile =
        serde_json::from_slice(&bytes).map_err(|e| Error::bad_model(&path, format!("corrupted JSON ({e})")))?;
    if file.format != FORMAT {
        return Err(Error::bad_model(&path, format!("format is {:?}, expected {FORMAT:?}", file.format)));
    }
    if file.version > VERSION {
        return Err(Error::bad_model(
            &path,
            format!(
                "format version {} is newer than this charrnn understands ({VERSION}); upgrade charrnn",
                file.version
            ),
        ));
    }
    Ok(file)
}

/// Loads the model in folder `dir` onto `device`, checking that every file is whole and consistent.
pub fn load(dir: &Path, device: Device) -> Result<LoadedModel> {
    let file = read_model_file(dir)?;
    let json = dir.join(MODEL_JSON);
    let vocab = Vocabulary::from_chars(file.vocab.chars().collect()).map_err(|r| Error::bad_model(&json, r))?;
    if vocab.len() != file.model.vocab_size {
        let msg = format!("vocabulary has {} characters but the model expects {}", vocab.len(), file.model.vocab_size);
        return Err(Error::bad_model(&json, msg));
    }
    file.model.validate().map_err(|e| Error::bad_model(&json, e.to_string()))?;
    // The weights file must be able to hold the parameters model.json describes: this bounds what is
    // allocated by the file's real size, whatever the JSON claims.
    let needed = file.model.parameter_count().and_then(|n| n.checked_mul(4));
    if needed.is_none_or(|n| n > file.weights_bytes) {
        let claim = needed.map_or("more bytes than fit in 64 bits".to_string(), |n| format!("{n} bytes"));
        return Err(Error::bad_model(
            &json,
            format!("the model it describes needs {claim} of weights but the weights file has {}", file.weights_bytes),
        ));
    }
    if !is_plain_name(&file.weights) {
        return Err(Error::bad_model(&json, format!("weights file name {:?} is not a plain file name", file.weights)));
    }
    let weights = dir.join(&file.weights);
    let size =
        std::fs::metadata(&weights).map_err(|e| Error::bad_model(&weights, format!("cannot read it ({e})")))?.len();
    if size != file.weights_bytes {
        return Err(Error::bad_model(
            &weights,
            format!("truncated or altered: {size} bytes, model.json says {}", file.weights_bytes),
        ));
    }
    let mut model = Network::zeros(file.model, device)?;
    model.load_weights(&weights)?;
    Ok(LoadedModel { model, vocab, file })
}

/// Describes `loaded` (read from the folder `dir`) as the start of a new run, fingerprinting its weights.
pub fn origin(dir: &Path, loaded: &LoadedModel) -> Result<Origin> {
    let weights = dir.join(&loaded.file.weights);
    let mut hash = crate::corpus::TextHash::default();
    let mut file = File::open(&weights).map_err(|e| Error::io(&weights, e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).map_err(|e| Error::io(&weights, e))?;
        if n == 0 {
            break;
        }
        hash.add_bytes(&buf[..n]);
    }
    Ok(Origin {
        model: std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()),
        epoch: loaded.file.epoch,
        weights: hash.finish(),
        vocab_size: loaded.vocab.len(),
    })
}

/// Reads the training state of the resumable checkpoint `dir` (loaded as `loaded`), onto the model's device,
/// checked against the model and its training configuration.
pub fn load_state(dir: &Path, loaded: &LoadedModel) -> Result<TrainState> {
    let json = dir.join(MODEL_JSON);
    let resume = loaded.file.resume.as_ref().ok_or_else(|| {
        Error::bad_model(&json, "it holds no training state to resume from (only <model>/last does, in models trained since checkpoints existed)")
    })?;
    if !is_plain_name(&resume.state) {
        return Err(Error::bad_model(&json, format!("state file name {:?} is not a plain file name", resume.state)));
    }
    let path = dir.join(&resume.state);
    let size = std::fs::metadata(&path).map_err(|e| Error::bad_model(&path, format!("cannot read it ({e})")))?.len();
    if size != resume.state_bytes {
        return Err(Error::bad_model(
            &path,
            format!("truncated or altered: {size} bytes, model.json says {}", resume.state_bytes),
        ));
    }
    let tensors = Tensor::read_safetensors(&path)
        .map_err(|e| Error::bad_model(&path, format!("cannot read the training state ({e})")))?;
    TrainState::from_named(resume.position.clone(), tensors, &loaded.model, &loaded.file.train)
}

/// The model folder to use: `given`, or the last one `train` wrote from this working directory.
pub fn resolve_model_dir(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir.to_path_buf());
    }
    let pointer = Path::new(RUNS_DIR).join(LAST_MODEL);
    match std::fs::read_to_string(&pointer) {
        Ok(s) if !s.trim().is_empty() => Ok(PathBuf::from(s.trim_end_matches('\n'))),
        _ => Err(Error::bad_model(&pointer, "no --model given and no model trained from this folder yet; run `charrnn train --corpus FILE` or pass --model DIR")),
    }
}

/// Records `dir` as the last model trained from this working directory, in `runs/last-model`, when `dir` is
/// inside the working directory; a model folder elsewhere (`--out /elsewhere/m`) leaves the working
/// directory untouched, and is named with `--model`.
pub fn record_last_model(dir: &Path) -> Result<()> {
    let abs = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    let here = std::env::current_dir().and_then(std::fs::canonicalize).map_err(|e| Error::io(".", e))?;
    if !abs.starts_with(&here) {
        return Ok(());
    }
    let runs = Path::new(RUNS_DIR);
    std::fs::create_dir_all(runs).map_err(|e| Error::io(runs, e))?;
    write_bytes_atomic(&runs.join(LAST_MODEL), format!("{}\n", abs.display()).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batches::BatchOrder;
    use crate::model::Arch;

    fn sample(epoch: usize) -> (Network, ModelFile) {
        sample_of(epoch, ModelConfig::rnn(4, 6))
    }

    fn sample_of(epoch: usize, config: ModelConfig) -> (Network, ModelFile) {
        let vocab = Vocabulary::from_text("分开了吗");
        let model = Network::new(config, epoch as u64, Device::Cpu).unwrap();
        let file = ModelFile {
            format: FORMAT.into(),
            version: VERSION,
            charrnn_version: "test".into(),
            vocab: vocab.chars().iter().collect(),
            model: config,
            train: TrainConfig {
                arch: Arch { hidden: 6, ..Arch::default() },
                batch_order: BatchOrder::Consecutive,
                ..Default::default()
            },
            corpus: CorpusInfo {
                path: "x.txt".into(),
                sources: Vec::new(),
                options: CorpusOptions::default(),
                chars: 4,
                hash: None,
            },
            epoch,
            perplexity: Some(3.5),
            validation: None,
            device: "cpu".into(),
            weights: String::new(),
            weights_bytes: 0,
            resume: None,
            init_from: None,
        };
        (model, file)
    }

    #[test]
    fn save_then_load_round_trips_everything() {
        let dir = tempfile::tempdir().unwrap();
        let (model, file) = sample(1);
        save(dir.path(), &model, file.clone()).unwrap();
        let loaded = load(dir.path(), Device::Cpu).unwrap();
        for (a, b) in loaded.model.parameters().iter().zip(model.parameters()) {
            assert!(a.equal(b));
        }
        assert_eq!(loaded.vocab.chars(), &['了', '分', '吗', '开']);
        assert_eq!(loaded.file.train, file.train);
        assert_eq!(loaded.file.epoch, 1);
    }

    #[test]
    fn every_cell_and_backend_round_trips() {
        use crate::model::{Backend, Cell, Init};
        for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
            for backend in [Backend::Scratch, Backend::Fused] {
                let config = ModelConfig::new(
                    4,
                    Arch { cell, backend, layers: 2, embed: 3, dropout: 0.1, init: Init::Uniform, ..Arch::rnn(6) },
                );
                let dir = tempfile::tempdir().unwrap();
                let (model, file) = sample_of(1, config);
                save(dir.path(), &model, file).unwrap();
                let loaded = load(dir.path(), Device::Cpu).unwrap();
                assert_eq!(loaded.model.config(), config);
                for (a, b) in loaded.model.parameters().iter().zip(model.parameters()) {
                    assert!(a.equal(b), "{cell:?} {backend:?}");
                }
                let x = Tensor::from_slice(&[0i64, 1, 2, 3]).view([2, 2]);
                let (ya, _) = loaded.model.forward(&x, &loaded.model.begin_state(2), false);
                let (yb, _) = model.forward(&x, &model.begin_state(2), false);
                assert!(ya.equal(&yb), "{cell:?} {backend:?}");
            }
        }
    }

    #[test]
    fn a_second_save_replaces_the_first_and_leaves_no_litter() {
        let dir = tempfile::tempdir().unwrap();
        let (m1, f1) = sample(1);
        save(dir.path(), &m1, f1).unwrap();
        let (m2, f2) = sample(2);
        save(dir.path(), &m2, f2).unwrap();
        let loaded = load(dir.path(), Device::Cpu).unwrap();
        assert_eq!(loaded.file.epoch, 2);
        assert!(loaded.model.parameters()[0].equal(m2.parameters()[0]));
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, vec![MODEL_JSON.to_string(), loaded.file.weights.clone()]);
    }

    #[test]
    fn damaged_models_are_refused_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let (model, file) = sample(1);
        save(dir.path(), &model, file).unwrap();
        let f = read_model_file(dir.path()).unwrap();
        let weights = dir.path().join(&f.weights);
        let bytes = std::fs::read(&weights).unwrap();

        std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
        let err = load(dir.path(), Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("truncated"), "{err}");

        // Same length, garbage header: safetensors itself must refuse it.
        let mut garbage = bytes.clone();
        garbage[..16].copy_from_slice(b"\xff\xff\xff\xff\xff\xff\xff\x7fjunkjunk");
        std::fs::write(&weights, &garbage).unwrap();
        let err = load(dir.path(), Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("cannot read weights"), "{err}");

        std::fs::write(dir.path().join(MODEL_JSON), b"{\"format\": \"charrnn-mo").unwrap();
        let err = load(dir.path(), Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("corrupted JSON"), "{err}");

        let err = load(&dir.path().join("nope"), Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("no such folder"), "{err}");
    }

    /// Rewrites model.json of `dir` through `edit`.
    fn edit_json(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
        let path = dir.join(MODEL_JSON);
        let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut json);
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    }

    fn refusal(dir: &Path) -> String {
        load(dir, Device::Cpu).err().expect("must be refused").to_string()
    }

    #[test]
    fn files_that_claim_more_than_they_hold_are_refused_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let (model, file) = sample(1);
        save(dir.path(), &model, file).unwrap();
        // A 10^12-character vocabulary cannot be listed in a small file.
        edit_json(dir.path(), |j| j["model"]["vocab_size"] = 1_000_000_000_000u64.into());
        assert!(refusal(dir.path()).contains("vocabulary has 4 characters but the model expects 1000000000000"));
        // Sizes the weights file cannot hold are refused by arithmetic, not by trying.
        for (field, value) in [("hidden", 1u64 << 40), ("layers", 1 << 50), ("embed", u64::MAX)] {
            edit_json(dir.path(), |j| {
                j["model"]["vocab_size"] = 4.into();
                j["model"]["hidden"] = 6.into();
                j["model"]["layers"] = 1.into();
                j["model"]["embed"] = 0.into();
                j["model"][field] = value.into();
            });
            let err = refusal(dir.path());
            assert!(err.contains("of weights but the weights file has"), "{field}: {err}");
        }
    }

    #[test]
    fn newer_formats_missing_tensors_and_mismatched_vocabularies_are_refused_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let (model, file) = sample(1);
        save(dir.path(), &model, file.clone()).unwrap();
        edit_json(dir.path(), |j| j["version"] = (VERSION + 1).into());
        assert!(refusal(dir.path()).contains("newer than this charrnn understands"));

        // A weights file without W_hh (a same-sized stranger in its place, so that the size is right).
        let params: Vec<(String, Tensor)> = model
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (if n == "W_hh" { "W_hh_typo".to_string() } else { n }, t.shallow_clone()))
            .collect();
        save_parts(dir.path(), &params, file.clone(), None).unwrap();
        assert!(refusal(dir.path()).contains("weights lack W_hh"));

        // A vocabulary one character longer than the weights' rows.
        save(dir.path(), &model, file.clone()).unwrap();
        edit_json(dir.path(), |j| {
            j["vocab"] = "了分吗开无".into();
            j["model"]["vocab_size"] = 5.into();
        });
        let err = refusal(dir.path());
        assert!(err.contains("W_xh is Float [4, 6], expected Float [5, 6]"), "{err}");
    }

    #[test]
    fn only_files_named_as_charrnn_names_its_own_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (model, file) = sample(1);
        for name in [
            "weights-mine.safetensors",
            "weights-e1-beef-x.safetensors",
            "state.safetensors",
            "notes.txt",
            ".hidden.tmp",
        ] {
            std::fs::write(dir.path().join(name), b"user data").unwrap();
        }
        save(dir.path(), &model, file.clone()).unwrap();
        let old = read_model_file(dir.path()).unwrap().weights;
        std::fs::write(dir.path().join(".model.json.1234.tmp"), b"left by a crash").unwrap();
        save(dir.path(), &model, file).unwrap();
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        let weights = read_model_file(dir.path()).unwrap().weights;
        let mut expected = vec![
            ".hidden.tmp",
            "model.json",
            "notes.txt",
            "state.safetensors",
            "weights-e1-beef-x.safetensors",
            "weights-mine.safetensors",
            weights.as_str(),
        ];
        expected.sort();
        assert_eq!(names, expected, "the previous weights ({old}) and the crash's temporary go; nothing else");
    }

    #[test]
    fn a_model_trained_on_cuda_loads_on_the_cpu() {
        // Weights are always written from CPU copies; the device is only recorded.
        let dir = tempfile::tempdir().unwrap();
        let (model, file) = sample(1);
        save(dir.path(), &model, ModelFile { device: "cuda:0".into(), ..file }).unwrap();
        let loaded = load(dir.path(), Device::Cpu).unwrap();
        assert_eq!(loaded.file.device, "cuda:0");
        assert_eq!(loaded.model.device(), Device::Cpu);
        assert!(loaded.model.parameters()[0].equal(model.parameters()[0]));
    }
}
