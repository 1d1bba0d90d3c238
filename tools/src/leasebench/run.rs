//! Both benchmarks end to end: run, print a table, write JSON and CDF plots under `out`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use serde_json::json;
use stator_tools::stats::Summary;

use super::admissions::closed_loop;
use super::failover::{
    idle_prefill_ms, reclassify, reference_run, trial, IdlePrefill, TrialRecord, TrialSettings,
};
use super::figures::{render_admissions, render_failover, AdmissionFigure, FailoverFigure};
use super::model_cluster::{ModelCluster, PeerSettings};
use super::raft_cluster::RaftCluster;
use crate::clusterbench::plots;

pub struct AdmissionSettings {
    pub in_flight: Vec<usize>,
    pub warmup_s: f64,
    pub window_s: f64,
    pub windows: usize,
    /// Where the three sled stores live (a real disk, so that fsync is real).
    pub data_root: PathBuf,
    pub out: PathBuf,
    pub plot_font: Option<PathBuf>,
}

pub struct FailoverSettings {
    pub peers: PeerSettings,
    pub trial: TrialSettings,
    pub trials: usize,
    pub out: PathBuf,
    pub plot_font: Option<PathBuf>,
}

const VOTERS: usize = 3;
const MODEL_PEERS: usize = 4;

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

fn unix_time_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn save(path: &Path, value: &impl Serialize) -> Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

pub async fn admissions(settings: &AdmissionSettings) -> Result<String> {
    std::fs::create_dir_all(&settings.out)?;
    std::fs::create_dir_all(&settings.data_root)?;
    let load_before = load_average();
    let root = tempfile::Builder::new()
        .prefix("leasebench-raft-")
        .tempdir_in(&settings.data_root)?;
    eprintln!(
        "[admissions] 3 voters over QUIC, sled under {}",
        root.path().display()
    );
    let cluster = Arc::new(RaftCluster::start(root.path(), VOTERS).await?);
    let leader = cluster.leader_id();
    let duration =
        Duration::from_secs_f64(settings.warmup_s + settings.window_s * settings.windows as f64);
    let mut figures = Vec::new();
    for &in_flight in &settings.in_flight {
        eprintln!("[admissions] {in_flight} in flight for {duration:?}");
        let run = closed_loop(
            cluster.clone(),
            in_flight,
            duration,
            &format!("c{in_flight}"),
        )
        .await;
        let figure = AdmissionFigure::new(
            in_flight,
            &run.grants,
            &run.releases,
            run.log_entries,
            run.refusals,
            settings.warmup_s,
            settings.window_s,
            settings.windows,
        );
        eprintln!(
            "[admissions] {in_flight}: {:.0} admissions/s p50, grant p99 {:.2} ms, {} failed",
            figure.throughput.map_or(0.0, |t| t.p50),
            figure.grant_latency_ms.map_or(f64::NAN, |l| l.p99),
            figure.failed
        );
        figures.push(figure);
    }
    let leader_after = cluster.leader_id();
    if let Ok(cluster) = Arc::try_unwrap(cluster) {
        cluster.shutdown().await;
    }
    save(
        &settings.out.join("lease-admissions.json"),
        &json!({
            "environment": {
                "cores": cores(),
                "load_average_before": load_before,
                "load_average_after": load_average(),
                "cluster": "3 in-process RaftNodes (openraft + sled, default RaftConfig: 1 ms batch window), real QUIC on 127.0.0.1, one process with the load",
                "leader_before": leader,
                "leader_after": leader_after,
                "unix_time_s": unix_time_s(),
            },
            "method": {
                "admission": "RaftNode::write(vec![GrantLease]) on the request's frontend peer (coalesced by its batching writer, forwarded to the leader), then write(vec![ReleaseLease]) with the granted epoch",
                "spread": "request i is admitted through peer i % 3 for the worker of peer (i + 1) % 3",
                "closed_loop": "each in-flight request slot admits, releases, and admits the next",
                "warmup_s": settings.warmup_s,
                "window_s": settings.window_s,
                "windows": settings.windows,
                "throughput": "grants committed per window; p50 and p1 (slow tail) over the windows",
                "latency": "grant write call to committed and applied on the frontend's peer, every grant in the measured span",
            },
            "figures": figures,
        }),
    )?;
    plots::register_font(settings.plot_font.as_deref())?;
    let series: Vec<(String, &[f64])> = figures
        .iter()
        .map(|f| {
            (
                format!("{} in flight", f.in_flight),
                f.grant_latencies_ms.as_slice(),
            )
        })
        .collect();
    let file = settings.out.join("lease-admissions-latency-cdf.png");
    plots::cdf_chart(&file, "lease grant commit latency, 3 voters", "ms", &series)?;
    eprintln!("wrote {}", file.display());
    Ok(render_admissions(&figures))
}

