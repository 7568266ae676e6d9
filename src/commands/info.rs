//! `charrnn info`: what this build of libtorch can use, or a model folder's summary.
use crate::device::{cuda_capability_major, device_name, native_bf16, CudaStatus, DeviceSpec};
use crate::error::Result;
use crate::store::format::ModelFile;
use crate::store::layout::{resolve_model_dir, LAST_DIR};
use crate::store::load::{load, read_model_file};
use crate::train::state::Position;
use std::path::{Path, PathBuf};

/// What `charrnn info` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Info {
    /// charrnn's version.
    pub charrnn: &'static str,
    /// The libtorch version charrnn was built against.
    pub libtorch: &'static str,
    /// CUDA as libtorch sees it.
    pub cuda: CudaStatus,
    /// What `--device auto` picks.
    pub auto_device: String,
    /// libtorch's intra-op CPU threads.
    pub cpu_threads: i32,
    /// Whether libtorch can use cuDNN.
    pub cudnn: bool,
    /// Whether the CPU multiplies bfloat16 natively (`None`: unknown).
    pub cpu_bf16: Option<bool>,
    /// The first CUDA device's major compute capability, when CUDA is available and the runtime answers.
    pub cuda_capability: Option<i32>,
}

/// What `charrnn info --model` reports about a model folder.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelSummary {
    /// The folder.
    pub dir: PathBuf,
    /// Everything its `model.json` says.
    pub file: ModelFile,
    /// Parameters in all.
    pub parameters: u64,
    /// The folder to give `--resume` and where its run stands, when the folder (or the model folder it is
    /// the `last/` checkpoint of) holds a resumable checkpoint.
    #[serde(serialize_with = "resumable_json")]
    pub resumable: Option<(PathBuf, Position)>,
}

/// Reads a model folder for `charrnn info --model` (loading and checking its weights too).
pub fn model_summary(dir: Option<&Path>) -> Result<ModelSummary> {
    let dir = resolve_model_dir(dir)?;
    let loaded = load(&dir, tch::Device::Cpu)?;
    let parameters = loaded.model.config().parameter_count().unwrap_or(0);
    // The checkpoint `--resume` reads is `<run>/last`: this folder's, or this folder itself.
    let resumable = if dir.file_name().is_some_and(|n| n == LAST_DIR) && loaded.file.resume.is_some() {
        let run = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Some((run.to_path_buf(), loaded.file.resume.clone().expect("checked").position))
    } else {
        read_model_file(&dir.join(LAST_DIR)).ok().and_then(|f| f.resume).map(|r| (dir.clone(), r.position))
    };
    Ok(ModelSummary { dir, file: loaded.file, parameters, resumable })
}

/// Gathers [`Info`].
pub fn info() -> Info {
    Info {
        charrnn: env!("CARGO_PKG_VERSION"),
        libtorch: env!("CHARRNN_LIBTORCH_VERSION"),
        cuda: CudaStatus::probe(),
        auto_device: DeviceSpec::Auto.resolve().map(device_name).unwrap_or_else(|_| "cpu".into()),
        cpu_threads: tch::get_num_threads(),
        cudnn: tch::Cuda::cudnn_is_available(),
        cpu_bf16: native_bf16(tch::Device::Cpu),
        cuda_capability: tch::Cuda::is_available().then(|| cuda_capability_major(0)).flatten(),
    }
}

/// [`ModelSummary::resumable`] in JSON: `{"dir": …, "position": …}`, or null.
fn resumable_json<S: serde::Serializer>(r: &Option<(PathBuf, Position)>, s: S) -> std::result::Result<S::Ok, S::Error> {
    use serde::Serialize;
    r.as_ref().map(|(dir, position)| serde_json::json!({ "dir": dir, "position": position })).serialize(s)
}
