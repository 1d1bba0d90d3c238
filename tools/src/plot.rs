//! PNG plots of a report: latency CDFs (all runs overlaid), throughput over time and TTFT over
//! time (one pair per run).

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::report::{Report, RunReport};
use crate::stats::{percentile, RequestSample, SecondBucket};

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
];
const FONT: &str = "sans-serif";
/// CDF lines are drawn through this many quantiles, whatever the sample count.
const CDF_POINTS: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("no font for plot labels: pass --plot-font PATH to a .ttf file (looked in {0})")]
    NoFont(String),
    #[error("cannot use font {path}: {reason}")]
    BadFont { path: String, reason: String },
    #[error("cannot create plot folder {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
    #[error("drawing {file} failed: {reason}")]
    Draw { file: String, reason: String },
}

/// Registers a font with plotters once per process; later calls reuse the first outcome.
fn ensure_font(explicit: Option<&Path>) -> Result<(), PlotError> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    let outcome = REGISTERED.get_or_init(|| {
        let path = match explicit {
            Some(path) => path.to_path_buf(),
            None => FONT_CANDIDATES
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .ok_or_else(|| format!("NOFONT:{}", FONT_CANDIDATES.join(", ")))?,
        };
        let bytes = std::fs::read(&path).map_err(|e| format!("{}\u{0}{e}", path.display()))?;
        // plotters keeps fonts for the life of the process; this happens once.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FONT, FontStyle::Normal, bytes)
            .map_err(|_| format!("{}\u{0}not a TrueType/OpenType font", path.display()))
    });
    match outcome {
        Ok(()) => Ok(()),
        Err(message) => Err(match message.strip_prefix("NOFONT:") {
            Some(places) => PlotError::NoFont(places.to_string()),
            None => {
                let (path, reason) = message.split_once('\u{0}').unwrap_or((message, ""));
                PlotError::BadFont {
                    path: path.to_string(),
                    reason: reason.to_string(),
                }
            }
        }),
    }
}

/// Writes every plot into `folder`; returns the files written.
pub fn write_plots(
    report: &Report,
    folder: &Path,
    font: Option<&Path>,
) -> Result<Vec<PathBuf>, PlotError> {
    ensure_font(font)?;
    std::fs::create_dir_all(folder).map_err(|source| PlotError::Folder {
        path: folder.display().to_string(),
        source,
    })?;
    let mut written = Vec::new();
    let cdf = folder.join("latency_cdf.png");
    latency_cdfs(report, &cdf)?;
    written.push(cdf);
    for (index, run) in report.runs.iter().enumerate() {
        let suffix = if report.runs.len() > 1 {
            format!("_{}", index + 1)
        } else {
            String::new()
        };
        let throughput = folder.join(format!("throughput{suffix}.png"));
        throughput_over_time(&run.label, &run.time_series, &throughput)?;
        written.push(throughput);
        let ttft = folder.join(format!("ttft_over_time{suffix}.png"));
        ttft_over_time(&run.label, run, &ttft)?;
        written.push(ttft);
    }
    Ok(written)
}

fn drawn<T, E: Display>(file: &Path, result: Result<T, E>) -> Result<T, PlotError> {
    result.map_err(|e| PlotError::Draw {
        file: file.display().to_string(),
        reason: e.to_string(),
    })
}

/// (value, cumulative fraction) at evenly spaced quantiles.
fn cdf_points(mut values: Vec<f64>) -> Vec<(f64, f64)> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return Vec::new();
    }
    values.sort_by(f64::total_cmp);
    (0..=CDF_POINTS)
        .map(|k| {
            let q = k as f64 / CDF_POINTS as f64;
            (percentile(&values, q), q)
        })
        .collect()
}

fn latency_cdfs(report: &Report, file: &Path) -> Result<(), PlotError> {
    type Extract = fn(&RequestSample) -> Vec<f64>;
    let panels: [(&str, Extract); 3] = [
        ("TTFT (ms)", |s| s.ttft_ms.into_iter().collect()),
        ("inter-token latency (ms)", |s| s.itls_ms().collect()),
        ("end-to-end latency (ms)", |s| {
            s.e2e_ms.into_iter().collect()
        }),
    ];
    let root = BitMapBackend::new(file, (1500, 480)).into_drawing_area();
    drawn(file, root.fill(&WHITE))?;
    for (area, (title, extract)) in root.split_evenly((1, 3)).iter().zip(panels) {
        let lines: Vec<(String, Vec<(f64, f64)>)> = report
            .runs
            .iter()
            .map(|run| {
                let values = run
                    .samples
                    .iter()
                    .filter(|s| s.ok())
                    .flat_map(extract)
                    .collect();
                (run.label.clone(), cdf_points(values))
            })
            .collect();
        let x_max = lines
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
            .fold(0.0, f64::max);
        let mut chart = drawn(
            file,
            ChartBuilder::on(area)
                .caption(format!("CDF of {title}"), (FONT, 18))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(44)
                .build_cartesian_2d(0.0..(x_max * 1.05).max(1.0), 0.0..1.0),
        )?;
        drawn(
            file,
            chart
                .configure_mesh()
                .x_desc(title)
                .y_desc("fraction of samples")
                .label_style((FONT, 13))
                .draw(),
        )?;
        for (index, (label, points)) in lines.into_iter().enumerate() {
            let color = Palette99::pick(index).to_rgba();
            let series = drawn(
                file,
                chart.draw_series(LineSeries::new(points, color.stroke_width(2))),
            )?;
            series.label(label).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        }
        drawn(
            file,
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font((FONT, 13))
                .draw(),
        )?;
    }
    drawn(file, root.present())
}

