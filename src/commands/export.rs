//! `charrnn export`: a model folder written as files that run without charrnn: an ONNX model, and one HTML
//! page that generates text in the browser.
use crate::error::{Error, Result};
use crate::store::html::export_html;
use crate::store::layout::resolve_model_dir;
use crate::store::load::load;
use crate::store::onnx::export_onnx;
use std::path::{Path, PathBuf};

/// Everything `charrnn export` needs.
#[derive(Debug, Clone, Default)]
pub struct ExportJob {
    /// The model folder; `None` means the last one trained from this folder.
    pub model: Option<PathBuf>,
    /// Where to write the ONNX model ([`crate::store::export_onnx`]), if anywhere.
    pub onnx: Option<PathBuf>,
    /// Where to write the HTML page ([`crate::store::export_html`]), if anywhere.
    pub html: Option<PathBuf>,
}

/// One file `charrnn export` wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The file.
    pub file: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
}

/// What `charrnn export` did.
#[derive(Debug, Clone)]
pub struct ExportOutcome {
    /// The model folder read.
    pub model: PathBuf,
    /// One line about the model (also inside each file).
    pub description: String,
    /// The files written, in the order asked for (ONNX, then HTML).
    pub files: Vec<Exported>,
}

/// Refuses `path` for `flag` unless it ends in one of `extensions`.
fn check_extension(flag: &'static str, path: &Path, extensions: &[&str], what: &str) -> Result<()> {
    if path.extension().is_some_and(|e| extensions.iter().any(|x| e.eq_ignore_ascii_case(x))) {
        return Ok(());
    }
    Err(Error::config(flag, format!("{} does not end in .{}, {what}", path.display(), extensions[0])))
}

/// Runs `charrnn export`: reads the model folder on the CPU and writes each file the job asks for, each whole
/// or not at all.
pub fn run_export(job: &ExportJob) -> Result<ExportOutcome> {
    if job.onnx.is_none() && job.html.is_none() {
        return Err(Error::config("--onnx", "say what to write: --onnx FILE, --html FILE or both"));
    }
    if let Some(f) = &job.onnx {
        check_extension("--onnx", f, &["onnx"], "the extension ONNX runtimes and tools expect")?;
    }
    if let Some(f) = &job.html {
        check_extension("--html", f, &["html", "htm"], "so that a browser opens it as a page")?;
    }
    let dir = resolve_model_dir(job.model.as_deref())?;
    let loaded = load(&dir, tch::Device::Cpu)?;
    let mut files = Vec::new();
    if let Some(f) = &job.onnx {
        files.push(Exported { file: f.clone(), bytes: export_onnx(&loaded.model, &loaded.file, f)? });
    }
    if let Some(f) = &job.html {
        files.push(Exported { file: f.clone(), bytes: export_html(&loaded.model, &loaded.file, f)? });
    }
    Ok(ExportOutcome { model: dir, description: loaded.file.describe(), files })
}
