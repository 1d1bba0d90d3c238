//! The server side of Raft RPCs: handlers on the transport endpoint that call into this node.
//! They hold the node weakly so that a shut-down node can be dropped (and its data dir
//! reopened) even while the endpoint lives on.

use std::sync::{Arc, Weak};

use stator_transport::{Endpoint, RpcError};

use crate::error::RemoteError;
use crate::leader;
use crate::node::NodeCore;
use crate::rpc::{
    AppendMethod, ForwardMethod, MembershipMethod, ReadIndexMethod, SnapshotMethod, VoteMethod,
};
use crate::writer::MAX_BATCH_COMMANDS;

fn live(core: &Weak<NodeCore>) -> Result<Arc<NodeCore>, RpcError> {
    match core.upgrade() {
        Some(core) if !core.is_stopped() => Ok(core),
        _ => Err(RpcError::Closed("raft node is shut down".to_owned())),
    }
}

pub(crate) fn register_handlers(endpoint: &Endpoint, core: Weak<NodeCore>) {
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
        async move {
            let core = core?;
            if cmds.is_empty() || cmds.len() > MAX_BATCH_COMMANDS {
                return Ok(Err(RemoteError::Rejected(format!(
                    "a forwarded write carries 1..={MAX_BATCH_COMMANDS} commands, got {}",
                    cmds.len()
                ))));
            }
            tracing::trace!(from = ?peer.node_id, commands = cmds.len(), "forwarded write");
            Ok(leader::propose(&core.raft, cmds, core.cfg.write_timeout).await)
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
