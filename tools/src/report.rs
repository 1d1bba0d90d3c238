//! The JSON report, the end-of-run table and the side-by-side comparison of two reports.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::stats::{RequestSample, RunSummary, SecondBucket, Summary};
use crate::workload::LoadShape;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    /// The exact command line, program name first.
    pub command_line: Vec<String>,
    /// Wall-clock start (RFC 3339, UTC); every other time is on the monotonic clock.
    pub started_at: String,
    /// The URL requests went to.
    pub target: String,
    /// Every run option (the API key left out).
    pub config: serde_json::Value,
    /// How prompt lengths were produced, in words.
    pub prompt_lengths: String,
    pub runs: Vec<RunReport>,
    /// For sweeps with SLOs: the highest rate whose SLO attainment reached the target.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_sustained_rate: Option<f64>,
}

/// One load level: a whole run, or one step of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub label: String,
    pub shape: LoadShape,
    pub summary: RunSummary,
    pub time_series: Vec<SecondBucket>,
    pub samples: Vec<RequestSample>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read report {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a stator-bench report: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("cannot write report {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

impl Report {
    pub fn load(path: &Path) -> Result<Report, ReportError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReportError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ReportError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    pub fn save(&self, path: &Path) -> Result<(), ReportError> {
        let write_error = |source| ReportError::Write {
            path: path.display().to_string(),
            source,
        };
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| write_error(std::io::Error::other(e)))?;
        std::fs::write(path, text).map_err(write_error)
    }

    pub fn failed_requests(&self) -> usize {
        self.runs
            .iter()
            .map(|r| r.summary.requests - r.summary.succeeded)
            .sum()
    }
}

/// The highest rate among `steps` (rate, attainment) whose attainment reached `target`.
pub fn max_sustained_rate(steps: &[(f64, f64)], target: f64) -> Option<f64> {
    steps
        .iter()
        .filter(|(_, attainment)| *attainment >= target)
        .map(|(rate, _)| *rate)
        .fold(None, |best, rate| {
            Some(best.map_or(rate, |b: f64| b.max(rate)))
        })
}

/// A metric row: name and how to read it from a run summary.
struct Row {
    name: &'static str,
    value: fn(&RunSummary) -> Option<f64>,
}

fn latency_rows() -> Vec<Row> {
    macro_rules! stat {
        ($name:literal, $field:ident, $stat:ident) => {
            Row {
                name: $name,
                value: |s| s.$field.map(|x: Summary| x.$stat),
            }
        };
    }
    vec![
        stat!("TTFT mean (ms)", ttft_ms, mean),
        stat!("TTFT p50 (ms)", ttft_ms, p50),
        stat!("TTFT p90 (ms)", ttft_ms, p90),
        stat!("TTFT p99 (ms)", ttft_ms, p99),
        stat!("TTFT max (ms)", ttft_ms, max),
        stat!("ITL mean (ms)", itl_ms, mean),
        stat!("ITL p50 (ms)", itl_ms, p50),
        stat!("ITL p90 (ms)", itl_ms, p90),
        stat!("ITL p99 (ms)", itl_ms, p99),
        stat!("ITL max (ms)", itl_ms, max),
        stat!("TPOT mean (ms)", tpot_ms, mean),
        stat!("TPOT p50 (ms)", tpot_ms, p50),
        stat!("TPOT p90 (ms)", tpot_ms, p90),
        stat!("TPOT p99 (ms)", tpot_ms, p99),
        stat!("TPOT max (ms)", tpot_ms, max),
        stat!("E2E mean (ms)", e2e_ms, mean),
        stat!("E2E p50 (ms)", e2e_ms, p50),
        stat!("E2E p90 (ms)", e2e_ms, p90),
        stat!("E2E p99 (ms)", e2e_ms, p99),
        stat!("E2E max (ms)", e2e_ms, max),
        stat!("send lateness p99 (ms)", lateness_ms, p99),
        stat!("send lateness max (ms)", lateness_ms, max),
    ]
}

fn rows() -> Vec<Row> {
    let mut rows = vec![
        Row {
            name: "requests",
            value: |s| Some(s.requests as f64),
        },
        Row {
            name: "succeeded",
            value: |s| Some(s.succeeded as f64),
        },
        Row {
            name: "failed",
            value: |s| Some((s.requests - s.succeeded) as f64),
        },
        Row {
            name: "duration (s)",
            value: |s| Some(s.duration_s),
        },
        Row {
            name: "request throughput (req/s)",
            value: |s| Some(s.request_throughput),
        },
        Row {
            name: "output throughput (tok/s)",
            value: |s| Some(s.output_token_throughput),
        },
        Row {
            name: "total throughput (tok/s)",
            value: |s| Some(s.total_token_throughput),
        },
        Row {
            name: "prompt tokens",
            value: |s| Some(s.prompt_tokens as f64),
        },
        Row {
            name: "output tokens",
            value: |s| Some(s.output_tokens as f64),
        },
        Row {
            name: "goodput (req/s)",
            value: |s| s.goodput.map(|g| g.requests_per_s),
        },
        Row {
            name: "SLO attainment",
            value: |s| s.goodput.map(|g| g.attainment),
        },
    ];
    rows.extend(latency_rows());
    rows
}

fn number(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(v) if v == v.trunc() && v.abs() < 1e12 => format!("{v:.0}"),
        Some(v) if v.abs() >= 100.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    }
}

