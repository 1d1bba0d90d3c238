//! The figures of both benchmarks from raw samples, and the printed tables. Pure.

use serde::Serialize;
use stator_tools::stats::Summary;

use super::failover::TrialRecord;
use crate::clusterbench::figures::{
    cell, measured_latencies, windowed_throughput, Completion, ThroughputFigure,
};

pub const ADMISSIONS_TARGET_PER_S: f64 = 5000.0;
pub const REASSIGNMENT_TARGET_P99_MS: f64 = 400.0;

/// Lease admissions at one level of concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct AdmissionFigure {
    pub in_flight: usize,
    /// Grants committed per window (the admissions/s of the level).
    pub throughput: Option<ThroughputFigure>,
    pub throughput_windows: Vec<f64>,
    /// `write(GrantLease)` from call to committed and applied on the frontend's peer.
    pub grant_latency_ms: Option<Summary>,
    pub release_latency_ms: Option<Summary>,
    pub admitted: usize,
    pub failed: usize,
    /// Grants + releases acknowledged per log entry over the whole level (coalescing).
    pub commands_per_entry: Option<f64>,
    pub refusals: Vec<String>,
    #[serde(skip)]
    pub grant_latencies_ms: Vec<f64>,
}

impl AdmissionFigure {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_flight: usize,
        grants: &[Completion],
        releases: &[Completion],
        log_entries: usize,
        refusals: Vec<String>,
        warmup_s: f64,
        window_s: f64,
        windows: usize,
    ) -> Self {
        let end_s = warmup_s + window_s * windows as f64;
        let throughput_windows = windowed_throughput(grants, warmup_s, window_s, windows);
        let grant_latencies_ms = measured_latencies(grants, warmup_s, end_s);
        let release_latencies = measured_latencies(releases, warmup_s, end_s);
        let in_span = |c: &&Completion| c.end_s >= warmup_s && c.end_s < end_s;
        let acknowledged = grants.iter().chain(releases).filter(|c| c.ok).count();
        Self {
            in_flight,
            throughput: ThroughputFigure::of(&throughput_windows),
            throughput_windows,
            grant_latency_ms: Summary::of(grant_latencies_ms.iter().copied()),
            release_latency_ms: Summary::of(release_latencies),
            admitted: grant_latencies_ms.len(),
            failed: grants
                .iter()
                .chain(releases)
                .filter(in_span)
                .filter(|c| !c.ok)
                .count(),
            commands_per_entry: (log_entries > 0).then(|| acknowledged as f64 / log_entries as f64),
            refusals,
            grant_latencies_ms,
        }
    }
}

/// Detection → reassignment over every trial.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverFigure {
    pub trials: usize,
    /// Trials where the frontend never saw the victim down within the deadline.
    pub undetected_trials: usize,
    pub reassignment_ms: Option<Summary>,
    pub detector_silent_ms: Option<Summary>,
    /// Streams moved for a reason a dead owner causes; the next-token figures use these.
    pub migrated_streams: usize,
    /// Streams moved after the kill for another reason (e.g. a token index gap from a live
    /// worker), with their reasons: not part of the kill's figures.
    pub other_migrations: Vec<String>,
    /// Migrated streams that never received another token.
    pub migrated_without_next_token: usize,
    pub next_token_ms: Option<Summary>,
    pub resume_ms: Option<Summary>,
    pub prefill_tokens: Option<Summary>,
    pub streams: usize,
    pub token_exact_streams: usize,
    pub mismatched_streams: usize,
    pub failed_streams: usize,
    pub spurious_downs: usize,
    #[serde(skip)]
    pub reassignment_samples: Vec<f64>,
    #[serde(skip)]
    pub next_token_samples: Vec<f64>,
    #[serde(skip)]
    pub resume_samples: Vec<f64>,
}

