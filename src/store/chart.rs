//! Perplexity charts: training and validation perplexity per epoch of one or more runs, on a log scale, as
//! SVG (drawn with plotters).
use crate::error::{Error, Result};
use crate::store::metrics::read_metrics;
use crate::util::write_bytes_atomic;
use plotters::prelude::*;
use std::path::Path;

/// One run's curves: a label for the legend and its epochs' `(epoch, train, validation)` perplexities.
#[derive(Debug, Clone)]
pub struct Curve {
    /// Shown in the legend.
    pub label: String,
    /// `(epoch, training perplexity, validation perplexity if any)`, by epoch.
    pub points: Vec<(usize, f64, Option<f64>)>,
}

impl Curve {
    /// The curve of the run in the model folder `dir` (from its metrics log), labelled `label`.
    pub fn of_run(dir: &Path, label: String) -> Result<Curve> {
        let points = read_metrics(dir)?.into_iter().map(|m| (m.epoch, m.train_perplexity, m.val_perplexity)).collect();
        Ok(Curve { label, points })
    }
}

/// Colours of successive runs.
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// Draws `curves` as an SVG document: x the epoch, y the perplexity on a log scale; a thick line for
/// training and a thin, dotted one for validation perplexity, one colour per run, with a legend.
pub fn perplexity_svg(curves: &[Curve]) -> Result<String> {
    let points = || curves.iter().flat_map(|c| c.points.iter());
    let values = || points().flat_map(|&(_, t, v)| std::iter::once(t).chain(v)).filter(|x| x.is_finite() && *x > 0.0);
    let (Some(lo), Some(hi)) = (values().reduce(f64::min), values().reduce(f64::max)) else {
        return Err(Error::config("--model", "no epochs with a finite perplexity to plot"));
    };
    let last_epoch = points().map(|p| p.0).max().unwrap_or(1).max(2);
    let first_epoch = points().map(|p| p.0).min().unwrap_or(1).min(last_epoch - 1);
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, (800, 500)).into_drawing_area();
        let draw_error = |e: &dyn std::fmt::Display| Error::config("plot", format!("drawing failed: {e}"));
        area.fill(&WHITE).map_err(|e| draw_error(&e))?;
        let mut chart = ChartBuilder::on(&area)
            .caption("perplexity per epoch", ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(first_epoch..last_epoch, (lo * 0.9..hi * 1.1).log_scale())
            .map_err(|e| draw_error(&e))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("perplexity (log scale)")
            .y_label_formatter(&|v| if *v >= 10.0 { format!("{v:.0}") } else { format!("{v:.2}") })
            .draw()
            .map_err(|e| draw_error(&e))?;
        for (i, curve) in curves.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let train: Vec<(usize, f64)> =
                curve.points.iter().filter(|p| p.1.is_finite()).map(|p| (p.0, p.1)).collect();
            chart
                .draw_series(LineSeries::new(train, color.stroke_width(2)))
                .map_err(|e| draw_error(&e))?
                .label(format!("{} train", curve.label))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            let val: Vec<(usize, f64)> = curve.points.iter().filter_map(|p| p.2.map(|v| (p.0, v))).collect();
            if !val.is_empty() {
                let faint = color.mix(0.6);
                chart
                    .draw_series(LineSeries::new(val, faint.stroke_width(1)).point_size(3))
                    .map_err(|e| draw_error(&e))?
                    .label(format!("{} validation", curve.label))
                    .legend(move |(x, y)| Circle::new((x + 10, y), 3, faint.filled()));
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| draw_error(&e))?;
        area.present().map_err(|e| draw_error(&e))?;
    }
    Ok(svg)
}

/// Writes [`perplexity_svg`] of `curves` to `path`, atomically.
pub fn write_perplexity_svg(curves: &[Curve], path: &Path) -> Result<()> {
    let svg = perplexity_svg(curves)?;
    write_bytes_atomic(path, svg.as_bytes())
}
