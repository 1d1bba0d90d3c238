//! One detection → reassignment trial on the 4-peer model cluster: greedy streams in flight on
//! every worker, SIGKILL of a worker peer holding leases (never the frontend, never the leader:
//! the leader is the failure detector), then what the survivors and the clients saw.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::future::join_all;
use serde::{Deserialize, Serialize};

use super::model_cluster::ModelCluster;
use super::stream::{stream_completion, StreamRecord, StreamSpec};
use super::timeline::{migrations, reassignments, transitions, unix_s, Migration};
use crate::clusterbench::process::poll_until;

/// The peer clients talk to; it is never killed.
pub const FRONTEND: usize = 0;

#[derive(Clone, Debug)]
pub struct TrialSettings {
    pub model: String,
    pub prompts: Vec<String>,
    pub max_tokens: usize,
    /// Every stream has received this many text chunks before the kill.
    pub kill_after_chunks: usize,
    pub poll_every: Duration,
    pub give_up_after: Duration,
    pub stream_timeout: Duration,
}

/// Migration reasons (the frontend's `stator_migration_total` labels) that a dead owner
/// causes: its lease moved, or its stream broke or could not be opened. Anything else (a
/// token index gap, a refusal) is a live worker misbehaving, not the kill.
pub const KILL_REASONS: [&str; 4] = ["reassigned", "stream_error", "stream_ended", "connect"];

/// A stream the frontend moved after the kill.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MigratedStream {
    pub stream: usize,
    pub reason: String,
    /// The reason is one a dead owner causes (see [`KILL_REASONS`]); the figures of the kill
    /// use only these, the others are counted apart. Absent in records written before the
    /// field existed: [`reclassify`] sets it from `reason`.
    #[serde(default)]
    pub caused_by_kill: bool,
    /// Prompt + tokens the client already had: what the new owner prefills.
    pub prefill_tokens: Option<u64>,
    /// SIGKILL → the next token at the client.
    pub next_token_ms: Option<f64>,
    /// The frontend's migration → the next token at the client: opening the stream on the new
    /// owner, its re-prefill of prompt + tokens so far, and the first new token.
    pub resume_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrialRecord {
    pub trial: usize,
    pub victim_peer: usize,
    pub victim_node: u64,
    /// When the SIGKILL went out (unix seconds), to line the trial up with the peers' logs.
    #[serde(default)]
    pub killed_unix_s: f64,
    /// `stator_worker_streams_active` on the victim just before the kill.
    pub victim_streams: f64,
    /// SIGKILL → the frontend's applied state shows the victim down (polled).
    pub reassignment_ms: Option<f64>,
    /// The leader's detector: silence it saw when it marked the victim down.
    pub detector_silent_ms: Option<u64>,
    /// Leases the leader moved in the entry that marked the victim down.
    pub leases_moved: Option<u64>,
    pub migrated: Vec<MigratedStream>,
    pub streams: usize,
    /// Streams whose full text equals the no-failure run's.
    pub token_exact: usize,
    pub mismatched: Vec<usize>,
    pub failed: Vec<(usize, String)>,
    /// Nodes other than the victim that the leader marked down during the trial.
    pub spurious_downs: Vec<u64>,
}

/// Streams every prompt through the frontend at once and waits for all of them.
pub async fn stream_all(
    cluster: &ModelCluster,
    http: &reqwest::Client,
    settings: &TrialSettings,
) -> (
    Vec<Arc<AtomicUsize>>,
    Vec<tokio::task::JoinHandle<StreamRecord>>,
) {
    let mut progress = Vec::new();
    let mut handles = Vec::new();
    for prompt in &settings.prompts {
        let counter = Arc::new(AtomicUsize::new(0));
        let spec = StreamSpec {
            base_url: cluster.base_url(FRONTEND).to_string(),
            model: settings.model.clone(),
            prompt: prompt.clone(),
            max_tokens: settings.max_tokens,
            timeout: settings.stream_timeout,
        };
        handles.push(tokio::spawn(stream_completion(
            http.clone(),
            spec,
            counter.clone(),
        )));
        progress.push(counter);
    }
    (progress, handles)
}