/// A legend name, a colour and the points of one line.
type NamedLine = (&'static str, RGBColor, Vec<(f64, f64)>);

/// A per-second figure belongs to the middle of its second.
fn mid(bucket: &SecondBucket) -> f64 {
    bucket.second as f64 + 0.5
}

fn throughput_over_time(
    label: &str,
    series: &[SecondBucket],
    file: &Path,
) -> Result<(), PlotError> {
    let root = BitMapBackend::new(file, (1100, 700)).into_drawing_area();
    drawn(file, root.fill(&WHITE))?;
    let (top, bottom) = root.split_vertically(350);
    let seconds = series.len().max(1) as f64;
    let panels: [(&DrawingArea<_, _>, String, Vec<NamedLine>); 2] = [
        (
            &top,
            format!("output tokens per second: {label}"),
            vec![(
                "tokens/s",
                BLUE,
                series.iter().map(|b| (mid(b), b.output_tokens)).collect(),
            )],
        ),
        (
            &bottom,
            "requests per second and in flight".to_string(),
            vec![
                (
                    "completed/s",
                    GREEN,
                    series
                        .iter()
                        .map(|b| (mid(b), b.completed as f64))
                        .collect(),
                ),
                (
                    "errors/s",
                    RED,
                    series.iter().map(|b| (mid(b), b.errors as f64)).collect(),
                ),
                (
                    "in flight",
                    MAGENTA,
                    series
                        .iter()
                        .map(|b| (mid(b), b.in_flight as f64))
                        .collect(),
                ),
            ],
        ),
    ];
    for (area, caption, lines) in panels {
        let y_max = lines
            .iter()
            .flat_map(|(_, _, p)| p.iter().map(|(_, y)| *y))
            .fold(0.0, f64::max);
        let mut chart = drawn(
            file,
            ChartBuilder::on(area)
                .caption(caption, (FONT, 18))
                .margin(12)
                .x_label_area_size(34)
                .y_label_area_size(54)
                .build_cartesian_2d(0.0..seconds, 0.0..(y_max * 1.1).max(1.0)),
        )?;
        drawn(
            file,
            chart
                .configure_mesh()
                .x_desc("seconds since start (per-second buckets)")
                .label_style((FONT, 13))
                .draw(),
        )?;
        for (name, color, points) in lines {
            let series = drawn(
                file,
                chart.draw_series(LineSeries::new(points, color.stroke_width(2))),
            )?;
            series.label(name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        }
        drawn(
            file,
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font((FONT, 13))
                .draw(),
        )?;
    }
    drawn(file, root.present())
}

fn ttft_over_time(label: &str, run: &RunReport, file: &Path) -> Result<(), PlotError> {
    let samples = &run.samples;
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| s.ttft_ms.map(|ttft| (s.start_s, ttft)))
        .collect();
    let x_max = points.iter().map(|(x, _)| *x).fold(0.0, f64::max);
    let y_max = points.iter().map(|(_, y)| *y).fold(0.0, f64::max);
    let root = BitMapBackend::new(file, (1100, 450)).into_drawing_area();
    drawn(file, root.fill(&WHITE))?;
    let mut chart = drawn(
        file,
        ChartBuilder::on(&root)
            .caption(format!("TTFT by send time: {label}"), (FONT, 18))
            .margin(12)
            .x_label_area_size(34)
            .y_label_area_size(54)
            .build_cartesian_2d(0.0..(x_max * 1.02).max(1.0), 0.0..(y_max * 1.1).max(1.0)),
    )?;
    drawn(
        file,
        chart
            .configure_mesh()
            .x_desc("request sent at (s since start)")
            .y_desc("TTFT (ms)")
            .label_style((FONT, 13))
            .draw(),
    )?;
    let dots = drawn(
        file,
        chart.draw_series(
            points
                .iter()
                .map(|p| Circle::new(*p, 2, BLUE.mix(0.6).filled())),
        ),
    )?;
    dots.label("one request (by send time)")
        .legend(|(x, y)| Circle::new((x + 9, y), 3, BLUE.filled()));
    // The mean is placed by first-token time, so it shows when slow first tokens arrived.
    let means = run
        .time_series
        .iter()
        .filter_map(|b| b.ttft_mean_ms.map(|m| (mid(b), m)));
    let line = drawn(
        file,
        chart.draw_series(LineSeries::new(means, RED.stroke_width(2))),
    )?;
    line.label("mean by first-token second")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.stroke_width(2)));
    drawn(
        file,
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FONT, 13))
            .draw(),
    )?;
    drawn(file, root.present())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_points_are_monotone_and_bounded() {
        let points = cdf_points((0..10_000).rev().map(f64::from).collect());
        assert_eq!(points.len(), CDF_POINTS + 1);
        assert_eq!(points[0], (0.0, 0.0));
        assert_eq!(points[CDF_POINTS], (9999.0, 1.0));
        assert!(points
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
        assert!(cdf_points(vec![f64::NAN]).is_empty());
    }
}
