//! openraft's network over the QUIC transport: the client side (`RaftNetworkFactory`) and the
//! server side (handlers registered on the [`Endpoint`] that call into the local `Raft`).

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError as OpenRaftError,
    RemoteError as OpenRaftRemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, RPCTypes};
use stator_transport::{Endpoint, Method, RpcError};

use crate::rpc::{AppendMethod, SnapshotMethod, VoteMethod};
use crate::types::{NodeId, PeerAddr, TypeConfig};

/// Pause before retrying an unreachable peer; short enough that a restarted follower catches
/// up quickly, long enough not to spin on a dead one.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(200);
/// Bound on resolving a peer's host name (k8s DNS names).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct TransportNetworkFactory {
    endpoint: Endpoint,
}

impl TransportNetworkFactory {
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }
}

impl RaftNetworkFactory<TypeConfig> for TransportNetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &PeerAddr) -> PeerClient {
        PeerClient {
            endpoint: self.endpoint.clone(),
            local: self.endpoint.node_id(),
            target,
            addr: node.quic.clone(),
        }
    }
}

/// Raft RPCs towards one peer.
pub struct PeerClient {
    endpoint: Endpoint,
    local: NodeId,
    target: NodeId,
    addr: String,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot resolve peer address {addr:?}: {reason}")]
struct ResolveError {
    addr: String,
    reason: String,
}

/// Accepts a literal socket address or a `host:port` to look up (with a deadline).
pub(crate) async fn resolve_peer(addr: &str) -> Result<SocketAddr, RpcError> {
    if let Ok(sock) = addr.parse::<SocketAddr>() {
        return Ok(sock);
    }
    let fail = |reason: String| {
        RpcError::Connect(
            ResolveError {
                addr: addr.to_owned(),
                reason,
            }
            .to_string(),
        )
    };
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(addr)).await {
        Err(_) => Err(fail("lookup timed out".to_owned())),
        Ok(Err(e)) => Err(fail(e.to_string())),
        Ok(Ok(mut addrs)) => addrs.next().ok_or_else(|| fail("no addresses".to_owned())),
    }
}

impl PeerClient {
    async fn call<M, E>(
        &self,
        action: RPCTypes,
        req: &M::Request,
        option: &RPCOption,
    ) -> Result<M::Response, RPCError<NodeId, PeerAddr, E>>
    where
        M: Method,
        E: StdError,
    {
        let result = match resolve_peer(&self.addr).await {
            Ok(sock) => {
                self.endpoint
                    .call_timeout::<M>(sock, req, option.hard_ttl())
                    .await
            }
            Err(e) => Err(e),
        };
        result.map_err(|e| self.map_transport_error(action, option, e))
    }

    /// Unreachable makes openraft back off; Network retries at once; Timeout is a timeout.
    fn map_transport_error<E: StdError>(
        &self,
        action: RPCTypes,
        option: &RPCOption,
        e: RpcError,
    ) -> RPCError<NodeId, PeerAddr, E> {
        tracing::debug!(target_node = self.target, addr = %self.addr, %action, error = %e, "raft rpc failed");
        match e {
            RpcError::Timeout => RPCError::Timeout(Timeout {
                action,
                id: self.local,
                target: self.target,
                timeout: option.hard_ttl(),
            }),
            RpcError::FrameTooLarge { .. } if action == RPCTypes::AppendEntries => {
                RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(1).with_source_error(&e),
                )
            }
            // The peer is down, restarting (methods not registered yet) or not trusting us yet.
            RpcError::Connect(_)
            | RpcError::Closed(_)
            | RpcError::UnknownMethod(_)
            | RpcError::NotAuthorized(_) => RPCError::Unreachable(Unreachable::new(&e)),
            other => RPCError::Network(NetworkError::from(AnyError::new(&other))),
        }
    }

    fn remote<E: StdError>(&self, e: E) -> RPCError<NodeId, PeerAddr, E> {
        RPCError::RemoteError(OpenRaftRemoteError::new(self.target, e))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, PeerAddr, OpenRaftError<NodeId>>>
    {
        self.call::<AppendMethod, _>(RPCTypes::AppendEntries, &rpc, &option)
            .await?
            .map_err(|e| self.remote(e))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, PeerAddr, OpenRaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call::<SnapshotMethod, _>(RPCTypes::InstallSnapshot, &rpc, &option)
            .await?
            .map_err(|e| self.remote(e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, PeerAddr, OpenRaftError<NodeId>>> {
        self.call::<VoteMethod, _>(RPCTypes::Vote, &rpc, &option)
            .await?
            .map_err(|e| self.remote(e))
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}
