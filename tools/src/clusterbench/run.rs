//! The whole benchmark: one system at a time (the other is stopped, so they never share the
//! cores), writes at each concurrency, then kill trials; results to JSON, PNG and a table.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use serde_json::json;

use super::figures::{render_table, TrialFigure, WriteFigure};
use super::load::{closed_loop, prefill};
use super::plots;
use super::target::{Cluster, SystemKind};
use super::trials::{detection_trial, failover_trial, TrialSettings};

pub struct Settings {
    pub stator_bin: PathBuf,
    pub etcd_bin: Option<PathBuf>,
    /// Members of each cluster.
    pub members: usize,
    pub writers: Vec<usize>,
    pub key_space: u64,
    pub warmup_s: f64,
    pub window_s: f64,
    pub windows: usize,
    pub write_timeout: Duration,
    pub trials: usize,
    pub trial: TrialSettings,
    pub detection_poll: Duration,
    pub out: PathBuf,
    pub plot_font: Option<PathBuf>,
    /// `STATOR_LOG` filter of the stator peers (e.g. `warn,openraft=debug` for a probe run).
    pub stator_log: String,
    /// Keep the members' data dirs and logs after the run (their paths are printed).
    pub keep_dirs: bool,
}

pub async fn run(settings: &Settings) -> Result<String> {
    let mut writes = Vec::new();
    let mut trials = Vec::new();
    let mut systems = vec![(SystemKind::Stator, settings.stator_bin.clone())];
    if let Some(etcd) = &settings.etcd_bin {
        systems.push((SystemKind::Etcd, etcd.clone()));
    }
    for (kind, binary) in systems {
        let mut root = tempfile::Builder::new()
            .prefix(&format!("clusterbench-{}-", kind.name()))
            .tempdir()?;
        // Kept from the start, so that a run that fails still leaves its logs behind.
        root.disable_cleanup(settings.keep_dirs);
        eprintln!(
            "[{}] starting {} member{} under {}",
            kind.name(),
            settings.members,
            if settings.members == 1 { "" } else { "s" },
            root.path().display()
        );
        let mut cluster = Cluster::start(
            kind,
            &binary,
            root.path(),
            settings.members,
            &settings.stator_log,
        )
        .await?;
        prefill(
            &cluster.client(),
            settings.key_space,
            settings.write_timeout,
        )
        .await
        .map_err(|e| anyhow!("{}: {e}", kind.name()))?;
        for &writers in &settings.writers {
            let duration = Duration::from_secs_f64(
                settings.warmup_s + settings.window_s * settings.windows as f64,
            );
            eprintln!("[{}] {writers} writers for {duration:?}", kind.name());
            let completions = closed_loop(
                &cluster.client(),
                writers,
                settings.key_space,
                duration,
                settings.write_timeout,
            )
            .await;
            let figure = WriteFigure::from_completions(
                kind,
                writers,
                &completions,
                settings.warmup_s,
                settings.window_s,
                settings.windows,
            );
            eprintln!(
                "[{}] {writers} writers: {:.0} writes/s p50, latency p99 {:.2} ms, {} failed",
                kind.name(),
                figure.throughput.map_or(0.0, |t| t.p50),
                figure.latency_ms.map_or(f64::NAN, |l| l.p99),
                figure.failed
            );
            writes.push(figure);
        }
        // No kill trials on a cluster with no majority left to survive one (`--members 1`).
        if settings.trials > 0 {
            trials.extend(kill_trials(&mut cluster, kind, settings).await?);
        }
        drop(cluster);
        if settings.keep_dirs {
            eprintln!("[{}] kept {}", kind.name(), root.path().display());
        }
    }
    write_results(settings, &writes, &trials)?;
    Ok(render_table(&writes, &trials))
}

