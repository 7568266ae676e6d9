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
    let ticks = log_ticks(lo * 0.9, hi * 1.1);
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
            .build_cartesian_2d(first_epoch..last_epoch, (lo * 0.9..hi * 1.1).log_scale().with_key_points(ticks))
            .map_err(|e| draw_error(&e))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("perplexity (log scale)")
            .y_label_formatter(&|v| tick_label(*v))
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

/// Where a log axis from `lo` to `hi` (both positive) is labelled: at least 3 round values inside it. The
/// coarsest of 1, 2 and 5 times a power of ten, then every digit times one, that gives 3, else (a narrow
/// range) evenly spaced values 1, 2 or 5 times a power of ten apart.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (first, last) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let inside = |mantissas: &[f64]| -> Vec<f64> {
        (first..=last)
            .flat_map(|p| mantissas.iter().map(move |m| m * 10f64.powi(p)))
            .filter(|v| (lo..=hi).contains(v))
            .collect()
    };
    for mantissas in [&[1.0][..], &[1.0, 2.0, 5.0], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]] {
        let ticks = inside(mantissas);
        if ticks.len() >= 3 {
            return ticks;
        }
    }
    // About 5 steps across the range, the step rounded down to 1, 2 or 5 times a power of ten.
    let raw = (hi - lo) / 5.0;
    let power = 10f64.powi(raw.log10().floor() as i32);
    let step = [5.0, 2.0, 1.0].iter().map(|m| m * power).find(|s| *s <= raw * (1.0 + 1e-9)).unwrap_or(power);
    let start = (lo / step).ceil() as i64;
    (start..).map(|i| i as f64 * step).take_while(|v| *v <= hi).collect()
}

/// A tick's label: the value with no more digits than it has (4 significant at most).
fn tick_label(v: f64) -> String {
    let decimals = (3 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
    let text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// Writes [`perplexity_svg`] of `curves` to `path`, atomically.
pub fn write_perplexity_svg(curves: &[Curve], path: &Path) -> Result<()> {
    let svg = perplexity_svg(curves)?;
    write_bytes_atomic(path, svg.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers written as the y axis's labels (the text elements left of the plot that parse as numbers).
    fn y_labels(svg: &str) -> Vec<f64> {
        let doc = roxmltree::Document::parse(svg).unwrap();
        let text = doc.descendants().filter(|n| n.has_tag_name("text"));
        let left = text.filter(|n| n.attribute("x").and_then(|x| x.parse::<f64>().ok()).is_some_and(|x| x < 80.0));
        left.filter_map(|n| n.text()?.trim().parse().ok()).collect()
    }

    #[test]
    fn the_y_axis_is_labelled_on_any_range() {
        // Perplexities from 4 to 7 (no power of ten inside), from 3.95 to 4.05, and from 2 to 900.
        for (lo, hi) in [(4.0, 7.0), (3.95, 4.05), (2.0, 900.0)] {
            let points = (1..=10).map(|e| (e, lo + (hi - lo) * (10 - e) as f64 / 9.0, None)).collect();
            let svg = perplexity_svg(&[Curve { label: "run".into(), points }]).unwrap();
            let labels = y_labels(&svg);
            let inside = labels.iter().filter(|v| (lo * 0.9..=hi * 1.1).contains(*v)).count();
            assert!(inside >= 3, "{lo}..{hi}: labels {labels:?}");
        }
        // Worked by hand: 4 to 7 has no power of ten and no 2 or 5 times one but 5; its digits are 4, 5, 6, 7.
        assert_eq!(log_ticks(4.0, 7.0), vec![4.0, 5.0, 6.0, 7.0]);
        assert_eq!(log_ticks(2.0, 900.0), vec![2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]);
        assert_eq!(
            log_ticks(3.95, 4.05).iter().map(|v| tick_label(*v)).collect::<Vec<_>>(),
            ["3.96", "3.98", "4", "4.02", "4.04"]
        );
        assert_eq!((tick_label(250.0), tick_label(0.125)), ("250".to_string(), "0.125".to_string()));
    }
}