pub async fn collect(handles: Vec<tokio::task::JoinHandle<StreamRecord>>) -> Vec<StreamRecord> {
    join_all(handles)
        .await
        .into_iter()
        .map(|joined| {
            joined.unwrap_or_else(|e| StreamRecord {
                error: Some(format!("stream task failed: {e}")),
                ..StreamRecord::default()
            })
        })
        .collect()
}

/// The no-failure output every trial is compared with.
pub async fn reference_run(
    cluster: &ModelCluster,
    http: &reqwest::Client,
    settings: &TrialSettings,
) -> Result<Vec<String>> {
    let (_, handles) = stream_all(cluster, http, settings).await;
    let records = collect(handles).await;
    records
        .into_iter()
        .enumerate()
        .map(|(i, r)| match r.error {
            None if !r.chunks.is_empty() => Ok(r.text()),
            None => Err(anyhow!("reference stream {i} produced no text")),
            Some(e) => Err(anyhow!("reference stream {i} failed: {e}")),
        })
        .collect()
}

pub async fn trial(
    cluster: &mut ModelCluster,
    http: &reqwest::Client,
    settings: &TrialSettings,
    reference: &[String],
    trial: usize,
) -> Result<TrialRecord> {
    let log_marks: Vec<usize> = (0..cluster.len()).map(|p| cluster.log(p).len()).collect();
    let (progress, handles) = stream_all(cluster, http, settings).await;
    let under_way = poll_until(
        settings.stream_timeout,
        Duration::from_millis(10),
        || async {
            progress
                .iter()
                .all(|c| c.load(Ordering::SeqCst) >= settings.kill_after_chunks)
                .then_some(())
        },
    )
    .await;
    if under_way.is_none() {
        let records = collect(handles).await;
        bail!(
            "trial {trial}: the streams never got under way: {:?}",
            records.iter().map(|r| &r.error).collect::<Vec<_>>()
        );
    }
    let (victim, victim_streams) = choose_victim(cluster, trial).await?;
    let victim_node = cluster.node_id(victim);

    let killed = cluster.sigkill(victim)?;
    let killed_s = unix_s();
    let mut reassignment_ms = None;
    while killed.elapsed() < settings.give_up_after {
        if let Ok(Some(status)) = cluster.member_status(FRONTEND, victim_node).await {
            if status == "down" {
                reassignment_ms = Some(killed.elapsed().as_secs_f64() * 1e3);
                break;
            }
        }
        tokio::time::sleep(settings.poll_every).await;
    }
    let records = collect(handles).await;

    let new_text = |peer: usize| {
        let log = cluster.log(peer);
        log.get(log_marks[peer]..).unwrap_or_default().to_string()
    };
    let frontend_log = new_text(FRONTEND);
    let moves = migrations(&frontend_log);
    let mut detector_silent_ms = None;
    let mut leases_moved = None;
    let mut spurious_downs = Vec::new();
    for peer in (0..cluster.len()).filter(|&p| p != victim) {
        let log = new_text(peer);
        for t in transitions(&log).into_iter().filter(|t| t.to == "down") {
            if t.node == victim_node {
                detector_silent_ms = detector_silent_ms.or(t.silent_ms);
            } else {
                spurious_downs.push(t.node);
            }
        }
        if let Some(r) = reassignments(&log)
            .into_iter()
            .find(|r| r.node == victim_node)
        {
            leases_moved = Some(r.leases);
        }
    }

    let mut record = TrialRecord {
        trial,
        victim_peer: victim,
        victim_node,
        killed_unix_s: killed_s,
        victim_streams,
        reassignment_ms,
        detector_silent_ms,
        leases_moved,
        migrated: Vec::new(),
        streams: records.len(),
        token_exact: 0,
        mismatched: Vec::new(),
        failed: Vec::new(),
        spurious_downs,
    };
    for (index, stream) in records.iter().enumerate() {
        if let Some(e) = &stream.error {
            record.failed.push((index, e.clone()));
        } else if reference.get(index) == Some(&stream.text()) {
            record.token_exact += 1;
        } else {
            record.mismatched.push(index);
        }
        if let Some(migrated) = migrated_stream(index, stream, &moves, killed_s) {
            record.migrated.push(migrated);
        }
    }
    cluster
        .restart(victim)
        .await
        .with_context(|| format!("restarting p{victim} after trial {trial}"))?;
    Ok(record)
}

