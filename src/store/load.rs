//! Reading model folders back: `model.json` checked, the weights loaded (their size bounded by the file's
//! real size, whatever the JSON claims), the training state of a resumable checkpoint, and the fingerprint
//! of a model's weights for a run that starts from it.
use crate::data::vocab::Vocabulary;
use crate::error::{Error, Result};
use crate::model::network::Network;
use crate::store::format::{ModelFile, Origin, FORMAT, VERSION};
use crate::store::layout::{MODEL_JSON, NO_SUCH_FOLDER};
use crate::store::lock::writer_of;
use crate::train::state::TrainState;
use crate::util::Fnv1a64;
use std::fs::File;
use std::path::Path;
use tch::{Device, Tensor};

/// A model read back from a folder, ready to use.
pub struct LoadedModel {
    /// The network with its trained weights.
    pub model: Network,
    /// Its vocabulary.
    pub vocab: Vocabulary,
    /// Everything `model.json` says.
    pub file: ModelFile,
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && Path::new(name).file_name().map(|n| n == name).unwrap_or(false)
}

/// Reads and checks `model.json` of the folder `dir`.
pub fn read_model_file(dir: &Path) -> Result<ModelFile> {
    if !dir.is_dir() {
        return Err(Error::bad_model(dir, NO_SUCH_FOLDER));
    }
    let path = dir.join(MODEL_JSON);
    let bytes = std::fs::read(&path).map_err(|e| match writer_of(dir) {
        Some(writer) => Error::bad_model(
            dir,
            format!("a charrnn run ({writer}) is training into it and has not saved its first checkpoint yet; wait for that (a minute or so), or stop the run"),
        ),
        None => Error::bad_model(&path, format!("cannot read it ({e})")),
    })?;
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
///
/// A training run may save a new checkpoint into the folder meanwhile: it writes the new weights file, then
/// `model.json`, then removes the old weights. A read that finds its weights gone or changed, while
/// `model.json` now names other weights, reads the folder again (a few times at most).
pub fn load(dir: &Path, device: Device) -> Result<LoadedModel> {
    let mut tries = 0;
    loop {
        let result = load_once(dir, device);
        let named = |r: &Result<LoadedModel>| match r {
            Ok(_) => None,
            Err(_) => read_model_file(dir).ok().map(|f| f.weights),
        };
        match (&result, named(&result)) {
            (Err(Error::BadModel { path, .. }), Some(now))
                if tries < 3
                    && path.file_name().is_some_and(|n| n.to_string_lossy() != now)
                    && path != &dir.join(MODEL_JSON) =>
            {
                tries += 1;
            }
            _ => return result,
        }
    }
}

/// One reading of [`load`].
fn load_once(dir: &Path, device: Device) -> Result<LoadedModel> {
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
    let mut hash = Fnv1a64::default();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::save::save_parts;
    use crate::store::save::tests::{sample, save};

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

    /// A model whose parameters live on a GPU, where there is one, is saved from CPU copies and loads on the
    /// CPU; anywhere, the device model.json records does not decide where a model loads.
    #[test]
    fn a_model_saved_on_any_device_loads_on_the_cpu() {
        let dir = tempfile::tempdir().unwrap();
        let (model, file) = sample(1);
        let device = crate::device::DeviceSpec::Auto.resolve().unwrap();
        let values: Vec<Tensor> = model.parameters().iter().map(|p| p.detach().copy()).collect();
        let on_device = Network::from_tensors(model.config(), values, device).unwrap();
        assert_eq!(on_device.device(), device);
        save(dir.path(), &on_device, ModelFile { device: "cuda:0".into(), ..file }).unwrap();
        let loaded = load(dir.path(), Device::Cpu).unwrap();
        assert_eq!(loaded.file.device, "cuda:0");
        assert_eq!(loaded.model.device(), Device::Cpu);
        for (a, b) in loaded.model.parameters().iter().zip(model.parameters()) {
            assert!(a.equal(b));
        }
    }
}
