//! The per-node writer: coalesces submissions into one log entry (one `client_write`, or one
//! forward to the leader) and answers them once the entry is applied on this node. On the
//! leader, what followers forward goes through it too, so that the writes of every member
//! share entries: each entry costs a flush on every member.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::error::RaftError;
use crate::model::Command;
use crate::node::NodeCore;
use crate::rpc::WriteOutcome;

/// Upper bound of commands in one entry, so that one entry stays far below the frame limit.
pub(crate) const MAX_BATCH_COMMANDS: usize = 1024;

/// When a write counts as done for its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Visibility {
    /// Committed by a quorum (durable) and applied on the leader: the results are final, and
    /// a linearizable read anywhere sees the write.
    Committed,
    /// Also applied on this node, so that this node's [`crate::RaftNode::state`] shows it.
    AppliedHere,
}

/// Where a submission comes from: this node's callers, or a follower that forwarded it (its
/// write is counted in the metrics of the follower, not again here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    Local,
    Forwarded,
}

pub(crate) struct Submission {
    pub(crate) cmds: Vec<Command>,
    pub(crate) visible: Visibility,
    pub(crate) origin: Origin,
    pub(crate) reply: oneshot::Sender<Result<WriteOutcome, RaftError>>,
    pub(crate) submitted: Instant,
}

/// Hands `cmds` to the writer and waits (at most `deadline`) for its answer.
pub(crate) async fn submit(
    writer: &mpsc::Sender<Submission>,
    cmds: Vec<Command>,
    visible: Visibility,
    origin: Origin,
    deadline: Duration,
) -> Result<WriteOutcome, RaftError> {
    let (reply, outcome) = oneshot::channel();
    let submission = Submission {
        cmds,
        visible,
        origin,
        reply,
        submitted: Instant::now(),
    };
    let wait = async {
        writer
            .send(submission)
            .await
            .map_err(|_| RaftError::ShuttingDown)?;
        outcome.await.map_err(|_| RaftError::ShuttingDown)?
    };
    tokio::time::timeout(deadline, wait)
        .await
        .map_err(|_| RaftError::Timeout {
            what: "raft write",
            after: deadline,
        })?
}

/// Runs until every sender is dropped. Group commit clocked by the log itself: at most
/// `max_in_flight` batches are being committed at a time; a submission that finds a free slot
/// goes out at once with whatever else is queued, and while every slot is busy the queue
/// grows until one frees. So a lone write never waits, and under load the batch size follows
/// the commit latency instead of a timer (a timer window only added its length to every
/// write once the pipeline was busy).
pub(crate) fn spawn_writer(
    core: Arc<NodeCore>,
    mut submissions: mpsc::Receiver<Submission>,
    max_in_flight: usize,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
        while let Some(first) = submissions.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
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
            tokio::spawn(commit(core.clone(), batch, slot));
        }
    })
}

/// `slot` is released once the entry is committed, before any writer is answered: a writer
/// that submits again as soon as it has its answer must find the slot free.
async fn commit(core: Arc<NodeCore>, mut batch: Vec<Submission>, slot: OwnedSemaphorePermit) {
    let counts: Vec<usize> = batch.iter().map(|s| s.cmds.len()).collect();
    let cmds: Vec<Command> = batch
        .iter_mut()
        .flat_map(|s| std::mem::take(&mut s.cmds))
        .collect();
    let total = cmds.len();
    metrics::histogram!("stator_raft_batch_commands").record(total as f64);

    let committed = match core.write_batch(cmds).await {
        Ok(outcome) if outcome.results.len() != total => Err(RaftError::Rejected(format!(
            "leader returned {} results for {total} commands",
            outcome.results.len()
        ))),
        other => other,
    };
    drop(slot);
    let outcome = match committed {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::warn!(error = %e, commands = total, "raft write failed");
            for submission in batch {
                finish(submission, Err(e.clone()));
            }
            return;
        }
    };
    // Split the leader's results per submission; those content with "committed" are
    // answered now, the rest after this node has applied the entry (one wait for all).
    let mut results = outcome.results.into_iter();
    let mut wait_here = Vec::new();
    for (submission, count) in batch.into_iter().zip(counts) {
        let mine = WriteOutcome {
            index: outcome.index,
            results: results.by_ref().take(count).collect(),
        };
        match submission.visible {
            Visibility::Committed => finish(submission, Ok(mine)),
            Visibility::AppliedHere => wait_here.push((submission, mine)),
        }
    }
    if wait_here.is_empty() {
        return;
    }
    let applied = core
        .wait_applied(outcome.index, core.cfg.write_timeout)
        .await;
    for (submission, mine) in wait_here {
        finish(submission, applied.clone().map(|_| mine));
    }
}

fn finish(submission: Submission, result: Result<WriteOutcome, RaftError>) {
    if submission.origin == Origin::Local {
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("stator_raft_writes_total", "outcome" => outcome).increment(1);
        metrics::histogram!("stator_raft_write_seconds")
            .record(submission.submitted.elapsed().as_secs_f64());
    }
    // The writer may have given up waiting (its own deadline); nothing to do then.
    let _ = submission.reply.send(result);
}