#[derive(Clone, Debug, Serialize)]
pub struct IdlePrefill {
    pub ttft_ms: f64,
    pub prompt_tokens: Option<u64>,
}

/// Time to first token of one request at a time sent straight to `peer`'s own engine (a
/// peer without `--request-leases` serves its local engine) while nothing else runs: the
/// re-prefill of `prompt` + `so_far` on an idle worker, to compare with the resume time.
pub async fn idle_prefill_ms(
    cluster: &ModelCluster,
    http: &reqwest::Client,
    settings: &TrialSettings,
    peer: usize,
    prompts: &[String],
) -> Result<Vec<IdlePrefill>> {
    let mut samples = Vec::new();
    for prompt in prompts {
        let spec = StreamSpec {
            base_url: cluster.base_url(peer).to_string(),
            model: settings.model.clone(),
            prompt: prompt.clone(),
            max_tokens: 1,
            timeout: settings.stream_timeout,
        };
        let record = stream_completion(http.clone(), spec, Arc::new(AtomicUsize::new(0))).await;
        if let Some(e) = record.error {
            bail!("idle prefill on p{peer} failed: {e}");
        }
        let first = record
            .chunks
            .first()
            .ok_or_else(|| anyhow!("idle prefill on p{peer} returned no text"))?;
        samples.push(IdlePrefill {
            ttft_ms: (first.0 - record.sent_s) * 1e3,
            prompt_tokens: record.prompt_tokens,
        });
    }
    Ok(samples)
}

/// Sets `caused_by_kill` from each migration's reason (for records read back from JSON).
pub fn reclassify(trials: &mut [TrialRecord]) {
    for m in trials.iter_mut().flat_map(|t| t.migrated.iter_mut()) {
        m.caused_by_kill = KILL_REASONS.contains(&m.reason.as_str());
    }
}

/// The stream's first migration after the kill, and when its next token arrived.
pub fn migrated_stream(
    index: usize,
    stream: &StreamRecord,
    moves: &[Migration],
    killed_s: f64,
) -> Option<MigratedStream> {
    let id = stream.request_id.as_deref()?;
    let mine: Vec<&Migration> = moves
        .iter()
        .filter(|m| m.is_for(id) && m.at_s >= killed_s)
        .collect();
    let first = mine.first()?;
    let next_token = stream.first_chunk_from(first.at_s);
    // Resumed by the last move before that token (a stream can move twice).
    let last = next_token
        .and_then(|t| mine.iter().rev().find(|m| m.at_s <= t))
        .unwrap_or(first);
    Some(MigratedStream {
        stream: index,
        reason: first.reason.clone(),
        caused_by_kill: KILL_REASONS.contains(&first.reason.as_str()),
        prefill_tokens: stream.prompt_tokens.map(|p| p + last.delivered),
        next_token_ms: next_token.map(|t| (t - killed_s) * 1e3),
        resume_ms: next_token.map(|t| (t - last.at_s) * 1e3),
    })
}

