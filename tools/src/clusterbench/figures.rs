//! The figures of a run from raw samples, and the printed table. Pure.

use serde::Serialize;
use stator_tools::stats::{percentile, Summary};

use super::target::SystemKind;

/// One write as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Completion {
    /// Seconds after the load started.
    pub end_s: f64,
    pub latency_ms: f64,
    pub ok: bool,
}

/// Acknowledged writes per second in each of `windows` windows after `warmup_s`.
pub fn windowed_throughput(
    completions: &[Completion],
    warmup_s: f64,
    window_s: f64,
    windows: usize,
) -> Vec<f64> {
    let mut counts = vec![0u64; windows];
    for c in completions.iter().filter(|c| c.ok && c.end_s >= warmup_s) {
        let slot = ((c.end_s - warmup_s) / window_s).floor() as usize;
        if let Some(count) = counts.get_mut(slot) {
            *count += 1;
        }
    }
    counts.into_iter().map(|n| n as f64 / window_s).collect()
}

/// Latencies of the acknowledged writes that ended inside the measured span.
pub fn measured_latencies(completions: &[Completion], from_s: f64, to_s: f64) -> Vec<f64> {
    completions
        .iter()
        .filter(|c| c.ok && c.end_s >= from_s && c.end_s < to_s)
        .map(|c| c.latency_ms)
        .collect()
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct ThroughputFigure {
    pub windows: usize,
    pub p50: f64,
    /// The slow tail: 99% of windows did at least this many writes/s.
    pub p1: f64,
    pub mean: f64,
}

impl ThroughputFigure {
    pub fn of(per_window: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = per_window.to_vec();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            windows: sorted.len(),
            p50: percentile(&sorted, 0.50),
            p1: percentile(&sorted, 0.01),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WriteFigure {
    pub system: SystemKind,
    pub writers: usize,
    pub throughput: Option<ThroughputFigure>,
    pub throughput_windows: Vec<f64>,
    pub latency_ms: Option<Summary>,
    pub acknowledged: usize,
    pub failed: usize,
    #[serde(skip)]
    pub latencies_ms: Vec<f64>,
}

impl WriteFigure {
    pub fn from_completions(
        system: SystemKind,
        writers: usize,
        completions: &[Completion],
        warmup_s: f64,
        window_s: f64,
        windows: usize,
    ) -> Self {
        let end_s = warmup_s + window_s * windows as f64;
        let throughput_windows = windowed_throughput(completions, warmup_s, window_s, windows);
        let latencies_ms = measured_latencies(completions, warmup_s, end_s);
        let in_span = |c: &&Completion| c.end_s >= warmup_s && c.end_s < end_s;
        Self {
            system,
            writers,
            throughput: ThroughputFigure::of(&throughput_windows),
            throughput_windows,
            latency_ms: Summary::of(latencies_ms.iter().copied()),
            acknowledged: latencies_ms.len(),
            failed: completions.iter().filter(in_span).filter(|c| !c.ok).count(),
            latencies_ms,
        }
    }
}

/// Kill-to-event times of repeated trials; a trial that never saw the event is a failure.
#[derive(Debug, Clone, Serialize)]
pub struct TrialFigure {
    pub system: SystemKind,
    pub what: String,
    pub trials_ms: Vec<f64>,
    pub failed_trials: usize,
    pub summary_ms: Option<Summary>,
    pub target_p99_ms: Option<f64>,
}

impl TrialFigure {
    pub fn new(
        system: SystemKind,
        what: &str,
        trials: &[Option<f64>],
        target_p99_ms: Option<f64>,
    ) -> Self {
        let trials_ms: Vec<f64> = trials.iter().flatten().copied().collect();
        Self {
            system,
            what: what.to_string(),
            summary_ms: Summary::of(trials_ms.iter().copied()),
            failed_trials: trials.len() - trials_ms.len(),
            trials_ms,
            target_p99_ms,
        }
    }
}

fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d > 0.0 => Some(n / d),
        _ => None,
    }
}

/// A table cell: the value with `decimals` digits, or "-" when there is none.
pub fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

/// The table the benchmark prints: writes per concurrency (with stator/etcd ratios where both
/// ran), then failover and detection.
pub fn render_table(writes: &[WriteFigure], trials: &[TrialFigure]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<7} {:>7} {:>10} {:>10} {:>9} {:>9} {:>9} {:>7} {:>11} {:>11}\n",
        "system",
        "writers",
        "w/s p50",
        "w/s p1",
        "lat p50",
        "lat p99",
        "acked",
        "failed",
        "x etcd w/s",
        "x etcd p99"
    ));
    for figure in writes {
        let etcd = writes.iter().find(|f| {
            f.system == SystemKind::Etcd
                && f.writers == figure.writers
                && figure.system != SystemKind::Etcd
        });
        let tput = figure.throughput.map(|t| t.p50);
        let p99 = figure.latency_ms.map(|l| l.p99);
        out.push_str(&format!(
            "{:<7} {:>7} {:>10} {:>10} {:>9} {:>9} {:>9} {:>7} {:>11} {:>11}\n",
            figure.system.name(),
            figure.writers,
            cell(tput, 0),
            cell(figure.throughput.map(|t| t.p1), 0),
            cell(figure.latency_ms.map(|l| l.p50), 2),
            cell(p99, 2),
            figure.acknowledged,
            figure.failed,
            cell(
                etcd.and_then(|e| ratio(tput, e.throughput.map(|t| t.p50))),
                2
            ),
            cell(
                etcd.and_then(|e| ratio(p99, e.latency_ms.map(|l| l.p99))),
                2
            ),
        ));
    }
    out.push('\n');
    out.push_str(&format!(
        "{:<7} {:<10} {:>6} {:>6} {:>9} {:>9} {:>9} {:>10}\n",
        "system", "trial", "ok", "failed", "p50 ms", "p99 ms", "max ms", "target p99"
    ));
    for figure in trials {
        out.push_str(&format!(
            "{:<7} {:<10} {:>6} {:>6} {:>9} {:>9} {:>9} {:>10}\n",
            figure.system.name(),
            figure.what,
            figure.trials_ms.len(),
            figure.failed_trials,
            cell(figure.summary_ms.map(|s| s.p50), 1),
            cell(figure.summary_ms.map(|s| s.p99), 1),
            cell(figure.summary_ms.map(|s| s.max), 1),
            figure
                .target_p99_ms
                .map_or_else(|| "-".to_string(), |t| format!("<= {t:.0}")),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(end_s: f64, latency_ms: f64, ok: bool) -> Completion {
        Completion {
            end_s,
            latency_ms,
            ok,
        }
    }

    #[test]
    fn throughput_counts_only_acknowledged_writes_inside_windows() {
        let completions = [
            done(0.5, 1.0, true), // warm-up, ignored
            done(1.1, 1.0, true),
            done(1.2, 1.0, true),
            done(1.3, 1.0, false), // failed, ignored
            done(2.9, 1.0, true),
            done(3.0, 1.0, true), // after the last window
        ];
        assert_eq!(
            windowed_throughput(&completions, 1.0, 1.0, 2),
            vec![2.0, 1.0]
        );
        assert_eq!(
            windowed_throughput(&completions, 1.0, 0.5, 4),
            vec![4.0, 0.0, 0.0, 2.0]
        );
    }

    #[test]
    fn write_figure_reports_failures_and_latency_of_the_measured_span() {
        let mut completions: Vec<Completion> = (0..100)
            .map(|i| done(1.0 + i as f64 / 100.0, i as f64, true))
            .collect();
        completions.push(done(1.5, 9999.0, false));
        completions.push(done(0.1, 5000.0, true));
        let figure =
            WriteFigure::from_completions(SystemKind::Stator, 16, &completions, 1.0, 1.0, 1);
        assert_eq!(figure.acknowledged, 100);
        assert_eq!(figure.failed, 1);
        let latency = figure.latency_ms.unwrap();
        assert_eq!(
            latency.max, 99.0,
            "warm-up and failed writes stay out of the latency figure"
        );
        assert_eq!(figure.throughput.unwrap().p50, 100.0);
    }

    #[test]
    fn throughput_tail_is_the_slow_end() {
        let mut windows: Vec<f64> = vec![1000.0; 99];
        windows.push(10.0);
        let figure = ThroughputFigure::of(&windows).unwrap();
        assert_eq!(figure.p50, 1000.0);
        assert!(
            figure.p1 < 1000.0,
            "a stalled window must show in the tail: {}",
            figure.p1
        );
        assert!(ThroughputFigure::of(&[]).is_none());
    }

    #[test]
    fn table_shows_ratios_against_etcd_and_failed_trials() {
        let stator = WriteFigure::from_completions(
            SystemKind::Stator,
            1,
            &(0..400)
                .map(|i| done(1.0 + i as f64 / 400.0, 1.0, true))
                .collect::<Vec<_>>(),
            1.0,
            1.0,
            1,
        );
        let etcd = WriteFigure::from_completions(
            SystemKind::Etcd,
            1,
            &(0..100)
                .map(|i| done(1.0 + i as f64 / 100.0, 2.0, true))
                .collect::<Vec<_>>(),
            1.0,
            1.0,
            1,
        );
        let failover = TrialFigure::new(
            SystemKind::Stator,
            "failover",
            &[Some(300.0), None],
            Some(600.0),
        );
        assert_eq!(failover.failed_trials, 1);
        let table = render_table(&[stator, etcd], &[failover]);
        let stator_row = table.lines().find(|l| l.starts_with("stator")).unwrap();
        assert!(
            stator_row.contains("4.00"),
            "throughput ratio 400/100: {stator_row}"
        );
        assert!(stator_row.contains("0.50"), "p99 ratio 1/2: {stator_row}");
        assert!(table.contains("<= 600"));
    }
}
