//! The RPC methods peers exchange for Raft, over the QUIC transport.

use std::collections::BTreeSet;

use openraft::error::{InstallSnapshotError, RaftError as OpenRaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use stator_transport::Method;

use crate::error::RemoteError;
use crate::model::{Command, CommandResult};
use crate::types::{NodeId, PeerAddr, TypeConfig};

pub struct AppendMethod;
impl Method for AppendMethod {
    const NAME: &'static str = "raft.append";
    type Request = AppendEntriesRequest<TypeConfig>;
    type Response = Result<AppendEntriesResponse<NodeId>, OpenRaftError<NodeId>>;
}

pub struct VoteMethod;
impl Method for VoteMethod {
    const NAME: &'static str = "raft.vote";
    type Request = VoteRequest<NodeId>;
    type Response = Result<VoteResponse<NodeId>, OpenRaftError<NodeId>>;
}

/// One chunk of a snapshot (openraft's chunked transfer).
pub struct SnapshotMethod;
impl Method for SnapshotMethod {
    const NAME: &'static str = "raft.snapshot";
    type Request = InstallSnapshotRequest<TypeConfig>;
    type Response =
        Result<InstallSnapshotResponse<NodeId>, OpenRaftError<NodeId, InstallSnapshotError>>;
}

/// A committed write, as the leader reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WriteOutcome {
    /// Log index of the entry that carried the commands.
    pub index: u64,
    /// One result per submitted command, in order.
    pub results: Vec<CommandResult>,
}

/// A follower's commands, handed to the leader to propose.
pub struct ForwardMethod;
impl Method for ForwardMethod {
    const NAME: &'static str = "raft.forward";
    type Request = Vec<Command>;
    type Response = Result<WriteOutcome, RemoteError>;
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MembershipChange {
    AddLearner { id: NodeId, addr: PeerAddr },
    ChangeVoters { voters: BTreeSet<NodeId> },
    RemoveMember { id: NodeId },
}

pub struct MembershipMethod;
impl Method for MembershipMethod {
    const NAME: &'static str = "raft.membership";
    type Request = MembershipChange;
    type Response = Result<(), RemoteError>;
}

/// Asks the leader for a read index: the log index a linearizable read must wait for.
pub struct ReadIndexMethod;
impl Method for ReadIndexMethod {
    const NAME: &'static str = "raft.read_index";
    type Request = ();
    type Response = Result<u64, RemoteError>;
}
