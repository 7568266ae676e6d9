//! Saving models: a folder with `model.json` (vocabulary, hyperparameters, progress), the weights as
//! safetensors and, in a resumable checkpoint, the training state (optimizer moments, best parameters, ...)
//! as a second safetensors file; written so that a crash at any moment leaves the previous model loadable.
//!
//! `model.json` names the files it belongs to, with their sizes. A save writes new, uniquely named files,
//! fsyncs them, then replaces `model.json` by an atomic rename; that rename is the commit point. Only then
//! are the old files removed. A folder that does not exist yet is written under a temporary name and
//! renamed into place whole.
use crate::error::{Error, Result};
use crate::store::format::{ModelFile, ResumeInfo};
use crate::store::layout::MODEL_JSON;
use crate::train::state::TrainState;
use crate::util::{crash_point, sweep_dead_temporaries, sync_dir, write_atomic, write_bytes_atomic};
use std::path::Path;
use tch::{Device, Tensor};

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

/// Saves the parameters `params` (named as in [`crate::ModelConfig::param_specs`]) and, for a resumable checkpoint,
/// the training `state`, to the folder `dir`, described by `file` (whose file names and sizes, and `resume`,
/// are filled in here). Crash-safe: see the module documentation.
pub fn save_parts(dir: &Path, params: &[(String, Tensor)], file: ModelFile, state: Option<&TrainState>) -> Result<()> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    // What a first save that was killed left behind (also once a later save has made the folder).
    let prefix = format!(".{name}.new-");
    sweep_dead_temporaries(parent, |entry| entry.strip_prefix(&prefix)?.parse().ok());
    if dir.is_dir() {
        return save_into(dir, params, file, state);
    }
    // A new folder is filled under a temporary name and renamed into place: it appears whole or not at all.
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = parent.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    crash_point("a new model folder made under a temporary name");
    let result = save_into(&tmp, params, file, state)
        .and_then(|_| std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e)))
        .and_then(|_| {
            crash_point("a new model folder renamed into place");
            sync_dir(parent)
        });
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
    crash_point("the weights written");
    file.weights = weights.clone();
    file.weights_bytes = weights_bytes;
    file.resume = None;
    let mut written = vec![weights];
    if let Some(state) = state {
        let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
        match write_tensors(dir, "state", file.epoch, &state.to_named(&names)) {
            Ok((name, state_bytes)) => {
                crash_point("the training state written");
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
    crash_point("model.json replaced");
    remove_stale_files(dir, &written);
    Ok(())
}

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

/// Removes what earlier saves left that `model.json` no longer names: old weights and state files, and the
/// temporary files of saves that a crash cut short. Other files are left alone.
fn remove_stale_files(dir: &Path, keep: &[String]) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_own_file(&name) && !keep.contains(&name) && entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::batches::BatchOrder;
    use crate::data::text::CorpusOptions;
    use crate::data::vocab::Vocabulary;
    use crate::model::config::{Arch, ModelConfig};
    use crate::model::dropout::Dropout;
    use crate::model::network::Network;
    use crate::store::format::{CorpusInfo, FORMAT, VERSION};
    use crate::store::load::{load, read_model_file};
    use crate::train::config::TrainConfig;

    /// Saves `model` to the folder `dir` (created if needed), described by `file`.
    pub(crate) fn save(dir: &Path, model: &Network, file: ModelFile) -> Result<()> {
        let params: Vec<(String, Tensor)> =
            model.named_parameters().into_iter().map(|(n, t)| (n, t.shallow_clone())).collect();
        save_parts(dir, &params, file, None)
    }

    pub(crate) fn sample(epoch: usize) -> (Network, ModelFile) {
        sample_of(epoch, ModelConfig::rnn(4, 6))
    }

    pub(crate) fn sample_of(epoch: usize, config: ModelConfig) -> (Network, ModelFile) {
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
                select: Default::default(),
            },
            epoch,
            perplexity: Some(3.5),
            validation: None,
            device: "cpu".into(),
            weights: String::new(),
            weights_bytes: 0,
            resume: None,
            stretches: Vec::new(),
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
        use crate::model::config::{Backend, Cell, Init};
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
                let (ya, _) = loaded.model.forward(&x, &loaded.model.begin_state(2), Dropout::Off);
                let (yb, _) = model.forward(&x, &model.begin_state(2), Dropout::Off);
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
}