/// The end-of-run table: one column per run (sweep steps side by side).
pub fn render_table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "stator-bench {} -> {}", report.version, report.target);
    let _ = writeln!(out, "prompts: {}", report.prompt_lengths);
    let header: Vec<String> = report.runs.iter().map(|r| r.label.clone()).collect();
    let body: Vec<(String, Vec<String>)> = rows()
        .iter()
        .map(|row| {
            let cells = report
                .runs
                .iter()
                .map(|r| number((row.value)(&r.summary)))
                .collect();
            (row.name.to_string(), cells)
        })
        .collect();
    write_grid(&mut out, "metric", &header, &body);
    for run in &report.runs {
        for (kind, count) in &run.summary.errors_by_kind {
            let _ = writeln!(out, "errors [{}] {kind}: {count}", run.label);
        }
        if let Some(first) = run.samples.iter().find_map(|s| s.error.as_ref()) {
            let _ = writeln!(out, "first error [{}]: {first}", run.label);
        }
    }
    if let Some(rate) = report.max_sustained_rate {
        let _ = writeln!(
            out,
            "highest rate meeting the SLO attainment target: {rate} req/s"
        );
    }
    out
}

/// Two reports side by side, run by run, with B/A ratios.
pub fn render_comparison(a: &Report, b: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "A: {} ({})", a.target, a.started_at);
    let _ = writeln!(out, "B: {} ({})", b.target, b.started_at);
    if a.runs.len() != b.runs.len() {
        let _ = writeln!(
            out,
            "note: A has {} runs and B has {}; comparing the first {}",
            a.runs.len(),
            b.runs.len(),
            a.runs.len().min(b.runs.len())
        );
    }
    if a.max_sustained_rate.is_some() || b.max_sustained_rate.is_some() {
        let show = |rate: Option<f64>| rate.map_or("-".to_string(), |r| format!("{r} req/s"));
        let _ = writeln!(
            out,
            "highest rate meeting the SLO attainment target: A {}, B {}",
            show(a.max_sustained_rate),
            show(b.max_sustained_rate)
        );
    }
    for (run_a, run_b) in a.runs.iter().zip(&b.runs) {
        let _ = writeln!(out, "\n[{}] vs [{}]", run_a.label, run_b.label);
        let body: Vec<(String, Vec<String>)> = rows()
            .iter()
            .map(|row| {
                let (va, vb) = ((row.value)(&run_a.summary), (row.value)(&run_b.summary));
                let ratio = match (va, vb) {
                    (Some(x), Some(y)) if x != 0.0 => format!("{:.3}x", y / x),
                    _ => "-".into(),
                };
                (row.name.to_string(), vec![number(va), number(vb), ratio])
            })
            .collect();
        write_grid(
            &mut out,
            "metric",
            &["A".into(), "B".into(), "B/A".into()],
            &body,
        );
    }
    out
}

