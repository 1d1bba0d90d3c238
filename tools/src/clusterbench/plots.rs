//! CDF plots of the run: write latency per concurrency, failover and detection times.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use stator_tools::stats::percentile;

const FONT: &str = "sans-serif";
const FONT_FILES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];
const CDF_POINTS: usize = 400;

pub fn register_font(explicit: Option<&Path>) -> Result<()> {
    let path: PathBuf = match explicit {
        Some(p) => p.to_path_buf(),
        None => FONT_FILES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                anyhow!("no font for plot labels; pass --plot-font (looked in {FONT_FILES:?})")
            })?,
    };
    let bytes =
        std::fs::read(&path).with_context(|| format!("cannot read font {}", path.display()))?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FONT, FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{} is not a TrueType/OpenType font", path.display()))
}

fn cdf(values: &[f64]) -> Vec<(f64, f64)> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return Vec::new();
    }
    sorted.sort_by(f64::total_cmp);
    (0..=CDF_POINTS)
        .map(|i| {
            let q = i as f64 / CDF_POINTS as f64;
            (percentile(&sorted, q), q)
        })
        .collect()
}

/// One CDF chart with a line per series; the x axis stops at the largest p99.9 so one outlier
/// does not flatten the curves.
pub fn cdf_chart(
    file: &Path,
    title: &str,
    x_label: &str,
    series: &[(String, &[f64])],
) -> Result<()> {
    let lines: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(name, v)| (name.clone(), cdf(v)))
        .collect();
    let x_max = series
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(_, v)| {
            let mut sorted = v.to_vec();
            sorted.sort_by(f64::total_cmp);
            percentile(&sorted, 0.999)
        })
        .fold(0.0, f64::max);
    let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = BitMapBackend::new(file, (900, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 20))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..(x_max * 1.05).max(1e-3), 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc("fraction")
            .label_style((FONT, 14))
            .draw()?;
        for (index, (name, points)) in lines.into_iter().enumerate() {
            let color = Palette99::pick(index).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    points.into_iter().filter(|(x, _)| *x <= x_max * 1.05),
                    color.stroke_width(2),
                ))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("drawing {} failed: {e}", file.display()))
}