impl FailoverFigure {
    pub fn of(trials: &[TrialRecord]) -> Self {
        let reassignment_samples: Vec<f64> =
            trials.iter().filter_map(|t| t.reassignment_ms).collect();
        let migrated: Vec<_> = trials
            .iter()
            .flat_map(|t| &t.migrated)
            .filter(|m| m.caused_by_kill)
            .collect();
        let other_migrations = trials
            .iter()
            .flat_map(|t| {
                t.migrated
                    .iter()
                    .filter(|m| !m.caused_by_kill)
                    .map(|m| format!("trial {}: stream {} ({})", t.trial, m.stream, m.reason))
            })
            .collect();
        let next_token_samples: Vec<f64> =
            migrated.iter().filter_map(|m| m.next_token_ms).collect();
        let resume_samples: Vec<f64> = migrated.iter().filter_map(|m| m.resume_ms).collect();
        Self {
            trials: trials.len(),
            undetected_trials: trials.len() - reassignment_samples.len(),
            reassignment_ms: Summary::of(reassignment_samples.iter().copied()),
            detector_silent_ms: Summary::of(
                trials
                    .iter()
                    .filter_map(|t| t.detector_silent_ms.map(|v| v as f64)),
            ),
            migrated_streams: migrated.len(),
            other_migrations,
            migrated_without_next_token: migrated
                .iter()
                .filter(|m| m.next_token_ms.is_none())
                .count(),
            next_token_ms: Summary::of(next_token_samples.iter().copied()),
            resume_ms: Summary::of(resume_samples.iter().copied()),
            prefill_tokens: Summary::of(
                migrated
                    .iter()
                    .filter_map(|m| m.prefill_tokens.map(|v| v as f64)),
            ),
            streams: trials.iter().map(|t| t.streams).sum(),
            token_exact_streams: trials.iter().map(|t| t.token_exact).sum(),
            mismatched_streams: trials.iter().map(|t| t.mismatched.len()).sum(),
            failed_streams: trials.iter().map(|t| t.failed.len()).sum(),
            spurious_downs: trials.iter().map(|t| t.spurious_downs.len()).sum(),
            reassignment_samples,
            next_token_samples,
            resume_samples,
        }
    }
}

pub fn render_admissions(figures: &[AdmissionFigure]) -> String {
    let mut out = format!(
        "{:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>7} {:>9}\n",
        "in-flight",
        "adm/s p50",
        "adm/s p1",
        "grant p50",
        "grant p99",
        "rel p99",
        "admitted",
        "failed",
        "cmd/entry"
    );
    for f in figures {
        out.push_str(&format!(
            "{:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>7} {:>9}\n",
            f.in_flight,
            cell(f.throughput.map(|t| t.p50), 0),
            cell(f.throughput.map(|t| t.p1), 0),
            cell(f.grant_latency_ms.map(|l| l.p50), 2),
            cell(f.grant_latency_ms.map(|l| l.p99), 2),
            cell(f.release_latency_ms.map(|l| l.p99), 2),
            f.admitted,
            f.failed,
            cell(f.commands_per_entry, 1),
        ));
    }
    let best = figures
        .iter()
        .filter_map(|f| f.throughput.map(|t| t.p50))
        .fold(0.0, f64::max);
    let verdict = if best >= ADMISSIONS_TARGET_PER_S {
        "met"
    } else {
        "MISSED"
    };
    out.push_str(&format!(
        "best p50 {best:.0} admissions/s; target >= {ADMISSIONS_TARGET_PER_S:.0}/s: {verdict}\n"
    ));
    out
}