pub async fn failover(settings: &FailoverSettings) -> Result<String> {
    std::fs::create_dir_all(&settings.out)?;
    plots::register_font(settings.plot_font.as_deref())?;
    let load_before = load_average();
    let root = tempfile::Builder::new()
        .prefix("leasebench-peers-")
        .tempdir()?;
    eprintln!(
        "[failover] starting {MODEL_PEERS} peers under {}",
        root.path().display()
    );
    let mut cluster = ModelCluster::start(&settings.peers, root.path(), MODEL_PEERS).await?;
    let http = reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .build()?;
    let reference = reference_run(&cluster, &http, &settings.trial).await?;
    eprintln!(
        "[failover] reference run: {} streams of {} tokens",
        reference.len(),
        settings.trial.max_tokens
    );
    let mut records: Vec<TrialRecord> = Vec::new();
    let mut stopped_by: Option<String> = None;
    for index in 0..settings.trials {
        match trial(&mut cluster, &http, &settings.trial, &reference, index).await {
            Ok(record) => {
                eprintln!(
                    "[failover] trial {index}: killed p{} ({} streams) reassigned {:?} ms, next tokens {:?} ms, exact {}/{}",
                    record.victim_peer,
                    record.victim_streams,
                    record.reassignment_ms.map(|v| v.round()),
                    record
                        .migrated
                        .iter()
                        .map(|m| m.next_token_ms.map(|v| v.round()))
                        .collect::<Vec<_>>(),
                    record.token_exact,
                    record.streams
                );
                records.push(record);
            }
            Err(e) => {
                eprintln!("[failover] stopped at trial {index}: {e:#}");
                stopped_by = Some(format!("trial {index}: {e:#}"));
                break;
            }
        }
        write_failover(
            settings,
            &records,
            &reference,
            &[],
            &load_before,
            &stopped_by,
        )?;
    }
    // Each prompt followed by the first half of its reference output: about the prompt +
    // tokens-so-far a resumed stream re-prefills, here on an idle worker.
    let resumed_prompts: Vec<String> = settings
        .trial
        .prompts
        .iter()
        .zip(&reference)
        .map(|(prompt, output)| {
            let half: String = output.chars().take(output.chars().count() / 2).collect();
            format!("{prompt}{half}")
        })
        .collect();
    let idle = match idle_prefill_ms(&cluster, &http, &settings.trial, 1, &resumed_prompts).await {
        Ok(samples) => samples,
        Err(e) => {
            eprintln!("[failover] idle prefill baseline failed: {e:#}");
            Vec::new()
        }
    };
    let figure = write_failover(
        settings,
        &records,
        &reference,
        &idle,
        &load_before,
        &stopped_by,
    )?;
    let mut table = render_failover(&figure);
    if let Some(s) = Summary::of(idle.iter().map(|i| i.ttft_ms)) {
        table.push_str(&format!(
            "idle re-prefill baseline (TTFT straight to p1's engine, prompt + half the output, {}-{} tokens): p50 {:.1} ms, max {:.1} ms\n",
            idle.iter().filter_map(|i| i.prompt_tokens).min().unwrap_or(0),
            idle.iter().filter_map(|i| i.prompt_tokens).max().unwrap_or(0),
            s.p50,
            s.max
        ));
    }
    if let Some(why) = stopped_by {
        table.push_str(&format!("STOPPED EARLY: {why}\n"));
    }
    if records.is_empty() {
        return Err(anyhow!("no trial completed\n{table}"));
    }
    Ok(table)
}

