//! The per-node writer: coalesces submissions into one log entry (one `client_write`, or one
//! forward to the leader) and answers them once the entry is applied on this node.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::RaftError;
use crate::model::Command;
use crate::node::NodeCore;
use crate::rpc::WriteOutcome;

/// Upper bound of commands in one entry, so that one entry stays far below the frame limit.
pub(crate) const MAX_BATCH_COMMANDS: usize = 1024;

pub(crate) struct Submission {
    pub(crate) cmds: Vec<Command>,
    pub(crate) reply: oneshot::Sender<Result<WriteOutcome, RaftError>>,
    pub(crate) submitted: Instant,
}

/// Runs until every sender is dropped. Each collected batch is committed on its own task so
/// the next batch can be collected meanwhile. A submission that finds no batch in flight goes
/// out at once (with whatever else is already queued): waiting out the window then only adds
/// latency, since nothing is there to share the entry with. While batches are in flight, the
/// window collects what arrives, like Nagle's algorithm.
pub(crate) fn spawn_writer(
    core: Arc<NodeCore>,
    mut submissions: mpsc::Receiver<Submission>,
    window: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let in_flight = Arc::new(AtomicUsize::new(0));
        while let Some(first) = submissions.recv().await {
            let mut commands = first.cmds.len();
            let mut batch = vec![first];
            while commands < MAX_BATCH_COMMANDS {
                match submissions.try_recv() {
                    Ok(next) => {
                        commands += next.cmds.len();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            if in_flight.load(Ordering::Acquire) > 0 {
                let window_end = tokio::time::Instant::now() + window;
                while commands < MAX_BATCH_COMMANDS {
                    match tokio::time::timeout_at(window_end, submissions.recv()).await {
                        Ok(Some(next)) => {
                            commands += next.cmds.len();
                            batch.push(next);
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            let in_flight = InFlight::enter(&in_flight);
            tokio::spawn(commit(core.clone(), batch, in_flight));
        }
    })
}

/// Counts a batch as in flight until dropped, which `commit` does before it answers: a
/// writer that submits again as soon as it has its answer must find the batch gone.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn commit(core: Arc<NodeCore>, mut batch: Vec<Submission>, in_flight: InFlight) {
    let counts: Vec<usize> = batch.iter().map(|s| s.cmds.len()).collect();
    let cmds: Vec<Command> = batch
        .iter_mut()
        .flat_map(|s| std::mem::take(&mut s.cmds))
        .collect();
    let total = cmds.len();
    metrics::histogram!("stator_raft_batch_commands").record(total as f64);

    let result = match core.write_batch(cmds).await {
        Ok(outcome) if outcome.results.len() != total => Err(RaftError::Rejected(format!(
            "leader returned {} results for {total} commands",
            outcome.results.len()
        ))),
        // One wait for the whole batch: every writer in it needs the entry applied here.
        Ok(outcome) => core
            .wait_applied(outcome.index, core.cfg.write_timeout)
            .await
            .map(|_| outcome),
        Err(e) => Err(e),
    };
    drop(in_flight);

    match result {
        Ok(outcome) => {
            let mut results = outcome.results.into_iter();
            for (submission, count) in batch.into_iter().zip(counts) {
                let mine = WriteOutcome {
                    index: outcome.index,
                    results: results.by_ref().take(count).collect(),
                };
                finish(submission, Ok(mine));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, commands = total, "raft write failed");
            for submission in batch {
                finish(submission, Err(e.clone()));
            }
        }
    }
}

fn finish(submission: Submission, result: Result<WriteOutcome, RaftError>) {
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!("stator_raft_writes_total", "outcome" => outcome).increment(1);
    metrics::histogram!("stator_raft_write_seconds")
        .record(submission.submitted.elapsed().as_secs_f64());
    // The writer may have given up waiting (its own deadline); nothing to do then.
    let _ = submission.reply.send(result);
}
