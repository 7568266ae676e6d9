//! `charrnn plot`: the perplexity curves of one or more runs as one SVG chart.
use crate::error::{Error, Result};
use crate::store::chart::{write_perplexity_svg, Curve};
use std::path::{Path, PathBuf};

/// Runs `charrnn plot`: the perplexity curves of the runs in `models` as one SVG chart at `out`.
pub fn run_plot(models: &[PathBuf], out: &Path) -> Result<()> {
    if models.is_empty() {
        return Err(Error::config("--model", "give at least one model folder"));
    }
    if !out.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg")) {
        let reason = format!(
            "{} does not end in .svg: plot writes SVG only (open it in a browser, or convert it with a tool such as rsvg-convert)",
            out.display()
        );
        return Err(Error::config("--out", reason));
    }
    let curves = models.iter().map(|m| Curve::of_run(m, m.display().to_string())).collect::<Result<Vec<_>>>()?;
    write_perplexity_svg(&curves, out)
}