/// Rewritten after every trial, so that an interrupted run keeps what it measured.
fn write_failover(
    settings: &FailoverSettings,
    records: &[TrialRecord],
    reference: &[String],
    idle: &[IdlePrefill],
    load_before: &str,
    stopped_by: &Option<String>,
) -> Result<FailoverFigure> {
    let figure = FailoverFigure::of(records);
    let peers = &settings.peers;
    save(
        &settings.out.join("lease-failover.json"),
        &json!({
            "environment": {
                "cores": cores(),
                "load_average_before": load_before,
                "load_average_now": load_average(),
                "peers": "4 stator processes on loopback, each with a CPU engine; p0 --request-leases is the frontend",
                "model": peers.model.display().to_string(),
                "down_after_ms": peers.down_after_ms,
                "kv_cache_mib": peers.kv_cache_mib,
                "engine_threads_per_peer": peers.engine_threads,
                "extra_peer_args": peers.extra_args,
                "unix_time_s": unix_time_s(),
            },
            "method": {
                "streams_per_trial": settings.trial.prompts.len(),
                "max_tokens": settings.trial.max_tokens,
                "sampling": "temperature 0, ignore_eos (every stream runs to max_tokens)",
                "kill_after_chunks": settings.trial.kill_after_chunks,
                "victim": "the worker peer (not p0, not the leader) with the most active streams; SIGKILL",
                "reassignment": "SIGKILL until p0's /admin/v1/members shows the victim down (the leader commits Down and the lease reassignment in one entry), polled every poll_ms",
                "poll_ms": settings.trial.poll_every.as_secs_f64() * 1e3,
                "next_token": "per stream the frontend migrated (its log, matched by request id): SIGKILL until the first chunk the client received after the migration",
                "resume": "the frontend's migration log line until that chunk: stream open on the new owner + re-prefill of prompt and tokens so far + the first token",
                "token_exact": "each stream's full text equals the no-failure run of the same prompts",
                "between_trials": "the victim restarts from its data dir; the next trial waits until it serves, re-registered its worker, and the leader shows every member up",
            },
            "idle_prefill": {
                "method": "after the trials, one request at a time straight to p1's own engine (no lease): each prompt followed by the first half of its reference output, max_tokens 1; time to the first chunk",
                "samples": idle,
            },
            "stopped_by": stopped_by,
            "reference_texts": reference,
            "figure": figure,
            "trials": records,
        }),
    )?;
    let series: Vec<(String, &[f64])> = vec![
        (
            "kill -> reassignment committed".into(),
            figure.reassignment_samples.as_slice(),
        ),
        (
            "kill -> next token at client".into(),
            figure.next_token_samples.as_slice(),
        ),
        (
            "migration -> next token (re-prefill)".into(),
            figure.resume_samples.as_slice(),
        ),
    ];
    let file = settings.out.join("lease-failover-cdf.png");
    plots::cdf_chart(
        &file,
        "SIGKILL of a worker peer holding leases",
        "ms",
        &series,
    )?;
    Ok(figure)
}

/// The failover table again from a `lease-failover.json` (e.g. one written by an earlier
/// build), with the current classification of migrations.
pub fn refigure(file: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    let trials = value
        .get("trials")
        .cloned()
        .ok_or_else(|| anyhow!("{} has no \"trials\" list", file.display()))?;
    let mut records: Vec<TrialRecord> = serde_json::from_value(trials)
        .with_context(|| format!("the trials of {} are not trial records", file.display()))?;
    reclassify(&mut records);
    Ok(render_failover(&FailoverFigure::of(&records)))
}
