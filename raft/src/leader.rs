//! What the leader does with requests (its own or forwarded): propose, change membership,
//! confirm a read index. Errors come out as [`RemoteError`] so that they can travel back to a
//! forwarding follower unchanged.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use openraft::error::{
    CheckIsLeaderError, ClientWriteError, Fatal, ForwardToLeader, RaftError as OpenRaftError,
};
use openraft::{ChangeMembers, Raft};

use crate::error::RemoteError;
use crate::model::{Batch, Command};
use crate::rpc::{MembershipChange, WriteOutcome};
use crate::types::{NodeId, PeerAddr, TypeConfig};

pub(crate) async fn propose(
    raft: &Raft<TypeConfig>,
    cmds: Vec<Command>,
    timeout: Duration,
) -> Result<WriteOutcome, RemoteError> {
    let response = within(timeout, raft.client_write(Batch(cmds)))
        .await?
        .map_err(client_write_error)?;
    Ok(WriteOutcome {
        index: response.log_id.index,
        results: response.data.0,
    })
}

pub(crate) async fn change_membership(
    raft: &Raft<TypeConfig>,
    change: MembershipChange,
    timeout: Duration,
) -> Result<(), RemoteError> {
    let result = match change {
        MembershipChange::AddLearner { id, addr } => {
            within(timeout, raft.add_learner(id, addr, true)).await?
        }
        MembershipChange::ChangeVoters { voters } => {
            if voters.is_empty() {
                return Err(RemoteError::Rejected(
                    "a cluster needs at least one voter".to_owned(),
                ));
            }
            within(
                timeout,
                raft.change_membership(ChangeMembers::ReplaceAllVoters(voters), true),
            )
            .await?
        }
        MembershipChange::RemoveMember { id } => {
            let membership = raft.metrics().borrow().membership_config.clone();
            let is_voter = membership.voter_ids().any(|v| v == id);
            let is_learner = membership.membership().learner_ids().any(|l| l == id);
            let changes = if is_voter {
                ChangeMembers::RemoveVoters(BTreeSet::from([id]))
            } else if is_learner {
                ChangeMembers::RemoveNodes(BTreeSet::from([id]))
            } else {
                // Removing a non-member is a no-op so that callers may retry freely.
                return Ok(());
            };
            within(timeout, raft.change_membership(changes, false)).await?
        }
    };
    result.map(|_| ()).map_err(client_write_error)
}

/// Confirms leadership with a quorum and returns the index a linearizable read must see.
pub(crate) async fn read_index(
    raft: &Raft<TypeConfig>,
    timeout: Duration,
) -> Result<u64, RemoteError> {
    let (read_log_id, _applied) = within(timeout, raft.get_read_log_id())
        .await?
        .map_err(|e| match e {
            OpenRaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => not_leader(&f),
            OpenRaftError::APIError(other) => RemoteError::Rejected(other.to_string()),
            OpenRaftError::Fatal(f) => fatal(&f),
        })?;
    Ok(read_log_id.map(|id| id.index).unwrap_or(0))
}

async fn within<T>(timeout: Duration, fut: impl Future<Output = T>) -> Result<T, RemoteError> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| RemoteError::Timeout)
}

fn client_write_error(e: OpenRaftError<NodeId, ClientWriteError<NodeId, PeerAddr>>) -> RemoteError {
    match e {
        OpenRaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(&f),
        OpenRaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            RemoteError::Rejected(c.to_string())
        }
        OpenRaftError::Fatal(f) => fatal(&f),
    }
}

fn not_leader(f: &ForwardToLeader<NodeId, PeerAddr>) -> RemoteError {
    RemoteError::NotLeader {
        leader: f.leader_id,
    }
}

fn fatal(f: &Fatal<NodeId>) -> RemoteError {
    RemoteError::Rejected(format!("raft stopped: {f}"))
}

/// Voters and learners of the latest membership config.
pub(crate) fn members(
    membership: &openraft::StoredMembership<NodeId, PeerAddr>,
) -> (BTreeSet<NodeId>, BTreeSet<NodeId>) {
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let learners = membership.membership().learner_ids().collect();
    (voters, learners)
}

/// Address book of the latest membership config.
pub(crate) fn member_addr(
    membership: &openraft::StoredMembership<NodeId, PeerAddr>,
    id: NodeId,
) -> Option<PeerAddr> {
    membership.membership().get_node(&id).cloned()
}
