//! The server side of Raft RPCs: handlers on the transport endpoint that call into this node.
//! They hold the node weakly so that a shut-down node can be dropped (and its data dir
//! reopened) even while the endpoint lives on.

use std::sync::{Arc, Weak};

use stator_transport::{Endpoint, RpcError};
use tokio::sync::mpsc::WeakSender;

use crate::error::RemoteError;
use crate::leader;
use crate::node::NodeCore;
use crate::node::WRITE_REPLY_GRACE;
use crate::rpc::{
    AppendMethod, ForwardMethod, MembershipMethod, ReadIndexMethod, SnapshotMethod, VoteMethod,
};
use crate::writer::{submit, Origin, Submission, Visibility, MAX_BATCH_COMMANDS};
use crate::RaftError;

/// What the forwarding follower hears. `NotLeader` only where the write certainly was not
/// proposed (the follower retries those); anything that may have been proposed is a timeout
/// or a refusal, which it does not retry.
fn forwarded_write_error(e: &RaftError) -> RemoteError {
    match e {
        RaftError::Remote(remote) => remote.clone(),
        RaftError::NoLeader => RemoteError::NotLeader { leader: None },
        RaftError::Timeout { .. } | RaftError::LeaderReplaced { .. } => RemoteError::Timeout,
        other => RemoteError::Rejected(other.to_string()),
    }
}

fn live(core: &Weak<NodeCore>) -> Result<Arc<NodeCore>, RpcError> {
    match core.upgrade() {
        Some(core) if !core.is_stopped() => Ok(core),
        _ => Err(RpcError::Closed("raft node is shut down".to_owned())),
    }
}

/// `writer` is the node's own writer: a forwarded write joins the leader's next entry with
/// the leader's own writes instead of becoming an entry of its own. Held weakly, like `core`.
pub(crate) fn register_handlers(
    endpoint: &Endpoint,
    core: Weak<NodeCore>,
    writer: WeakSender<Submission>,
) {
    let c = core.clone();
    endpoint.register::<AppendMethod, _, _>(move |_peer, req| {
        let core = live(&c);
        async move { Ok(core?.raft.append_entries(req).await) }
    });
    let c = core.clone();
    endpoint.register::<VoteMethod, _, _>(move |_peer, req| {
        let core = live(&c);
        async move { Ok(core?.raft.vote(req).await) }
    });
    let c = core.clone();
    endpoint.register::<SnapshotMethod, _, _>(move |_peer, req| {
        let core = live(&c);
        async move { Ok(core?.raft.install_snapshot(req).await) }
    });
    let c = core.clone();
    endpoint.register::<ForwardMethod, _, _>(move |peer, cmds| {
        let core = live(&c);
        let writer = writer.upgrade();
        async move {
            let core = core?;
            let writer =
                writer.ok_or_else(|| RpcError::Closed("raft writer is shut down".to_owned()))?;
            if cmds.is_empty() || cmds.len() > MAX_BATCH_COMMANDS {
                return Ok(Err(RemoteError::Rejected(format!(
                    "a forwarded write carries 1..={MAX_BATCH_COMMANDS} commands, got {}",
                    cmds.len()
                ))));
            }
            tracing::trace!(from = ?peer.node_id, commands = cmds.len(), "forwarded write");
            let deadline = core.cfg.write_timeout + WRITE_REPLY_GRACE;
            let outcome = submit(
                &writer,
                cmds,
                Visibility::Committed,
                Origin::Forwarded,
                deadline,
            )
            .await;
            Ok(outcome.map_err(|e| forwarded_write_error(&e)))
        }
    });
    let c = core.clone();
    endpoint.register::<MembershipMethod, _, _>(move |peer, change| {
        let core = live(&c);
        async move {
            let core = core?;
            tracing::info!(from = ?peer.node_id, ?change, "forwarded membership change");
            Ok(leader::change_membership(&core.raft, change, core.cfg.membership_timeout).await)
        }
    });
    let c = core;
    endpoint.register::<ReadIndexMethod, _, _>(move |_peer, ()| {
        let core = live(&c);
        async move {
            let core = core?;
            Ok(leader::read_index(&core.raft, core.cfg.write_timeout).await)
        }
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The forwarding follower retries a `NotLeader` answer on the next leader; an answer that
    /// may hide a proposed write must never say `NotLeader`, or the write could apply twice.
    #[test]
    fn only_writes_that_were_certainly_not_proposed_come_back_as_not_leader() {
        assert_eq!(
            forwarded_write_error(&RaftError::NoLeader),
            RemoteError::NotLeader { leader: None }
        );
        let not_leader = RemoteError::NotLeader { leader: Some(3) };
        assert_eq!(
            forwarded_write_error(&RaftError::Remote(not_leader.clone())),
            not_leader
        );
        let maybe_proposed = [
            RaftError::Timeout {
                what: "raft write",
                after: Duration::from_secs(5),
            },
            RaftError::LeaderReplaced { leader: 3 },
            RaftError::ShuttingDown,
            RaftError::Transport(RpcError::Closed("reset".to_owned())),
        ];
        for e in maybe_proposed {
            let answer = forwarded_write_error(&e);
            assert!(
                !matches!(answer, RemoteError::NotLeader { .. }),
                "{e} came back as {answer:?}"
            );
        }
    }
}
