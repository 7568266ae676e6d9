//! The model folder's layout, in one place: the files a model folder holds, its resumable checkpoint, where
//! a run writes by default, and the record of the last model trained from a working folder.
use crate::error::{Error, Result};
use crate::util::write_bytes_atomic;
use std::path::{Path, PathBuf};

/// The model description file inside a model folder.
pub const MODEL_JSON: &str = "model.json";
/// Subfolder of a model folder holding the resumable checkpoint: the latest parameters and the training
/// state.
pub const LAST_DIR: &str = "last";
/// The per-epoch log in a model folder: one JSON object per line.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The chart `train` draws in the model folder when it finishes or is interrupted.
pub const PLOT_FILE: &str = "perplexity.svg";
/// Folder (relative to the working directory) where `train` records the last model it wrote.
pub const RUNS_DIR: &str = "runs";
/// File in [`RUNS_DIR`] holding the path of the last model `train` wrote.
pub const LAST_MODEL: &str = "last-model";

/// What every command says of a model folder that does not exist.
pub(crate) const NO_SUCH_FOLDER: &str =
    "no such folder (a model folder is what `charrnn train --corpus FILE` writes; its --out names it)";

/// The default model folder for a corpus: `runs/<file stem>`.
pub fn default_out(corpus: &Path) -> PathBuf {
    let stem = corpus.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    Path::new(RUNS_DIR).join(stem)
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
/// inside its `runs/` folder (where `train` puts models by default); a model folder elsewhere (`--out
/// scratch`, `--out /elsewhere/m`) leaves the record alone, and is named with `--model`.
pub fn record_last_model(dir: &Path) -> Result<()> {
    let abs = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    let here = std::env::current_dir().and_then(std::fs::canonicalize).map_err(|e| Error::io(".", e))?;
    if !abs.starts_with(here.join(RUNS_DIR)) {
        return Ok(());
    }
    let runs = Path::new(RUNS_DIR);
    std::fs::create_dir_all(runs).map_err(|e| Error::io(runs, e))?;
    write_bytes_atomic(&runs.join(LAST_MODEL), format!("{}\n", abs.display()).as_bytes())
}