fn write_grid(out: &mut String, corner: &str, header: &[String], body: &[(String, Vec<String>)]) {
    let name_width = body
        .iter()
        .map(|(n, _)| n.len())
        .chain([corner.len()])
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            body.iter()
                .map(|(_, cells)| cells[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |out: &mut String, name: &str, cells: &[String]| {
        let _ = write!(out, "{name:<name_width$}");
        for (cell, width) in cells.iter().zip(&widths) {
            let _ = write!(out, "  {cell:>width$}");
        }
        out.push('\n');
    };
    line(out, corner, header);
    let total = name_width + widths.iter().map(|w| w + 2).sum::<usize>();
    let _ = writeln!(out, "{}", "-".repeat(total));
    for (name, cells) in body {
        line(out, name, cells);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{summarize, tests::sample, time_series, Slo};

    fn report(ttft_scale: f64) -> Report {
        let samples = vec![
            sample(0, 0.0, &[100.0 * ttft_scale, 150.0 * ttft_scale]),
            sample(1, 0.5, &[200.0 * ttft_scale, 260.0 * ttft_scale]),
        ];
        let slo = Slo {
            ttft_ms: Some(150.0),
            itl_ms: None,
        };
        Report {
            tool: "stator-bench".into(),
            version: "0".into(),
            command_line: vec!["stator-bench".into(), "run".into()],
            started_at: "2026-01-01T00:00:00Z".into(),
            target: "http://x/v1/chat/completions".into(),
            config: serde_json::json!({"rate": 2.0}),
            prompt_lengths: "words".into(),
            runs: vec![RunReport {
                label: "rate=2/s (poisson)".into(),
                shape: LoadShape::Rate {
                    rate: 2.0,
                    arrival: crate::schedule::Arrival::Poisson,
                },
                summary: summarize(&samples, Some(slo)),
                time_series: time_series(&samples),
                samples,
            }],
            max_sustained_rate: None,
        }
    }

    #[test]
    fn json_round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let original = report(1.0);
        original.save(&path).unwrap();
        let loaded = Report::load(&path).unwrap();
        // Chunk timestamps stay in memory only; everything else survives.
        assert_eq!(loaded.runs[0].summary, original.runs[0].summary);
        assert_eq!(loaded.runs[0].samples[1].ttft_ms, Some(200.0));
        assert!(loaded.runs[0].samples[0].chunk_offsets_ms.is_empty());
        assert_eq!(loaded.command_line, original.command_line);
    }

    #[test]
    fn loading_a_non_report_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        std::fs::write(&path, "{\"hello\": 1}").unwrap();
        let err = Report::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("x.json") && err.contains("not a stator-bench report"),
            "{err}"
        );
    }

    #[test]
    fn table_shows_figures_and_goodput() {
        let table = render_table(&report(1.0));
        assert!(table.contains("rate=2/s (poisson)"));
        let ttft_line = table
            .lines()
            .find(|l| l.starts_with("TTFT mean (ms)"))
            .unwrap();
        assert!(ttft_line.trim_end().ends_with("150"), "{ttft_line}");
        let goodput_line = table
            .lines()
            .find(|l| l.starts_with("SLO attainment"))
            .unwrap();
        assert!(goodput_line.trim_end().ends_with("0.500"), "{goodput_line}");
    }

    #[test]
    fn comparison_prints_b_over_a_ratios() {
        let mut sweep = report(2.0);
        sweep.max_sustained_rate = Some(2.0);
        let text = render_comparison(&report(1.0), &sweep);
        assert!(text.contains("A -, B 2 req/s"), "{text}");
        let line = text
            .lines()
            .find(|l| l.starts_with("TTFT p50 (ms)"))
            .unwrap();
        assert!(
            line.contains("150") && line.contains("300") && line.trim_end().ends_with("2.000x"),
            "{line}"
        );
    }

    #[test]
    fn max_sustained_rate_is_the_highest_passing_step() {
        let steps = [(1.0, 0.99), (2.0, 0.95), (4.0, 0.7), (8.0, 0.2)];
        assert_eq!(max_sustained_rate(&steps, 0.9), Some(2.0));
        assert_eq!(max_sustained_rate(&steps, 0.999), None);
    }
}
