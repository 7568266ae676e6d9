//! `charrnn export`: a model folder written as a file that runs without charrnn (ONNX).
use crate::error::{Error, Result};
use crate::store::layout::resolve_model_dir;
use crate::store::load::load;
use crate::store::onnx::{describe, export_onnx};
use std::path::{Path, PathBuf};

/// What `charrnn export` wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The model folder read.
    pub model: PathBuf,
    /// The file written.
    pub file: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// One line about the model (also the file's own description).
    pub description: String,
}

/// Runs `charrnn export --onnx`: reads the model folder `model` (the last trained from here when `None`) on
/// the CPU and writes it to `onnx` as an ONNX model ([`crate::store::export_onnx`]).
pub fn run_export_onnx(model: Option<&Path>, onnx: &Path) -> Result<Exported> {
    if !onnx.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx")) {
        let reason = format!("{} does not end in .onnx, the extension ONNX runtimes and tools expect", onnx.display());
        return Err(Error::config("--onnx", reason));
    }
    let dir = resolve_model_dir(model)?;
    let loaded = load(&dir, tch::Device::Cpu)?;
    let bytes = export_onnx(&loaded.model, &loaded.file, onnx)?;
    Ok(Exported { model: dir, file: onnx.to_path_buf(), bytes, description: describe(&loaded.file) })
}