/// Leader failover for both systems, and failure detection for stator.
async fn kill_trials(
    cluster: &mut Cluster,
    kind: SystemKind,
    settings: &Settings,
) -> Result<Vec<TrialFigure>> {
    let mut figures = Vec::new();
    let mut failover = Vec::new();
    for trial in 0..settings.trials {
        let outcome = failover_trial(cluster, trial as u64, &settings.trial)
            .await
            .with_context(|| format!("{} failover trial {trial}", kind.name()))?;
        eprintln!("[{}] failover {trial}: {outcome:?} ms", kind.name());
        failover.push(outcome);
    }
    let target = (kind == SystemKind::Stator).then_some(600.0);
    figures.push(TrialFigure::new(kind, "failover", &failover, target));
    if let Cluster::Stator(stator) = cluster {
        let mut detection = Vec::new();
        for trial in 0..settings.trials {
            let outcome = detection_trial(
                stator,
                trial as u64,
                settings.detection_poll,
                &settings.trial,
            )
            .await
            .with_context(|| format!("stator detection trial {trial}"))?;
            eprintln!("[stator] detection {trial}: {outcome:?} ms");
            detection.push(outcome);
        }
        figures.push(TrialFigure::new(kind, "detection", &detection, Some(400.0)));
    }
    Ok(figures)
}

fn environment(settings: &Settings) -> serde_json::Value {
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "note": "the members and the client share this machine's cores over loopback; one system runs at a time",
        "members": settings.members,
        "stator": "peers with --no-model, default settings",
        "etcd": "etcd defaults (heartbeat 100 ms, election timeout 1000 ms), gRPC KV/Put over HTTP/2 cleartext",
        "etcd_binary": settings.etcd_bin.as_ref().map(|p| p.display().to_string()),
        "key_bytes": 16,
        "value_bytes": 64,
        "key_space": settings.key_space,
        "unix_time_s": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    })
}

fn save(path: &Path, value: &impl Serialize) -> Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn write_results(
    settings: &Settings,
    writes: &[WriteFigure],
    trials: &[TrialFigure],
) -> Result<()> {
    let out = &settings.out;
    std::fs::create_dir_all(out)?;
    let env = environment(settings);
    save(
        &out.join("cluster-writes.json"),
        &json!({
            "environment": env,
            "method": {
                "closed_loop": "each writer keeps one write in flight and moves to the next member after every write",
                "prefill": "every key written once before the first level, so the state has its full size throughout",
                "warmup_s": settings.warmup_s,
                "window_s": settings.window_s,
                "windows": settings.windows,
                "throughput": "acknowledged writes per window; p50 and p1 (slow tail) over the windows",
                "latency": "client-observed latency of every acknowledged write in the measured span",
                "write_timeout_ms": settings.write_timeout.as_millis() as u64,
            },
            "figures": writes,
        }),
    )?;
    let by_what =
        |what: &str| -> Vec<&TrialFigure> { trials.iter().filter(|t| t.what == what).collect() };
    save(
        &out.join("cluster-failover.json"),
        &json!({
            "environment": env,
            "method": "find the leader, SIGKILL it, writes in a tight loop through both survivors (each attempt times out and is retried); time from kill to the first acknowledged write; restart and wait until all serve",
            "attempt_timeout_ms": settings.trial.attempt_timeout.as_millis() as u64,
            "figures": by_what("failover"),
        }),
    )?;
    save(
        &out.join("cluster-detection.json"),
        &json!({
            "environment": env,
            "method": "SIGKILL a follower (alternating), poll the leader's /admin/v1/members until it shows down; restart and wait up",
            "poll_ms": settings.detection_poll.as_millis() as u64,
            "figures": by_what("detection"),
        }),
    )?;
    plots::register_font(settings.plot_font.as_deref())?;
    for &writers in &settings.writers {
        let series: Vec<(String, &[f64])> = writes
            .iter()
            .filter(|f| f.writers == writers)
            .map(|f| (f.system.name().to_string(), f.latencies_ms.as_slice()))
            .collect();
        let file = out.join(format!("cluster-write-latency-cdf-{writers}.png"));
        plots::cdf_chart(
            &file,
            &format!("commit latency, {writers} writers"),
            "latency (ms)",
            &series,
        )?;
        eprintln!("wrote {}", file.display());
    }
    for what in ["failover", "detection"] {
        let figures = by_what(what);
        if figures.is_empty() {
            continue;
        }
        let series: Vec<(String, &[f64])> = figures
            .iter()
            .map(|f| (f.system.name().to_string(), f.trials_ms.as_slice()))
            .collect();
        let file = out.join(format!("cluster-{what}-cdf.png"));
        plots::cdf_chart(
            &file,
            &format!("{what}: SIGKILL to recovery"),
            "ms after SIGKILL",
            &series,
        )?;
        eprintln!("wrote {}", file.display());
    }
    Ok(())
}