/// The worker peer (not the frontend, not the leader) serving the most streams; ties rotate
/// with the trial number so that every worker peer gets killed.
async fn choose_victim(cluster: &ModelCluster, trial: usize) -> Result<(usize, f64)> {
    let leader = cluster
        .leader()
        .await
        .ok_or_else(|| anyhow!("no leader before trial {trial}"))?;
    let candidates: Vec<usize> = (0..cluster.len())
        .filter(|&p| p != FRONTEND && p != leader)
        .collect();
    let mut best: Option<(usize, f64)> = None;
    for offset in 0..candidates.len() {
        let peer = candidates[(trial + offset) % candidates.len()];
        let active = cluster
            .metric(peer, "stator_worker_streams_active")
            .await
            .unwrap_or(0.0);
        if active > best.map_or(0.0, |b| b.1) {
            best = Some((peer, active));
        }
    }
    best.ok_or_else(|| {
        anyhow!(
            "trial {trial}: no worker peer other than the frontend and the leader holds a stream"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(id: &str, chunks: &[f64]) -> StreamRecord {
        StreamRecord {
            request_id: Some(id.into()),
            sent_s: 99.0,
            chunks: chunks.iter().map(|t| (*t, "x".to_string())).collect(),
            prompt_tokens: Some(10),
            completion_tokens: Some(chunks.len() as u64),
            complete: true,
            error: None,
        }
    }

    fn moved(at_s: f64, id: &str, delivered: u64) -> Migration {
        Migration {
            at_s,
            lease: format!("1/3/{id}"),
            reason: "reassigned".into(),
            epoch: 2,
            delivered,
        }
    }

    #[test]
    fn next_token_is_the_first_after_the_migration_not_a_late_one_from_the_old_owner() {
        // Killed at 100.0; a token already on the wire lands at 100.01; the leader moved the
        // lease at 100.30 and the new owner's first token came at 100.45.
        let s = stream("cmpl-a", &[99.9, 100.01, 100.45, 100.5]);
        let moves = [moved(100.30, "cmpl-a", 5), moved(100.30, "cmpl-b", 7)];
        let m = migrated_stream(0, &s, &moves, 100.0).expect("migrated");
        assert!((m.next_token_ms.unwrap() - 450.0).abs() < 1e-6);
        assert!((m.resume_ms.unwrap() - 150.0).abs() < 1e-6);
        assert_eq!(m.prefill_tokens, Some(15));
    }

    #[test]
    fn streams_that_did_not_move_or_moved_before_the_kill_are_not_counted() {
        let s = stream("cmpl-a", &[99.9, 100.1]);
        assert!(migrated_stream(0, &s, &[moved(100.2, "cmpl-z", 1)], 100.0).is_none());
        assert!(migrated_stream(0, &s, &[moved(99.0, "cmpl-a", 1)], 100.0).is_none());
    }

    #[test]
    fn only_migrations_a_dead_owner_causes_count_as_caused_by_the_kill() {
        let s = stream("cmpl-a", &[99.9, 103.1]);
        let mut gap = moved(103.0, "cmpl-a", 50);
        gap.reason = "gap".into();
        let m = migrated_stream(0, &s, &[gap], 100.0).expect("migrated");
        assert!(!m.caused_by_kill);
        let mut broken = moved(100.3, "cmpl-a", 5);
        broken.reason = "stream_error".into();
        assert!(
            migrated_stream(0, &s, &[broken], 100.0)
                .unwrap()
                .caused_by_kill
        );
    }

    #[test]
    fn records_written_before_the_classification_are_read_back_and_classified() {
        let old = serde_json::json!([{
            "trial": 4, "victim_peer": 2, "victim_node": 9, "victim_streams": 2.0,
            "reassignment_ms": 290.0, "detector_silent_ms": 310, "leases_moved": 2,
            "migrated": [
                {"stream": 1, "reason": "stream_error", "prefill_tokens": 20,
                 "next_token_ms": 500.0, "resume_ms": 200.0},
                {"stream": 7, "reason": "gap", "prefill_tokens": 59,
                 "next_token_ms": 3054.0, "resume_ms": 42.0}
            ],
            "streams": 8, "token_exact": 8, "mismatched": [], "failed": [], "spurious_downs": []
        }]);
        let mut trials: Vec<TrialRecord> = serde_json::from_value(old).expect("old records");
        reclassify(&mut trials);
        let kinds: Vec<bool> = trials[0]
            .migrated
            .iter()
            .map(|m| m.caused_by_kill)
            .collect();
        assert_eq!(kinds, vec![true, false]);
    }

    #[test]
    fn a_stream_moved_twice_is_resumed_by_its_last_move() {
        let s = stream("cmpl-a", &[99.9, 101.0]);
        let moves = [moved(100.2, "cmpl-a", 3), moved(100.8, "cmpl-a", 3)];
        let m = migrated_stream(0, &s, &moves, 100.0).expect("migrated");
        assert!((m.next_token_ms.unwrap() - 1000.0).abs() < 1e-6);
        assert!((m.resume_ms.unwrap() - 200.0).abs() < 1e-6);
    }
}
