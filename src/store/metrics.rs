//! The metrics log: one JSON line per epoch in a model folder (`metrics.jsonl`), written as training
//! checkpoints and read by `plot`.
use crate::error::{Error, Result};
use crate::store::layout::METRICS_FILE;
use crate::util::write_bytes_atomic;
use std::path::Path;

/// One epoch in [`METRICS_FILE`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricsLine {
    /// The epoch, from 1.
    pub epoch: usize,
    /// exp of the mean training loss over the epoch's minibatches.
    pub train_perplexity: f64,
    /// Perplexity on the held-out text, with validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_perplexity: Option<f64>,
    /// The epoch's learning rate.
    pub learning_rate: f64,
    /// Mean over the minibatches of the gradient's global norm before clipping.
    pub grad_norm: f64,
    /// Characters trained per second of training.
    pub chars_per_sec: f64,
    /// Training time since the run began (across resumes), in seconds.
    pub elapsed_sec: f64,
}

/// Reads `dir/metrics.jsonl`.
pub fn read_metrics(dir: &Path) -> Result<Vec<MetricsLine>> {
    let path = dir.join(METRICS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        let reason = format!("{} cannot be read ({e}); pass the folder given to train's --out (models trained before charrnn kept this log have none)", path.display());
        Error::config("--model", reason)
    })?;
    text.lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::bad_model(&path, format!("line {}: {e}", i + 1))))
        .collect()
}

/// Replaces `dir/metrics.jsonl` by `lines` (atomically): a new run's log starts afresh, even in a folder that
/// held another run's.
pub(crate) fn replace_metrics(dir: &Path, lines: &[String]) -> Result<()> {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    write_bytes_atomic(&dir.join(METRICS_FILE), text.as_bytes())
}

/// Appends `lines` to `dir/metrics.jsonl` and fsyncs it.
pub(crate) fn append_metrics(dir: &Path, lines: &[String]) -> Result<()> {
    use std::io::Write;
    let path = dir.join(METRICS_FILE);
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| Error::io(&path, e))
}

/// Drops the lines of `dir/metrics.jsonl` after `epoch` (written before a crash, for epochs that a resumed
/// run trains again); the file is replaced atomically.
pub(crate) fn trim_metrics(dir: &Path, epoch: usize) -> Result<()> {
    let path = dir.join(METRICS_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
    let keep: String = text
        .lines()
        .filter(|l| serde_json::from_str::<MetricsLine>(l).is_ok_and(|m| m.epoch <= epoch))
        .map(|l| format!("{l}\n"))
        .collect();
    if keep != text {
        write_bytes_atomic(&path, keep.as_bytes())?;
    }
    Ok(())
}
