//! Callbacks used by Storage API

use std::io;

use tokio::sync::mpsc;
use tokio::sync::oneshot;

use crate::async_runtime::AsyncOneshotSendExt;
use crate::core::notify::Notify;
use crate::raft_state::io_state::log_io_id::LogIOId;
use crate::type_config::alias::OneshotSenderOf;
use crate::LogId;
use crate::RaftTypeConfig;
use crate::StorageIOError;
use crate::Vote;

/// A oneshot callback for completion of log io operation.
pub struct LogFlushed<C>
where C: RaftTypeConfig
{
    log_io_id: LogIOId<C::NodeId>,
    waiter: FlushWaiter<C>,
}

/// Who learns that a log io completed.
///
/// stator patch: a leader's own appends do not block `RaftCore` until they are flushed; their
/// completion comes back to it as a [`Notify::LocalLogFlushed`], so replication to followers
/// runs while the leader's flush is in progress (Raft thesis §10.2.1).
enum FlushWaiter<C>
where C: RaftTypeConfig
{
    /// `RaftCore` awaits the other end before it runs the next command (followers).
    Awaited(OneshotSenderOf<C, Result<LogIOId<C::NodeId>, io::Error>>),
    /// `RaftCore` goes on; the result arrives as a notification (leaders).
    Notified {
        tx: mpsc::UnboundedSender<Notify<C>>,
        vote: Vote<C::NodeId>,
        log_id: LogId<C::NodeId>,
    },
}

impl<C> LogFlushed<C>
where C: RaftTypeConfig
{
    pub(crate) fn new(
        log_io_id: LogIOId<C::NodeId>,
        tx: OneshotSenderOf<C, Result<LogIOId<C::NodeId>, io::Error>>,
    ) -> Self {
        Self {
            log_io_id,
            waiter: FlushWaiter::Awaited(tx),
        }
    }

    pub(crate) fn notifying(
        vote: Vote<C::NodeId>,
        log_id: LogId<C::NodeId>,
        tx: mpsc::UnboundedSender<Notify<C>>,
    ) -> Self {
        Self {
            log_io_id: LogIOId::new(vote.clone(), Some(log_id.clone())),
            waiter: FlushWaiter::Notified { tx, vote, log_id },
        }
    }

    /// stator patch: whether `RaftCore` is blocked until this completes (a follower's append,
    /// a vote) rather than notified (a leader's append). A store may complete a blocking one
    /// on the calling thread to save the wake-ups of a hand-off.
    pub fn blocks_raft_core(&self) -> bool {
        matches!(self.waiter, FlushWaiter::Awaited(_))
    }

    /// Report log io completion event.
    ///
    /// It will be called when the log is successfully appended to the storage or an error occurs.
    pub fn log_io_completed(self, result: Result<(), io::Error>) {
        if let Err(e) = &result {
            tracing::error!("LogFlush error: {}, while flushing upto {}", e, self.log_io_id);
        }
        match self.waiter {
            FlushWaiter::Awaited(tx) => {
                if tx.send(result.map(|()| self.log_io_id)).is_err() {
                    tracing::error!("failed to send log io completion event");
                }
            }
            FlushWaiter::Notified { tx, vote, log_id } => {
                // Nobody waits for this one: a closed channel only means RaftCore has stopped
                // since the append (a shutdown), which is not an error.
                if tx.send(Notify::LocalLogFlushed { vote, log_id, result }).is_err() {
                    tracing::debug!("RaftCore stopped before the leader's flush completed");
                }
            }
        }
    }
}

/// A oneshot callback for completion of applying logs to state machine.
pub struct LogApplied<C>
where C: RaftTypeConfig
{
    last_log_id: LogId<C::NodeId>,
    tx: oneshot::Sender<Result<(LogId<C::NodeId>, Vec<C::R>), StorageIOError<C::NodeId>>>,
}

impl<C> LogApplied<C>
where C: RaftTypeConfig
{
    #[allow(dead_code)]
    pub(crate) fn new(
        last_log_id: LogId<C::NodeId>,
        tx: oneshot::Sender<Result<(LogId<C::NodeId>, Vec<C::R>), StorageIOError<C::NodeId>>>,
    ) -> Self {
        Self { last_log_id, tx }
    }

    /// Report apply io completion event.
    ///
    /// It will be called when the log is successfully applied to the state machine or an error
    /// occurs.
    pub fn completed(self, result: Result<Vec<C::R>, StorageIOError<C::NodeId>>) {
        let res = match result {
            Ok(x) => {
                tracing::debug!("LogApplied upto {}", self.last_log_id);
                let resp = (self.last_log_id.clone(), x);
                self.tx.send(Ok(resp))
            }
            Err(e) => {
                tracing::error!("LogApplied error: {}, while applying upto {}", e, self.last_log_id);
                self.tx.send(Err(e))
            }
        };

        if let Err(_e) = res {
            tracing::error!("failed to send apply complete event, last_log_id: {}", self.last_log_id);
        }
    }
}