pub fn render_failover(f: &FailoverFigure) -> String {
    let mut out = format!(
        "{:<44} {:>6} {:>9} {:>9} {:>9} {:>12}\n",
        "figure", "n", "p50 ms", "p99 ms", "max ms", "target p99"
    );
    let rows: [(&str, Option<Summary>, String); 5] = [
        (
            "kill -> reassignment committed (frontend)",
            f.reassignment_ms,
            format!("<= {REASSIGNMENT_TARGET_P99_MS:.0}"),
        ),
        (
            "  detector silence at Down (leader log)",
            f.detector_silent_ms,
            "-".into(),
        ),
        (
            "kill -> next token at the client",
            f.next_token_ms,
            "<= 400 + resume".into(),
        ),
        (
            "  migration -> next token (re-prefill)",
            f.resume_ms,
            "-".into(),
        ),
        (
            "  re-prefill tokens (prompt + so far)",
            f.prefill_tokens,
            "-".into(),
        ),
    ];
    for (name, summary, target) in rows {
        out.push_str(&format!(
            "{:<44} {:>6} {:>9} {:>9} {:>9} {:>12}\n",
            name,
            summary.map_or(0, |s| s.count),
            cell(summary.map(|s| s.p50), 1),
            cell(summary.map(|s| s.p99), 1),
            cell(summary.map(|s| s.max), 1),
            target,
        ));
    }
    out.push_str(&format!(
        "trials {} (undetected {}), streams {} of which token-exact {}, mismatched {}, failed {}; \
         migrated by the kill {} (without a next token {}); other migrations {:?}; spurious downs {}\n",
        f.trials,
        f.undetected_trials,
        f.streams,
        f.token_exact_streams,
        f.mismatched_streams,
        f.failed_streams,
        f.migrated_streams,
        f.migrated_without_next_token,
        f.other_migrations,
        f.spurious_downs,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leasebench::failover::MigratedStream;

    fn done(end_s: f64, latency_ms: f64, ok: bool) -> Completion {
        Completion {
            end_s,
            latency_ms,
            ok,
        }
    }

    #[test]
    fn admissions_count_grants_and_coalescing_counts_every_acknowledged_command() {
        // 6,000 grants in one measured second (plus warm-up ones), each released.
        let grants: Vec<Completion> = (0..6000)
            .map(|i| done(1.0 + i as f64 / 6000.0, 2.0, true))
            .chain([done(0.5, 50.0, true), done(1.5, 9.0, false)])
            .collect();
        let releases: Vec<Completion> = (0..6000)
            .map(|i| done(1.0 + i as f64 / 6000.0, 1.0, true))
            .collect();
        let f = AdmissionFigure::new(256, &grants, &releases, 120, vec![], 1.0, 1.0, 1);
        assert_eq!(f.throughput.unwrap().p50, 6000.0);
        assert_eq!(f.admitted, 6000);
        assert_eq!(f.failed, 1);
        assert_eq!(f.grant_latency_ms.unwrap().max, 2.0, "warm-up excluded");
        assert_eq!(f.commands_per_entry, Some(12001.0 / 120.0));
        let table = render_admissions(&[f]);
        assert!(table.contains("target >= 5000/s: met"), "{table}");
    }

    #[test]
    fn a_slow_cluster_is_reported_as_missing_the_target() {
        let grants: Vec<Completion> = (0..100)
            .map(|i| done(1.0 + i as f64 / 100.0, 10.0, true))
            .collect();
        let f = AdmissionFigure::new(1, &grants, &[], 0, vec![], 1.0, 1.0, 1);
        assert_eq!(f.commands_per_entry, None);
        assert!(render_admissions(&[f]).contains("MISSED"));
    }

    fn trial(reassignment: Option<f64>, migrated: Vec<MigratedStream>) -> TrialRecord {
        TrialRecord {
            trial: 0,
            victim_peer: 2,
            victim_node: 3,
            killed_unix_s: 100.0,
            victim_streams: 2.0,
            reassignment_ms: reassignment,
            detector_silent_ms: Some(301),
            leases_moved: Some(2),
            migrated,
            streams: 8,
            token_exact: 7,
            mismatched: vec![3],
            failed: vec![],
            spurious_downs: vec![],
        }
    }

    fn migrated(next: Option<f64>) -> MigratedStream {
        MigratedStream {
            stream: 0,
            reason: "reassigned".into(),
            caused_by_kill: true,
            prefill_tokens: Some(20),
            next_token_ms: next,
            resume_ms: next.map(|n| n - 300.0),
        }
    }

    #[test]
    fn failover_figure_counts_undetected_trials_and_streams_without_a_next_token() {
        let mut unrelated = migrated(Some(3000.0));
        unrelated.reason = "gap".into();
        unrelated.caused_by_kill = false;
        let trials = [
            trial(
                Some(310.0),
                vec![migrated(Some(420.0)), migrated(None), unrelated],
            ),
            trial(None, vec![]),
        ];
        let f = FailoverFigure::of(&trials);
        assert_eq!(f.trials, 2);
        assert_eq!(f.undetected_trials, 1);
        assert_eq!(f.reassignment_ms.unwrap().count, 1);
        assert_eq!(f.migrated_streams, 2, "the gap migration is not the kill's");
        assert_eq!(
            f.other_migrations,
            vec!["trial 0: stream 0 (gap)".to_string()]
        );
        assert_eq!(f.migrated_without_next_token, 1);
        assert_eq!(f.next_token_ms.unwrap().p50, 420.0);
        assert_eq!(f.resume_ms.unwrap().p50, 120.0);
        assert_eq!(
            (f.streams, f.token_exact_streams, f.mismatched_streams),
            (16, 14, 2)
        );
        let table = render_failover(&f);
        assert!(table.contains("undetected 1"), "{table}");
    }
}
